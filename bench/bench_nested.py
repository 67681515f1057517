"""Nested virtualization: the structural costs of shadow TDP and KPOP on the same L2
workload (sw_model.nested.workload: L1 maps, unmaps, remaps, zaps, ages, flushes,
dirty-logs and write-tracks L2 memory while L2 runs, and L0 emulates L2 instructions),
with the reference walker as the hardware; then L0 migrating L1 under shadow TDP (the
same workload with L0 dirty-logging L1's memory), with and without eager splitting of
the shadow MMU's huge pages.

The KPOP proposal measured under 1% difference in CPU benchmarks; these are the
structural costs behind that: exits to L0, TLB flushes, table pages and table writes.
Model-only; the co-simulation scenarios ``nested`` and ``nested_migrate`` run the same
workloads on the RTL.
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
        ("unsync", "last-level shadow pages let go unsync"),
        ("resyncs", "  resynced at INVEPT"),
        ("resync_zapped", "  entries dropped by the resync"),
        ("l1_faults", "L1's other faults on L0's tables for it"),
        ("tlb_flushes", "TLB flushes of the L2 context"),
        ("translations", "L2 translations checked"),
        ("emulations", "L2 instructions emulated (gva_to_gpa)"),
        ("tracked_writes", "L2 writes to L1-tracked pages (emulated)"),
        ("dirty_lost", "dirty pages lost")]

MIGRATE_ROWS = [("l2_faults", "L2 faults taken by L0"),
                ("fast_faults", "  fast: W restored, no walk of L1's tables"),
                ("l0_faults", "  slow: L1's tables walked, entry built"),
                ("reflected_to_l1", "  reflected to L1"),
                ("l0_log_protected", "shadow leaves write-protected for L0's log"),
                ("split", "huge pages split eagerly"),
                ("split_entries", "  entries written by the splits"),
                ("aliased", "  (3) an alias's direct page reused"),
                ("aliased_flush", "  (3) of which linking a lower table: flushed at once"),
                ("refused_budget", "  (1) refused: shadow-page budget low"),
                ("skipped_unsync_invalid", "  (2) skipped: unsync or invalid page"),
                ("rmap_cache_dry", "  (4) entries left not present: no descriptor"),
                ("rmap_cache_dry_pages", "  (4) reused pages not linked: no descriptor"),
                ("zapped_oldest", "shadow pages zapped for the budget"),
                ("l0_collapsed", "4 KiB leaves zapped when logging stops"),
                ("table_pages_peak", "shadow table pages (peak)"),
                ("l0_log_ms", "CPU time to enable L0's logging (ms, model)"),
                ("l0_harvests", "L0 harvests"),
                ("l0_dirty_written", "  L1 pages written while logged"),
                ("l0_dirty_lost", "  of which missing from L0's log"),
                ("dirty_lost", "L2 pages missing from L1's own log")]

CONFIGS = [("ept4", "hardware"), ("ept4", "off"), ("npt4", "hardware"), ("sv39x4", "fault")]
MIGRATE_CONFIGS = [("sv48x4", "hardware"), ("ept4", "hardware")]
#: The constrained column: a small shadow-page budget and split cache, to show the
#: policies that refuse or leave entries out.
CONSTRAINED = {"max_shadow_pages": 20, "split_desc_capacity": 8}


def _summed(design, fmt, ad, seeds, scale, options=None, **workload):
    sums = {}
    for seed in seeds:
        drv = run_model(build(design, fmt, ad=ad, **(options or {})),
                        make_workload(seed, scale, **workload))
        for key, value in drv.summary().items():
            # Peaks are the largest of the seeds; everything else is summed.
            sums[key] = max(sums.get(key, 0), value) if key.endswith("_peak") \
                else sums.get(key, 0) + value
    sums["l0_log_ms"] = round(1000 * sums.get("l0_log_seconds", 0), 1)
    return sums


def measure(fmt, ad, seeds, scale):
    """Summed costs per design over ``seeds``."""
    return {design: _summed(design, fmt, ad, seeds, scale) for design in DESIGNS}


def measure_migration(fmt, ad, seeds, scale):
    """Shadow TDP with L0 logging: eager splitting, none, and eager splitting with
    :data:`CONSTRAINED` resources."""
    return {"eager": _summed("shadow", fmt, ad, seeds, scale, migrate=True),
            "lazy": _summed("shadow", fmt, ad, seeds, scale, migrate=True, eager_split=False),
            "constrained": _summed("shadow", fmt, ad, seeds, scale, CONSTRAINED, migrate=True)}


def main(quick=False):
    seeds, scale = ([1], 1) if quick else ([1, 2, 3], 3)
    tables = []
    for fmt, ad in CONFIGS[:1] if quick else CONFIGS:
        print(f"nested: {fmt} A/D {ad} ...", flush=True)
        start = time.process_time()
        costs = measure(fmt, ad, seeds, scale)
        rows = []
        for key, label in ROWS:
            s, k = costs["shadow"][key], costs["kpop"][key]
            rows.append([label, s, k, f"{k / s:.2f}" if s else "-"])
        tables.append(Table(
            title=f"Nested paging, shadow TDP vs KPOP ({fmt}, A/D {ad})",
            columns=["cost", "shadow TDP", "KPOP", "KPOP / shadow"], rows=rows,
            note=(f"same L2 workload (seeds {seeds}, scale {scale}: "
                  f"{len(make_workload(seeds[0], scale))} L1 operations per seed), summed "
                  f"(peaks: the largest); "
                  f"reference walker as the hardware; "
                  f"{time.process_time() - start:.1f} CPU-s")))
    for fmt, ad in MIGRATE_CONFIGS[:1] if quick else MIGRATE_CONFIGS:
        print(f"nested: L0 migrating L1, {fmt} A/D {ad} ...", flush=True)
        start = time.process_time()
        costs = measure_migration(fmt, ad, seeds, scale)
        rows = [[label] + [costs[c].get(key, 0) for c in ("eager", "lazy", "constrained")]
                for key, label in MIGRATE_ROWS]
        tables.append(Table(
            title=f"Nested paging, L0 migrating L1 under shadow TDP ({fmt}, A/D {ad})",
            columns=["cost", "eager splitting", "no eager splitting",
                     "eager, budget 20 pages, cache 8 descriptors"], rows=rows,
            note=(f"the workload above with L0 logging both memslots of L1's RAM (seeds "
                  f"{seeds}, scale {scale}: "
                  f"{len(make_workload(seeds[0], scale, migrate=True))} operations per "
                  f"seed), summed (peaks: the largest); reference walker as the hardware; "
                  f"{time.process_time() - start:.1f} CPU-s")))
    return tables


if __name__ == "__main__":
    import sys
    for t in main(quick="--quick" in sys.argv):
        print(t.text())
