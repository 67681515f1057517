"""The stage-2 MMU top: TLB, page-walk cache and several walkers on one AXI4 manager.

Request path, a registered pipeline that takes one request per cycle:

* S0 — the request is accepted: the TLB reads its set, the walk cache compares its
  page, and the VM's context gives the space (``private``) and generation the caches
  are tagged with (:class:`hw.gens.Generations`).
* S1 — the TLB and walk cache compare; the walk start (the root entry, or the walk
  cache's deepest hit) is formed; the page is compared with every walk in flight.
* S2 — a hit that allows the access is answered (two cycles after acceptance). A miss
  joins a walk in flight of the same VM, generation, space, page and access, or starts
  a walk on a free engine, whose first read goes out in this cycle.

Walks (:class:`hw.walkers.WalkerPool`) answer out of order; responses carry the
request's tag (:class:`hw.misses.MissTable`). A walk's result fills the TLB through the
same pipeline (S0 reads the set, S2 writes the way already holding the page or a
victim); walk-cache entries are filled as the walk reads table entries that need no A
bit, and after the A/D unit has set it. Only a walk that started after the last
invalidation fills anything (``stale`` per walk, as Rocket's PTW keeps an
``invalidated`` flag on its walk in flight; CVA6 and XiangShan both shipped bugs where
a walk across an sfence refilled its result).

A hit is only taken when it gives exactly what a walk would: the TLB keeps, per entry,
the accesses it may serve (``allow``): a write only when the walk that filled the entry
was a write or the VM does not track dirty bits, so a write never skips the D-bit
update it owes (SDM Vol. 3C §29.3.5, APM Vol. 2 §5.4.2, Svadu / Svade). Faults are
never cached.

Confidential VMs: a TD's private GPA walks ``ext_root``; the caches tag it ``private``,
and a range invalidation names GFNs without the shared bit and selects the space.
"""

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .arbiter import lowest_set, pick
from .arch import each_arch
from .axi import AXI4Signature
from .context import (CONTEXT_LAYOUT, ContextTable, ContextWriteSignature, is_private, vm_index,
                      walk_start)
from .decode import ACCESS_IDS, PA_WIDTH, page_shift
from .engine import ALL_PERMS
from .gens import GEN_BITS, Generations
from .inval import Invalidator
from .misses import MissTable
from .pwc import PageWalkCache
from .tlb import TLB, VPN_BITS, InvalKind, InvalSpace, page_mask
from .walker import answer, check_parameters, request_layout, response_layout
from .walkers import WalkerPool

__all__ = ["MMU", "COUNTERS", "counters_layout", "TLB_DATA_LAYOUT", "inval_layout"]

#: Performance counters, in the order of the ``counters`` port.
COUNTERS = (
    "requests",         # requests accepted
    "tlb_hits",         # answered from the TLB
    "tlb_misses",       # looked up and missed (or the access was not allowed)
    "merged",           # misses answered by another's walk (joined, or hit its fill)
    "walks",            # walks started
    "walk_faults",      # walks that ended in a fault
    "tlb_fills",        # TLB fills
    "stale_drops",      # successful walks not filled because an invalidation overtook them
    "pwc_hits",         # walks that started below the root from the walk cache
    "pwc_reads_saved",  # PTE reads the walk cache spared
    "pwc_fills",        # walk-cache fills
    "invalidations",    # invalidations accepted
)

#: TLB entry payload: the page frame (HPA >> 12) and what the walk reported.
TLB_DATA_LAYOUT = data.StructLayout({"frame": PA_WIDTH - 12, "perms": 4, "memtype": 3})
#: Page-number width of the invalidation port (GFNs of 64-bit GPAs).
PORT_VPN_BITS = 52


def inval_layout(vm_bits):
    """``kind`` (:class:`InvalKind`); ``vm`` for VM and RANGE; ``start``/``count`` in
    4 KiB pages for RANGE (``count`` 0 removes nothing); ``space``
    (:class:`InvalSpace`, last so the other fields keep their offsets) for every kind."""
    return data.StructLayout({"kind": InvalKind, "vm": vm_bits, "start": PORT_VPN_BITS,
                              "count": PORT_VPN_BITS + 1, "space": InvalSpace})


def counters_layout(width):
    return data.StructLayout({name: width for name in COUNTERS})


