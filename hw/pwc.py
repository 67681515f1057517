"""Page-walk cache: table entries per level, so a walk can start below its root.

An entry of level ``l`` (2 up to the highest root level) holds, for one VM, generation
and space, what every walk of a GPA in its ``2**(9*(l-1))``-page region finds at level
``l``: the next table's frame and the permissions accumulated from the root through
this entry (EPT and NPT intersect them over levels, SDM 29.3.3.2, APM 5.6). A lookup
answers with the deepest level that hits as the walk's start: the level below it, the
address of the entry to read first and the permissions so far, so a walk whose upper
levels are cached reads only what is not. Keys are raw page numbers, as in
:mod:`hw.tlb`.

Lookup, in step with the TLB (the same ``adv``):

* S0 — the page number and VM are compared with every entry, and each entry's
  generation with its own VM's and space's current one (``current``, from registers,
  not from the lookup), registered;
* S1 — the space completes the match, the deepest level is chosen and the start
  computed (registered);
* S2 — ``start`` is valid.

A fill (one per cycle, at any time) is registered, compared with the entries of its
level (registered), then written the cycle after into the entry holding the same
region, else an invalid one, else the level's round-robin victim; a lookup compared
against an entry in the cycle it was overwritten does not use it. Invalidation: ALL
clears every entry, VM every entry of the VM (both in one cycle), RANGE sweeps each
level's entries one per cycle (levels in parallel) and removes those whose region has
a page in ``[first, last]``. Every kind honours ``space``.
"""

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .arbiter import pick
from .context import ADDR_BITS
from .decode import PA_WIDTH
from .tlb import LEVEL_BITS, VPN_BITS, InvalKind, in_range, space_match, sweep_layout

__all__ = ["PageWalkCache", "PWC_DATA", "pwc_key_layout", "pwc_lookup_layout",
           "pwc_fill_layout", "pwc_start_layout"]

#: What an entry gives a walk: the next table's frame and the permissions so far.
PWC_DATA = data.StructLayout({"frame": PA_WIDTH - 12, "acc": 4})


def pwc_key_layout(vm_bits, gen_bits):
    return data.StructLayout({"vm": vm_bits, "gen": gen_bits, "private": 1,
                              "vpn": VPN_BITS})


def pwc_lookup_layout(vm_bits):
    """A lookup at S0: its generation is the VM's current one, its space comes at S1."""
    return data.StructLayout({"vm": vm_bits, "vpn": VPN_BITS})


def pwc_fill_layout(vm_bits, gen_bits):
    """A table entry of ``level`` read by a walk of ``key``."""
    return data.StructLayout({"key": pwc_key_layout(vm_bits, gen_bits), "level": 3,
                              "data": PWC_DATA})


#: A lookup's answer: with ``hit``, a walk starts at ``level`` by reading the entry at
#: ``addr`` (without its low three bits) with permissions ``acc`` accumulated above it.
pwc_start_layout = data.StructLayout({"hit": 1, "level": 3, "addr": ADDR_BITS, "acc": 4})


