"""The architecture-neutral TDP MMU: a model of KVM's arch/x86/kvm/mmu/tdp_mmu.c.

Structure and names follow KVM; every decision about an entry's bits is made by the
format's arch hooks (``fmt.tdp_*``). See the package docstring for the public API and
the concurrency protocol.
"""

import enum
from collections import Counter, deque
from dataclasses import dataclass

import numpy as np

from ..formats import check_access, get_format
from ..memory import PAGE_SIZE, HostMemory, OutOfTablePages
from ..walker import translate
from .flush import FlushSink, check_space
from .iter import PAGE_SHIFT, TdpIter
from .memslot import Memslot
from .tdx import ExternalPageTableManager, TdxState

__all__ = ["Vm", "PfResult", "PageFault", "MmuPage", "Event", "SplitResult",
           "KVM_MIN_FREE_MMU_PAGES"]

#: Table pages kept free by eager splitting (KVM's KVM_MIN_FREE_MMU_PAGES): a split
#: stops, reporting -ENOMEM, rather than leave faults without pages.
KVM_MIN_FREE_MMU_PAGES = 5
ENOMEM = 12
PG_LEVEL_1G = 3          # KVM's level numbering: 1 = 4K, 2 = 2M, 3 = 1G


class PfResult(enum.Enum):
    """Result of :meth:`Vm.handle_fault` (KVM's ``RET_PF_*``)."""
    FIXED = "fixed"          #: an entry was installed or changed; retry the access
    SPURIOUS = "spurious"    #: the tables already allow the access (stale TLB entry)
    RETRY = "retry"          #: lost a race (frozen entry, failed compare-exchange)
    EMULATE = "emulate"      #: no memslot (MMIO), a write to a read-only slot, or a GPA
                             #: beyond the format's width: the access goes to userspace
    NOMEM = "nomem"          #: no table page left (KVM's -ENOMEM from the page caches)
    MEMORY_FAULT = "memory_fault"  #: a TD accessed a GFN as private while it is shared or
                                   #: the reverse: userspace converts it (KVM_EXIT_MEMORY_FAULT)


@dataclass
class PageFault:
    """KVM's ``struct kvm_page_fault``: what the fault asks and what it may map.

    Members
    -------
    gfn, as_id : int
    write, exec : bool
    max_level : int
        Largest level the caller allows.
    slot : Memslot
    hpa : int
        Host frame of ``gfn``.
    map_writable : bool
        The host mapping is writable (KVM's ``map_writable``, the SPTE's host-writable).
    req_level, goal_level : int
        Set by huge-page adjustment: the level the memslot allows, and the level the
        fault maps at (lower when NX huge pages forbid a huge executable page).
    huge_page_disallowed : bool
        An execute fault with the NX-huge-page mitigation on.
    private : bool
        A TD's private GPA: mapped in the mirror root, propagated to the external one.
    """
    gfn: int
    write: bool
    exec: bool
    as_id: int
    max_level: int
    slot: Memslot = None
    hpa: int = 0
    map_writable: bool = False
    req_level: int = 1
    goal_level: int = 1
    huge_page_disallowed: bool = False
    nx_huge_page_workaround_enabled: bool = False
    private: bool = False


@dataclass(eq=False)
class MmuPage:
    """KVM's ``struct kvm_mmu_page``: one table page (a root or a child table).

    Members
    -------
    hpa, nbytes : int
        Where the table lives in HostMemory and its size.
    level : int
        The level of the entries in the table.
    gfn : int
        First GFN the table maps.
    as_id : int
    is_root : bool
    role : str
        The kind of tree the page belongs to: ``"direct"``, or ``"mirror"`` for a TD's
        private memory (KVM's ``role.is_mirror``): changes to it are propagated to the
        external tables.
    refcount : int
        Roots only: the MMU's own reference while valid plus one per user.
    invalid : bool
        Roots only: obsolete; zapped, then freed when the last reference goes.
    nx_huge_page_disallowed : bool
        The table replaced a huge page because of an execute fault (NX huge pages).
    parent_sptep : int
        Address of the entry that links this table (None for roots).
    """
    hpa: int
    nbytes: int
    level: int
    gfn: int
    as_id: int
    is_root: bool = False
    role: str = "direct"
    refcount: int = 0
    invalid: bool = False
    scheduled_to_zap: bool = False
    nx_huge_page_disallowed: bool = False
    parent_sptep: int = None


@dataclass(frozen=True)
class Event:
    """One tracepoint record: ``name`` (KVM's tracepoint name where one exists) and
    its arguments."""
    name: str
    args: dict


@dataclass
class SplitResult:
    """Outcome of eager splitting: huge pages split, entries written, and whether it
    stopped early because table pages ran short (best effort, never an exception)."""
    huge_pages_split: int = 0
    sptes_created: int = 0
    enomem: bool = False


@dataclass
class _SptePos:
    """An entry outside an iteration (an iterator's fields, for the setters)."""
    sptep: int
    old_spte: int
    level: int
    gfn: int
    as_id: int
    mirror: bool = False


def _shared_bit_default(fmt):
    """``fmt.tdp_shared_bit_default()`` (added by /tmp/tdxmodel-formats.patch). Until
    the formats have that hook: TDX's defaults for the one format family whose A/D
    bits can be off, the only one with TDs."""
    hook = getattr(fmt, "tdp_shared_bit_default", None)
    if hook is not None:
        return hook()
    return {4: 47, 5: 51}[fmt.levels] if "off" in fmt.ad_modes else None


class _SharedBitIter(TdpIter):
    """A :class:`TdpIter` over a TD's shared root: GFNs stay without the shared bit
    (memslots, flushes and dirty bitmaps use them so) while the tables are indexed
    with it, as KVM's iterator adds ``kvm_gfn_root_bits`` to the walk."""

    def __init__(self, mem, fmt, root_hpa, min_level, start, end, gfn_bits):
        self.gfn_bits = gfn_bits
        super().__init__(mem, fmt, root_hpa, min_level, start, end)

    def _refresh_sptep(self):
        self.sptep = self.fmt.entry_addr(self.pt_path[self.level],
                                         (self.gfn | self.gfn_bits) << PAGE_SHIFT, self.level)
        self.old_spte = self.mem.read64(self.sptep)


