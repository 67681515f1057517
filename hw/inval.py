"""The invalidation sequencer: the MMU's ``inval`` port turned into cache operations.

An invalidation waits until no request or fill is in the pipeline and no fill waits
to enter it (requests are held meanwhile, fills are not), then retires every walk in
flight (none of them will fill) and:

* ALL: clears the TLB and the walk cache (one cycle; a single space sweeps the TLB);
* VM: starts a new generation of the VM's space (:mod:`hw.gens`) and clears its walk-cache
  entries: its TLB entries no longer match and age out;
* RANGE: sweeps the TLB and walk cache for the VM's entries with a page in
  ``[start, start + count)``. A TD's range names GFNs without the shared bit, and its
  shared entries keep the bit in their page numbers: its private entries are swept
  with the range as named, its shared ones with the range moved up by the shared bit
  (two sweeps for both spaces), so the caches compare page numbers as they are.

``done`` pulses, from a register, the cycle after every cache has finished. A context
write also starts a new generation of its VM. A generation that wraps to 0 has the VM's
TLB entries swept before any request is accepted again (several VMs at once: everything
is cleared).
"""

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .context import CONTEXT_LAYOUT, vm_index
from .tlb import VPN_BITS, InvalKind, InvalSpace, range_addends, sweep_layout

__all__ = ["Invalidator"]


