"""cocotb tests for the MMU top: one test per scenario named in ``TDPWALK_SCENARIOS``,
each on a fresh reset, its results appended to the JSON list in ``TDPWALK_RESULTS``.

Driven by :func:`cocotb_tests.runner.run_mmu` through environment variables:
``TDPWALK_SCENARIOS`` (comma-separated names from ``cocotb_tests.scenarios.SCENARIOS``),
``TDPWALK_SEED``, ``TDPWALK_SIZE`` (short / demo / long), ``TDPWALK_FORMAT`` (first
guest's format; default from the seed), ``TDPWALK_AD``, ``TDPWALK_LATENCY``,
``TDPWALK_STALL`` (AXI back-pressure), ``TDPWALK_RESP_STALL`` (response back-pressure:
the probability that ``resp.ready`` is low in a cycle, default 0),
``TDPWALK_PROGRESS`` (print progress every N responses), and
``TDPWALK_MUTATE=drop_flushes`` (the flush sink drops every invalidation: a broken
hypervisor the scoreboard must catch; used by the tests to show it has teeth).
"""

import os
import time

import cocotb

from sw_model.memory import HostMemory

from .mmu_tb import MmuTB, record_result
from .report import summarize
from .scenarios import SCENARIOS, SIZES, Env, pick_formats

NAMES = [n for n in os.environ.get("TDPWALK_SCENARIOS", "boot").split(",") if n]
_unknown = [n for n in NAMES if n not in SCENARIOS]
if _unknown:
    raise ValueError(f"TDPWALK_SCENARIOS: unknown scenario(s) {', '.join(_unknown)} "
                     f"(known: {', '.join(SCENARIOS)})")


@cocotb.test()
@cocotb.parametrize(scenario=NAMES)
async def run_scenario(dut, scenario):
    """One scenario on a fresh MMU; the scoreboard must report 0 mismatches."""
    seed = int(os.environ.get("TDPWALK_SEED", "0")) + NAMES.index(scenario)
    size = os.environ.get("TDPWALK_SIZE", "short")
    formats = pick_formats(seed, os.environ.get("TDPWALK_FORMAT") or None)
    env = Env(seed=seed, scale=SIZES[size], formats=formats,
              ad=os.environ.get("TDPWALK_AD") or None)
    memory = HostMemory(16 << 20)
    tb = MmuTB(dut, memory, latency=int(os.environ.get("TDPWALK_LATENCY", "2")),
               stall=float(os.environ.get("TDPWALK_STALL", "0.1")), seed=seed,
               resp_stall=float(os.environ.get("TDPWALK_RESP_STALL", "0")))
    every = int(os.environ.get("TDPWALK_PROGRESS", "0"))
    if every:
        start = time.monotonic()

        def progress(req):
            if tb.answered % every == 0:
                sb = tb.scoreboard
                print(f"  [{scenario}] {tb.answered} translations, "
                      f"{len(sb.mismatches)} mismatches, {tb.flushes} flushes, "
                      f"{tb.answered / (time.monotonic() - start):.0f}/s", flush=True)
        tb.on_response.append(progress)
    if os.environ.get("TDPWALK_MUTATE") == "drop_flushes":
        tb.queue_inval = lambda *args: None
    await tb.reset()
    wall = time.monotonic()
    dut._log.info("scenario %s seed %d formats %s", scenario, seed, formats)
    try:
        extra = await SCENARIOS[scenario](tb, env)
        await tb.quiesce()
        await tb.drain_invals()
    except Exception as e:
        # What the command line needs to name the scenario and replay it.
        record_result({"scenario": scenario, "seed": seed, "formats": formats,
                       "failed": f"{type(e).__name__}: {e}".splitlines()[0][:300]})
        raise
    result = summarize(tb, scenario, seed, extra, time.monotonic() - wall)
    record_result(result)
    dut._log.info("%s: %s", scenario, {k: v for k, v in result.items()
                                        if not isinstance(v, (list, dict))})
    if tb.scoreboard.mismatches:
        record_result({"scenario": scenario, "seed": seed, "formats": formats,
                       "failed": f"{len(tb.scoreboard.mismatches)} mismatches"})
    assert not tb.scoreboard.mismatches, (
        f"{scenario} (seed {seed}): {len(tb.scoreboard.mismatches)} mismatches; first: "
        f"{tb.scoreboard.mismatches[0]}")
