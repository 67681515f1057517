"""TLB flush requests from the TDP MMU and where they go.

KVM asks every vCPU to flush (``kvm_flush_remote_tlbs``, ``..._range``, ``..._memslot``);
here the request goes to a pluggable sink: a :class:`FlushRecorder` in unit tests, the
RTL's invalidation port in co-simulation. A sink that cannot invalidate a range says so
with ``supports_ranges = False`` and gets a full flush instead.

A confidential VM (TD) has two translation spaces for one GFN: ``"private"`` (through
the external root) and ``"shared"`` (through the shared root, GPA with the shared bit).
Its flushes name the space; an ordinary VM's flushes are always ``"both"`` and are
delivered without the keyword, so sinks written before TDs keep working.
"""

__all__ = ["FlushSink", "FlushRecorder", "SPACES"]

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
