"""The stage-2 MMU top: TLB, page-walk cache, several walkers on one AXI4 manager.

Request path. A request is looked up in the TLB (and the walk cache) on the cycle it is
accepted; the cycle after, a hit whose cached permissions allow the access is answered,
and a miss joins an outstanding walk of the same VM, 4 KiB page and access kind, or
starts a walk on a free :class:`hw.walker.Walker`. Hits are answered while walks are
outstanding; responses come back out of order and carry the request's tag.

A hit is only taken when it gives exactly what a walk would: the TLB keeps, per entry,
the accesses it may serve (``allow``). A write is allowed only when the walk that filled
the entry was a write or the VM does not track dirty bits, so a write never skips the
D-bit update it owes (SDM Vol. 3C §29.3.5, APM Vol. 2 §5.4.2, Privileged spec Svadu /
Svade); anything not allowed is walked, which also produces the architecture's fault
report. Faults are never cached: only an ``ok`` walker response (whose A/D updates all
succeeded, else the walker reports a fault) fills the TLB and the walk cache.

Invalidation. Every walker slot carries a ``stale`` bit, set for all slots when an
invalidation is accepted and cleared when a slot starts a new walk. A stale walk still
answers its own requests (they were issued before the invalidation) but never fills
the TLB or the walk cache, and no later miss joins it. This is the "epoch" of the
issue with an epoch per walk that cannot wrap. Rocket's PTW uses the same idea (an
``invalidated`` flag on the in-flight walk); CVA6 and XiangShan both shipped bugs where
a walk in flight across an sfence refilled its result.

Walk cache. :class:`hw.walker.Walker` always starts at the root, so the MMU sits
between each walker and the bus: the walk cache is looked up with the TLB, and when the
walker reads a level whose entry the walk cache held at the start of the walk, the MMU
answers the read itself on the next cycle. A four-level walk whose upper levels hit
makes one memory read (it still spends two cycles per cached level in the walker's FSM;
docs/mmu.md describes the walker port that would remove them). The walk cache is filled,
after a successful walk only, with the non-leaf words the walker read on the bus.

Confidential VMs. For a context with ``td`` set (TDX-style: Intel TDX module spec,
"Secure EPT"; KVM's mirror/external roots), a GPA's shared bit picks its space: a
private GPA walks ``ext_root``, a shared GPA ``root``, both with the full GPA. TLB,
walk-cache and merge keys are (VM, root of the walk, ``private``, page number with the
shared bit cleared), so the two translations of one GFN never alias, and a range
invalidation names GFNs without the shared bit (as the model's flush API does) and
selects the space with ``space``.
"""

from amaranth import Array, Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .axi import AXI4Signature
from .decode import ACCESS_IDS, AD_IDS, ALL_CONSTANTS, ARCH_IDS, KIND_IDS, MAX_LEVELS, PA_WIDTH
from .pwc import PageWalkCache
from .tlb import TLB, VPN_BITS, inval_layout
from .walker import (CONTEXT_LAYOUT, PERMS_LAYOUT, ContextWriteSignature, Walker,
                     check_parameters, is_private, request_layout, response_layout,
                     walk_root)

__all__ = ["MMU", "COUNTERS", "counters_layout", "TLB_DATA_LAYOUT"]

#: Performance counters, in the order of the ``counters`` port.
COUNTERS = (
    "requests",         # requests accepted
    "tlb_hits",         # answered from the TLB
    "tlb_misses",       # looked up and missed (or the access was not allowed)
    "merged",           # misses that joined an outstanding walk
    "walks",            # walks started
    "walk_faults",      # walks that ended in a fault
    "tlb_fills",        # TLB fills
    "stale_drops",      # successful walks not filled because an invalidation overtook them
    "pwc_hits",         # walks whose upper levels hit in the walk cache
    "pwc_reads_saved",  # PTE reads answered by the walk cache instead of memory
    "pwc_fills",        # walk-cache fills
    "invalidations",    # invalidations accepted
)

ROOT_BITS = PA_WIDTH - 12
#: TLB entry payload: the page frame (HPA >> 12), what the walk reported and the accesses
#: a hit may serve (bit ``ACCESS_IDS[a]``).
TLB_DATA_LAYOUT = data.StructLayout({"frame": PA_WIDTH - 12, "perms": PERMS_LAYOUT,
                                     "memtype": 3, "allow": 3})


