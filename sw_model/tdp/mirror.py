"""Mirror propagation for TDX-style TDs: KVM's ``set_external_spte_present``,
``remove_external_spte`` and ``free_external_spt`` (tdp_mmu.c), which keep the external
tables (:mod:`sw_model.tdp.tdx`) identical to the mirror root the core edits, and the
TD's memory attributes (KVM_SET_MEMORY_ATTRIBUTES)."""

from .tdx import ExternalPageTableManager, TdxState

__all__ = ["MirrorPropagation"]


class MirrorPropagation:
    """A TD's mirror and external roots for :class:`~sw_model.tdp.Vm` (a mixin over
    :class:`~sw_model.tdp.core.TdpCore`)."""

    def _init_tdx(self, shared_bit, address_spaces):
        fmt = self.fmt
        default = fmt.tdp_shared_bit_default()
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
        self._end_op("set_memory_attributes")
