"""L0's dirty logging of L1's memory in the shadow MMU, through the rmaps: what KVM's
mmu.c does for rmap-based pages when a memslot is logged (``kvm_memslots_have_rmaps``
branches), called by L0's VM for L1 (:mod:`sw_model.tdp.dirty_log`, which keeps
``vm.nested_mmus``).

- Enable: eager splitting (``kvm_shadow_mmu_try_split_huge_pages``: every huge leaf in
  the slot's rmaps, 1G to 2M, then 2M to 4K, into direct shadow pages), then
  write-protection of every leaf in the slot (``kvm_mmu_slot_remove_write_access``: W
  only, MMU-writable stays so that a write fault restores W and logs the page).
- Harvest: the 4 KiB leaves of the harvested GFNs are write-protected again
  (``kvm_mmu_write_protect_pt_masked``).
- Disable: 4 KiB leaves in direct pages that a huge page could replace now are zapped
  (``kvm_rmap_zap_collapsible_sptes``); faults map huge pages again.

Eager splitting follows "KVM: x86/mmu: Extend Eager Page Splitting to nested MMUs"
(the series "KVM: Extend Eager Page Splitting to the shadow MMU") and counts each
policy in ``split_stats``:

``split``
    Huge leaves replaced by a direct page (entries ``split_entries``).
``refused_budget`` (1)
    The shadow-page budget had ``KVM_MIN_FREE_MMU_PAGES`` or fewer pages left (or host
    memory ran out): the rmap is left, the next one tried (``-ENOSPC``).
``skipped_unsync_invalid`` (2)
    The huge leaf sits in an unsync or invalid shadow page. Only last-level pages go
    unsync, and they hold no huge leaf, so in this model (as in KVM, where it is a
    WARN) only a page set up that way by hand meets it.
``aliased`` (3)
    A direct page for the same (L1 GFN, level, access) exists already (an L2 alias
    of the same L1 huge page split earlier, or mapped small by a fault): it is
    reused, not allocated a second time, as the final patch does: its present entries
    stay, its empty ones are filled, and if one of its entries links a lower table
    (part of the huge page may be unmapped there) the range is flushed at once
    (``aliased_flush``).
``rmap_cache_dry`` (4)
    Child entries left not present because their rmap needed a descriptor and the
    split cache (topped up once per split operation) was empty, as the first version
    of the patch does; the operation then flushes before it returns, and faults map
    those pages later. A reused page whose ``parent_ptes`` would need a descriptor is
    not split at all (``rmap_cache_dry_pages``).
"""

from collections import Counter

from ..tdp import KVM_MIN_FREE_MMU_PAGES
from .rmap import DescCache, pte_list_need_new_desc, pte_list_sptes

__all__ = ["ShadowDirtyLog"]


