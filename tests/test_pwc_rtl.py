"""hw.pwc.PageWalkCache in Amaranth's simulator against a Python model.

The model: per level 2..5, ``entries`` slots, a fill reuses the slot holding the same
(VM, root, region) else takes the round-robin slot; a lookup returns the lowest level
that hits; an invalidation removes the VM's entries whose region overlaps the range.
An entry's ``private`` bit (a TD's private space) is part of its key, and an
invalidation removes only the entries of its ``space``.
"""

import random

import pytest
from amaranth.sim import Simulator

from hw.pwc import PageWalkCache
from hw.tlb import InvalKind, InvalSpace

KINDS = {"all": InvalKind.ALL, "vm": InvalKind.VM, "range": InvalKind.RANGE}
SPACES = {"both": InvalSpace.BOTH, "shared": InvalSpace.SHARED, "private": InvalSpace.PRIVATE}


def span(level):
    return 1 << (9 * (level - 1))


class RefPWC:
    def __init__(self, entries):
        self.n = entries
        self.slots = {l: [None] * entries for l in range(2, 6)}
        self.rr = {l: 0 for l in range(2, 6)}

    def lookup(self, vm, root, vpn, private=0):
        """``{level: data}`` of every level that hits."""
        out = {}
        for l in range(2, 6):
            for e in self.slots[l]:
                if e is not None and e[:4] == (vm, root, vpn & ~(span(l) - 1), private):
                    out[l] = e[4]
                    break
        return out

    def fill(self, vm, root, vpn, level, payload, private=0):
        key = (vm, root, vpn & ~(span(level) - 1), private)
        row = self.slots[level]
        same = [i for i, e in enumerate(row) if e is not None and e[:4] == key]
        if same:
            row[same[0]] = (*key, payload)
        else:
            row[self.rr[level]] = (*key, payload)
            self.rr[level] = (self.rr[level] + 1) % self.n

    def invalidate(self, kind, vm=0, start=0, count=0, space="both"):
        for l, row in self.slots.items():
            for i, e in enumerate(row):
                if e is None:
                    continue
                if space != "both" and (space == "private") != bool(e[3]):
                    continue
                overlap = e[2] < start + count and start < e[2] + span(l)
                if kind == "all" or (e[0] == vm and (kind == "vm" or overlap)):
                    row[i] = None


def run(dut, body):
    sim = Simulator(dut)
    sim.add_clock(1e-8)

    async def bench(ctx):
        async def lookup(vm, root, vpn, private=0):
            ctx.set(dut.lookup.payload, {"vm": vm, "root": root, "vpn": vpn,
                                         "private": private})
            ctx.set(dut.lookup.valid, 1)
            await ctx.tick()
            ctx.set(dut.lookup.valid, 0)
            hits = ctx.get(dut.result.hits)
            out = {l: ctx.get(dut.result.data[l - 2]) for l in range(2, 6)
                   if hits >> (l - 2) & 1}
            deepest = min(out, default=0)
            assert ctx.get(dut.result.hit) == bool(out)
            assert not out or ctx.get(dut.result.level) == deepest
            return out

        async def fill(vm, root, vpn, level, payload, private=0):
            ctx.set(dut.fill.payload, {"vm": vm, "root": root, "vpn": vpn, "level": level,
                                       "data": payload, "private": private})
            ctx.set(dut.fill.valid, 1)
            await ctx.tick()
            ctx.set(dut.fill.valid, 0)

        async def invalidate(kind, vm=0, start=0, count=0, space="both"):
            ctx.set(dut.inval.payload, {"kind": KINDS[kind], "vm": vm, "start": start,
                                        "count": count, "space": SPACES[space]})
            ctx.set(dut.inval.valid, 1)
            assert ctx.get(dut.inval.ready)
            await ctx.tick()
            ctx.set(dut.inval.valid, 0)
            await ctx.tick()
            assert ctx.get(dut.inval_done), "inval_done not two cycles after the request"
            await ctx.tick()

        await body(lookup, fill, invalidate)

    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_random_against_model(seed):
    rng = random.Random(seed)
    dut = PageWalkCache(entries=2, vm_bits=2, root_bits=3, data_width=16)
    ref = RefPWC(2)
    bases = [rng.randrange(1 << 40) for _ in range(4)]
    pool = [(rng.randrange(2), rng.randrange(2),
             b + rng.choice((0, 1, 511, 512, 1 << 18, 1 << 27))) for b in bases for _ in range(3)]
    pool = [(*item, private) for item in pool for private in (0, 1)]
    outcomes = set()

    async def body(lookup, fill, invalidate):
        for step in range(300):
            vm, root, vpn, private = rng.choice(pool)
            op = rng.random()
            if op < 0.45:
                got = await lookup(vm, root, vpn, private)
                want = ref.lookup(vm, root, vpn, private)
                assert got == want, f"seed {seed} step {step}: {vm},{root},{vpn:#x}," \
                                    f"private={private}: RTL {got} model {want}"
                outcomes.add(min(got, default=None))
            elif op < 0.9:
                level, payload = rng.randrange(2, 6), rng.randrange(1 << 16)
                await fill(vm, root, vpn, level, payload, private)
                ref.fill(vm, root, vpn, level, payload, private)
            else:
                kind = rng.choice(("all", "vm", "range", "range"))
                start = max(0, vpn + rng.randrange(-1000, 1000))
                count = rng.choice((0, 1, 600, 1 << 18, rng.randrange(1 << 28)))
                space = rng.choice(("both", "both", "shared", "private"))
                await invalidate(kind, vm, start, count, space)
                ref.invalidate(kind, vm, start, count, space)

    run(dut, body)
    assert None in outcomes and len(outcomes) >= 3, f"seed {seed}: too few outcomes {outcomes}"


def test_deepest_level_wins_and_range_is_exact():
    dut = PageWalkCache(entries=4, vm_bits=1, root_bits=2, data_width=8)
    gfn = (3 << 27) | (5 << 18) | (7 << 9) | 9

    async def body(lookup, fill, invalidate):
        for level in (4, 3, 2):
            await fill(0, 1, gfn, level, 0x10 + level)
            assert min((await lookup(0, 1, gfn)).items()) == (level, 0x10 + level)
        assert await lookup(0, 1, gfn) == {2: 0x12, 3: 0x13, 4: 0x14}
        assert await lookup(0, 2, gfn) == {}                 # another root
        # A range just past the level-2 region: only levels 3 and 4 overlap it.
        await invalidate("range", 0, (gfn | 511) + 1, 1)
        assert await lookup(0, 1, gfn) == {2: 0x12}
        await fill(0, 1, gfn, 3, 0x13)
        await invalidate("range", 0, gfn & ~511, 1)          # inside level 2's region
        assert await lookup(0, 1, gfn) == {}

    run(dut, body)
