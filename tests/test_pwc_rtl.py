"""hw.pwc.PageWalkCache in Amaranth's simulator against a Python model.

The model: per level 2..5, ``entries`` slots; a fill reuses the slot holding the same
(VM, generation, space, region), else the lowest invalid slot, else the level's
round-robin victim; a lookup answers with the deepest level that hits, as the start of
a walk: the level below it, the entry to read there (the cached table's frame and the
GPA's index) and the permissions cached. An invalidation removes the VM's entries
whose region has a page in the range, only in its ``space``.
"""

import random

import pytest
from amaranth.sim import Simulator

from hw.pwc import PageWalkCache
from hw.tlb import InvalKind, InvalSpace, range_value

KINDS = {"all": InvalKind.ALL, "vm": InvalKind.VM, "range": InvalKind.RANGE}
SPACES = {"both": InvalSpace.BOTH, "shared": InvalSpace.SHARED, "private": InvalSpace.PRIVATE}


def span(level):
    return 1 << (9 * (level - 1))


class RefPWC:
    def __init__(self, entries):
        self.n = entries
        self.slots = {l: [None] * entries for l in range(2, 6)}
        self.rr = {l: 0 for l in range(2, 6)}

    def lookup(self, vm, gen, vpn, private=0):
        """``(start level, entry address >> 3, acc)`` of the deepest hit, or None."""
        for l in range(2, 6):
            for e in self.slots[l]:
                if e is not None and e[:4] == (vm, gen, vpn & ~(span(l) - 1), private):
                    frame, acc = e[4]
                    index = (vpn >> (9 * (l - 2))) & 511
                    return l - 1, (frame << 9) | index, acc
        return None

    def fill(self, vm, gen, vpn, level, frame, acc, private=0):
        key = (vm, gen, vpn & ~(span(level) - 1), private)
        row = self.slots[level]
        same = [i for i, e in enumerate(row) if e is not None and e[:4] == key]
        free = [i for i, e in enumerate(row) if e is None]
        if same:
            slot = same[0]
        elif free:
            slot = free[0]
        else:
            slot = self.rr[level]
            self.rr[level] = (slot + 1) % self.n
        row[slot] = (*key, (frame, acc))

    def invalidate(self, kind, vm=0, first=0, last=0, space="both"):
        for l, row in self.slots.items():
            for i, e in enumerate(row):
                if e is None:
                    continue
                if space != "both" and (space == "private") != bool(e[3]):
                    continue
                overlap = e[2] <= last and first <= e[2] + span(l) - 1
                if kind == "all" or (e[0] == vm and (kind == "vm" or overlap)):
                    row[i] = None


