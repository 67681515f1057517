"""The NX-huge-page mitigation (x86's iTLB multihit erratum): an execute fault maps
small pages under a table that replaced a huge page, and the recovery worker zaps such
tables so that data accesses map huge pages again (KVM's mmu.c:
``disallowed_hugepage_adjust``, ``kvm_recover_nx_huge_pages``).
"""

from .core import SptePos

__all__ = ["NxHugePages"]


class NxHugePages:
    """NX huge pages for :class:`~sw_model.tdp.Vm` (a mixin over
    :class:`~sw_model.tdp.core.TdpCore`, which keeps ``_possible_nx``)."""

    def _disallowed_hugepage_adjust(self, fault, spte, level):
        """KVM's ``disallowed_hugepage_adjust``: a table that replaced a huge page for
        an execute fault stays; map one level lower instead of collapsing it."""
        if level > 1 and level == fault.goal_level and self.fmt.tdp_is_shadow_present(spte) \
                and not self.fmt.tdp_is_last_spte(spte, level):
            child = self._pages.get(self.fmt.tdp_child_table(spte, level))
            if child is not None and child.nx_huge_page_disallowed:
                fault.goal_level -= 1

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
            pos = SptePos(sp.parent_sptep, old, sp.level + 1, sp.gfn, sp.as_id)
            if self._set_spte_atomic(pos, 0):
                zapped += 1
        self._trace("nx_huge_page_recovery", zapped=zapped, remaining=len(self._possible_nx))
        if zapped:
            self.flush_remote_tlbs()
        self._end_op("recover_nx_huge_pages")
        return zapped
