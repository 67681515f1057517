"""Long regressions (issue 10): a scoreboarded random stream for the MMU top, and the
pytest plugin behind ``make regress`` that prints a summary table.

The stream (a cocotb test, run by tests/test_regress.py through
:func:`cocotb_tests.runner.run_mmu` with ``test_module="cocotb_tests.regress"``): two
VMs of one format (``TDPWALK_FORMAT``) with different A/D modes where the format has
two, their slot 0 mapped by the model before traffic with 4 KiB and huge pages and
holes, then ``TDPWALK_COUNT`` random reads, writes and fetches with locality, many in
flight, every answer checked by the scoreboard against the reference walker. Every
``TDPWALK_CHURN`` requests the model zaps and remaps a random range (a range
invalidation racing the stream), so stale hits would show. The fast path is
:mod:`cocotb_tests.speed_bench`'s: tables built up front, requests queued in chunks.

The plugin (``pytest -p cocotb_tests.regress``): it wraps :func:`run_mmu` so every MMU
run of a test is recorded (runs, translations, mismatches, seconds, per simulator x
scenario or format), carries the records from xdist workers in the reports'
``user_properties``, and prints the table and the seed of every failure at the end.
"""

import collections
import json
import os
import random
import time

import cocotb
import pytest

from sw_model.memory import HostMemory

from .mmu_tb import MmuTB
from .scenarios import SLOT0_PAGES, Guest

__all__ = ["stream"]

ACCESSES = ("read",) * 6 + ("write",) * 3 + ("execute",)


#: Simulated-time limit: a hang fails instead of spinning (about 15 ns per translation
#: is typical; the limit allows 100).
TIMEOUT_US = 10_000 + int(os.environ.get("TDPWALK_COUNT", "20000")) // 10


