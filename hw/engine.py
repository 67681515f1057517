"""One walk in flight: the state of a page-table walk and its small FSM.

A :class:`WalkEngine` holds what one walk needs between memory accesses (the GPA, the
level, the next entry's address, the permissions so far, the A/D updates owed) and
moves through IDLE -> READ -> WAIT ... -> (AD) -> DONE. It decodes nothing: the R beat
of each read goes through the shared :class:`hw.pte.PtePipe`, which hands the engine a
:data:`STEP`, and the A/D compare-exchanges are made by the shared
:class:`hw.ad.AdUnit`. Several engines share one pipe, one A/D unit and one AXI port
(:class:`hw.walkers.WalkerPool`).

A walk starts at any level: the MMU passes the walk-cache's deepest hit as the start
level, first entry address and permissions accumulated above it, so a cached level
costs no cycle. The first read is requested in the cycle the walk is accepted.
"""

from amaranth import Fragment, Module, Mux, Signal
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out

from .context import ADDR_BITS, GPA_BITS, WALK_PARAMS
from .decode import ACCESS_IDS, KIND_IDS, MAX_LEVELS, PA_WIDTH

__all__ = ["WalkEngine", "PERMS_LAYOUT", "start_layout", "RESULT_LAYOUT", "STEP_LAYOUT",
           "ENGINE_VIEW", "AdStatus", "ALL_PERMS", "names_pte", "walk_states"]

PERMS_LAYOUT = data.StructLayout({"r": 1, "w": 1, "x": 1, "u": 1})
ALL_PERMS = 0b1111


def start_layout(tag_bits):
    """A walk to start: the request (``gpa``, ``access``, ``tag``), its context's
    :data:`WALK_PARAMS`, the first entry to read (``level``, ``addr``) with the
    permissions accumulated above it (``acc``), the root entry (``root_addr``, read
    again when an A/D compare fails) and ``in_range`` (else a gpa_range fault)."""
    return data.StructLayout({
        "gpa": 64, "access": 2, "tag": tag_bits, "params": WALK_PARAMS,
        "level": 3, "addr": ADDR_BITS, "acc": 4, "root_addr": ADDR_BITS, "in_range": 1})


#: How a walk ends: ``ok`` with the page (``hpa``, ``perms``, ``memtype``) or a fault
#: (``kind``, ``perms`` of the walk for the report).
END_LAYOUT = data.StructLayout({"ok": 1, "kind": 3, "hpa": PA_WIDTH, "perms": 4,
                                "memtype": 3})

#: A walk's answer: how it ended, at which ``level``, and (for a fault, see
#: :func:`names_pte`) the address of the entry that faulted (``pte``, without its low
#: three bits).
RESULT_LAYOUT = data.StructLayout({
    "ok": 1, "kind": 3, "level": 3, "hpa": PA_WIDTH, "pte": ADDR_BITS, "perms": 4,
    "memtype": 3})

#: What the PTE pipe tells the engine whose entry it decoded: go on (``descend`` to
#: ``next_addr`` with permissions ``acc``) or ``end``; ``need``: this entry is owed an
#: A/D update if the walk succeeds.
STEP_LAYOUT = data.StructLayout({
    "descend": 1, "next_addr": ADDR_BITS, "acc": 4, "need": 1, "end": END_LAYOUT})


def walk_states():
    """``{value: name}`` of the walk FSM's state register (``walk_state`` in the
    Verilog): Amaranth numbers the states in the order the elaboration meets them."""
    engine = WalkEngine(1)
    Fragment.get(engine, None)
    return engine.state_names


def names_pte(result):
    """A fault of ``result`` names the entry it happened at (a GPA out of range does not)."""
    return ~result.ok & (result.kind != KIND_IDS["gpa_range"])


#: What the PTE pipe reads of a walk to decode its next R beat.
ENGINE_VIEW = data.StructLayout({"level": 3, "params": WALK_PARAMS, "access": 2, "acc": 4,
                                 "gpa": GPA_BITS})


