"""The TLB: 4 KiB translations in a set-associative RAM, huge pages in a small fully
associative array, a registered three-stage pipeline.

Entries are tagged by VM, a small generation id (:mod:`hw.mmu` bumps a VM's id instead
of sweeping the RAM on a VM invalidation or a context write), a ``private`` bit (a
TDX-style trust domain's private space) and the GPA's page number, raw: a shared GPA
keeps its shared bit, so the set index never depends on the context.

Pipeline (one op per cycle, an op being a lookup, a fill or a sweep step):

* S0 — the set of the op's page is read from the tag RAM (LUT RAM on ECP5).
* S1 — the set's valid bits are read from flip-flops (as they were when S0 read the
  tags: see below); the ways' tags and every huge entry are compared with the key, its
  generation and space given only now (``key_late``); match bits are registered, and
  the data RAM is read for the set. The way a 4 KiB fill takes if no way holds its page (an invalid
  one, else the tree-PLRU victim) is registered too.
* S2 — a lookup's answer: the one matching way (a 4 KiB entry wins over a huge page),
  its data, whether it allows the access. A fill writes here: the way (or huge entry)
  already holding the same page, else the way chosen in S1 (round robin for huge
  entries); a huge fill also drops every huge entry it overlaps, so no address ever
  matches two.

A 4 KiB fill writes the tag RAM in S2, after a later op may have read it in S0. So
the producer of ops keeps to :func:`conflicts` (the fills ahead are ``fills``): no
lookup of a set while a 4 KiB fill of that set is in S2 (it would read the old tags
with the new valid bits), no lookup while a huge fill is in S1 (huge entries are
flip-flops whose data S2 reads: the lookup would match the entry the fill then
overwrites and answer with the new entry's data), no 4 KiB fill of a set while one of
the same set is in S1 or S2 (it would choose its way from stale bits), no huge fill
while another is in S1 or S2. Lookups behind a 4 KiB fill in S1, and ops of other
sets, go back to back: a lookup read in S0 before the fill's write leaves S1 as it
writes, so it sees the set as it was.

Invalidation (``inval``): ALL clears every valid bit the cycle after it is taken, from
registers; VM and RANGE sweep the sets one per cycle through the same pipeline (every
way compared at once) and the huge entries one per cycle beside them. A range removes
exactly the entries of the VM with a page in ``[first, last]``: a 1 GiB entry with one
4 KiB page in the range goes, its neighbour stays. Every kind honours ``space``
(:class:`InvalSpace`).
"""

from amaranth import Array, Cat, Const, Module, Mux, Signal
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .arbiter import lowest_set, pick
from .context import GPA_BITS

__all__ = ["TLB", "InvalKind", "InvalSpace", "VPN_BITS", "LEVEL_BITS", "key_layout",
           "range_layout", "range_value", "range_addends", "in_range",
           "late_layout", "op_layout", "result_layout", "sweep_layout", "fills_layout",
           "conflicts", "plru_touch", "plru_victim", "space_match", "level_mask", "page_mask"]

#: GPA page-number width (the widest GPA: sv57x4's 59 bits).
VPN_BITS = GPA_BITS - 12
#: GPA bits per level below the root (every format: 9).
LEVEL_BITS = 9


class InvalKind(enum.Enum, shape=2):
    """What an invalidation removes: everything, one VM, or one VM's GPA range."""
    ALL = 0
    VM = 1
    RANGE = 2


class InvalSpace(enum.Enum, shape=2):
    """Which entries of the kind an invalidation removes: both spaces (the default,
    and all an ordinary VM has), only shared (``private`` = 0) or only private ones."""
    BOTH = 0
    SHARED = 1
    PRIVATE = 2


def key_layout(vm_bits, gen_bits):
    """What an entry is found by: VM, generation, space, 4 KiB page number, and for a
    lookup the ``access`` (:data:`hw.decode.ACCESS_IDS`) it must allow."""
    return data.StructLayout({"vm": vm_bits, "gen": gen_bits, "private": 1,
                              "vpn": VPN_BITS, "access": 2})


def late_layout(gen_bits):
    """The part of an op's key given in its S1 (``TLB.key_late``): generation, space."""
    return data.StructLayout({"gen": gen_bits, "private": 1})


