"""hw.tlb.TLB in Amaranth's simulator against a Python model of the same TLB.

The model states the rules once: an entry of level ``l`` covers ``2**(9*(l-1))`` 4 KiB
pages from its aligned page number, lives in set ``(vpn >> 9*(l-1)) % sets``, a fill
reuses the way holding the same entry, else the lowest invalid way, else the tree-PLRU
victim; a range invalidation removes exactly the entries of the VM overlapping the
range; an entry's ``private`` bit (a TD's private space) is part of its key, and an
invalidation removes only entries of its ``space``. Every lookup result (hit, level,
data) must match the model.
"""

import gc
import random

import pytest
from amaranth.sim import Simulator

from hw.tlb import TLB, InvalKind, InvalSpace, plru_touch, plru_victim


def span(level):
    return 1 << (9 * (level - 1))


class RefTLB:
    """Python model of :class:`hw.tlb.TLB`."""

    def __init__(self, sets, ways):
        self.sets, self.ways = sets, ways
        self.entries = [[None] * ways for _ in range(sets)]
        self.plru = [0] * sets

    def _set(self, vpn, level):
        return (vpn >> (9 * (level - 1))) % self.sets

    def _touch(self, s, way):
        if self.ways > 1:
            mask, value = plru_touch(self.ways, way)
            self.plru[s] = (self.plru[s] & ~mask) | value

    def lookup(self, vm, root, vpn, private=0):
        for level in range(1, 5):
            s = self._set(vpn, level)
            base = vpn & ~(span(level) - 1)
            for w, e in enumerate(self.entries[s]):
                if e is not None and e[:4] == (vm, root, base, level) and e[5] == private:
                    self._touch(s, w)
                    return level, e[4]
        return None

    def fill(self, vm, root, vpn, level, payload, private=0):
        s = self._set(vpn, level)
        base = vpn & ~(span(level) - 1)
        row = self.entries[s]
        same = [w for w, e in enumerate(row) if e is not None
                and e[:4] == (vm, root, base, level) and e[5] == private]
        free = [w for w, e in enumerate(row) if e is None]
        way = same[0] if same else free[0] if free else plru_victim(self.ways, self.plru[s])
        row[way] = (vm, root, base, level, payload, private)
        self._touch(s, way)

    def invalidate(self, kind, vm=0, start=0, count=0, space="both"):
        for row in self.entries:
            for w, e in enumerate(row):
                if e is None:
                    continue
                evm, _, base, level, _, private = e
                if space != "both" and (space == "private") != bool(private):
                    continue
                overlap = base < start + count and start < base + span(level)
                if (kind == "all" or (evm == vm and (kind == "vm" or overlap))):
                    row[w] = None


KINDS = {"all": InvalKind.ALL, "vm": InvalKind.VM, "range": InvalKind.RANGE}
SPACES = {"both": InvalSpace.BOTH, "shared": InvalSpace.SHARED, "private": InvalSpace.PRIVATE}


class TlbBench:
    """Drives one operation at a time and checks each lookup against :class:`RefTLB`."""

    def __init__(self, ctx, dut):
        self.ctx, self.dut = ctx, dut
        ctx.set(dut.result.ready, 1)

    async def lookup(self, vm, root, vpn, private=0):
        ctx, dut = self.ctx, self.dut
        ctx.set(dut.lookup.payload, {"vm": vm, "root": root, "vpn": vpn, "private": private})
        ctx.set(dut.lookup.valid, 1)
        assert ctx.get(dut.lookup.ready), "TLB refused a lookup while idle"
        await ctx.tick()
        ctx.set(dut.lookup.valid, 0)
        assert ctx.get(dut.result.valid), "no result on the cycle after the lookup"
        hit = ctx.get(dut.result.payload.hit)
        out = (ctx.get(dut.result.payload.level), ctx.get(dut.result.payload.data)) if hit else None
        await ctx.tick()
        return out

    async def fill(self, vm, root, vpn, level, payload, private=0):
        ctx, dut = self.ctx, self.dut
        ctx.set(dut.fill.payload, {"vm": vm, "root": root, "vpn": vpn, "level": level,
                                   "data": payload, "private": private})
        ctx.set(dut.fill.valid, 1)
        await ctx.tick()
        ctx.set(dut.fill.valid, 0)

    async def invalidate(self, kind, vm=0, start=0, count=0, space="both"):
        ctx, dut = self.ctx, self.dut
        ctx.set(dut.inval.payload, {"kind": KINDS[kind], "vm": vm, "start": start,
                                    "count": count, "space": SPACES[space]})
        ctx.set(dut.inval.valid, 1)
        assert ctx.get(dut.inval.ready)
        await ctx.tick()
        ctx.set(dut.inval.valid, 0)
        for cycle in range(dut.sets + 2):
            if ctx.get(dut.inval_done):
                return cycle
            await ctx.tick()
        raise AssertionError("inval_done never pulsed")


