"""Long regressions: a scoreboarded random stream for the MMU top.

The stream (a cocotb test, run by tests/test_regress.py through
:func:`cocotb_tests.runner.run_mmu` with ``test_module="cocotb_tests.regress"``): two
VMs of one format (``TDPWALK_FORMAT``) with different A/D modes where the format has
two, their slot 0 mapped by the model before traffic with 4 KiB and huge pages and
holes, then ``TDPWALK_COUNT`` random reads, writes and fetches with locality, many in
flight, every answer checked by the scoreboard against the reference walker and every
walk's PTE reads and A/D updates by its traffic checker (the result has their counts,
:func:`cocotb_tests.report.scoreboard_counts`). Every ``TDPWALK_CHURN`` requests the
model zaps and remaps a random range (a range invalidation racing the stream), so stale
hits would show. The fast path is :mod:`cocotb_tests.speed_bench`'s: tables built up
front, requests queued in chunks.

``make regress`` runs it with every other slow test as tasks on a Dask cluster
(:mod:`cocotb_tests.regress_cluster`).
"""

import json
import os
import random
import time

import cocotb

from sw_model.memory import HostMemory

from .mmu_tb import MmuTB
from .report import scoreboard_counts
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
              "mismatches": len(sb.mismatches), "mismatch_list": sb.mismatches[:10],
              **scoreboard_counts(tb),
              "tlb_hit_rate": counters["tlb_hits"] / max(counters["requests"], 1),
              "flushes": tb.flushes, "seconds": time.monotonic() - start}
    out = os.environ.get("TDPWALK_RESULTS")
    if out:
        with open(out, "w") as f:
            json.dump([result], f)
    assert not sb.mismatches, (f"stream {name} seed {seed}: {len(sb.mismatches)} mismatches;"
                               f" first: {sb.mismatches[0]}")
