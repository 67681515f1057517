"""Several walks in flight on one AXI port: the walk engines and what they share.

``engines`` :class:`hw.engine.WalkEngine` s, one :class:`hw.pte.PtePipe` decoding every
R beat, one :class:`hw.ad.AdUnit` making every A/D update, an :class:`hw.arbiter.AxiArbiter`
for the read addresses, and the walk record: per walk and level, the word read and its
address (for the A/D unit). With ``cache_tables`` the pool also offers a walk cache
the table entries it may keep: as a walk reads one whose A bit needs no update, and
as the A/D unit sets the A bit of one. Each transaction's AXI ID is its walk's index.
"""

from amaranth import Cat, Const, Module, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out, connect

from .ad import AdUnit
from .arbiter import AxiArbiter
from .axi import AXI4Signature, Atop, Burst
from .context import ADDR_BITS, WALK_PARAMS
from .engine import RESULT_LAYOUT, WalkEngine, start_layout
from .pte import RECORD_PWC, PtePipe

__all__ = ["WalkerPool", "WALK_INFO"]

#: A walk in progress, as the MMU needs it to answer and to fill its caches.
WALK_INFO = data.StructLayout({"gpa": 64, "access": 2, "params": WALK_PARAMS,
                               "top": 3})


class WalkerPool(wiring.Component):
    """``engines`` walks sharing a decoder, an A/D unit and an AXI4 manager.

    Members
    -------
    start : In(stream.Signature(start_layout(tag_bits))); start_to : In(id_bits)
        A walk to start on engine ``start_to`` (ready while it is idle); its first read
        goes out in the same cycle when the AR channel is free.
    result : Out(stream.Signature(RESULT_LAYOUT)).array(engines)
    ending : Out(engines)
        Engine ``i``'s walk ends this cycle with no A/D update owed: its ``result`` is
        valid from the next.
    walk : Out(WALK_INFO).array(engines); tag : Out(tag_bits).array(engines)
    axi : Out(AXI4Signature(addr_width=64, data_width=64, id_width=id_width))
    cached : Out(...)
        With ``cache_tables``: ``valid`` when walk ``id`` has a table ``entry`` at
        ``level`` a walk cache may keep.
    """

    def __init__(self, *, engines, tag_bits, id_width, cache_tables=False):
        self.engines, self.tag_bits, self.cache_tables = engines, tag_bits, cache_tables
        self.id_bits = max(1, (engines - 1).bit_length())
        members = {
            "start": In(stream.Signature(start_layout(tag_bits))),
            "start_to": In(self.id_bits),
            "result": Out(stream.Signature(RESULT_LAYOUT)).array(engines),
            "ending": Out(engines),
            "walk": Out(WALK_INFO).array(engines),
            "tag": Out(tag_bits).array(engines),
            "axi": Out(AXI4Signature(addr_width=64, data_width=64, id_width=id_width)),
        }
        if cache_tables:
            members["cached"] = Out(data.StructLayout({
                "valid": 1, "id": self.id_bits, "level": 3, "entry": RECORD_PWC}))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        N = self.engines
        engines = [WalkEngine(self.tag_bits) for _ in range(N)]
        for i, e in enumerate(engines):
            m.submodules[f"engine{i}"] = e
        m.submodules.pipe = pipe = PtePipe(N)
        m.submodules.ad = ad = AdUnit(N, len(self.axi.awid))
        m.submodules.arbiter = arb = AxiArbiter(N, ADDR_BITS)
        axi = self.axi

        start = self.start
        for i, e in enumerate(engines):
            m.d.comb += [e.start.valid.eq(start.valid & (self.start_to == i)),
                         e.start.payload.eq(start.payload)]
            with m.If(self.start_to == i):
                m.d.comb += start.ready.eq(e.start.ready)
            connect(m, e.result, wiring.flipped(self.result[i]))
            w = self.walk[i]
            m.d.comb += [
                w.gpa.eq(e.gpa), w.access.eq(e.access), w.params.eq(e.params),
                w.top.eq(e.top), self.tag[i].eq(e.tag), self.ending[i].eq(e.ending),
                arb.valid[i].eq(e.ar_valid), arb.addr[i].eq(e.ar_addr),
                e.ar_ready.eq(arb.ready[i] | arb.start_ready),
                pipe.views[i].eq(e.view),
                e.step_valid.eq(pipe.step_valid[i]), e.step.eq(pipe.step),
                ad.req[i].eq(e.ad_req), ad.need[i].eq(e.ad_need), ad.leaf[i].eq(e.ad_leaf),
                ad.write[i].eq(e.ad_write), ad.arch[i].eq(e.params.arch),
                e.ad_done.eq(ad.done[i]), e.ad_status.eq(ad.status),
                e.ad_level.eq(ad.level), e.ad_addr.eq(ad.addr),
            ]

        # -- the walk record, indexed by (walk, level) ---------------------------------
        def record(name, shape):
            mem = Memory(shape=shape, depth=8 * N, init=[])
            m.submodules[name] = mem
            return mem.write_port(), mem
        # The read taken, registered: the decoder notes its masks and the record its
        # address in the next cycle, off the path of the AR handshake.
        m.d.comb += [arb.start_valid.eq(start.valid & start.payload.in_range),
                     arb.start_id.eq(self.start_to), arb.start_addr.eq(start.payload.addr)]
        taken, ar_id = Signal(), Signal(self.id_bits, reset_less=True)
        ar_level, ar_addr = Signal(3, reset_less=True), Signal(ADDR_BITS, reset_less=True)
        ar_params = Signal(WALK_PARAMS, reset_less=True)
        m.d.sync += [taken.eq(axi.arvalid & axi.arready), ar_id.eq(arb.grant),
                     ar_addr.eq(arb.araddr),
                     ar_level.eq(start.payload.level), ar_params.eq(start.payload.params)]
        for i, e in enumerate(engines):
            with m.If(arb.valid.any() & (arb.grant == i)):
                m.d.sync += [ar_level.eq(e.ar_level), ar_params.eq(e.ar_params)]
        addr_w, addr_mem = record("rec_addr", ADDR_BITS)
        word_w, word_mem = record("rec_word", 64)
        addr_r, word_r = addr_mem.read_port(domain="comb"), word_mem.read_port(domain="comb")
        m.d.comb += [
            addr_w.en.eq(taken), addr_w.addr.eq(Cat(ar_level, ar_id)), addr_w.data.eq(ar_addr),
            word_w.en.eq(pipe.rec_valid), word_w.addr.eq(Cat(pipe.rec_level, pipe.rec_id)),
            word_w.data.eq(pipe.rec_word),
            addr_r.addr.eq(Cat(ad.rec_level, ad.rec_id)), ad.rec_addr.eq(addr_r.data),
            word_r.addr.eq(Cat(ad.rec_level, ad.rec_id)), ad.rec_word.eq(word_r.data),
        ]
        if self.cache_tables:
            # A table entry is recorded, and offered when its A bit needs no update, a
            # cycle after its decode, from registers: the decode ends at a flip-flop, not
            # at the write enable of the record's LUT RAM. One the A/D unit sets A in is
            # offered then, from the record (written long before: the walk went on to its
            # leaf). The A/D unit wins a cycle both want.
            pwc_w, pwc_mem = record("rec_pwc", RECORD_PWC)
            pwc_r = pwc_mem.read_port(domain="comb")
            table = Signal(name="rec_table_valid")
            offer = Signal(name="rec_table_offer")
            table_id = Signal(self.id_bits, name="rec_table_id", reset_less=True)
            table_level = Signal(3, name="rec_table_level", reset_less=True)
            table_entry = Signal(RECORD_PWC, name="rec_table_entry", reset_less=True)
            m.d.sync += [table.eq(pipe.rec_valid & pipe.rec_table),
                         offer.eq(pipe.rec_valid & pipe.rec_table & ~pipe.step.need),
                         table_id.eq(pipe.rec_id), table_level.eq(pipe.rec_level),
                         table_entry.eq(pipe.rec_pwc)]
            cached = self.cached
            m.d.comb += [
                pwc_w.en.eq(table), pwc_w.addr.eq(Cat(table_level, table_id)),
                pwc_w.data.eq(table_entry), pwc_r.addr.eq(Cat(ad.level, ad.owner)),
            ]
            with m.If(ad.table_set):
                m.d.comb += [cached.valid.eq(1), cached.id.eq(ad.owner),
                             cached.level.eq(ad.level), cached.entry.eq(pwc_r.data)]
            with m.Else():
                m.d.comb += [cached.valid.eq(offer), cached.id.eq(table_id),
                             cached.level.eq(table_level), cached.entry.eq(table_entry)]

        # -- AXI: AR from the arbiter, AW/W/B from the A/D unit, R to the pipe ----------
        m.d.comb += [
            axi.arvalid.eq(arb.arvalid), axi.araddr.eq(Cat(Const(0, 3), arb.araddr)),
            axi.arid.eq(arb.grant), arb.arready.eq(axi.arready),
            axi.arlen.eq(0), axi.arsize.eq(3), axi.arburst.eq(Burst.INCR),
            axi.arlock.eq(0), axi.arcache.eq(0b0010), axi.arprot.eq(0b001),
            axi.rready.eq(1), axi.bready.eq(1),
            pipe.r_valid.eq(axi.rvalid & (axi.rid < N)), pipe.r_id.eq(axi.rid),
            pipe.r_data.eq(axi.rdata), pipe.r_err.eq(axi.rresp[1]),
            pipe.ar_valid.eq(taken), pipe.ar_id.eq(ar_id),
            pipe.ar_level.eq(ar_level), pipe.ar_params.eq(ar_params),
            pipe.ad_expect.eq(ad.expect), pipe.ad_owner.eq(ad.owner),
            ad.beat.eq(pipe.ad_beat), ad.data.eq(pipe.ad_data), ad.err.eq(pipe.ad_err),
            axi.awid.eq(ad.awid), axi.awaddr.eq(ad.awaddr), axi.awvalid.eq(ad.awvalid),
            ad.awready.eq(axi.awready), axi.awburst.eq(ad.awburst),
            axi.awlen.eq(1), axi.awsize.eq(3), axi.awlock.eq(0), axi.awcache.eq(0b0010),
            axi.awprot.eq(0b001), axi.awatop.eq(Atop.COMPARE),
            axi.wdata.eq(ad.wdata), axi.wlast.eq(ad.wlast), axi.wvalid.eq(ad.wvalid),
            axi.wstrb.eq(0xff), ad.wready.eq(axi.wready),
            ad.bresp.eq(axi.bresp), ad.bvalid.eq(axi.bvalid),
        ]
        return m
