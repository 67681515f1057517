"""Page-walk cache: non-leaf entries per level, so a walk can skip its upper levels.

An entry of level ``l`` (2 up to the root level) holds, for one VM and root, what the
walk of any GPA in the ``2**(9*(l-1))``-page region ``vpn`` finds at level ``l``: the
payload is opaque here (:class:`hw.mmu.MMU` stores the non-leaf entry word itself, with
the A bit the successful walk set). A lookup returns every level that hits and the
deepest one, so a four-level walk whose levels 4 to 2 are cached reads only its leaf.

Each level is a small fully-associative array with round-robin replacement; all
entries are compared in parallel, so an invalidation takes two cycles and uses the same
overlap rule as :class:`hw.tlb.TLB`: an entry is removed when its region overlaps the
range. That is exactly what a range flush needs for tables: an entry whose region
contains a zapped table covers a page of the range. Entries carry the ``private`` bit
of their walk (a TD's private or shared space) and invalidations honour ``space``
exactly as the TLB does.
"""

from amaranth import Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .tlb import (LEVEL_BITS, VPN_BITS, FillSignature, InvalKind, InvalSpace, fill_layout,
                  inval_layout, key_layout, space_match)

__all__ = ["PageWalkCache", "pwc_result_layout"]


def pwc_result_layout(data_width, max_level=5):
    """``hits`` bit ``l - 2`` and ``data[l - 2]``: the level-``l`` entry (levels start
    at 2, so that no bit is constant); ``hit``: any level; ``level``: the deepest."""
    return data.StructLayout({"hit": 1, "level": 3, "hits": max_level - 1,
                              "data": data.ArrayLayout(data_width, max_level - 1)})


class LookupSignature(wiring.Signature):
    """Lookup port: the key is registered when ``valid`` and answered the cycle after
    (and on every later cycle until the next lookup).

    Members
    -------
    valid : Out(1)
    payload : Out(key_layout(vm_bits, root_bits))
    """

    def __init__(self, layout):
        super().__init__({"valid": Out(1), "payload": Out(layout)})


