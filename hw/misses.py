"""The miss table: every walk in flight and every request waiting on one.

Per walk engine a slot says what the walk is for (VM, generation, space: its page and
access come from the engine), whether an invalidation has overtaken it (``stale``: it
still answers, but fills nothing and nobody joins it), whether its own request is
answered and its TLB entry written. A slot is released, and its engine free, once all
of that is done and every request that joined it is answered.

Entries hold requests that missed in the TLB and could not start a walk themselves:
``joined`` to a walk of the same page and access in flight (answered with that walk's
result, their own page offset and htval), or ``waiting`` for an engine. A waiting
request is replayed through the lookup pipeline when an engine is free, so it may hit
what another walk filled meanwhile instead of walking again. While any request waits
(``queued``), a new miss waits behind it instead of taking a free engine, and waiting
requests are offered in turn (round robin over the entries), so every miss gets an
engine within a bounded number of walks, whatever the traffic. The MMU accepts a request
only while an entry is free for it and every lookup ahead of it, so a miss never
waits in the pipeline for an engine (which could wait for a fill behind it).

Walk responses leave through one port, ``resp``, a walk's own request first; the answer
is chosen into one-hot registers and read from the engine's and the entry's own
registers, which stay put until it is taken.
"""

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .arbiter import lowest_onehot, lowest_set, pick, pick_onehot
from .engine import RESULT_LAYOUT
from .gens import GEN_BITS
from .walkers import WALK_INFO

__all__ = ["MissTable", "request_fields", "walk_response_layout"]


def request_fields(vm_bits, tag_bits):
    return data.StructLayout({"vm": vm_bits, "gpa": 64, "access": 2, "tag": tag_bits})


def walk_response_layout(tag_bits):
    """A walk's answer to one request, and what its report is made from."""
    return data.StructLayout({"result": RESULT_LAYOUT, "tag": tag_bits, "gpa": 64,
                              "access": 2, "arch": 2, "nxe": 1})



