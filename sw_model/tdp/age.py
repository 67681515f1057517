"""Aging: KVM's ``kvm_tdp_mmu_age_gfn_range`` and ``kvm_tdp_mmu_test_age_gfn``, for
the host's page reclaim (MMU notifiers)."""

__all__ = ["Aging"]


class Aging:
    """Aging for :class:`~sw_model.tdp.Vm` (a mixin over
    :class:`~sw_model.tdp.core.TdpCore`)."""

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
        self._end_op("age_gfn_range", aged=(start, end) if young and not flush else None)
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