def run(dut, body):
    sim = Simulator(dut)
    sim.add_clock(1e-8)

    async def bench(ctx):
        await body(TlbBench(ctx, dut))

    sim.add_testbench(bench)
    sim.run()


def random_op(rng, pool):
    vm, root, vpn = rng.choice(pool)
    level = rng.choice((1, 1, 2, 2, 3, 4))
    return vm, root, vpn, level, rng.randrange(2)


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("sets,ways", [(4, 4), (2, 8), (1, 2)])
def test_random_against_model(seed, sets, ways):
    rng = random.Random(seed * 100 + sets * 10 + ways)
    dut = TLB(sets=sets, ways=ways, vm_bits=2, root_bits=4, data_width=16)
    ref = RefTLB(sets, ways)
    # A small pool of pages so that sets fill, ways are evicted and superpages overlap.
    bases = [rng.randrange(1 << 30) for _ in range(6)]
    pool = [(rng.randrange(2), rng.randrange(2), b + rng.choice((0, 1, 511, 512, 1 << 18)))
            for b in bases for _ in range(3)]
    checked = []

    async def body(tb):
        for step in range(400):
            op = rng.random()
            if op < 0.45:
                vm, root, vpn, _, private = random_op(rng, pool)
                got = await tb.lookup(vm, root, vpn, private)
                want = ref.lookup(vm, root, vpn, private)
                assert got == want, f"seed {seed} step {step}: lookup {vm},{root},{vpn:#x}," \
                                    f"private={private}: RTL {got} model {want}"
                checked.append(got is not None)
            elif op < 0.9:
                vm, root, vpn, level, private = random_op(rng, pool)
                payload = rng.randrange(1 << 16)
                await tb.fill(vm, root, vpn, level, payload, private)
                ref.fill(vm, root, vpn, level, payload, private)
            else:
                kind = rng.choice(("all", "vm", "range", "range", "range"))
                vm = rng.randrange(2)
                _, _, vpn, _, _ = random_op(rng, pool)
                start = max(0, vpn + rng.randrange(-600, 600))
                count = rng.choice((0, 1, 2, 511, 513, 1 << 18, rng.randrange(1 << 20)))
                space = rng.choice(("both", "both", "shared", "private"))
                await tb.invalidate(kind, vm, start, count, space)
                ref.invalidate(kind, vm, start, count, space)

    run(dut, body)
    assert any(checked) and not all(checked), "the random run never hit, or never missed"