class MissTable(wiring.Component):
    """Slots of ``walkers`` walks and ``entries`` waiting requests.

    Members
    -------
    start, start_walk, start_key : In
        A walk starts on engine ``start_walk`` for ``start_key`` (vm, gen, private).
    busy, stale : Out(walkers); key : Out(...).array(walkers)
    full : Out(1)
        Every engine is busy (``busy.all()``, kept in a register).
    retire : In(1)
        An invalidation: every walk in flight becomes stale.
    ending : In(walkers)
        Walk ``i`` ends this cycle (``done`` from the next) with nothing left to do but
        answer and fill: its own answer may be chosen now, to leave as it is done.
    done, ok : In(walkers); results : In(RESULT_LAYOUT).array(walkers);
    walks : In(WALK_INFO).array(walkers); tags : In(tag_bits).array(walkers)
        The engines' answers and walks.
    wants_fill : Out(walkers); fill_walk : Out(...)
        Walks whose TLB entry is owed, and the lowest of them, whose entry is next;
        ``filled`` when it is copied for the TLB (which drops it if an invalidation
        makes the walk stale first).
    release : Out(walkers)
        The engine may drop its result and take a new walk (a one-cycle pulse, from a
        register; the walk is busy until the cycle after and may not be joined meanwhile).
    joined, waiting, record_walk, record_entry, record_replay, record_req : In
        The S2 outcome of a miss that starts no walk: it joins walk ``record_walk``,
        or waits. A replayed request (``record_replay``) keeps entry
        ``record_entry``; ``settled`` frees it (it hit, or started its walk).
    free : Out
        Free entries (a request needs one reserved for it and for each lookup ahead).
    replay : Out(stream.Signature(...))
        A waiting request to look up again (offered while an engine is free).
    queued : Out(1)
        Some request waits for an engine: only a replay may start a walk (from registers).
    resp : Out(stream.Signature(walk_response_layout(tag_bits)))
    """

    def __init__(self, *, walkers, entries, vm_bits, tag_bits):
        self.walkers, self.entries = walkers, entries
        self.vm_bits, self.tag_bits = vm_bits, tag_bits
        id_bits = max(1, (walkers - 1).bit_length())
        e_bits = max(1, (max(entries, 1) - 1).bit_length())
        key = data.StructLayout({"vm": vm_bits, "gen": GEN_BITS, "private": 1})
        req = request_fields(vm_bits, tag_bits)
        self.key_layout = key
        super().__init__({
            "start": In(1), "start_walk": In(id_bits), "start_key": In(key),
            "busy": Out(walkers), "stale": Out(walkers), "key": Out(key).array(walkers),
            "full": Out(1),
            "retire": In(1),
            "ending": In(walkers), "done": In(walkers), "ok": In(walkers),
            "results": In(RESULT_LAYOUT).array(walkers), "walks": In(WALK_INFO).array(walkers),
            "tags": In(tag_bits).array(walkers),
            "wants_fill": Out(walkers), "fill_walk": Out(id_bits), "filled": In(1),
            "written": In(1), "written_walk": In(id_bits),
            "release": Out(walkers),
            "joined": In(1), "waiting": In(1), "record_walk": In(id_bits),
            "record_replay": In(1), "record_entry": In(e_bits), "record_req": In(req),
            "settled": In(1),
            "free": Out(range(entries + 1)), "queued": Out(1),
            "replay": Out(stream.Signature(data.StructLayout({"entry": e_bits, "req": req}))),
            "resp": Out(stream.Signature(walk_response_layout(tag_bits))),
        })

    def elaborate(self, platform):
        m = Module()
        N, E = self.walkers, self.entries
        busy, stale = self.busy, self.stale
        own_sent = Signal(N, name="own_sent")       # the walk's own request is answered
        fill_taken = Signal(N, name="fill_taken")   # its TLB entry was copied for the TLB
        written = Signal(N, name="written_mask")    # ... and was written
        for i in range(N):
            with m.If(self.start & (self.start_walk == i)):
                m.d.sync += [busy[i].eq(1), stale[i].eq(0), own_sent[i].eq(0),
                             fill_taken[i].eq(0), written[i].eq(0),
                             self.key[i].eq(self.start_key)]
        with m.If(self.retire):
            m.d.sync += stale.eq(~0)
        # Whether every engine is busy, registered from its next value: a start takes a
        # free engine (the last one, if only one is free) and a release frees one. A
        # replay's offer and the S2 decision then read a flip-flop, not a reduction.
        idle = ~busy
        one_idle = Cat(idle[i] & ~Cat(idle[j] for j in range(N) if j != i).any()
                       for i in range(N)).any() if N > 1 else idle[0]
        m.d.sync += self.full.eq(~self.release.any() & (busy.all() | (self.start & one_idle)))
        m.d.comb += [self.wants_fill.eq(self.done & self.ok & ~stale & ~fill_taken),
                     self.fill_walk.eq(lowest_set(m, self.wants_fill, N, "fill_walk"))]
        fill_next = lowest_onehot(m, self.wants_fill, "fill_next")
        for i in range(N):
            with m.If(self.filled & fill_next[i]):
                m.d.sync += fill_taken[i].eq(1)
        with m.If(self.written):
            m.d.sync += written.bit_select(self.written_walk, 1).eq(1)

        # -- entries -------------------------------------------------------------------
        valid = Signal(max(1, E), name="entry_valid")
        joined = Signal(max(1, E), name="entry_joined")     # else waiting
        replaying = Signal(max(1, E), name="entry_replaying")
        walker = [Signal(N, name=f"e{j}_walker", reset_less=True)    # one-hot
                  for j in range(E)]
        reqs = [Signal(self.record_req.shape(), name=f"e{j}_req", reset_less=True)
                for j in range(E)]
        if E:
            free_j = lowest_set(m, ~valid, E, "free_entry")
            slot = Mux(self.record_replay, self.record_entry, free_j)
            with m.If(self.joined | self.waiting):
                m.d.sync += [valid.bit_select(slot, 1).eq(1),
                             joined.bit_select(slot, 1).eq(self.joined),
                             replaying.bit_select(slot, 1).eq(0)]
            # The request is written whether or not it is recorded (so that the write
            # does not wait for the outcome): the slot is free or holds this same
            # replayed request.
            for j in range(E):
                with m.If((slot == j) & (self.record_replay | ~valid[j])):
                    m.d.sync += [walker[j].eq(1 << self.record_walk),
                                 reqs[j].eq(self.record_req)]
            with m.If(self.settled):
                m.d.sync += [valid.bit_select(self.record_entry, 1).eq(0),
                             replaying.bit_select(self.record_entry, 1).eq(0)]
            m.d.comb += self.free.eq(sum(~valid[j] for j in range(E)))
            # The entry offered is chosen a cycle ahead and its request copied with it,
            # so the lookup pipeline's S0 reads the request from registers.
            ready = valid & ~joined & ~replaying
            m.d.comb += self.queued.eq((valid & ~joined).any())
            offer = Signal(len(self.record_entry), name="replay_entry", reset_less=True)
            offer_req = Signal(self.record_req.shape(), name="replay_req", reset_less=True)
            offered = Signal(name="replay_offered")
            took = self.replay.valid & self.replay.ready
            # In turn: the lowest ready entry above the last offered, else the lowest.
            later = ready & Cat(Const(0, 1), *(offer < j for j in range(1, E)))
            following = lowest_set(m, Mux(later.any(), later, ready), E, "replay_next")
            # The choice ignores the handshake (off its path): after a replay is taken
            # nothing is offered for a cycle, as the choice may be the entry just taken.
            # (An entry ready to offer is not written until it is offered.)
            m.d.sync += [offered.eq(ready.any() & ~took), offer.eq(following),
                         offer_req.eq(pick(reqs, following))]
            # An entry offered stays ready until it is taken (nothing else writes it).
            m.d.comb += [self.replay.valid.eq(offered & ~self.full),
                         self.replay.payload.entry.eq(offer),
                         self.replay.payload.req.eq(offer_req)]
            with m.If(took):
                m.d.sync += replaying.bit_select(offer, 1).eq(1)

        # -- responses: a walk's own request, then the requests that joined it ----------
        # A walk's own answer is chosen as its last step is decoded (``ending``), to
        # leave in the cycle the walk is done, when nothing else is to be answered.
        # Otherwise it leaves once its TLB entry is on its way to the TLB (copied for
        # it, ahead of any later request). Either way software that sees the answer
        # then asks again finds the entry or joins the walk (busy until its entry is
        # written), and an invalidation it then issues waits for the entry to be
        # written or makes the walk stale before it is copied. A walk whose fill is
        # copied this cycle comes after those that could answer before it.
        # The answer is a choice held in one-hot registers: the walk (``answer_walk``)
        # and either its own request (``answer_own``, that walk again) or a joined entry
        # (``answer_entry``). The port reads the engine's and the entry's registers
        # through them, which stay put until the answer is taken (the walk is not
        # released, the entry not freed), so the choice loads a few bits rather than
        # the whole answer, off the engines' path.
        resp = self.resp
        answer_walk = Signal(N, name="answer_walk", reset_less=True)
        answer_own = Signal(N, name="answer_own", reset_less=True)
        answer_entry = Signal(max(1, E), name="answer_entry", reset_less=True)
        taken = resp.valid & resp.ready
        answerable = Signal(N, name="answerable")
        m.d.comb += answerable.eq(self.done & ~own_sent & (fill_taken | ~self.ok | stale))
        own_oh, own = Signal(N, name="own_walk"), Signal(name="own_any")
        filled_own = Mux(self.filled, fill_next & ~own_sent, 0)
        m.d.comb += [own_oh.eq(Mux(answerable.any(), lowest_onehot(m, answerable, "first_own"),
                                   filled_own)),
                     own.eq(answerable.any() | filled_own.any())]
        ans = Signal(max(1, E), name="answerable_entries")
        if E:
            held = Mux(resp.valid, answer_entry, 0)
            m.d.comb += ans.eq(Cat(valid[j] & joined[j] & ~held[j] & (walker[j] & self.done).any()
                                   for j in range(E)))
        ans_oh = lowest_onehot(m, ans, "joined_next")
        # One engine at most ends in a cycle (one step is decoded per cycle); the choice
        # between it and the others is made from registers, so the decode meets one LUT.
        others = own | ans.any()
        early = Mux(others, 0, self.ending)
        with m.If(resp.ready | ~resp.valid):
            m.d.sync += [resp.valid.eq(others | self.ending.any()),
                         answer_walk.eq(Mux(own, own_oh,
                                            Mux(ans.any(), pick_onehot(ans_oh, walker) if E else 0,
                                                self.ending))),
                         answer_own.eq(Mux(own, own_oh, early)),
                         answer_entry.eq(Mux(own, 0, ans_oh))]
            for i in range(N):
                with m.If((own & own_oh[i]) | early[i]):
                    m.d.sync += own_sent[i].eq(1)
        # A joined request shares the walk's 4 KiB page: only the page offset of a
        # translation (and a RISC-V htval, from ``gpa``) is its own.
        req = pick_onehot(answer_entry, reqs) if E else data.View(self.record_req.shape(), 0)
        result = pick_onehot(answer_walk, list(self.results))
        walk = pick_onehot(answer_walk, list(self.walks))
        own_offset = pick_onehot(answer_own, [r.hpa[:12] for r in self.results])
        p = resp.payload
        m.d.comb += [p.result.eq(result), p.access.eq(walk.access),
                     p.arch.eq(walk.params.arch), p.nxe.eq(walk.params.nxe),
                     p.tag.eq(pick_onehot(answer_own, list(self.tags)) | req.tag),
                     p.gpa.eq(pick_onehot(answer_own, [w.gpa for w in self.walks]) | req.gpa),
                     p.result.hpa.eq(Cat(own_offset | req.gpa[:12], result.hpa[12:]))]
        for j in range(E):
            with m.If(taken & answer_entry[j]):
                m.d.sync += valid[j].eq(0)

        # -- release: answered, joiners answered, entry written (or nothing to write) --
        # Registered, so the engines' FSMs and the counters see a register: decided one
        # cycle, a one-cycle pulse the next; no request joins a walk in its release
        # cycle (the MMU masks ``release``).
        for i in range(N):
            refs = Cat(valid[j] & joined[j] & walker[j][i] & ~(taken & answer_entry[j])
                       for j in range(E)).any() if E else Const(0)
            joining = self.joined & (self.record_walk == i)
            m.d.sync += self.release[i].eq(~self.release[i] & self.done[i] & own_sent[i]
                                           & ~refs & ~joining
                                           & ~(resp.valid & ~resp.ready & answer_own[i])
                                           & (written[i] | ~self.ok[i] | stale[i]))
            with m.If(self.release[i]):
                m.d.sync += busy[i].eq(0)
        return m