def counters_layout(width):
    return data.StructLayout({name: width for name in COUNTERS})


def space_key(ctx, gpa):
    """``(root tag, private, vpn)`` of ``gpa`` under the context view ``ctx``: the root
    the walk starts from, the space, and the page number without the shared bit."""
    shared = Mux(ctx.td, Const(1, 64) << ctx.shared_bit, 0)
    return walk_root(ctx, gpa)[12:], is_private(ctx, gpa), (gpa & ~shared)[12:64]


class MMU(wiring.Component):
    """Stage-2 MMU: TLB + walk cache in front of ``num_walkers`` page-table walkers.

    Parameters
    ----------
    num_walkers : int
        Walks in flight (1 to 16).
    num_vms : int
        Context table entries, a power of two.
    tag_bits : int
        Request tag width, echoed in the response.
    tlb_sets, tlb_ways : int
        TLB geometry (powers of two).
    pwc_entries : int
        Walk-cache entries per level (levels 2 to 5).
    pending : int
        Misses waiting for a walk (each outstanding request that missed holds one).
    axi_id_width : int
        Must hold a walker index: the ID of every transaction is its walker's index.
    counter_width : int

    Members
    -------
    req : In(stream.Signature(request_layout(vm_bits, tag_bits)))
        One request per cycle while nothing blocks (a full pending table, or a miss
        waiting for a walker, or an invalidation).
    resp : Out(stream.Signature(response_layout(tag_bits)))
        One response per request, in any order.
    ctx : In(ContextWriteSignature(vm_bits))
        Context table write. TLB and walk-cache entries are tagged by VM index, root
        and space: changing a VM's root (or ``ext_root``) needs no invalidation;
        changing anything else of a VM (format, A/D mode, physical-address width, TD
        flag, shared bit) needs a VM invalidation.
    inval : In(stream.Signature(inval_layout(vm_bits)))
        ``kind`` ALL / VM / RANGE (``start`` and ``count`` in 4 KiB pages, without a
        TD's shared bit), the flush API of :mod:`sw_model.tdp.flush`, and ``space``
        (:class:`hw.tlb.InvalSpace`: BOTH, SHARED or PRIVATE entries). Requests
        accepted after it see its effect.
    inval_done : Out(1)
        One-cycle pulse when the invalidation is complete: no TLB or walk-cache entry it
        covers remains, and no walk that started before it can fill.
    axi : Out(AXI4Signature(addr_width=64, data_width=64, id_width=axi_id_width))
    counters : Out(counters_layout(counter_width))
        Free-running, wrapping counters named by :data:`COUNTERS`.

    The submodules are reachable as ``tlb``, ``pwc`` and ``walkers`` (for waveforms).
    """

    def __init__(self, *, num_walkers=4, num_vms=4, tag_bits=8, tlb_sets=16, tlb_ways=4,
                 pwc_entries=4, pending=8, axi_id_width=4, counter_width=32):
        check_parameters(num_vms=num_vms, tag_bits=tag_bits, axi_id_width=axi_id_width)
        if not isinstance(num_walkers, int) or not 1 <= num_walkers <= 16:
            raise ValueError(f"num_walkers must be an integer in [1, 16], got {num_walkers!r}")
        if num_walkers > 1 << axi_id_width:
            raise ValueError(f"axi_id_width {axi_id_width} cannot name {num_walkers} walkers")
        if not isinstance(pending, int) or not num_walkers <= pending <= 64:
            raise ValueError(f"pending must be an integer in [num_walkers, 64], got {pending!r}")
        if not isinstance(counter_width, int) or not 1 <= counter_width <= 64:
            raise ValueError(f"counter_width must be an integer in [1, 64], "
                             f"got {counter_width!r}")
        self.num_walkers, self.num_vms, self.tag_bits = num_walkers, num_vms, tag_bits
        self.vm_bits = max(1, (num_vms - 1).bit_length())
        self.pending = pending
        # The parts' errors name their own parameters ("sets ..."): prefix the MMU's.
        try:
            self.tlb = TLB(sets=tlb_sets, ways=tlb_ways, vm_bits=self.vm_bits,
                           root_bits=ROOT_BITS, data_width=TLB_DATA_LAYOUT.size, max_level=4)
        except ValueError as e:
            raise ValueError(f"tlb_{e}") from None
        try:
            self.pwc = PageWalkCache(entries=pwc_entries, vm_bits=self.vm_bits,
                                     root_bits=ROOT_BITS, data_width=64, max_level=MAX_LEVELS)
        except ValueError as e:
            raise ValueError(f"pwc_{e}") from None
        self.walkers = [Walker(num_vms=num_vms, tag_bits=1, axi_id_width=1)
                        for _ in range(num_walkers)]
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
        N, P = self.num_walkers, self.pending
        m.submodules.tlb = tlb = self.tlb
        m.submodules.pwc = pwc = self.pwc
        walkers = self.walkers
        for i, w in enumerate(walkers):
            m.submodules[f"walker{i}"] = w
        WRITE = ACCESS_IDS["write"]
        GST, NPT, EPT = ARCH_IDS["gstage"], ARCH_IDS["npt"], ARCH_IDS["ept"]

        # One-cycle increments; several walkers may be answered from the walk cache at once.
        counts = {name: Signal(1, name=f"count_{name}") for name in COUNTERS
                  if name != "pwc_reads_saved"}
        saved = Signal(range(self.num_walkers + 1))

        # -- contexts: forwarded to every walker, and a copy for tags and fill rules ----
        contexts = Array(Signal(CONTEXT_LAYOUT.size, name=f"context{i}")
                         for i in range(self.num_vms))
        with m.If(self.ctx.valid):
            m.d.sync += contexts[self.ctx.index].eq(self.ctx.data.as_value())
        for w in walkers:
            m.d.comb += [w.ctx.valid.eq(self.ctx.valid), w.ctx.index.eq(self.ctx.index),
                         w.ctx.data.eq(self.ctx.data)]

        def fmt_info(fmt_id):
            """(arch id, levels) of a format id, as signals."""
            arch, levels = Signal(2), Signal(3)
            with m.Switch(fmt_id):
                for c in ALL_CONSTANTS:
                    with m.Case(c.fmt_id):
                        m.d.comb += [arch.eq(c.arch_id), levels.eq(c.levels)]
            return arch, levels

        # -- stage 0: TLB and walk-cache lookup ---------------------------------------
        req = self.req
        ctx0 = data.View(CONTEXT_LAYOUT, contexts[req.payload.vm])
        root0, private0, vpn0 = space_key(ctx0, req.payload.gpa)
        key0 = {"vm": req.payload.vm, "root": root0, "private": private0, "vpn": vpn0}
        m.d.comb += [
            # A pending invalidation stops new lookups so the lookup stage drains.
            tlb.lookup.valid.eq(req.valid & ~self.inval.valid),
            tlb.lookup.payload.vm.eq(key0["vm"]), tlb.lookup.payload.root.eq(key0["root"]),
            tlb.lookup.payload.vpn.eq(key0["vpn"]),
            tlb.lookup.payload.private.eq(key0["private"]),
            req.ready.eq(tlb.lookup.ready & ~self.inval.valid),
            pwc.lookup.valid.eq(req.valid & req.ready),
            pwc.lookup.payload.vm.eq(key0["vm"]), pwc.lookup.payload.root.eq(key0["root"]),
            pwc.lookup.payload.vpn.eq(key0["vpn"]),
            pwc.lookup.payload.private.eq(key0["private"]),
        ]
        s1 = Signal(request_layout(self.vm_bits, self.tag_bits))
        with m.If(req.valid & req.ready):
            m.d.sync += s1.eq(req.payload)
            m.d.comb += counts["requests"].eq(1)

        # -- stage 1: hit, merge or start a walk ------------------------------------------
        res = tlb.result
        hd = data.View(TLB_DATA_LAYOUT, res.payload.data)
        s1_ctx = data.View(CONTEXT_LAYOUT, contexts[s1.vm])
        s1_arch, s1_levels = fmt_info(s1_ctx.format)
        # The root a walk started now uses: the walker reads the context in this cycle,
        # so a context write between lookup and walk tags the entries it fills correctly.
        s1_root_k, s1_private_k, s1_vpn_k = space_key(s1_ctx, s1.gpa)
        s1_root, s1_private, s1_vpn = Signal(ROOT_BITS), Signal(), Signal(VPN_BITS)
        m.d.comb += [s1_root.eq(s1_root_k), s1_private.eq(s1_private_k),
                     s1_vpn.eq(s1_vpn_k)]
        hit_ok = res.payload.hit & hd.allow.bit_select(s1.access, 1)
        hit_mask = Signal(PA_WIDTH)
        with m.Switch(res.payload.level):
            for level in range(1, 5):
                with m.Case(level):
                    m.d.comb += hit_mask.eq((1 << (12 + 9 * (level - 1))) - 1)
        hit_hpa = (Cat(Const(0, 12), hd.frame) & ~hit_mask) | (s1.gpa[:PA_WIDTH] & hit_mask)

        # walker slots
        busy = Signal(N)
        stale = Signal(N)
        has_res = Signal(N)
        w_vm = [Signal(self.vm_bits, name=f"w{i}_vm") for i in range(N)]
        w_root = [Signal(ROOT_BITS, name=f"w{i}_root") for i in range(N)]
        w_vpn = [Signal(VPN_BITS, name=f"w{i}_vpn") for i in range(N)]
        w_private = [Signal(name=f"w{i}_private") for i in range(N)]
        w_access = [Signal(2, name=f"w{i}_access") for i in range(N)]
        w_fmt = [Signal(3, name=f"w{i}_fmt") for i in range(N)]
        w_dirty_ok = [Signal(name=f"w{i}_dirty_ok") for i in range(N)]
        w_res = [Signal(response_layout(1), name=f"w{i}_res") for i in range(N)]
        pwc_todo = [Signal(MAX_LEVELS - 1, name=f"w{i}_pwc_todo") for i in range(N)]

        # pending table: one slot per request waiting for a walk
        p_valid = Signal(P)
        p_walker = Array(Signal(range(N), name=f"p{j}_walker") for j in range(P))
        p_tag = Array(Signal(self.tag_bits, name=f"p{j}_tag") for j in range(P))
        p_gpa = Array(Signal(64, name=f"p{j}_gpa") for j in range(P))

        p_free = Signal(range(P))
        p_any_free = Signal()
        for j in reversed(range(P)):
            with m.If(~p_valid[j]):
                m.d.comb += [p_free.eq(j), p_any_free.eq(1)]
        w_free = Signal(range(N))
        w_any_free = Signal()
        for i in reversed(range(N)):
            with m.If(~busy[i]):
                m.d.comb += [w_free.eq(i), w_any_free.eq(1)]
        merge_into = Signal(range(N))
        merge_hit = Signal()
        for i in reversed(range(N)):
            with m.If(busy[i] & ~stale[i] & ~has_res[i] & (w_vm[i] == s1.vm)
                      & (w_root[i] == s1_root) & (w_private[i] == s1_private)
                      & (w_vpn[i] == s1_vpn)
                      & (w_access[i] == s1.access)):
                m.d.comb += [merge_into.eq(i), merge_hit.eq(1)]

        # response arbitration: a hit or a walk result, alternating when both wait
        drain_sel = Signal(range(P))
        drain_any = Signal()
        for j in reversed(range(P)):
            with m.If(p_valid[j] & has_res.bit_select(p_walker[j], 1)):
                m.d.comb += [drain_sel.eq(j), drain_any.eq(1)]
        prefer_drain = Signal()
        take_hit = Signal()
        take_drain = Signal()
        m.d.comb += [
            take_hit.eq(res.valid & hit_ok & ~(drain_any & prefer_drain)),
            take_drain.eq(drain_any & ~take_hit),
        ]
        miss_go = Signal()
        start_walk = Signal()
        m.d.comb += [
            miss_go.eq(res.valid & ~hit_ok & p_any_free & (merge_hit | w_any_free)),
            start_walk.eq(miss_go & ~merge_hit),
        ]
        resp = self.resp
        m.d.comb += res.ready.eq((take_hit & resp.ready) | miss_go)
        with m.If(resp.valid & resp.ready):
            m.d.sync += prefer_drain.eq(take_hit)

        rp = resp.payload
        d_walker = p_walker[drain_sel]
        d_gpa = p_gpa[drain_sel]
        d_res = data.View(response_layout(1), Array(w_res)[d_walker])
        d_fmt = Array(w_fmt)[d_walker]
        d_arch, _ = fmt_info(d_fmt)
        with m.If(take_hit):
            m.d.comb += [
                resp.valid.eq(1), rp.ok.eq(1), rp.level.eq(res.payload.level),
                rp.hpa.eq(hit_hpa), rp.perms.eq(hd.perms), rp.memtype.eq(hd.memtype),
                rp.tag.eq(s1.tag),
            ]
            with m.If(resp.ready):
                m.d.comb += counts["tlb_hits"].eq(1)
        with m.Elif(take_drain):
            # A merged request shares the walk's 4 KiB page: only the page offset (and
            # RISC-V htval = GPA >> 2) differ from the request that started the walk.
            m.d.comb += [
                resp.valid.eq(1),
                rp.ok.eq(d_res.ok), rp.kind.eq(d_res.kind), rp.level.eq(d_res.level),
                rp.hpa.eq(Cat(d_gpa[:12], d_res.hpa[12:])), rp.perms.eq(d_res.perms),
                rp.memtype.eq(d_res.memtype), rp.pte_addr.eq(d_res.pte_addr),
                rp.pte_addr_valid.eq(d_res.pte_addr_valid), rp.report.eq(d_res.report),
                rp.tag.eq(p_tag[drain_sel]),
            ]
            with m.If((d_arch == GST) & ~d_res.ok & (d_res.kind != KIND_IDS["bus_error"])):
                m.d.comb += rp.report.htval.eq(d_gpa >> 2)
            with m.If(resp.ready):
                m.d.sync += p_valid.bit_select(drain_sel, 1).eq(0)

        # miss: take a pending slot, join or start a walk
        with m.If(res.valid & res.ready & ~hit_ok):
            m.d.comb += counts["tlb_misses"].eq(1)
        target = Mux(merge_hit, merge_into, w_free)
        with m.If(miss_go):
            m.d.sync += [p_valid.bit_select(p_free, 1).eq(1), p_walker[p_free].eq(target),
                         p_tag[p_free].eq(s1.tag), p_gpa[p_free].eq(s1.gpa)]
            with m.If(merge_hit):
                m.d.comb += counts["merged"].eq(1)
        with m.If(start_walk):
            m.d.comb += counts["walks"].eq(1)
            with m.If(pwc.result.hit):
                m.d.comb += counts["pwc_hits"].eq(1)
        dirty_ok = (s1.access == WRITE) | ((s1_arch != NPT) & (s1_ctx.ad == AD_IDS["off"]))
        for i, w in enumerate(walkers):
            go = start_walk & (w_free == i)
            m.d.comb += [
                w.req.valid.eq(go), w.req.payload.gpa.eq(s1.gpa),
                w.req.payload.access.eq(s1.access), w.req.payload.vm.eq(s1.vm),
                w.req.payload.tag.eq(0),
            ]
            with m.If(go):
                m.d.sync += [busy[i].eq(1), stale[i].eq(0), w_vm[i].eq(s1.vm),
                             w_root[i].eq(s1_root), w_vpn[i].eq(s1_vpn),
                             w_private[i].eq(s1_private),
                             w_access[i].eq(s1.access), w_fmt[i].eq(s1_ctx.format),
                             w_dirty_ok[i].eq(dirty_ok)]

        # -- walk completion: one walker result accepted per cycle, fills the TLB ------
        done_sel = Signal(range(N))
        done_any = Signal()
        for i in reversed(range(N)):
            with m.If(walkers[i].resp.valid & ~has_res[i]):
                m.d.comb += [done_sel.eq(i), done_any.eq(1)]
        wr = data.View(response_layout(1),
                       Array(w.resp.payload.as_value() for w in walkers)[done_sel])
        for i, w in enumerate(walkers):
            m.d.comb += w.resp.ready.eq(done_any & (done_sel == i))
            with m.If(done_any & (done_sel == i)):
                m.d.sync += [w_res[i].eq(wr), has_res[i].eq(1)]
        c_stale = stale.bit_select(done_sel, 1)
        c_arch, c_levels = fmt_info(Array(w_fmt)[done_sel])
        p = wr.perms
        allow_user = (c_arch == EPT) | p.u
        c_dirty = Array(w_dirty_ok)[done_sel]
        allow = Cat(allow_user & p.r, allow_user & p.w & c_dirty, allow_user & p.x)
        fill = tlb.fill.payload
        fd = data.View(TLB_DATA_LAYOUT, fill.data)
        m.d.comb += [
            tlb.fill.valid.eq(done_any & wr.ok & ~c_stale),
            fill.vm.eq(Array(w_vm)[done_sel]), fill.root.eq(Array(w_root)[done_sel]),
            fill.vpn.eq(Array(w_vpn)[done_sel]), fill.level.eq(wr.level),
            fill.private.eq(Array(w_private)[done_sel]),
            fd.frame.eq(wr.hpa[12:]), fd.perms.eq(wr.perms), fd.memtype.eq(wr.memtype),
            fd.allow.eq(allow),
        ]
        with m.If(done_any):
            with m.If(~wr.ok):
                m.d.comb += counts["walk_faults"].eq(1)
            with m.Elif(c_stale):
                m.d.comb += counts["stale_drops"].eq(1)
            with m.Else():
                m.d.comb += counts["tlb_fills"].eq(1)

        # -- the walk cache in front of each walker's reads --------------------------
        # Per walker: the level of its next read (a read after an A/D update is a walk
        # restart at the root), the words it read (to fill the walk cache when it
        # succeeds) and the cached entries found when it started. A read of a level the
        # walk cache holds is answered here on the next cycle and never reaches the bus.
        wa = [w.axi for w in walkers]
        # Index l - 2 holds level l (levels 2 to MAX_LEVELS), as in the walk cache.
        pc_hits = [Signal(MAX_LEVELS - 1, name=f"w{i}_pc_hits") for i in range(N)]
        pc_words = [[Signal(64, name=f"w{i}_pc_l{l}") for l in range(2, MAX_LEVELS + 1)]
                    for i in range(N)]
        words = [[Signal(64, name=f"w{i}_word_l{l}") for l in range(2, MAX_LEVELS + 1)]
                 for i in range(N)]
        # The A bit a successful walk has set in every non-leaf entry it used (x86 with
        # A/D on: SDM Vol. 3C §29.3.5, APM Vol. 2 §5.4.2; G-stage leaves only).
        w_a_mask = [Signal(64, name=f"w{i}_a_mask") for i in range(N)]
        a_mask_new = Signal(64)
        with m.Switch(s1_ctx.format):
            for c in ALL_CONSTANTS:
                with m.Case(c.fmt_id):
                    if c.arch == "npt":
                        m.d.comb += a_mask_new.eq(1 << c.bit_a)
                    elif c.arch == "ept":
                        m.d.comb += a_mask_new.eq(Mux(s1_ctx.ad == AD_IDS["hardware"],
                                                      1 << c.bit_a, 0))
        local = Signal(N)
        lr_valid = Signal(N)
        lr_data = [Signal(64, name=f"w{i}_lr_data") for i in range(N)]
        for i, (w, a) in enumerate(zip(walkers, wa)):
            next_level = Signal(3, name=f"w{i}_next_level")
            rd_level = Signal(3, name=f"w{i}_rd_level")
            restart = Signal(name=f"w{i}_restart")
            _, levels_i = fmt_info(w_fmt[i])
            lvl = Mux(restart, levels_i, next_level)
            with m.If(w.req.valid & w.req.ready):
                m.d.sync += [next_level.eq(s1_levels), restart.eq(0),
                             pc_hits[i].eq(pwc.result.hits), w_a_mask[i].eq(a_mask_new)]
                for k in range(MAX_LEVELS - 1):
                    m.d.sync += pc_words[i][k].eq(pwc.result.data[k])
            m.d.comb += local[i].eq(a.arvalid & (lvl >= 2)
                                    & pc_hits[i].bit_select((lvl - 2)[:3], 1))
            with m.If(a.arvalid & a.arready):
                m.d.sync += [rd_level.eq(lvl), next_level.eq(lvl - 1), restart.eq(0)]
            with m.If(lr_valid[i] & a.rready):
                m.d.sync += lr_valid[i].eq(0)
            with m.If(local[i]):
                m.d.sync += lr_valid[i].eq(1)
                with m.Switch(lvl):
                    for l in range(2, MAX_LEVELS + 1):
                        with m.Case(l):
                            m.d.sync += lr_data[i].eq(pc_words[i][l - 2])
            with m.If(a.awvalid & a.awready):
                # An A/D update may fail and restart the walk: memory changed under it,
                # so the restarted walk reads memory only.
                m.d.sync += [restart.eq(1), pc_hits[i].eq(0)]
            with m.If(a.rvalid & a.rready & ~restart):
                with m.Switch(rd_level):
                    for l in range(2, MAX_LEVELS + 1):
                        with m.Case(l):
                            m.d.sync += words[i][l - 2].eq(a.rdata)
            # Levels to fill once the walk succeeds: every non-leaf level above the leaf.
            with m.If(done_any & (done_sel == i)):
                todo = Cat((l > wr.level) & (l <= levels_i) for l in range(2, MAX_LEVELS + 1))
                m.d.sync += pwc_todo[i].eq(Mux(wr.ok & ~c_stale, todo, 0))
        m.d.comb += saved.eq(sum(local[i] for i in range(N)))

        # -- AXI: one manager, ID = walker index ---------------------------------------
        axi = self.axi
        ar_lock, ar_owner = Signal(), Signal(range(N))
        ar_sel = Signal(range(N))
        ar_req = Signal(N)
        for i in reversed(range(N)):
            m.d.comb += ar_req[i].eq(wa[i].arvalid & ~local[i])
            with m.If(ar_req[i]):
                m.d.comb += ar_sel.eq(i)
        ar_cur = Mux(ar_lock, ar_owner, ar_sel)
        for name in ("araddr", "arlen", "arsize", "arburst", "arlock", "arcache", "arprot"):
            m.d.comb += getattr(axi, name).eq(Array(getattr(a, name) for a in wa)[ar_cur])
        m.d.comb += [axi.arid.eq(ar_cur), axi.arvalid.eq(ar_req.bit_select(ar_cur, 1))]
        for i, a in enumerate(wa):
            m.d.comb += a.arready.eq(local[i] | (axi.arready & (ar_cur == i) & ar_req[i]))
        with m.If(axi.arvalid & ~axi.arready):
            m.d.sync += [ar_lock.eq(1), ar_owner.eq(ar_cur)]
        with m.Else():
            m.d.sync += ar_lock.eq(0)

        # AW and W: the AtomicCompare's AW and both W beats belong to one walker.
        w_lock, w_owner, aw_sent, w_sent = Signal(), Signal(range(N)), Signal(), Signal()
        aw_sel = Signal(range(N))
        aw_any = Signal()
        for i in reversed(range(N)):
            with m.If(walkers[i].axi.awvalid):
                m.d.comb += [aw_sel.eq(i), aw_any.eq(1)]
        w_cur = Mux(w_lock, w_owner, aw_sel)
        w_active = w_lock | aw_any
        for name in ("awaddr", "awlen", "awsize", "awburst", "awlock", "awcache", "awprot",
                     "awatop", "wdata", "wstrb", "wlast"):
            m.d.comb += getattr(axi, name).eq(Array(getattr(a, name) for a in wa)[w_cur])
        m.d.comb += [
            axi.awid.eq(w_cur),
            axi.awvalid.eq(w_active & ~aw_sent & Array(a.awvalid for a in wa)[w_cur]),
            axi.wvalid.eq(w_active & ~w_sent & Array(a.wvalid for a in wa)[w_cur]),
        ]
        for i, a in enumerate(wa):
            m.d.comb += [a.awready.eq(w_active & ~aw_sent & (w_cur == i) & axi.awready),
                         a.wready.eq(w_active & ~w_sent & (w_cur == i) & axi.wready)]
        aw_hs = axi.awvalid & axi.awready
        wl_hs = axi.wvalid & axi.wready & axi.wlast
        with m.If(w_active):
            with m.If((aw_sent | aw_hs) & (w_sent | wl_hs)):
                m.d.sync += [w_lock.eq(0), aw_sent.eq(0), w_sent.eq(0)]
            with m.Else():
                m.d.sync += [w_lock.eq(1), w_owner.eq(w_cur), aw_sent.eq(aw_sent | aw_hs),
                             w_sent.eq(w_sent | wl_hs)]

        # R and B by ID; a walker's read answered from the walk cache comes from lr_*.
        id_bits = max(1, (N - 1).bit_length())
        for i, a in enumerate(wa):
            m.d.comb += [
                a.rvalid.eq(lr_valid[i] | (axi.rvalid & (axi.rid == i))),
                a.rdata.eq(Mux(lr_valid[i], lr_data[i], axi.rdata)),
                a.rresp.eq(Mux(lr_valid[i], 0, axi.rresp)),
                a.rlast.eq(lr_valid[i] | axi.rlast), a.rid.eq(0),
                a.bvalid.eq(axi.bvalid & (axi.bid == i)), a.bresp.eq(axi.bresp), a.bid.eq(0),
            ]
        m.d.comb += [
            axi.rready.eq(Array(a.rready for a in wa)[axi.rid[:id_bits]] & (axi.rid < N)),
            axi.bready.eq(Array(a.bready for a in wa)[axi.bid[:id_bits]] & (axi.bid < N)),
        ]

        # -- walk-cache fills: one per cycle, the lowest walker, its highest level first --
        f_w = Signal(range(N))
        f_l = Signal(3)
        f_any = Signal()
        for i in reversed(range(N)):
            for l in range(2, MAX_LEVELS + 1):
                with m.If(pwc_todo[i][l - 2]):
                    m.d.comb += [f_w.eq(i), f_l.eq(l), f_any.eq(1)]
        pf = pwc.fill.payload
        m.d.comb += [
            pwc.fill.valid.eq(f_any), pf.vm.eq(Array(w_vm)[f_w]), pf.root.eq(Array(w_root)[f_w]),
            pf.vpn.eq(Array(w_vpn)[f_w]), pf.level.eq(f_l),
            pf.private.eq(Array(w_private)[f_w]),
            pf.data.eq(Array(Array(w) for w in words)[f_w][(f_l - 2)[:3]]
                       | Array(w_a_mask)[f_w]),
        ]
        with m.If(f_any):
            m.d.comb += counts["pwc_fills"].eq(1)
            for i in range(N):
                with m.If(f_w == i):
                    m.d.sync += pwc_todo[i].bit_select((f_l - 2)[:3], 1).eq(0)

        # -- a walker slot is free once its result is delivered and its fills are done --
        for i in range(N):
            refs = Signal(name=f"w{i}_refs")
            m.d.comb += refs.eq(Cat(p_valid[j] & (p_walker[j] == i) for j in range(P)).any())
            with m.If(has_res[i] & ~refs & ~pwc_todo[i].any()):
                m.d.sync += [busy[i].eq(0), has_res[i].eq(0)]

        # -- invalidation ------------------------------------------------------------------
        inval = self.inval
        tlb_done, pwc_done, inv_busy = Signal(), Signal(), Signal()
        m.d.comb += [
            tlb.inval.payload.eq(inval.payload), pwc.inval.payload.eq(inval.payload),
            inval.ready.eq(tlb.inval.ready & pwc.inval.ready & ~inv_busy),
            tlb.inval.valid.eq(inval.valid & inval.ready),
            pwc.inval.valid.eq(inval.valid & inval.ready),
        ]
        with m.If(inval.valid & inval.ready):
            m.d.comb += counts["invalidations"].eq(1)
            m.d.sync += [stale.eq(~0), inv_busy.eq(1), tlb_done.eq(0), pwc_done.eq(0)]
            for i in range(N):
                m.d.sync += pwc_todo[i].eq(0)
        with m.If(inv_busy):
            with m.If(tlb.inval_done):
                m.d.sync += tlb_done.eq(1)
            with m.If(pwc.inval_done):
                m.d.sync += pwc_done.eq(1)
            with m.If((tlb_done | tlb.inval_done) & (pwc_done | pwc.inval_done)):
                m.d.sync += inv_busy.eq(0)
                m.d.comb += self.inval_done.eq(1)

        # -- counters ----------------------------------------------------------------------
        for name in COUNTERS:
            field = getattr(self.counters, name)
            step = saved if name == "pwc_reads_saved" else counts[name]
            m.d.sync += field.eq(field + step)
        return m
