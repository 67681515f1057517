"""Page faults: KVM's ``kvm_tdp_page_fault`` (mmu.c) and ``kvm_tdp_mmu_map`` (tdp_mmu.c).

A stage-2 fault finds the memslot, decides the page size (huge-page adjustment), walks
to the goal level linking new tables and splitting huge pages in the way, and installs
the leaf.
"""

import enum
from dataclasses import dataclass

from ..formats import check_access
from ..memory import OutOfTablePages
from ..walker import translate
from .iter import PAGE_SHIFT
from .memslot import Memslot

__all__ = ["TdpFault", "PfResult", "PageFault"]


class PfResult(enum.Enum):
    """Result of :meth:`Vm.handle_fault` (KVM's ``RET_PF_*``)."""
    FIXED = "fixed"          #: an entry was installed or changed; retry the access
    SPURIOUS = "spurious"    #: the tables already allow the access (stale TLB entry)
    RETRY = "retry"          #: lost a race (frozen entry, failed compare-exchange)
    EMULATE = "emulate"      #: no memslot (MMIO), a write to a read-only slot, or a GPA
                             #: beyond the format's width: the access goes to userspace
    NOMEM = "nomem"          #: no table page left (KVM's -ENOMEM from the page caches)
    MEMORY_FAULT = "memory_fault"  #: a TD accessed a GFN as private while it is shared or


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



class TdpFault:
    """The fault path of :class:`~sw_model.tdp.Vm` (a mixin over
    :class:`~sw_model.tdp.core.TdpCore`)."""

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
        while level > 1:
            n = self._pages_at(level)
            first = gfn & ~(n - 1)
            if (level in self._map_levels and first >= slot.base_gfn
                    and first + n <= slot.end_gfn
                    and not (slot.base_gfn ^ (frame >> PAGE_SHIFT)) & (n - 1)
                    and not self._lpage_blocked(slot.as_id, first, n)
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
        self._end_op("handle_fault")
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
        mmu_writable = fault.map_writable and gfn not in self._write_tracked[fault.as_id]
        if mmu_writable and level == 1 and not (old_leaf and fmt.tdp_is_writable(old)) \
                and not all(mmu.try_to_unsync(gfn) for mmu in self.nested_mmus):
            # KVM's mmu_try_to_unsync_pages: a nested MMU shadows a table in this page;
            # it lets a last-level one go out of sync, else the page stays read-only.
            mmu_writable = False
        writable = mmu_writable and (fault.write or not logging or ad)
        dirty = writable and (fault.write or (not logging and fmt.tdp_ad_faults(opts)))
        executable = not (level > 1 and self.nx_huge_pages)
        if fault.private:
            # The external leaf is RWX with A/D set; the mirror says the same.
            writable = dirty = executable = True
        new = fmt.tdp_make_spte(hpa, level, opts, writable=writable, executable=executable,
                                host_writable=fault.map_writable,
                                mmu_writable=mmu_writable,
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
