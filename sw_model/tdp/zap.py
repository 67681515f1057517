"""Zapping: KVM's ``kvm_tdp_mmu_zap_leafs``, ``tdp_mmu_zap_root`` and the fast zap of
every root (``kvm_mmu_zap_all_fast``)."""

from .core import PG_LEVEL_1G
from .dirty_log import SplitResult
from .flush import check_space

__all__ = ["TdpZap"]


class TdpZap:
    """Zapping for :class:`~sw_model.tdp.Vm` (a mixin over
    :class:`~sw_model.tdp.core.TdpCore`)."""

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
        self._end_op("zap_gfn_range")
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
        self._end_op("zap_root")

    def zap_all_fast(self):
        """Invalidate and zap every root, then flush (KVM's ``kvm_mmu_zap_all_fast``).
        vCPUs move to new roots on their next :meth:`root_for`."""
        self.invalidate_all_roots()
        self.zap_invalidated_roots()
        self.flush_remote_tlbs()
        self._end_op("zap_all_fast")

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
        self._end_op("zap_all")