class Invalidator(wiring.Component):
    """Sequences invalidations for a TLB and a walk cache.

    Members
    -------
    port : In(stream.Signature(layout)); done : Out(1)
        The MMU's invalidation port and its completion pulse.
    ctx_write, ctx_index : In
        A context write (its VM starts a new generation).
    vm : Out; ctx : In(CONTEXT_LAYOUT)
        The context of the VM a range names (for its shared bit).
    retire, wrapped : the generation counters' ports (:class:`hw.gens.Generations`).
    idle : In(1)
        No request or fill is in the pipeline or waiting to enter it, and both caches
        take an invalidation.
    hold : Out(1)
        Requests must wait.
    stale : Out(1)
        Every walk in flight is now older than an invalidation.
    tlb, pwc : Out(stream.Signature(sweep_layout(vm_bits))); tlb_done, pwc_done : In(1)
    """

    def __init__(self, num_vms, layout):
        self.num_vms = num_vms
        vm_bits = max(1, (num_vms - 1).bit_length())
        self.vm_bits = vm_bits
        sweep = stream.Signature(sweep_layout(vm_bits))
        super().__init__({
            "port": In(stream.Signature(layout)), "done": Out(1),
            "ctx_write": In(1), "ctx_index": In(vm_bits),
            "vm": Out(vm_bits), "ctx": In(CONTEXT_LAYOUT),
            "retire": Out(2 * num_vms), "wrapped": In(2 * num_vms),
            "idle": In(1), "hold": Out(1), "stale": Out(1),
            "tlb": Out(sweep), "tlb_done": In(1), "pwc": Out(sweep), "pwc_done": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        port, p = self.port, self.port.payload
        V = self.num_vms
        wraps = Signal(2 * V)           # generations that wrapped and are not swept yet
        tlb_wait, pwc_wait = Signal(), Signal()
        answer = Signal()               # the port's invalidation is not done yet
        # The sweep under way; its range is turned into the caches' form
        # (:func:`hw.tlb.range_addends`) between this register and theirs.
        sweep = Signal(data.StructLayout({
            "kind": InvalKind, "vm": self.vm_bits, "space": InvalSpace,
            "first": VPN_BITS + 1, "end": VPN_BITS + 1}), reset_less=True)
        shared_bit = Signal(VPN_BITS, reset_less=True)  # a TD's, as a page number
        shared_next = Signal()          # a TD's range: the shared entries' sweep follows
        port_vm = vm_index(p.vm, V)
        m.d.comb += self.vm.eq(port_vm)

        # Retirements: a context write, and a VM invalidation as it is issued (from the
        # registers it was loaded into; requests wait meanwhile).
        bump = Signal()                 # the sweep under way is a VM invalidation's
        port_retire = Signal(2 * V)
        ctx_retire = Mux(self.ctx_write, 0b11 << (vm_index(self.ctx_index, V) * 2), 0)
        m.d.comb += self.retire.eq(ctx_retire | port_retire)
        # A wrap is registered before it is counted, so that the exit from WAIT and
        # ``busy`` are a few LUT levels from registers; requests wait meanwhile. A VM
        # invalidation's wrap needs no ``wrapping``: the FSM is busy with it already.
        wrapped = Signal(2 * V, name="wrapped_r")
        wrapping = Signal()
        m.d.sync += [wrapped.eq(self.wrapped), wrapping.eq((self.wrapped & ctx_retire).any())]
        new_wraps = wraps | wrapped
        m.d.sync += wraps.eq(new_wraps)

        # The range, in page numbers: [start, start + count), empty when count is 0 or
        # the range starts above any GPA. Bounds are kept as :func:`hw.tlb.range_addends`
        # takes them: an end past the last page number has its top bit set.
        end = p.start[:VPN_BITS] + p.count[:VPN_BITS]
        empty = (p.count == 0) | (p.start[VPN_BITS:] != 0)
        td = self.ctx.td
        is_range = p.kind == InvalKind.RANGE
        # A TD's shared range alone: the range moved up by the shared bit (SHIFT) first.
        shift_first = is_range & ~empty & td & (p.space == InvalSpace.SHARED)

        # Requests wait while the port is valid, a wrapped generation waits for its sweep
        # or an invalidation is under way. ``busy`` is the register form of the last two
        # (``wraps != 0``, a cache to wait for, an answer owed): set as the FSM leaves
        # IDLE, cleared as it returns with no wrap left, so the many places ``hold``
        # reaches are one LUT from registers.
        busy = Signal()
        m.d.comb += self.hold.eq(port.valid | busy | wrapping)
        m.d.sync += self.done.eq(0)
        m.d.sync += busy.eq(new_wraps != 0)
        with m.FSM(name="inval"):
            with m.State("IDLE"):
                # What to sweep is loaded every cycle, from the wrapped generations when
                # there are any, else from the port (nothing reads it before ISSUE or
                # SHIFT): only the state, ``busy`` and the handshake wait for ``idle``.
                m.d.sync += [sweep.first.eq(p.start[:VPN_BITS]),
                             sweep.end.eq(Cat(end[:VPN_BITS],
                                              end[VPN_BITS] | (p.count[VPN_BITS:] != 0))),
                             shared_bit.eq((Const(1, 64) << self.ctx.shared_bit)[12:])]
                with m.If(wraps != 0):
                    # Sweep the VM whose generation wrapped; several: clear everything.
                    one = Signal()
                    vm_of = Signal(self.vm_bits)
                    space = Signal(InvalSpace)
                    for vm in range(V):
                        pair = wraps[2 * vm:2 * vm + 2]
                        with m.If(pair != 0):
                            m.d.comb += [vm_of.eq(vm), space.eq(Mux(
                                pair == 0b11, InvalSpace.BOTH,
                                Mux(pair[1], InvalSpace.PRIVATE, InvalSpace.SHARED)))]
                    m.d.comb += one.eq(~self._several(wraps, V))
                    m.d.sync += [sweep.kind.eq(Mux(one, InvalKind.VM, InvalKind.ALL)),
                                 sweep.vm.eq(vm_of),
                                 sweep.space.eq(Mux(one, space, InvalSpace.BOTH)),
                                 tlb_wait.eq(1), pwc_wait.eq(1), shared_next.eq(0),
                                 bump.eq(0)]
                with m.Else():
                    # A VM invalidation retires the VM's TLB entries by a new generation
                    # (a generation that wraps is swept before the done); an empty range
                    # has nothing to sweep; a TD's range sweeps its private entries
                    # first and its shared ones next.
                    m.d.sync += [sweep.kind.eq(p.kind), sweep.vm.eq(port_vm),
                                 sweep.space.eq(Mux(is_range & td, InvalSpace.PRIVATE,
                                                    p.space)),
                                 tlb_wait.eq((p.kind != InvalKind.VM) & ~(is_range & empty)),
                                 pwc_wait.eq(~(is_range & empty)),
                                 shared_next.eq(is_range & ~empty & td
                                                  & (p.space == InvalSpace.BOTH)),
                                 bump.eq(p.kind == InvalKind.VM)]
                with m.If((wraps != 0) & self.idle):
                    m.d.sync += [wraps.eq(wrapped), busy.eq(1)]
                    m.d.comb += self.stale.eq(1)
                    m.next = "ISSUE"
                with m.Elif(port.valid & self.idle):
                    m.d.comb += [port.ready.eq(1), self.stale.eq(1)]
                    m.d.sync += [answer.eq(1), busy.eq(1)]
                    with m.If(shift_first):
                        m.next = "SHIFT"
                    with m.Else():
                        m.next = "ISSUE"

            with m.State("SHIFT"):
                # A TD's shared entries: the range moved up by the shared bit (its pages
                # above the last page number are none).
                moved_first = sweep.first[:VPN_BITS] + shared_bit
                moved_end = sweep.end[:VPN_BITS] + shared_bit
                m.d.sync += [sweep.space.eq(InvalSpace.SHARED), shared_next.eq(0),
                             sweep.first.eq(Cat(moved_first[:VPN_BITS],
                                                moved_first[VPN_BITS] | sweep.first[VPN_BITS])),
                             sweep.end.eq(Cat(moved_end[:VPN_BITS],
                                              moved_end[VPN_BITS] | sweep.end[VPN_BITS])),
                             tlb_wait.eq(1), pwc_wait.eq(1), busy.eq(1)]
                m.next = "ISSUE"

            with m.State("ISSUE"):
                # Both caches are ready: nothing entered the pipeline since ``idle``.
                for cache in (self.tlb, self.pwc):
                    m.d.comb += [cache.payload.kind.eq(sweep.kind), cache.payload.vm.eq(sweep.vm),
                                 cache.payload.space.eq(sweep.space),
                                 cache.payload.range.eq(range_addends(sweep.first, sweep.end))]
                m.d.comb += [self.tlb.valid.eq(tlb_wait), self.pwc.valid.eq(pwc_wait)]
                with m.If(bump):
                    m.d.comb += port_retire.eq(
                        Cat(sweep.space != InvalSpace.PRIVATE, sweep.space != InvalSpace.SHARED)
                        << (sweep.vm * 2))
                m.d.sync += busy.eq(1)
                m.next = "WAIT"

            with m.State("WAIT"):
                m.d.sync += busy.eq(1)
                with m.If(self.tlb_done):
                    m.d.sync += tlb_wait.eq(0)
                with m.If(self.pwc_done):
                    m.d.sync += pwc_wait.eq(0)
                with m.If(~(tlb_wait & ~self.tlb_done) & ~(pwc_wait & ~self.pwc_done)
                          & shared_next):
                    m.next = "SHIFT"
                with m.Elif(~(tlb_wait & ~self.tlb_done) & ~(pwc_wait & ~self.pwc_done)):
                    # A generation that wrapped is swept before the port is answered.
                    with m.If(new_wraps == 0):
                        m.d.sync += self.done.eq(answer)
                        m.d.sync += answer.eq(0)
                    m.d.sync += busy.eq(new_wraps != 0)
                    m.next = "IDLE"
        return m

    @staticmethod
    def _several(wraps, vms):
        """More than one VM has a wrapped generation."""
        pairs = [(wraps[2 * vm:2 * vm + 2] != 0) for vm in range(vms)]
        out = Const(0, 1)
        for i in range(vms):
            for j in range(i + 1, vms):
                out = out | (pairs[i] & pairs[j])
        return out