class PageWalkCache(wiring.Component):
    """Per-level fully associative caches of table entries, levels 2 to ``max_level``.

    Parameters
    ----------
    entries : int
        Entries per level (1 to 64).
    vm_bits, gen_bits : int
    max_level : int
        The highest root level of any format (5).

    Members
    -------
    key : In(pwc_lookup_layout(vm_bits))
        The lookup at S0, taken when ``take``.
    current : In(data.ArrayLayout(gen_bits, 2 << vm_bits))
        The current generation of each VM and space (``2 * vm + private``): an entry
        of another generation never hits.
    private : In(1)
        S1: the lookup's space, which the MMU has only then.
    adv : In(1)
        The pipeline moves (S0 -> S1 -> S2).
    start : Out(pwc_start_layout)
        S2: the walk start of the key taken two advancing cycles earlier.
    fill : In(stream.Signature(pwc_fill_layout(...))); always ready, dropped while
        invalidating.
    inval : In(stream.Signature(sweep_layout(vm_bits)))
    inval_done : Out(1)
    """

    def __init__(self, *, entries=4, vm_bits=2, gen_bits=4, max_level=5):
        if not isinstance(entries, int) or not 1 <= entries <= 64:
            raise ValueError(f"entries must be an integer in [1, 64], got {entries!r}")
        for name, value in (("vm_bits", vm_bits), ("gen_bits", gen_bits)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(max_level, int) or not 2 <= max_level <= 5:
            raise ValueError(f"max_level must be an integer in [2, 5], got {max_level!r}")
        self.entries, self.max_level = entries, max_level
        self.vm_bits, self.gen_bits = vm_bits, gen_bits
        self.levels = range(2, max_level + 1)
        super().__init__({
            "key": In(pwc_lookup_layout(vm_bits)), "take": In(1),
            "current": In(data.ArrayLayout(gen_bits, 2 << vm_bits)),
            "private": In(1), "adv": In(1),
            "start": Out(pwc_start_layout),
            "fill": In(stream.Signature(pwc_fill_layout(vm_bits, gen_bits))),
            "inval": In(stream.Signature(sweep_layout(vm_bits))),
            "inval_done": Out(1),
        })

    def _entry_layout(self, level):
        return data.StructLayout({"vm": self.vm_bits, "gen": self.gen_bits, "private": 1,
                                  "region": VPN_BITS - LEVEL_BITS * (level - 1),
                                  "data": PWC_DATA})

    def elaborate(self, platform):
        m = Module()
        N = self.entries
        ent = {l: [Signal(self._entry_layout(l), name=f"l{l}_e{i}", reset_less=True)
                    for i in range(N)]
               for l in self.levels}
        valid = {l: Signal(N, name=f"l{l}_valid") for l in self.levels}
        rr = {l: Signal(range(max(2, N)), name=f"l{l}_next") for l in self.levels}
        written = {l: Signal(N, name=f"l{l}_written") for l in self.levels}

        def region(vpn, level):
            return vpn[LEVEL_BITS * (level - 1):]

        # -- lookup ------------------------------------------------------------------
        k0 = self.key
        pm = {l: Signal(N, name=f"l{l}_pm", reset_less=True) for l in self.levels}
        s1_vpn, s1_valid = Signal(VPN_BITS, reset_less=True), Signal()
        with m.If(self.adv):
            m.d.sync += [s1_vpn.eq(k0.vpn), s1_valid.eq(self.take)]
            for l in self.levels:
                # An entry overwritten in this cycle no longer holds what was compared.
                m.d.sync += pm[l].eq(Cat(
                    valid[l][i] & ~written[l][i] & (e.vm == k0.vm)
                    & (e.gen == self.current[Cat(e.private, e.vm)])
                    & (e.region == region(k0.vpn, l)) for i, e in enumerate(ent[l])))
        with m.Else():
            for l in self.levels:
                # A lookup held in S1 forgets an entry overwritten meanwhile.
                m.d.sync += pm[l].eq(pm[l] & ~written[l])
        hits = {l: Signal(N, name=f"l{l}_hit") for l in self.levels}
        for l in self.levels:
            m.d.comb += hits[l].eq(pm[l] & valid[l] & Cat(
                e.private == self.private for e in ent[l]))
        best = Signal(pwc_start_layout)
        for l in reversed(self.levels):         # the deepest hit is assigned last
            row = Signal(PWC_DATA, name=f"l{l}_data")
            for i, e in enumerate(ent[l]):
                with m.If(hits[l][i]):
                    m.d.comb += row.eq(e.data)
            index = s1_vpn[LEVEL_BITS * (l - 2):][:LEVEL_BITS]
            with m.If(hits[l].any()):
                m.d.comb += [best.hit.eq(s1_valid), best.level.eq(l - 1),
                             best.addr.eq(Cat(index, row.frame)), best.acc.eq(row.acc)]
        with m.If(self.adv):
            m.d.sync += self.start.eq(best)

        # -- fill: register, compare with the level's entries, choose, write -------------
        busy = Signal()
        f1 = Signal(pwc_fill_layout(self.vm_bits, self.gen_bits), reset_less=True)
        f2, f1_valid, f2_valid = Signal.like(f1), Signal(), Signal()
        # What f1's compare leaves for f2: the entries of its level that held its key,
        # and whether the fill ahead of it (writing as f1 compared) had the same key.
        f2_same = Signal(N, reset_less=True)
        f2_ahead = Signal(reset_less=True)
        last_slot = Signal(range(max(2, N)), reset_less=True)   # where that fill wrote
        inval = self.inval.payload
        take_inval = self.inval.valid & self.inval.ready
        m.d.comb += self.fill.ready.eq(1)
        # A fill racing an invalidation is dropped, whatever stage it is in.
        m.d.sync += [f1.eq(self.fill.payload),
                     f1_valid.eq(self.fill.valid & ~busy & ~take_inval)]
        for l in self.levels:
            with m.If(f1.level == l):
                m.d.sync += f2_same.eq(Cat(
                    valid[l][i] & (e.vm == f1.key.vm) & (e.gen == f1.key.gen)
                    & (e.private == f1.key.private) & (e.region == region(f1.key.vpn, l))
                    for i, e in enumerate(ent[l])))
        # The regions of f1 and f2, compared a level's slice of page-number bits at a
        # time: a level's region is its slice and every slice above, so each bit is
        # compared once.
        def level_slice(vpn, l):
            return vpn[LEVEL_BITS * (l - 1):LEVEL_BITS * l if l < self.max_level else VPN_BITS]
        same_slice = {l: level_slice(f1.key.vpn, l) == level_slice(f2.key.vpn, l)
                      for l in self.levels}
        same_region = Cat((f1.level == l) & Cat(same_slice[k] for k in self.levels
                                                if k >= l).all()
                          for l in self.levels).any()
        m.d.sync += [
            f2.eq(f1), f2_valid.eq(f1_valid & ~busy & ~take_inval),
            f2_ahead.eq(f2_valid & (f2.level == f1.level) & (f2.key.vm == f1.key.vm)
                        & (f2.key.gen == f1.key.gen) & (f2.key.private == f1.key.private)
                        & same_region),
        ]
        # f2 writes where the fill ahead wrote, else the entry holding its key, else an
        # invalid one (the fill ahead's write is visible by now), else the victim.
        slot = Signal(range(max(2, N)))
        for l in self.levels:
            with m.If(f2.level == l):
                m.d.comb += slot.eq(rr[l])
                for i in reversed(range(N)):
                    with m.If(~valid[l][i]):
                        m.d.comb += slot.eq(i)
        for i in reversed(range(N)):
            with m.If(f2_same[i]):
                m.d.comb += slot.eq(i)
        with m.If(f2_ahead):
            m.d.comb += slot.eq(last_slot)
        m.d.sync += last_slot.eq(slot)
        for l in self.levels:
            with m.If(f2_valid & (f2.level == l) & ~f2_same.any() & ~f2_ahead
                      & valid[l].all()):
                m.d.sync += rr[l].eq(Mux(rr[l] == N - 1, 0, rr[l] + 1))

        # -- invalidation -------------------------------------------------------------
        sw = Signal(sweep_layout(self.vm_bits), reset_less=True)
        step = Signal(range(N + 1))
        kill = {l: Signal(name=f"l{l}_kill") for l in self.levels}
        kill_i = Signal(range(max(2, N)))
        sweeping = Signal()
        m.d.comb += [self.inval.ready.eq(~busy), busy.eq(sweeping)]
        m.d.sync += self.inval_done.eq(0)
        immediate = (inval.kind != InvalKind.RANGE)
        with m.If(take_inval):
            m.d.sync += sw.eq(inval)
            with m.If(immediate):
                m.d.sync += self.inval_done.eq(1)
            with m.Else():
                m.d.sync += [sweeping.eq(1), step.eq(0)]
        with m.If(sweeping):
            m.d.sync += [step.eq(step + 1), kill_i.eq(step)]
            with m.If(step == N):
                m.d.sync += [sweeping.eq(0), self.inval_done.eq(1)]
        for l in self.levels:
            e = pick(ent[l], step[:max(1, (N - 1).bit_length())])
            # The region's pages run from its first to its last page number.
            shift = LEVEL_BITS * (l - 1)
            base = e.region
            m.d.sync += kill[l].eq(sweeping & (step < N) & space_match(sw.space, e.private)
                                   & (e.vm == sw.vm)
                                   & in_range(sw.range, Cat(Const(0, shift), base),
                                              Cat(Const(-1, shift), base)))

        for l in self.levels:
            for i in range(N):
                e = ent[l][i]
                write = f2_valid & ~take_inval & (f2.level == l) & (slot == i)
                m.d.comb += written[l][i].eq(write)
                with m.If(write):
                    m.d.sync += [e.vm.eq(f2.key.vm), e.gen.eq(f2.key.gen),
                                 e.private.eq(f2.key.private),
                                 e.region.eq(region(f2.key.vpn, l)), e.data.eq(f2.data)]
                gone = take_inval & immediate & space_match(inval.space, e.private) & (
                    (inval.kind == InvalKind.ALL) | (e.vm == inval.vm))
                with m.If(gone | (kill[l] & (kill_i == i))):
                    m.d.sync += valid[l][i].eq(0)
                with m.Elif(write):
                    m.d.sync += valid[l][i].eq(1)
        return m
