"""The flush-obligation checker (:mod:`sw_model.tdp.obligations`) catches lost flushes.

Each test injects one kind of lost flush into the model and expects the checker to name
the operation and the rule; the same sequence without the injected bug passes, so the
checker is not merely raising.
"""

import pytest

from sw_model.memory import HostMemory
from sw_model.tdp import FlushRecorder, PfResult, Vm
from sw_model.tdp.obligations import (RULE_ACCESSED, RULE_DIRTY_LOG, RULE_PERMISSION,
                                      RULE_TABLE, RULE_UNMAP, FlushObligationError,
                                      FlushObligations)

BASE = 4 << 18                       # GFN of the slot (GPA 16 GiB)
HPA = 1 << 33
CONFIGS = [("ept4", "hardware"), ("ept5", "off"), ("npt4", "hardware"), ("sv39x4", "fault")]
IDS = [f"{name}-{ad}" for name, ad in CONFIGS]


def make_vm(name, ad):
    rec = FlushRecorder()
    vm = Vm(name, HostMemory(4 << 20), ad=ad, flush_sink=FlushObligations(rec),
            nx_huge_pages=False)
    vm.add_memslot(0, BASE, 1024, HPA, host_level=1)
    return vm, rec


def touch(vm, gfn, access="read"):
    """A vCPU access: fault until the walker lets it through, and let the checker
    know the hardware may have cached the walk."""
    for _ in range(4):
        if vm.translate(gfn << 12, access, ad_update=True).ok:
            vm.sink.observe()
            return
        assert vm.handle_fault(gfn << 12, access) is PfResult.FIXED
    raise AssertionError(f"{access} at gfn {gfn:#x} still faults")


def forget_invalid_roots(monkeypatch):
    """The bug: a zap owes no flush for what it removed from an invalidated root."""
    zap_leafs = Vm._tdp_mmu_zap_leafs

    def zap(self, root, start, end, flush):
        owed = zap_leafs(self, root, start, end, flush)
        return flush if root.invalid else owed
    monkeypatch.setattr(Vm, "_tdp_mmu_zap_leafs", zap)


@pytest.mark.parametrize("buggy", [False, True], ids=["kvm", "lost-flush"])
@pytest.mark.parametrize("name, ad", CONFIGS, ids=IDS)
def test_zap_after_root_invalidation_owes_the_flush(name, ad, buggy, monkeypatch):
    """A page mapped through a root invalidated since (the vCPU moved to a new root,
    the old one waits for its zap) is still cached: zapping it owes a flush even when
    no valid root maps it."""
    vm, rec = make_vm(name, ad)
    touch(vm, BASE + 3, "write")
    old = vm.roots[0]
    vm.invalidate_all_roots()
    touch(vm, BASE + 100)                       # the vCPU reloads: a new root
    assert old.invalid and old in vm.roots and vm.root_for() != old.hpa
    rec.clear()
    if not buggy:
        assert vm.zap_gfn_range(BASE, BASE + 8)
        assert rec.log == [("range", BASE, 8)]
        return
    forget_invalid_roots(monkeypatch)
    with pytest.raises(FlushObligationError) as info:
        vm.zap_gfn_range(BASE, BASE + 8)
    message = str(info.value)
    assert message.startswith(f"zap_gfn_range: gfn {BASE + 3:#x} level 1")
    assert f"root {old.hpa:#x}" in message and RULE_UNMAP in message
    assert rec.log == []


@pytest.mark.parametrize("name, ad", CONFIGS, ids=IDS)
def test_table_freed_without_a_flush(name, ad, monkeypatch):
    """Tables left empty by a zap are still cached as walk steps; freeing them
    without a flush breaks the rule even though no translation changes."""
    vm, _ = make_vm(name, ad)
    touch(vm, BASE + 3)
    vm.zap_gfn_range(BASE, BASE + 8)            # flushed; the empty tables stay
    monkeypatch.setattr(vm, "flush_remote_tlbs",
                        lambda space="both": vm._free_pending(None, None, space))
    with pytest.raises(FlushObligationError, match=f"^zap_root: .*non-leaf entry to table "
                                                   f".*, now not present: {RULE_TABLE}"):
        vm.zap_root(vm.roots[0])