def op_layout(vm_bits, gen_bits, data_width):
    """An op: a lookup of ``key``, or (``fill``) a new entry of ``level`` with ``key``
    (``vpn`` aligned to the level), the accesses it may serve (``allow``: r, w, x) and
    its ``data``. The key's generation and space follow a cycle later."""
    key = data.StructLayout({"vm": vm_bits, "vpn": VPN_BITS, "access": 2})
    return data.StructLayout({"fill": 1, "key": key, "level": 3, "allow": 3,
                              "data": data_width})


def result_layout(data_width):
    """A lookup's answer: ``hit`` (an entry matched and allows the access), its
    ``level`` and ``data``."""
    return data.StructLayout({"hit": 1, "level": 3, "data": data_width})


def sweep_layout(vm_bits):
    """An invalidation: ``kind``, ``vm`` (VM and RANGE), ``space``, and for RANGE the
    page numbers it covers (``range``, :func:`range_layout`)."""
    return data.StructLayout({"kind": InvalKind, "vm": vm_bits, "space": InvalSpace,
                              "range": range_layout()})


def range_layout():
    """A range of page numbers ``[first, last]`` as the caches compare with it:
    ``to_first = 2**VPN_BITS - first`` and ``to_end = 2**VPN_BITS - (last + 1)``, each at
    most ``2**VPN_BITS`` (:func:`range_addends`, :func:`in_range`)."""
    return data.StructLayout({"to_first": VPN_BITS + 1, "to_end": VPN_BITS + 1})


def range_value(first, last):
    """:func:`range_layout`'s value for ``[first, last]``, for a simulator to drive."""
    return {"to_first": (1 << VPN_BITS) - first, "to_end": (1 << VPN_BITS) - last - 1}


def range_addends(first, end):
    """``first`` and ``end`` (the range is ``[first, end)``; ``VPN_BITS + 1`` bits each,
    the top bit standing for ``2**VPN_BITS``, whatever the bits below it) as
    :func:`range_layout`'s addends, computed once per invalidation: comparing each entry
    with ``first`` and ``end`` would put an inverter on every bit in front of each carry
    chain (ECP5)."""
    top = Const(1 << VPN_BITS, VPN_BITS + 1)
    return Cat(Mux(first[VPN_BITS], 0, top - first[:VPN_BITS])[:VPN_BITS + 1],
               Mux(end[VPN_BITS], 0, top - end[:VPN_BITS])[:VPN_BITS + 1])


def in_range(bounds, low, high):
    """An entry whose pages run from ``low`` to ``high`` has one in the range ``bounds``
    (:func:`range_layout`): ``first <= high`` and ``low <= last``, each the carry of
    one addition into bit ``VPN_BITS``."""
    return (high + bounds.to_first)[VPN_BITS] & ~(low + bounds.to_end)[VPN_BITS]


def fills_layout(set_bits):
    """The fills in the TLB's S1 and S2 (``TLB.fills``): 4 KiB (``small``) and its
    set, or ``huge``."""
    return data.StructLayout({"s1_small": 1, "s1_huge": 1, "s1_set": set_bits,
                              "s2_small": 1, "s2_huge": 1, "s2_set": set_bits})


def conflicts(fills, set_index, fill, huge):
    """1 when an op of ``set_index`` (a lookup, or a ``fill``, ``huge`` or 4 KiB) may not
    be offered with the fills ``fills`` ahead of it (the module docstring says why)."""
    small_s1 = fills.s1_small & (fills.s1_set == set_index)
    small_s2 = fills.s2_small & (fills.s2_set == set_index)
    return Mux(fill, Mux(huge, fills.s1_huge | fills.s2_huge, small_s1 | small_s2),
               small_s2 | fills.s1_huge)


def space_match(space, private):
    """1 when an entry with the ``private`` bit is in the invalidation's ``space``."""
    return ((space == InvalSpace.BOTH) | ((space == InvalSpace.PRIVATE) & private)
            | ((space == InvalSpace.SHARED) & ~private))


def level_mask(level):
    """Page-number bits inside a page of ``level`` (a constant)."""
    return (1 << (LEVEL_BITS * (level - 1))) - 1


