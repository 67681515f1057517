"""The TDP MMU's core, a model of the heart of KVM's arch/x86/kvm/mmu/tdp_mmu.c: roots,
table pages, and the entry updates every other part goes through.

:class:`MmuCore` is what every MMU of the model shares, the TDP MMU and the nested
shadow MMU alike (KVM's ``struct kvm`` MMU state): the format and its options, the
memory tables live in, the flush sink with the frees that wait for a flush, tracing
and statistics. :class:`TdpCore` adds the TDP MMU's roots and table pages and the
concurrency protocol of the package docstring: every update of a live entry is a
compare-exchange (``_set_spte_atomic``) or an exchange (``_iter_set_spte``), and the
change handler (``_handle_changed_spte``) sees the word replaced.
"""

from collections import Counter, deque
from dataclasses import dataclass

from ..memory import HostMemory
from .flush import FlushSink, RemoteTlbFlush
from .iter import PAGE_SHIFT, TdpIter

__all__ = ["MmuCore", "TdpCore", "MmuPage", "Event", "KVM_MIN_FREE_MMU_PAGES"]

#: Table pages kept free by eager splitting (KVM's KVM_MIN_FREE_MMU_PAGES): a split
#: stops, reporting -ENOMEM, rather than leave faults without pages.
KVM_MIN_FREE_MMU_PAGES = 5
ENOMEM = 12
PG_LEVEL_1G = 3          # KVM's level numbering: 1 = 4K, 2 = 2M, 3 = 1G


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
class SptePos:
    """An entry outside an iteration (an iterator's fields, for the setters)."""
    sptep: int
    old_spte: int
    level: int
    gfn: int
    as_id: int
    mirror: bool = False


class MmuCore(RemoteTlbFlush):
    """State and helpers shared by every MMU of the model.

    Parameters
    ----------
    fmt : PageTableFormat
    opts : VmOptions
    memory : HostMemory
        Where the MMU's tables live (shared with the RTL in co-simulation).
    flush_sink : FlushSink, optional
        Receives TLB invalidations (default: dropped).
    trace : bool
        Record :attr:`events`.
    trace_limit : int
        Keep only the last this many events.

    Members
    -------
    fmt, opts, mem, sink
    events : collections.deque of Event
        The tracepoint log, oldest first.
    page_stats : dict
        Leaf entries per level (KVM's ``kvm->stat.pages``).
    """

    def __init__(self, fmt, opts, memory, flush_sink=None, *, trace=True, trace_limit=100_000):
        if not isinstance(memory, HostMemory):
            raise TypeError(f"memory must be a HostMemory, got {type(memory).__name__}")
        self.fmt, self.opts, self.mem = fmt, opts, memory
        self.sink = FlushSink() if flush_sink is None else flush_sink
        self.trace = trace
        self.events = deque(maxlen=trace_limit)
        self.page_stats = {level: 0 for level in range(1, fmt.levels + 1)}
        self._counters = Counter()
        self._pending_free = []          # removed tables awaiting a TLB flush (RCU)

    def _trace(self, name, **args):
        if self.trace:
            self.events.append(Event(name, args))

    def _pages_at(self, level):
        return self.fmt.page_size(level) >> PAGE_SHIFT

    def _leaf_spte_change_needs_tlb_flush(self, old, new):
        """KVM's ``leaf_spte_change_needs_tlb_flush``: only MMU-writable going from 1 to
        0 needs an immediate flush. Clearing W alone (dirty logging) leaves a possibly
        stale writable TLB entry that the caller flushes before reporting the log."""
        return self.fmt.tdp_is_mmu_writable(old) and not self.fmt.tdp_is_mmu_writable(new)

    def _root_space(self, page):
        """The translations a table page serves (see :class:`FlushSink`)."""
        return "both"


class TdpCore(MmuCore):
    """The TDP MMU's roots and table pages, and the entry updates (KVM's tdp_mmu.c).

    Parameters
    ----------
    fmt, opts, memory, flush_sink, trace, trace_limit
        As :class:`MmuCore`.
    address_spaces : int
    min_free_pages, yield_every, on_yield
        As :class:`~sw_model.tdp.Vm`.
    """

    def __init__(self, fmt, opts, memory, flush_sink=None, *, trace=True, trace_limit=100_000,
                 address_spaces=1, min_free_pages=KVM_MIN_FREE_MMU_PAGES, yield_every=0,
                 on_yield=None):
        super().__init__(fmt, opts, memory, flush_sink, trace=trace, trace_limit=trace_limit)
        self.sink.attach(self)
        self.min_free_pages = min_free_pages
        self.yield_every = yield_every
        self.on_yield = on_yield
        self._address_spaces = address_spaces
        self._roots = []
        self._vcpu_root = [None] * address_spaces
        self._pages = {}                 # hpa -> MmuPage, linked child tables
        self._possible_nx = {}           # hpa -> MmuPage, insertion-ordered
        self._steps = 0
        self._map_levels = fmt.tdp_map_levels()
        self._max_gfn = 1 << (fmt.gpa_bits - PAGE_SHIFT)
        self._vcpu_mirror_root = None
        self.tdx = None

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

    def hardware_roots(self):
        """``(space, hpa, gfn_bits)`` of every table tree the hardware may walk: every
        root but a TD's mirror, invalid ones too (a vCPU runs on its root until it
        reloads), and a TD's external root."""
        roots = [(self._root_space(r), r.hpa, self._gfn_bits(r))
                 for r in self._roots if r.role != "mirror"]
        if self.tdx is not None and self.tdx.external.root is not None:
            roots.append(("private", self.tdx.external.root, 0))
        return roots

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
        self._end_op("put_root")

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

    def _gfn_bits(self, root):
        """The GFN bits a root is indexed with (KVM's ``kvm_gfn_root_bits``): a TD's
        shared bit for its direct root, else none."""
        return self.tdx.shared_gfn_bit if self.tdx is not None and root.role == "direct" else 0

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

    def _iter(self, root, min_level, start, end):
        it = TdpIter(self.mem, self.fmt, root.hpa, min_level, start, min(end, self._max_gfn),
                     self._gfn_bits(root))
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
