"""The architecture-neutral TDP MMU: the hypervisor side, modelled on KVM's TDP MMU.

Every decision about an entry's bits goes through the format's arch hooks (the
``tdp_*`` methods at the end of each class in :mod:`sw_model.formats`); this package
never names a bit, so the same code drives EPT, NPT and G-stage tables.

Layout, one concern a file as KVM splits arch/x86/kvm/mmu/: ``core`` (what every MMU
shares: format, memory, flush sink and deferred frees, tracing; then the TDP MMU's
roots, table pages and entry updates), ``fault`` (fault-in), ``zap``, ``dirty_log``
(dirty logging and eager splitting), ``age``, ``nx`` (NX huge pages), ``page_track``
(write tracking), ``mirror`` (a TD's mirror propagation; ``tdx`` holds its external
tables), ``memslot``, ``iter``, ``flush``; ``vm`` composes them into :class:`Vm`.
``check`` and ``obligations`` check a VM: its tables, and the flushes it owed.

Public API
----------
``Vm(fmt_name, memory=None, *, ad=None, pa_bits=None, exec_only=True, nxe=True,
address_spaces=1, nx_huge_pages=None, flush_sink=None, trace=True, trace_limit=100_000,
min_free_pages=5,
yield_every=0, on_yield=None, tdx=False, shared_bit=None)``
    A VM: format, :class:`~sw_model.memory.HostMemory` for its tables, options.
    ``tdx=True`` makes it a TDX-style TD (see "Confidential VMs" below).

Memslots
    ``vm.add_memslot(slot_id, base_gfn, npages, hpa, *, as_id=0, readonly=False,
    dirty_logging=False, host_level=None, private_hpa=None) -> Memslot``, ``vm.delete_memslot(slot_id,
    as_id=0)``, ``vm.memslot(slot_id, as_id=0)``, ``vm.memslots(as_id=0)``,
    ``vm.find_memslot(gfn, as_id=0)``, ``vm.memslots_in(start, end, as_id=0)``,
    ``vm.max_mapping_level(slot, gfn)``.
Roots
    ``vm.root_for(as_id=0) -> hpa`` (the vCPU's root: what EPTP / nCR3 / hgatp point
    at), ``vm.get_root(as_id=0, role="direct") -> MmuPage``, ``vm.put_root(root)``,
    ``vm.roots``, ``vm.invalidate_all_roots()``, ``vm.zap_invalidated_roots()``,
    ``vm.zap_all_fast()``, ``vm.zap_all()`` (frees every table page).
Faults
    ``vm.handle_fault(gpa, access, *, as_id=0, max_level=None) -> PfResult``
    (FIXED, SPURIOUS, RETRY, EMULATE, NOMEM, MEMORY_FAULT); ``vm.translate(gpa, access,
    *, as_id=0, ad_update=False)`` runs the reference walker on the root the hardware
    would walk.
Zap
    ``vm.zap_gfn_range(start, end, *, as_id=0, flush=True, space="both") -> bool``,
    ``vm.zap_root(root)``.
Dirty logging
    ``vm.set_dirty_logging(slot_id, enable, *, as_id=0, eager_split=True) ->
    SplitResult | None``, ``vm.get_dirty_log(slot_id, *, as_id=0) -> uint64 bitmap``,
    ``vm.clear_dirty_log(slot_id, first_page, mask, *, as_id=0)``,
    ``vm.split_huge_pages(slot_id, *, as_id=0, target_level=1) -> SplitResult``,
    ``vm.recover_huge_pages(slot_id, *, as_id=0) -> int``, ``Memslot.dirty_gfns(bitmap)``.
Write tracking
    ``vm.write_track_add_gfn(gfn, *, as_id=0) -> bool`` (clears W and MMU-writable,
    flushes: the one case spte.h says needs it), ``vm.write_track_remove_gfn(gfn, *,
    as_id=0)``, ``vm.is_write_tracked(gfn, *, as_id=0)``; without tracking:
    ``vm.write_protect_gfn(gfn, *, as_id=0)``, ``vm.gfn_disallow_lpage(gfn, *,
    as_id=0)`` / ``vm.gfn_allow_lpage(...)`` (counted, as KVM's).
Nested MMUs
    ``vm.nested_mmus``: MMUs that map the VM's memory for its nested guests through
    rmaps (:class:`sw_model.nested.ShadowNested` registers itself). Dirty logging,
    eager splitting, huge-page recovery, write protection, memslot deletion and the
    fault path call them (the interface is in :mod:`sw_model.tdp.dirty_log`).
Aging and NX huge pages
    ``vm.age_gfn_range(start, end, *, as_id=0, flush=False) -> bool``,
    ``vm.test_age_gfn(start, end, *, as_id=0) -> bool``,
    ``vm.recover_nx_huge_pages(ratio=4) -> int``.
Flushes
    ``vm.flush_remote_tlbs(*, space="both")``, ``vm.flush_remote_tlbs_range(gfn, npages,
    *, space="both")``, ``vm.flush_remote_tlbs_memslot(slot_id, as_id=0)``, delivered to
    ``vm.sink``, a :class:`FlushSink` (``flush_all(*, space="both")``,
    ``flush_range(gfn, npages, *, space="both")``, ``supports_ranges``; an ordinary VM
    never passes ``space``); :class:`FlushRecorder` records them. A sink also hears
    ``attach(vm)`` once and ``op_done(op, *, aged, logged)`` at the end of every
    operation. :class:`FlushObligations` (:mod:`sw_model.tdp.obligations`) is a sink in
    front of another that models what TLBs and page-walk caches may still hold and
    raises :class:`FlushObligationError` when an operation ends owing a flush;
    ``vm.hardware_roots()`` lists the trees it watches.
Confidential VMs (TDX-style TDs, :mod:`sw_model.tdp.tdx`, docs/tdx.md)
    ``vm.tdx`` (None, or a :class:`TdxState`: ``shared_bit``, ``external`` -- the
    :class:`ExternalPageTableManager` standing for the TDX module, with ``calls`` and
    ``cost`` --, ``attributes``, ``private_frame(slot, gfn)``). A GPA with the shared bit
    walks ``vm.root_for()``; without it ``vm.external_root_for()`` in hardware, and the
    core edits ``vm.mirror_root_for()`` and propagates each change (freeze the mirror
    entry, call the manager, commit or restore). ``vm.set_memory_attributes(gfn, npages,
    private)``, ``vm.is_private_gfn(gfn)``; a fault on the wrong side returns
    MEMORY_FAULT. ``vm.zap_all()`` tears the TD down. ``check.check_tdx(vm)``.
Shared with other MMUs
    :class:`MmuCore` (format, memory, flush sink and the frees that wait for a flush,
    tracing, statistics) is the base of the TDP core and of the nested shadow MMU.
Introspection
    ``vm.stats()``, ``vm.recount()``, ``vm.page_stats``, ``vm.events`` (a bounded deque of
    :class:`Event` with KVM tracepoint names: ``kvm_page_fault``,
    ``kvm_page_fault_done``, ``kvm_mmu_set_spte``, ``kvm_tdp_mmu_spte_changed``,
    ``kvm_mmu_split_huge_page``, ``tlb_flush``, ``root_alloc``, ``root_free``,
    ``root_invalidate``, ``yield``, ``dirty_logging``, ``memslot_add``,
    ``memslot_delete``, ``nx_huge_page_recovery``).

Concurrency protocol
--------------------
The RTL shares the memory and may set A/D bits between any two model steps. Every
update of a live entry is a compare-exchange against the word read (or an exchange that
returns the word replaced), and the change handler sees that word, so a D bit set by the
walker is logged before it is cleared or zapped. A removed table's entries are frozen
(``fmt.tdp_frozen_spte()``) before it is queued; a fault meeting a frozen entry returns
RETRY. Removed tables return to HostMemory only after a TLB flush that covers them (KVM
frees them after an RCU grace period). Long walks yield every ``yield_every`` steps,
run ``on_yield(vm)`` (faults, walker A/D writes) and restart from the root with forward
progress (:class:`TdpIter`). Whole-page vectorized updates (filling a split table,
freezing a removed table, clearing D/W in a last-level table) are one read-modify-write
each, atomic with respect to the walker because it runs only between model steps.
``sw_model.tdp.check.check_vm(vm)`` checks the invariants (tests, co-simulation).

Differences from KVM: MMIO faults are not cached in MMIO SPTEs; while dirty logging by
W, a read fault maps read-only (KVM maps writable and logs the page); with A/D bits the
dirty bitmap is filled by collecting D bits (no PML).
"""

from .core import KVM_MIN_FREE_MMU_PAGES, Event, MmuCore, MmuPage
from .dirty_log import SplitResult
from .fault import PageFault, PfResult
from .flush import SPACES, FlushRecorder, FlushSink
from .iter import TdpIter
from .memslot import Memslot
from .obligations import FlushObligationError, FlushObligations
from .tdx import ExternalPageTableManager, ExternalTableError, MemoryAttributes, TdxState
from .vm import Vm

__all__ = ["Vm", "Memslot", "PfResult", "PageFault", "MmuCore", "MmuPage", "Event",
           "SplitResult", "FlushSink", "FlushRecorder", "FlushObligations",
           "FlushObligationError", "SPACES", "TdpIter",
           "KVM_MIN_FREE_MMU_PAGES", "TdxState", "ExternalPageTableManager",
           "ExternalTableError", "MemoryAttributes"]