def page_mask(level, max_level=4):
    """Page-number bits inside a page of ``level`` (a value), VPN_BITS wide."""
    out = Const(0, VPN_BITS)
    for l in range(2, max_level + 1):
        out = Mux(level == l, Const(level_mask(l), VPN_BITS), out)
    return out


def plru_touch(ways, way):
    """Tree-PLRU ``(mask, value)`` making ``way`` most recently used.

    Node ``n`` (heap order, root 0) has children ``2n+1`` (left, bit 0) and ``2n+2``;
    a node's bit names the half the next victim comes from, so touching a way points
    every node on its path at the other half.
    """
    mask = value = 0
    node, lo, span = 0, 0, ways
    while span > 1:
        span //= 2
        right = way >= lo + span
        mask |= 1 << node
        value |= (0 if right else 1) << node
        if right:
            lo += span
        node = 2 * node + 1 + int(right)
    return mask, value


def plru_victim(ways, bits):
    """The way a tree-PLRU with state ``bits`` evicts next (Python reference)."""
    node, lo, span = 0, 0, ways
    while span > 1:
        span //= 2
        right = (bits >> node) & 1
        if right:
            lo += span
        node = 2 * node + 1 + right
    return lo


#: The most 4 KiB entries (sets x ways): their valid bits are flip-flops.
MAX_ENTRIES = 4096


def _check_pow2(name, value, maximum):
    if not isinstance(value, int) or value < 1 or value > maximum or value & (value - 1):
        raise ValueError(f"{name} must be a power of two in [1, {maximum}], got {value!r}")



