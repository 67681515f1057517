"""Fault injection on the MMU top: one cocotb test per fault named in
``TDPWALK_SCENARIOS``, each on a fresh reset, results appended to ``TDPWALK_RESULTS``.

Run by :func:`cocotb_tests.runner.run_mmu` with ``test_module="cocotb_tests.fault_bench"``
(tests/test_cocotb_faults.py). Environment: ``TDPWALK_SCENARIOS`` (names from
:data:`FAULTS`), ``TDPWALK_SEED``, ``TDPWALK_SIZE`` (``short`` for ``make test``, ``long``
for ``make regress``), ``TDPWALK_FORMAT`` (one format instead of a seeded choice).
``TDPWALK_FAULTS``, when set, names the fault tests instead of ``TDPWALK_SCENARIOS``: the
fault bench then runs after :mod:`cocotb_tests.mmu_bench` in one simulator process
(``test_module="cocotb_tests.mmu_bench,cocotb_tests.fault_bench"``), which takes its
scenarios from ``TDPWALK_SCENARIOS``, so that one waveform holds both.

Faults (docs/verification.md says what each one catches):

``bus_error``
    SLVERR on a chosen PTE read, a chosen A/D AtomicCompare, or any of them at random.
    The answer must be the reference walker's on the same memory with those words
    failing (a ``bus_error`` fault at that entry; A/D updates before it done, none
    after), and nothing may be cached from it: the retry walks and reads the entry again.
``chaos``
    The hypervisor-loop scenarios (``boot``, ``mixed``) with a random latency per AXI
    response (responses of different IDs pass each other) and back-pressure on all five
    channels; the scoreboard checks every response.
``reset_walk`` / ``reset_inval``
    Reset asserted while walks, or a TLB/walk-cache invalidation, are in flight, at a
    swept cycle offset. Afterwards the first access to every previously cached page
    must walk (:attr:`Response.hit` false), answers must match the reference, and the
    translation removed just before the reset must not come back.
``inval_offset``
    The model zaps a page (or its whole 2 MiB table) and invalidates it at every cycle
    offset of a walk to that page, cold or with a warm walk cache; after ``inval_done``
    the page must fault (a walk that read the old tables must not have filled the TLB).
``ad_race``
    Software rewrites the PTE between the walker's read and its A/D compare (sets A,
    unmaps, removes write permission, remaps). The compare fails, the walk restarts, and
    the answer and the memory afterwards equal the reference walker's on the new word.
    The scoreboard checks the walk's reads and compares, before and after the restart,
    the change counting as a model step the request raced.

Each result has the scoreboard's counts (:func:`cocotb_tests.report.scoreboard_counts`:
the answers it checked, each walk's traffic checked, what it accepted), judged by
:func:`cocotb_tests.report.bound_problems`, and ``fault_checks``, the fault test's own
comparisons of the answers the scoreboard leaves to it.
"""

import collections
import os
import random
import time

import cocotb
import numpy as np
from cocotb.triggers import ClockCycles, RisingEdge

from hw.tlb import InvalKind
from sw_model.formats import FORMAT_NAMES, get_format
from sw_model.memory import HostMemory, MemoryAccessError
from sw_model.walker import translate

from .mmu_tb import MmuTB, _key, record_result
from .report import scoreboard_counts
from .scenarios import SCENARIOS, SLOT0_PAGES, Env, Guest, pick_formats

__all__ = ["FAULTS", "FaultTB", "FaultView"]

SIZES = {"short": 1, "long": 10}


class FaultView:
    """A :class:`HostMemory` seen through injected bus errors: the reference memory for
    a walk whose reads of ``reads`` or AtomicCompares at ``atomics`` answered SLVERR.

    Members
    -------
    mem : HostMemory
    reads, atomics : set of int
    """

    def __init__(self, mem, reads=(), atomics=()):
        self.mem, self.reads, self.atomics = mem, set(reads), set(atomics)

    def read64(self, addr):
        if addr in self.reads:
            raise MemoryAccessError(f"injected read error at {addr:#x}")
        return self.mem.read64(addr)

    def cmpxchg64(self, addr, old, new):
        if addr in self.atomics:
            raise MemoryAccessError(f"injected AtomicCompare error at {addr:#x}")
        return self.mem.cmpxchg64(addr, old, new)


