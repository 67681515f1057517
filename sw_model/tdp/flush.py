"""TLB flush requests from the TDP MMU and where they go.

KVM asks every vCPU to flush (``kvm_flush_remote_tlbs``, ``..._range``, ``..._memslot``);
here the request goes to a pluggable sink: a :class:`FlushRecorder` in unit tests, the
RTL's invalidation port in co-simulation. A sink that cannot invalidate a range says so
with ``supports_ranges = False`` and gets a full flush instead.

A confidential VM (TD) has two translation spaces for one GFN: ``"private"`` (through
the external root) and ``"shared"`` (through the shared root, GPA with the shared bit).
Its flushes name the space; an ordinary VM's flushes are always ``"both"`` and are
delivered without the keyword, so sinks written before TDs keep working.

:class:`RemoteTlbFlush` is the MMU side that every MMU of the model shares (the TDP
core and the nested shadow MMU): it counts and traces flushes, and frees removed tables
only once a flush has covered them (KVM frees them after an RCU grace period).
"""

__all__ = ["FlushSink", "FlushRecorder", "RemoteTlbFlush", "SPACES"]

#: Values of the ``space`` keyword.
SPACES = ("shared", "private", "both")


def check_space(space):
    if space not in SPACES:
        raise ValueError(f"space must be one of {', '.join(SPACES)}, got {space!r}")


class FlushSink:
    """Receives TLB invalidations. Subclass and override both methods.

    Members
    -------
    supports_ranges : bool
        False makes the VM turn every range flush into :meth:`flush_all`.
    """
    supports_ranges = True

    def flush_all(self, *, space="both"):
        """Invalidate every cached translation and page-walk-cache entry of the VM in
        ``space`` (``"shared"``, ``"private"`` or ``"both"``)."""

    def flush_range(self, gfn, npages, *, space="both"):
        """Invalidate every cached translation overlapping GFNs ``[gfn, gfn + npages)``
        (a huge page partly inside goes whole), and every cached non-leaf entry whose
        region overlaps it. That is enough for removed tables: the VM frees a table only
        after flushing a range that covers the table's whole region. ``gfn`` never
        includes a TD's shared bit; ``space`` says which translations go."""

    def attach(self, mmu):
        """Called once by the TDP MMU that sends to this sink (a checker reads its
        tables)."""

    def op_done(self, op, *, aged=None, logged=None):
        """Called when the MMU finishes operation ``op`` (its method name), its flushes
        sent: a point where the hardware may cache whatever the tables now say.
        ``aged``: ``(start, end)``, the GFNs whose Accessed states it cleared without a
        flush, as its caller asked; ``logged``: ``(start, end)``, the GFNs whose dirty
        log it reported or re-protected."""


class FlushRecorder(FlushSink):
    """A sink that records requests: ``("all",)`` or ``("range", gfn, npages)``, with
    the space appended when it is not ``"both"`` (``("all", "private")``).

    Members
    -------
    log : list of tuple
    supports_ranges : bool
    """

    def __init__(self, supports_ranges=True):
        self.supports_ranges = supports_ranges
        self.log = []

    def flush_all(self, *, space="both"):
        check_space(space)
        self.log.append(("all",) if space == "both" else ("all", space))

    def flush_range(self, gfn, npages, *, space="both"):
        check_space(space)
        self.log.append(("range", gfn, npages) if space == "both"
                        else ("range", gfn, npages, space))

    def clear(self):
        self.log.clear()


class RemoteTlbFlush:
    """KVM's ``kvm_flush_remote_tlbs*`` and the frees that wait for them.

    A mixin of :class:`~sw_model.tdp.core.MmuCore`: it uses ``sink``, ``mem``,
    ``_counters``, ``_trace``, ``_pages_at``, ``_root_space`` and ``_pending_free``
    (tables removed from the tree, :class:`~sw_model.tdp.core.MmuPage` objects).
    """

    def flush_remote_tlbs(self, *, space="both"):
        """Flush every translation of the VM (KVM's ``kvm_flush_remote_tlbs``); a TD
        may flush only its ``"private"`` or ``"shared"`` translations."""
        check_space(space)
        self._counters["tlb_flush"] += 1
        self._trace("tlb_flush", gfn=None, npages=None, space=space)
        if space == "both":
            self.sink.flush_all()
        else:
            self.sink.flush_all(space=space)
        self._free_pending(None, None, space)

    def flush_remote_tlbs_range(self, gfn, npages, *, space="both"):
        """Flush ``[gfn, gfn + npages)`` (GFNs without a TD's shared bit) in
        ``space``; a full flush if the sink cannot do ranges."""
        check_space(space)
        if not self.sink.supports_ranges:
            self.flush_remote_tlbs(space=space)
            return
        self._counters["tlb_flush"] += 1
        self._trace("tlb_flush", gfn=gfn, npages=npages, space=space)
        if space == "both":
            self.sink.flush_range(gfn, npages)
        else:
            self.sink.flush_range(gfn, npages, space=space)
        self._free_pending(gfn, gfn + npages, space)

    def _free_pending(self, start, end, space="both"):
        """Free the removed tables the flush covered (KVM's RCU callback): only then
        can no walker, and no page-walk cache, still reach them."""
        keep = []
        for sp in self._pending_free:
            span = self._pages_at(sp.level + 1)
            if space not in ("both", self._root_space(sp)):
                keep.append(sp)
            elif start is None or (start <= sp.gfn and sp.gfn + span <= end and not sp.is_root):
                self.mem.free_table(sp.hpa, sp.nbytes)
            else:
                keep.append(sp)
        self._pending_free = keep

    def _end_op(self, op, *, aged=None, logged=None):
        """The end of every public operation ``op``: removed tables are flushed and
        freed, then the sink hears that the operation is done (see
        :meth:`FlushSink.op_done`)."""
        if self._pending_free:
            self.flush_remote_tlbs()
        self.sink.op_done(op, aged=aged, logged=logged)