class AdStatus(enum.Enum, shape=2):
    """How the A/D updates of a walk ended."""
    OK = 0
    RESTART = 1         # an entry changed since it was read: walk again from the root
    BUS_ERROR = 2       # at ``level``, entry ``addr``


class WalkEngine(wiring.Component):
    """The state and FSM of one walk.

    Members
    -------
    start : In(stream.Signature(start_layout(tag_bits)))
        Accepted when idle. Its first read is presented in the same cycle by the pool
        (from the start itself); ``ar_ready`` then says it was taken, else the engine
        asks for it from READ.
    ar_valid, ar_addr, ar_level, ar_params, ar_ready
        The next entry to read (``ar_addr`` without its low three bits), its level and
        the walk's parameters, asked for from registers (the READ state).
    view : Out(...)
        What the PTE pipe needs to decode this walk's next R beat.
    step_valid : In(1), step : In(STEP_LAYOUT)
        The pipe's decode of this walk's last read.
    ad_req, ad_need, ad_leaf, ad_write, ad_done, ad_status, ad_level, ad_addr
        The A/D updates owed (``ad_need`` bit ``l-1`` for level ``l``), and the A/D
        unit's answer.
    result : Out(stream.Signature(RESULT_LAYOUT))
        Held until taken; the engine is idle again the cycle after.
    ending : Out(1)
        The step taken this cycle ends the walk with no A/D update owed: ``result`` is
        valid from the next cycle (so its answer can be chosen now).
    gpa, access, tag, params, top
        The walk in progress (``top``: the highest level this walk read, so the levels
        below it and above the leaf are the ones it can give to a walk cache).

    Once elaborated, ``state_names`` is ``{value: name}`` of the FSM's states.
    """

    def __init__(self, tag_bits):
        self.tag_bits = tag_bits
        super().__init__({
            "start": In(stream.Signature(start_layout(tag_bits))),
            "ar_valid": Out(1), "ar_addr": Out(ADDR_BITS), "ar_level": Out(3),
            "ar_params": Out(WALK_PARAMS), "ar_ready": In(1),
            "view": Out(ENGINE_VIEW),
            "step_valid": In(1), "step": In(STEP_LAYOUT),
            "ad_req": Out(1), "ad_need": Out(MAX_LEVELS), "ad_leaf": Out(3),
            "ad_write": Out(1), "ad_done": In(1), "ad_status": In(AdStatus),
            "ad_level": In(3), "ad_addr": In(ADDR_BITS),
            "result": Out(stream.Signature(RESULT_LAYOUT)), "ending": Out(1),
            "gpa": Out(64), "access": Out(2), "tag": Out(tag_bits),
            "params": Out(WALK_PARAMS), "top": Out(3),
        })

    def elaborate(self, platform):
        m = Module()
        start, step = self.start.payload, self.step
        # Only the FSM's state is reset: a walk's registers are loaded when it starts.
        res = Signal(END_LAYOUT, name="end", reset_less=True)
        level = Signal(3, reset_less=True)
        addr = Signal(ADDR_BITS, reset_less=True)
        pte = Signal(ADDR_BITS, reset_less=True)    # the entry read last: a fault names it
        gpa, access = Signal(64, reset_less=True), Signal(2, reset_less=True)
        tag, top = Signal(self.tag_bits, reset_less=True), Signal(3, reset_less=True)
        params, ad_leaf = Signal(WALK_PARAMS, reset_less=True), Signal(3, reset_less=True)
        m.d.comb += [self.gpa.eq(gpa), self.access.eq(access), self.tag.eq(tag),
                     self.top.eq(top), self.params.eq(params), self.ad_leaf.eq(ad_leaf)]
        out = self.result.payload
        m.d.comb += [out.ok.eq(res.ok), out.kind.eq(res.kind), out.hpa.eq(res.hpa),
                     out.perms.eq(res.perms), out.memtype.eq(res.memtype),
                     out.level.eq(level), out.pte.eq(pte)]
        acc = Signal(4, reset_less=True)
        need = Signal(MAX_LEVELS, reset_less=True)
        root_addr = Signal(ADDR_BITS, reset_less=True)
        m.d.comb += [
            self.ar_addr.eq(addr), self.ar_level.eq(level), self.ar_params.eq(params),
            self.view.level.eq(level), self.view.params.eq(params),
            self.view.access.eq(access), self.view.acc.eq(acc),
            self.view.gpa.eq(gpa),
            self.ad_need.eq(need), self.ad_write.eq(access == ACCESS_IDS["write"]),
        ]
        level_bit = Signal(MAX_LEVELS)
        for l in range(1, MAX_LEVELS + 1):
            with m.If(level == l):
                m.d.comb += level_bit.eq(1 << (l - 1))

        def walk_from_root():
            return [level.eq(params.levels), addr.eq(root_addr), acc.eq(ALL_PERMS),
                    need.eq(0), top.eq(params.levels)]

        with m.FSM(name="walk") as fsm:
            with m.State("IDLE"):
                m.d.comb += self.start.ready.eq(1)
                # An idle engine takes the start's fields every cycle (nobody reads them
                # before it starts), so only its state waits for ``start.valid``.
                m.d.sync += [
                    gpa.eq(start.gpa), access.eq(start.access),
                    tag.eq(start.tag), params.eq(start.params),
                    level.eq(start.level), addr.eq(start.addr), pte.eq(start.addr),
                    acc.eq(start.acc), need.eq(0), root_addr.eq(start.root_addr),
                    top.eq(start.level),
                ]
                with m.If(self.start.valid):
                    with m.If(~start.in_range):
                        m.d.sync += [res.ok.eq(0), res.kind.eq(KIND_IDS["gpa_range"]),
                                     level.eq(start.params.levels), res.perms.eq(0)]
                        m.next = "DONE"
                    with m.Elif(self.ar_ready):
                        m.next = "WAIT"
                    with m.Else():
                        m.next = "READ"

            with m.State("READ"):
                m.d.comb += self.ar_valid.eq(1)
                m.d.sync += pte.eq(addr)
                with m.If(self.ar_ready):
                    m.next = "WAIT"

            with m.State("WAIT"):
                with m.If(self.step_valid):
                    # A step's fields are taken whatever it decided, so only the state
                    # and the level wait for the decode.
                    owed = need | Mux(step.need, level_bit, 0)
                    m.d.sync += [addr.eq(step.next_addr), acc.eq(step.acc), need.eq(owed),
                                 res.eq(step.end), ad_leaf.eq(level)]
                    with m.If(step.descend):
                        m.d.sync += level.eq(level - 1)
                        m.next = "READ"
                    with m.Elif(step.end.ok & owed.any()):
                        m.next = "AD"
                    with m.Else():
                        m.d.comb += self.ending.eq(1)
                        m.next = "DONE"

            with m.State("AD"):
                m.d.comb += self.ad_req.eq(1)
                with m.If(self.ad_done):
                    with m.Switch(self.ad_status):
                        with m.Case(AdStatus.OK):
                            m.next = "DONE"
                        with m.Case(AdStatus.RESTART):
                            # Memory changed under the walk: walk again, reading memory.
                            m.d.sync += walk_from_root()
                            m.next = "READ"
                        with m.Default():
                            m.d.sync += [res.ok.eq(0), res.kind.eq(KIND_IDS["bus_error"]),
                                         level.eq(self.ad_level), pte.eq(self.ad_addr)]
                            m.next = "DONE"

            with m.State("DONE"):
                m.d.comb += self.result.valid.eq(1)
                with m.If(self.result.ready):
                    m.next = "IDLE"
        self.state_names = {value: name for name, value in fsm.encoding.items()}
        return m