class FaultTB(MmuTB):
    """:class:`MmuTB` that can assert reset in the middle of traffic.

    Members
    -------
    lost : int
        Requests dropped by resets (never answered, as the MMU forgets them).
    resets : int
    """

    def __init__(self, dut, memory, **kwargs):
        super().__init__(dut, memory, **kwargs)
        self.lost = self.resets = 0
        self._pump_task = None

    def _zero_inputs(self):
        for name in ("ctx__valid", "ctx__index", "ctx__data", "req__payload", "req__valid",
                     "inval__valid", "inval__payload"):
            getattr(self.dut, name).value = 0
        self.dut.resp__ready.value = 1

    async def reset(self):
        """Power-on reset, as :meth:`MmuTB.reset`, keeping the driver's task."""
        self._zero_inputs()
        for name in ("axi__rdata", "axi__rresp", "axi__rid", "axi__rlast", "axi__bresp",
                     "axi__bid"):
            getattr(self.dut, name).value = 0
        self.dut.rst.value = 1
        await ClockCycles(self.dut.clk, 3)
        self.dut.rst.value = 0
        await RisingEdge(self.dut.clk)
        self._pump_task = cocotb.start_soon(self._pump())

    async def hard_reset(self, cycles=2):
        """Assert reset now, whatever is in flight, for ``cycles`` clocks. Requests and
        invalidations in flight are dropped (the list of dropped requests is returned);
        the TB then rewrites every guest's context. A reset empties the TLB and walk
        cache, so the scoreboard treats it as an invalidation of everything: any later
        hit on a translation cached before it is a mismatch."""
        self._pump_task.cancel()
        self.dut.rst.value = 1
        self._zero_inputs()
        await ClockCycles(self.dut.clk, cycles)
        lost = list(self._outstanding.values()) + list(self._queue)
        if self._driving is not None:
            lost.append(self._driving)
        self.lost += len(lost)
        self.resets += 1
        self._outstanding.clear()
        self._queue.clear()
        self._driving = self._inval_driving = None
        self._free_tags = collections.deque(range(1 << self.tag_bits))
        self._ctx_queue.clear()
        self._inval_queue.clear()
        self._inval_completed = self._inval_accepted
        for _, event in self._inval_waiters:
            event.set()
        self._inval_waiters.clear()
        self._inval_done.set()
        self.scoreboard.invalidated(None, None, 0, self.cycle())
        self.scoreboard.changed()
        self.contexts.clear()
        self.dut.rst.value = 0
        await RisingEdge(self.dut.clk)
        self._pump_task = cocotb.start_soon(self._pump())
        for index in self.guests:
            self.sync_context(index)
        return lost

    async def flush_vm(self, vm_index):
        """Invalidate one VM's TLB and walk-cache entries and wait until done."""
        self.queue_inval(InvalKind.VM, vm_index, 0, 0)
        await self.drain_invals()


# -- helpers ------------------------------------------------------------------------------


def _prefault(tb, guest, gfns, max_level=None):
    """Map ``gfns`` in the model before any traffic (no fault goes through the RTL)."""
    for gfn in gfns:
        guest.vm.handle_fault(gfn << 12, "write", max_level=max_level)
    tb.sync_context(guest.index)
    tb.scoreboard.changed()


def _reference(guest, mem, gpa, access, **kwargs):
    return translate(mem, guest.vm.fmt, guest.vm.root_for(0), gpa, access, vm=guest.vm.opts,
                     **kwargs)


def _ad_mask(fmt):
    return fmt.fields["a"].mask | fmt.fields["d"].mask


class Checker:
    """Counts and records the fault tests' own comparisons (the scoreboard is off for
    requests whose answer depends on an injected fault).

    Members
    -------
    checked : int
    mismatches : list of dict
    """

    def __init__(self, tb, seed):
        self.tb, self.seed = tb, seed
        self.checked = 0
        self.mismatches = []

    def expect(self, what, condition, **details):
        self.checked += 1
        if not condition:
            details = {k: (v.to_json() if hasattr(v, "to_json") else v)
                       for k, v in details.items()}
            self.mismatches.append({"check": what, **details})
            if len(self.mismatches) <= 5:
                self.tb.log.error("seed %d: %s failed: %s", self.seed, what, details)
        return condition


def _software_changed(tb):
    """Software changed the tables while the simulator runs, outside a model step: the
    scoreboard takes new references of the requests in flight, which race the change
    as they would race a model step."""
    tb.scoreboard.changed()
    for req in tb.in_flight():
        req.raced = True
        tb.scoreboard.take(req, tb.cycle())


