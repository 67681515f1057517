"""Nested virtualization: the structural costs of shadow TDP and KPOP on the same L2
workload (sw_model.nested.workload: L1 maps, unmaps, remaps, zaps, ages, flushes and
dirty-logs L2 memory while L2 runs), with the reference walker as the hardware.

The KPOP proposal measured under 1% difference in CPU benchmarks; these are the
structural costs behind that: exits to L0, TLB flushes, table pages and table writes.
Model-only; the co-simulation scenario ``nested`` runs the same workload on the RTL.
"""

import time

from bench.report import Table
from sw_model.nested import DESIGNS, build, make_workload, run_model

ROWS = [("table_pages_peak", "L0-built table pages (peak)"),
        ("table_writes", "L0-built table entries written"),
        ("l1_table_pages", "L1's own table pages (end)"),
        ("l1_table_writes", "L1 table words written"),
        ("exits", "exits to L0 (all)"),
        ("l2_faults", "  L2 faults taken by L0"),
        ("reflected_to_l1", "  of which reflected to L1"),
        ("wp_exits", "  write-protection exits"),
        ("invept_exits", "  INVEPT exits"),
        ("hypercalls", "  hypercalls"),
        ("tlb_flushes", "TLB flushes of the L2 context"),
        ("translations", "L2 translations checked"),
        ("dirty_lost", "dirty pages lost")]

CONFIGS = [("ept4", "hardware"), ("ept4", "off"), ("npt4", "hardware"), ("sv39x4", "fault")]


def measure(fmt, ad, seeds, scale):
    """Summed costs per design over ``seeds``."""
    total = {}
    for design in DESIGNS:
        sums = {}
        for seed in seeds:
            for key, value in run_model(build(design, fmt, ad=ad),
                                        make_workload(seed, scale)).summary().items():
                sums[key] = sums.get(key, 0) + value
        total[design] = sums
    return total


def main(quick=False):
    seeds, scale = ([1], 1) if quick else ([1, 2, 3], 3)
    configs = CONFIGS[:1] if quick else CONFIGS
    tables = []
    for fmt, ad in configs:
        print(f"nested: {fmt} A/D {ad} ...", flush=True)
        start = time.process_time()
        costs = measure(fmt, ad, seeds, scale)
        rows = []
        for key, label in ROWS:
            s, k = costs["shadow"][key], costs["kpop"][key]
            ratio = f"{k / s:.2f}" if s else "-"
            rows.append([label, s, k, ratio])
        table = Table(
            title=f"Nested paging, shadow TDP vs KPOP ({fmt}, A/D {ad})",
            columns=["cost", "shadow TDP", "KPOP", "KPOP / shadow"], rows=rows,
            note=(f"same L2 workload (seeds {seeds}, scale {scale}: "
                  f"{len(make_workload(seeds[0], scale))} L1 operations per seed), summed; "
                  f"reference walker as the hardware; "
                  f"{time.process_time() - start:.1f} CPU-s"))
        tables.append(table)
    return tables


if __name__ == "__main__":
    import sys
    for t in main(quick="--quick" in sys.argv):
        print(t.text())