@cocotb.test(timeout_time=TIMEOUT_US, timeout_unit="us")
async def stream(dut):
    """TDPWALK_COUNT scoreboarded random translations of one format; 0 mismatches."""
    name = os.environ.get("TDPWALK_FORMAT", "ept4")
    count = int(os.environ.get("TDPWALK_COUNT", "20000"))
    churn = int(os.environ.get("TDPWALK_CHURN", "50000"))
    every = int(os.environ.get("TDPWALK_PROGRESS", "0"))
    seed = int(os.environ.get("TDPWALK_SEED", "0"))
    rng = random.Random(seed)
    tb = MmuTB(dut, HostMemory(16 << 20), latency=2, stall=0.0, seed=seed, keep=False)
    await tb.reset()
    guests = []
    for index in range(2):
        guest = Guest(tb, index, name, random.Random(seed + index), None)
        if index and guest.vm.opts.ad == guests[0].vm.opts.ad:
            modes = guest.vm.fmt.ad_modes
            guest = Guest(tb, index, name, random.Random(seed + index),
                          modes[(modes.index(guests[0].vm.opts.ad) + 1) % len(modes)])
        guests.append(guest)
    # Three quarters of slot 0 mapped, a quarter of it in 4 KiB pages, the rest holes.
    mapped = {}
    for guest in guests:
        pages = rng.sample(range(SLOT0_PAGES), SLOT0_PAGES * 3 // 4)
        for n, gfn in enumerate(pages):
            guest.vm.handle_fault(gfn << 12, "write", max_level=1 if n % 4 == 0 else None)
        mapped[guest.index] = pages
        tb.sync_context(guest.index)
    tb.scoreboard.changed()
    await tb.drain_invals()
    start, done, chunk = time.monotonic(), 0, 4096
    hot = {g.index: rng.sample(range(SLOT0_PAGES), 64) for g in guests}
    next_churn = churn
    while done < count:
        n = min(chunk, count - done)
        last = None
        for _ in range(n):
            guest = guests[rng.randrange(2)]
            gfn = rng.choice(hot[guest.index]) if rng.random() < 0.7 else \
                rng.randrange(SLOT0_PAGES)
            last = tb.submit(guest.index, (gfn << 12) | (rng.randrange(512) << 3),
                             rng.choice(ACCESSES))
        await last.done.wait()
        await tb.quiesce()
        done += n
        tb.axi.transactions.clear()
        if done >= next_churn:
            next_churn += churn
            guest = guests[rng.randrange(2)]
            base = rng.randrange(SLOT0_PAGES)
            end = min(base + rng.choice((1, 16, 512)), SLOT0_PAGES)
            await tb.model_step(guest.vm.zap_gfn_range, base, end)
            for gfn in range(base, end, 7):
                await tb.model_step(guest.vm.handle_fault, gfn << 12, "write")
            hot[guest.index] = rng.sample(range(SLOT0_PAGES), 64)
        if every and done % every < chunk:
            print(f"  [stream {name}] {done} translations, "
                  f"{len(tb.scoreboard.mismatches)} mismatches, "
                  f"{done / (time.monotonic() - start):.0f}/s", flush=True)
        if tb.scoreboard.mismatches:
            break
    await tb.drain_invals()
    sb = tb.scoreboard
    counters = tb.counters()
    result = {"scenario": "stream", "format": name, "seed": seed, "translations": tb.answered,
              "checked": sb.checked, "mismatches": len(sb.mismatches),
              "mismatch_list": sb.mismatches[:10], "stale_hits_allowed": sb.stale_hits,
              "tlb_hit_rate": counters["tlb_hits"] / max(counters["requests"], 1),
              "flushes": tb.flushes, "ad_modes": [g.vm.opts.ad for g in guests],
              "seconds": time.monotonic() - start}
    out = os.environ.get("TDPWALK_RESULTS")
    if out:
        with open(out, "w") as f:
            json.dump([result], f)
    assert not sb.mismatches, (f"stream {name} seed {seed}: {len(sb.mismatches)} mismatches;"
                               f" first: {sb.mismatches[0]}")


# -- the pytest plugin (make regress) -----------------------------------------------------

_runs = []          # MMU runs of the current test, in a worker
_config = []        # the pytest config, once configured


def _row(item):
    """A table row name: the scenario, or ``stream <format>``."""
    if item.get("scenario") == "stream":
        return f"stream {item.get('format')}"
    return item.get("scenario", "?")


def pytest_configure(config):
    """Wrap run_mmu before the test modules import it."""
    from . import runner
    original = runner.run_mmu
    if getattr(original, "_regress", False):
        _config.append(config)
        return

    def run_mmu(sim, scenarios, *args, **kwargs):
        wall = time.monotonic()
        try:
            data = original(sim, scenarios, *args, **kwargs)
        except AssertionError:
            _runs.append({"sim": sim, "row": f"{','.join(scenarios)}", "failed": True,
                          "seconds": time.monotonic() - wall,
                          "seed": kwargs.get("seed", 0)})
            raise
        for item in data:
            _runs.append({"sim": sim, "row": _row(item), "failed": False,
                          "translations": item.get("translations", item.get("responses", 0)),
                          "mismatches": item.get("mismatches", 0),
                          "seconds": item.get("seconds", 0.0), "seed": item.get("seed")})
        return data

    run_mmu._regress = True
    runner.run_mmu = run_mmu
    _config.append(config)
    config._regress_rows = collections.defaultdict(
        lambda: {"runs": 0, "failed": 0, "translations": 0, "mismatches": 0, "seconds": 0.0})
    config._regress_failures = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    """Attach the test's MMU runs to its report (xdist sends them to the controller)."""
    _runs.clear()
    yield
    if _runs:
        item.user_properties.append(("regress", json.dumps(_runs)))
        _runs.clear()


def pytest_runtest_logreport(report):
    """In the controller (or without xdist): add the test's MMU runs to the table."""
    config = _config[0] if _config else None
    if config is None:
        return
    if report.failed:
        config._regress_failures.append((report.nodeid, str(report.longrepr)
                                         .strip().splitlines()[-1][:300]))
    if report.when != "call" or report.skipped:
        return
    props = [value for key, value in getattr(report, "user_properties", ())
             if key == "regress"]
    if not props:       # a slow test without MMU runs: count it by module
        row = config._regress_rows[("python", report.nodeid.split("::")[0])]
        row["runs"] += 1
        row["failed"] += report.failed
        row["seconds"] += report.duration
    for value in props:
        for run in json.loads(value):
            row = config._regress_rows[(run["sim"], run["row"])]
            row["runs"] += 1
            row["failed"] += run["failed"]
            row["translations"] += run.get("translations", 0)
            row["mismatches"] += run.get("mismatches", 0)
            row["seconds"] += run["seconds"]
            if run["failed"] or run.get("mismatches"):
                config._regress_failures.append(
                    (report.nodeid, f"{run['sim']} {run['row']} seed {run['seed']}"))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    rows = getattr(config, "_regress_rows", None)
    if rows is None or not rows and not config._regress_failures:
        return
    tr = terminalreporter
    tr.section("tdpwalk regression summary")
    head = f"{'simulator':<10} {'scenario / format':<28} {'runs':>5} {'failed':>6} " \
           f"{'translations':>13} {'mismatches':>10} {'time (s)':>9}"
    tr.write_line(head)
    tr.write_line("-" * len(head))
    total = collections.Counter()
    for (sim, row), v in sorted(rows.items()):
        tr.write_line(f"{sim:<10} {row:<28} {v['runs']:>5} {v['failed']:>6} "
                      f"{v['translations']:>13,} {v['mismatches']:>10} {v['seconds']:>9.0f}")
        for k in ("runs", "failed", "translations", "mismatches"):
            total[k] += v[k]
        total["seconds"] += v["seconds"]
    tr.write_line("-" * len(head))
    tr.write_line(f"{'total':<39} {total['runs']:>5} {total['failed']:>6} "
                  f"{total['translations']:>13,} {total['mismatches']:>10} "
                  f"{total['seconds']:>9.0f}")
    for nodeid, what in config._regress_failures:
        tr.write_line(f"FAILED {nodeid}: {what}")