class Vm:
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
    flush_sink : FlushSink, optional
        Receives TLB invalidations (default: dropped).
    trace : bool
        Record :attr:`events`.
    trace_limit : int
        Keep only the last this many events.
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
    """

    def __init__(self, fmt_name, memory=None, *, ad=None, pa_bits=None, exec_only=True,
                 nxe=True, address_spaces=1, nx_huge_pages=None, flush_sink=None,
                 trace=True, trace_limit=100_000, min_free_pages=KVM_MIN_FREE_MMU_PAGES,
                 yield_every=0, on_yield=None, tdx=False, shared_bit=None):
        self.fmt = fmt = get_format(fmt_name)
        self.opts = fmt.vm_options(ad=ad, pa_bits=pa_bits, exec_only=exec_only, nxe=nxe)
        self.mem = HostMemory() if memory is None else memory
        if not isinstance(self.mem, HostMemory):
            raise TypeError(f"memory must be a HostMemory, got {type(memory).__name__}")
        if not isinstance(address_spaces, int) or address_spaces < 1:
            raise ValueError(f"address_spaces must be a positive integer, got {address_spaces!r}")
        nx_possible = fmt.tdp_nx_huge_pages() and fmt.tdp_can_deny_exec(self.opts)
        if nx_huge_pages is None:
            nx_huge_pages = nx_possible
        elif nx_huge_pages and not nx_possible:
            raise ValueError(f"nx_huge_pages: not available on {fmt.name} with {self.opts}")
        self.nx_huge_pages = bool(nx_huge_pages)
        if not isinstance(yield_every, int) or yield_every < 0:
            raise ValueError(f"yield_every must be a non-negative integer, got {yield_every!r}")
        if not isinstance(min_free_pages, int) or min_free_pages < 0:
            raise ValueError(f"min_free_pages must be a non-negative integer, got {min_free_pages!r}")
        self.sink = FlushSink() if flush_sink is None else flush_sink
        self.trace = trace
        self.min_free_pages = min_free_pages
        self.yield_every = yield_every
        self.on_yield = on_yield
        self.events = deque(maxlen=trace_limit)
        self.page_stats = {level: 0 for level in range(1, fmt.levels + 1)}
        self._address_spaces = address_spaces
        self._slots = [{} for _ in range(address_spaces)]
        self._roots = []
        self._vcpu_root = [None] * address_spaces
        self._pages = {}                 # hpa -> MmuPage, linked child tables
        self._possible_nx = {}           # hpa -> MmuPage, insertion-ordered
        self._pending_free = []          # removed tables awaiting a TLB flush (RCU)
        self._write_tracked = [set() for _ in range(address_spaces)]
        self._counters = Counter()
        self._steps = 0
        self._map_levels = fmt.tdp_map_levels()
        self._max_gfn = 1 << (fmt.gpa_bits - PAGE_SHIFT)
        self._vcpu_mirror_root = None
        self.tdx = None
        if tdx:
            self._init_tdx(shared_bit, address_spaces)
        elif shared_bit is not None:
            raise ValueError("shared_bit: only a TD (tdx=True) has a shared bit")

    def _init_tdx(self, shared_bit, address_spaces):
        fmt = self.fmt
        default = _shared_bit_default(fmt)
        if default is None:
            raise ValueError(f"tdx: {fmt.name} has no TDX-style confidential VMs")
        if address_spaces != 1:
            raise ValueError("tdx: a TD has one address space")
        shared_bit = default if shared_bit is None else shared_bit
        if not isinstance(shared_bit, int) or isinstance(shared_bit, bool) \
                or not fmt.page_shift(2) <= shared_bit < fmt.gpa_bits:
            raise ValueError(f"shared_bit must be an integer in [{fmt.page_shift(2)}, "
                             f"{fmt.gpa_bits}) for {fmt.name}, got {shared_bit!r}")
        external = ExternalPageTableManager(self.mem, fmt, self.opts, kick=self._kick_vcpus)
        self.tdx = TdxState(shared_bit, external)
        # Only the GFNs below the shared bit exist, once privately and once shared.
        self._max_gfn = self.tdx.shared_gfn_bit

    # -- tracing and statistics --------------------------------------------------------

    def _trace(self, name, **args):
        if self.trace:
            self.events.append(Event(name, args))

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

    def recount(self):
        """Walk every root and count leaves per level and table pages (for checks)."""
        pages = {level: 0 for level in self.page_stats}
        tables = len(self._roots)
        for root in self._roots:
            for _, level, word, _ in self.walk_present(root):
                if self.fmt.tdp_is_last_spte(word, level):
                    pages[level] += 1
                else:
                    tables += 1
        return {"pages": pages, "table_pages": tables}

    def walk_present(self, root):
        """Yield ``(gfn, level, word, sptep)`` for every shadow-present entry under
        ``root``, pre-order (a snapshot walk for checks, not for updates)."""
        fmt, mem = self.fmt, self.mem
        # A TD's shared root is indexed with the shared bit; GFNs are reported without.
        bits = self._gfn_bits(root)
        stack = [(root.hpa, root.level, 0)]
        while stack:
            table, level, gfn = stack.pop()
            words = mem.read_page(table, fmt.table_bytes(level))
            step = self._pages_at(level)
            found = []
            for index in fmt.tdp_present_mask(words).nonzero()[0]:
                word = int(words[index])
                child_gfn = (gfn + int(index) * step) & ~bits
                yield child_gfn, level, word, table + 8 * int(index)
                child = fmt.tdp_child_table(word, level)
                if child is not None:
                    found.append((child, level - 1, child_gfn))
            stack.extend(reversed(found))

    def _pages_at(self, level):
        return self.fmt.page_size(level) >> PAGE_SHIFT

    # -- memslots ------------------------------------------------------------------------

    @staticmethod
    def _check_gfn_range(start, end):
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end):
            raise ValueError(f"start/end must be integers with 0 <= start <= end, got {start!r}, {end!r}")

    def _check_as_id(self, as_id):
        if not isinstance(as_id, int) or not 0 <= as_id < self._address_spaces:
            raise ValueError(f"as_id must be in [0, {self._address_spaces}), got {as_id!r}")

    def add_memslot(self, slot_id, base_gfn, npages, hpa, *, as_id=0, readonly=False,
                    dirty_logging=False, host_level=None, private_hpa=None):
        """Create a memslot: GFNs ``[base_gfn, base_gfn + npages)`` backed by host
        frames from ``hpa``. ``host_level`` (default: the largest level the format maps)
        bounds huge pages. A TD's slot also has private frames from ``private_hpa``
        (guest_memfd; default ``hpa + 2**40``); its GFNs lie below the shared bit.
        Returns the :class:`Memslot`."""
        self._check_as_id(as_id)
        if self.tdx is None and private_hpa is not None:
            raise ValueError("private_hpa: only a TD's memslots have private memory")
        if self.tdx is not None:
            if readonly:
                raise ValueError("readonly: a TD has no read-only memslots (as KVM for "
                                 "VMs with protected state)")
            if private_hpa is None and isinstance(hpa, int):
                private_hpa = hpa + (1 << 40)
        for name, value in (("slot_id", slot_id), ("base_gfn", base_gfn),
                            ("npages", npages), ("hpa", hpa),
                            ("private_hpa", 0 if private_hpa is None else private_hpa)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if npages == 0:
            raise ValueError("npages must be positive")
        if base_gfn + npages > self._max_gfn:
            limit = (f"the {self.fmt.gpa_bits}-bit GPA space of {self.fmt.name}"
                     if self.tdx is None else f"the TD's shared bit {self.tdx.shared_bit}")
            raise ValueError(f"base_gfn/npages: the slot ends beyond {limit}")
        for name, value in (("hpa", hpa), ("private_hpa", private_hpa)):
            if value is not None and (value % (1 << PAGE_SHIFT)
                                      or value + (npages << PAGE_SHIFT) > 1 << self.opts.pa_bits):
                raise ValueError(f"{name} {value:#x} must be 4 KiB aligned and the frames must "
                                 f"lie below 2**{self.opts.pa_bits}")
        top = max(self._map_levels)
        host_level = top if host_level is None else host_level
        if not isinstance(host_level, int) or not 1 <= host_level <= self.fmt.levels:
            raise ValueError(f"host_level must be in [1, {self.fmt.levels}], got {host_level!r}")
        slots = self._slots[as_id]
        if slot_id in slots:
            raise ValueError(f"slot_id {slot_id} already exists in address space {as_id}")
        for other in slots.values():
            if base_gfn < other.end_gfn and other.base_gfn < base_gfn + npages:
                raise ValueError(f"base_gfn/npages: overlaps memslot {other.slot_id}")
        slot = Memslot(slot_id, as_id, base_gfn, npages, hpa, readonly=bool(readonly),
                       dirty_logging=bool(dirty_logging), host_level=host_level)
        slots[slot_id] = slot
        if self.tdx is not None:
            self.tdx.private_hpa[(as_id, slot_id)] = private_hpa
        self._trace("memslot_add", slot_id=slot_id, as_id=as_id, base_gfn=base_gfn,
                    npages=npages, hpa=hpa, readonly=slot.readonly)
        return slot

    def memslot(self, slot_id, as_id=0):
        self._check_as_id(as_id)
        try:
            return self._slots[as_id][slot_id]
        except KeyError:
            raise ValueError(f"slot_id {slot_id!r}: no such memslot in address space {as_id}") from None

    def memslots(self, as_id=0):
        self._check_as_id(as_id)
        return list(self._slots[as_id].values())

    def find_memslot(self, gfn, as_id=0):
        """The memslot holding ``gfn``, or None (MMIO)."""
        self._check_as_id(as_id)
        for slot in self._slots[as_id].values():
            if slot.contains(gfn):
                return slot
        return None

    def delete_memslot(self, slot_id, as_id=0):
        """Zap the slot's mappings in every root, flush, and forget the slot
        (KVM's ``kvm_arch_flush_shadow_memslot``)."""
        slot = self.memslot(slot_id, as_id)
        self.zap_gfn_range(slot.base_gfn, slot.end_gfn, as_id=as_id)
        del self._slots[as_id][slot_id]
        if self.tdx is not None:
            del self.tdx.private_hpa[(as_id, slot_id)]
        self._trace("memslot_delete", slot_id=slot_id, as_id=as_id)

    # -- roots ----------------------------------------------------------------------------

    @property
    def roots(self):
        """All roots, valid or not, as :class:`MmuPage` objects."""
        return tuple(self._roots)

    def get_root(self, as_id=0, role="direct"):
        """Take a reference on the valid root for ``(as_id, role)``, allocating it if
        needed (KVM's ``kvm_tdp_mmu_get_vcpu_root_hpa``). Drop it with :meth:`put_root`."""
        self._check_as_id(as_id)
        if role not in ("direct", "mirror") or (role == "mirror" and self.tdx is None):
            raise ValueError(f"role must be 'direct' (or 'mirror' for a TD), got {role!r}")
        for root in self._roots:
            if root.as_id == as_id and root.role == role and not root.invalid:
                root.refcount += 1
                return root
        if role == "mirror":
            self.tdx.external.ensure_root()
        nbytes = self.fmt.root_table_bytes
        hpa = self.mem.alloc_table(nbytes)
        # One reference for the MMU itself (dropped when invalidated), one for the caller.
        root = MmuPage(hpa, nbytes, self.fmt.root_level, 0, as_id, is_root=True, role=role,
                       refcount=2)
        self._roots.append(root)
        self._trace("root_alloc", hpa=hpa, as_id=as_id, role=role)
        return root

    def put_root(self, root):
        """Drop a reference; the last one frees an (invalid) root's table."""
        self._put_root(root)
        self._end_op()

    def _put_root(self, root):
        if root.refcount <= 0 or root not in self._roots:
            raise ValueError(f"put_root: root {root.hpa:#x} holds no reference")
        if root.refcount == 1 and not root.invalid:
            # The last reference of a valid root is the MMU's own: it goes only by
            # invalidation (kvm_tdp_mmu_invalidate_roots), never by a caller's put.
            raise ValueError(f"put_root: root {root.hpa:#x} is valid and its last "
                             "reference is the MMU's own (invalidate it first)")
        root.refcount -= 1
        if root.refcount:
            return
        self._tdp_mmu_zap_root(root, shared=False)
        self._roots.remove(root)
        self._pending_free.append(root)
        if root.role == "mirror":
            self.tdx.external.free_root()
        self._trace("root_free", hpa=root.hpa, as_id=root.as_id)

    def root_for(self, as_id=0):
        """The root a vCPU in ``as_id`` runs on (its EPTP/nCR3/hgatp table address):
        the vCPU drops an invalid root and loads a valid one, as on KVM's
        ``KVM_REQ_MMU_FREE_OBSOLETE_ROOTS``."""
        return self._vcpu_root_page(as_id).hpa

    def _vcpu_root_page(self, as_id):
        self._check_as_id(as_id)
        root = self._vcpu_root[as_id]
        if root is not None and root.invalid:
            self._vcpu_root[as_id] = None
            self.put_root(root)
            root = None
        if root is None:
            root = self._vcpu_root[as_id] = self.get_root(as_id)
        return root

    def _vcpu_mirror_root_page(self):
        if self.tdx is None:
            raise ValueError("tdx: only a TD has mirror and external roots")
        if not self.tdx.external.hkid_assigned:
            raise RuntimeError("the TD is torn down")
        if self._vcpu_mirror_root is None:
            self._vcpu_mirror_root = self.get_root(0, "mirror")
        return self._vcpu_mirror_root

    def mirror_root_for(self, as_id=0):
        """A TD's mirror root (KVM's ``kvm_tdp_mmu_get_vcpu_root_hpa(vcpu, true)``):
        the TDP core edits it; hardware never sees it."""
        self._check_as_id(as_id)
        return self._vcpu_mirror_root_page().hpa

    def external_root_for(self, as_id=0):
        """A TD's external root: what the hardware walks for private GPAs (the
        secure-EPT root of the TD), allocated with the mirror root."""
        self._check_as_id(as_id)
        self._vcpu_mirror_root_page()
        return self.tdx.external.root

    def is_private_gfn(self, gfn):
        """Whether a TD's ``gfn`` is private (KVM's ``kvm_mem_is_private``)."""
        if self.tdx is None:
            raise ValueError("tdx: only a TD has private memory")
        return self.tdx.attributes.is_private(gfn)

    def invalidate_all_roots(self):
        """Mark every root obsolete (KVM's ``kvm_tdp_mmu_invalidate_roots``). A TD's
        mirror root stays: external tables cannot be zapped fast, only torn down."""
        self._invalidate_roots(mirror=False)

    def _invalidate_roots(self, mirror):
        for root in self._roots:
            if not root.invalid and (mirror or root.role != "mirror"):
                root.invalid = True
                root.scheduled_to_zap = True
                self._trace("root_invalidate", hpa=root.hpa, as_id=root.as_id)

    def zap_invalidated_roots(self):
        """Zap the roots invalidated since the last call and drop the MMU's reference
        (KVM's ``kvm_tdp_mmu_zap_invalidated_roots``)."""
        for root in list(self._roots):
            if not root.scheduled_to_zap:
                continue
            root.scheduled_to_zap = False
            root.refcount += 1
            # Mirror entries are removed only with the MMU lock held for write.
            self._tdp_mmu_zap_root(root, shared=root.role != "mirror")
            self._put_root(root)
            self._put_root(root)

    def zap_all_fast(self):
        """Invalidate and zap every root, then flush (KVM's ``kvm_mmu_zap_all_fast``).
        vCPUs move to new roots on their next :meth:`root_for`."""
        self.invalidate_all_roots()
        self.zap_invalidated_roots()
        self.flush_remote_tlbs()
        self._end_op()

    def zap_all(self):
        """Zap and free everything, vCPU roots included (VM teardown, KVM's
        ``kvm_mmu_zap_all``): afterwards no table page is allocated. A TD is torn
        down: its HKID is released first (no vCPU runs), so the external tables'
        pages are reclaimed without block and track, and the TD cannot run again."""
        if self.tdx is not None:
            self.tdx.external.release_hkid()
            self._invalidate_roots(mirror=True)
        self.zap_all_fast()
        for as_id, root in enumerate(self._vcpu_root):
            if root is not None:
                self._vcpu_root[as_id] = None
                self._put_root(root)
        if self._vcpu_mirror_root is not None:
            root, self._vcpu_mirror_root = self._vcpu_mirror_root, None
            self._put_root(root)
        self._end_op()

    # -- entry updates (the concurrency protocol) --------------------------------------

    def _gfn_bits(self, root):
        """The GFN bits a root is indexed with (KVM's ``kvm_gfn_root_bits``): a TD's
        shared bit for its direct root, else none."""
        return self.tdx.shared_gfn_bit if self.tdx is not None and root.role == "direct" else 0

    def _iter(self, root, min_level, start, end):
        end = min(end, self._max_gfn)
        bits = self._gfn_bits(root)
        if bits:
            it = _SharedBitIter(self.mem, self.fmt, root.hpa, min_level, start, end, bits)
        else:
            it = TdpIter(self.mem, self.fmt, root.hpa, min_level, start, end)
        it.as_id = root.as_id
        it.role = root.role
        it.mirror = root.role == "mirror"
        return it

    def _cond_resched(self, it, flush, shared):
        """KVM's ``tdp_mmu_iter_cond_resched``: maybe yield; flush first if owed."""
        if not self.yield_every or it.next_last_level_gfn == it.yielded_gfn:
            return False
        self._steps += 1
        if self._steps % self.yield_every:
            return False
        if flush:
            self.flush_remote_tlbs()
        self._trace("yield", gfn=it.next_last_level_gfn, shared=shared)
        if self.on_yield is not None:
            self.on_yield(self)
        it.yielded = True
        return True

    def _xchg(self, addr, new):
        while True:
            old = self.mem.read64(addr)
            if self.mem.cmpxchg64(addr, old, new)[0]:
                return old

    def _set_spte_atomic(self, it, new):
        """KVM's ``tdp_mmu_set_spte_atomic``: compare-exchange against ``it.old_spte``.

        On failure ``it.old_spte`` holds the current word (an A/D bit set by the
        walker, or another update) and the caller retries or gives up.
        """
        if self.fmt.tdp_is_frozen(it.old_spte):
            return False
        if it.mirror:
            return self._set_mirror_spte_atomic(it, new)
        ok, current = self.mem.cmpxchg64(it.sptep, it.old_spte, new)
        if not ok:
            it.old_spte = current
            return False
        self._handle_changed_spte(it.as_id, it.gfn, it.old_spte, new, it.level, True)
        return True

    def _set_mirror_spte_atomic(self, it, new):
        """KVM's ``__tdp_mmu_set_spte_atomic`` on a mirror entry (``set_external_spte_present``):
        freeze the entry so that no other update can race with the slow external call,
        propagate, then commit ``new``; if the call fails, restore the old entry.

        Only present entries are installed this way: removal needs the MMU lock held
        for write (KVM_BUG_ON in KVM), see :meth:`_iter_set_spte`.
        """
        fmt = self.fmt
        old = it.old_spte
        if not fmt.tdp_is_shadow_present(new):
            raise RuntimeError(f"mirror entry {it.sptep:#x} (gfn {it.gfn:#x}): removal under "
                               "a shared MMU lock cannot be propagated")
        ok, current = self.mem.cmpxchg64(it.sptep, old, fmt.tdp_frozen_spte())
        if not ok:
            it.old_spte = current
            return False
        try:
            self._propagate_present(it.gfn, it.level, old, new)
        except BaseException:
            self.mem.write64(it.sptep, old)
            raise
        self.mem.write64(it.sptep, new)
        self._handle_changed_spte(it.as_id, it.gfn, old, new, it.level, True)
        return True

    def _propagate_present(self, gfn, level, old, new):
        """The external call for a mirror entry becoming ``new`` (present): link a
        table (``link_external_spt``), map a page (``set_external_spte``), or split a
        2M page (the huge-page series' ``split_external_spt``: block, track, demote)."""
        fmt, ext = self.fmt, self.tdx.external
        gfn &= ~(self._pages_at(level) - 1)
        was_present = fmt.tdp_is_shadow_present(old)
        if fmt.tdp_is_last_spte(new, level):
            if was_present:
                raise RuntimeError(f"mirror gfn {gfn:#x} level {level}: a present private "
                                   "leaf cannot change in place")
            ext.add_leaf(gfn, level, fmt.tdp_spte_frame(new, level))
        elif not was_present:
            ext.add_table(gfn, level - 1)
        elif fmt.tdp_is_last_spte(old, level):
            ext.block(gfn, level)
            try:
                ext.track()
                ext.split(gfn, level)
            except BaseException:
                ext.unblock(gfn, level)
                raise
        else:
            raise RuntimeError(f"mirror gfn {gfn:#x} level {level}: a table cannot be "
                               "replaced by another")

    def _remove_external_spte(self, gfn, level, old):
        """KVM's ``remove_external_spte`` for a zapped mirror leaf (TDX's
        ``tdx_sept_remove_private_spte``): block, track, remove; after teardown a
        plain reclaim."""
        fmt, ext = self.fmt, self.tdx.external
        if not fmt.tdp_is_shadow_present(old) or not fmt.tdp_is_last_spte(old, level):
            return
        if ext.hkid_assigned:
            ext.block(gfn, level)
            ext.track()
        ext.remove(gfn, level, fmt.tdp_spte_frame(old, level))

    def _free_external_spt(self, sp):
        """KVM's ``free_external_spt`` for a removed mirror table (TDH.MEM.SEPT.REMOVE
        on a live TD: block and track the linking entry first)."""
        ext = self.tdx.external
        if ext.hkid_assigned:
            ext.block(sp.gfn, sp.level + 1)
            ext.track()
        ext.free_table(sp.gfn, sp.level)

    def _kick_vcpus(self):
        """TDH.MEM.TRACK's vCPU kick: every private translation of the TD goes (the
        TDX module flushes at the next TD entry). Tables pending free wait for the
        VM's own flush."""
        self._counters["tlb_flush"] += 1
        self._trace("tlb_flush", gfn=None, npages=None, space="private")
        self.sink.flush_all(space="private")

    def _iter_set_spte(self, it, new):
        """KVM's ``tdp_mmu_iter_set_spte`` (mmu_lock held for write): an exchange, so
        the A/D bits the walker set meanwhile are seen by the change handler. A mirror
        entry can only be removed this way, then its external entry goes."""
        if it.mirror and self.fmt.tdp_is_shadow_present(new):
            raise RuntimeError(f"mirror entry {it.sptep:#x}: installed only by a frozen "
                               "compare-exchange")
        old = self._xchg(it.sptep, new)
        self._handle_changed_spte(it.as_id, it.gfn, old, new, it.level, False)
        if it.mirror:
            self._remove_external_spte(it.gfn, it.level, old)
        it.old_spte = new

    def _handle_changed_spte(self, as_id, gfn, old, new, level, shared):
        """KVM's ``handle_changed_spte``: statistics, dirty bits that would be lost,
        and the teardown of a table that is no longer linked."""
        if old == new:
            return
        fmt = self.fmt
        was_present = fmt.tdp_is_shadow_present(old)
        is_present = fmt.tdp_is_shadow_present(new)
        was_leaf = was_present and fmt.tdp_is_last_spte(old, level)
        is_leaf = is_present and fmt.tdp_is_last_spte(new, level)
        self._trace("kvm_tdp_mmu_spte_changed", as_id=as_id, gfn=gfn, level=level,
                    old_spte=old, new_spte=new)
        if was_leaf != is_leaf:
            self.page_stats[level] += 1 if is_leaf else -1
        if (was_leaf and fmt.tdp_ad_enabled(self.opts) and fmt.tdp_is_dirty(old, self.opts)
                and (not is_present or (is_leaf and (
                    not fmt.tdp_is_dirty(new, self.opts)
                    or fmt.tdp_spte_frame(old, level) != fmt.tdp_spte_frame(new, level))))):
            # A D bit the walker set is about to disappear: log it first (a split keeps
            # it in the children, so a leaf becoming a table is not a loss).
            slot = self.find_memslot(gfn, as_id)
            if slot is not None and slot.dirty_logging:
                slot.mark_dirty(gfn, self._pages_at(level))
        if was_present and not was_leaf and (is_leaf or not is_present):
            self._handle_removed_pt(fmt.tdp_child_table(old, level), shared)

    def _handle_removed_pt(self, pt, shared):
        """KVM's ``handle_removed_pt``: freeze every child (so a racing fault retries
        instead of writing into a dying table), handle each old child, then queue the
        table to be freed after the next TLB flush (KVM frees it after an RCU grace
        period)."""
        sp = self._pages.pop(pt)
        self._possible_nx.pop(pt, None)
        fmt = self.fmt
        frozen = fmt.tdp_frozen_spte()
        words = self.mem.read_page(pt, sp.nbytes)
        old_words = words.copy()
        words[:] = frozen                       # one exchange per entry, all at once
        step = self._pages_at(sp.level)
        mirror = sp.role == "mirror"
        if mirror and shared:
            raise RuntimeError(f"mirror table {pt:#x} removed under a shared MMU lock")
        if sp.level == 1:
            self._handle_removed_leaves(sp, old_words)
            if mirror:
                for index in fmt.tdp_present_mask(old_words).nonzero()[0]:
                    self._remove_external_spte(sp.gfn + int(index), 1, int(old_words[index]))
        else:
            for index in old_words.nonzero()[0]:
                old = int(old_words[index])
                if fmt.tdp_is_shadow_present(old):
                    gfn = sp.gfn + int(index) * step
                    self._handle_changed_spte(sp.as_id, gfn, old, frozen, sp.level, shared)
                    if mirror:
                        self._remove_external_spte(gfn, sp.level, old)
        if mirror:
            self._free_external_spt(sp)
        self._pending_free.append(sp)

    def _handle_removed_leaves(self, sp, old_words):
        """``_handle_changed_spte`` for a whole last-level table at once: it holds
        only leaves, so only the statistics and the D bits need handling."""
        fmt, opts = self.fmt, self.opts
        present = fmt.tdp_present_mask(old_words)
        self.page_stats[1] -= int(present.sum())
        if self.trace:
            frozen = fmt.tdp_frozen_spte()
            for index in present.nonzero()[0]:
                self._trace("kvm_tdp_mmu_spte_changed", as_id=sp.as_id, gfn=sp.gfn + int(index),
                            level=1, old_spte=int(old_words[index]), new_spte=frozen)
        if fmt.tdp_ad_enabled(opts):
            for index in (present & fmt.tdp_dirty_mask(old_words, opts)).nonzero()[0]:
                slot = self.find_memslot(sp.gfn + int(index), sp.as_id)
                if slot is not None and slot.dirty_logging:
                    slot.mark_dirty(sp.gfn + int(index))

    def _alloc_sp(self, level, gfn, as_id, role="direct"):
        nbytes = self.fmt.table_bytes(level)
        return MmuPage(self.mem.alloc_table(nbytes), nbytes, level, gfn, as_id, role=role)

    def _link_sp(self, it, sp, shared):
        """KVM's ``tdp_mmu_link_sp``: point the entry at the child table ``sp``."""
        new = self.fmt.tdp_make_nonleaf(sp.hpa, self.opts)
        if shared:
            try:
                linked = self._set_spte_atomic(it, new)
            except BaseException:
                # A failed external call (mirror roots): the entry was restored, the
                # new table is not reachable.
                self.mem.free_table(sp.hpa, sp.nbytes)
                raise
            if not linked:
                return False
        else:
            self._iter_set_spte(it, new)
        sp.parent_sptep = it.sptep
        self._pages[sp.hpa] = sp
        return True

    def _split_huge_page(self, it, sp, shared):
        """KVM's ``tdp_mmu_split_huge_page``: fill ``sp`` with entries that map the
        huge page exactly as it was (one vectorized write), then link it in place of
        the huge entry. The translation is unchanged, so no TLB flush."""
        level = it.level
        child_level = level - 1
        executable = True if (child_level == 1 and self.nx_huge_pages) else None
        children = self.fmt.tdp_split_children(it.old_spte, level, self.opts,
                                               executable=executable)
        self.mem.read_page(sp.hpa, sp.nbytes)[:] = children
        if not self._link_sp(it, sp, shared):
            return False
        self.page_stats[child_level] += len(children)
        self._trace("kvm_mmu_split_huge_page", gfn=it.gfn, spte=it.old_spte, level=level,
                    errno=0)
        return True

    # -- page faults ---------------------------------------------------------------------

    def translate(self, gpa, access, *, as_id=0, ad_update=False):
        """The reference walker on the vCPU root of ``as_id`` (allocated if the vCPU
        has none yet), with the VM's options: what the hardware would do, so a TD's
        private GPA walks the external root."""
        root = self.root_for(as_id)
        if self.tdx is not None and not gpa >> self.tdx.shared_bit & 1:
            root = self.external_root_for(as_id)
        return translate(self.mem, self.fmt, root, gpa, access, vm=self.opts,
                         ad_update=ad_update)

    def max_mapping_level(self, slot, gfn, max_level=None, *, private=False):
        """KVM's ``kvm_mmu_max_mapping_level``: the largest level whose page around
        ``gfn`` lies in ``slot``, is backed by an equally aligned host range no larger
        than the host mapping, and is not disallowed by dirty logging. In a TD the
        whole page must have one memory attribute (``private``, KVM's
        ``hugepage_has_attrs``), and private pages are at most 2M."""
        level = min(max(self._map_levels), slot.host_level,
                    max_level if max_level is not None else self.fmt.levels)
        if slot.dirty_logging:
            return 1
        frame = slot.hpa
        if private:
            level = min(level, 2)
            frame = self.tdx.private_hpa[(slot.as_id, slot.slot_id)]
        tracked = self._write_tracked[slot.as_id]
        while level > 1:
            n = self._pages_at(level)
            first = gfn & ~(n - 1)
            if (level in self._map_levels and first >= slot.base_gfn
                    and first + n <= slot.end_gfn
                    and not (slot.base_gfn ^ (frame >> PAGE_SHIFT)) & (n - 1)
                    and not any(first <= g < first + n for g in tracked)
                    and (self.tdx is None
                         or self.tdx.attributes.uniform(first, first + n) is private)):
                return level
            level -= 1
        return 1

    def handle_fault(self, gpa, access, *, as_id=0, max_level=None):
        """Handle a stage-2 fault at ``gpa`` for ``access`` (``"read"``, ``"write"``,
        ``"execute"``) on the vCPU root of ``as_id``; returns a :class:`PfResult`.
        After FIXED, SPURIOUS or RETRY the access is retried."""
        check_access(access)
        self._check_as_id(as_id)
        if not isinstance(gpa, int) or gpa < 0:
            raise ValueError(f"gpa must be a non-negative integer, got {gpa!r}")
        in_range = self.fmt.gpa_in_range(gpa)
        private = False
        if self.tdx is not None and in_range:
            # KVM's kvm_is_addr_direct: the shared bit selects the direct root; the
            # fault's GFN never includes it.
            private = not gpa >> self.tdx.shared_bit & 1
            gpa &= ~(1 << self.tdx.shared_bit)
        gfn = gpa >> PAGE_SHIFT
        fault = PageFault(gfn=gfn, write=access == "write", exec=access == "execute",
                          as_id=as_id, max_level=max(self._map_levels) if max_level is None
                          else max_level,
                          # Private leaves are always executable (the TDX module maps
                          # them so): no NX huge-page mitigation for them.
                          nx_huge_page_workaround_enabled=self.nx_huge_pages and not private,
                          private=private)
        self._trace("kvm_page_fault", gpa=gpa, access=access, as_id=as_id)
        slot = self.find_memslot(gfn, as_id) if in_range else None
        if slot is None:
            return self._fault_done(fault, PfResult.EMULATE, "mmio")
        if self.tdx is not None and self.tdx.attributes.is_private(gfn) != private:
            return self._fault_done(fault, PfResult.MEMORY_FAULT,
                                    "shared" if private else "private")
        if fault.write and slot.readonly:
            return self._fault_done(fault, PfResult.EMULATE, "readonly")
        if fault.write and gfn in self._write_tracked[as_id]:
            return self._fault_done(fault, PfResult.EMULATE, "write-tracked")
        fault.slot, fault.map_writable = slot, not slot.readonly
        fault.hpa = self.tdx.private_frame(slot, gfn) if private else slot.gfn_to_hpa(gfn)
        root = self._vcpu_mirror_root_page() if private else self._vcpu_root_page(as_id)
        # mmu_topup_memory_caches: a fault may need one table per level below the root,
        # and a private one as many external tables again.
        if self.mem.free_pages < (self.fmt.root_level - 1) * (2 if private else 1):
            return self._fault_done(fault, PfResult.NOMEM, "no table pages")
        self._hugepage_adjust(fault)
        result = self._tdp_mmu_map(fault, root)
        self._end_op()
        return self._fault_done(fault, result, "")

    def _fault_done(self, fault, result, reason):
        self._counters[result] += 1
        self._trace("kvm_page_fault_done", gfn=fault.gfn, result=result.value,
                    level=fault.goal_level, reason=reason)
        return result

    def _hugepage_adjust(self, fault):
        """KVM's ``kvm_mmu_hugepage_adjust``."""
        fault.req_level = fault.goal_level = 1
        if fault.max_level <= 1:
            return
        fault.req_level = self.max_mapping_level(fault.slot, fault.gfn, fault.max_level,
                                                 private=fault.private)
        if fault.req_level == 1:
            return
        fault.huge_page_disallowed = fault.exec and fault.nx_huge_page_workaround_enabled
        if not fault.huge_page_disallowed:
            fault.goal_level = fault.req_level

    def _disallowed_hugepage_adjust(self, fault, spte, level):
        """KVM's ``disallowed_hugepage_adjust``: a table that replaced a huge page for
        an execute fault stays; map one level lower instead of collapsing it."""
        if level > 1 and level == fault.goal_level and self.fmt.tdp_is_shadow_present(spte) \
                and not self.fmt.tdp_is_last_spte(spte, level):
            child = self._pages.get(self.fmt.tdp_child_table(spte, level))
            if child is not None and child.nx_huge_page_disallowed:
                fault.goal_level -= 1

    def _tdp_mmu_map(self, fault, root):
        """KVM's ``kvm_tdp_mmu_map``: walk to the goal level, linking new tables and
        splitting huge pages in the way, then install the leaf."""
        fmt = self.fmt
        changed = False
        for it in self._iter(root, 1, fault.gfn, fault.gfn + 1):
            if fault.nx_huge_page_workaround_enabled:
                self._disallowed_hugepage_adjust(fault, it.old_spte, it.level)
            if it.mirror and it.level == fault.goal_level and it.level > 1 \
                    and fmt.tdp_child_table(it.old_spte, it.level) is not None:
                # The external tables cannot merge a table into a huge page (no
                # promotion): map below the table.
                fault.goal_level -= 1
            if it.level == fault.goal_level:
                return self._map_handle_target_level(fault, it, changed)
            # A frozen entry belongs to a concurrent zap: give up and let the vCPU retry.
            if fmt.tdp_is_frozen(it.old_spte):
                return PfResult.RETRY
            present = fmt.tdp_is_shadow_present(it.old_spte)
            if present and not fmt.tdp_is_last_spte(it.old_spte, it.level):
                continue
            try:
                sp = self._alloc_sp(it.level - 1, it.gfn & ~(self._pages_at(it.level) - 1),
                                    fault.as_id, root.role)
            except OutOfTablePages:
                return PfResult.NOMEM
            sp.nx_huge_page_disallowed = (fault.huge_page_disallowed
                                          and fault.req_level >= it.level)
            ok = (self._split_huge_page(it, sp, True) if present
                  else self._link_sp(it, sp, True))
            if not ok:
                self.mem.free_table(sp.hpa, sp.nbytes)
                return PfResult.RETRY
            changed = True
            if sp.nx_huge_page_disallowed:
                self._possible_nx[sp.hpa] = sp
        # The walk ended above the goal level (an entry changed under it).
        return PfResult.RETRY

    def _map_handle_target_level(self, fault, it, changed):
        """KVM's ``tdp_mmu_map_handle_target_level``."""
        fmt, opts = self.fmt, self.opts
        level, old = it.level, it.old_spte
        npages = self._pages_at(level)
        gfn = fault.gfn & ~(npages - 1)
        hpa = fault.hpa - ((fault.gfn - gfn) << PAGE_SHIFT)
        space = self._root_space(it)
        if fmt.tdp_is_frozen(old):
            return PfResult.RETRY
        old_leaf = fmt.tdp_is_shadow_present(old) and fmt.tdp_is_last_spte(old, level)
        access = "write" if fault.write else "execute" if fault.exec else "read"
        done = PfResult.FIXED if changed else PfResult.SPURIOUS
        if old_leaf and fmt.tdp_spte_frame(old, level) == hpa \
                and fmt.tdp_access_allowed(old, level, access, opts):
            return done
        logging = fault.slot.dirty_logging
        ad = fmt.tdp_ad_enabled(opts)
        # While logging by W, only a write fault makes a page writable (and logs it);
        # with A/D bits the walker's D bit logs the write.
        tracked = gfn in self._write_tracked[fault.as_id]
        writable = fault.map_writable and not tracked and (fault.write or not logging or ad)
        dirty = writable and (fault.write or (not logging and fmt.tdp_ad_faults(opts)))
        executable = not (level > 1 and self.nx_huge_pages)
        if fault.private:
            # The external leaf is RWX with A/D set; the mirror says the same.
            writable = dirty = executable = True
        new = fmt.tdp_make_spte(hpa, level, opts, writable=writable, executable=executable,
                                host_writable=fault.map_writable,
                                mmu_writable=fault.map_writable and not tracked,
                                accessed=True, dirty=dirty)
        if new == old:
            return done
        if not self._set_spte_atomic(it, new):
            return PfResult.RETRY
        if fmt.tdp_is_shadow_present(old) and not old_leaf:
            # A table was replaced by a huge page: its cached walks must go.
            self.flush_remote_tlbs_range(gfn, npages, space=space)
        elif old_leaf and (fmt.tdp_spte_frame(old, level) != hpa
                           or self._leaf_spte_change_needs_tlb_flush(old, new)):
            self.flush_remote_tlbs_range(gfn, npages, space=space)
        if writable and logging and (dirty or not ad):
            fault.slot.mark_dirty(gfn, npages)
        self._trace("kvm_mmu_set_spte", gfn=gfn, level=level, spte=new)
        return PfResult.FIXED

    # -- zapping -------------------------------------------------------------------------

    def _root_space(self, root):
        """The translations a root (or an iterator over it) serves: ``"both"`` for an
        ordinary VM, ``"private"`` (mirror) or ``"shared"`` (direct) for a TD."""
        if self.tdx is None:
            return "both"
        return "private" if root.role == "mirror" else "shared"

    def _roots_of(self, as_id, only_valid=False, space="both"):
        """The roots of ``as_id``; ``space="shared"`` leaves out a TD's mirror root
        (what KVM does for every operation that private memory does not support:
        aging, write-protection for dirty logging, huge-page recovery), and
        ``"private"`` keeps only it."""
        return [r for r in self._roots if r.as_id == as_id and not (only_valid and r.invalid)
                and (space == "both" or self._root_space(r) in ("both", space))]

    def _tdp_mmu_zap_leafs(self, root, start, end, flush):
        fmt = self.fmt
        for it in self._iter(root, 1, start, end):
            if self._cond_resched(it, flush, False):
                flush = False
                continue
            if not fmt.tdp_is_shadow_present(it.old_spte) \
                    or not fmt.tdp_is_last_spte(it.old_spte, it.level):
                continue
            self._iter_set_spte(it, 0)
            flush = True
        return flush

    def zap_gfn_range(self, start, end, *, as_id=0, flush=True, space="both"):
        """Zap the leaves mapping ``[start, end)`` in every root of ``as_id`` (KVM's
        ``kvm_tdp_mmu_zap_leafs``; a huge page overlapping the range goes whole).
        Tables stay. Returns whether a flush was (or, with ``flush=False``, is) owed.
        A TD may zap only its ``"private"`` (mirror and external) or ``"shared"``
        mappings (KVM_PROCESS_PRIVATE / KVM_PROCESS_SHARED); a private zap first
        splits 2M private pages that straddle the range's ends, so that the private
        memory outside the range stays mapped (the TDX huge-page series)."""
        self._check_as_id(as_id)
        check_space(space)
        self._check_gfn_range(start, end)
        if space != "both" and self.tdx is None:
            raise ValueError(f"space: only a TD has private and shared mappings, got {space!r}")
        owed = False
        for root in self._roots_of(as_id, space=space):
            if root.role == "mirror":
                self._split_straddling(root, start, end)
            owed = self._tdp_mmu_zap_leafs(root, start, min(end, self._max_gfn), owed)
        if owed and flush:
            self.flush_remote_tlbs_range(start, end - start, space=space)
        self._end_op()
        return owed

    def _split_straddling(self, root, start, end):
        """Split the huge leaves of ``root`` that hold ``start`` or ``end - 1`` without
        lying inside ``[start, end)``, down to 4K."""
        for gfn in {start, end - 1} if end > start else ():
            n = self._pages_at(2)
            first = gfn & ~(n - 1)
            if first < start or first + n > end:
                self._split_huge_pages_root(root, first, first + n, 1, SplitResult())

    def _tdp_mmu_zap_root(self, root, shared):
        """KVM's ``tdp_mmu_zap_root``: zap the 1 GiB-level entries first (each removal
        frees at most one 1 GiB subtree), then the entries above."""
        fmt = self.fmt
        if root.role == "mirror" and shared:
            raise RuntimeError("a mirror root is zapped only with the MMU lock held for write")
        for zap_level in (min(PG_LEVEL_1G, root.level), root.level):
            for it in self._iter(root, zap_level, 0, self._max_gfn):
                if self._cond_resched(it, False, shared):
                    continue
                if not fmt.tdp_is_shadow_present(it.old_spte) or it.level > zap_level:
                    continue
                if shared:
                    while not self._set_spte_atomic(it, 0):
                        if fmt.tdp_is_frozen(it.old_spte):
                            raise RuntimeError(f"entry {it.sptep:#x} frozen during a root zap")
                else:
                    self._iter_set_spte(it, 0)

    def zap_root(self, root):
        """Zap every entry of ``root`` and flush (the root table itself stays)."""
        if root not in self._roots:
            raise ValueError("zap_root: not a root of this VM")
        self._tdp_mmu_zap_root(root, shared=False)
        self.flush_remote_tlbs(space=self._root_space(root))
        self._end_op()

    # -- memory attributes (a TD's private/shared conversions) ------------------------

    def set_memory_attributes(self, gfn, npages, private):
        """KVM_SET_MEMORY_ATTRIBUTES on a TD: make ``[gfn, gfn + npages)`` private or
        shared. The mappings of the side the range leaves are zapped and flushed first
        (KVM's ``kvm_arch_pre_set_memory_attributes``: shared mappings for a
        conversion to private, mirror and external ones for a conversion to shared);
        later faults map the other side."""
        if self.tdx is None:
            raise ValueError("tdx: only a TD has memory attributes")
        for name, value in (("gfn", gfn), ("npages", npages)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if gfn + npages > self._max_gfn:
            raise ValueError(f"gfn/npages: the range ends beyond the TD's shared bit "
                             f"{self.tdx.shared_bit}")
        private = bool(private)
        end = gfn + npages
        self._trace("memory_attributes", gfn=gfn, npages=npages, private=private)
        self.zap_gfn_range(gfn, end, space="shared" if private else "private")
        self.tdx.attributes.set_range(gfn, end, private)
        self._end_op()

    # -- dirty logging and eager splitting --------------------------------------------

    def _clear_dirty_gfn_range(self, root, start, end, mask=None):
        """KVM's ``clear_dirty_gfn_range`` / ``clear_dirty_pt_masked``: clear D where
        A/D bits exist, else W (MMU-writable stays, so a write fault can log and
        restore it). With ``mask``, only leaves covering a GFN ``start + i`` whose bit
        ``i`` is set. Last-level tables are done whole, vectorized."""
        fmt, opts = self.fmt, self.opts
        changed = False
        for it in self._iter(root, 2 if mask is None else 1, start, end):
            if self._cond_resched(it, False, True):
                continue
            while True:
                old = it.old_spte
                if it.level == 2 and mask is None:
                    child = fmt.tdp_child_table(old, 2)
                    if child is not None:
                        changed |= self._clear_dirty_leaf_table(it, child, start, end)
                        break
                if not fmt.tdp_is_shadow_present(old) or not fmt.tdp_is_last_spte(old, it.level) \
                        or not fmt.tdp_is_dirty(old, opts):
                    break
                if mask is not None:
                    lo = max(it.gfn, start) - start
                    hi = min(it.gfn + self._pages_at(it.level), end) - start
                    if not (mask >> lo) & ((1 << (hi - lo)) - 1):
                        break
                if self._set_spte_atomic(it, fmt.tdp_clear_dirty(old, opts)):
                    changed = True
                    break
        return changed

    def _clear_dirty_leaf_table(self, it, table, start, end):
        """Clear D (or W) in the last-level ``table`` under ``it`` for GFNs in
        ``[start, end)``: one read-modify-write of the page, which nothing can
        interleave with in this single-threaded model (the walker runs between model
        steps), followed by what ``_handle_changed_spte`` would do: log lost D bits."""
        fmt, opts = self.fmt, self.opts
        words = self.mem.read_page(table, fmt.table_bytes(1))
        lo = max(start - it.gfn, 0)
        hi = min(end - it.gfn, len(words))
        part = words[lo:hi]
        dirty = fmt.tdp_present_mask(part) & fmt.tdp_dirty_mask(part, opts)
        index = dirty.nonzero()[0]
        if not len(index):
            return False
        old = part[index]
        part[index] = fmt.tdp_clear_dirty_words(old, opts)
        gfns = np.uint64(it.gfn + lo) + index.astype(np.uint64)
        if self.trace:
            for gfn, old_word, new_word in zip(gfns, old, part[index]):
                self._trace("kvm_tdp_mmu_spte_changed", as_id=it.as_id, gfn=int(gfn), level=1,
                            old_spte=int(old_word), new_spte=int(new_word))
        if fmt.tdp_ad_enabled(opts):
            for slot in self._slots[it.as_id].values():
                if slot.dirty_logging:
                    inside = gfns[(gfns >= slot.base_gfn) & (gfns < slot.end_gfn)]
                    if len(inside):
                        slot.mark_dirty_gfns(inside)
        return True

    def set_dirty_logging(self, slot_id, enable, *, as_id=0, eager_split=True):
        """Start or stop dirty logging on a memslot (KVM's ``kvm_mmu_slot_apply_flags``).

        Start: eagerly split huge pages to 4K (no flush), then clear D (or W) on every
        leaf and flush the slot once. Pages dirty (D set) when logging starts show up in
        the first bitmap. Stop: recover huge pages, one batched flush. Returns the
        :class:`SplitResult` of the split, or None.

        In a TD, 2M private pages are split too (through the external tables), but
        private leaves cannot be write-protected nor their D bits read (the TDX module
        owns them): every mapped private page is reported dirty in every bitmap, and
        private huge pages are not recovered.
        """
        slot = self.memslot(slot_id, as_id)
        enable = bool(enable)
        result = None
        if enable == slot.dirty_logging:
            return result
        slot.dirty_logging = enable
        slot.dirty_bitmap[:] = 0
        self._trace("dirty_logging", slot_id=slot_id, as_id=as_id, enable=enable)
        if enable:
            if eager_split:
                result = self.split_huge_pages(slot_id, as_id=as_id)
            for root in self._roots_of(as_id, space="shared"):
                self._clear_dirty_gfn_range(root, slot.base_gfn, slot.end_gfn)
            # Unconditionally, as KVM's kvm_mmu_slot_apply_flags does: a TLB may hold a
            # writable translation whose entry write-protection did not change (aging
            # without A/D bits saved W and cleared R/W/X without a flush), and writes
            # through it would never be logged.
            self.flush_remote_tlbs_memslot(slot_id, as_id)
        else:
            self.recover_huge_pages(slot_id, as_id=as_id)
        self._end_op()
        return result

    def get_dirty_log(self, slot_id, *, as_id=0):
        """KVM_GET_DIRTY_LOG: collect D bits into the bitmap, return a copy of it and
        clear it, re-protect what was dirty, flush the slot if anything was dirty.
        The bitmap is ``uint64`` words, bit ``i`` for ``base_gfn + i``."""
        slot = self.memslot(slot_id, as_id)
        if not slot.dirty_logging:
            raise ValueError(f"slot_id {slot_id}: dirty logging is off")
        changed = False
        ad = self.fmt.tdp_ad_enabled(self.opts)
        if ad:
            for root in self._roots_of(as_id, space="shared"):
                changed |= self._clear_dirty_gfn_range(root, slot.base_gfn, slot.end_gfn)
        for root in self._roots_of(as_id, space="private") if self.tdx is not None else ():
            for gfn, level, word, _ in self.walk_present(root):
                if self.fmt.tdp_is_last_spte(word, level) and slot.contains(gfn):
                    slot.mark_dirty(gfn, self._pages_at(level))
        bitmap = slot.dirty_bitmap.copy()
        slot.dirty_bitmap[:] = 0
        if not ad:
            for index in bitmap.nonzero()[0]:
                changed |= self._clear_dirty_pt_masked(slot, int(index) * 64, int(bitmap[index]))
        # KVM's kvm_get_dirty_log_protect flushes whenever a bitmap word was set, whether
        # or not re-protecting changed an entry (see set_dirty_logging).
        if changed or bitmap.any():
            self.flush_remote_tlbs_memslot(slot_id, as_id)
        self._end_op()
        return bitmap

    def _clear_dirty_pt_masked(self, slot, offset, mask):
        start = slot.base_gfn + offset
        end = min(start + 64, slot.end_gfn)
        changed = False
        for root in self._roots_of(slot.as_id, space="shared"):
            changed |= self._clear_dirty_gfn_range(root, start, end, mask)
        return changed

    def clear_dirty_log(self, slot_id, first_page, mask, *, as_id=0):
        """KVM_CLEAR_DIRTY_LOG for 64 pages from ``first_page`` (a multiple of 64):
        re-protect the pages whose bit is set in ``mask``, then clear those bits."""
        slot = self.memslot(slot_id, as_id)
        if not slot.dirty_logging:
            raise ValueError(f"slot_id {slot_id}: dirty logging is off")
        if not isinstance(first_page, int) or first_page % 64 or not 0 <= first_page < slot.npages:
            raise ValueError(f"first_page must be a multiple of 64 inside the slot, got {first_page!r}")
        if not isinstance(mask, int) or not 0 <= mask < 1 << 64:
            raise ValueError(f"mask must be a 64-bit unsigned integer, got {mask!r}")
        if mask >> min(64, slot.npages - first_page):
            # kvm_clear_dirty_log_protect's -EINVAL: bits beyond the slot's last page.
            raise ValueError(f"mask {mask:#x} names pages beyond the slot's "
                             f"{slot.npages} pages (first_page {first_page})")
        if self._clear_dirty_pt_masked(slot, first_page, mask) or mask:
            self.flush_remote_tlbs_memslot(slot_id, as_id)    # as kvm_clear_dirty_log_protect
        word = first_page // 64
        slot.dirty_bitmap[word] &= ~slot.dirty_bitmap.dtype.type(mask)
        self._end_op()

    def split_huge_pages(self, slot_id, *, as_id=0, target_level=1):
        """Split every huge page of the slot down to ``target_level`` (KVM's
        ``kvm_tdp_mmu_try_split_huge_pages``): 1G → 2M → 4K in one pre-order pass.
        Stops, reporting ``enomem``, when free table pages reach the low-water mark."""
        slot = self.memslot(slot_id, as_id)
        if target_level not in self.fmt.tdp_map_levels():
            raise ValueError(f"target_level must be one of the levels the TDP core maps "
                             f"{self.fmt.tdp_map_levels()}, got {target_level!r}")
        result = SplitResult()
        for root in self._roots_of(as_id, only_valid=True):
            self._split_huge_pages_root(root, slot.base_gfn, slot.end_gfn, target_level,
                                        result)
            if result.enomem:
                break
        self._end_op()
        return result

    def _split_huge_pages_root(self, root, start, end, target_level, result):
        fmt = self.fmt
        sp = None
        for it in self._iter(root, target_level + 1, start, end):
            while True:
                if self._cond_resched(it, False, True):
                    break
                if not fmt.tdp_is_shadow_present(it.old_spte) \
                        or not fmt.tdp_is_last_spte(it.old_spte, it.level):
                    break
                if sp is None and it.level - 2 == target_level \
                        and start <= it.gfn and it.gfn + self._pages_at(it.level) <= end \
                        and self._split_two_levels(it, result):
                    break
                if sp is None:
                    # A mirror split also takes a page for the external table.
                    if self.mem.free_pages <= self.min_free_pages + it.mirror:
                        result.enomem = True
                        self._trace("kvm_mmu_split_huge_page", gfn=it.gfn, spte=it.old_spte,
                                    level=it.level, errno=-ENOMEM)
                        return
                    sp = self._alloc_sp(it.level - 1, it.gfn, it.as_id, it.role)
                if self._split_huge_page(it, sp, True):
                    result.huge_pages_split += 1
                    result.sptes_created += self.fmt.table_entries(sp.level)
                    sp = None
                    break
        if sp is not None:
            self.mem.free_table(sp.hpa, sp.nbytes)

    def _split_two_levels(self, it, result):
        """Split a huge page two levels down (1G to 4K) with one publish.

        The same entries as two rounds of ``tdp_mmu_split_huge_page``, but the whole
        subtree is built off-line with vectorized writes and linked by one
        compare-exchange, so no intermediate level is ever visible. Returns False,
        touching nothing, when the pages needed would cross the low-water mark or the
        entry changed (the caller then splits one level at a time).
        """
        fmt, opts, mem = self.fmt, self.opts, self.mem
        level = it.level
        n_mid = fmt.table_entries(level - 1)
        if it.mirror or mem.free_pages - (1 + n_mid) < self.min_free_pages:
            return False
        mid = fmt.tdp_split_children(it.old_spte, level, opts)
        low_exec = True if (level - 2 == 1 and self.nx_huge_pages) else None
        row0 = fmt.tdp_split_children(int(mid[0]), level - 1, opts, executable=low_exec)
        block = row0[None, :] + (mid - mid[0])[:, None]
        top = self._alloc_sp(level - 1, it.gfn, it.as_id)
        step = self._pages_at(level - 1)
        subs = [self._alloc_sp(level - 2, it.gfn + i * step, it.as_id) for i in range(n_mid)]
        hpas = np.array([sp.hpa for sp in subs], dtype=np.uint64)
        nbytes = subs[0].nbytes
        if int(hpas[-1]) - int(hpas[0]) == (n_mid - 1) * nbytes and \
                (np.diff(hpas) == nbytes).all():
            mem.read_page(subs[0].hpa, n_mid * nbytes)[:] = block.ravel()
        else:
            for sp, row in zip(subs, block):
                mem.read_page(sp.hpa, nbytes)[:] = row
        # Non-leaf entries are linear in the table address (the frame field).
        first = fmt.tdp_make_nonleaf(subs[0].hpa, opts)
        delta = fmt.tdp_make_nonleaf(subs[0].hpa + PAGE_SIZE, opts) - first
        mem.read_page(top.hpa, top.nbytes)[:] = np.uint64(first) + \
            (hpas - hpas[0]) // np.uint64(PAGE_SIZE) * np.uint64(delta)
        if not self._link_sp(it, top, True):
            for sp in [top] + subs:
                mem.free_table(sp.hpa, sp.nbytes)
            return False
        for index, sp in enumerate(subs):
            sp.parent_sptep = top.hpa + 8 * index
            self._pages[sp.hpa] = sp
        self.page_stats[level - 2] += block.size
        result.huge_pages_split += 1 + n_mid
        result.sptes_created += n_mid + block.size
        self._trace("kvm_mmu_split_huge_page", gfn=it.gfn, spte=it.old_spte, level=level,
                    errno=0)
        return True

    def recover_huge_pages(self, slot_id, *, as_id=0):
        """Replace tables that could be huge pages again with the huge page (KVM's
        ``kvm_tdp_mmu_recover_huge_pages``), one batched flush. Returns the count."""
        slot = self.memslot(slot_id, as_id)
        fmt = self.fmt
        top = max(self._map_levels)
        recovered = 0
        flush = False
        for root in self._roots_of(as_id, only_valid=True, space="shared"):
            for it in self._iter(root, 2, slot.base_gfn, slot.end_gfn):
                while True:
                    if self._cond_resched(it, flush, True):
                        flush = False
                        break
                    old = it.old_spte
                    if it.level > top or not fmt.tdp_is_shadow_present(old) \
                            or fmt.tdp_is_last_spte(old, it.level):
                        break
                    if not slot.contains(it.gfn) \
                            or self.max_mapping_level(slot, it.gfn, private=False) < it.level:
                        break
                    huge = self._make_huge_spte(root, it)
                    if huge is None:
                        break
                    if self._set_spte_atomic(it, huge):
                        recovered += 1
                        flush = True
                        break
        if flush:
            self.flush_remote_tlbs_memslot(slot_id, as_id)
        self._end_op()
        return recovered

    def _make_huge_spte(self, root, parent):
        """KVM's ``tdp_mmu_make_huge_spte``: the huge page built from any leaf under
        ``parent``, or None if the table maps nothing."""
        fmt = self.fmt
        end = parent.gfn + self._pages_at(parent.level)
        for it in self._iter(root, 1, parent.gfn, end):
            if it.level >= parent.level or not fmt.tdp_is_shadow_present(it.old_spte) \
                    or not fmt.tdp_is_last_spte(it.old_spte, it.level):
                continue
            return fmt.tdp_make_huge_spte(it.old_spte, it.level, parent.level, self.opts,
                                          executable=False if self.nx_huge_pages else None)
        return None

    # -- write tracking ----------------------------------------------------------------

    def write_track_add_gfn(self, gfn, *, as_id=0):
        """Write-protect ``gfn`` for the MMU's own use (KVM's ``kvm_write_track_add_gfn``
        plus ``kvm_tdp_mmu_write_protect_gfn``): W and MMU-writable are cleared, huge
        pages over it are disallowed, write faults are emulated. Clearing MMU-writable
        is what makes a TLB flush necessary (spte.h); returns whether one was done."""
        self._check_as_id(as_id)
        if not isinstance(gfn, int) or gfn < 0:
            raise ValueError(f"gfn must be a non-negative integer, got {gfn!r}")
        if self.tdx is not None:
            raise ValueError("write tracking: a TD's private memory cannot be "
                             "write-protected (the TDX module owns its permissions)")
        self._write_tracked[as_id].add(gfn)
        fmt = self.fmt
        flush = False
        for root in self._roots_of(as_id):
            for it in self._iter(root, 1, gfn, gfn + 1):
                while True:
                    old = it.old_spte
                    if not fmt.tdp_is_shadow_present(old) or not fmt.tdp_is_last_spte(old, it.level) \
                            or not fmt.tdp_is_mmu_writable(old):
                        break
                    new = fmt.tdp_clear_mmu_writable(old)
                    if self._set_spte_atomic(it, new):
                        flush |= self._leaf_spte_change_needs_tlb_flush(old, new)
                        break
        if flush:
            self.flush_remote_tlbs_range(gfn, 1)
        self._end_op()
        return flush

    def write_track_remove_gfn(self, gfn, *, as_id=0):
        """Stop write-tracking ``gfn``; the next write fault makes it writable."""
        self._check_as_id(as_id)
        self._write_tracked[as_id].discard(gfn)

    def _leaf_spte_change_needs_tlb_flush(self, old, new):
        """KVM's ``leaf_spte_change_needs_tlb_flush``: only MMU-writable going from 1 to
        0 needs an immediate flush. Clearing W alone (dirty logging) leaves a possibly
        stale writable TLB entry that the caller flushes before reporting the log."""
        return self.fmt.tdp_is_mmu_writable(old) and not self.fmt.tdp_is_mmu_writable(new)

    # -- NX huge pages ---------------------------------------------------------------------

    def recover_nx_huge_pages(self, ratio=4):
        """Zap 1/``ratio`` of the tables that replaced huge pages for execute faults,
        oldest first, so that data accesses map huge pages again (KVM's
        ``kvm_recover_nx_huge_pages``); one flush. Returns how many were zapped."""
        if not isinstance(ratio, int) or ratio < 0:
            raise ValueError(f"ratio must be a non-negative integer, got {ratio!r}")
        to_zap = -(-len(self._possible_nx) // ratio) if ratio else 0
        zapped = 0
        for sp in list(self._possible_nx.values())[:to_zap]:
            if sp.hpa not in self._possible_nx:
                continue
            old = self.mem.read64(sp.parent_sptep)
            if self.fmt.tdp_child_table(old, sp.level + 1) != sp.hpa:
                continue
            pos = _SptePos(sp.parent_sptep, old, sp.level + 1, sp.gfn, sp.as_id)
            if self._set_spte_atomic(pos, 0):
                zapped += 1
        self._trace("nx_huge_page_recovery", zapped=zapped, remaining=len(self._possible_nx))
        if zapped:
            self.flush_remote_tlbs()
        self._end_op()
        return zapped

    # -- aging -----------------------------------------------------------------------------

    def age_gfn_range(self, start, end, *, as_id=0, flush=False):
        """Clear the accessed state of the leaves mapping ``[start, end)`` (A bit, or
        access tracking without A/D bits); returns whether any was young (KVM's
        ``kvm_tdp_mmu_age_gfn_range``). KVM does not flush here; ``flush=True`` does
        (the ``clear_flush_young`` notifier)."""
        self._check_as_id(as_id)
        self._check_gfn_range(start, end)
        fmt, opts = self.fmt, self.opts
        young = False
        # Private memory is not in the host's page tables: no aging (KVM_FILTER_SHARED).
        for root in self._roots_of(as_id, space="shared"):
            for it in self._iter(root, 1, start, end):
                while True:
                    old = it.old_spte
                    if not fmt.tdp_is_shadow_present(old) or not fmt.tdp_is_last_spte(old, it.level) \
                            or not fmt.tdp_is_accessed(old, opts):
                        break
                    new = fmt.tdp_mark_not_accessed(old, opts)
                    ok, current = self.mem.cmpxchg64(it.sptep, old, new)
                    if ok:
                        self._trace("kvm_tdp_mmu_spte_changed", as_id=as_id, gfn=it.gfn,
                                    level=it.level, old_spte=old, new_spte=new)
                        young = True
                        break
                    it.old_spte = current
        if young and flush:
            self.flush_remote_tlbs_range(start, end - start)
        self._end_op()
        return young

    def test_age_gfn(self, start, end, *, as_id=0):
        """Whether any leaf mapping ``[start, end)`` is young; changes nothing."""
        self._check_as_id(as_id)
        self._check_gfn_range(start, end)
        fmt = self.fmt
        for root in self._roots_of(as_id, space="shared"):
            for it in self._iter(root, 1, start, end):
                if fmt.tdp_is_shadow_present(it.old_spte) \
                        and fmt.tdp_is_last_spte(it.old_spte, it.level) \
                        and fmt.tdp_is_accessed(it.old_spte, self.opts):
                    return True
        return False

    # -- TLB flushes -----------------------------------------------------------------------

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

    def flush_remote_tlbs_memslot(self, slot_id, as_id=0):
        """Flush a memslot's range (KVM's ``kvm_flush_remote_tlbs_memslot``)."""
        slot = self.memslot(slot_id, as_id)
        self.flush_remote_tlbs_range(slot.base_gfn, slot.npages)

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

    def _end_op(self):
        if self._pending_free:
            self.flush_remote_tlbs()