@pytest.mark.parametrize("level", [1, 2, 3, 4])
def test_range_overlap_partial(level):
    """An entry is removed iff one of its pages is in the range: ranges ending just
    before it, starting just after it, or covering only its first or last page."""
    size = span(level)
    base = 7 * size if level < 4 else size
    cases = [
        (base - 5, 5, False),              # ends right before the entry
        (base + size, 100, False),         # starts right after
        (base - 5, 6, True),               # last page of the range is the first of it
        (base + size - 1, 1, True),        # its last page only
        (base + size // 2, 1, True),       # one page inside (superpages)
        (0, base, False),                  # everything below it
        (base - 1, size + 2, True),        # covers it entirely
        (base, 0, False),                  # empty range
    ]
    dut = TLB(sets=4, ways=2, vm_bits=2, root_bits=4, data_width=8)

    async def body(tb):
        for start, count, removed in cases:
            for vm in (0, 1):
                await tb.fill(vm, 3, base, level, 0x40 + vm)
            await tb.invalidate("range", 0, start, count)
            got0 = await tb.lookup(0, 3, base + size - 1)
            got1 = await tb.lookup(1, 3, base)
            assert (got0 is None) == removed, f"range [{start:#x}+{count:#x}) vs level " \
                                              f"{level} entry at {base:#x}: {got0}"
            assert got1 == (level, 0x41), "another VM's entry was invalidated"
            await tb.invalidate("all")
            assert await tb.lookup(1, 3, base) is None

    run(dut, body)


def test_vm_and_root_isolation():
    dut = TLB(sets=4, ways=4, vm_bits=2, root_bits=4, data_width=8)

    async def body(tb):
        await tb.fill(0, 1, 0x1234, 1, 0x10)
        await tb.fill(1, 1, 0x1234, 1, 0x11)
        await tb.fill(0, 2, 0x1234, 1, 0x12)
        assert await tb.lookup(0, 1, 0x1234) == (1, 0x10)
        assert await tb.lookup(1, 1, 0x1234) == (1, 0x11)
        assert await tb.lookup(0, 2, 0x1234) == (1, 0x12)
        assert await tb.lookup(2, 1, 0x1234) is None
        await tb.invalidate("vm", 0)
        assert await tb.lookup(0, 1, 0x1234) is None
        assert await tb.lookup(0, 2, 0x1234) is None
        assert await tb.lookup(1, 1, 0x1234) == (1, 0x11)

    run(dut, body)


def test_plru_eviction_order():
    """Four ways, one set: after touching 0, 1, 2, 3, 0, 2 by lookups the tree-PLRU
    victim is way 1 (the left pair was used last by 0, the right by 2, and the root
    points left because 2 was the last access)."""
    dut = TLB(sets=1, ways=4, vm_bits=1, root_bits=1, data_width=8)

    async def body(tb):
        for w in range(4):
            await tb.fill(0, 0, 0x100 + w, 1, w)
        for w in (0, 2):
            assert await tb.lookup(0, 0, 0x100 + w) == (1, w)
        await tb.fill(0, 0, 0x200, 1, 9)           # evicts way 1
        assert await tb.lookup(0, 0, 0x101) is None
        for w in (0, 2, 3):
            assert await tb.lookup(0, 0, 0x100 + w) == (1, w)
        assert await tb.lookup(0, 0, 0x200) == (1, 9)

    run(dut, body)


def test_one_lookup_per_cycle():
    """Back-to-back lookups: accepted every cycle, each answered the cycle after."""
    dut = TLB(sets=4, ways=2, vm_bits=1, root_bits=1, data_width=8)

    async def body(tb):
        ctx = tb.ctx
        for i in range(4):
            await tb.fill(0, 0, i, 1, i)
        vpns = [i % 6 for i in range(24)]
        results = []
        ctx.set(dut.lookup.valid, 1)
        for vpn in vpns:
            ctx.set(dut.lookup.payload, {"vm": 0, "root": 0, "vpn": vpn})
            assert ctx.get(dut.lookup.ready), "a lookup was refused in a stream"
            await ctx.tick()
            assert ctx.get(dut.result.valid)
            results.append(ctx.get(dut.result.payload.data)
                           if ctx.get(dut.result.payload.hit) else None)
        ctx.set(dut.lookup.valid, 0)
        assert results == [v if v < 4 else None for v in vpns]

    run(dut, body)


@pytest.mark.filterwarnings("ignore:.*created but never used")
def test_parameters_are_checked():
    with pytest.raises(ValueError, match="ways"):
        TLB(ways=3)
    with pytest.raises(ValueError, match="sets"):
        TLB(sets=0)
    with pytest.raises(ValueError, match="max_level"):
        TLB(max_level=7)
    gc.collect()        # the half-built components warn when collected: do it here
