"""hw.tlb.TLB in Amaranth's simulator against a Python model of the same TLB.

The model states the rules once, with its own tree-PLRU: a 4 KiB entry lives in set
``vpn % sets``; a fill reuses the way holding the same entry, else the lowest invalid
way, else the PLRU victim. A huge entry (level 2 to 4) is fully associative: a fill
reuses the entry of the same level and page, else the lowest invalid one, else a
round-robin victim, and drops every other huge entry overlapping its region. A lookup
hits a 4 KiB entry first, else the huge entry containing the page, and only when the
entry allows the access. A range invalidation removes exactly the entries of the VM
with a page in the range; ``private`` is part of the key and an invalidation removes
only entries of its ``space``. Every lookup result (hit, level, data) must match.
"""

import gc
import random

import pytest
from amaranth.sim import Simulator

from hw.tlb import TLB, InvalKind, InvalSpace, range_value

READ, WRITE, EXEC = 0, 1, 2


def span(level):
    return 1 << (9 * (level - 1))


class TreePlru:
    """A tree pseudo-LRU over ``ways`` ways, written for the test: ``bits[n]`` of
    internal node ``n`` (heap order) says which half the next victim comes from
    (0 left, 1 right); using a way points its path's nodes at the other half."""

    def __init__(self, ways):
        self.ways = ways
        self.bits = [0] * max(1, ways - 1)

    def use(self, way):
        node, lo, size = 0, 0, self.ways
        while size > 1:
            size //= 2
            right = way >= lo + size
            self.bits[node] = 0 if right else 1
            lo += size if right else 0
            node = 2 * node + (2 if right else 1)

    def victim(self):
        node, lo, size = 0, 0, self.ways
        while size > 1:
            size //= 2
            if self.bits[node]:
                lo += size
                node = 2 * node + 2
            else:
                node = 2 * node + 1
        return lo


class RefTLB:
    """Python model of :class:`hw.tlb.TLB`; an entry is ``(vm, gen, private, vpn, level,
    allow, data)`` with ``vpn`` aligned to its level."""

    def __init__(self, sets, ways, huge):
        self.sets, self.ways = sets, ways
        self.entries = [[None] * ways for _ in range(sets)]
        self.plru = [TreePlru(ways) for _ in range(sets)]
        self.huge = [None] * huge
        self.huge_next = 0

    @staticmethod
    def _covers(e, vm, gen, private, vpn):
        return e[:3] == (vm, gen, private) and e[3] <= vpn < e[3] + span(e[4])

    def lookup(self, vm, gen, vpn, access, private=0):
        s = vpn % self.sets
        for w, e in enumerate(self.entries[s]):
            if e is not None and self._covers(e, vm, gen, private, vpn) \
                    and e[5] >> access & 1:
                self.plru[s].use(w)
                return 1, e[6]
        for e in self.huge:
            if e is not None and self._covers(e, vm, gen, private, vpn) and e[5] >> access & 1:
                return e[4], e[6]
        return None

    def fill(self, vm, gen, vpn, level, allow, payload, private=0):
        base = vpn & ~(span(level) - 1)
        new = (vm, gen, private, base, level, allow, payload)
        if level == 1:
            s = base % self.sets
            row = self.entries[s]
            same = [w for w, e in enumerate(row) if e is not None and e[:5] == new[:5]]
            free = [w for w, e in enumerate(row) if e is None]
            way = same[0] if same else free[0] if free else self.plru[s].victim()
            row[way] = new
            self.plru[s].use(way)
            return
        same = [i for i, e in enumerate(self.huge) if e is not None and e[:5] == new[:5]]
        free = [i for i, e in enumerate(self.huge) if e is None]
        if same:
            slot = same[0]
        elif free:
            slot = free[0]
        else:
            slot = self.huge_next
            self.huge_next = (self.huge_next + 1) % len(self.huge)
        for i, e in enumerate(self.huge):
            if e is not None and e[:3] == new[:3]:
                size = span(max(e[4], level))
                if e[3] // size == base // size:
                    self.huge[i] = None
        self.huge[slot] = new

    def invalidate(self, kind, vm=0, first=0, last=-1, space="both"):
        def goes(e):
            if space != "both" and (space == "private") != bool(e[2]):
                return False
            if kind == "all":
                return True
            if e[0] != vm:
                return False
            base = e[3]
            return kind == "vm" or (base <= last and first <= base + span(e[4]) - 1)
        for row in self.entries:
            for w, e in enumerate(row):
                if e is not None and goes(e):
                    row[w] = None
        for i, e in enumerate(self.huge):
            if e is not None and goes(e):
                self.huge[i] = None