async def _unchecked_access(tb, vm_index, gpa, access):
    """One access whose answer the fault test checks itself."""
    tb.check = False
    try:
        return await tb.access(vm_index, gpa, access)
    finally:
        tb.check = True


# -- the faults --------------------------------------------------------------------------


async def bus_error(tb, env, chk, formats):
    """SLVERR on PTE reads and A/D AtomicCompares, by address and at random."""
    axi = tb.axi
    stats = collections.Counter()
    for n, name in enumerate(formats):
        rng = random.Random(env.seed * 31 + n)
        guest = Guest(tb, n % 4, name, rng, "hardware")
        fmt = guest.vm.fmt
        gfns = rng.sample(range(SLOT0_PAGES), 48)
        _prefault(tb, guest, gfns[:24], max_level=1)
        _prefault(tb, guest, gfns[24:])
        await tb.drain_invals()
        for _ in range(16 * env.scale):
            gpa = (rng.choice(gfns) << 12) | (rng.randrange(512) << 3)
            access = rng.choice(("read", "read", "write", "execute"))
            walk = _reference(guest, tb.memory, gpa, access, ad_update=False)
            if rng.random() < 0.6:      # clear A/D so the walk must write them (with a
                for addr in walk.pte_addrs:     # flush: cached entries keep them set)
                    tb.memory.write64(addr, tb.memory.read64(addr) & ~_ad_mask(fmt))
                tb.scoreboard.changed()
                await tb.flush_vm(guest.index)
            elif rng.random() < 0.5:
                await tb.flush_vm(guest.index)
            walk = _reference(guest, tb.memory, gpa, access, ad_update=False)
            mode = rng.choice(("read", "atomic", "random"))
            if mode == "atomic" and walk.ok and walk.ad_writes:
                axi.atomic_errors.add(rng.choice(walk.ad_writes)[0])
            elif mode == "random":
                axi.read_error_rate = axi.atomic_error_rate = 0.3
            else:
                mode = "read"
                axi.read_errors.add(rng.choice(walk.pte_addrs))
            snapshot = tb.memory.copy()
            first = len(axi.injected)
            req = await _unchecked_access(tb, guest.index, gpa, access)
            axi.read_errors.clear()
            axi.atomic_errors.clear()
            axi.read_error_rate = axi.atomic_error_rate = 0.0
            injected = axi.injected[first:]
            stats[f"{mode}_injected" if injected else f"{mode}_not_reached"] += 1
            view = FaultView(snapshot, [a for k, a in injected if k == "read"],
                             [a for k, a in injected if k == "atomic"])
            ref = _reference(guest, view, gpa, access, ad_update=True)
            where = {"format": name, "gpa": hex(gpa), "access": access, "mode": mode,
                     "injected": [(k, hex(a)) for k, a in injected]}
            chk.expect("bus_error answer", _key(req.result) == _key(ref), rtl=req.result,
                       model=ref, **where)
            if injected:
                chk.expect("bus_error kind", not req.result.ok
                           and req.result.kind == "bus_error", rtl=req.result, **where)
            chk.expect("A/D writes before the error", np.array_equal(
                tb.memory.words, snapshot.words), **where)
            if not injected:
                continue
            # Nothing cached from it: the same access walks again and re-reads the entry.
            mark = len(axi.transactions)
            again = await tb.access(guest.index, gpa, access)
            chk.expect("no hit after a bus error", not again.hit, latency=again.latency,
                       **where)
            reread = {t[1] for t in axi.transactions[mark:]}
            for kind, addr in injected:
                if kind == "read":
                    chk.expect("entry re-read after a bus error", addr in reread,
                               addr=hex(addr), **where)
    return {"formats": formats, "details": {"bus errors": dict(stats)}}