class MMU(wiring.Component):
    """Stage-2 MMU: TLB + walk cache in front of ``num_walkers`` concurrent walks.

    Parameters
    ----------
    num_walkers : int
        Walks in flight (1 to 16).
    num_vms : int
        Context table entries, a power of two.
    tag_bits : int
        Request tag width, echoed in the response.
    tlb_sets, tlb_ways : int
        Geometry of the 4 KiB TLB (powers of two).
    tlb_huge : int
        Fully associative TLB entries for 2 MiB, 1 GiB and 512 GiB pages.
    pwc_entries : int
        Walk-cache entries per level (levels 2 to 5).
    pending : int
        Misses outstanding at once: each walk's first request, and
        ``pending - num_walkers`` more that joined a walk in flight or wait for a
        walker. A request is accepted only with an entry for it and each lookup
        ahead of it, so ``num_walkers + 3`` or more keeps one request per cycle.
    axi_id_width : int
        Must hold a walker index: the ID of every transaction is its walker's index.
    counter_width : int

    Members
    -------
    req : In(stream.Signature(request_layout(vm_bits, tag_bits)))
        One request per cycle while nothing blocks (a miss waiting for a walker or a
        joining slot, a fill, an invalidation, a response not taken).
    resp : Out(stream.Signature(response_layout(tag_bits)))
        One response per request, in any order.
    ctx : In(ContextWriteSignature(vm_bits))
        Context table write. It also retires every cached translation of the VM (a new
        generation), so changing a VM's root or anything else needs no invalidation.
    inval : In(stream.Signature(inval_layout(vm_bits)))
        ``kind`` ALL / VM / RANGE (``start`` and ``count`` in 4 KiB pages, without a
        TD's shared bit), the flush API of :mod:`sw_model.tdp.flush`, and ``space``
        (:class:`hw.tlb.InvalSpace`). Requests accepted after it see its effect.
    inval_done : Out(1)
        One-cycle pulse when the invalidation is complete: no TLB or walk-cache entry it
        covers remains, and no walk that started before it can fill.
    axi : Out(AXI4Signature(addr_width=64, data_width=64, id_width=axi_id_width))
    counters : Out(counters_layout(counter_width))
        Free-running, wrapping counters named by :data:`COUNTERS`, one cycle behind
        the events they count.

    The parts are reachable as ``tlb``, ``pwc`` and ``walkers`` (for waveforms).
    """

    def __init__(self, *, num_walkers=4, num_vms=4, tag_bits=8, tlb_sets=16, tlb_ways=4,
                 tlb_huge=8, pwc_entries=4, pending=8, axi_id_width=4, counter_width=32):
        check_parameters(num_vms=num_vms, tag_bits=tag_bits, axi_id_width=axi_id_width)
        if not isinstance(num_walkers, int) or not 1 <= num_walkers <= 16:
            raise ValueError(f"num_walkers must be an integer in [1, 16], got {num_walkers!r}")
        if num_walkers > 1 << axi_id_width:
            raise ValueError(f"axi_id_width {axi_id_width} cannot name {num_walkers} walkers")
        if not isinstance(pending, int) or not num_walkers < pending <= 64:
            raise ValueError(f"pending must be an integer in [num_walkers + 1, 64], "
                             f"got {pending!r}")
        if not isinstance(counter_width, int) or not 1 <= counter_width <= 64:
            raise ValueError(f"counter_width must be an integer in [1, 64], "
                             f"got {counter_width!r}")
        self.num_walkers, self.num_vms, self.tag_bits = num_walkers, num_vms, tag_bits
        self.vm_bits = max(1, (num_vms - 1).bit_length())
        self.pending = pending
        # The parts' errors name their own parameters ("sets ..."): prefix the MMU's.
        try:
            self.tlb = TLB(sets=tlb_sets, ways=tlb_ways, huge=tlb_huge, vm_bits=self.vm_bits,
                           gen_bits=GEN_BITS, data_width=TLB_DATA_LAYOUT.size)
        except ValueError as e:
            raise ValueError(f"tlb_{e}") from None
        try:
            self.pwc = PageWalkCache(entries=pwc_entries, vm_bits=self.vm_bits,
                                     gen_bits=GEN_BITS)
        except ValueError as e:
            raise ValueError(f"pwc_{e}") from None
        # A TLB hit's answer: the entry and the request's tag and page offset.
        self._hit_layout = data.StructLayout({
            "level": 3, "data": TLB_DATA_LAYOUT.size, "tag": tag_bits,
            "offset": page_shift(self.tlb.max_level)})
        self.walkers = WalkerPool(engines=num_walkers, tag_bits=tag_bits,
                                  id_width=axi_id_width, cache_tables=True)
        super().__init__({
            "req": In(stream.Signature(request_layout(self.vm_bits, tag_bits))),
            "resp": Out(stream.Signature(response_layout(tag_bits))),
            "ctx": In(ContextWriteSignature(self.vm_bits)),
            "inval": In(stream.Signature(inval_layout(self.vm_bits))),
            "inval_done": Out(1),
            "axi": Out(AXI4Signature(addr_width=64, data_width=64, id_width=axi_id_width)),
            "counters": Out(counters_layout(counter_width)),
        })

    def elaborate(self, platform):
        m = Module()
        N = self.num_walkers
        m.submodules.tlb = tlb = self.tlb
        m.submodules.pwc = pwc = self.pwc
        m.submodules.walkers = pool = self.walkers
        m.submodules.contexts = contexts = ContextTable(self.num_vms, reads=4)
        m.submodules.gens = gens = Generations(self.num_vms)
        m.submodules.misses = misses = MissTable(
            walkers=N, entries=self.pending - N, vm_bits=self.vm_bits, tag_bits=self.tag_bits)
        m.submodules.invalidator = inv = Invalidator(self.num_vms, inval_layout(self.vm_bits))
        wiring.connect(m, wiring.flipped(self.ctx), contexts.write)
        wiring.connect(m, pool.axi, wiring.flipped(self.axi))
        count = {name: Signal(8, name=f"count_{name}") for name in COUNTERS}
        for i in range(N):
            m.d.comb += [misses.ending[i].eq(pool.ending[i]),
                         misses.done[i].eq(pool.result[i].valid),
                         misses.ok[i].eq(pool.result[i].payload.ok),
                         misses.results[i].eq(pool.result[i].payload),
                         misses.walks[i].eq(pool.walk[i]), misses.tags[i].eq(pool.tag[i]),
                         pool.result[i].ready.eq(misses.release[i])]

        # -- S0: a walk's TLB entry, else a replayed miss, else a request -------------------
        req, replay = self.req, misses.replay
        adv, block = Signal(name="adv"), Signal(name="block")
        # A walk's TLB entry is chosen and copied into ``next_fill`` a cycle before it is
        # offered, so the choice between a fill, a replay and a request is a few LUT
        # levels from registers. They keep to the TLB's rule (:func:`conflicts`) more
        # strictly than it asks, by the kind of the fills ahead and not their sets: a
        # 4 KiB fill waits while another is in S1 or S2, a huge one while another huge
        # one is, and a lookup while a 4 KiB fill is in S2 or a huge one in S1.
        tlb_fill = self._next_fill(m, misses, pool)
        fills_ahead = tlb.fills
        fill_now = tlb_fill.valid & ~Mux(tlb_fill.entry.huge,
                                         fills_ahead.s1_huge | fills_ahead.s2_huge,
                                         fills_ahead.s1_small | fills_ahead.s2_small)
        req_clear = ~fills_ahead.s2_small & ~fills_ahead.s1_huge
        replay_now = ~fill_now & replay.valid & req_clear
        # The request looked up is the replay's whenever one is offered: no port request
        # goes in then (only a fill, whose key replaces it), so the wide request mux is
        # selected by ``replay.valid`` alone, a LUT from registers.
        s0 = Signal(data.StructLayout({"vm": self.vm_bits, "gpa": 64, "access": 2,
                                       "tag": self.tag_bits}))
        for name in ("gpa", "access", "tag"):
            m.d.comb += getattr(s0, name).eq(Mux(replay.valid, getattr(replay.payload.req, name),
                                                 getattr(req.payload, name)))
        m.d.comb += s0.vm.eq(vm_index(Mux(replay.valid, replay.payload.req.vm, req.payload.vm),
                                      self.num_vms))
        # Whether the GPA is a TD's private one: for the port's request and the replay
        # apart, so that only the last choice waits for ``replay.valid``.
        m.d.comb += [gens.vm.eq(s0.vm), contexts.read_vm[0].eq(req.payload.vm),
                     contexts.read_vm[3].eq(replay.payload.req.vm),
                     contexts.read_vm[1].eq(s0.vm)]
        private0 = Mux(replay.valid, is_private(contexts.read[3], replay.payload.req.gpa),
                       is_private(contexts.read[0], req.payload.gpa))
        op, entry = tlb.op.payload, tlb_fill.entry
        m.d.comb += [op.key.vm.eq(s0.vm), op.key.vpn.eq(vpn_of(s0.gpa)),
                     op.key.access.eq(s0.access)]
        with m.If(fill_now):
            m.d.comb += [op.fill.eq(1), op.key.vm.eq(entry.vm), op.key.vpn.eq(entry.vpn),
                         op.level.eq(entry.level), op.allow.eq(entry.allow),
                         op.data.eq(entry.data)]
        # A request needs a miss-table entry reserved for it and each lookup ahead.
        ahead = Signal(2)
        room = misses.free > ahead
        m.d.comb += [
            # A fill copied for the TLB goes in while an invalidation waits: the
            # invalidator waits for it (its walk has answered, its entry is owed).
            tlb.op.valid.eq(fill_now | ((replay_now | (req.valid & req_clear & room)) & ~block)),
            req.ready.eq(tlb.op.ready & req_clear & ~fill_now & ~replay.valid & room & ~block),
            replay.ready.eq(tlb.op.ready & replay_now & ~block),
        ]
        take_fill = fill_now & tlb.op.ready
        take = (req.valid & req.ready) | (replay.valid & replay.ready)
        m.d.comb += [tlb_fill.take.eq(take_fill), misses.filled.eq(tlb_fill.load),
                     count["tlb_fills"].eq(take_fill),
                     count["requests"].eq(req.valid & req.ready)]
        # The walk cache looks up requests only: its key does not wait for ``fill_now``.
        m.d.comb += [pwc.key.vm.eq(s0.vm), pwc.key.vpn.eq(vpn_of(s0.gpa)),
                     pwc.current.eq(gens.current),
                     pwc.take.eq(take), pwc.adv.eq(adv)]

        stage = data.StructLayout({"lookup": 1, "fill": 1, "replay": 1,
                                   "entry": len(replay.payload.entry), "walk": len(entry.walk),
                                   "req": s0.shape(), "private": 1,
                                   "gens": data.ArrayLayout(GEN_BITS, 2)})
        s1, s2 = _stage_register(stage, "s1"), _stage_register(stage, "s2")
        with m.If(adv):
            m.d.sync += [s1.lookup.eq(take), s1.fill.eq(take_fill),
                         s1.replay.eq(replay.valid & replay.ready),
                         s1.entry.eq(replay.payload.entry), s1.walk.eq(entry.walk), s1.req.eq(s0),
                         s1.gens.eq(Mux(fill_now, entry.gen.replicate(2),
                                        Cat(gens.gen_shared, gens.gen_private))),
                         s1.private.eq(Mux(fill_now, entry.private, private0))]
        # The context is kept from S0 with the generations and the space: the walk starts
        # from the snapshot the caches' key was taken from, a register away from S2.
        ctx1 = Signal(CONTEXT_LAYOUT, name="ctx1", reset_less=True)
        with m.If(adv):
            m.d.sync += ctx1.eq(contexts.read[1])
        m.d.comb += ahead.eq((s1.lookup & ~s1.replay) + (s2.lookup & ~s2.replay))

        # -- S1: generation, walk start, walks to join --------------------------------------
        # The VM's generations of both spaces were read at S0; the space picks one here.
        gen1 = Signal(GEN_BITS, name="gen1")
        key1 = data.View(misses.key_layout, Cat(s1.req.vm, gen1, s1.private))
        m.d.comb += [gen1.eq(s1.gens[s1.private]),
                     tlb.key_late.gen.eq(gen1), tlb.key_late.private.eq(s1.private),
                     pwc.private.eq(s1.private)]
        params1, root1, in_range1 = walk_start(m, ctx1, s1.req.gpa, s1.private)

        def same_page(key, gpa, access, other_key, other):
            return ((key.as_value() == other_key.as_value())
                    & (vpn_of(gpa) == vpn_of(other.req.gpa)) & (access == other.req.access))
        joinable = Cat(
            misses.busy[i] & ~misses.stale[i] & (~misses.done[i] | misses.ok[i])
            & same_page(misses.key[i], pool.walk[i].gpa, pool.walk[i].access, key1, s1)
            for i in range(N))
        # What S2 computes from is qualified by ``s2.lookup`` (or ``s2.fill``): no reset.
        s2_params = Signal.like(params1, name="s2_params", reset_less=True)
        s2_root = Signal(len(root1), name="s2_root", reset_less=True)
        s2_in_range = Signal(name="s2_in_range", reset_less=True)
        s2_join = Signal(N, name="s2_join", reset_less=True)
        s2_follow = Signal(name="s2_follow", reset_less=True)
        s2_low = Signal(name="s2_low", reset_less=True)     # below any format's top
        s2_gen = Signal(GEN_BITS, name="s2_gen", reset_less=True)
        with m.If(adv):
            m.d.sync += [
                s2.eq(s1), s2_gen.eq(gen1), s2_params.eq(params1), s2_root.eq(root1),
                s2_in_range.eq(in_range1), s2_join.eq(joinable),
                s2_low.eq(s1.req.gpa[12 + VPN_BITS:] == 0),
                s2_follow.eq(s2.lookup & same_page(
                    data.View(misses.key_layout, Cat(s2.req.vm, s2_gen, s2.private)),
                    s2.req.gpa, s2.req.access, key1, s1)),
            ]

        # -- S2: answer a hit; join, start or wait on a miss ----------------------------------
        res = tlb.result.payload
        # A GPA above any format's space never hits (the TLB compares 59 bits).
        hit = s2.lookup & res.hit & s2_low
        miss = s2.lookup & ~hit
        last_walk = Signal(len(entry.walk), name="last_walk", reset_less=True)
        last_valid = Signal(name="last_valid")
        follow = s2_follow & last_valid
        joins = s2_join & misses.busy & ~misses.release
        can_join = joins.any() | follow
        join_to = Mux(follow, last_walk, lowest_set(m, joins, N, "join_walk"))
        free_to = lowest_set(m, ~misses.busy, N, "free_walk")
        go_join = miss & can_join
        # A new miss queues behind the requests already waiting for an engine.
        go_start = adv & miss & ~can_join & ~misses.full & (s2.replay | ~misses.queued)
        go_wait = miss & ~go_join & ~go_start

        # A hit is answered in S2, or kept in ``held`` when the port is not free for it;
        # the pipeline advances while ``held`` is empty (or the TLB's S2 is, as the TLB
        # does), so whether it advances never depends on this cycle's hit or
        # ``resp.ready``.
        resp, walk_resp = self.resp, misses.resp
        held = Signal(self._hit_layout, name="held", reset_less=True)
        held_valid = Signal(name="held_valid")
        live = Signal(self._hit_layout, name="live_hit")
        m.d.comb += [live.level.eq(res.level), live.data.eq(res.data), live.tag.eq(s2.req.tag),
                     live.offset.eq(s2.req.gpa)]
        # Whose turn the port is, from registers only: a held hit or a lookup in S2 (it
        # may turn out a miss: the port idles a cycle) goes first unless a walk's
        # answer was passed over last time.
        hit_turn, prefer_walk = Signal(name="hit_turn"), Signal(name="prefer_walk")
        m.d.comb += hit_turn.eq((held_valid | s2.lookup) & ~(walk_resp.valid & prefer_walk))
        hit_sent = hit_turn & resp.ready
        m.d.comb += [adv.eq(~held_valid | ~tlb.result.valid), tlb.result.ready.eq(~held_valid),
                     walk_resp.ready.eq(resp.ready & ~hit_turn)]
        with m.If(held_valid):
            with m.If(hit_sent):
                m.d.sync += held_valid.eq(0)
        with m.Elif(hit & ~hit_sent):
            m.d.sync += [held_valid.eq(1), held.eq(live)]
        with m.If(walk_resp.valid & walk_resp.ready):
            m.d.sync += prefer_walk.eq(0)
        with m.Elif(walk_resp.valid & hit_turn):
            m.d.sync += prefer_walk.eq(1)
        with m.If(adv):
            m.d.sync += [last_valid.eq(go_join | go_start),
                         last_walk.eq(Mux(go_join, join_to, free_to))]
        m.d.comb += [
            misses.joined.eq(adv & go_join), misses.waiting.eq(adv & go_wait),
            misses.record_walk.eq(join_to), misses.record_replay.eq(s2.replay),
            misses.record_entry.eq(s2.entry), misses.record_req.eq(s2.req),
            misses.settled.eq(adv & s2.replay & (hit | go_start)),
            misses.written.eq(adv & s2.fill), misses.written_walk.eq(s2.walk),
            misses.start.eq(go_start), misses.start_walk.eq(free_to),
            misses.start_key.vm.eq(s2.req.vm), misses.start_key.gen.eq(s2_gen),
            misses.start_key.private.eq(s2.private),
            count["tlb_hits"].eq(adv & hit & ~s2.replay),
            count["tlb_misses"].eq(adv & miss & ~s2.replay),
            count["merged"].eq(adv & (go_join | (hit & s2.replay))),
        ]
        self._start_walks(m, pool, pwc.start, s2, s2_params, s2_root, s2_in_range,
                          go_start, free_to, count)
        self._respond(m, resp, hit_turn, held_valid | hit, Mux(held_valid, held, live),
                      walk_resp)

        # -- walk-cache fills: table entries the walks read (and set A in) ---------------
        cached = pool.cached
        key = pick(list(misses.key), cached.id)
        gpa = pick([w.gpa for w in pool.walk], cached.id)
        pwc_fill = pwc.fill
        m.d.comb += [
            pwc_fill.valid.eq(cached.valid & ~misses.stale.bit_select(cached.id, 1)
                          & misses.busy.bit_select(cached.id, 1)),
            pwc_fill.payload.key.vm.eq(key.vm), pwc_fill.payload.key.gen.eq(key.gen),
            pwc_fill.payload.key.private.eq(key.private),
            pwc_fill.payload.key.vpn.eq(vpn_of(gpa)),
            pwc_fill.payload.level.eq(cached.level), pwc_fill.payload.data.eq(cached.entry),
            count["pwc_fills"].eq(pwc_fill.valid & pwc_fill.ready),
        ]

        # -- invalidation -----------------------------------------------------------------
        wiring.connect(m, wiring.flipped(self.inval), inv.port)
        wiring.connect(m, inv.tlb, tlb.inval)
        wiring.connect(m, inv.pwc, pwc.inval)
        m.d.comb += [
            self.inval_done.eq(inv.done), block.eq(inv.hold), misses.retire.eq(inv.stale),
            inv.ctx_write.eq(self.ctx.valid), inv.ctx_index.eq(self.ctx.index),
            contexts.read_vm[2].eq(inv.vm), inv.ctx.eq(contexts.read[2]),
            gens.retire.eq(inv.retire), inv.wrapped.eq(gens.wrapped),
            inv.tlb_done.eq(tlb.inval_done), inv.pwc_done.eq(pwc.inval_done),
            inv.idle.eq(~s1.lookup & ~s1.fill & ~s2.lookup & ~s2.fill & ~tlb_fill.valid
                        & tlb.inval.ready & pwc.inval.ready),
            count["invalidations"].eq(self.inval.valid & self.inval.ready),
            count["walk_faults"].eq(sum(misses.release[i] & ~misses.ok[i] for i in range(N))),
            count["stale_drops"].eq(sum(misses.release[i] & misses.ok[i] & misses.stale[i]
                                        for i in range(N))),
        ]
        # Each increment is registered before it is added, so no counter's carry chain
        # hangs off the events that decide it; a counter runs one cycle behind.
        for name in COUNTERS:
            field, step = getattr(self.counters, name), Signal(8, name=f"step_{name}")
            m.d.sync += [step.eq(count[name]), field.eq(field + step)]
        return m

    def _next_fill(self, m, misses, pool):
        """The next TLB fill, from registers: ``valid`` and ``entry`` (walk ``walk``'s
        translation, its key, and whether it is ``huge``), loaded (``load``, of walk
        ``load_walk``) from the lowest walk that owes one while empty, emptied when taken
        (``take``, an input) or when an invalidation makes every walk stale (the entry is
        then dropped, as the walk's fill would be). Each walk's entry is formed from its
        own registers and only then picked."""
        shape = data.StructLayout({"walk": max(1, (self.num_walkers - 1).bit_length()),
                                   "huge": 1, "vm": self.vm_bits, "gen": GEN_BITS,
                                   "private": 1, "vpn": VPN_BITS, "level": 3, "allow": 3,
                                   "data": TLB_DATA_LAYOUT.size})
        entries = []
        for n, (r, walk, key) in enumerate(zip(pool.result, pool.walk, misses.key)):
            result, level = r.payload, r.payload.level
            # A write is served from the entry only if it cannot owe a D update.
            write_ok = (walk.access == ACCESS_IDS["write"]) | ~walk.params.dirty
            one = Signal(shape, name=f"fill_entry{n}")
            m.d.comb += [
                one.walk.eq(n), one.huge.eq(level != 1), one.vm.eq(key.vm),
                one.gen.eq(key.gen), one.private.eq(key.private),
                one.vpn.eq(vpn_of(walk.gpa) & ~page_mask(level)), one.level.eq(level),
                one.allow.eq(each_arch(walk.params.arch,
                                       lambda a: a.tlb_allow(result.perms, write_ok), 3)),
                one.data.eq(Cat(result.hpa[12:], result.perms, result.memtype)),
            ]
            entries.append(one)
        fill = Signal(data.StructLayout({"valid": 1, "take": 1, "entry": shape, "load": 1,
                                         "load_walk": len(misses.fill_walk)}))
        entry = Signal(shape, name="next_fill", reset_less=True)
        valid = Signal(name="next_fill_valid")
        m.d.comb += [fill.valid.eq(valid), fill.entry.eq(entry),
                     fill.load.eq(~valid & misses.wants_fill.any()),
                     fill.load_walk.eq(misses.fill_walk)]
        # The miss table notes a load (``filled``) at once, so no entry is copied twice.
        with m.If(~valid):
            m.d.sync += [valid.eq(fill.load), entry.eq(pick(entries, fill.load_walk))]
        with m.If(fill.take | misses.retire):
            m.d.sync += valid.eq(0)
        return fill

    def _start_walks(self, m, pool, start, s2, params, root, in_range, go, to, count):
        """Walk ``s2``'s request on engine ``to`` when ``go``, from the walk cache's start
        when it hit, else from the root entry; the first read goes out this cycle."""
        sp = pool.start.payload
        m.d.comb += [
            pool.start.valid.eq(go), pool.start_to.eq(to),
            sp.gpa.eq(s2.req.gpa), sp.access.eq(s2.req.access), sp.tag.eq(s2.req.tag),
            sp.params.eq(params), sp.root_addr.eq(root), sp.in_range.eq(in_range),
            sp.level.eq(Mux(start.hit, start.level, params.levels)),
            sp.addr.eq(Mux(start.hit, start.addr, root)),
            sp.acc.eq(Mux(start.hit, start.acc, ALL_PERMS)),
        ]
        m.d.comb += [
            count["walks"].eq(go),
            count["pwc_hits"].eq(go & start.hit),
            count["pwc_reads_saved"].eq(Mux(go & start.hit, params.levels - start.level, 0)),
        ]

    def _respond(self, m, resp, hit_turn, hit_valid, hit, walk_resp):
        """The response port: on the hits' turn the TLB hit (``hit``, of
        :attr:`_hit_layout`) if ``hit_valid``, else a walk's answer."""
        rp = resp.payload
        res = data.View(self._hit_layout, hit)
        m.d.comb += resp.valid.eq(Mux(hit_turn, hit_valid, walk_resp.valid))
        with m.If(hit_turn):
            entry = data.View(TLB_DATA_LAYOUT, res.data)
            mask = Const(0xfff, PA_WIDTH)
            for level in range(2, 5):
                mask = Mux(res.level == level, Const((1 << page_shift(level)) - 1, PA_WIDTH), mask)
            m.d.comb += [rp.ok.eq(1), rp.level.eq(res.level), rp.tag.eq(res.tag),
                         rp.hpa.eq((Cat(Const(0, 12), entry.frame) & ~mask)
                                   | (res.offset & mask)),
                         rp.perms.eq(entry.perms), rp.memtype.eq(entry.memtype)]
        with m.Else():
            w = walk_resp.payload
            answer(m, rp, w.result, tag=w.tag, arch=w.arch, access=w.access, gpa=w.gpa,
                   nxe=w.nxe)

def vpn_of(gpa):
    """The page number the TLB and walk cache are keyed by."""
    return gpa[12:12 + VPN_BITS]



def _stage_register(stage, name):
    """A pipeline stage of layout ``stage``, whose first three fields say what it holds
    (``lookup``, ``fill``, ``replay``): only they are reset, the rest is read only when
    one of them is set."""
    flags = Signal(3, name=f"{name}_holds")
    body = Signal(stage.size - 3, name=name, reset_less=True)
    return data.View(stage, Cat(flags, body))
