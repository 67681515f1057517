"""Shadow TDP: L0 builds L2 GPA → HPA tables from L1's TDP tables and its own mapping.

Modelled on KVM's shadow MMU for nested EPT/NPT (arch/x86/kvm/mmu/mmu.c,
paging_tmpl.h), on the TDP core's shared parts (:class:`sw_model.tdp.MmuCore`: flushes
and the frees that wait for them, statistics):

- A fault walks L1's tables (``FNAME(walk_addr)``, setting A/D there as the CPU would,
  which L0 logs as its own writes to L1's memory), then links one shadow page per L1
  table on the way down (``kvm_mmu_get_child_sp``). Below an L1 huge page that L0 maps
  smaller, "direct" shadow pages split it (``FNAME(fetch)``); they are found again by
  (L1 GFN, level, access), so two L2 aliases of one L1 huge page share them. A write to
  a leaf that L0 write-protected only for dirty logging gets W back without walking L1
  (``fast_page_fault``).
- Every leaf is in the rmap of its (L1 GFN, level), every link in its child's
  ``parent_ptes`` (:mod:`.rmap`, KVM's shape, descriptors from bounded caches); L0's
  dirty logging of L1's memory walks them (:mod:`.dirty_log`).
- A shadowed L1 table is protected in L0's VM for L1 (``account_shadowed``): above the
  last level it is write-tracked, so each L1 write to it exits and L0 zaps the shadow
  entry it covers (``kvm_mmu_track_write``), or the whole page after ``flood_limit``
  writes in a row without a fault using it (``detect_write_flooding``). A last-level one
  is only write-protected: L1's first write faults in L0's tables for L1 and makes the
  shadow page unsync (``mmu_try_to_unsync_pages``); later writes do not exit, and L1's
  next INVEPT resyncs the page (``kvm_mmu_sync_roots``: entries whose L1 entry changed
  are dropped) and write-protects it again.
- L1 runs on L0's TDP tables for it: each page L1 writes goes through them
  (:meth:`~.common.L0Host.vcpu_write`), so L0's dirty log of L1 sees L1's writes too.
- Shadow pages are bounded (``max_shadow_pages``, KVM's ``n_max_mmu_pages``): a fault
  that finds fewer than ``KVM_MIN_FREE_MMU_PAGES`` left zaps the oldest pages first
  (``make_mmu_pages_available``).

L1's writes are found by comparing L1's table memory with L0's last view of it after
every L1 operation, and handled page by page, top-down (a write that unlinks a table
comes before the writes that free it).
"""

from dataclasses import dataclass, field

import numpy as np

from ..formats import check_access
from ..memory import PAGE_SIZE, HostMemory
from ..tdp import KVM_MIN_FREE_MMU_PAGES, FlushSink, MmuCore, MmuPage, PfResult, Vm
from ..tdp.check import check_vm
from ..walker import translate
from .common import PAGE_SHIFT, Composition, Costs, CountingSink
from .dirty_log import ShadowDirtyLog
from .rmap import (DescCache, check_pte_list, pte_list_add, pte_list_remove,
                   pte_list_sptes)

__all__ = ["L1Tdp", "ShadowNested", "ShadowPage", "SPLIT_DESC_CACHE_MIN_NR_OBJECTS"]

#: Descriptors one fault may need (KVM tops its vCPU cache up to
#: 1 + PT64_ROOT_MAX_LEVEL + PTE_PREFETCH_NUM before a fault) and the cache's size
#: (KVM_ARCH_NR_OBJS_PER_MEMORY_CACHE).
FAULT_DESC_MIN, FAULT_DESC_CAPACITY = 14, 40
#: Descriptors splitting one huge page may need: one per child plus one for the
#: parent link (KVM's SPLIT_DESC_CACHE_MIN_NR_OBJECTS); KVM's cache holds two.
SPLIT_DESC_CACHE_MIN_NR_OBJECTS = 512 + 1
#: Shadow pages a fault frees when fewer than KVM_MIN_FREE_MMU_PAGES are left.
KVM_REFILL_PAGES = 25


@dataclass(eq=False)
class ShadowPage(MmuPage):
    """One shadow table (KVM's ``struct kvm_mmu_page`` of the shadow MMU).

    ``gfn`` is the first L2 GFN it maps where it was last reached (a shared direct page
    has several: see ``parent_ptes``); ``role`` is ``"indirect"`` (it shadows an L1
    table) or ``"direct"``.

    Members
    -------
    l1_table : int or None
        L1 GPA of the L1 table it shadows (indirect pages).
    direct_gfn : int or None
        Direct pages: first L1 GFN it maps (KVM's ``sp->gfn``).
    access : str
        Direct pages: the permissions of the L1 huge leaf it maps (``role.access``).
    parent_ptes : rmap head
        The entries that link it.
    shadowed : dict
        Indirect pages: ``index -> (L1 GFN, access, L1 entry)`` of each leaf (KVM's
        ``shadowed_translation``; the entry lets a resync see what L1 changed).
    flooding : int
        Emulated writes to the shadowed L1 table since a fault last used the page.
    unsync : bool
        A last-level page L1 writes without exits, until its next INVEPT.
    """
    l1_table: int = None
    direct_gfn: int = None
    access: str = ""
    parent_ptes: object = None
    shadowed: dict = field(default_factory=dict)
    flooding: int = 0
    unsync: bool = False


