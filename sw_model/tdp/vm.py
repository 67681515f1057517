"""The VM: KVM's ``struct kvm`` MMU, composed of the TDP MMU's parts, one concern a file
as KVM splits arch/x86/kvm/mmu/ (see the package docstring for the public API)."""

from ..formats import get_format
from ..memory import HostMemory
from .age import Aging
from .core import KVM_MIN_FREE_MMU_PAGES, TdpCore
from .dirty_log import DirtyLog
from .fault import PfResult, TdpFault
from .memslot import Memslots
from .mirror import MirrorPropagation
from .nx import NxHugePages
from .page_track import PageTrack
from .zap import TdpZap

__all__ = ["Vm"]


class Vm(TdpFault, TdpZap, DirtyLog, Aging, NxHugePages, PageTrack, MirrorPropagation,
         Memslots, TdpCore):
    """A VM's TDP MMU over a page-table format.

    Parameters
    ----------
    fmt_name : str
        One of :data:`sw_model.formats.FORMAT_NAMES`.
    memory : HostMemory, optional
        Where tables are allocated (shared with the RTL in co-simulation).
    ad, pa_bits, exec_only, nxe
        The format's :class:`~sw_model.formats.VmOptions`.
    address_spaces : int
        Number of address spaces (KVM's ``as_id``, e.g. 2 for x86 SMM).
    nx_huge_pages : bool, optional
        The NX-huge-page mitigation; default on where the format supports it.
    flush_sink, trace, trace_limit
        As :class:`~sw_model.tdp.MmuCore`: the sink of TLB invalidations (default:
        dropped), whether to record :attr:`events`, and how many to keep.
    min_free_pages : int
        Low-water mark of free table pages for eager splitting.
    yield_every : int
        Long walks yield (KVM's ``cond_resched``) every this many steps; 0 never.
    on_yield : callable, optional
        ``on_yield(vm)`` runs at each yield: what runs concurrently with a walk in
        KVM (vCPU faults, the walker setting A/D bits) can run here.
    tdx : bool
        Make the VM a TDX-style TD: private memory through mirror and external tables.
    shared_bit : int, optional
        A TD's shared GPA bit (default: the format's, 47 for 4-level and 51 for 5-level
        tables); it must lie in the GPA and above a 2 MiB page.

    Members
    -------
    fmt : PageTableFormat
    opts : VmOptions
    mem : HostMemory
    sink : FlushSink
    events : collections.deque of Event
        The tracepoint log, oldest first.
    page_stats : dict
        Leaf entries per level over all roots (KVM's ``kvm->stat.pages``).
    nx_huge_pages : bool
    tdx : TdxState or None
        A TD's shared bit, external tables and memory attributes; None otherwise.
    nested_mmus : list
        MMUs that map this VM's memory for its nested guests through rmaps (L0's
        shadow MMU for an L2): dirty logging, write protection and memslot deletion
        cover them too (see :mod:`sw_model.tdp.dirty_log`).
    """

    def __init__(self, fmt_name, memory=None, *, ad=None, pa_bits=None, exec_only=True,
                 nxe=True, address_spaces=1, nx_huge_pages=None, flush_sink=None,
                 trace=True, trace_limit=100_000, min_free_pages=KVM_MIN_FREE_MMU_PAGES,
                 yield_every=0, on_yield=None, tdx=False, shared_bit=None):
        fmt = get_format(fmt_name)
        opts = fmt.vm_options(ad=ad, pa_bits=pa_bits, exec_only=exec_only, nxe=nxe)
        if not isinstance(address_spaces, int) or address_spaces < 1:
            raise ValueError(f"address_spaces must be a positive integer, got {address_spaces!r}")
        nx_possible = fmt.tdp_nx_huge_pages() and fmt.tdp_can_deny_exec(opts)
        if nx_huge_pages is None:
            nx_huge_pages = nx_possible
        elif nx_huge_pages and not nx_possible:
            raise ValueError(f"nx_huge_pages: not available on {fmt.name} with {opts}")
        if not isinstance(yield_every, int) or yield_every < 0:
            raise ValueError(f"yield_every must be a non-negative integer, got {yield_every!r}")
        if not isinstance(min_free_pages, int) or min_free_pages < 0:
            raise ValueError(f"min_free_pages must be a non-negative integer, got {min_free_pages!r}")
        super().__init__(fmt, opts, HostMemory() if memory is None else memory, flush_sink,
                         trace=trace, trace_limit=trace_limit, address_spaces=address_spaces,
                         min_free_pages=min_free_pages, yield_every=yield_every,
                         on_yield=on_yield)
        self.nx_huge_pages = bool(nx_huge_pages)
        self.nested_mmus = []
        self._init_memslots(address_spaces)
        self._init_page_track(address_spaces)
        if tdx:
            self._init_tdx(shared_bit, address_spaces)
        elif shared_bit is not None:
            raise ValueError("shared_bit: only a TD (tdx=True) has a shared bit")

    def stats(self):
        """Counters: leaf pages per level, table pages, roots, NX splits, flushes,
        faults per result, free table pages."""
        return {
            "pages": dict(self.page_stats),
            "table_pages": len(self._pages) + len(self._roots),
            "roots": len(self._roots),
            "nx_lpage_splits": len(self._possible_nx),
            "tlb_flushes": self._counters["tlb_flush"],
            "faults": {r.value: self._counters[r] for r in PfResult},
            "free_pages": self.mem.free_pages,
        } | ({} if self.tdx is None else {
            "external_calls": dict(self.tdx.external.calls),
            "external_cost": self.tdx.external.cost,
            "external_pages": self.tdx.external.pages,
        })

