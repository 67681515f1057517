"""RTL cycle figures from Amaranth's simulator (simulator-independent: cycles, not seconds).

1. The walker alone: cycles from request to response per format against the memory's
   read latency, and the overhead beyond the memory's own latency per level (target:
   at most one cycle per level plus two).
2. The MMU top at a memory latency of 20 cycles: walk latency per format with a cold and
   a warm walk cache, TLB hit throughput, and random-miss throughput with 1, 2, 4 and 8
   walkers. Tables are printed and a PNG plot is written to docs/img/mmu.png.

Tables are built with the TDP model (sw_model.tdp), mapping pages by fault-in as a
hypervisor would.
"""

import pathlib
import random

from hw.sim import VmContext, run_mmu, walk_latency
from sw_model.formats import FORMAT_NAMES
from sw_model.memory import HostMemory
from sw_model.tdp import Vm

MEMORY_LATENCY = 20
IMG = pathlib.Path(__file__).resolve().parent.parent / "docs" / "img"


def _table(header, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(x).rjust(w) for x, w in zip(row, widths)))


def walker_latency(latencies):
    rows = []
    for name in FORMAT_NAMES:
        row = [name]
        for latency in latencies:
            levels, cycles = walk_latency(name, latency)
            overhead = (cycles - levels * latency) / levels
            row.append(f"{cycles} ({overhead:.2f}/lvl)")
        levels, _ = walk_latency(name, 1)
        row.append(f"{levels * 2 + 2}")
        rows.append(row)
    print("Walker alone: cycles from request to response, 4 KiB walk, A/D already set;")
    print("in brackets, cycles per level beyond the memory latency (target <= 1 + 2/levels).")
    _table(["format"] + [f"L={n}" for n in latencies] + ["target L=1"], rows)


def _mapped_vm(name, gpas):
    """A VM with the 4 KiB pages at ``gpas`` faulted in (slot: the first 1 GiB)."""
    memory = HostMemory(64 << 20)
    vm = Vm(name, memory)
    vm.add_memslot(0, 0, 1 << 18, 1 << 32, host_level=1)
    for gpa in gpas:
        vm.handle_fault(gpa, "read")
    return memory, VmContext(vm.fmt, vm.root_for(), vm.opts)


def mmu_figures(quick):
    rng = random.Random(1)
    rows, cold_warm = [], {}
    first, second = 0x40_0000, 0x40_1000     # two pages of one 2 MiB region
    for name in FORMAT_NAMES:
        memory, context = _mapped_vm(name, [first, second])
        # Walk-cache fills land one level per cycle after the response: wait for them.
        script = [("req", first, "read", 0), ("drain",), ("delay", 8),
                  ("req", second, "read", 0), ("drain",)]
        run = run_mmu(memory, [context], script, latency=MEMORY_LATENCY)
        cold_warm[name] = (run.cycles[0], run.cycles[1])
        rows.append([name, run.cycles[0], run.cycles[1], run.counters["pwc_reads_saved"]])
    print(f"\nMMU, memory latency {MEMORY_LATENCY}: walk latency (cycles) with a cold walk "
          f"cache (on x86 this walk also sets A in every level: one AtomicCompare each), and "
          f"for a second page of the same 2 MiB region (upper levels cached).")
    _table(["format", "cold", "walk cache hit", "reads saved"], rows)

    # TLB hit throughput: one warm page, then back-to-back hits.
    hits = 64 if quick else 512
    memory, context = _mapped_vm("ept4", [first])
    warm = [("req", first, "read", 0), ("drain",)]
    base = run_mmu(memory.copy(), [context], warm, latency=MEMORY_LATENCY).total
    full = run_mmu(memory.copy(), [context],
                   warm + [("req", first + 8 * i, "read", 0) for i in range(hits)]
                   + [("drain",)], latency=MEMORY_LATENCY).total
    print(f"\nTLB hit throughput: {hits} back-to-back hits in {full - base} cycles = "
          f"{hits / (full - base):.2f} requests per cycle")

    # Random misses: distinct pages spread over 1 GiB, with 1, 2, 4, 8 walkers.
    count = 48 if quick else 256
    order = rng.sample(range(1 << 18), count)
    order = [page << 12 for page in order]
    memory, context = _mapped_vm("ept4", order)
    script = [("req", gpa, "read", 0) for gpa in order] + [("drain",)]
    miss_rows, miss = [], {}
    for walkers in (1, 2, 4, 8):
        run = run_mmu(memory.copy(), [context], script, latency=MEMORY_LATENCY,
                      num_walkers=walkers, pending=max(8, 2 * walkers))
        miss[walkers] = len(order) / run.total
        miss_rows.append([walkers, run.total, f"{1000 * miss[walkers]:.1f}",
                          f"{miss[walkers] / miss[1]:.2f}"])
    print(f"\nRandom-miss stream ({len(order)} distinct 4 KiB pages over 1 GiB, ept4):")
    _table(["walkers", "cycles", "requests/1000 cycles", "speed-up"], miss_rows)
    _plot(cold_warm, miss)


def _plot(cold_warm, miss):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib missing: no plot; install the [bench] extra)")
        return
    IMG.mkdir(parents=True, exist_ok=True)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    names = list(cold_warm)
    x = range(len(names))
    left.bar([i - 0.2 for i in x], [cold_warm[n][0] for n in names], 0.4, label="cold")
    left.bar([i + 0.2 for i in x], [cold_warm[n][1] for n in names], 0.4,
             label="walk-cache hit")
    left.set_xticks(list(x), names, rotation=30)
    left.set_ylabel("cycles")
    left.set_title(f"walk latency, memory latency {MEMORY_LATENCY}")
    left.legend()
    right.plot(list(miss), [1000 * v for v in miss.values()], marker="o")
    right.set_xscale("log", base=2)
    right.set_xlabel("walkers")
    right.set_ylabel("requests per 1000 cycles")
    right.set_title("random-miss throughput")
    fig.tight_layout()
    path = IMG / "mmu.png"
    fig.savefig(path, dpi=80)
    print(f"\nplot: {path}")


def main(quick=False):
    walker_latency((1, 5, 20) if quick else (1, 5, 20, 100))
    mmu_figures(quick)
