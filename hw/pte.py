"""The PTE pipeline: every R beat of every walk decoded by one shared pipeline.

AXI returns at most one R beat per cycle, whichever walk it belongs to, so one decoder
serves all the walkers of an MMU. Two stages:

* R0 registers the beat and, selected by its ID, what the owning walk's decode needs:
  the level, the permissions so far, the next level's index bits, the reserved-bit
  masks noted for the walk's read (:meth:`PtePipe._masks`). Nothing here depends on
  the data.
* R1 decodes the word with the rules of :mod:`hw.arch` and hands the owning
  :class:`hw.engine.WalkEngine` a :data:`hw.engine.STEP`: descend to the next entry, or
  finish with a translation or a fault. It also records the word (for the A/D unit)
  and, for a table entry, the next table and permissions (for a walk cache).

The beat is registered before decode, so a level costs one cycle more than the memory's
latency plus the AR cycle; in exchange no path runs from the AXI inputs through the
decode. A beat answering the A/D unit's compare-exchange is passed to it instead.
"""

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .arbiter import pick
from .arch import ARCHS, FORMATS, format_table
from .decode import ACCESS_IDS, KIND_IDS, MAX_LEVELS, PA_WIDTH, page_shift
from .context import WALK_PARAMS
from .engine import ENGINE_VIEW, STEP_LAYOUT

__all__ = ["PtePipe", "RECORD_PWC"]

K = KIND_IDS
#: What a table entry gives a walk cache: the next table's frame and the permissions
#: accumulated through this entry.
RECORD_PWC = data.StructLayout({"frame": PA_WIDTH - 12, "acc": 4})
#: GPA bits a leaf's page offset can take (a level-5 leaf: 48).
OFFSET_BITS = page_shift(MAX_LEVELS)


def _level_mux(level, value_of, levels=MAX_LEVELS):
    """``value_of(l)`` for ``level`` = l in 1..``levels`` (0 otherwise)."""
    out = Const(0, 1)
    for l in range(1, levels + 1):
        out = Mux(level == l, value_of(l), out)
    return out


def _reservable():
    """Entry bits some format reserves at some level (for some option)."""
    bits = 0
    for c in FORMATS:
        for parts in c.reserved.values():
            for part in parts:
                bits |= part
    return [i for i in range(64) if bits >> i & 1]


RESERVABLE = len(_reservable())