@pytest.mark.parametrize("name, ad", CONFIGS, ids=IDS)
def test_dirty_log_reported_without_a_flush(name, ad, monkeypatch):
    """Write-protection for dirty logging may stay stale only until the log is
    reported: a get that re-protects without flushing breaks the rule."""
    vm, _ = make_vm(name, ad)
    vm.set_dirty_logging(0, True)
    touch(vm, BASE + 5, "write")
    monkeypatch.setattr(vm, "flush_remote_tlbs_memslot", lambda slot_id, as_id=0: None)
    with pytest.raises(FlushObligationError,
                       match=f"^get_dirty_log: gfn {BASE + 5:#x} .*: {RULE_DIRTY_LOG}"):
        vm.get_dirty_log(0)


@pytest.mark.parametrize("buggy", [False, True], ids=["kvm", "lost-flush"])
@pytest.mark.parametrize("name, ad", CONFIGS, ids=IDS)
def test_write_tracking_without_a_flush(name, ad, buggy, monkeypatch):
    """Write tracking takes write and the MMU-writable bit from a cached writable page:
    a permission reduction, owed a flush at once (spte.h)."""
    vm, rec = make_vm(name, ad)
    touch(vm, BASE + 7, "write")
    rec.clear()
    if not buggy:
        assert vm.write_track_add_gfn(BASE + 7)
        assert rec.log == [("range", BASE + 7, 1)]
        return
    monkeypatch.setattr(vm, "flush_remote_tlbs_range", lambda gfn, npages, space="both": None)
    with pytest.raises(FlushObligationError,
                       match=f"^write_protect_gfn: gfn {BASE + 7:#x} .*: {RULE_PERMISSION}"):
        vm.write_track_add_gfn(BASE + 7)


@pytest.mark.parametrize("buggy", [False, True], ids=["kvm", "lost-flush"])
def test_aging_allowance_covers_only_the_accessed_state(buggy, monkeypatch):
    """Aging without a flush, as its caller asks, leaves the Accessed state stale.
    Without A/D bits access tracking also takes W, and that stale writable entry must
    still be flushed before dirty logging starts (KVM's unconditional flush there)."""
    vm, rec = make_vm("ept4", "off")
    touch(vm, BASE + 9, "write")
    rec.clear()
    assert vm.age_gfn_range(BASE, BASE + 1024)
    assert rec.log == [] and not vm.translate((BASE + 9) << 12, "read").ok
    if not buggy:
        vm.set_dirty_logging(0, True)
        assert rec.log == [("range", BASE, 1024)]
        return
    monkeypatch.setattr(vm, "flush_remote_tlbs_memslot", lambda slot_id, as_id=0: None)
    with pytest.raises(FlushObligationError,
                       match=f"^set_dirty_logging: gfn {BASE + 9:#x} .*cached "
                             f"{HPA + 9 * 4096:#x} read\\+write\\+execute, now .* read\\+execute "
                             f"at level 1: {RULE_DIRTY_LOG}"):
        vm.set_dirty_logging(0, True)


def test_aging_asked_to_flush_must_flush(monkeypatch):
    """The allowance is the caller's choice: aging asked to flush owes the flush."""
    vm, _ = make_vm("ept4", "hardware")
    touch(vm, BASE + 9)
    monkeypatch.setattr(vm, "flush_remote_tlbs_range", lambda gfn, npages, space="both": None)
    with pytest.raises(FlushObligationError, match=f"^age_gfn_range: .*: {RULE_ACCESSED}"):
        vm.age_gfn_range(BASE, BASE + 1024, flush=True)