KINDS = {"all": InvalKind.ALL, "vm": InvalKind.VM, "range": InvalKind.RANGE}
SPACES = {"both": InvalSpace.BOTH, "shared": InvalSpace.SHARED, "private": InvalSpace.PRIVATE}


class TlbBench:
    """Drives one op at a time and returns each lookup's answer."""

    def __init__(self, ctx, dut):
        self.ctx, self.dut = ctx, dut
        ctx.set(dut.result.ready, 1)

    async def _op(self, payload):
        ctx, dut = self.ctx, self.dut
        key = payload["key"]
        late = {"gen": key.pop("gen"), "private": key.pop("private", 0)}
        ctx.set(dut.op.payload, payload)
        ctx.set(dut.op.valid, 1)
        for _ in range(4):
            if ctx.get(dut.op.ready):
                break
            await ctx.tick()
        else:
            raise AssertionError("TLB refused an op for 4 cycles while idle")
        await ctx.tick()
        ctx.set(dut.op.valid, 0)
        ctx.set(dut.key_late, late)
        await ctx.tick()
        assert ctx.get(dut.result.valid), "no result two cycles after the op"
        hit = ctx.get(dut.result.payload.hit)
        out = (ctx.get(dut.result.payload.level), ctx.get(dut.result.payload.data)) \
            if hit else None
        await ctx.tick()
        return out

    async def lookup(self, vm, gen, vpn, access=READ, private=0):
        return await self._op({"fill": 0, "key": {"vm": vm, "gen": gen, "vpn": vpn,
                                                  "private": private, "access": access}})

    async def fill(self, vm, gen, vpn, level, payload, private=0, allow=0b111):
        base = vpn & ~(span(level) - 1)
        await self._op({"fill": 1, "key": {"vm": vm, "gen": gen, "vpn": base,
                                           "private": private},
                        "level": level, "allow": allow, "data": payload})

    async def invalidate(self, kind, vm=0, first=0, last=0, space="both"):
        ctx, dut = self.ctx, self.dut
        ctx.set(dut.inval.payload, {"kind": KINDS[kind], "vm": vm,
                                    "range": range_value(first, last),
                                    "space": SPACES[space]})
        ctx.set(dut.inval.valid, 1)
        assert ctx.get(dut.inval.ready)
        await ctx.tick()
        ctx.set(dut.inval.valid, 0)
        for cycle in range(max(dut.sets, dut.huge) + 6):
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
    vm, gen, vpn = rng.choice(pool)
    level = rng.choice((1, 1, 2, 2, 3, 4))
    return vm, gen, vpn, level, rng.randrange(2)


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("sets,ways,huge", [(4, 4, 4), (2, 8, 2), (1, 2, 1)])
def test_random_against_model(seed, sets, ways, huge):
    rng = random.Random(seed * 100 + sets * 10 + ways)
    dut = TLB(sets=sets, ways=ways, huge=huge, vm_bits=2, gen_bits=2, data_width=16)
    ref = RefTLB(sets, ways, huge)
    # A small pool of pages so that sets fill, ways are evicted and superpages overlap.
    bases = [rng.randrange(1 << 30) for _ in range(6)]
    pool = [(rng.randrange(2), rng.randrange(2), b + rng.choice((0, 1, 511, 512, 1 << 18)))
            for b in bases for _ in range(3)]
    checked = []

    async def body(tb):
        for step in range(400):
            op = rng.random()
            if op < 0.45:
                vm, gen, vpn, _, private = random_op(rng, pool)
                access = rng.choice((READ, WRITE, EXEC))
                got = await tb.lookup(vm, gen, vpn, access, private)
                want = ref.lookup(vm, gen, vpn, access, private)
                assert got == want, f"seed {seed} step {step}: lookup {vm},{gen},{vpn:#x}," \
                                    f"access={access},private={private}: RTL {got} model {want}"
                checked.append(got is not None)
            elif op < 0.9:
                vm, gen, vpn, level, private = random_op(rng, pool)
                payload = rng.randrange(1 << 16)
                allow = rng.choice((0b111, 0b111, 0b101, 0b001))
                await tb.fill(vm, gen, vpn, level, payload, private, allow)
                ref.fill(vm, gen, vpn, level, allow, payload, private)
            else:
                kind = rng.choice(("all", "vm", "range", "range", "range"))
                vm = rng.randrange(2)
                _, _, vpn, _, _ = random_op(rng, pool)
                first = max(0, vpn + rng.randrange(-600, 600))
                count = rng.choice((1, 2, 511, 513, 1 << 18, rng.randrange(1, 1 << 20)))
                space = rng.choice(("both", "both", "shared", "private"))
                await tb.invalidate(kind, vm, first, first + count - 1, space)
                ref.invalidate(kind, vm, first, first + count - 1, space)

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
    ]
    dut = TLB(sets=4, ways=2, huge=2, vm_bits=2, gen_bits=2, data_width=8)

    async def body(tb):
        for start, count, removed in cases:
            for vm in (0, 1):
                await tb.fill(vm, 3, base, level, 0x40 + vm)
            await tb.invalidate("range", 0, start, start + count - 1)
            got0 = await tb.lookup(0, 3, base + size - 1)
            got1 = await tb.lookup(1, 3, base)
            assert (got0 is None) == removed, f"range [{start:#x}+{count:#x}) vs level " \
                                              f"{level} entry at {base:#x}: {got0}"
            assert got1 == (level, 0x41), "another VM's entry was invalidated"
            await tb.invalidate("all")
            assert await tb.lookup(1, 3, base) is None

    run(dut, body)


