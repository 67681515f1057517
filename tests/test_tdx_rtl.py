"""TDX-style confidential VMs in the RTL (Amaranth's simulator): a TD's private GPAs
(shared bit clear) walk the context's ``ext_root``, its shared GPAs the ordinary
``root``, both with the full GPA (KVM's kvm_gfn_direct_bits); TLB and walk-cache
entries of the two spaces never alias; an invalidation's ``space`` removes only the
entries of that space.

The tables are built by hand (no TDP model), with traps: the shared root maps the
private form of a GPA, and the external root maps the shared form, to HPAs that no
correct walk can return, so taking the wrong root shows as a wrong HPA.
"""

import random

import pytest

from conftest import leaf_addr
from hw.sim import VmContext, check_against_model, run_mmu
from sw_model.formats import get_format
from sw_model.memory import HostMemory
from sw_model.walker import translate

SHARED_BIT = {"ept4": 47, "ept5": 51}
PRIVATE_HPA, SHARED_HPA, TRAP_HPA = 1 << 40, 2 << 40, 3 << 40


def map_page(fmt, mem, root, gpa, hpa, level=1):
    mem.write64(leaf_addr(fmt, mem, root, gpa, level),
                fmt.make_leaf(hpa, level, r=True, w=True, x=True, a=True, d=True))


class TD:
    """A TD's two roots on one memory, and what each GPA must translate to.

    Members
    -------
    fmt, mem, ctx : the format, the memory, the TD's VmContext
    shared : int
        The shared bit as a GPA mask.
    expect : dict
        GPA (page aligned, with the shared bit for shared pages) -> HPA of the page.
    """

    def __init__(self, name, seed):
        self.fmt = fmt = get_format(name)
        self.rng = rng = random.Random(seed)
        self.mem = mem = HostMemory(8 << 20)
        self.shared_root = mem.alloc_table(fmt.root_table_bytes)
        self.ext_root = mem.alloc_table(fmt.root_table_bytes)
        self.shared = 1 << SHARED_BIT[name]
        self.ctx = VmContext(fmt, self.shared_root, fmt.vm_options(ad="hardware"),
                             ext_root=self.ext_root, shared_bit=SHARED_BIT[name])
        self.expect = {}
        # 4 KiB GFNs: private only, shared only, both; some share a 2 MiB region.
        base = rng.randrange(1, 1 << 14) << 9       # GPAs below 2**36: HPAs below 2**40
        gfns = rng.sample(range(base, base + 1024), 24)
        for i, gfn in enumerate(gfns):
            if i % 3 != 1:
                self.map(gfn, private=True)
            if i % 3 != 0:
                self.map(gfn, private=False)
        # A 2 MiB page in each space at the same GFN, different frames.
        big = (base + 4096) & ~511
        for private in (True, False):
            self.map(big, private, level=2)
        self.gfns = gfns + [big, big + 300]
        self.unmapped = [base + 2048 + i for i in range(3)]

    def map(self, gfn, private, level=1):
        gpa = gfn << 12 | (0 if private else self.shared)
        hpa = (PRIVATE_HPA if private else SHARED_HPA) + (gfn << 12)
        map_page(self.fmt, self.mem, self.ext_root if private else self.shared_root,
                 gpa, hpa, level)
        # The trap: the same GPA in the other root maps to a frame no walk may return.
        map_page(self.fmt, self.mem, self.shared_root if private else self.ext_root,
                 gpa, TRAP_HPA + (gfn << 12), level)
        size = 1 << (12 + 9 * (level - 1))
        for off in range(0, size, 4096) if level == 1 else (0, 300 << 12):
            self.expect[gpa + off] = hpa + off

    def gpa(self, gfn, private):
        return gfn << 12 | (0 if private else self.shared)

    def check_side(self, gpa, result):
        """A translation's HPA comes from the side the GPA's shared bit names."""
        page = gpa & ~0xfff
        if result.ok:
            assert page in self.expect, f"{gpa:#x} translated to {result.hpa:#x}, unmapped"
            assert result.hpa == self.expect[page] + (gpa & 0xfff), \
                f"{gpa:#x} -> {result.hpa:#x}, expected {self.expect[page]:#x} " \
                f"({'private' if self.ctx.is_private(gpa) else 'shared'} root)"
        else:
            assert page not in self.expect, f"{gpa:#x} faulted: {result.to_json()}"

    def accesses(self, count):
        out = []
        for _ in range(count):
            gfn = self.rng.choice(self.gfns + self.unmapped)
            gpa = self.gpa(gfn, self.rng.random() < 0.5) | self.rng.randrange(512) << 3
            out.append((gpa, self.rng.choice(("read", "read", "write", "execute"))))
        return out


