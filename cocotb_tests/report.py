"""Turn a finished scenario run into the numbers of the report (JSON-serialisable), and
judge what its scoreboard accepted against the bounds every co-simulation run keeps."""

from sw_model.formats import get_format

__all__ = ["summarize", "percentile", "scoreboard_counts", "bound_problems",
           "TRAFFIC_COUNTS", "RACED_FAULTS_MAX", "STALE_HITS_MAX"]

#: Bounds on what the scoreboard accepts without a reference equal to the answer, as
#: fractions of the answers it checked: faults of requests that raced a model step
#: (none seen in the scenarios, short or long) and hits on translations the model
#: changed without owing a flush yet (up to 32 % seen, in huge_recovery: splits).
RACED_FAULTS_MAX, STALE_HITS_MAX = 0.01, 0.5

#: What a co-simulation run's result counts of the scoreboard's checks and acceptances
#: (the regression adds them up per simulator and scenario).
TRAFFIC_COUNTS = ("pte_reads_checked", "atomic_compares_checked", "ad_done_checked",
                  "stale_hits_allowed", "raced_faults")


def bound_problems(results):
    """How the results of one simulator run (scenarios, fault tests or a stream, each
    with the fields of :func:`scoreboard_counts`) break the bounds on what their
    scoreboard checked and accepted: ``(index, message)`` pairs, ``index`` that of the
    result concerned; empty when none does.

    Every result checked PTE reads (every run walks) and kept the stale hits and raced
    faults it accepted within their bounds. Where x86 hardware sets A/D bits, walks set
    A in the tables the model makes without it, so AtomicCompares were checked (RISC-V
    Svadu sets A/D in leaves only, and the model makes leaves with A set: a G-stage run
    may owe no update). Most answers are TLB hits or race a model step, so few per
    result are checked for the A/D updates they owe, but some are over the results of
    a run with hardware A/D."""
    found = []
    for i, r in enumerate(results):
        name, checked = f"{r['scenario']} (seed {r['seed']})", r["checked"]
        if r["raced_faults"] > RACED_FAULTS_MAX * checked:
            found.append((i, f"{name}: {r['raced_faults']} raced faults accepted in "
                             f"{checked} answers checked, above {RACED_FAULTS_MAX:.0%}"))
        if r["stale_hits_allowed"] > STALE_HITS_MAX * checked:
            found.append((i, f"{name}: {r['stale_hits_allowed']} stale hits accepted in "
                             f"{checked} answers checked, above {STALE_HITS_MAX:.0%} "
                             f"({r['stale_kinds']})"))
        if not r["pte_reads_checked"]:
            found.append((i, f"{name}: no PTE read checked"))
        if not r["atomic_compares_checked"] and any(
                mode == "hardware" and get_format(fmt).arch != "gstage"
                for fmt, mode in r["ad_modes"]):
            found.append((i, f"{name}: no AtomicCompare checked, with x86 hardware A/D "
                             f"({r['ad_modes']})"))
    hardware = [i for i, r in enumerate(results)
                if any(mode == "hardware" for _, mode in r["ad_modes"])]
    if not sum(results[i]["ad_done_checked"] for i in hardware):
        found += [(i, f"{results[i]['scenario']} (seed {results[i]['seed']}): no walked "
                      f"answer checked for the A/D updates it owes, in any of the run's "
                      f"{len(hardware)} results with hardware A/D") for i in hardware]
    return found


def percentile(values, q):
    """The ``q``-th percentile (nearest rank) of ``values``; 0 for none."""
    if not values:
        return 0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def scoreboard_counts(tb):
    """What ``tb``'s scoreboard and its :class:`~cocotb_tests.mmu_tb.WalkTrafficChecker`
    checked and accepted (``checked``, :data:`TRAFFIC_COUNTS`, ``stale_kinds``), and
    the VMs' formats and A/D modes (``ad_modes``, [format, mode] pairs) that say which
    traffic checks apply: what :func:`bound_problems` judges."""
    sb, traffic = tb.scoreboard, tb.traffic
    return {"checked": sb.checked, "stale_hits_allowed": sb.stale_hits,
            "raced_faults": sb.raced_faults, "stale_kinds": sb.stale_kinds,
            "pte_reads_checked": traffic.reads, "atomic_compares_checked": traffic.compares,
            "ad_done_checked": traffic.walked,
            "ad_modes": sorted({(g.vm.fmt.name, g.vm.opts.ad) for g in tb.guests.values()})}


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
        **scoreboard_counts(tb),
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