class L1Tdp:
    """L1: a hypervisor on the TDP core whose tables for L2 live in L1 memory.

    Parameters
    ----------
    fmt_name, ad : str
    table_base, table_bytes : int
        Where L1 keeps its table pages: L1 GPAs ``[table_base, table_base +
        table_bytes)`` (a :class:`HostMemory` whose addresses are L1 GPAs).

    Members
    -------
    vm : sw_model.tdp.Vm
        L1's TDP MMU for L2 (memslots: L2 GFN → L1 GPA).
    mem : HostMemory
    """

    def __init__(self, fmt_name, *, ad=None, table_base, table_bytes=2 << 20):
        self.mem = HostMemory(table_bytes, base=table_base)
        self.vm = Vm(fmt_name, self.mem, ad=ad, trace=False)


class _InveptSink(FlushSink):
    """L1's TLB flushes: each is an INVEPT (or INVLPGA / HFENCE.GVMA) exit to L0."""
    supports_ranges = False

    def __init__(self, nested):
        self.nested = nested

    def flush_all(self, *, space="both"):
        self.nested._invept()


def _access(perms):
    return "".join(k for k in "rwx" if perms.get(k))


class ShadowNested(ShadowDirtyLog, MmuCore):
    """L0's shadow TDP for one L2, with L1 on the TDP core.

    Parameters
    ----------
    l0 : L0Host
    l1 : L1Tdp
    memory : HostMemory
        Host memory for the shadow tables (shared with the RTL in co-simulation).
    sink : FlushSink, optional
        L0's invalidations of the L2 context (the RTL's, in co-simulation).
    flood_limit : int
        KVM's write-flooding threshold (3).
    max_shadow_pages : int, optional
        KVM's ``n_max_mmu_pages``; default as KVM's, 2% of L1's RAM in pages (at least
        64).
    split_desc_capacity : int
        Descriptors the eager-split cache holds after its top-up at the start of each
        split (KVM's holds two huge pages' worth).

    Members
    -------
    name : str
        ``"shadow"``.
    fmt, opts, mem
        What the hardware walks: the format, options and memory of the shadow tables.
    costs : Costs
    split_stats : collections.Counter
        Eager splitting, per outcome (see :mod:`.dirty_log`).
    """
    name = "shadow"

    def __init__(self, l0, l1, memory, *, sink=None, flood_limit=3, max_shadow_pages=None,
                 split_desc_capacity=2 * SPLIT_DESC_CACHE_MIN_NR_OBJECTS):
        fmt, opts = l1.vm.fmt, l1.vm.opts
        if l0.fmt.arch != fmt.arch:
            raise ValueError(f"l1: format {fmt.name} is not of L0's architecture "
                             f"{l0.fmt.arch}")
        if not isinstance(flood_limit, int) or flood_limit < 1:
            raise ValueError(f"flood_limit must be a positive integer, got {flood_limit!r}")
        if max_shadow_pages is None:
            max_shadow_pages = max(64, sum(s.npages for s in l0.vm.memslots()) * 20 // 1000)
        if not isinstance(max_shadow_pages, int) or max_shadow_pages <= KVM_MIN_FREE_MMU_PAGES:
            raise ValueError(f"max_shadow_pages must be an integer above "
                             f"{KVM_MIN_FREE_MMU_PAGES}, got {max_shadow_pages!r}")
        self.costs = Costs()
        super().__init__(fmt, opts, memory, CountingSink(self.costs, sink), trace=False)
        self.l0, self.l1 = l0, l1
        self.flood_limit = flood_limit
        self.max_shadow_pages = max_shadow_pages
        self.costs.l1_table_pages = lambda: l1.vm.stats()["table_pages"] + len(l1.vm.roots) \
            * (fmt.root_table_bytes // PAGE_SIZE - 1)
        self._sps = {}                  # hpa -> ShadowPage, oldest first
        self._by_l1 = {}                # L1 table GPA -> indirect ShadowPage
        self._direct = {}               # (L1 GFN, level, access) -> direct ShadowPage
        self._page_sp = {}              # L1 GFN of a shadowed table page -> ShadowPage
        self._unsync = {}               # unsync ShadowPages (a dict: ordered)
        self._rmaps = [None] + [{} for _ in range(fmt.levels)]   # level -> {L1 GFN: head}
        self._fault_cache = DescCache(FAULT_DESC_CAPACITY)
        self._init_dirty_log(split_desc_capacity)
        self._known = l1.mem.words.copy()
        self._root = None
        l1.vm.sink = _InveptSink(self)
        l0.vm.nested_mmus.append(self)

    # -- what the hardware walks ---------------------------------------------------

    def root_for(self, as_id=0):
        """The shadow root for L1's current root (vmcs12's EPTP)."""
        self._load_root()
        return self._root.hpa

    def _load_root(self):
        l1_root = self.l1.vm.root_for(0)
        self._sync()
        if self._root is not None and self._root.l1_table == l1_root:
            return
        with self.sink:
            if self._root is not None:
                self._zap_sp(self._root, 0)
                self.flush_remote_tlbs()
            self._make_mmu_pages_available()
            self._root = self._new_sp(self.fmt.root_level, 0, l1_table=l1_root)
            self._root.is_root = True
            self._end_op("root_for")

    # -- shadow pages ----------------------------------------------------------------

    def _new_sp(self, level, l2_gfn, *, l1_table=None, direct_gfn=None, access=""):
        nbytes = self.fmt.table_bytes(level)
        sp = ShadowPage(self.mem.alloc_table(nbytes), nbytes, level, l2_gfn, 0,
                        role="indirect" if l1_table is not None else "direct",
                        l1_table=l1_table, direct_gfn=direct_gfn, access=access)
        self._sps[sp.hpa] = sp
        self.costs.pages(nbytes // PAGE_SIZE)
        if l1_table is None:
            self._direct[(direct_gfn, level, access)] = sp
        else:
            self._by_l1[l1_table] = sp
            self._account_shadowed(sp)
        return sp

    def _table_pages(self, sp):
        return range(sp.l1_table >> PAGE_SHIFT, (sp.l1_table + sp.nbytes) >> PAGE_SHIFT)

    def _account_shadowed(self, sp):
        """KVM's ``account_shadowed``: L1's table pages above the last level are
        write-tracked; a last-level one is kept out of huge pages and write-protected."""
        vm = self.l0.vm
        for page in self._table_pages(sp):
            self._page_sp[page] = sp
            if sp.level > 1:
                vm.write_track_add_gfn(page)
            else:
                vm.gfn_disallow_lpage(page)
                vm.write_protect_gfn(page)

    def _unaccount_shadowed(self, sp):
        vm = self.l0.vm
        for page in self._table_pages(sp):
            del self._page_sp[page]
            if sp.level > 1:
                vm.write_track_remove_gfn(page)
            else:
                vm.gfn_allow_lpage(page)

    def _sptep_to_sp(self, sptep):
        sp = self._sps.get(sptep & ~(PAGE_SIZE - 1))
        if sp is None:
            sp = self._sps[sptep & ~(self.fmt.root_table_bytes - 1)]
        return sp

    def _entry_l1_gfn(self, sp, index):
        """KVM's ``kvm_mmu_page_get_gfn``: the L1 GFN a leaf of ``sp`` maps."""
        if sp.l1_table is None:
            return sp.direct_gfn + index * self._pages_at(sp.level)
        return sp.shadowed[index][0]

    def _entry_access(self, sp, index):
        """KVM's ``kvm_mmu_page_get_access``."""
        return sp.access if sp.l1_table is None else sp.shadowed[index][1]

    def _l2_bases(self, sp):
        """The L2 GFNs at which ``sp``'s region starts, one per path from the root."""
        if sp.is_root:
            return [0]
        out = []
        for sptep in pte_list_sptes(sp.parent_ptes):
            parent = self._sptep_to_sp(sptep)
            step = ((sptep - parent.hpa) // 8) * self._pages_at(parent.level)
            out += [base + step for base in self._l2_bases(parent)]
        return out

    def _rmap_add(self, cache, gfn, level, sptep):
        rmap = self._rmaps[level]
        rmap[gfn] = pte_list_add(cache, rmap.get(gfn), sptep)

    def _rmap_remove(self, gfn, level, sptep):
        rmap = self._rmaps[level]
        head = pte_list_remove(rmap.get(gfn), sptep)
        if head is None:
            del rmap[gfn]
        else:
            rmap[gfn] = head

    def _link(self, cache, parent, index, child):
        """KVM's ``__link_shadow_page`` (the entry is not present)."""
        sptep = parent.hpa + 8 * index
        self.mem.write64(sptep, self.fmt.tdp_make_nonleaf(child.hpa, self.opts))
        child.parent_ptes = pte_list_add(cache, child.parent_ptes, sptep)
        self.costs.counts["table_writes"] += 1

    def _zap_pte(self, sp, index):
        """KVM's ``mmu_page_zap_pte``: clear one entry: a leaf leaves its rmap, a link
        its child's ``parent_ptes`` (a child left without parents is zapped).
        Returns whether the entry was present."""
        sptep = sp.hpa + 8 * index
        old = self.mem.read64(sptep)
        if not self.fmt.tdp_is_shadow_present(old):
            return False
        bases = None
        child = self.fmt.tdp_child_table(old, sp.level)
        if child is not None:
            bases = self._l2_bases(sp)
        self.mem.write64(sptep, 0)
        self.costs.counts["table_writes"] += 1
        if child is None:
            self._rmap_remove(self._entry_l1_gfn(sp, index), sp.level, sptep)
            sp.shadowed.pop(index, None)
        else:
            self._drop_parent_pte(self._sps[child], sptep,
                                  bases[0] + index * self._pages_at(sp.level) if bases else 0)
        return True

    def _drop_parent_pte(self, child, sptep, l2_gfn):
        child.parent_ptes = pte_list_remove(child.parent_ptes, sptep)
        if child.parent_ptes is None:
            # Parentless nested shadow pages are zapped at once (KVM does so for
            # role.guest_mode pages: they are unlikely to be used again soon).
            self._zap_sp(child, l2_gfn)

    def _flush_entry(self, sp, index, bases=None):
        span = self._pages_at(sp.level)
        for base in self._l2_bases(sp) if bases is None else bases:
            self.flush_remote_tlbs_range(base + index * span, span)

    def _zap_entry(self, sp, index):
        """Zap one shadow entry and flush its L2 range(s)."""
        bases = self._l2_bases(sp)
        if self._zap_pte(sp, index):
            self._flush_entry(sp, index, bases)
            return True
        return False

    def _zap_sp(self, sp, l2_gfn):
        """KVM's ``kvm_mmu_prepare_zap_page`` for a page without parents: unlink every
        child, forget the page, and free it after a flush that covers ``l2_gfn``'s
        region (the RCU grace period)."""
        fmt = self.fmt
        words = self.mem.read_page(sp.hpa, sp.nbytes)
        present = fmt.tdp_present_mask(words).nonzero()[0]
        span = self._pages_at(sp.level)
        for index in present:
            index = int(index)
            word, sptep = int(words[index]), sp.hpa + 8 * index
            child = fmt.tdp_child_table(word, sp.level)
            if child is None:
                self._rmap_remove(self._entry_l1_gfn(sp, index), sp.level, sptep)
            else:
                self._drop_parent_pte(self._sps[child], sptep, l2_gfn + index * span)
        words[:] = 0
        self.costs.counts["table_writes"] += len(present)
        del self._sps[sp.hpa]
        if sp.l1_table is None:
            del self._direct[(sp.direct_gfn, sp.level, sp.access)]
        else:
            del self._by_l1[sp.l1_table]
            self._unaccount_shadowed(sp)
        self._unsync.pop(sp, None)
        sp.shadowed.clear()
        self.costs.pages(-(sp.nbytes // PAGE_SIZE))
        sp.gfn = l2_gfn
        self._pending_free.append(sp)

    def _unlink(self, sp):
        """Zap every entry that links ``sp`` (``kvm_mmu_unlink_parents``): the page
        goes with its last parent."""
        for sptep in pte_list_sptes(sp.parent_ptes):
            parent = self._sptep_to_sp(sptep)
            self._zap_entry(parent, (sptep - parent.hpa) // 8)

    def _available_pages(self):
        """KVM's ``kvm_mmu_available_pages``."""
        return self.max_shadow_pages - len(self._sps)

    def _make_mmu_pages_available(self):
        """KVM's ``make_mmu_pages_available``: zap the oldest shadow pages (never a root
        in use) when fewer than KVM_MIN_FREE_MMU_PAGES are left."""
        if self._available_pages() >= KVM_MIN_FREE_MMU_PAGES:
            return
        for sp in list(self._sps.values()):
            if self._available_pages() >= KVM_REFILL_PAGES:
                break
            if sp.is_root or sp.hpa not in self._sps:
                continue
            before = len(self._sps)
            self._unlink(sp)
            self.costs.counts["zapped_oldest"] += before - len(self._sps)

    # -- L1's writes to its memory -----------------------------------------------------

    def _sync(self):
        """Handle every L1 write to its table memory since the last call, page by page,
        top-down: each went through L0's tables for L1 (exits where protected)."""
        words = self.l1.mem.words
        changed = np.flatnonzero(words != self._known)
        if not len(changed):
            return
        base = self.l1.mem.base >> PAGE_SHIFT
        pages = changed // (PAGE_SIZE // 8)
        order = []
        for page in np.unique(pages):
            sp = self._page_sp.get(base + int(page))
            order.append((-sp.level if sp is not None else 0, int(page)))
        for _, page in sorted(order):
            self._l1_write_page(base + page, changed[pages == page])
        self._known[changed] = words[changed]
        self.costs.counts["l1_table_writes"] += len(changed)

    def _l1_write_page(self, gfn, word_indices):
        """L1's writes to one page of its memory. A write-tracked page makes each write
        an exit that L0 emulates (``kvm_mmu_track_write``: the shadow entry it covers
        goes); otherwise the writes go through L0's tables for L1, the first one maybe
        faulting (a last-level shadowed page goes unsync then)."""
        l1mem = self.l1.mem
        for n, index in enumerate(word_indices):
            faults = self.l0.vcpu_write(gfn)
            if not faults or faults[-1] is not PfResult.EMULATE:
                if faults:
                    kind = "wp_exits" if gfn in self._page_sp else "l1_faults"
                    self.costs.counts[kind] += 1
                return
            self.costs.counts["wp_exits"] += 1
            sp = self._page_sp[gfn]
            entry = (l1mem.base + 8 * int(index) - sp.l1_table) // 8
            with self.sink:
                self._zap_entry(sp, entry)
                sp.flooding += 1
                if sp.flooding >= self.flood_limit and not sp.is_root:
                    self._unlink(sp)
                self._end_op("l1_write")

    def _l0_wrote_l1(self, ad_writes):
        """A/D bits L0 set in L1's tables while walking them: L0's writes to L1's
        memory (logged), not exits."""
        l1mem = self.l1.mem
        for addr, _, _ in ad_writes:
            self.l0.mark_dirty(addr >> PAGE_SHIFT)
            self._known[(addr - l1mem.base) // 8] = l1mem.read64(addr)

    # -- unsync pages ------------------------------------------------------------------

    def try_to_unsync(self, gfn):
        """Called by L0's fault path before it maps L1 page ``gfn`` writable (KVM's
        ``mmu_try_to_unsync_pages``): a last-level shadow page of it goes unsync; a
        higher one keeps it read-only (it is write-tracked, so this is not reached)."""
        sp = self._page_sp.get(gfn)
        if sp is None:
            return True
        if sp.level > 1:
            return False
        if not sp.unsync:
            sp.unsync = True
            self._unsync[sp] = None
            self.costs.counts["unsync"] += 1
        return True

    def _sync_unsync_pages(self):
        """KVM's ``kvm_mmu_sync_roots`` / ``mmu_sync_children``: write-protect each unsync
        page's L1 table again, then drop every entry whose L1 entry changed."""
        for sp in list(self._unsync):
            for page in self._table_pages(sp):
                self.l0.vm.write_protect_gfn(page)
            words = self.l1.mem.read_page(sp.l1_table, sp.nbytes)
            for index, (_, _, gpte) in list(sp.shadowed.items()):
                if int(words[index]) != gpte and self._zap_entry(sp, index):
                    self.costs.counts["resync_zapped"] += 1
            sp.unsync = False
            self.costs.counts["resyncs"] += 1
        self._unsync.clear()

    def _invept(self):
        self.costs.counts["invept_exits"] += 1
        self._sync()
        with self.sink:
            self._sync_unsync_pages()
            self.flush_remote_tlbs()
            self._end_op("invept")

    # -- L2 faults ---------------------------------------------------------------------

    def handle_l2_fault(self, gpa, access):
        """An L2 stage-2 fault on the shadow tables (an exit to L0): restore W on a
        leaf write-protected for dirty logging, or walk L1's tables and reflect the
        fault to L1 if they fault, else build the shadow entry."""
        check_access(access)
        self.costs.counts["l2_faults"] += 1
        self._load_root()
        with self.sink:
            fixed = self._fast_page_fault(gpa, access)
        if fixed:
            return PfResult.FIXED
        fmt, l1mem = self.fmt, self.l1.mem
        gw = translate(l1mem, fmt, self._root.l1_table, gpa, access, vm=self.opts)
        self._l0_wrote_l1(gw.ad_writes if gw.ok else ())
        if not gw.ok:
            return self._reflect(gpa, access)
        l1_gfn = gw.hpa >> PAGE_SHIFT
        slot, _ = self.l0.compose(l1_gfn)
        if slot is None or (access == "write" and slot.readonly):
            return PfResult.EMULATE      # L1 gave L2 something that is not L1 RAM
        gpte = l1mem.read64(gw.pte_addrs[-1])
        leaf = fmt.decode(gpte, gw.level)
        level = min(gw.level, self.l0.max_level(l1_gfn))
        l1_gfn &= ~(self._pages_at(level) - 1)
        # FNAME(protect_clean_gpte): with A/D bits, a clean L1 leaf grants no write (the
        # first write faults, and L0 sets D in it); this access is part of the page's
        # role, so aliases of a clean and a dirty L1 huge leaf get different pages.
        clean = fmt.tdp_ad_enabled(self.opts) and not leaf.d
        perms = dict(gw.perms, w=gw.perms["w"] and not clean)
        # L2 never writes L1's tables (KVM would unsync or write-protect them).
        mmu_writable = perms["w"] and not slot.readonly and l1_gfn not in self._page_sp
        writable = mmu_writable and (access == "write" or not slot.dirty_logging)
        if writable and slot.dirty_logging:
            self.l0.mark_dirty(l1_gfn)
        self.costs.counts["l0_faults"] += 1
        with self.sink:
            self._make_mmu_pages_available()
            self._fault_cache.topup(FAULT_DESC_MIN)
            result = self._fetch(gpa, access, gw, _access(perms), level, l1_gfn,
                                 slot.gfn_to_hpa(l1_gfn), writable, mmu_writable, gpte)
            self._end_op("handle_l2_fault")
        return result

    def _shadow_leaf(self, gpa):
        """``(page, index, word)`` of the present shadow leaf for ``gpa``, or None."""
        fmt, sp = self.fmt, self._root
        while True:
            index = fmt.index(gpa, sp.level)
            word = self.mem.read64(sp.hpa + 8 * index)
            if not fmt.tdp_is_shadow_present(word):
                return None
            child = fmt.tdp_child_table(word, sp.level)
            if child is None:
                return sp, index, word
            sp = self._sps[child]

    def _fast_page_fault(self, gpa, access):
        """KVM's ``fast_page_fault``: a write to a leaf that only dirty logging
        write-protected (still MMU-writable) gets W back, and the page is logged. A
        huge leaf in a logged slot is left to the slow path (it maps 4 KiB)."""
        found = self._shadow_leaf(gpa) if access == "write" else None
        if found is None:
            return False
        sp, index, word = found
        fmt = self.fmt
        if fmt.tdp_is_writable(word) or not fmt.tdp_is_mmu_writable(word):
            return False
        l1_gfn = self._entry_l1_gfn(sp, index)
        slot = self.l0.vm.find_memslot(l1_gfn)
        if slot.dirty_logging:
            if sp.level > 1:
                return False
            slot.mark_dirty(l1_gfn)
        self.mem.write64(sp.hpa + 8 * index, fmt.tdp_make_writable(word, self.opts))
        self.costs.counts["table_writes"] += 1
        self.costs.counts["fast_faults"] += 1
        return True

    def _reflect(self, gpa, access):
        """Deliver the fault to L1 (an EPT violation in vmcs12); L1's handler edits its
        tables, and the writes to protected pages exit to L0."""
        self.costs.counts["reflected"] += 1
        result = self.l1.vm.handle_fault(gpa, access)
        self._after_l1()
        if result is PfResult.NOMEM:
            raise MemoryError("L1 ran out of table pages")
        return result

    def _fetch(self, gpa, access, gw, perms, target, l1_gfn, frame, writable, mmu_writable,
               gpte):
        """KVM's ``FNAME(fetch)``: link shadow pages down to ``target`` and set the leaf;
        ``perms`` is the access L1's walk grants (a direct page's role)."""
        fmt, mem = self.fmt, self.mem
        sp, changed = self._root, False
        while True:
            sp.flooding = 0
            level = sp.level
            index = fmt.index(gpa, level)
            old = mem.read64(sp.hpa + 8 * index)
            if level == target:
                return self._set_leaf(sp, index, old, access, l1_gfn, frame, writable,
                                      mmu_writable, gw.perms["x"], perms, gpte, changed)
            if level - 1 >= gw.level:
                addr = gw.pte_addrs[fmt.root_level - (level - 1)]
                l1_table = addr & ~(fmt.table_bytes(level - 1) - 1)
                want = self._by_l1.get(l1_table)
            else:
                base = l1_gfn & ~(self._pages_at(level) - 1)
                l1_table = None
                want = self._direct.get((base, level - 1, perms))
            child = fmt.tdp_child_table(old, level)
            if child is not None and self._sps[child] is want:
                sp = want
                continue
            if fmt.tdp_is_shadow_present(old):     # a huge leaf, or another table
                self._zap_entry(sp, index)
            l2_gfn = self._l2_bases(sp)[0] + index * self._pages_at(level)
            if l1_table is not None:
                if want is not None:                # L1 moved a table: drop the old one
                    self._unlink(want)
                want = self._new_sp(level - 1, l2_gfn, l1_table=l1_table)
            elif want is None:
                want = self._new_sp(level - 1, l2_gfn, direct_gfn=base, access=perms)
            self._link(self._fault_cache, sp, index, want)
            changed = True
            sp = want

    def _set_leaf(self, sp, index, old, access, l1_gfn, frame, writable, mmu_writable,
                  executable, perms, gpte, changed):
        """KVM's ``mmu_set_spte``: install the leaf, keep the rmap, flush what a lost
        permission or frame needs."""
        fmt, level = self.fmt, sp.level
        sptep = sp.hpa + 8 * index
        if fmt.tdp_is_shadow_present(old) and fmt.tdp_is_last_spte(old, level) \
                and fmt.tdp_spte_frame(old, level) == frame \
                and fmt.tdp_access_allowed(old, level, access, self.opts):
            return PfResult.FIXED if changed else PfResult.SPURIOUS
        new = fmt.tdp_make_spte(frame, level, self.opts, writable=writable,
                                executable=executable, host_writable=True,
                                mmu_writable=mmu_writable, accessed=True, dirty=writable)
        bases = self._l2_bases(sp)
        flush = False
        if fmt.tdp_is_shadow_present(old):
            flush = fmt.tdp_child_table(old, level) is not None
            if not flush:
                was, now = fmt.decode(old, level), fmt.decode(new, level)
                flush = was.frame != now.frame or any(getattr(was, k) and not getattr(now, k)
                                                      for k in "rwx")
            self._zap_pte(sp, index)
        self.mem.write64(sptep, new)
        self.costs.counts["table_writes"] += 1
        if sp.l1_table is not None:
            sp.shadowed[index] = (l1_gfn, perms, gpte)
        self._rmap_add(self._fault_cache, l1_gfn, level, sptep)
        if flush:
            self._flush_entry(sp, index, bases)
        return PfResult.FIXED

    # -- L1 operations (L1 runs them on its own TDP core) ------------------------------

    def _after_l1(self):
        self._sync()
        self._load_root()

    def add_slot(self, slot):
        self.l1.vm.add_memslot(slot.slot_id, slot.base_gfn, slot.npages,
                               slot.l1_gfn << PAGE_SHIFT, readonly=slot.readonly)
        self._after_l1()

    def delete_slot(self, slot_id):
        self.l1.vm.delete_memslot(slot_id)
        self._after_l1()

    def zap(self, start, end):
        self.l1.vm.zap_gfn_range(start, end)
        self._after_l1()

    def zap_all(self):
        self.l1.vm.zap_all_fast()
        self._after_l1()

    def age(self, start, end):
        young = self.l1.vm.age_gfn_range(start, end)
        self._after_l1()
        return young

    def test_age(self, start, end):
        return self.l1.vm.test_age_gfn(start, end)

    def dirty_logging(self, slot_id, enable):
        self.l1.vm.set_dirty_logging(slot_id, enable)
        self._after_l1()

    def get_dirty(self, slot_id):
        bitmap = self.l1.vm.get_dirty_log(slot_id)
        self._after_l1()
        return set(self.l1.vm.memslot(slot_id).dirty_gfns(bitmap))

    def write_track(self, start, end, enable):
        """L1 write-tracks L2 GFNs ``[start, end)`` (its own page tracking)."""
        for gfn in range(start, end):
            if enable:
                self.l1.vm.write_track_add_gfn(gfn)
            else:
                self.l1.vm.write_track_remove_gfn(gfn)
        self._after_l1()

    def flush(self):
        self.l1.vm.flush_remote_tlbs()
        self._after_l1()

    # -- L0's operations on L1's memory ------------------------------------------------

    def l0_dirty_logging(self, slot_id, enable, *, eager_split=True):
        """L0's userspace starts or stops dirty logging on its memslot ``slot_id`` of
        L1's RAM (migrating L1): L0's TDP tables for L1 and this shadow MMU both."""
        self.l0.vm.set_dirty_logging(slot_id, enable, eager_split=eager_split)

    def l0_get_dirty(self, slot_id):
        """KVM_GET_DIRTY_LOG on L0's memslot ``slot_id``: the L1 GFNs written."""
        vm = self.l0.vm
        return set(vm.memslot(slot_id).dirty_gfns(vm.get_dirty_log(slot_id)))

    # -- checks --------------------------------------------------------------------

    def composed(self, gpa, access):
        """L1's tables then L0's memslots: a :class:`~.common.Composition`, or None
        where it faults."""
        l1mem = self.l1.mem
        t = translate(l1mem, self.fmt, self.l1.vm.root_for(0), gpa, access, vm=self.opts,
                      ad_update=False)
        if not t.ok:
            return None
        slot, hpa = self.l0.compose(t.hpa >> PAGE_SHIFT)
        if slot is None or (access == "write" and slot.readonly):
            return None
        perms = dict(t.perms, w=t.perms["w"] and not slot.readonly)
        return Composition(hpa + (gpa & (PAGE_SIZE - 1)), perms, t.hpa >> PAGE_SHIFT)

    def composed_by_memslots(self, gpa, access):
        """L1's memslots then L0's: the mapping L1's tables should hold (what a
        translation L1 may still have cached after aging it maps)."""
        gfn = gpa >> PAGE_SHIFT
        slot = self.l1.vm.find_memslot(gfn)
        if slot is None:
            return None
        l1_gfn = slot.gfn_to_hpa(gfn) >> PAGE_SHIFT
        host, hpa = self.l0.compose(l1_gfn)
        writable = host is not None and not slot.readonly and not host.readonly
        if host is None or (access == "write" and not writable):
            return None
        return Composition(hpa + (gpa & (PAGE_SIZE - 1)), {"r": True, "w": writable,
                                                           "x": True}, l1_gfn)

    def write_l2(self, gpa):
        """L0 writes L2's memory at ``gpa`` (an emulated store, a stage-1 A/D update):
        the walk of L1's tables for a write sets A/D there as the CPU's would (L1's
        dirty log sees it), and L0 logs the L1 page; None if L1's tables do not allow
        the write (L0 reflects a fault then)."""
        t = translate(self.l1.mem, self.fmt, self.l1.vm.root_for(0), gpa, "write",
                      vm=self.opts)
        self._l0_wrote_l1(t.ad_writes if t.ok else ())
        if not t.ok:
            return None
        l1_gfn = t.hpa >> PAGE_SHIFT
        slot, hpa = self.l0.compose(l1_gfn)
        if slot is None or slot.readonly:
            return None
        self.l0.mark_dirty(l1_gfn)
        return Composition(hpa + (gpa & (PAGE_SIZE - 1)), dict(t.perms), l1_gfn)

    def leaves(self):
        """``(L2 gfn, level, word)`` of every present shadow leaf."""
        fmt, out = self.fmt, []
        stack = [(self._root, 0)] if self._root is not None else []
        while stack:
            sp, base = stack.pop()
            words = self.mem.read_page(sp.hpa, sp.nbytes)
            span = self._pages_at(sp.level)
            for index in fmt.tdp_present_mask(words).nonzero()[0]:
                word = int(words[index])
                child = fmt.tdp_child_table(word, sp.level)
                if child is None:
                    out.append((base + int(index) * span, sp.level, word))
                else:
                    stack.append((self._sps[child], base + int(index) * span))
        return out

    def check(self):
        """Raise AssertionError unless the books match the tables: page counts, the
        rmaps and ``parent_ptes`` (exactly the entries in the tables, in KVM's shape),
        the hashes, L1's protected pages (exactly the shadowed ones), every leaf's frame,
        W only where allowed (and logged while L0 logs), and L0's own VM for L1
        (``check_vm``). Returns the leaves."""
        fmt, mem, l0 = self.fmt, self.mem, self.l0
        assert self._known.tobytes() == self.l1.mem.words.tobytes(), "unsynced L1 writes"
        pages = sum(sp.nbytes for sp in self._sps.values()) // PAGE_SIZE
        assert pages == self.costs.table_pages, f"{pages} shadow pages, books say " \
            f"{self.costs.table_pages}"
        rmaps = [None] + [{} for _ in range(fmt.levels)]
        parents = {hpa: set() for hpa in self._sps}
        dirty = {}
        for sp in self._sps.values():
            words = mem.read_page(sp.hpa, sp.nbytes)
            for index in fmt.tdp_present_mask(words).nonzero()[0]:
                index, word = int(index), int(words[index])
                sptep = sp.hpa + 8 * index
                child = fmt.tdp_child_table(word, sp.level)
                if child is not None:
                    assert child in parents, f"entry {sptep:#x} links {child:#x}, not a page"
                    parents[child].add(sptep)
                    continue
                gfn = self._entry_l1_gfn(sp, index)
                rmaps[sp.level].setdefault(gfn, set()).add(sptep)
                slot, hpa = l0.compose(gfn)
                assert slot is not None and fmt.tdp_spte_frame(word, sp.level) == hpa, \
                    f"leaf {sptep:#x} maps {fmt.tdp_spte_frame(word, sp.level):#x}, " \
                    f"L1 GFN {gfn:#x} is {hpa}"
                if fmt.tdp_is_writable(word):
                    assert fmt.tdp_is_mmu_writable(word), f"leaf {sptep:#x}: W without " \
                        "MMU-writable"
                    assert not slot.readonly, f"leaf {sptep:#x}: W on a read-only slot"
                    if slot.dirty_logging:
                        if slot not in dirty:
                            dirty[slot] = set(slot.dirty_gfns())
                        assert sp.level == 1 and gfn in dirty[slot], \
                            f"leaf {sptep:#x}: writable while L0 logs, L1 GFN {gfn:#x} " \
                            "not in the dirty bitmap"
        for level in range(1, fmt.levels + 1):
            books = self._rmaps[level]
            assert set(books) == set(rmaps[level]), \
                f"level {level} rmaps: {sorted(set(books) ^ set(rmaps[level]))[:4]} differ"
            for gfn, head in books.items():
                check_pte_list(head)
                assert set(pte_list_sptes(head)) == rmaps[level][gfn] \
                    and len(pte_list_sptes(head)) == len(rmaps[level][gfn]), \
                    f"rmap of L1 GFN {gfn:#x} level {level} differs from the tables"
        for sp in self._sps.values():
            check_pte_list(sp.parent_ptes)
            linked = pte_list_sptes(sp.parent_ptes)
            assert set(linked) == parents[sp.hpa] and len(linked) == len(parents[sp.hpa]), \
                f"parent_ptes of {sp.hpa:#x} differ from the tables"
            assert sp.is_root or linked, f"shadow page {sp.hpa:#x} has no parent"
            assert not sp.unsync or (sp.level == 1 and sp in self._unsync), \
                f"shadow page {sp.hpa:#x}: unsync at level {sp.level}"
            if sp.l1_table is None:
                assert self._direct.get((sp.direct_gfn, sp.level, sp.access)) is sp
                continue
            assert self._by_l1.get(sp.l1_table) is sp
            for page in self._table_pages(sp):
                assert self._page_sp.get(page) is sp
                if sp.level > 1:
                    assert l0.vm.is_write_tracked(page), f"L1 table {page:#x} not tracked"
                elif not sp.unsync:
                    t = l0.vm.translate(page << PAGE_SHIFT, "write")
                    assert not t.ok, f"L1 table {page:#x} is writable in L0's tables"
        assert len(self._page_sp) == sum(len(self._table_pages(sp)) for sp in
                                         self._by_l1.values())
        assert len(self._unsync) == sum(sp.unsync for sp in self._sps.values())
        check_vm(l0.vm, exclusive_memory=False)
        return self.leaves()