def test_isolation_and_allow():
    dut = TLB(sets=4, ways=4, huge=2, vm_bits=2, gen_bits=2, data_width=8)

    async def body(tb):
        await tb.fill(0, 1, 0x1234, 1, 0x10)
        await tb.fill(1, 1, 0x1234, 1, 0x11)
        await tb.fill(0, 2, 0x1234, 1, 0x12, allow=0b001)
        assert await tb.lookup(0, 1, 0x1234) == (1, 0x10)
        assert await tb.lookup(1, 1, 0x1234) == (1, 0x11)
        assert await tb.lookup(0, 2, 0x1234) == (1, 0x12)
        assert await tb.lookup(0, 2, 0x1234, WRITE) is None      # a read-only entry
        assert await tb.lookup(2, 1, 0x1234) is None
        assert await tb.lookup(0, 1, 0x1234, private=1) is None
        await tb.invalidate("vm", 0)
        assert await tb.lookup(0, 1, 0x1234) is None
        assert await tb.lookup(0, 2, 0x1234) is None
        assert await tb.lookup(1, 1, 0x1234) == (1, 0x11)

    run(dut, body)


def test_plru_eviction_order():
    """Four ways, one set: after touching 0, 1, 2, 3, 0, 2 by lookups the tree-PLRU
    victim is way 1 (the left pair was used last by 0, the right by 2, and the root
    points left because 2 was the last access)."""
    dut = TLB(sets=1, ways=4, huge=1, vm_bits=1, gen_bits=1, data_width=8)

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
    """Back-to-back lookups: accepted every cycle, each answered two cycles later."""
    dut = TLB(sets=4, ways=2, huge=1, vm_bits=1, gen_bits=1, data_width=8)

    async def body(tb):
        ctx = tb.ctx
        for i in range(4):
            await tb.fill(0, 0, i, 1, i)
        vpns = [i % 6 for i in range(24)]
        results = []
        ctx.set(dut.op.valid, 1)
        for cycle, vpn in enumerate(vpns + [0, 0]):
            ctx.set(dut.op.payload, {"fill": 0, "key": {"vm": 0, "vpn": vpn}})
            assert ctx.get(dut.op.ready), "a lookup was refused in a stream"
            if cycle >= 2:
                assert ctx.get(dut.result.valid)
                results.append(ctx.get(dut.result.payload.data)
                               if ctx.get(dut.result.payload.hit) else None)
            await ctx.tick()
        ctx.set(dut.op.valid, 0)
        assert results == [v if v < 4 else None for v in vpns]

    run(dut, body)


def test_lookup_behind_a_huge_fill_that_replaces_its_entry():
    """Huge entries are flip-flops S2 reads: a lookup in S1 as a huge fill in S2
    overwrites the entry it matches would answer with the new entry's data for its own
    page. So :func:`hw.tlb.conflicts` holds a lookup back while a huge fill is in S1;
    offered a cycle later, it finds the entry replaced."""
    dut = TLB(sets=4, ways=2, huge=1, vm_bits=1, gen_bits=1, data_width=8)
    old, new = 5 * span(2), 9 * span(2)

    async def body(tb):
        ctx = tb.ctx
        await tb.fill(0, 0, old, 2, 0x11)
        assert await tb.lookup(0, 0, old + 3) == (2, 0x11)
        ctx.set(dut.key_late, {"gen": 0, "private": 0})
        lookup = {"fill": 0, "key": {"vm": 0, "vpn": old + 3, "access": READ}}
        answers, refused = [], []
        for op in ({"fill": 1, "key": {"vm": 0, "vpn": new}, "level": 2, "allow": 0b111,
                    "data": 0x22}, lookup, lookup, None, None):
            ctx.set(dut.op.valid, op is not None)
            if op is not None:
                ctx.set(dut.op.payload, op)
                if ctx.get(dut.op_conflicts(dut.op.payload)):
                    refused.append(len(answers))
                    ctx.set(dut.op.valid, 0)
            if ctx.get(dut.result.valid):
                answers.append((ctx.get(dut.result.payload.level),
                                ctx.get(dut.result.payload.data))
                               if ctx.get(dut.result.payload.hit) else None)
            await ctx.tick()
        assert refused == [0], refused      # the first lookup, right behind the fill
        assert answers == [None, None], answers     # the fill's slot, then the miss

    run(dut, body)