@pytest.mark.parametrize("name", ["ept4", "ept5"])
def test_walker_picks_the_root_by_shared_bit(name):
    seed = 700 + len(name)
    td = TD(name, seed)
    # Context 1: an ordinary VM on the same shared root ignores ext_root and the bit.
    plain = VmContext(td.fmt, td.shared_root, td.ctx.vm)
    accesses = [(g, a, 0) for g, a in td.accesses(60)]
    accesses += [(g, "read", 1) for g, _ in td.accesses(10)]
    rtl, model, mismatches, _, _ = check_against_model(td.mem, [td.ctx, plain], accesses,
                                                       stall=0.1, seed=seed)
    assert not mismatches, f"seed {seed}: {mismatches[:3]}"
    for (gpa, _, vm), result in zip(accesses, rtl):
        if vm == 0:
            td.check_side(gpa, result.result)
    ok = [r.result for (_, _, vm), r in zip(accesses, rtl) if vm == 0 and r.result.ok]
    assert {r.hpa >> 40 for r in ok} == {1, 2}, f"seed {seed}: one space never translated"
    # The ordinary VM walks the shared root for private-looking GPAs too: the traps.
    traps = [r.result for (gpa, _, vm), r in zip(accesses, rtl)
             if vm == 1 and r.result.ok and not gpa & td.shared]
    assert all(r.hpa >> 40 == 3 for r in traps)


def _essential(result):
    return {k: v for k, v in result.to_json().items() if k not in ("pte_addrs", "ad_writes")}


@pytest.mark.parametrize("name", ["ept4", "ept5"])
def test_mmu_no_aliasing_between_spaces(name):
    """One GFN mapped in both spaces, accessed alternately: TLB hits, merged misses and
    walk-cache hits of one space never answer for the other."""
    seed = 710 + len(name)
    td = TD(name, seed)
    both = [g for i, g in enumerate(td.gfns[:24]) if i % 3 == 2] + td.gfns[24:]
    script = []
    for _ in range(6):
        for gfn in both:
            for private in (True, False, True):
                gpa = td.gpa(gfn, private) | td.rng.randrange(512) << 3
                script.append(("req", gpa, td.rng.choice(("read", "write")), 0))
    script += [("req", g, a, 0) for g, a in td.accesses(60)]
    before = td.mem.copy()
    run = run_mmu(td.mem, [td.ctx], script, latency=4, jitter=3, stall=0.1, seed=seed)
    for index, (_, gpa, access, _) in enumerate(script):
        got = run.results[index]
        want = translate(before, td.fmt, td.ctx.root_of(gpa), gpa, access, vm=td.ctx.vm)
        assert _essential(got) == _essential(want), f"seed {seed} request {index}"
        td.check_side(gpa, got)
    c = run.counters
    assert c["tlb_hits"] > len(script) // 3 and c["pwc_hits"] > 0, f"seed {seed}: {c}"


def _remap_region(td, gfn, private):
    """Point the level-2 entry of ``gfn``'s 2 MiB region at a new table mapping every
    page of the region to a new frame (+ 1 GiB), and move ``gfn`` in the old table
    (+ 2 GiB: what a walk through a stale walk-cache entry finds), without an
    invalidation."""
    fmt, mem = td.fmt, td.mem
    root = td.ext_root if private else td.shared_root
    gpa = td.gpa(gfn, private)
    table = mem.alloc_table(4096)
    old = fmt.frame_of(mem.read64(leaf_addr(fmt, mem, root, gpa, 2)))
    for i in range(512):
        word = mem.read64(old + 8 * i)
        if fmt.is_present(word):
            mem.write64(table + 8 * i, fmt.put_frame(word, fmt.frame_of(word) + (1 << 30)))
    mem.write64(leaf_addr(fmt, mem, root, gpa, 2), fmt.make_table(table))
    addr = fmt.entry_addr(old, gpa, 1)
    mem.write64(addr, fmt.put_frame(mem.read64(addr), fmt.frame_of(mem.read64(addr)) + (2 << 30)))


class _Requests:
    """A run_mmu script of reads of a TD's GFNs, each expected to translate to the page's
    first frame or, ``remapped``, to the frame a walk finds after :func:`_remap_region`
    (1 GiB above)."""

    def __init__(self, td):
        self.td, self.script, self.expect = td, [], []

    def req(self, gfn, private, remapped=False):
        hpa = (PRIVATE_HPA if private else SHARED_HPA) + (gfn << 12) + (remapped << 30)
        self.script.append(("req", self.td.gpa(gfn, private) | 0x18, "read", 0))
        self.expect.append((gfn, private, hpa))

    def check(self, label, seed):
        run = run_mmu(self.td.mem, [self.td.ctx], self.script, latency=3, seed=seed)
        for index, (gfn, private, hpa) in enumerate(self.expect):
            got = run.results[index]
            assert got.ok and got.hpa == hpa + 0x18, (
                f"{label}: request {index} ({'private' if private else 'shared'} gfn "
                f"{gfn:#x}) -> {got.to_json()}, expected {hpa + 0x18:#x}")


