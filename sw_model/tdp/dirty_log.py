"""Dirty logging and eager page splitting: KVM's ``kvm_mmu_slot_apply_flags``,
KVM_GET_DIRTY_LOG / KVM_CLEAR_DIRTY_LOG, ``kvm_tdp_mmu_try_split_huge_pages`` and
``kvm_tdp_mmu_recover_huge_pages``.

An MMU that maps the VM's memory for its nested guests through rmaps (L0's shadow MMU
for an L2, KVM's rmap-based pages with ``role.guest_mode``) registers in
``vm.nested_mmus``; every operation here covers it too, as KVM's
``kvm_memslots_have_rmaps`` branches do, through its ``slot_try_split_huge_pages(slot,
target_level)``, ``slot_remove_write_access(slot)``, ``write_protect_gfns(slot, gfns)``
and ``zap_collapsible_sptes(slot)`` (each flushes its own TLBs); ``vm.write_protect_gfn``
calls its ``rmap_write_protect_gfn(gfn)``, memslot deletion its ``zap_memslot(slot)``
and the fault path its ``try_to_unsync(gfn)``.
"""

from dataclasses import dataclass

import numpy as np

from ..memory import PAGE_SIZE
from .core import ENOMEM

__all__ = ["DirtyLog", "SplitResult"]


@dataclass
class SplitResult:
    """Outcome of eager splitting: huge pages split, entries written, and whether it
    stopped early because table pages ran short (best effort, never an exception)."""
    huge_pages_split: int = 0
    sptes_created: int = 0
    enomem: bool = False



class DirtyLog:
    """Dirty logging and splitting for :class:`~sw_model.tdp.Vm` (a mixin over
    :class:`~sw_model.tdp.core.TdpCore`)."""

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
            for slot in self.memslots_in(int(gfns[0]), int(gfns[-1]) + 1, it.as_id):
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
            for mmu in self.nested_mmus:
                mmu.slot_remove_write_access(slot)
            # Unconditionally, as KVM's kvm_mmu_slot_apply_flags does: a TLB may hold a
            # writable translation whose entry write-protection did not change (aging
            # without A/D bits saved W and cleared R/W/X without a flush), and writes
            # through it would never be logged.
            self.flush_remote_tlbs_memslot(slot_id, as_id)
        else:
            self.recover_huge_pages(slot_id, as_id=as_id)
        self._end_op("set_dirty_logging",
                     logged=(slot.base_gfn, slot.end_gfn) if enable else None)
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
        if self.nested_mmus:
            gfns = slot.dirty_gfns(bitmap)
            for mmu in self.nested_mmus:
                mmu.write_protect_gfns(slot, gfns)
        # KVM's kvm_get_dirty_log_protect flushes whenever a bitmap word was set, whether
        # or not re-protecting changed an entry (see set_dirty_logging).
        if changed or bitmap.any():
            self.flush_remote_tlbs_memslot(slot_id, as_id)
        self._end_op("get_dirty_log", logged=(slot.base_gfn, slot.end_gfn))
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
        gfns = [slot.base_gfn + first_page + i for i in range(64) if mask >> i & 1]
        for mmu in self.nested_mmus:
            mmu.write_protect_gfns(slot, gfns)
        if self._clear_dirty_pt_masked(slot, first_page, mask) or mask:
            self.flush_remote_tlbs_memslot(slot_id, as_id)    # as kvm_clear_dirty_log_protect
        word = first_page // 64
        slot.dirty_bitmap[word] &= ~slot.dirty_bitmap.dtype.type(mask)
        start = slot.base_gfn + first_page
        self._end_op("clear_dirty_log", logged=(start, min(start + 64, slot.end_gfn)))

    def split_huge_pages(self, slot_id, *, as_id=0, target_level=1):
        """Split every huge page of the slot down to ``target_level`` (KVM's
        ``kvm_mmu_slot_try_split_huge_pages``): the nested MMUs' first, then the TDP
        MMU's, 1G → 2M → 4K in one pre-order pass, which stops, reporting ``enomem``,
        when free table pages reach the low-water mark (the result says so)."""
        slot = self.memslot(slot_id, as_id)
        if target_level not in self.fmt.tdp_map_levels():
            raise ValueError(f"target_level must be one of the levels the TDP core maps "
                             f"{self.fmt.tdp_map_levels()}, got {target_level!r}")
        for mmu in self.nested_mmus:
            mmu.slot_try_split_huge_pages(slot, target_level)
        result = SplitResult()
        for root in self._roots_of(as_id, only_valid=True):
            self._split_huge_pages_root(root, slot.base_gfn, slot.end_gfn, target_level,
                                        result)
            if result.enomem:
                break
        self._end_op("split_huge_pages")
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
        for mmu in self.nested_mmus:
            mmu.zap_collapsible_sptes(slot)
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
        self._end_op("recover_huge_pages")
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