class PageWalkCache(wiring.Component):
    """Per-level caches of non-leaf entries, levels 2 to ``max_level``.

    Parameters
    ----------
    entries : int
        Entries per level (fully associative, round-robin replacement).
    vm_bits, root_bits, data_width : int
        As for :class:`hw.tlb.TLB`.
    max_level : int
        The highest root level of any format (5).

    Members
    -------
    lookup : In(LookupSignature(key_layout(vm_bits, root_bits)))
    result : Out(pwc_result_layout(data_width))
        For the last key looked up, against the current entries.
    fill : In(FillSignature(fill_layout(vm_bits, root_bits, data_width)))
        ``level`` is the level of the non-leaf entry (2 to ``max_level``); other levels
        are ignored. Dropped while an invalidation runs.
    inval : In(stream.Signature(inval_layout(vm_bits)))
    inval_done : Out(1)
        One-cycle pulse two cycles after the invalidation was accepted.
    """

    def __init__(self, *, entries=4, vm_bits=2, root_bits=44, data_width=64, max_level=5):
        if not isinstance(entries, int) or not 1 <= entries <= 64:
            raise ValueError(f"entries must be an integer in [1, 64], got {entries!r}")
        for name, value in (("vm_bits", vm_bits), ("root_bits", root_bits),
                            ("data_width", data_width)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(max_level, int) or not 2 <= max_level <= 5:
            raise ValueError(f"max_level must be an integer in [2, 5], got {max_level!r}")
        self.entries, self.max_level = entries, max_level
        self.vm_bits, self.root_bits, self.data_width = vm_bits, root_bits, data_width
        self.entry_layout = data.StructLayout({
            "vm": vm_bits, "root": root_bits, "vpn": VPN_BITS, "data": data_width,
            "private": 1})
        super().__init__({
            "lookup": In(LookupSignature(key_layout(vm_bits, root_bits))),
            "result": Out(pwc_result_layout(data_width, max_level)),
            "fill": In(FillSignature(fill_layout(vm_bits, root_bits, data_width))),
            "inval": In(stream.Signature(inval_layout(vm_bits))),
            "inval_done": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        N = self.entries
        levels = range(2, self.max_level + 1)
        layout = self.entry_layout
        ent = {l: [Signal(layout, name=f"l{l}_e{i}") for i in range(N)] for l in levels}
        valid = {l: Signal(N, name=f"l{l}_valid") for l in levels}
        rr = {l: Signal(range(N), name=f"l{l}_next") for l in levels}

        def align(vpn, level):
            return vpn & ~Const((1 << (LEVEL_BITS * (level - 1))) - 1, VPN_BITS)

        # -- lookup --------------------------------------------------------------------
        key = Signal(key_layout(self.vm_bits, self.root_bits))
        with m.If(self.lookup.valid):
            m.d.sync += key.eq(self.lookup.payload)
        # Highest level first: the last assignment (the deepest hit) wins.
        for l in reversed(levels):
            for i in reversed(range(N)):
                e = ent[l][i]
                with m.If(valid[l][i] & (e.vm == key.vm) & (e.root == key.root)
                          & (e.private == key.private) & (e.vpn == align(key.vpn, l))):
                    m.d.comb += [self.result.hit.eq(1), self.result.level.eq(l),
                                 self.result.hits[l - 2].eq(1),
                                 self.result.data[l - 2].eq(e.data)]

        # -- invalidation: register the request, clear every overlapping entry --------
        busy = Signal()
        kind = Signal(InvalKind)
        space = Signal(InvalSpace)
        inv_vm = Signal(self.vm_bits)
        start = Signal(VPN_BITS + 1)
        end = Signal(VPN_BITS + 2)
        m.d.comb += self.inval.ready.eq(~busy)
        m.d.sync += [busy.eq(0), self.inval_done.eq(busy)]
        with m.If(self.inval.valid & ~busy):
            p = self.inval.payload
            m.d.sync += [busy.eq(1), kind.eq(p.kind), inv_vm.eq(p.vm), start.eq(p.start),
                         end.eq(p.start + p.count), space.eq(p.space)]

        # -- fill (the way holding the same entry, else round robin) ---------------------
        f = self.fill.payload
        for l in levels:
            f_vpn = align(f.vpn, l)
            same = Signal(N, name=f"l{l}_same")
            for i in range(N):
                e = ent[l][i]
                m.d.comb += same[i].eq(valid[l][i] & (e.vm == f.vm) & (e.root == f.root)
                                       & (e.private == f.private) & (e.vpn == f_vpn))
            way = Signal(range(N), name=f"l{l}_way")
            m.d.comb += way.eq(rr[l])
            for i in reversed(range(N)):
                with m.If(same[i]):
                    m.d.comb += way.eq(i)
            with m.If(busy):
                for i in range(N):
                    e = ent[l][i]
                    overlap = (e.vpn < end) & (start < e.vpn + (1 << (LEVEL_BITS * (l - 1))))
                    with m.If(space_match(space, e.private) & (
                            (kind == InvalKind.ALL)
                            | ((e.vm == inv_vm) & ((kind == InvalKind.VM) | overlap)))):
                        m.d.sync += valid[l][i].eq(0)
            with m.Elif(self.fill.valid & (f.level == l)):
                for i in range(N):
                    with m.If(way == i):
                        e = ent[l][i]
                        m.d.sync += [e.vm.eq(f.vm), e.root.eq(f.root), e.vpn.eq(f_vpn),
                                     e.data.eq(f.data), e.private.eq(f.private),
                                     valid[l][i].eq(1)]
                with m.If(~same.any()):
                    m.d.sync += rr[l].eq(Mux(rr[l] == N - 1, 0, rr[l] + 1))
        return m