@pytest.mark.parametrize("seed", [1, 2])
def test_stream_of_fills_and_lookups(seed):
    """An op offered every cycle, as the MMU does: fills of other sets back to back, ops
    that :func:`hw.tlb.conflicts` with a fill ahead held back (and, so that every answer
    is the model's in order, lookups of a set with a fill of it ahead, or with a huge
    fill ahead). Fills of distinct sets must enter on consecutive cycles."""
    rng = random.Random(seed)
    sets, ways, huge = 4, 2, 2
    dut = TLB(sets=sets, ways=ways, huge=huge, vm_bits=1, gen_bits=1, data_width=16)
    ref = RefTLB(sets, ways, huge)
    pool = [(0, 0, b + rng.choice((0, 1, 2, 3, 512))) for b in (0, 1 << 18) for _ in range(4)]
    answers, wanted, back_to_back = [], [], []

    async def body(tb):
        ctx = tb.ctx
        late, last_fill_set = {"gen": 0, "private": 0}, None
        for cycle in range(600):
            f = {name: ctx.get(getattr(dut.fills, name)) for name in
                 ("s1_small", "s1_huge", "s1_set", "s2_small", "s2_huge", "s2_set")}
            ahead = {f[f"s{n}_set"] for n in (1, 2) if f[f"s{n}_small"]}
            any_huge = f["s1_huge"] or f["s2_huge"]
            vm, gen, vpn, level, private = random_op(rng, pool)
            fill = rng.random() < 0.5
            level = level if fill else 1
            base = vpn & ~(span(level) - 1)
            if fill:
                blocked = any_huge if level > 1 else (base % sets) in ahead
            else:
                blocked = any_huge or (vpn % sets) in ahead
            ctx.set(dut.key_late, late)
            ctx.set(dut.op.valid, int(not blocked))
            payload = rng.randrange(1 << 16)
            if fill:
                ctx.set(dut.op.payload, {"fill": 1, "key": {"vm": vm, "vpn": base},
                                         "level": level, "allow": 0b111, "data": payload})
            else:
                ctx.set(dut.op.payload, {"fill": 0, "key": {"vm": vm, "vpn": vpn,
                                                            "access": READ}})
            taken = not blocked and ctx.get(dut.op.ready)
            if ctx.get(dut.result.valid):
                answers.append((ctx.get(dut.result.payload.hit),
                                ctx.get(dut.result.payload.level),
                                ctx.get(dut.result.payload.data)))
            await ctx.tick()
            late = {"gen": gen, "private": private}
            if taken and fill:
                ref.fill(vm, gen, base, level, 0b111, payload, private)
                wanted.append(None)
                if level == 1:
                    if last_fill_set is not None and last_fill_set != base % sets:
                        back_to_back.append(cycle)
                    last_fill_set = base % sets
                    continue
            elif taken:
                wanted.append(ref.lookup(vm, gen, vpn, READ, private))
            last_fill_set = None
        ctx.set(dut.op.valid, 0)
        for _ in range(3):
            if ctx.get(dut.result.valid):
                answers.append((ctx.get(dut.result.payload.hit),
                                ctx.get(dut.result.payload.level),
                                ctx.get(dut.result.payload.data)))
            await ctx.tick()

    run(dut, body)
    assert len(answers) == len(wanted)
    got = [(level, data) if hit else None for hit, level, data in answers]
    for n, (g, w) in enumerate(zip(got, wanted)):
        if w is not None or g is not None:
            assert g == w, f"seed {seed}, op {n}: RTL {g} model {w}"
    assert any(w is not None for w in wanted) and back_to_back, \
        "the stream never hit, or never had two fills of other sets on consecutive cycles"


@pytest.mark.filterwarnings("ignore:.*created but never used")
def test_parameters_are_checked():
    with pytest.raises(ValueError, match="ways"):
        TLB(ways=3)
    with pytest.raises(ValueError, match="sets"):
        TLB(sets=0)
    with pytest.raises(ValueError, match="huge"):
        TLB(huge=0)
    with pytest.raises(ValueError, match="max_level"):
        TLB(max_level=7)
    gc.collect()        # the half-built components warn when collected: do it here