async def chaos(tb, env, chk, formats):
    """Scenarios under random latency, reordering across IDs and back-pressure."""
    tb.axi.max_latency = 24
    tb.axi.set_stall({"ar": 0.3, "r": 0.3, "aw": 0.4, "w": 0.4, "b": 0.4}, env.seed)
    guests = []
    for n, name in enumerate(formats):      # boot and mixed in turn, one per format
        run_env = Env(seed=env.seed + n, scale=max(1, env.scale // 5),
                      formats=pick_formats(env.seed + n, name))
        out = await SCENARIOS[("boot", "mixed")[n % 2]](tb, run_env)
        await tb.quiesce()
        await tb.drain_invals()
        guests += out.get("guests", [])
    return {"formats": sorted({g.vm.fmt.name for g in guests}), "guests": guests}


async def _warm(tb, guest, gpas, chk, where):
    """Access ``gpas`` twice: the second access must hit (the TLB works)."""
    for gpa in gpas:
        await tb.access(guest.index, gpa, "read")
    hits = 0
    for gpa in gpas:
        hits += (await tb.access(guest.index, gpa, "read")).hit
    chk.expect("warm pages hit", hits == len(gpas), hits=hits, pages=len(gpas), **where)


async def _after_reset(tb, guest, warm, chk, where):
    """The first access to each warm page walks and answers correctly (a page inside a
    huge page that an earlier access here walked may hit)."""
    walked = set()
    for gpa in warm:
        req = await tb.access(guest.index, gpa, "read")
        covered = any((level, gpa >> (12 + 9 * (level - 1))) in walked
                      for level in range(1, 6))
        chk.expect("no hit after reset", covered or not req.hit, gpa=hex(gpa),
                   latency=req.latency, rtl=req.result, **where)
        if req.result.ok:
            level = req.result.level
            walked.add((level, gpa >> (12 + 9 * (level - 1))))
    counters = tb.counters()
    chk.expect("counters cleared by reset", counters["requests"] == len(warm),
               counters=counters, **where)


async def reset_walk(tb, env, chk, formats):
    """Reset at a swept cycle offset while walks are in flight."""
    stats = collections.Counter()
    rng = random.Random(env.seed)
    guest = Guest(tb, 1, formats[0], rng, "hardware")
    gfns = rng.sample(range(SLOT0_PAGES), 64)
    _prefault(tb, guest, gfns, max_level=1)
    await tb.drain_invals()
    gpas = [g << 12 for g in gfns]
    for offset in range(12 + 12 * env.scale):
        warm = rng.sample(gpas, 6)
        where = {"format": formats[0], "offset": offset}
        await _warm(tb, guest, warm, chk, where)
        for gpa in rng.sample(gpas, 6) + warm[:2]:
            tb.submit(guest.index, gpa, rng.choice(("read", "write")))
        await ClockCycles(tb.dut.clk, offset)
        lost = await tb.hard_reset(cycles=1 + offset % 3)
        stats["requests lost"] += len(lost)
        stats["resets"] += 1
        await _after_reset(tb, guest, warm, chk, where)
    return {"formats": formats[:1], "details": {"reset during walks": dict(stats)}}


async def reset_inval(tb, env, chk, formats):
    """Reset while an invalidation runs, right after the model zapped cached pages."""
    stats = collections.Counter()
    rng = random.Random(env.seed + 1)
    guest = Guest(tb, 2, formats[0], rng, "hardware")
    gfns = rng.sample(range(SLOT0_PAGES), 64)
    _prefault(tb, guest, gfns, max_level=1)
    await tb.drain_invals()
    for offset in range(0, 20 + 4 * env.scale):
        where = {"format": formats[0], "offset": offset}
        warm = [g << 12 for g in rng.sample(gfns, 6)]
        await _warm(tb, guest, warm, chk, where)
        victim = warm[0] >> 12
        # The model zaps a cached page and invalidates it (RANGE), sometimes everything
        # (ALL, which scans the whole TLB); reset lands `offset` cycles after the zap.
        guest.vm.zap_gfn_range(victim, victim + 1)
        tb.scoreboard.changed()
        if offset % 2:
            tb.queue_inval(InvalKind.ALL, 0, 0, 0)
        await ClockCycles(tb.dut.clk, offset)
        pending = tb._inval_accepted + len(tb._inval_queue) \
            + (tb._inval_driving is not None) - tb._inval_completed
        stats["reset with an invalidation pending" if pending else
              "reset after inval_done"] += 1
        await tb.hard_reset()
        stats["resets"] += 1
        await _after_reset(tb, guest, warm[1:], chk, where)
        req = await tb.access(guest.index, victim << 12, "read")
        chk.expect("zapped page faults after reset", not req.result.ok, rtl=req.result,
                   **where)
        await guest.access(victim << 12, "read")        # the hypervisor maps it again
    return {"formats": formats[:1], "details": {"reset during invalidations": dict(stats)}}


async def inval_offset(tb, env, chk, formats):
    """Zap + invalidate at every cycle offset of a walk to the zapped page."""
    stats = collections.Counter()
    covered = set()
    for n, name in enumerate(formats):
        rng = random.Random(env.seed * 7 + n)
        guest = Guest(tb, 3, name, rng, "hardware")
        gfns = sorted(rng.sample(range(SLOT0_PAGES), 32))
        _prefault(tb, guest, gfns, max_level=1)
        await tb.drain_invals()
        await tb.flush_vm(guest.index)
        length = (await tb.access(guest.index, gfns[0] << 12, "read")).latency
        for offset in range(length + 3):
            for mode in ("4k-cold", "4k-warm", "2m-cold", "2m-warm")[:2 + 2 * (env.scale > 1)]:
                if env.scale == 1 and mode.endswith("warm") != bool(offset % 2):
                    continue
                gfn = rng.choice(gfns)
                gpa = (gfn << 12) | (rng.randrange(512) << 3)
                await tb.model_step(guest.vm.handle_fault, gpa, "write", max_level=1)
                if mode.endswith("cold"):
                    await tb.flush_vm(guest.index)
                else:       # fill the walk cache through a neighbour of the same table
                    buddy = next((g for g in gfns if g >> 9 == gfn >> 9 and g != gfn), None)
                    if buddy is not None:
                        await tb.model_step(guest.vm.handle_fault, buddy << 12, "write",
                                            max_level=1)
                        await tb.access(guest.index, buddy << 12, "read")
                        # Its TLB entry enters the lookup pipeline two cycles after
                        # its answer (the answer leaves as the walk is done, the entry
                        # is copied then and offered the cycle after): start the
                        # request with it in, as in the cold case.
                        await ClockCycles(tb.dut.clk, 2)
                req = tb.submit(guest.index, gpa, rng.choice(("read", "write")))
                await ClockCycles(tb.dut.clk, offset)
                start, end = (gfn, gfn + 1) if mode.startswith("4k") else \
                    (gfn & ~511, (gfn & ~511) + 512)
                at = tb.cycle()
                await tb.model_step(guest.vm.zap_gfn_range, start, end)
                await req.done.wait()
                if req.accepted is not None:
                    covered.add(at - req.accepted)
                after = await tb.access(guest.index, gpa, "read")
                chk.expect("no stale hit after inval_done", not after.result.ok,
                           rtl=after.result, format=name, offset=offset, mode=mode)
                stats[mode] += 1
        stats[f"{name} walk cycles"] = length
    counters = tb.counters()
    stats["stale fills dropped"] = counters["stale_drops"]
    return {"formats": formats, "details": {"invalidation offsets": dict(stats)},
            "offsets": sorted(covered)}


async def ad_race(tb, env, chk, formats):
    """Software changes a PTE between the walker's read and its AtomicCompare."""
    stats = collections.Counter()
    axi = tb.axi
    for n, name in enumerate(formats):
        rng = random.Random(env.seed * 13 + n)
        guest = Guest(tb, n % 4, name, rng, "hardware")
        fmt = guest.vm.fmt
        gfns = rng.sample(range(SLOT0_PAGES), 32)
        _prefault(tb, guest, gfns[:16], max_level=1)
        _prefault(tb, guest, gfns[16:])
        await tb.drain_invals()
        write_bit = fmt.fields["rw" if fmt.arch == "npt" else "w"].mask
        for _ in range(16 * env.scale):
            gpa = (rng.choice(gfns) << 12) | (rng.randrange(512) << 3)
            access = rng.choice(("read", "write"))
            walk = _reference(guest, tb.memory, gpa, access, ad_update=False)
            if not walk.ok:
                stats["no translation"] += 1
                continue
            saved = tb.memory.words.copy()      # the model's tables, restored afterwards
            leaf_only = rng.random() < 0.5
            for addr in walk.pte_addrs[-1:] if leaf_only else walk.pte_addrs:
                tb.memory.write64(addr, tb.memory.read64(addr) & ~_ad_mask(fmt))
            tb.scoreboard.changed()
            await tb.flush_vm(guest.index)
            changes = ["set_ad", "unmap"] + (["readonly", "remap"] if leaf_only else [])
            change = rng.choice(changes)
            fired = {}

            def software(addr, memory, change=change, level=walk.level, fired=fired):
                if fired:
                    return
                word = memory.read64(addr)
                if change == "set_ad":
                    word |= _ad_mask(fmt)
                elif change == "unmap":
                    word = 0
                elif change == "readonly":
                    word &= ~write_bit
                else:
                    frame = fmt.frame_of(word) ^ fmt.page_size(level)
                    word = fmt.frame_field.put(word, frame >> fmt.frame_shift)
                memory.write64(addr, word)
                fired["addr"], fired["memory"] = addr, memory.copy()
                _software_changed(tb)

            # Checked by the scoreboard too: the restarted walk's reads and compares are
            # those of a walk of the changed tables.
            axi.on_atomic = software
            mark = len(axi.transactions)
            req = await tb.access(guest.index, gpa, access)
            axi.on_atomic = None
            after = tb.memory.words.copy()
            tb.memory.words[:] = saved
            tb.scoreboard.changed()
            await tb.flush_vm(guest.index)
            if not fired:
                stats["no A/D update"] += 1
                continue
            stats[change] += 1
            ref = _reference(guest, fired["memory"], gpa, access, ad_update=True)
            where = {"format": name, "gpa": hex(gpa), "access": access, "change": change,
                     "pte": hex(fired["addr"])}
            chk.expect("answer on the changed PTE", _key(req.result) == _key(ref),
                       rtl=req.result, model=ref, **where)
            chk.expect("memory after the restarted walk", np.array_equal(
                after, fired["memory"].words), **where)
            later = axi.transactions[mark:]
            failed = [i for i, t in enumerate(later) if t[0] == "atomic" and not t[4]]
            chk.expect("the compare failed", bool(failed), **where)
            chk.expect("the walk restarted", failed and any(
                t[0] == "read" for t in later[failed[0] + 1:]), **where)
    return {"formats": formats, "details": {"A/D races": dict(stats)}}


FAULTS = {f.__name__: f for f in (bus_error, chaos, reset_walk, reset_inval, inval_offset,
                                  ad_race)}

_VARIABLE = "TDPWALK_FAULTS" if os.environ.get("TDPWALK_FAULTS") else "TDPWALK_SCENARIOS"
NAMES = [n for n in os.environ.get(_VARIABLE, "bus_error").split(",") if n]
_unknown = [n for n in NAMES if n not in FAULTS]
if _unknown:
    raise ValueError(f"{_VARIABLE}: unknown fault test(s) {', '.join(_unknown)} "
                     f"(known: {', '.join(FAULTS)})")


def _formats(seed, size):
    """Every format for long runs; two of different architectures (by seed) for short."""
    name = os.environ.get("TDPWALK_FORMAT")
    if name:
        get_format(name)
        return [name]
    return list(FORMAT_NAMES) if size == "long" else pick_formats(seed)


#: Simulated-time limit per test: a hang (a lost response) fails instead of spinning.
TIMEOUT_US = 50_000 if os.environ.get("TDPWALK_SIZE") == "long" else 5_000


@cocotb.test(timeout_time=TIMEOUT_US, timeout_unit="us")
@cocotb.parametrize(fault=NAMES)
async def run_fault(dut, fault):
    """One fault test on a fresh MMU; no check may fail and the scoreboard must agree."""
    seed = int(os.environ.get("TDPWALK_SEED", "0")) + NAMES.index(fault)
    size = os.environ.get("TDPWALK_SIZE", "short")
    env = Env(seed=seed, scale=SIZES.get(size, 1))
    tb = FaultTB(dut, HostMemory(16 << 20), latency=2, stall=0.0, seed=seed, keep=False)
    chk = Checker(tb, seed)
    await tb.reset()
    wall = time.monotonic()
    dut._log.info("fault test %s seed %d size %s", fault, seed, size)
    extra = await FAULTS[fault](tb, env, chk, _formats(seed, size))
    await tb.quiesce()
    await tb.drain_invals()
    sb = tb.scoreboard
    extra.pop("guests", None)
    result = {"scenario": fault, "seed": seed, "size": size, **extra,
              "translations": tb.answered, **scoreboard_counts(tb),
              "fault_checks": chk.checked,
              "mismatches": len(sb.mismatches) + len(chk.mismatches),
              "mismatch_list": (chk.mismatches + sb.mismatches)[:10],
              "resets": tb.resets, "lost": tb.lost, "axi_resets": tb.axi.resets,
              "seconds": time.monotonic() - wall}
    record_result(result)
    dut._log.info("%s: %s", fault, {k: v for k, v in result.items()
                                     if not isinstance(v, (list, dict))})
    assert not result["mismatches"], (
        f"{fault} (seed {seed}): {result['mismatches']} mismatches; first: "
        f"{result['mismatch_list'][:2]}")
