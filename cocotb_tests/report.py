"""Turn a finished scenario run into the numbers of the report (JSON-serialisable)."""

__all__ = ["summarize", "percentile"]


def percentile(values, q):
    """The ``q``-th percentile (nearest rank) of ``values``; 0 for none."""
    if not values:
        return 0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def summarize(tb, scenario, seed, extra, seconds, window=100):
    """The report of one scenario run on ``tb``: translations, mismatches, what the
    scoreboard checked, faults, hit rate (RTL counters), walk latencies, flushes, dirty
    pages, hit rate over time.
    A scenario's own figures (``extra["details"]``: heading -> {name: count}) pass
    through for the report to print."""
    counters = tb.counters()
    guests = extra.get("guests", [])
    dirty = extra.get("dirty")
    dirty = dirty if isinstance(dirty, list) else [dirty] if dirty else []
    walks = [r.latency for r in tb.responses if not r.hit]
    timeline = []
    for start in range(0, len(tb.responses), window):
        chunk = tb.responses[start:start + window]
        timeline.append((chunk[-1].answered, sum(r.hit for r in chunk) / len(chunk)))
    sb = tb.scoreboard
    requests = counters["requests"]
    return {
        "scenario": scenario, "seed": seed,
        "guests": [g.name for g in guests],
        "responses": tb.answered,
        "translations": sum(g.stats["translations"] for g in guests),
        "mismatches": len(sb.mismatches), "mismatch_list": sb.mismatches[:20],
        "checked": sb.checked, "stale_hits_allowed": sb.stale_hits,
        "raced_faults": sb.raced_faults, "stale_kinds": sb.stale_kinds,
        # Each walk's memory traffic (WalkTrafficChecker), and the VMs' formats and A/D
        # modes ([format, mode] pairs) that say which of its checks apply.
        "pte_reads_checked": tb.traffic.reads,
        "atomic_compares_checked": tb.traffic.compares,
        "ad_done_checked": tb.traffic.walked,
        "ad_modes": sorted({(g.vm.fmt.name, g.vm.opts.ad) for g in tb.guests.values()}),
        # Model operations whose flush obligations were checked (checked_flush_sink).
        "obligation_checks": sum(getattr(getattr(g.vm, "sink", None), "checks", 0)
                                 for g in tb.guests.values()),
        "faults_handled": sum(g.stats["faults"] for g in guests),
        "emulated": sum(g.stats["emulated"] for g in guests),
        "tlb_hit_rate": counters["tlb_hits"] / requests if requests else 0.0,
        "counters": counters,
        "walk_latency_p50": percentile(walks, 50), "walk_latency_p99": percentile(walks, 99),
        "walk_latencies": walks, "hit_timeline": timeline,
        "flushes": tb.flushes,
        "dirty_writes": sum(d.writes for d in dirty),
        "dirty_pages_written": sum(len(d.pages_written) for d in dirty),
        "dirty_pages_harvested": sum(d.harvested for d in dirty),
        "dirty_harvests": sum(d.harvests for d in dirty),
        "dirty_lost": sum(d.lost for d in dirty),
        "levels": {g.name: g.levels for g in guests},
        "cycles": tb.cycle(), "seconds": seconds,
        "details": extra.get("details", {}),
    }
