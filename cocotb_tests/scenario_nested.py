"""Nested virtualization on the RTL: one L2 workload under shadow TDP (context 0) and
under KPOP (context 1) at once (``nested``), and L0 migrating L1 while L2 runs under
shadow TDP (``nested_migrate``). The RTL needs no change: it walks whatever tables L0
built. The scoreboard checks every response against the reference walker; each
design's :class:`~sw_model.nested.Driver` checks every translation against the
composition of L1's and L0's mappings, every emulated instruction's address
translation, and that no page written while logged is missing from the next harvest
(L1's of L2, L0's of L1)."""

import random

import cocotb

from sw_model.formats import get_format
from sw_model.nested import DESIGNS, Driver, build, check_tables, make_workload

from .mmu_tb import RtlFlushSink

__all__ = ["nested", "nested_migrate", "NestedGuest"]

TITLES = {"shadow": "shadow TDP", "kpop": "KPOP"}


class NestedGuest:
    """One design as an RTL VM context: the L2 vCPU's hypervisor loop (access → RTL →
    fault → L0's exit handler → retry), one access at a time.

    Members
    -------
    vm
        The design (what the TB reads: ``fmt``, ``opts``, ``mem``, ``root_for``).
    driver : sw_model.nested.Driver
    stats, levels : dict
        For the report (translations, faults, emulated; translations per level).
    """

    def __init__(self, tb, index, design):
        self.tb, self.index, self.vm = tb, index, design
        self.driver = Driver(design)
        self.stats = self.driver.stats
        self.levels = {}
        tb.add_guest(index, self)

    @property
    def name(self):
        return f"vm{self.index}:{self.vm.name}:{self.vm.fmt.name}/{self.vm.opts.ad}"

    async def access(self, gpa, access):
        for _ in range(16):
            req = await self.tb.access(self.index, gpa, access)
            if req.result.ok:
                self.driver.translated(gpa, access, req.result)
                self.levels[req.result.level] = self.levels.get(req.result.level, 0) + 1
                return
            if not await self.tb.model_step(self.driver.fault, gpa, access):
                return
        raise AssertionError(f"{self.name}: no forward progress on {access} {gpa:#x}")

    async def run(self, ops):
        for op in ops:
            for gpa, access in await self.tb.model_step(self.driver.apply, op):
                await self.access(gpa, access)


async def nested(tb, env):
    """Shadow TDP and KPOP side by side on the same L2 workload; 0 mismatches, every
    translation the composition of L1's and L0's mappings, no dirty page lost."""
    fmt, ad = _format(env)
    ops = make_workload(env.seed, env.scale, burst=12)
    guests = [NestedGuest(tb, index, build(name, fmt, tb.memory, ad=ad,
                                           sink=RtlFlushSink(tb, index)))
              for index, name in enumerate(DESIGNS)]
    tasks = [cocotb.start_soon(g.run(ops)) for g in guests]
    for task in tasks:
        await task
    await tb.quiesce()
    details = {}
    for g in guests:
        check_tables(g.vm, g.driver.may_be_stale)
        s = g.driver.summary()
        assert s["dirty_lost"] == 0 and s["harvests"] > 0 and s["dirty_written"] > 0, s
        assert s["translations"] > 0
        details[f"{TITLES[g.vm.name]} ({fmt}/{ad})"] = s
    return {"guests": guests, "details": details}


async def nested_migrate(tb, env):
    """L0 migrates L1 while L2 runs on the RTL under shadow TDP: L0 dirty-logs both of
    its memslots of L1's RAM, eagerly splitting the shadow MMU's huge pages, and
    harvests them after every burst, while L1 logs, remaps, zaps and write-tracks L2
    memory; 0 mismatches, no page L1 or L2 wrote missing from L0's next harvest (nor
    from L1's), huge shadow pages split, and the shadow's books hold at the end."""
    fmt, ad = _format(env)
    ops = make_workload(env.seed, env.scale, burst=12, migrate=True)
    guest = NestedGuest(tb, 0, build("shadow", fmt, tb.memory, ad=ad,
                                     sink=RtlFlushSink(tb, 0)))
    await guest.run(ops)
    await tb.quiesce()
    check_tables(guest.vm, guest.driver.may_be_stale)
    s = guest.driver.summary()
    assert s["l0_dirty_lost"] == 0 and s["l0_harvests"] > 0 and s["l0_dirty_written"] > 0, s
    assert s["dirty_lost"] == 0 and s.get("split", 0) > 0 and s["translations"] > 0, s
    return {"guests": [guest], "details": {f"shadow TDP, L0 migrating L1 ({fmt}/{ad})": s}}


def _format(env):
    """The first format and an A/D mode it has (``env.ad``, or one from the seed)."""
    fmt = env.formats[0]
    modes = get_format(fmt).ad_modes
    if env.ad in modes:
        return fmt, env.ad
    return fmt, modes[random.Random(env.seed).randrange(len(modes))]
