"""TLB flush requests from the TDP MMU and where they go.

KVM asks every vCPU to flush (``kvm_flush_remote_tlbs``, ``..._range``, ``..._memslot``);
here the request goes to a pluggable sink: a :class:`FlushRecorder` in unit tests, the
RTL's invalidation port in co-simulation. A sink that cannot invalidate a range says so
with ``supports_ranges = False`` and gets a full flush instead.
"""

__all__ = ["FlushSink", "FlushRecorder"]


class FlushSink:
    """Receives TLB invalidations. Subclass and override both methods.

    Members
    -------
    supports_ranges : bool
        False makes the VM turn every range flush into :meth:`flush_all`.
    """
    supports_ranges = True

    def flush_all(self):
        """Invalidate every cached translation and page-walk-cache entry of the VM."""

    def flush_range(self, gfn, npages):
        """Invalidate every cached translation overlapping GFNs ``[gfn, gfn + npages)``
        (a huge page partly inside goes whole), and every cached non-leaf entry whose
        region overlaps it. That is enough for removed tables: the VM frees a table only
        after flushing a range that covers the table's whole region."""


class FlushRecorder(FlushSink):
    """A sink that records requests: ``("all",)`` or ``("range", gfn, npages)``.

    Members
    -------
    log : list of tuple
    supports_ranges : bool
    """

    def __init__(self, supports_ranges=True):
        self.supports_ranges = supports_ranges
        self.log = []

    def flush_all(self):
        self.log.append(("all",))

    def flush_range(self, gfn, npages):
        self.log.append(("range", gfn, npages))

    def clear(self):
        self.log.clear()