class ShadowDirtyLog:
    """The nested-MMU side of L0's dirty logging, for
    :class:`~sw_model.nested.ShadowNested` (a mixin over its shadow pages and rmaps)."""

    def _init_dirty_log(self, split_desc_capacity):
        self.split_cache = DescCache(split_desc_capacity)
        self.split_stats = Counter()

    def _slot_rmap_gfns(self, slot, level):
        """The L1 GFNs with a level-``level`` rmap in ``slot``, in order."""
        return sorted(g for g in self._rmaps[level] if slot.contains(g))

    # -- eager splitting ---------------------------------------------------------------

    def slot_try_split_huge_pages(self, slot, target_level=1):
        """Split every huge leaf mapping the slot down to ``target_level`` with the
        policies above; returns the :attr:`split_stats` counts of this call."""
        before = Counter(self.split_stats)
        self.split_cache.topup()
        with self.sink:
            for level in range(max(self.fmt.tdp_map_levels()), target_level, -1):
                skipped = set()
                for gfn in self._slot_rmap_gfns(slot, level):
                    while self._try_split_rmap(slot, level, gfn, skipped):
                        pass
            self._end_op("slot_try_split_huge_pages")
        return self.split_stats - before

    def _try_split_rmap(self, slot, level, gfn, skipped):
        """KVM's ``shadow_mmu_try_split_huge_pages`` for one rmap: split its first
        splittable leaf; True to go again (the rmap changed)."""
        for sptep in pte_list_sptes(self._rmaps[level].get(gfn)):
            if sptep in skipped:
                continue
            sp = self._sptep_to_sp(sptep)
            if sp.unsync or sp.invalid:
                skipped.add(sptep)
                self.split_stats["skipped_unsync_invalid"] += 1
                continue
            result = self._try_split_huge_page(sp, (sptep - sp.hpa) // 8)
            if result == "split":
                return True
            skipped.add(sptep)
            if result == "budget":
                self.split_stats["refused_budget"] += 1
                return False
        return False

    def _try_split_huge_page(self, huge_sp, index):
        """Split one huge leaf into a direct page; ``"split"``, ``"budget"`` (policy 1)
        or ``"no_desc"`` (policy 4, a reused page that cannot be linked)."""
        if self._available_pages() <= KVM_MIN_FREE_MMU_PAGES or not self.mem.free_pages:
            return "budget"
        fmt, mem = self.fmt, self.mem
        level = huge_sp.level
        sptep = huge_sp.hpa + 8 * index
        huge = mem.read64(sptep)
        l1_gfn = self._entry_l1_gfn(huge_sp, index)
        access = self._entry_access(huge_sp, index)
        bases = self._l2_bases(huge_sp)
        child = self._direct.get((l1_gfn, level - 1, access))
        flush = False
        if child is not None:
            if pte_list_need_new_desc(child.parent_ptes) and not len(self.split_cache):
                self.split_stats["rmap_cache_dry_pages"] += 1
                return "no_desc"
            self.split_stats["aliased"] += 1
        else:
            child = self._new_sp(level - 1, bases[0] + index * self._pages_at(level),
                                 direct_gfn=l1_gfn, access=access)
        words = mem.read_page(child.hpa, child.nbytes)
        children = fmt.tdp_split_children(huge, level, self.opts)
        step = self._pages_at(level - 1)
        rmap = self._rmaps[level - 1]
        left = 0
        for i in range(len(words)):
            word = int(words[i])
            if fmt.tdp_is_shadow_present(word):
                # A reused page maps the same frames already; a link to a lower table
                # there may map only part of its range: flush before the link.
                flush |= fmt.tdp_child_table(word, level - 1) is not None
                continue
            gfn = l1_gfn + i * step
            if pte_list_need_new_desc(rmap.get(gfn)) and not len(self.split_cache):
                left += 1
                continue
            words[i] = children[i]
            self._rmap_add(self.split_cache, gfn, level - 1, child.hpa + 8 * i)
            self.costs.counts["table_writes"] += 1
            self.split_stats["split_entries"] += 1
        self._zap_pte(huge_sp, index)
        if flush:
            self.split_stats["aliased_flush"] += 1
            self._flush_entry(huge_sp, index, bases)
        self._link(self.split_cache, huge_sp, index, child)
        self.split_stats["split"] += 1
        if left:
            self.split_stats["rmap_cache_dry"] += left
            # Part of the huge page is unmapped now: flushed before the operation ends.
            self._flush_entry(huge_sp, index, bases)
        return "split"

    # -- write protection -----------------------------------------------------------

    def _write_protect(self, sptep, pt_protect):
        """KVM's ``spte_write_protect``: clear W (and MMU-writable for ``pt_protect``);
        whether the entry changed."""
        fmt, mem = self.fmt, self.mem
        old = mem.read64(sptep)
        new = fmt.tdp_clear_mmu_writable(old) if pt_protect else fmt.tdp_write_protect(old)
        if new == old:
            return False
        mem.write64(sptep, new)
        self.costs.counts["table_writes"] += 1
        return True

    def slot_remove_write_access(self, slot):
        """Write-protect every leaf mapping the slot, at every level (KVM's
        ``kvm_mmu_slot_remove_write_access``), one flush; whether anything changed."""
        changed = 0
        with self.sink:
            for level in range(1, self.fmt.levels + 1):
                for gfn in self._slot_rmap_gfns(slot, level):
                    for sptep in pte_list_sptes(self._rmaps[level][gfn]):
                        changed += self._write_protect(sptep, False)
            if changed:
                self.flush_remote_tlbs()
        self.costs.counts["l0_log_protected"] += changed
        return bool(changed)

    def write_protect_gfns(self, slot, gfns):
        """Write-protect the 4 KiB leaves of harvested ``gfns`` again (KVM's
        ``kvm_mmu_write_protect_pt_masked``), one flush; whether anything changed."""
        changed = 0
        rmap = self._rmaps[1]
        with self.sink:
            for gfn in gfns:
                for sptep in pte_list_sptes(rmap.get(gfn)):
                    changed += self._write_protect(sptep, False)
            if changed:
                self.flush_remote_tlbs()
        self.costs.counts["l0_log_protected"] += changed
        return bool(changed)

    def rmap_write_protect_gfn(self, gfn):
        """Clear W and MMU-writable in every leaf mapping ``gfn``, at every level
        (``kvm_mmu_slot_gfn_write_protect`` with ``pt_protect``), flushing them. Called
        by L0's write tracking, possibly inside an operation of this MMU."""
        for level in range(1, self.fmt.levels + 1):
            base = gfn & ~(self._pages_at(level) - 1)
            for sptep in pte_list_sptes(self._rmaps[level].get(base)):
                if self._write_protect(sptep, True):
                    sp = self._sptep_to_sp(sptep)
                    self._flush_entry(sp, (sptep - sp.hpa) // 8)

    # -- stopping -----------------------------------------------------------------------

    def zap_collapsible_sptes(self, slot):
        """Zap the leaves of direct pages that a huge page could replace now (KVM's
        ``kvm_rmap_zap_collapsible_sptes``); returns how many."""
        zapped = 0
        with self.sink:
            for level in range(1, max(self.fmt.tdp_map_levels())):
                for gfn in self._slot_rmap_gfns(slot, level):
                    for sptep in pte_list_sptes(self._rmaps[level].get(gfn)):
                        sp = self._sptep_to_sp(sptep)
                        if sp.l1_table is None and sp.level < self.l0.max_level(sp.direct_gfn):
                            zapped += self._zap_entry(sp, (sptep - sp.hpa) // 8)
            self._end_op("zap_collapsible_sptes")
        self.costs.counts["l0_collapsed"] += zapped
        return zapped

    def zap_memslot(self, slot):
        """Zap every leaf mapping the slot (KVM's ``kvm_arch_flush_shadow_memslot`` for
        rmaps), before L0 deletes it."""
        with self.sink:
            for level in range(1, self.fmt.levels + 1):
                for gfn in self._slot_rmap_gfns(slot, level):
                    for sptep in pte_list_sptes(self._rmaps[level].get(gfn)):
                        sp = self._sptep_to_sp(sptep)
                        self._zap_entry(sp, (sptep - sp.hpa) // 8)
            self._end_op("zap_memslot")
