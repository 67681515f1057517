"""Throughput of the TDP MMU model: 4K faults per second, and PTEs created per second by
eager splitting of 1G pages (KVM reported about 16 million PTEs per CPU-second: 96 GiB of
1G pages split to 4K in 1.55 CPU-seconds, commit message of "KVM: x86/mmu: Split huge
pages mapped by the TDP MMU when dirty logging is enabled")."""

import time

from sw_model.formats import FORMAT_NAMES
from sw_model.memory import HostMemory
from sw_model.tdp import Vm

from .report import Table

__all__ = ["main", "fault_rate", "split_rate"]

GIB_PAGES = 1 << 18
KVM_SPLIT_PTES_PER_S = 96 * (GIB_PAGES + 512) / 1.55


def fault_rate(name, count):
    """Faults per CPU-second mapping ``count`` 4K pages, one fault each."""
    vm = Vm(name, HostMemory(16 << 20), trace=False)
    base = 4 * GIB_PAGES
    vm.add_memslot(0, base, count, 1 << 33, host_level=1)
    vm.root_for(0)
    start = time.process_time()
    for gfn in range(base, base + count):
        vm.handle_fault(gfn << 12, "write")
    elapsed = time.process_time() - start
    assert vm.stats()["pages"][1] == count
    return count / elapsed


def split_rate(name, gib):
    """(PTEs created, CPU-seconds) splitting ``gib`` 1G pages down to 4K."""
    tables = gib * 513 + 64
    vm = Vm(name, HostMemory(tables << 12), trace=False)
    base = 4 * GIB_PAGES
    vm.add_memslot(0, base, gib * GIB_PAGES, 1 << 33, host_level=3)
    for i in range(gib):
        vm.handle_fault((base + i * GIB_PAGES) << 12, "write")
    assert vm.stats()["pages"][3] == gib
    start = time.process_time()
    result = vm.split_huge_pages(0)
    elapsed = time.process_time() - start
    assert not result.enomem and vm.stats()["pages"][1] == gib * GIB_PAGES
    assert vm.translate((base + gib * GIB_PAGES - 1) << 12, "read").level == 1
    return result.sptes_created, elapsed


def main(quick=False):
    count = 2000 if quick else 20000
    faults = Table("Model: 4K faults per CPU-second", ["format", "faults/CPU-s"],
                   [[name, f"{fault_rate(name, count):,.0f}"] for name in FORMAT_NAMES],
                   f"sw_model.tdp.Vm.handle_fault mapping {count} 4 KiB pages, one write fault "
                   f"each, event trace off; CPU time of this process.")
    gib, repeat = (4, 1) if quick else (16, 3)
    rows = []
    for name in ("ept4", "npt4", "sv48x4"):
        ptes, elapsed = min((split_rate(name, gib) for _ in range(repeat)), key=lambda r: r[1])
        rate = ptes / elapsed
        rows.append([name, ptes, f"{elapsed:.3f}", f"{rate / 1e6:.1f}",
                     f"{rate / KVM_SPLIT_PTES_PER_S:.2f}x"])
    split = Table("Model: eager split of 1G pages to 4K",
                  ["format", "PTEs", "CPU-s", "M PTEs/CPU-s", "vs KVM"], rows,
                  f"{gib} GiB of 1G pages split by Vm.split_huge_pages, best of {repeat}; KVM "
                  f"figure: {KVM_SPLIT_PTES_PER_S / 1e6:.1f} M PTEs/CPU-s (96 GiB in 1.55 "
                  f"CPU-s, commit message of \"KVM: x86/mmu: Split huge pages mapped by the "
                  f"TDP MMU when dirty logging is enabled\"); the ratio compares a Python "
                  f"model with C on other hardware, for scale only.")
    return [faults, split]


if __name__ == "__main__":
    import sys
    for table in main(quick="--quick" in sys.argv):
        print(table.text())
