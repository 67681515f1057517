"""Set-associative TLB for stage-2 leaf translations of every page size.

One array holds 4 KiB, 2 MiB, 1 GiB and 512 GiB entries: the page level is part of the
entry, and an entry of level ``l`` lives in the set chosen by the GPA bits just above
its own page (``vpn >> 9*(l-1)``). A lookup probes, for every level, the set that level
would use, so a hit needs no second probe; the cost is one read port per level, which
is cheap with entries in flip-flops. Entries are tagged by VM index, root tag and a
``private`` bit, so two roots of one VM (or two VMs mapping the same GPA, or the
private and shared spaces of a TDX-style trust domain) never alias.

Invalidation walks the sets, one per cycle, and compares every way. A range
invalidation removes exactly the entries of the VM whose page overlaps
``[start, start + count)`` (in 4 KiB page numbers): a 1 GiB entry is removed when a
single 4 KiB page inside it is in the range, and an entry next to the range is kept.
The open RISC-V TLBs got this wrong in both directions (a superpage matched only on its
own base, or an sfence with an address treated as global); here the rule is one
interval-overlap comparison per entry, checked against a Python model in
tests/test_tlb_rtl.py. Every invalidation kind also names a ``space``
(:class:`InvalSpace`): a private-only invalidation never removes a shared entry and
the reverse, as KVM flushes a TD's private translations (TDH.MEM.TRACK) apart from its
shared ones (INVEPT of the shared EPTP).
"""

from amaranth import Array, Cat, Const, Module, Mux, Signal
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["TLB", "InvalKind", "InvalSpace", "VPN_BITS", "key_layout", "fill_layout",
           "inval_layout", "result_layout", "FillSignature", "plru_touch", "plru_victim",
           "space_match"]

#: GPA page-number width: 64-bit GPAs, 4 KiB granules.
VPN_BITS = 52
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


def key_layout(vm_bits, root_bits):
    """A lookup: the VM index, the root tag, the 4 KiB page number of the GPA, and
    ``private`` (a TD's private GPA; :class:`hw.mmu.MMU` clears the shared bit of a
    shared GPA's ``vpn``, so a range invalidation names GFNs without it)."""
    return data.StructLayout({"vm": vm_bits, "root": root_bits, "vpn": VPN_BITS,
                              "private": 1})


def fill_layout(vm_bits, root_bits, data_width):
    """A new entry: ``level`` 1 maps 4 KiB; ``vpn`` may carry the offset bits."""
    return data.StructLayout({"vm": vm_bits, "root": root_bits, "vpn": VPN_BITS,
                              "level": 3, "data": data_width, "private": 1})


def result_layout(data_width):
    return data.StructLayout({"hit": 1, "level": 3, "data": data_width})


def inval_layout(vm_bits):
    """``kind`` (:class:`InvalKind`); ``vm`` for VM and RANGE; ``start``/``count`` in
    4 KiB pages for RANGE (``count`` 0 removes nothing); ``space``
    (:class:`InvalSpace`, last so the other fields keep their offsets) for every kind."""
    return data.StructLayout({"kind": InvalKind, "vm": vm_bits, "start": VPN_BITS,
                              "count": VPN_BITS + 1, "space": InvalSpace})


def space_match(space, private):
    """1 when an entry with the ``private`` bit is in the invalidation's ``space``."""
    return ((space == InvalSpace.BOTH) | ((space == InvalSpace.PRIVATE) & private)
            | ((space == InvalSpace.SHARED) & ~private))


class FillSignature(wiring.Signature):
    """Fill port: when ``valid``, ``payload`` becomes an entry. There is no ``ready``:
    a TLB may always drop a fill, and it does so while invalidating.

    Members
    -------
    valid : Out(1)
    payload : Out(layout)
    """

    def __init__(self, layout):
        super().__init__({"valid": Out(1), "payload": Out(layout)})


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


def _check_pow2(name, value, maximum):
    if not isinstance(value, int) or value < 1 or value > maximum or value & (value - 1):
        raise ValueError(f"{name} must be a power of two in [1, {maximum}], got {value!r}")


