"""Co-simulation speed of the MMU bench: translations per second for a hit-heavy and a
miss-heavy stream, with and without the scoreboard. Run by bench/bench_cosim.py through
:func:`cocotb_tests.runner.run_mmu` (``test_module="cocotb_tests.speed_bench"``).

The tables are built by the model before the clock starts (``handle_fault`` on every
page), so the stream itself never faults. Two drivers: the per-cycle one of the
hypervisor loop (requests queued up front, one presented per cycle while tags are
free), and batches of the :class:`~cocotb_tests.batch_shell.BatchShell` build
(``TDPWALK_BATCH=1``, :meth:`~cocotb_tests.mmu_tb.MmuTB.run_batch`), where Python
touches the simulator once per batch instead of every cycle.
Environment: ``TDPWALK_SCENARIOS`` (``hit``, ``miss``), ``TDPWALK_COUNT``,
``TDPWALK_CHECK`` (0 or 1), ``TDPWALK_BATCH`` (0 or 1), ``TDPWALK_RESULTS``.
"""

import os
import random
import time

import cocotb

from sw_model.memory import HostMemory

from .mmu_tb import MmuTB, record_result
from .scenarios import Guest

STREAMS = [n for n in os.environ.get("TDPWALK_SCENARIOS", "hit").split(",") if n]


@cocotb.test()
@cocotb.parametrize(stream=STREAMS)
async def speed(dut, stream):
    """Translate TDPWALK_COUNT requests of one stream; record the wall-clock rate."""
    count = int(os.environ.get("TDPWALK_COUNT", "5000"))
    check = os.environ.get("TDPWALK_CHECK", "1") == "1"
    tb = MmuTB(dut, HostMemory(16 << 20), latency=2, stall=0.0, keep=False, check=check)
    await tb.reset()
    guest = Guest(tb, 0, "ept4", random.Random(1), "hardware")
    pages = 16 if stream == "hit" else 2048
    rng = random.Random(2)
    for page in range(pages):       # 4 KiB mappings: every miss is a full walk
        guest.vm.handle_fault(page << 12, "write", max_level=1)
    tb.sync_context(0)
    tb.scoreboard.changed()
    gpas = [(rng.randrange(pages) << 12) | (rng.randrange(512) << 3) for _ in range(count)]
    # Warm up (fills the TLB for the hit stream), then measure.
    for gpa in gpas[:64]:
        await tb.access(0, gpa, "read")
    batch = os.environ.get("TDPWALK_BATCH", "0") == "1"
    start, cycles0 = time.perf_counter(), tb.cycle()
    if batch:
        for first in range(0, count, tb.batch_depth):
            await tb.run_batch([(0, gpa, "read") for gpa in gpas[first:first + tb.batch_depth]])
    else:
        last = None
        for gpa in gpas:
            last = tb.submit(0, gpa, "read")
        await last.done.wait()
        await tb.quiesce()
    seconds = time.perf_counter() - start
    counters = tb.counters()
    result = {"stream": stream, "count": count, "check": check, "batch": batch,
              "seconds": seconds, "checked": tb.scoreboard.checked,
              "rate": count / seconds, "cycles": tb.cycle() - cycles0,
              "hit_rate": counters["tlb_hits"] / max(counters["requests"], 1),
              "mismatches": len(tb.scoreboard.mismatches)}
    record_result(result)
    assert not tb.scoreboard.mismatches