class PtePipe(wiring.Component):
    """Shared R-beat decoder of ``engines`` walks.

    Members
    -------
    r_valid, r_id, r_data, r_err : In
        The AXI R beat (``r_err``: SLVERR or DECERR), always accepted.
    ar_valid, ar_id, ar_level, ar_params : In
        Walk ``ar_id``'s read of a level-``ar_level`` entry was granted the cycle
        before (its beat comes in this cycle at the earliest): the pipe notes that
        entry's reserved bits.
    views : In(ENGINE_VIEW).array(engines)
        Each walk's state, read at R0 by the beat's ID.
    ad_expect, ad_owner : In
        The A/D unit waits for its compare-exchange's R beat, on ID ``ad_owner``.
    ad_beat, ad_data, ad_err : Out
        That beat, one cycle after it arrived.
    step_valid : Out(engines), step : Out(STEP_LAYOUT)
        R1's decode for walk ``step_id``.
    rec_valid, rec_id, rec_level, rec_word, rec_pwc : Out
        The entry read (for the A/D unit's compare) and, when it is a table entry,
        what a walk cache may keep of it (``rec_table``).
    """

    def __init__(self, engines):
        self.engines = engines
        id_bits = max(1, (engines - 1).bit_length())
        super().__init__({
            "r_valid": In(1), "r_id": In(id_bits), "r_data": In(64), "r_err": In(1),
            "ar_valid": In(1), "ar_id": In(id_bits), "ar_level": In(3),
            "ar_params": In(WALK_PARAMS),
            "views": In(ENGINE_VIEW).array(engines),
            "ad_expect": In(1), "ad_owner": In(id_bits),
            "ad_beat": Out(1), "ad_data": Out(64), "ad_err": Out(1),
            "step_valid": Out(engines), "step_id": Out(id_bits), "step": Out(STEP_LAYOUT),
            "rec_valid": Out(1), "rec_id": Out(id_bits), "rec_level": Out(3),
            "rec_word": Out(64), "rec_table": Out(1), "rec_pwc": Out(RECORD_PWC),
        })

    def elaborate(self, platform):
        m = Module()
        # -- R0: the beat, and its walk's decode inputs --------------------------------
        ad_beat = self.ad_expect & (self.r_id == self.ad_owner)
        view = pick(list(self.views), self.r_id)
        p = view.params
        # Only ``valid`` is reset: the rest of R0 and R1's registers is read when it is set.
        valid = Signal()
        word, err = Signal(64, reset_less=True), Signal(reset_less=True)
        rid = Signal.like(self.r_id, reset_less=True)
        m.d.sync += [valid.eq(self.r_valid & ~ad_beat), word.eq(self.r_data),
                     err.eq(self.r_err), rid.eq(self.r_id),
                     self.ad_beat.eq(self.r_valid & ad_beat)]
        m.d.comb += [self.ad_data.eq(word), self.ad_err.eq(err)]

        level = Signal(3, reset_less=True)
        level1, leaf_ok = Signal(reset_less=True), Signal(reset_less=True)
        arch = Signal(len(ARCHS), reset_less=True)                  # one-hot
        exec_only, nxe, svade, ad_on = (Signal(reset_less=True) for _ in range(4))
        write, want = Signal(reset_less=True), Signal(3, reset_less=True)
        acc = Signal(4, reset_less=True)
        offset = Signal(OFFSET_BITS, reset_less=True)   # GPA bits a leaf's HPA keeps
        page_mask = Signal(OFFSET_BITS, reset_less=True)
        next_index = Signal(9, reset_less=True)
        access = view.access
        m.d.sync += [
            level.eq(view.level), level1.eq(view.level == 1),
            leaf_ok.eq(format_table(m, p.format, 1,
                                    lambda c: Const(c.leaf_levels, 8).bit_select(view.level, 1))),
            arch.eq(Cat(p.arch == a.arch_id for a in ARCHS)),
            exec_only.eq(p.exec_only), nxe.eq(p.nxe), svade.eq(p.svade), ad_on.eq(p.ad_on),
            write.eq(access == ACCESS_IDS["write"]),
            want.eq(Cat(access == ACCESS_IDS["read"], access == ACCESS_IDS["write"],
                        access == ACCESS_IDS["execute"])),
            acc.eq(view.acc), offset.eq(view.gpa[:OFFSET_BITS]),
            page_mask.eq(_level_mux(view.level, lambda l: Const((1 << page_shift(l)) - 1,
                                                                 OFFSET_BITS))),
            next_index.eq(_level_mux(view.level, lambda l: view.gpa[page_shift(l - 1):]
                                     [:9] if l > 1 else Const(0, 9))),
        ]

        # The reserved bits of the entry each walk reads next (as a table entry, and as a
        # leaf) are noted in the cycle after its read was granted, read at R0 with the
        # beat (the note itself when it is written in the beat's cycle) and registered,
        # so R1 only ANDs the word with them.
        noting, noted = self._masks(m)
        mask = Signal(noting.data.shape(), reset_less=True)
        m.d.comb += noted.addr.eq(self.r_id)
        m.d.sync += mask.eq(Mux(self.ar_valid & (self.ar_id == self.r_id), noting.data,
                                noted.data))
        reservable = Cat(word[i] for i in _reservable())
        rsvd_table, rsvd_leaf = Signal(), Signal()
        m.d.comb += [rsvd_table.eq((reservable & mask.table).any()),
                     rsvd_leaf.eq((reservable & mask.leaf).any())]

        # -- R1: decode --------------------------------------------------------------
        def by_arch(build, width):
            out = Const(0, width)
            for i, a in enumerate(ARCHS):
                out = Mux(arch[i], build(a), out)
            return out

        views = {a.name: a.entry(word, level1, leaf_ok, exec_only) for a in ARCHS}
        ent = lambda name: by_arch(lambda a: getattr(views[a.name], name), 64)
        present, leaf, bad = Signal(), Signal(), Signal()
        frame, perms, memtype = Signal(PA_WIDTH), Signal(4), Signal(3)
        ent_a, ent_d = Signal(), Signal()
        m.d.comb += [present.eq(ent("present")), leaf.eq(ent("leaf")), bad.eq(ent("bad")),
                     frame.eq(ent("frame")), perms.eq(ent("perms")),
                     memtype.eq(ent("memtype")), ent_a.eq(ent("a")), ent_d.eq(ent("d"))]
        rsvd = Mux(leaf, rsvd_leaf, rsvd_table)
        acc_next = acc & perms
        misaligned = (frame[:OFFSET_BITS] & page_mask).any()
        checks = {a.name: a.leaf(acc_next, perms, want, nxe=nxe, svade=svade, write=write,
                                 misaligned=misaligned, a=ent_a, d=ent_d) for a in ARCHS}
        out_perms = by_arch(lambda a: checks[a.name].perms, 4)
        leaf_kind = Signal(3)
        leaf_fault = Signal()
        for i, a in enumerate(ARCHS):
            with m.If(arch[i]):
                for cond, kind in reversed(checks[a.name].faults):
                    with m.If(cond):
                        m.d.comb += [leaf_fault.eq(1), leaf_kind.eq(kind)]
        need = ad_on & by_arch(lambda a: a.ad_wanted(leaf, write, ent_a, ent_d), 1)

        step = self.step
        r = step.end
        m.d.comb += [
            self.step_id.eq(rid), self.step_valid.eq(Mux(valid, 1 << rid, 0)),
            step.descend.eq(~err & present & ~bad & ~rsvd & ~leaf),
            step.next_addr.eq(Cat(next_index, frame[12:])),
            step.acc.eq(acc_next), step.need.eq(need),
            r.perms.eq(out_perms), r.memtype.eq(memtype),
            r.hpa.eq(Cat((frame[:OFFSET_BITS] & ~page_mask) | (offset & page_mask),
                         frame[OFFSET_BITS:])),
        ]
        with m.If(err):
            m.d.comb += r.kind.eq(K["bus_error"])
        with m.Elif(~present):
            m.d.comb += r.kind.eq(K["not_present"])
        with m.Elif(bad | rsvd):
            m.d.comb += r.kind.eq(K["reserved"])
        with m.Elif(leaf_fault):
            m.d.comb += r.kind.eq(leaf_kind)
        with m.Else():
            m.d.comb += r.ok.eq(leaf)

        m.d.comb += [
            self.rec_valid.eq(valid), self.rec_id.eq(rid), self.rec_level.eq(level),
            self.rec_word.eq(word), self.rec_table.eq(step.descend),
            self.rec_pwc.frame.eq(frame[12:]), self.rec_pwc.acc.eq(acc_next),
        ]
        return m

    def _masks(self, m):
        """The mask memory's write port, written for walk ``ar_id`` the cycle after its
        read's grant, and its read port."""
        layout = data.StructLayout({"table": RESERVABLE, "leaf": RESERVABLE})
        m.submodules.masks = masks = Memory(shape=layout, depth=max(2, self.engines), init=[])
        p, level = self.ar_params, self.ar_level
        # Bits at or above the physical-address width, where a format reserves them.
        width = len(p.pa_bits)
        pa_high = {i: p.pa_bits <= i if i < (1 << width) - 1 else Const(1, 1)
                   for i in range(64)}
        write = masks.write_port()
        m.d.comb += [write.en.eq(self.ar_valid), write.addr.eq(self.ar_id)]
        for kind, leaf in (("table", False), ("leaf", True)):
            def bit(i):
                static, pa, nxe = (format_table(m, p.format, 1, lambda c: _level_mux(
                    level, lambda l: Const(c.reserved[(l, leaf)][k] >> i & 1, 1),
                    c.levels)) for k in range(3))
                return static | (pa & pa_high[i]) | (nxe & ~p.nxe)
            m.d.comb += getattr(write.data, kind).eq(Cat(bit(i) for i in _reservable()))
        return write, masks.read_port(domain="comb")
