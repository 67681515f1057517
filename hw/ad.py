"""The A/D unit: the accessed/dirty updates of every walk, one compare-exchange at a time.

A successful walk that owes A/D updates (x86 with A/D enabled: A in every entry used
and D in the leaf on a write, SDM Vol. 3C §29.3.5 and APM Vol. 2 §5.4.2; RISC-V Svadu:
the leaf only) hands them here. The unit makes them root first, each as an AXI5
AtomicCompare of the word the walk read against the word with the bits set (the
compare value in the first W beat, at AWADDR: INCR when AWADDR is 16-byte aligned,
WRAP otherwise). If memory no longer holds the word read, the walk must start again
from the root, exactly as :func:`sw_model.walker.translate` does. The words come from
the walk record the PTE pipe writes; only this unit drives AW, W and B, so no AXI
write arbitration exists.
"""

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .arch import each_arch
from .axi import Burst
from .context import ADDR_BITS
from .decode import MAX_LEVELS
from .engine import AdStatus

__all__ = ["AdUnit"]


class AdUnit(wiring.Component):
    """A/D updates for ``engines`` walks.

    Members
    -------
    req : In(engines)
        Walk ``i`` waits for its updates: ``need[i]`` (bit ``l-1``: level ``l``),
        ``leaf[i]``, ``write[i]`` (set D in the leaf), ``arch[i]``.
    done, status, level, addr : Out
        ``done`` bit ``i`` for one cycle when walk ``i``'s updates ended (:class:`AdStatus`;
        for a bus error, the entry's ``level`` and ``addr``).
    rec_id, rec_level : Out; rec_word, rec_addr : In
        The walk record's entry to update and its contents (combinational read).
    table_set : Out(1)
        The update of a table entry (not the leaf) at ``level`` of walk ``owner`` has
        just succeeded.
    expect, owner : Out
        The unit waits for an R beat on ID ``owner``; ``beat``, ``data``, ``err`` is it.
    aw*, w*, b* : the AXI write channels (``awid`` = ``owner``).
    """

    def __init__(self, engines, id_width):
        self.engines = engines
        id_bits = max(1, (engines - 1).bit_length())
        super().__init__({
            "req": In(engines), "need": In(MAX_LEVELS).array(engines),
            "leaf": In(3).array(engines), "write": In(1).array(engines),
            "arch": In(2).array(engines),
            "done": Out(engines), "status": Out(AdStatus), "level": Out(3),
            "addr": Out(ADDR_BITS),
            "rec_id": Out(id_bits), "rec_level": Out(3), "rec_word": In(64),
            "rec_addr": In(ADDR_BITS),
            "table_set": Out(1),
            "expect": Out(1), "owner": Out(id_bits), "beat": In(1), "data": In(64),
            "err": In(1),
            "awid": Out(id_width), "awaddr": Out(64), "awvalid": Out(1), "awready": In(1),
            "awburst": Out(2), "wdata": Out(64), "wlast": Out(1), "wvalid": Out(1),
            "wready": In(1), "bresp": In(2), "bvalid": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        owner = self.owner
        # The FSM's state is reset; what it loads before it reads is not.
        need = Signal(MAX_LEVELS, reset_less=True)
        leaf, write = Signal(3, reset_less=True), Signal(reset_less=True)
        a_mask, d_mask, compare, swap = (Signal(64, reset_less=True) for _ in range(4))
        aw_done, w_beat, got_r, got_b, err = Signal(), Signal(2), Signal(), Signal(), Signal()
        same = Signal(reset_less=True)  # the word the R beat returned is the word compared
        last = Signal(reset_less=True)  # the update under way is the last one owed
        sel, sel_bit, bit = Signal(3), Signal(MAX_LEVELS), Signal(MAX_LEVELS)
        for l in range(1, MAX_LEVELS + 1):
            with m.If(need[l - 1]):
                m.d.comb += [sel.eq(l), sel_bit.eq(1 << (l - 1))]
        m.d.comb += [
            self.rec_id.eq(owner), self.rec_level.eq(sel),
            self.awid.eq(owner), self.awaddr.eq(Cat(Const(0, 3), self.addr)),
            self.awburst.eq(Mux(self.addr[0], Burst.WRAP, Burst.INCR)),
            self.wdata.eq(Mux(w_beat == 0, compare, swap)), self.wlast.eq(w_beat == 1),
        ]
        with m.FSM(name="ad"):
            with m.State("IDLE"):
                for i in reversed(range(self.engines)):
                    with m.If(self.req[i]):
                        arch = self.arch[i]
                        m.d.sync += [
                            owner.eq(i), need.eq(self.need[i]), leaf.eq(self.leaf[i]),
                            write.eq(self.write[i]),
                            a_mask.eq(each_arch(arch, lambda a: a.a_mask, 64)),
                            d_mask.eq(each_arch(arch, lambda a: a.d_mask, 64)),
                        ]
                with m.If(self.req.any()):
                    m.next = "LOAD"
            with m.State("LOAD"):
                # The record is read at the level being updated: the highest still owed.
                m.d.sync += [
                    self.level.eq(sel), bit.eq(sel_bit), self.addr.eq(self.rec_addr),
                    last.eq((need & ~sel_bit) == 0),
                    compare.eq(self.rec_word),
                    swap.eq(self.rec_word | a_mask | Mux((sel == leaf) & write, d_mask, 0)),
                    aw_done.eq(0), w_beat.eq(0), got_r.eq(0), got_b.eq(0), err.eq(0),
                ]
                m.next = "SEND"
            with m.State("SEND"):
                m.d.comb += [self.awvalid.eq(~aw_done), self.wvalid.eq(w_beat != 2),
                             self.expect.eq(~got_r)]
                with m.If(self.awvalid & self.awready):
                    m.d.sync += aw_done.eq(1)
                with m.If(self.wvalid & self.wready):
                    m.d.sync += w_beat.eq(w_beat + 1)
                with m.If(self.beat):
                    m.d.sync += [got_r.eq(1), same.eq(self.data == compare)]
                with m.If(self.bvalid):
                    m.d.sync += got_b.eq(1)
                m.d.sync += err.eq(err | (self.beat & self.err) | (self.bvalid & self.bresp[1]))
                with m.If(aw_done & (w_beat == 2) & got_r & got_b):
                    m.next = "CHECK"
            with m.State("CHECK"):
                # Whether an update remains was noted at LOAD: ``done`` is a LUT or two
                # from registers.
                m.d.sync += need.eq(need & ~bit)
                m.d.comb += self.table_set.eq(~err & same & (self.level != leaf))
                with m.If(err):
                    m.d.comb += [self.status.eq(AdStatus.BUS_ERROR),
                                 self.done.eq(1 << owner)]
                    m.next = "IDLE"
                with m.Elif(~same):
                    m.d.comb += [self.status.eq(AdStatus.RESTART), self.done.eq(1 << owner)]
                    m.next = "IDLE"
                with m.Elif(last):
                    m.d.comb += [self.status.eq(AdStatus.OK), self.done.eq(1 << owner)]
                    m.next = "IDLE"
                with m.Else():
                    m.next = "LOAD"
        return m