@pytest.mark.parametrize("kind", ["all", "vm", "range"])
@pytest.mark.parametrize("space", ["private", "shared", "both"])
def test_mmu_invalidation_by_space(kind, space):
    """Cache a GFN and its 2 MiB region's walk-cache entry in both spaces, remap both
    behind the MMU's back, invalidate one space: that space sees the new tables, the
    other keeps its cached translations (the TLB entry of the page: a walk would find
    + 2 GiB through the cached level-2 entry; the walk-cache entry for a neighbour
    never accessed before)."""
    td = TD("ept4", 720)
    gfn, other = td.gfns[2], None       # index 2: mapped in both spaces
    for g in td.gfns[:24]:
        if g >> 9 == gfn >> 9 and g != gfn and td.gfns.index(g) % 3 == 2:
            other = g
    if other is None:       # make a neighbour mapped in both spaces
        other = (gfn & ~511) | ((gfn + 7) & 511)
        for private in (True, False):
            td.map(other, private)
    rq = _Requests(td)
    for private in (True, False):
        rq.req(gfn, private)
    rq.script.append(("drain",))
    rq.script.append(("mem", lambda mem: [_remap_region(td, gfn, p) for p in (True, False)]))
    for private in (True, False):
        rq.req(gfn, private)        # TLB hits: stale, no flush yet
    rq.script.append(("drain",))
    start, count = (gfn & ~511, 512) if kind == "range" else (0, 0)
    rq.script.append(("inval", kind, 0, start, count, space))
    for private in (True, False):
        hit = space == "both" or (space == "private") == private
        for g in (gfn, other):
            rq.req(g, private, remapped=hit)
    rq.check(f"{kind}/{space}", seed=720)


def test_context_checks():
    fmt = get_format("ept4")
    vm = fmt.vm_options()
    with pytest.raises(ValueError, match="ext_root and shared_bit"):
        VmContext(fmt, 0x1000, vm, ext_root=0x2000)
    with pytest.raises(ValueError, match="shared_bit"):
        VmContext(fmt, 0x1000, vm, ext_root=0x2000, shared_bit=48)
    ctx = VmContext(fmt, 0x1000, vm, ext_root=0x2000, shared_bit=47)
    assert ctx.root_of(0x1234) == 0x2000 and ctx.root_of(0x1234 | 1 << 47) == 0x1000
    assert VmContext(fmt, 0x1000, vm).root_of(0x1234) == 0x1000


def test_cosim_catches_a_hypervisor_that_drops_conversion_flushes(capfd):
    """The co-simulation scenario's side check has teeth: with every invalidation
    dropped, a request accepted after a conversion translates through the side its GFN
    left (the scoreboard alone cannot tell: without the flush the stale translation is
    one the model never asked to remove)."""
    from cocotb_tests.runner import run_mmu
    with pytest.raises(AssertionError, match="1 of 1 MMU scenario runs failed"):
        run_mmu("verilator", ["tdx"], seed=0, size="short",
                extra={"TDPWALK_MUTATE": "drop_flushes"})
    out = capfd.readouterr()
    text = out.out + out.err
    assert "became private at cycle" in text or "became shared at cycle" in text, text[-3000:]


@pytest.mark.parametrize("space", ["private", "shared", "both"])
def test_mmu_range_of_one_gfn_in_a_td(space):
    """A range naming one GFN (without the shared bit) removes that page in the spaces
    it names, and nothing of a page in another 2 MiB region: the invalidator sweeps a
    TD's shared entries with the range moved up by the shared bit, its private ones
    with the range as named."""
    td = TD("ept4", 721)
    both = [g for i, g in enumerate(td.gfns[:24]) if i % 3 == 2]
    gfn = both[0]
    far = next(g for g in both if g >> 9 != gfn >> 9)
    rq = _Requests(td)
    for g in (gfn, far):
        for private in (True, False):
            rq.req(g, private)
    rq.script.append(("drain",))
    rq.script.append(("mem", lambda mem: [_remap_region(td, g, p) for g in (gfn, far)
                                          for p in (True, False)]))
    rq.script.append(("inval", "range", 0, gfn, 1, space))
    for g in (gfn, far):
        for private in (True, False):
            gone = g == gfn and (space == "both" or (space == "private") == private)
            rq.req(g, private, remapped=gone)
    rq.check(space, seed=721)
