"""Comparison with the open RISC-V MMUs: CVA6, Rocket and XiangShan, from their sources.

Their figures are read from the files cited in each cell (default parameters of the
version in the repository); they are not measured here. Ours are measured in this run:
cycles per level from the walker alone at memory latency 1, the TLB hit latency from
the MMU top, walks in flight and the walk cache from ``hw.mmu.MMU``'s defaults. The
others walk stage 1 (and CVA6 / Rocket also G-stage when the H extension is on) through
their data cache; ours is a stage-2 walker on its own AXI port, so "cycles per level"
is relative to each design's memory (data cache or AXI) latency.
"""

from hw.sim import run_mmu, walk_latency

from .report import Table

__all__ = ["main", "ANCHORS"]

CVA6 = "openhwgroup/cva6"
ROCKET = "chipsalliance/rocket-chip"
XS = "OpenXiangShan/XiangShan"

#: (design, walks in flight, walk-cache structure, cycles per level, TLB hit latency),
#: each with the files it was read from.
ANCHORS = [
    ("CVA6",
     f"1 (one PTE request at a time, `data_id = '0`: {CVA6} core/cva6_mmu/cva6_ptw.sv)",
     f"none; an optional shared set-associative L2 TLB of leaves ({CVA6} "
     f"core/cva6_mmu/cva6_shared_tlb.sv); A/D not updated by hardware (fault when A is "
     f"clear, cva6_ptw.sv)",
     f"D$ latency + 2: WAIT_GRANT, then PTE_LOOKUP waits for the registered "
     f"`data_rvalid_q` ({CVA6} core/cva6_mmu/cva6_ptw.sv)",
     f"0 extra cycles: fully associative, `lu_hit_o` is combinational ({CVA6} "
     f"core/cva6_mmu/cva6_tlb.sv)"),
    ("Rocket",
     f"1 (the arbiter takes a request only in `s_ready`: {ROCKET} src/main/scala/rocket/PTW.scala)",
     f"PTE cache of non-leaf entries, fully associative, tagged by the PTE's physical "
     f"address, PLRU, `nPTECacheEntries = 8` ({ROCKET} src/main/scala/rocket/PTW.scala, "
     f"RocketCore.scala); optional L2 TLB in SRAM (`nL2TLBEntries = 0` by default)",
     f"about D$ latency + 2: s_req, s_wait1, s_wait2, s_wait3 with the response "
     f"registered (`mem_resp_valid = RegNext(...)`); a PTE-cache hit costs 1 cycle "
     f"({ROCKET} src/main/scala/rocket/PTW.scala)",
     f"0 extra cycles: `io.resp.paddr` is combinational from `io.req` ({ROCKET} "
     f"src/main/scala/rocket/TLB.scala)"),
    ("XiangShan",
     f"8 memory requests: 1 walker FSM for the upper levels + `llptwsize = 6` last-level "
     f"walkers + 1 G-stage walker (`MemReqWidth = llptwsize + 1 + 1`), misses queued "
     f"({XS} src/main/scala/xiangshan/cache/mmu/MMUConst.scala, PageTableWalker.scala)",
     f"Page Cache per level: l3 and l2 16 entries fully associative, l1 8 sets x 4 ways, "
     f"l0 32 sets x 8 ways, 16 superpage entries; an entry holds the 8 PTEs of a 64-byte "
     f"line ({XS} src/main/scala/xiangshan/cache/mmu/MMUConst.scala, PageTableCache.scala)",
     "one L2 cache access per level (64-byte line refills the Page Cache sector); the "
     "Page Cache answers the next cycle per PageTableCache.scala's header, a 4-stage "
     "access in OpenXiangShan/XiangShan-doc docs/memory/mmu/l2tlb.md",
     f"not stated in the files read (L1 TLB in {XS} src/main/scala/xiangshan/cache/mmu/TLB.scala)"),
]


def _ours():
    """(walks in flight, walk cache, cycles per level, hit latency) measured here."""
    import inspect
    from hw.mmu import MMU
    from .bench_rtl import _mapped_vm
    defaults = {name: p.default for name, p in inspect.signature(MMU).parameters.items()}
    per_level = []
    for name in ("ept4", "sv39x4"):
        levels, cycles = walk_latency(name, 1)
        per_level.append(f"{name} {(cycles - levels) / levels:.2f}")
    memory, context = _mapped_vm("ept4", [0x40_0000])
    run = run_mmu(memory, [context], [("req", 0x40_0000, "read", 0), ("drain",),
                                      ("req", 0x40_0008, "read", 0), ("drain",)], latency=1)
    return (f"{defaults['num_walkers']} walkers (`num_walkers`, 1 to 16), misses to a page being walked "
            f"join its walk (hw/mmu.py)",
            f"{defaults['pwc_entries']} entries per level for "
            f"levels 2 to 5, fully associative, round robin, tagged by VM, root and GPA "
            f"region (hw/pwc.py); a cached level still costs 2 walker cycles",
            "memory latency + " + ", ".join(per_level) + " (walker alone, measured)",
            f"{run.cycles[1]} cycles from request accepted to response (measured; TLB in "
            f"flip-flops, lookup registered, hw/tlb.py)")


def main(quick=False):
    rows = [["tdpwalk (this run)", *_ours()]]
    rows += [list(anchor) for anchor in ANCHORS]
    return [Table("Open MMUs compared",
                  ["design", "walks in flight", "walk cache", "cycles per level",
                   "TLB hit latency"], rows, __doc__.split("\n\n")[1].replace("\n", " "))]


if __name__ == "__main__":
    for table in main():
        print(table.text())
