"""Write tracking: KVM's page_track.c (``kvm_write_track_add_gfn``) and the write
protection of one GFN (mmu.c's ``kvm_mmu_slot_gfn_write_protect``, through the TDP MMU's
``kvm_tdp_mmu_write_protect_gfn`` and the nested MMUs' rmaps): a tracked GFN is never
mapped writable nor inside a huge page, and a write to it is emulated. A GFN may also be
kept out of huge pages without being tracked (``kvm_mmu_gfn_disallow_lpage``: a nested
MMU shadows a last-level table there, which it lets go out of sync instead)."""

from collections import Counter

__all__ = ["PageTrack"]


class PageTrack:
    """Write tracking for :class:`~sw_model.tdp.Vm` (a mixin over
    :class:`~sw_model.tdp.core.TdpCore`)."""

    def _init_page_track(self, address_spaces):
        self._write_tracked = [set() for _ in range(address_spaces)]
        self._lpage_disallowed = [Counter() for _ in range(address_spaces)]

    def is_write_tracked(self, gfn, *, as_id=0):
        """Whether writes to ``gfn`` are emulated (``kvm_gfn_is_write_tracked``)."""
        self._check_as_id(as_id)
        return gfn in self._write_tracked[as_id]

    def gfn_disallow_lpage(self, gfn, *, as_id=0):
        """Keep ``gfn`` out of huge pages until a matching :meth:`gfn_allow_lpage`
        (KVM counts the callers, as here)."""
        self._check_as_id(as_id)
        self._lpage_disallowed[as_id][gfn] += 1

    def gfn_allow_lpage(self, gfn, *, as_id=0):
        self._check_as_id(as_id)
        disallowed = self._lpage_disallowed[as_id]
        if not disallowed[gfn]:
            raise ValueError(f"gfn_allow_lpage: gfn {gfn:#x} is not disallowed")
        disallowed[gfn] -= 1
        if not disallowed[gfn]:
            del disallowed[gfn]

    def _lpage_blocked(self, as_id, first, npages):
        """Whether a tracked or disallowed GFN lies in ``[first, first + npages)``."""
        return any(first <= g < first + npages
                   for g in (*self._write_tracked[as_id], *self._lpage_disallowed[as_id]))

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
        return self.write_protect_gfn(gfn, as_id=as_id)

    def write_protect_gfn(self, gfn, *, as_id=0):
        """Clear W and MMU-writable in every leaf mapping ``gfn``, in the TDP MMU and in
        the nested MMUs (KVM's ``kvm_mmu_slot_gfn_write_protect``), flushing what needs
        it; returns whether the TDP MMU flushed."""
        fmt = self.fmt
        flush = False
        for mmu in self.nested_mmus:
            mmu.rmap_write_protect_gfn(gfn)
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
        self._end_op("write_protect_gfn")
        return flush

    def write_track_remove_gfn(self, gfn, *, as_id=0):
        """Stop write-tracking ``gfn``; the next write fault makes it writable."""
        self._check_as_id(as_id)
        self._write_tracked[as_id].discard(gfn)