class TLB(wiring.Component):
    """Set-associative TLB for 4 KiB pages plus ``huge`` fully associative entries for
    levels 2 to ``max_level``.

    Parameters
    ----------
    sets, ways : int
        4 KiB geometry (powers of two); tags and data live in ``amaranth.lib.memory``.
    huge : int
        Huge-page entries (flip-flops), 1 to 64.
    vm_bits, gen_bits, data_width : int
        Widths of the VM index, the generation id and the opaque per-entry data.
    max_level : int
        Largest page level stored: 4 (512 GiB, RISC-V G-stage) by default.

    Members
    -------
    op : In(stream.Signature(op_layout(...)))
        One op per cycle while ``op.ready``: not while an invalidation waits or runs,
        not while ``result`` waits. ``op.ready`` does not look at the op: one that
        :func:`conflicts` with ``fills`` must not be offered.
    fills : Out(fills_layout(set_bits))
        The fills in S1 and S2, from registers.
    key_late : In(late_layout(gen_bits))
        The generation and space of the op in S1: the MMU reads a VM's generation only
        then, from registers.
    result : Out(stream.Signature(result_layout(data_width)))
        Every op's answer two cycles after it was taken (a fill's: no hit); the
        pipeline holds while it is not taken.
    inval : In(stream.Signature(sweep_layout(vm_bits)))
        Taken when no op is in the pipeline.
    inval_done : Out(1)
        One-cycle pulse when the invalidation has finished.
    busy : Out(1)
        An invalidation is running.
    """

    def __init__(self, *, sets=16, ways=4, huge=8, vm_bits=2, gen_bits=4, data_width=64,
                 max_level=4):
        _check_pow2("sets", sets, 1 << 12)
        _check_pow2("ways", ways, 64)
        if sets * ways > MAX_ENTRIES:
            raise ValueError(f"sets x ways must be at most {MAX_ENTRIES} (a valid bit per "
                             f"entry in flip-flops), got {sets} x {ways} = {sets * ways}")
        if not isinstance(huge, int) or not 1 <= huge <= 64:
            raise ValueError(f"huge must be an integer in [1, 64], got {huge!r}")
        for name, value in (("vm_bits", vm_bits), ("gen_bits", gen_bits),
                            ("data_width", data_width)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(max_level, int) or not 2 <= max_level <= 5:
            raise ValueError(f"max_level must be an integer in [2, 5], got {max_level!r}")
        self.sets, self.ways, self.huge, self.max_level = sets, ways, huge, max_level
        self.vm_bits, self.gen_bits, self.data_width = vm_bits, gen_bits, data_width
        self.set_bits = max(1, (sets - 1).bit_length())
        self.tag_layout = data.StructLayout({
            "vm": vm_bits, "gen": gen_bits, "private": 1, "allow": 3, "vpn": VPN_BITS})
        self.huge_layout = data.StructLayout({
            "vm": vm_bits, "gen": gen_bits, "private": 1, "allow": 3, "vpn": VPN_BITS,
            "level": 3, "data": data_width})
        super().__init__({
            "op": In(stream.Signature(op_layout(vm_bits, gen_bits, data_width))),
            "key_late": In(late_layout(gen_bits)),
            "result": Out(stream.Signature(result_layout(data_width))),
            "inval": In(stream.Signature(sweep_layout(vm_bits))),
            "inval_done": Out(1),
            "busy": Out(1),
            "fills": Out(fills_layout(self.set_bits)),
        })

    def set_of(self, vpn):
        """The set a 4 KiB page number falls in (``set_bits`` wide)."""
        return vpn[:self.set_bits] if self.sets > 1 else Const(0, 1)

    def op_conflicts(self, op):
        """1 when the op ``op`` (of :func:`op_layout`) :func:`conflicts` with ``fills``."""
        return conflicts(self.fills, self.set_of(op.key.vpn), op.fill, op.level != 1)

    def elaborate(self, platform):
        m = Module()
        S, W, H = self.sets, self.ways, self.huge
        tag_w = self.tag_layout.size
        m.submodules.tags = tags = Memory(shape=W * tag_w, depth=S, init=[])
        m.submodules.datas = datas = Memory(shape=W * self.data_width, depth=S, init=[])
        tag_rd, data_rd = tags.read_port(), datas.read_port()
        tag_wr = tags.write_port(granularity=tag_w)
        data_wr = datas.write_port(granularity=self.data_width)
        valid = [Signal(S, name=f"valid_w{w}") for w in range(W)]
        plru_w = max(1, W - 1)
        plru = Array(Signal(plru_w, name=f"plru{s}", reset_less=True) for s in range(S))
        huge = [Signal(self.huge_layout, name=f"huge{i}", reset_less=True) for i in range(H)]
        huge_valid = Signal(H)
        huge_next = Signal(range(max(2, H)))       # round-robin victim

        op_shape = op_layout(self.vm_bits, self.gen_bits, self.data_width)
        s1, s2 = Signal(op_shape, reset_less=True), Signal(op_shape, reset_less=True)
        s1_valid, s2_valid = Signal(), Signal()
        s1_sweep, s2_sweep = Signal(), Signal()     # a sweep step of set ``s*_set``
        s1_set = Signal(self.set_bits, reset_less=True)
        s2_set = Signal(self.set_bits, reset_less=True)
        s2_set_bit = Signal(S, init=1, reset_less=True)   # one-hot ``s2_set``
        s2_late = Signal(late_layout(self.gen_bits), reset_less=True)
        busy = self.busy
        sweep_go = Signal()
        sweep_set = Signal(self.set_bits + 1)

        adv = ~s2_valid | s2_sweep | self.result.ready
        m.d.comb += [
            self.op.ready.eq(adv & ~busy & ~self.inval.valid),
            self.result.valid.eq(s2_valid & ~s2_sweep),
            tag_rd.en.eq(adv), data_rd.en.eq(adv),
        ]
        take = self.op.valid & self.op.ready
        # The fills in S1 and S2, registered as they enter: what a producer checks its
        # next op against is one register away.
        fills, op0 = self.fills, self.op.payload
        s1_fills, s2_fills = Signal(2), Signal(2)       # (4 KiB, huge)
        with m.If(adv):
            m.d.sync += [s1_fills.eq(Mux(take & op0.fill, Cat(op0.level == 1, op0.level != 1),
                                         0)),
                         s2_fills.eq(s1_fills)]
        m.d.comb += [Cat(fills.s1_small, fills.s1_huge).eq(s1_fills), fills.s1_set.eq(s1_set),
                     Cat(fills.s2_small, fills.s2_huge).eq(s2_fills), fills.s2_set.eq(s2_set)]

        # -- S0 --------------------------------------------------------------------------
        s0_set = Mux(sweep_go, sweep_set[:self.set_bits], self.set_of(self.op.payload.key.vpn))
        m.d.comb += tag_rd.addr.eq(s0_set)
        with m.If(adv):
            m.d.sync += [s1_valid.eq(take | sweep_go), s1_sweep.eq(sweep_go),
                         s1.eq(self.op.payload), s1_set.eq(s0_set)]

        # -- S1: compare -------------------------------------------------------------------
        key, late = s1.key, self.key_late
        # The set's valid bits, read by a registered index: no 4 KiB fill of the set is
        # in S2 while a lookup of it was in S0 (:func:`conflicts`), and sweep steps
        # differ in set.
        s1_vbits = Signal(W)
        m.d.comb += s1_vbits.eq(Cat(v.bit_select(s1_set, 1) for v in valid))
        way_tags = [data.View(self.tag_layout, tag_rd.data[w * tag_w:(w + 1) * tag_w])
                    for w in range(W)]
        vpn_hi = key.vpn[self.set_bits:] if S > 1 else key.vpn
        match = Cat(s1_vbits[w] & (t.vm == key.vm) & (t.gen == late.gen)
                    & (t.private == late.private)
                    & ((t.vpn[self.set_bits:] if S > 1 else t.vpn) == vpn_hi)
                    for w, t in enumerate(way_tags))
        allowed = Cat(t.allow.bit_select(key.access, 1) for t in way_tags)
        huge_match = Cat(
            huge_valid[i] & (e.vm == key.vm) & (e.gen == late.gen)
            & (e.private == late.private)
            & ((e.vpn ^ key.vpn) & ~self._huge_mask(e.level) == 0)
            for i, e in enumerate(huge))
        huge_allowed = Cat(e.allow.bit_select(key.access, 1) for e in huge)
        # A huge fill replaces the entry of its own level and page, and drops every
        # other huge entry overlapping its region (compared at the larger level).
        huge_overlap = Cat(
            huge_valid[i] & (e.vm == key.vm) & (e.gen == late.gen)
            & (e.private == late.private)
            & ((e.vpn ^ key.vpn) & ~Mux(e.level > s1.level, self._huge_mask(e.level),
                                        self._huge_mask(s1.level)) == 0)
            for i, e in enumerate(huge))
        huge_same = Cat(huge_match[i] & (e.level == s1.level) for i, e in enumerate(huge))

        # sweep compares: which ways of the set go
        sw = Signal(sweep_layout(self.vm_bits), reset_less=True)
        kill_ways = Cat(s1_vbits[w] & self._covers(sw, t, Const(1, 3))
                        for w, t in enumerate(way_tags))

        r_match, r_hit, r_kill = (Signal(W, reset_less=True) for _ in range(3))
        r_huge_hit, r_huge_same, r_huge_overlap = (Signal(H, reset_less=True)
                                                   for _ in range(3))
        # The way a 4 KiB fill takes when no way holds its page (an invalid one, else the
        # PLRU victim) is chosen here: no op ahead of a fill changes the set's valid
        # bits, and its PLRU bits are taken as the op in S2 leaves them.
        touch = Signal()
        touch_way = Signal(range(max(2, W)))
        masks = Array(Const(plru_touch(W, w)[0], plru_w) for w in range(W))
        values = Array(Const(plru_touch(W, w)[1], plru_w) for w in range(W))
        def touched(bits):
            return (bits & ~masks[touch_way]) | values[touch_way]
        plru1 = Signal(plru_w, name="plru1")
        m.d.comb += plru1.eq(Mux(touch & (s2_set == s1_set), touched(plru[s1_set]),
                                 plru[s1_set]))
        free1 = ~s1_vbits
        r_spare = Signal(range(max(2, W)), name="r_spare", reset_less=True)
        m.d.comb += data_rd.addr.eq(s1_set)
        with m.If(adv):
            m.d.sync += [
                s2_valid.eq(s1_valid), s2_sweep.eq(s1_sweep), s2.eq(s1), s2_set.eq(s1_set),
                s2_set_bit.eq(1 << s1_set),
                s2_late.eq(late),
                r_match.eq(match), r_hit.eq(match & allowed),
                r_huge_hit.eq(huge_match & huge_allowed), r_huge_same.eq(huge_same),
                r_huge_overlap.eq(huge_overlap),
                r_kill.eq(Mux(s1_sweep, kill_ways, 0)),
                r_spare.eq(Mux(free1.any(), lowest_set(m, free1, W, "free_way"),
                               self._victim(plru1))),
            ]

        # -- S2: answer, or write ----------------------------------------------------------
        res = self.result.payload
        hit4k = r_hit.any()
        way_data = [data_rd.data[w * self.data_width:(w + 1) * self.data_width]
                    for w in range(W)]
        data4k = Signal(self.data_width)
        m.d.comb += data4k.eq(0)
        for w in range(W):
            with m.If(r_hit[w]):
                m.d.comb += data4k.eq(way_data[w])
        data_h = Signal(self.data_width)
        level_h = Signal(3)
        for i, e in enumerate(huge):
            with m.If(r_huge_hit[i]):
                m.d.comb += [data_h.eq(e.data), level_h.eq(e.level)]
        lookup = s2_valid & ~s2_sweep & ~s2.fill
        m.d.comb += [
            res.hit.eq(lookup & (hit4k | r_huge_hit.any())),
            res.level.eq(Mux(hit4k, 1, level_h)),
            res.data.eq(Mux(hit4k, data4k, data_h)),
        ]
        hit_way = lowest_set(m, r_hit, W, "hit_way")
        # A hit or a 4 KiB fill in S2 touches its way (when the pipeline advances).
        m.d.comb += [touch.eq(s2_valid & lookup & hit4k), touch_way.eq(hit_way)]

        # fill
        fill_here = s2_valid & s2.fill & ~s2_sweep      # taken when the pipeline advances
        fill4k = fill_here & adv & (s2.level == 1)
        fill_huge = fill_here & adv & (s2.level != 1)
        same_way = lowest_set(m, r_match, W, "same_way")
        way = Signal(range(max(2, W)))
        m.d.comb += way.eq(Mux(r_match.any(), same_way, r_spare))
        tag = data.View(self.tag_layout, Signal(tag_w))
        m.d.comb += [
            tag.vm.eq(s2.key.vm), tag.gen.eq(s2_late.gen), tag.private.eq(s2_late.private),
            tag.allow.eq(s2.allow), tag.vpn.eq(s2.key.vpn),
            tag_wr.addr.eq(s2_set), tag_wr.data.eq(tag.as_value().replicate(W)),
            tag_wr.en.eq(Mux(fill4k, 1 << way, 0)),
            data_wr.addr.eq(s2_set), data_wr.data.eq(s2.data.replicate(W)),
            data_wr.en.eq(Mux(fill4k, 1 << way, 0)),
        ]
        with m.If(fill_here & (s2.level == 1)):
            m.d.comb += [touch.eq(1), touch_way.eq(way)]

        huge_free = lowest_set(m, ~huge_valid, H, "huge_free")
        slot = Signal(range(max(2, H)))
        huge_same = lowest_set(m, r_huge_same, H, "huge_same_i")
        m.d.comb += slot.eq(Mux(r_huge_same.any(), huge_same,
                                Mux((~huge_valid).any(), huge_free, huge_next)))

        # -- invalidation --------------------------------------------------------------
        # ALL of both spaces clears every valid bit at once. Anything else sweeps: the sets
        # through S0-S2, one per cycle, and the huge entries beside them (select,
        # compare, clear), one per cycle.
        inval = self.inval.payload
        take_inval = self.inval.valid & self.inval.ready
        # ALL of both spaces has nothing to sweep: the cycle after it is taken, from
        # registers, it clears every valid bit and is done.
        def everything(i):
            return (i.kind == InvalKind.ALL) & (i.space == InvalSpace.BOTH)
        clear_all = everything(sw) & busy
        sweep_huge = Signal(range(H + 1))
        he, he_valid = Signal(self.huge_layout, reset_less=True), Signal()
        he_index = Signal(range(max(2, H)), reset_less=True)
        kill_huge, kill_index = Signal(), Signal(range(max(2, H)), reset_less=True)
        m.d.comb += [self.inval.ready.eq(~busy & ~s1_valid & ~s2_valid),
                     sweep_go.eq(busy & (sweep_set < S))]
        m.d.sync += [self.inval_done.eq(0),
                     he.eq(pick(huge, sweep_huge[:max(1, (H - 1).bit_length())])),
                     he_valid.eq(busy & (sweep_huge < H)), he_index.eq(sweep_huge),
                     kill_huge.eq(he_valid & huge_valid.bit_select(he_index, 1)
                                  & self._covers(sw, he, he.level)),
                     kill_index.eq(he_index)]
        with m.If(take_inval):
            m.d.sync += [sw.eq(inval), busy.eq(1)]
            with m.If(everything(inval)):
                m.d.sync += [sweep_set.eq(S), sweep_huge.eq(H)]
            with m.Else():
                m.d.sync += [sweep_set.eq(0), sweep_huge.eq(0)]
        with m.If(sweep_go):
            m.d.sync += sweep_set.eq(sweep_set + 1)
        with m.If(busy & (sweep_huge < H)):
            m.d.sync += sweep_huge.eq(sweep_huge + 1)
        with m.If(busy & ~sweep_go & (sweep_huge == H) & ~s1_valid & ~s2_valid & ~he_valid
                  & ~kill_huge):
            m.d.sync += [busy.eq(0), self.inval_done.eq(1)]

        for w in range(W):
            kill = Mux(s2_valid & s2_sweep & r_kill[w], s2_set_bit, 0)
            write = Mux(fill4k & (way == w), s2_set_bit, 0)
            with m.If(clear_all):
                m.d.sync += valid[w].eq(0)
            with m.Else():
                m.d.sync += valid[w].eq((valid[w] & ~kill) | write)

        # -- huge entries: fills, overlaps, sweeps ------------------------------------
        new_huge = Signal(self.huge_layout)
        m.d.comb += [
            new_huge.vm.eq(s2.key.vm), new_huge.gen.eq(s2_late.gen),
            new_huge.private.eq(s2_late.private), new_huge.allow.eq(s2.allow),
            new_huge.vpn.eq(s2.key.vpn), new_huge.level.eq(s2.level),
            new_huge.data.eq(s2.data),
        ]
        for i in range(H):
            chosen = fill_huge & (slot == i)
            with m.If(chosen):
                m.d.sync += huge[i].eq(new_huge)
            dropped = (fill_huge & r_huge_overlap[i]) | (kill_huge & (kill_index == i))
            with m.If(clear_all):
                m.d.sync += huge_valid[i].eq(0)
            with m.Elif(chosen):
                m.d.sync += huge_valid[i].eq(1)
            with m.Elif(dropped):
                m.d.sync += huge_valid[i].eq(0)
        with m.If(fill_huge & ~r_huge_same.any() & ~(~huge_valid).any()):
            m.d.sync += huge_next.eq(Mux(huge_next == H - 1, 0, huge_next + 1))

        # -- PLRU: hits and fills touch their way -------------------------------------
        if W > 1:
            for i, bits in enumerate(plru):
                with m.If(touch & adv & s2_set_bit[i]):
                    m.d.sync += bits.eq(touched(bits))
        return m

    def _victim(self, bits):
        """The way a tree-PLRU with state ``bits`` evicts next."""
        W = self.ways
        if W == 1:
            return Const(0, 1)
        way_bits = (W - 1).bit_length()
        node = Const(0, way_bits + 1)
        for _ in range(way_bits):
            node = (node * 2 + 1 + bits.bit_select(node, 1))[:way_bits + 1]
        return (node - (W - 1))[:way_bits]

    def _huge_mask(self, level):
        return page_mask(level, self.max_level)

    def _covers(self, sw, entry, level):
        """The running invalidation ``sw`` removes ``entry`` (of ``level``)."""
        mask = self._huge_mask(level)
        base = entry.vpn & ~mask
        overlap = in_range(sw.range, base, base | mask)
        return space_match(sw.space, entry.private) & (
            (sw.kind == InvalKind.ALL)
            | ((entry.vm == sw.vm) & ((sw.kind == InvalKind.VM)
                                       | ((sw.kind == InvalKind.RANGE) & overlap))))