def run(dut, body):
    sim = Simulator(dut)
    sim.add_clock(1e-8)

    async def bench(ctx):
        ctx.set(dut.adv, 1)

        async def lookup(vm, gen, vpn, private=0):
            # Every other VM's and space's generation is another: only the lookup's
            # own may make an entry hit.
            current = [gen ^ 1] * (2 << dut.vm_bits)
            current[2 * vm + private] = gen
            ctx.set(dut.current, current)
            ctx.set(dut.key, {"vm": vm, "vpn": vpn})
            ctx.set(dut.take, 1)
            await ctx.tick()
            ctx.set(dut.take, 0)
            ctx.set(dut.private, private)
            await ctx.tick()
            start = ctx.get(dut.start)
            if not start["hit"]:
                return None
            return start["level"], start["addr"], start["acc"]

        async def fill(vm, gen, vpn, level, frame, acc, private=0):
            ctx.set(dut.fill.payload, {"key": {"vm": vm, "gen": gen, "vpn": vpn,
                                               "private": private},
                                       "level": level, "data": {"frame": frame, "acc": acc}})
            ctx.set(dut.fill.valid, 1)
            await ctx.tick()
            ctx.set(dut.fill.valid, 0)
            await ctx.tick().repeat(2)

        async def invalidate(kind, vm=0, first=0, last=0, space="both"):
            ctx.set(dut.inval.payload, {"kind": KINDS[kind], "vm": vm,
                                        "range": range_value(first, last),
                                        "space": SPACES[space]})
            ctx.set(dut.inval.valid, 1)
            assert ctx.get(dut.inval.ready)
            await ctx.tick()
            ctx.set(dut.inval.valid, 0)
            for _ in range(dut.entries + 4):
                if ctx.get(dut.inval_done):
                    return
                await ctx.tick()
            raise AssertionError("inval_done never pulsed")

        await body(lookup, fill, invalidate, ctx)

    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_random_against_model(seed):
    rng = random.Random(seed)
    dut = PageWalkCache(entries=2, vm_bits=2, gen_bits=2)
    ref = RefPWC(2)
    bases = [rng.randrange(1 << 40) for _ in range(4)]
    pool = [(rng.randrange(2), rng.randrange(2),
             b + rng.choice((0, 1, 511, 512, 1 << 18, 1 << 27))) for b in bases for _ in range(3)]
    pool = [(*item, private) for item in pool for private in (0, 1)]
    outcomes = set()

    async def body(lookup, fill, invalidate, ctx):
        for step in range(300):
            vm, gen, vpn, private = rng.choice(pool)
            op = rng.random()
            if op < 0.45:
                got = await lookup(vm, gen, vpn, private)
                want = ref.lookup(vm, gen, vpn, private)
                assert got == want, f"seed {seed} step {step}: {vm},{gen},{vpn:#x}," \
                                    f"private={private}: RTL {got} model {want}"
                outcomes.add(got and got[0])
            elif op < 0.9:
                level, frame, acc = rng.randrange(2, 6), rng.randrange(1 << 40), rng.randrange(16)
                await fill(vm, gen, vpn, level, frame, acc, private)
                ref.fill(vm, gen, vpn, level, frame, acc, private)
            else:
                kind = rng.choice(("all", "vm", "range", "range"))
                first = max(0, vpn + rng.randrange(-1000, 1000))
                count = rng.choice((1, 600, 1 << 18, rng.randrange(1, 1 << 28)))
                space = rng.choice(("both", "both", "shared", "private"))
                await invalidate(kind, vm, first, first + count - 1, space)
                ref.invalidate(kind, vm, first, first + count - 1, space)

    run(dut, body)
    assert None in outcomes and len(outcomes) >= 3, f"seed {seed}: too few outcomes {outcomes}"


def test_deepest_level_wins_and_range_is_exact():
    dut = PageWalkCache(entries=4, vm_bits=1, gen_bits=2)
    gfn = (3 << 27) | (5 << 18) | (7 << 9) | 9

    async def body(lookup, fill, invalidate, ctx):
        for level in (4, 3, 2):
            await fill(0, 1, gfn, level, 0x10 + level, level)
            start = await lookup(0, 1, gfn)
            assert start[0] == level - 1 and start[2] == level
        assert await lookup(0, 2, gfn) is None                # another generation
        # A range just past the level-2 region: only levels 3 and 4 overlap it.
        await invalidate("range", 0, (gfn | 511) + 1, (gfn | 511) + 1)
        assert (await lookup(0, 1, gfn))[0] == 1
        await fill(0, 1, gfn, 3, 0x13, 3)
        await invalidate("range", 0, gfn & ~511, gfn & ~511)   # inside level 2's region
        assert await lookup(0, 1, gfn) is None

    run(dut, body)


def test_back_to_back_fills_of_one_region_share_an_entry():
    """Two walks filling the same level and region on consecutive cycles leave one
    entry, so the level's other entries keep their regions."""
    dut = PageWalkCache(entries=2, vm_bits=1, gen_bits=1)

    async def body(lookup, fill, invalidate, ctx):
        await fill(0, 0, 1 << 20, 2, 0x77, 1)
        for frame in (0x10, 0x11):
            ctx.set(dut.fill.payload, {"key": {"vm": 0, "gen": 0, "vpn": 0},
                                       "level": 2, "data": {"frame": frame, "acc": 2}})
            ctx.set(dut.fill.valid, 1)
            await ctx.tick()
        ctx.set(dut.fill.valid, 0)
        await ctx.tick().repeat(3)
        assert await lookup(0, 0, 0) == (1, 0x11 << 9, 2)
        assert await lookup(0, 0, 1 << 20) == (1, 0x77 << 9, 1)

    run(dut, body)
