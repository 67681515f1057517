"""VM lifetimes run on the hypervisor loop: guest accesses go to the RTL, a fault goes to
the model's ``handle_fault`` (which maps the page), and the access is retried.

Every scenario is ``async def scenario(tb, env) -> dict`` and runs on an
:class:`~cocotb_tests.mmu_tb.MmuTB` whose scoreboard checks every response; the
scenario adds its own checks (asserts) and returns counts for the report. ``env``
(:class:`Env`) holds the seed, the size multiplier and the formats.
"""

import random
from dataclasses import dataclass, field

import cocotb
from cocotb.triggers import Timer

from sw_model.formats import FORMAT_NAMES, get_format
from sw_model.tdp import Vm

from .mmu_tb import PERIOD_NS, checked_flush_sink, hypervisor_access, run_vcpus

__all__ = ["SCENARIOS", "Env", "Guest", "pick_formats"]

PAGE = 4096
#: Guest layout: slot 0 is 8 MiB at GPA 0 (huge-page capable), slot 1 is 1 MiB at 1 GiB.
SLOT0_PAGES, SLOT1_BASE, SLOT1_PAGES = 2048, 1 << 18, 256
SIZES = {"short": 1, "demo": 4, "long": 10}


@dataclass
class Env:
    """What a scenario run is given.

    Members
    -------
    seed : int
    scale : int
        1 for ``make test``, larger for the demo and ``make regress``.
    formats : list of str
        Formats of the guests (``[0]`` for single-VM scenarios, two for ``mixed``).
    ad : str or None
        A/D mode for every guest (None: chosen from the seed).
    vcpus : int
        Concurrent request streams per guest.
    """
    seed: int
    scale: int = 1
    formats: list = field(default_factory=lambda: ["ept4", "sv39x4"])
    ad: str = None
    vcpus: int = 4