class TLB(wiring.Component):
    """Set-associative, tree-PLRU TLB with leaf entries of levels 1 to ``max_level``.

    Parameters
    ----------
    sets, ways : int
        Powers of two. Entries are flip-flops; a range invalidation takes ``sets``
        cycles.
    vm_bits, root_bits : int
        Widths of the VM index and of the root tag.
    data_width : int
        Opaque per-entry payload (the MMU stores frame, permissions, memory type).
    max_level : int
        Largest page level stored: 4 (512 GiB, RISC-V G-stage) by default.

    Members
    -------
    lookup : In(stream.Signature(key_layout(vm_bits, root_bits)))
        One lookup accepted per cycle; not accepted while an invalidation is pending
        or running.
    result : Out(stream.Signature(result_layout(data_width)))
        Valid on the cycle after the lookup was accepted and held until taken; it
        reflects the entries at the time it is read (fills land immediately).
    fill : In(FillSignature(fill_layout(...)))
        A fill replaces an entry with the same VM, root, space, level and page, else an invalid
        way, else the PLRU victim. Dropped while invalidating.
    inval : In(stream.Signature(inval_layout(vm_bits)))
        Accepted once no lookup result is waiting; then the sets are scanned. An entry
        goes when its ``kind`` matches and its ``private`` bit is in ``space``.
    inval_done : Out(1)
        One-cycle pulse when the scan has finished.
    busy : Out(1)
        An invalidation is running.
    """

    def __init__(self, *, sets=16, ways=4, vm_bits=2, root_bits=44, data_width=64,
                 max_level=4):
        _check_pow2("sets", sets, 1 << 12)
        _check_pow2("ways", ways, 64)
        for name, value in (("vm_bits", vm_bits), ("root_bits", root_bits),
                            ("data_width", data_width)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(max_level, int) or not 1 <= max_level <= 5:
            raise ValueError(f"max_level must be an integer in [1, 5], got {max_level!r}")
        self.sets, self.ways, self.max_level = sets, ways, max_level
        self.vm_bits, self.root_bits, self.data_width = vm_bits, root_bits, data_width
        self.entry_layout = data.StructLayout({
            "vm": vm_bits, "root": root_bits, "vpn": VPN_BITS, "level": 3,
            "data": data_width, "private": 1})
        super().__init__({
            "lookup": In(stream.Signature(key_layout(vm_bits, root_bits))),
            "result": Out(stream.Signature(result_layout(data_width))),
            "fill": In(FillSignature(fill_layout(vm_bits, root_bits, data_width))),
            "inval": In(stream.Signature(inval_layout(vm_bits))),
            "inval_done": Out(1),
            "busy": Out(1),
        })

    def _set_of(self, vpn, level):
        shift = LEVEL_BITS * (level - 1)
        return (vpn >> shift)[:max(1, (self.sets - 1).bit_length())] if self.sets > 1 else Const(0)

    def elaborate(self, platform):
        m = Module()
        S, W, L = self.sets, self.ways, self.max_level
        set_bits = max(1, (S - 1).bit_length())
        way_bits = max(1, (W - 1).bit_length())
        layout = self.entry_layout

        entries = [Array(Signal(layout.size, name=f"e{s}_{w}") for s in range(S))
                   for w in range(W)]
        valid = [Signal(S, name=f"valid_w{w}") for w in range(W)]
        plru_w = max(1, W - 1)
        plru = Array(Signal(plru_w, name=f"plru{s}") for s in range(S))
        touch_masks = Array(Const(plru_touch(W, w)[0], plru_w) for w in range(W))
        touch_values = Array(Const(plru_touch(W, w)[1], plru_w) for w in range(W))

        def align(vpn, level):
            return vpn & ~Const((1 << (LEVEL_BITS * (level - 1))) - 1, VPN_BITS)

        # -- lookup: register the key, compare on the next cycle ------------------------
        key = Signal(key_layout(self.vm_bits, self.root_bits))
        key_valid = Signal()
        busy = Signal()
        m.d.comb += [
            self.busy.eq(busy),
            self.lookup.ready.eq(~busy & ~self.inval.valid
                                 & (~key_valid | self.result.ready)),
            self.result.valid.eq(key_valid),
        ]
        with m.If(self.lookup.valid & self.lookup.ready):
            m.d.sync += [key.eq(self.lookup.payload), key_valid.eq(1)]
        with m.Elif(self.result.ready):
            m.d.sync += key_valid.eq(0)

        hit = Signal()
        hit_level = Signal(3)
        hit_set = Signal(set_bits)
        hit_way = Signal(way_bits)
        hit_data = Signal(self.data_width)
        # Highest level first so the lowest level matching wins (a stale 4 KiB entry
        # left under a new superpage is impossible without a missed invalidation).
        for level in reversed(range(1, L + 1)):
            s = self._set_of(key.vpn, level)
            for w in reversed(range(W)):
                e = data.View(layout, entries[w][s])
                match = (valid[w].bit_select(s, 1) & (e.level == level)
                         & (e.vm == key.vm) & (e.root == key.root)
                         & (e.private == key.private) & (e.vpn == align(key.vpn, level)))
                with m.If(match):
                    m.d.comb += [hit.eq(1), hit_level.eq(level), hit_set.eq(s),
                                 hit_way.eq(w), hit_data.eq(e.data)]
        m.d.comb += [self.result.payload.hit.eq(hit), self.result.payload.level.eq(hit_level),
                     self.result.payload.data.eq(hit_data)]
        touch_hit = self.result.valid & self.result.ready & hit

        # -- fill ----------------------------------------------------------------------
        f = self.fill.payload
        do_fill = self.fill.valid & ~busy
        f_set = Signal(set_bits)
        f_vpn = Signal(VPN_BITS)
        with m.Switch(f.level):
            for level in range(1, L + 1):
                with m.Case(level):
                    m.d.comb += [f_set.eq(self._set_of(f.vpn, level)),
                                 f_vpn.eq(align(f.vpn, level))]
        same = Signal(W)
        free = Signal(W)
        for w in range(W):
            e = data.View(layout, entries[w][f_set])
            v = valid[w].bit_select(f_set, 1)
            m.d.comb += [
                same[w].eq(v & (e.level == f.level) & (e.vm == f.vm) & (e.root == f.root)
                           & (e.private == f.private) & (e.vpn == f_vpn)),
                free[w].eq(~v),
            ]
        victim = Signal(way_bits)
        if W > 1:
            bits = plru[f_set]
            node = Const(0, way_bits + 1)
            for _ in range(way_bits):
                node = (node * 2 + 1 + bits.bit_select(node, 1))[:way_bits + 1]
            m.d.comb += victim.eq(node - (W - 1))
        f_way = Signal(way_bits)
        m.d.comb += f_way.eq(victim)
        for w in reversed(range(W)):
            with m.If(free[w]):
                m.d.comb += f_way.eq(w)
        for w in reversed(range(W)):
            with m.If(same[w]):
                m.d.comb += f_way.eq(w)
        with m.If(do_fill):
            for w in range(W):
                with m.If(f_way == w):
                    m.d.sync += entries[w][f_set].eq(_pack(layout, f, f_vpn))

        # -- PLRU state: the hit, then the fill, touch their sets -----------------------
        if W > 1:
            for s in range(S):
                state = plru[s]
                new = state
                new = Mux(touch_hit & (hit_set == s),
                          (new & ~touch_masks[hit_way]) | touch_values[hit_way], new)
                new = Mux(do_fill & (f_set == s),
                          (new & ~touch_masks[f_way]) | touch_values[f_way], new)
                m.d.sync += state.eq(new)

        # -- invalidation scan -----------------------------------------------------------
        kind = Signal(InvalKind)
        space = Signal(InvalSpace)
        inv_vm = Signal(self.vm_bits)
        start = Signal(VPN_BITS + 1)
        end = Signal(VPN_BITS + 2)
        scan = Signal(set_bits)
        m.d.comb += self.inval.ready.eq(~busy & ~key_valid)
        m.d.sync += self.inval_done.eq(0)
        with m.If(self.inval.valid & self.inval.ready):
            p = self.inval.payload
            m.d.sync += [busy.eq(1), scan.eq(0), kind.eq(p.kind), inv_vm.eq(p.vm),
                         start.eq(p.start), end.eq(p.start + p.count), space.eq(p.space)]
        sizes = Array(Const(1 << (LEVEL_BITS * (level - 1)) if 1 <= level <= L else 0,
                            VPN_BITS + 1) for level in range(8))
        clear = [Signal(name=f"kill_w{w}") for w in range(W)]
        for w in range(W):
            e = data.View(layout, entries[w][scan])
            e_end = e.vpn + sizes[e.level]
            overlap = (e.vpn < end) & (start < e_end)
            same_vm = e.vm == inv_vm
            m.d.comb += clear[w].eq(space_match(space, e.private) & (
                (kind == InvalKind.ALL)
                | (same_vm & ((kind == InvalKind.VM) | ((kind == InvalKind.RANGE) & overlap)))))
        with m.If(busy):
            for w in range(W):
                with m.If(clear[w]):
                    # A fill is blocked while busy, so this is the only valid-bit write.
                    m.d.sync += valid[w].bit_select(scan, 1).eq(0)
            m.d.sync += scan.eq(scan + 1)
            with m.If(scan == S - 1):
                m.d.sync += [busy.eq(0), self.inval_done.eq(1)]
        with m.Elif(do_fill):
            for w in range(W):
                with m.If(f_way == w):
                    m.d.sync += valid[w].bit_select(f_set, 1).eq(1)
        return m



def _pack(layout, fill, vpn):
    """The raw entry for a fill payload, with the page number aligned to its level."""
    parts = [vpn if name == "vpn" else getattr(fill, name)
             for name, field in sorted(layout, key=lambda item: item[1].offset)]
    return Cat(*parts)