def pick_formats(seed, name=None):
    """Two formats of different architectures: ``name`` (or one chosen by the seed)
    and another."""
    first = name or FORMAT_NAMES[seed % len(FORMAT_NAMES)]
    arch = get_format(first).arch
    others = [n for n in FORMAT_NAMES if get_format(n).arch != arch]
    return [first, others[(seed // len(FORMAT_NAMES) + 2) % len(others)]]


class Guest:
    """One VM: its model (a :class:`sw_model.tdp.Vm` on the shared memory, flushing
    into the RTL), its memslots, and the hypervisor loop.

    Members
    -------
    vm : sw_model.tdp.Vm
    index : int
        Context-table index in the RTL.
    stats : dict
        ``faults`` handled by the model, results by :class:`PfResult`, ``emulated``
        accesses (no memslot), ``writes_logged`` ...
    """

    def __init__(self, tb, index, fmt_name, rng, ad=None):
        fmt = get_format(fmt_name)
        if ad not in fmt.ad_modes:      # None, or a mode another guest's format has
            ad = fmt.ad_modes[rng.randrange(len(fmt.ad_modes))]
        self.tb, self.index, self.rng = tb, index, rng
        self.vm = Vm(fmt_name, tb.memory, ad=ad, flush_sink=checked_flush_sink(tb, index),
                     trace=False)
        self.hpa0 = (1 << 32) + (index << 30)
        self.vm.add_memslot(0, 0, SLOT0_PAGES, self.hpa0)
        self.vm.add_memslot(1, SLOT1_BASE, SLOT1_PAGES, self.hpa0 + (512 << 20))
        self.stats = {"faults": 0, "emulated": 0, "translations": 0}
        self.levels = {}
        self.logging = None     # DirtyLog while slot 0 is logged
        tb.add_guest(index, self)

    @property
    def name(self):
        return f"vm{self.index}:{self.vm.fmt.name}/{self.vm.opts.ad}"

    async def access(self, gpa, access):
        """One guest access on the hypervisor loop; the final response."""
        return await hypervisor_access(self, gpa, access)

    def translated(self, req):
        """A successful translation (from :func:`~cocotb_tests.mmu_tb.hypervisor_access`):
        count it and check it against the memslot, independently of the scoreboard."""
        self.stats["translations"] += 1
        gfn = req.gpa >> 12
        slot = self.vm.find_memslot(gfn)
        # Independent of the scoreboard: a translation maps the memslot's frame.
        if slot is not None:
            want = slot.gfn_to_hpa(gfn) + (req.gpa & 0xfff)
            assert req.result.hpa == want, (
                f"{self.name}: {req.access} {req.gpa:#x} -> {req.result.hpa:#x}, memslot "
                f"{slot.slot_id} maps it to {want:#x}")
        self.levels[req.result.level] = self.levels.get(req.result.level, 0) + 1
        if self.logging is not None and req.access == "write" and slot is not None \
                and slot.slot_id == 0:
            self.logging.written(req)

    async def run(self, pattern, count, *, vcpus=4, stop=None):
        """``vcpus`` concurrent streams of accesses from ``pattern(rng)`` until ``count``
        are done (or ``stop()`` is true)."""
        await run_vcpus(self.access, self.rng, pattern, count, vcpus=vcpus, stop=stop)


def uniform(base_gfn, npages, writes=0.25, execs=0.05):
    def pattern(rng):
        gpa = ((base_gfn + rng.randrange(npages)) << 12) | (rng.randrange(512) << 3)
        r = rng.random()
        return gpa, "write" if r < writes else "execute" if r < writes + execs else "read"
    return pattern


def local(base_gfn, npages, hot=48, p_hot=0.9, writes=0.25, execs=0.03, seed=0):
    """Locality: ``p_hot`` of accesses to a hot set of ``hot`` pages."""
    hot_pages = random.Random(seed).sample(range(npages), min(hot, npages))

    def pattern(rng):
        page = rng.choice(hot_pages) if rng.random() < p_hot else rng.randrange(npages)
        gpa = ((base_gfn + page) << 12) | (rng.randrange(512) << 3)
        r = rng.random()
        return gpa, "write" if r < writes else "execute" if r < writes + execs else "read"
    return pattern


def sequential(base_gfn, npages, stride=1):
    counter = [0]

    def pattern(rng):
        page = (counter[0] * stride) % npages
        counter[0] += 1
        return ((base_gfn + page) << 12) | (rng.randrange(512) << 3), \
            "write" if rng.random() < 0.3 else "read"
    return pattern


class DirtyLog:
    """Counts every write the RTL translated in slot 0 while logging is on, and checks
    each harvested bitmap: a write answered before harvest ``k`` began must be in
    bitmap ``k``, or in bitmap ``k - 1`` if its request was accepted before harvest
    ``k - 1``'s invalidation completed (it used a translation that harvest was
    removing; the page copy follows the harvest, as with KVM_GET_DIRTY_LOG)."""

    def __init__(self, guest):
        self.guest = guest
        self.pending = []           # responses of writes not yet accounted for
        self.prev_bitmap = set()
        self.prev_done = 0          # cycle the previous harvest's flush completed
        self.writes = self.harvested = self.lost = self.harvests = 0
        self.pages_written = set()
        self.start = None           # cycle logging was on (its flush done)

    def written(self, req):
        # KVM logs the writes after the ioctl that enables logging has returned.
        if self.start is None or req.accepted <= self.start:
            return
        self.writes += 1
        self.pages_written.add(req.gpa >> 12)
        self.pending.append(req)

    async def harvest(self):
        tb, vm = self.guest.tb, self.guest.vm
        start = tb.cycle()
        bitmap = await tb.model_step(vm.get_dirty_log, 0)
        done = tb.cycle()
        slot = vm.memslot(0)
        gfns = set(slot.dirty_gfns(bitmap))
        self.harvests += 1
        self.harvested += len(gfns)
        keep = []
        for req in self.pending:
            gfn = req.gpa >> 12
            if req.answered > start:
                keep.append(req)
            elif gfn in gfns or (req.accepted < self.prev_done and gfn in self.prev_bitmap):
                continue
            else:
                self.lost += 1
                tb.log.error("%s: write to gfn %#x (cycles %d..%d) missing from dirty "
                             "bitmap %d (harvest began at cycle %d; logging on since %d)",
                             self.guest.name, gfn, req.accepted, req.answered,
                             self.harvests, start, self.start)
        self.pending = keep
        self.prev_bitmap, self.prev_done = gfns, done
        return gfns


# -- scenarios --------------------------------------------------------------------------


async def _boot(guest, env, pages=None):
    """Fault in slot 0 (huge pages where the format allows) and part of slot 1."""
    pages = pages or SLOT0_PAGES
    await guest.run(sequential(0, pages, stride=97), 48 * env.scale, vcpus=env.vcpus)
    await guest.run(sequential(SLOT1_BASE, SLOT1_PAGES, stride=5), 24 * env.scale,
                    vcpus=env.vcpus)


async def boot(tb, env):
    """Fault-in: every first touch faults, the model maps it, the retry translates."""
    guest = Guest(tb, 0, env.formats[0], random.Random(env.seed), env.ad)
    await _boot(guest, env)
    assert guest.stats["faults"] > 0, "boot: no fault reached the model"
    assert guest.stats["translations"] >= 72 * env.scale
    return {"guests": [guest]}


async def steady(tb, env):
    """Steady traffic with locality: mostly TLB hits, walks served by the walk cache."""
    guest = Guest(tb, 0, env.formats[0], random.Random(env.seed), env.ad)
    await _boot(guest, env)
    before = tb.counters()
    await guest.run(local(0, SLOT0_PAGES, seed=env.seed), 200 * env.scale, vcpus=env.vcpus)
    after = tb.counters()
    hits = after["tlb_hits"] - before["tlb_hits"]
    assert hits > 0, "steady: no TLB hit under a hot working set"
    return {"guests": [guest]}


async def memslot_delete(tb, env):
    """Delete slot 1 while traffic runs (zap + range flush): afterwards its GPAs fault
    and go to userspace; re-added at another HPA, they translate to the new frames."""
    guest = Guest(tb, 0, env.formats[0], random.Random(env.seed), env.ad)
    await _boot(guest, env)
    busy = cocotb.start_soon(guest.run(uniform(SLOT1_BASE, SLOT1_PAGES), 60 * env.scale,
                                       vcpus=2))
    other = cocotb.start_soon(guest.run(local(0, SLOT0_PAGES, seed=1), 60 * env.scale, vcpus=2))
    await Timer(100 * PERIOD_NS, "ns")
    await tb.model_step(guest.vm.delete_memslot, 1)
    await busy
    await other
    emulated = guest.stats["emulated"]
    for page in range(0, SLOT1_PAGES, 17):
        req = await guest.access((SLOT1_BASE + page) << 12, "read")
        assert not req.result.ok, f"deleted slot still translates {req.gpa:#x}"
    assert guest.stats["emulated"] > emulated
    await tb.model_step(guest.vm.add_memslot, 1, SLOT1_BASE, SLOT1_PAGES,
                        guest.hpa0 + (768 << 20))
    await guest.run(uniform(SLOT1_BASE, SLOT1_PAGES), 40 * env.scale, vcpus=env.vcpus)
    return {"guests": [guest]}


async def _logging_round(tb, env, guest, rounds, traffic):
    """Logging on slot 0 with eager splitting while ``traffic`` runs, ``rounds``
    harvests, then off. Returns the DirtyLog."""
    log = guest.logging = DirtyLog(guest)
    done = [False]
    flow = cocotb.start_soon(guest.run(traffic, 10 ** 9, vcpus=env.vcpus,
                                       stop=lambda: done[0]))
    await Timer(50 * PERIOD_NS, "ns")
    await tb.model_step(guest.vm.set_dirty_logging, 0, True)
    log.start = log.prev_done = tb.cycle()
    for _ in range(rounds):
        target = tb.answered + 60 * env.scale
        while tb.answered < target:
            await Timer(20 * PERIOD_NS, "ns")
        await log.harvest()
    done[0] = True
    await flow
    await tb.quiesce()
    await log.harvest()
    guest.logging = None
    await tb.model_step(guest.vm.set_dirty_logging, 0, False)
    assert log.lost == 0, f"{guest.name}: {log.lost} written pages missing from the dirty log"
    assert not log.pending
    assert log.writes > 0 and log.harvested > 0
    return log


async def dirty_log(tb, env):
    """Dirty logging with eager splitting while traffic continues: every translation of
    slot 0 is the huge one or the small one (same frame), and every page the RTL
    translated a write for is in a harvested bitmap (0 lost)."""
    guest = Guest(tb, 0, env.formats[0], random.Random(env.seed), env.ad)
    await _boot(guest, env)
    huge_before = sum(n for level, n in guest.levels.items() if level > 1)
    log = await _logging_round(tb, env, guest, 3, local(0, SLOT0_PAGES, seed=env.seed))
    return {"guests": [guest], "dirty": log, "huge_before": huge_before}


async def harvest(tb, env):
    """Many harvests under write-heavy traffic over the whole slot."""
    guest = Guest(tb, 0, env.formats[0], random.Random(env.seed), env.ad)
    await _boot(guest, env, pages=512)
    log = await _logging_round(tb, env, guest, 6, uniform(0, 512, writes=0.6))
    return {"guests": [guest], "dirty": log}


async def aging(tb, env):
    """Aging: clearing accessed state needs no flush (stale hits stay legitimate); after
    a flushing age, traffic makes pages young again."""
    guest = Guest(tb, 0, env.formats[0], random.Random(env.seed), env.ad)
    await _boot(guest, env)
    vm = guest.vm
    young = await tb.model_step(vm.age_gfn_range, 0, SLOT0_PAGES)
    assert young, "aging: nothing was young after boot"
    await guest.run(local(0, SLOT0_PAGES, seed=env.seed), 60 * env.scale, vcpus=env.vcpus)
    # Hits do not set A: only after a flush do accesses walk and make pages young.
    await tb.model_step(vm.age_gfn_range, 0, SLOT0_PAGES, flush=True)
    await tb.model_step(vm.flush_remote_tlbs)
    await guest.run(local(0, SLOT0_PAGES, seed=env.seed), 60 * env.scale, vcpus=env.vcpus)
    assert vm.test_age_gfn(0, SLOT0_PAGES), "aging: no page young again after traffic"
    return {"guests": [guest]}


async def huge_recovery(tb, env):
    """Split slot 0 to 4 KiB, run traffic, recover huge pages (one flush): accesses
    after the flush see the huge page again."""
    guest = Guest(tb, 0, env.formats[0], random.Random(env.seed), env.ad)
    await _boot(guest, env)
    vm = guest.vm
    await tb.model_step(vm.split_huge_pages, 0)
    await guest.run(local(0, SLOT0_PAGES, seed=env.seed), 40 * env.scale, vcpus=env.vcpus)
    recovered = await tb.model_step(vm.recover_huge_pages, 0)
    assert recovered > 0, "huge_recovery: nothing recovered"
    guest.levels.clear()
    await guest.run(local(0, SLOT0_PAGES, seed=env.seed), 40 * env.scale, vcpus=env.vcpus)
    assert any(level > 1 for level in guest.levels), "no huge translation after recovery"
    return {"guests": [guest], "recovered": recovered}


async def mixed(tb, env):
    """Two VMs of different formats at once: boot, steady traffic, aging, dirty logging
    with harvests, memslot deletion, all interleaved on one MMU."""
    rng = random.Random(env.seed)
    guests = [Guest(tb, i, env.formats[i % len(env.formats)], random.Random(rng.random()),
                    env.ad) for i in range(2)]

    async def life(guest, first):
        await _boot(guest, env)
        await guest.run(local(0, SLOT0_PAGES, seed=guest.index), 100 * env.scale,
                        vcpus=env.vcpus)
        if first:
            await tb.model_step(guest.vm.age_gfn_range, 0, SLOT0_PAGES)
            log = await _logging_round(tb, env, guest, 3, local(0, SLOT0_PAGES, seed=7))
        else:
            await tb.model_step(guest.vm.delete_memslot, 1)
            await guest.run(uniform(SLOT1_BASE, SLOT1_PAGES), 20 * env.scale, vcpus=2)
            log = await _logging_round(tb, env, guest, 2, uniform(0, 512, writes=0.5))
        await guest.run(local(0, SLOT0_PAGES, seed=3), 60 * env.scale, vcpus=env.vcpus)
        return log

    tasks = [cocotb.start_soon(life(g, i == 0)) for i, g in enumerate(guests)]
    logs = [await t for t in tasks]
    return {"guests": guests, "dirty": logs}


SCENARIOS = {f.__name__: f for f in (boot, steady, memslot_delete, dirty_log, harvest, aging,
                                     huge_recovery, mixed)}
from .scenario_nested import nested; SCENARIOS["nested"] = nested  # noqa: E402,E702
from .scenario_nested import nested_migrate  # noqa: E402
SCENARIOS["nested_migrate"] = nested_migrate
from .scenario_tdx import tdx; SCENARIOS["tdx"] = tdx  # noqa: E402,E702
