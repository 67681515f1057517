"""The TDP MMU model: the same scenarios on all seven formats and every A/D mode.

Every scenario ends with ``check_vm``: the reference walker translates every mapped GFN
to its memslot's frame, page statistics match a recount, no table page leaks. Every VM
also checks its flush obligations after each operation (:class:`FlushObligations` in
front of the recorder), taking in what the vCPU's walks may have cached.
"""

import pytest

from sw_model.formats import FORMAT_NAMES, get_format
from sw_model.memory import HostMemory
from sw_model.tdp import FlushRecorder, PfResult, Vm
from sw_model.tdp.check import check_vm
from sw_model.tdp.obligations import FlushObligations

CONFIGS = [(name, ad) for name in FORMAT_NAMES for ad in get_format(name).ad_modes]
IDS = [f"{name}-{ad}" for name, ad in CONFIGS]

GIB = 1 << 18          # pages per 1 GiB
MIB2 = 512             # pages per 2 MiB
BASE = 4 * GIB         # GFN of the first test slot (GPA 16 GiB)
HPA = 1 << 33          # host frame backing BASE (1 GiB aligned, 8 GiB)


def make_vm(name, ad, *, memory=None, **kwargs):
    rec = FlushRecorder()
    vm = Vm(name, memory or HostMemory(8 << 20), ad=ad, flush_sink=FlushObligations(rec),
            **kwargs)
    return vm, rec


def expect_hpa(vm, gpa, hpa, access="read"):
    result = vm.translate(gpa, access)
    assert result.ok, f"{vm.fmt.name}: {access} at {gpa:#x}: {result.to_json()}"
    assert result.hpa == hpa, f"{vm.fmt.name}: {gpa:#x} -> {result.hpa:#x}, expected {hpa:#x}"
    return result


def touch(vm, gpa, access="read"):
    """Fault until the access goes through, as a vCPU retrying would."""
    for _ in range(4):
        result = vm.translate(gpa, access, ad_update=True)
        if result.ok:
            vm.sink.observe()
            return result
        assert vm.handle_fault(gpa, access) in (PfResult.FIXED, PfResult.SPURIOUS, PfResult.RETRY)
    raise AssertionError(f"{access} at {gpa:#x} still faults: {result.to_json()}")


@pytest.mark.parametrize("name, ad", CONFIGS, ids=IDS)
def test_fault_in_4k(name, ad):
    vm, rec = make_vm(name, ad)
    slot = vm.add_memslot(0, BASE, 64, HPA, host_level=1)
    start_free = vm.mem.free_pages
    for i, access in enumerate(["read", "write", "execute"] * 3):
        gfn = BASE + 7 * i
        assert vm.handle_fault(gfn << 12, access) is PfResult.FIXED
        result = expect_hpa(vm, (gfn << 12) | 0x123, slot.gfn_to_hpa(gfn) | 0x123, access)
        assert result.level == 1
        # The same fault again finds the access already allowed.
        assert vm.handle_fault(gfn << 12, access) is PfResult.SPURIOUS
    assert vm.stats()["pages"][1] == 9
    assert vm.stats()["faults"]["fixed"] == 9 and vm.stats()["faults"]["spurious"] == 9
    # Root plus one table per level below it.
    assert start_free - vm.mem.free_pages == vm.fmt.root_table_bytes // 4096 + vm.fmt.levels - 1
    assert rec.log == []                     # filling holes needs no flush
    check_vm(vm)


@pytest.mark.parametrize("name, ad", CONFIGS, ids=IDS)
def test_huge_pages_follow_memslot_and_host_level(name, ad):
    vm, _ = make_vm(name, ad, nx_huge_pages=False)
    # 1 GiB + 2 MiB + 5 pages: one 1G page, one 2M page, 4K pages at the tail.
    slot = vm.add_memslot(0, BASE, GIB + MIB2 + 5, HPA)
    small = vm.add_memslot(1, 8 * GIB, 4 * MIB2, HPA + (8 << 30), host_level=2)
    # Host frames not aligned like the GFNs: no huge page at all.
    skew = vm.add_memslot(2, 12 * GIB, 2 * MIB2, HPA + (16 << 30) + 4096)
    cases = [(slot, BASE + 12345, 3), (slot, BASE + GIB + 3, 2), (slot, BASE + GIB + MIB2 + 2, 1),
             (small, 8 * GIB + MIB2 + 9, 2), (skew, 12 * GIB + 700, 1)]
    for s, gfn, level in cases:
        assert vm.handle_fault(gfn << 12, "write") is PfResult.FIXED
        result = expect_hpa(vm, gfn << 12, s.gfn_to_hpa(gfn), "write")
        assert result.level == level, f"gfn {gfn:#x}: level {result.level}, expected {level}"
    assert vm.stats()["pages"][3] == 1 and vm.stats()["pages"][2] == 2
    check_vm(vm)
    # max_level bounds the fault.
    vm.zap_gfn_range(BASE, BASE + GIB)
    assert vm.handle_fault(BASE << 12, "read", max_level=2) is PfResult.FIXED
    assert vm.translate(BASE << 12, "read").level == 2
    check_vm(vm)


@pytest.mark.parametrize("name, ad", CONFIGS, ids=IDS)
def test_readonly_slot_mmio_and_range(name, ad):
    vm, _ = make_vm(name, ad)
    vm.add_memslot(0, BASE, MIB2, HPA, readonly=True)
    assert vm.handle_fault(BASE << 12, "write") is PfResult.EMULATE
    assert vm.handle_fault(BASE << 12, "read") is PfResult.FIXED
    result = vm.translate(BASE << 12, "write")
    assert not result.ok and result.kind == "permission"
    assert vm.handle_fault(BASE << 12, "write") is PfResult.EMULATE
    assert vm.handle_fault((BASE + MIB2) << 12, "read") is PfResult.EMULATE     # no slot: MMIO
    assert vm.handle_fault(1 << vm.fmt.gpa_bits, "read") is PfResult.EMULATE
    assert [e.args["reason"] for e in vm.events if e.name == "kvm_page_fault_done"] == \
        ["readonly", "", "readonly", "mmio", "mmio"]
    check_vm(vm)


@pytest.mark.parametrize("name, ad", CONFIGS, ids=IDS)
@pytest.mark.parametrize("ranges", [True, False], ids=["ranges", "no-ranges"])
def test_zap_range_flushes_and_keeps_the_rest(name, ad, ranges):
    vm, rec = make_vm(name, ad)
    rec.supports_ranges = ranges
    slot = vm.add_memslot(0, BASE, 4 * MIB2, HPA, host_level=2)
    vm.add_memslot(1, BASE + 4 * MIB2, 64, HPA + (1 << 30), host_level=1)
    for gfn in (BASE, BASE + MIB2, BASE + 3 * MIB2 + 1, BASE + 4 * MIB2 + 3, BASE + 4 * MIB2 + 9):
        touch(vm, gfn << 12, "write")
    # Zapping one 4K page of a 2M page zaps the whole huge page.
    assert vm.zap_gfn_range(BASE + MIB2 + 5, BASE + MIB2 + 6)
    assert rec.log == ([("range", BASE + MIB2 + 5, 1)] if ranges else [("all",)])
    assert not vm.translate((BASE + MIB2) << 12, "read").ok
    expect_hpa(vm, BASE << 12, slot.gfn_to_hpa(BASE))
    # Deleting a slot zaps its pages only.
    vm.delete_memslot(1)
    assert not vm.translate((BASE + 4 * MIB2 + 3) << 12, "read").ok
    expect_hpa(vm, (BASE + 3 * MIB2 + 1) << 12, slot.gfn_to_hpa(BASE + 3 * MIB2 + 1))
    assert vm.handle_fault((BASE + 4 * MIB2 + 3) << 12, "read") is PfResult.EMULATE
    # Nothing mapped: no flush owed.
    rec.clear()
    assert not vm.zap_gfn_range(BASE + 2 * MIB2, BASE + 3 * MIB2)
    assert rec.log == []
    check_vm(vm)


@pytest.mark.parametrize("name, ad", CONFIGS, ids=IDS)
def test_zap_all_frees_every_table_page(name, ad):
    vm, rec = make_vm(name, ad, address_spaces=2)
    start_free = vm.mem.free_pages
    slot = vm.add_memslot(0, BASE, GIB + 3 * MIB2, HPA)
    vm.add_memslot(0, BASE, 16, HPA, as_id=1, host_level=1)
    for gfn in range(BASE, BASE + GIB + 3 * MIB2, 4099):
        touch(vm, gfn << 12, "write")
    touch(vm, BASE << 12, "read")
    touch(vm, (BASE + 3) << 12, "write")
    for as_id in (0, 1):
        assert vm.handle_fault((BASE + 5) << 12, "read", as_id=as_id) in (PfResult.FIXED, PfResult.SPURIOUS)
    assert vm.root_for(0) != vm.root_for(1)
    check_vm(vm)
    old_root = vm.root_for(0)
    vm.zap_all()
    assert vm.mem.free_pages == start_free
    assert vm.roots == () and vm.stats()["table_pages"] == 0
    assert all(v == 0 for v in vm.stats()["pages"].values())
    assert rec.log[-1] == ("all",)
    # The VM goes on with new roots.
    touch(vm, (BASE + 5) << 12, "read")
    expect_hpa(vm, (BASE + 5) << 12, slot.gfn_to_hpa(BASE + 5))
    assert len(vm.roots) == 1
    check_vm(vm)
    del old_root


@pytest.mark.parametrize("name, ad", CONFIGS, ids=IDS)
def test_root_refcounts_and_invalidation(name, ad):
    vm, rec = make_vm(name, ad)
    start_free = vm.mem.free_pages
    vm.add_memslot(0, BASE, MIB2, HPA, host_level=1)
    hpa = vm.root_for(0)
    root = vm.get_root(0)                    # a second user of the same root
    assert root.hpa == hpa and root.refcount == 3
    touch(vm, BASE << 12, "write")
    vm.invalidate_all_roots()
    assert root.invalid and vm.root_for(0) != hpa   # the vCPU moved on
    assert root.refcount == 2                   # the MMU's own and ours
    vm.zap_invalidated_roots()                  # zaps, drops the MMU's reference
    assert root in vm.roots and root.refcount == 1 and not vm.translate(BASE << 12, "read").ok
    vm.put_root(root)
    assert root not in vm.roots and not vm.mem.is_allocated(hpa)
    with pytest.raises(ValueError, match="holds no reference"):
        vm.put_root(root)
    touch(vm, BASE << 12, "read")
    check_vm(vm)
    vm.zap_all()
    assert vm.mem.free_pages == start_free


@pytest.mark.parametrize("name, ad", CONFIGS, ids=IDS)
def test_frozen_entry_makes_a_fault_retry(name, ad):
    vm, _ = make_vm(name, ad)
    vm.add_memslot(0, BASE, MIB2, HPA, host_level=1)
    fmt = vm.fmt
    root = vm.root_for(0)
    sptep = fmt.entry_addr(root, BASE << 12, fmt.root_level)
    vm.mem.write64(sptep, fmt.tdp_frozen_spte())
    assert vm.handle_fault(BASE << 12, "read") is PfResult.RETRY
    assert not vm.translate(BASE << 12, "read").ok       # frozen is not present
    vm.mem.write64(sptep, 0)
    assert vm.handle_fault(BASE << 12, "read") is PfResult.FIXED


def _dirty(vm, slot):
    return set(slot.dirty_gfns(vm.get_dirty_log(slot.slot_id)))


@pytest.mark.parametrize("name, ad", CONFIGS, ids=IDS)
def test_dirty_logging_split_log_and_recover(name, ad):
    vm, rec = make_vm(name, ad, nx_huge_pages=False)
    slot = vm.add_memslot(0, BASE, 4 * MIB2, HPA, host_level=2)
    for i in range(4):
        touch(vm, (BASE + i * MIB2) << 12, "read")
    assert vm.stats()["pages"][2] == 4
    before = {g: vm.translate(g << 12, "read").hpa for g in range(BASE, BASE + 4 * MIB2, 97)}
    rec.clear()
    result = vm.set_dirty_logging(0, True)
    assert result.huge_pages_split == 4 and result.sptes_created == 4 * 512 and not result.enomem
    assert vm.stats()["pages"] == {**{l: 0 for l in vm.page_stats}, 1: 4 * 512}
    # The split changed no translation, so the only flush is the one after
    # write-protecting / clearing D (none if nothing was writable and dirty).
    assert {g: vm.translate(g << 12, "read").hpa for g in before} == before
    assert set(rec.log) <= {("range", BASE, 4 * MIB2)}
    check_vm(vm)
    _dirty(vm, slot)                           # start from a clean log
    written = {BASE + 3, BASE + MIB2 + 100, BASE + 4 * MIB2 - 1}
    for gfn in sorted(written):
        touch(vm, gfn << 12, "write")
        touch(vm, gfn << 12, "write")          # a second write through the TLB-less walker
    for gfn in (BASE + 5, BASE + 2 * MIB2):
        touch(vm, gfn << 12, "read")
    assert _dirty(vm, slot) == written
    assert _dirty(vm, slot) == set()
    # Pages are re-protected: the next write is logged again.
    touch(vm, (BASE + 3) << 12, "write")
    assert _dirty(vm, slot) == {BASE + 3}
    # New faults while logging map 4K pages.
    vm.zap_gfn_range(BASE, BASE + MIB2)
    touch(vm, (BASE + 9) << 12, "read")
    assert vm.translate((BASE + 9) << 12, "read").level == 1
    check_vm(vm)
    rec.clear()
    assert vm.set_dirty_logging(0, False) is None
    assert vm.stats()["pages"][2] == 4 and vm.stats()["pages"][1] == 0
    assert rec.log == [("range", BASE, 4 * MIB2)]      # one batched flush
    for g, hpa in before.items():
        expect_hpa(vm, g << 12, hpa)
    check_vm(vm)


@pytest.mark.parametrize("name, ad", CONFIGS, ids=IDS)
def test_clear_dirty_log_by_mask(name, ad):
    vm, _ = make_vm(name, ad)
    slot = vm.add_memslot(0, BASE, 256, HPA, host_level=1, dirty_logging=True)
    for i in (1, 2, 70, 200):
        touch(vm, (BASE + i) << 12, "write")
    # Manual protection: the bitmap is read without being cleared...
    bitmap = vm.get_dirty_log(0)
    assert slot.dirty_gfns(bitmap) == [BASE + i for i in (1, 2, 70, 200)]
    for i in (1, 2, 70):
        touch(vm, (BASE + i) << 12, "write")
    assert slot.dirty_gfns(vm.get_dirty_log(0)) == [BASE + i for i in (1, 2, 70)]
    # ... and re-protected 64 pages at a time.
    touch(vm, (BASE + 1) << 12, "write")
    touch(vm, (BASE + 2) << 12, "write")
    vm.clear_dirty_log(0, 0, 1 << 1)
    # Write protection logs a write at its fault; hardware D bits reach the bitmap only
    # when the log is read.
    assert slot.dirty_gfns() == ([] if ad == "hardware" else [BASE + 2])
    assert slot.dirty_gfns(vm.get_dirty_log(0)) == [BASE + 2]
    with pytest.raises(ValueError, match="first_page"):
        vm.clear_dirty_log(0, 3, 1)
    check_vm(vm)


@pytest.mark.parametrize("name, ad", CONFIGS, ids=IDS)
def test_aging(name, ad):
    vm, _ = make_vm(name, ad)
    vm.add_memslot(0, BASE, 64, HPA, host_level=1)
    for i in range(4):
        touch(vm, (BASE + i) << 12, "write")
    assert vm.test_age_gfn(BASE, BASE + 64)
    assert vm.age_gfn_range(BASE, BASE + 2)
    assert not vm.test_age_gfn(BASE, BASE + 2) and vm.test_age_gfn(BASE + 2, BASE + 4)
    assert not vm.age_gfn_range(BASE, BASE + 2)
    # Aged pages stay mapped (check_vm) and become young on the next access.
    check_vm(vm)
    touch(vm, BASE << 12, "read")
    assert vm.test_age_gfn(BASE, BASE + 1) and not vm.test_age_gfn(BASE + 1, BASE + 2)
    check_vm(vm)


@pytest.mark.parametrize("name, ad", CONFIGS, ids=IDS)
def test_nx_huge_pages(name, ad):
    fmt = get_format(name)
    if not fmt.tdp_nx_huge_pages():
        with pytest.raises(ValueError, match="nx_huge_pages"):
            Vm(name, HostMemory(1 << 20), nx_huge_pages=True)
        vm, _ = make_vm(name, ad)
        vm.add_memslot(0, BASE, 2 * MIB2, HPA, host_level=2)
        touch(vm, BASE << 12, "execute")
        assert vm.translate(BASE << 12, "execute").level == 2
        return
    vm, rec = make_vm(name, ad)
    assert vm.nx_huge_pages
    slot = vm.add_memslot(0, BASE, 2 * MIB2, HPA, host_level=2)
    touch(vm, BASE << 12, "read")                       # a non-executable 2M page
    assert vm.translate(BASE << 12, "read").level == 2
    assert not vm.translate(BASE << 12, "execute").ok
    touch(vm, (BASE + 3) << 12, "execute")              # split: 4K pages, executable
    assert vm.translate((BASE + 3) << 12, "execute").level == 1
    assert vm.stats()["nx_lpage_splits"] == 1
    touch(vm, (BASE + MIB2 + 1) << 12, "execute")      # an exec fault on a hole: 4K too
    assert vm.translate((BASE + MIB2 + 1) << 12, "execute").level == 1
    touch(vm, (BASE + MIB2 + 9) << 12, "read")         # reads stay 4K under the NX table
    assert vm.translate((BASE + MIB2 + 9) << 12, "read").level == 1
    assert vm.stats()["nx_lpage_splits"] == 2
    check_vm(vm)
    rec.clear()
    assert vm.recover_nx_huge_pages(ratio=1) == 2
    assert vm.stats()["nx_lpage_splits"] == 0 and rec.log == [("all",)]
    touch(vm, (BASE + MIB2 + 9) << 12, "read")
    assert vm.translate((BASE + MIB2 + 9) << 12, "read").level == 2
    expect_hpa(vm, (BASE + MIB2 + 9) << 12, slot.gfn_to_hpa(BASE + MIB2 + 9))
    check_vm(vm)


@pytest.mark.parametrize("name, ad", CONFIGS, ids=IDS)
def test_eager_split_runs_short_of_pages(name, ad):
    mem = HostMemory(20 << 12)                  # 20 table pages
    vm, _ = make_vm(name, ad, memory=mem, nx_huge_pages=False)
    slot = vm.add_memslot(0, BASE, 16 * MIB2, HPA, host_level=2)
    for i in range(16):
        touch(vm, (BASE + i * MIB2) << 12, "write")
    result = vm.set_dirty_logging(0, True)
    assert result.enomem and 0 < result.huge_pages_split < 16
    assert mem.free_pages == vm.min_free_pages
    assert [e.args["errno"] for e in vm.events if e.name == "kvm_mmu_split_huge_page"][-1] == -12
    # Unsplit huge pages still translate and still log writes.
    for i in (0, 15):
        expect_hpa(vm, (BASE + i * MIB2 + 7) << 12, slot.gfn_to_hpa(BASE + i * MIB2 + 7))
    assert vm.translate((BASE + 15 * MIB2) << 12, "read").level == 2
    touch(vm, (BASE + 15 * MIB2 + 7) << 12, "write")
    assert BASE + 15 * MIB2 + 7 in slot.dirty_gfns(vm.get_dirty_log(0))
    check_vm(vm)


def test_split_1g_to_4k_in_one_pass():
    vm, rec = make_vm("ept4", "hardware", memory=HostMemory(4 << 20), trace=False)
    slot = vm.add_memslot(0, BASE, GIB, HPA)
    touch(vm, BASE << 12, "write")
    rec.clear()
    result = vm.split_huge_pages(0)
    assert result.huge_pages_split == 1 + 512 and result.sptes_created == 512 * 513
    assert vm.stats()["pages"][1] == GIB and vm.stats()["pages"][3] == 0 and rec.log == []
    for gfn in (BASE, BASE + 12345, BASE + GIB - 1):
        assert expect_hpa(vm, gfn << 12, slot.gfn_to_hpa(gfn)).level == 1
    free = vm.mem.free_pages
    assert vm.recover_huge_pages(0) == 1 and vm.stats()["pages"][3] == 1
    assert vm.mem.free_pages == free + 513
    vm.zap_all()
    assert vm.mem.free_pages == vm.mem.total_pages


@pytest.mark.parametrize("name, ad", CONFIGS, ids=IDS)
def test_yield_restart_with_concurrent_walks(name, ad):
    """Every walk yields at every step; at each yield the 'hardware' walks pages and
    sets A/D bits. Nothing is lost: every write shows up in the dirty log."""
    written = set()
    gfns = [BASE + i for i in range(0, 2 * MIB2, 41)]
    state = {"n": 0}

    def hardware(vm):
        gfn = gfns[state["n"] % len(gfns)]
        state["n"] += 1
        if vm.translate(gfn << 12, "write", ad_update=True).ok:
            vm.sink.observe()
            written.add(gfn)

    vm, _ = make_vm(name, ad, yield_every=1, on_yield=hardware, nx_huge_pages=False)
    slot = vm.add_memslot(0, BASE, 2 * MIB2, HPA, host_level=2)
    for gfn in gfns:
        touch(vm, gfn << 12, "write")
    vm.set_dirty_logging(0, True)
    assert vm.stats()["pages"][2] == 0
    written.clear()
    logged = set()
    for _ in range(3):
        for gfn in gfns[::5]:
            touch(vm, gfn << 12, "write")
            written.add(gfn)
        logged |= set(slot.dirty_gfns(vm.get_dirty_log(0)))
        assert written <= logged, sorted(written - logged)[:5]
    assert any(e.name == "yield" for e in vm.events)
    check_vm(vm)
    vm.set_dirty_logging(0, False)
    check_vm(vm)
    vm.on_yield = None                          # teardown: the vCPUs have stopped
    vm.zap_all()
    assert vm.mem.free_pages == vm.mem.total_pages


def test_bad_arguments_name_the_field():
    vm, _ = make_vm("sv39x4", "hardware")
    vm.add_memslot(0, BASE, 16, HPA)
    with pytest.raises(ValueError, match="overlaps"):
        vm.add_memslot(1, BASE + 8, 16, HPA)
    with pytest.raises(ValueError, match="slot_id 0 already"):
        vm.add_memslot(0, 0, 16, HPA)
    with pytest.raises(ValueError, match="hpa"):
        vm.add_memslot(2, 0, 16, HPA + 1)
    with pytest.raises(ValueError, match="host_level"):
        vm.add_memslot(2, 0, 16, HPA, host_level=9)
    with pytest.raises(ValueError, match="as_id"):
        vm.root_for(1)
    with pytest.raises(ValueError, match="beyond"):
        vm.add_memslot(3, (1 << (vm.fmt.gpa_bits - 12)) - 1, 2, HPA)
    with pytest.raises(ValueError, match="dirty logging is off"):
        vm.get_dirty_log(0)
    with pytest.raises(ValueError, match="nx_huge_pages"):
        Vm("npt4", HostMemory(1 << 20), nxe=False, nx_huge_pages=True)


@pytest.mark.parametrize("name, ad", CONFIGS, ids=IDS)
def test_write_tracking_clears_mmu_writable_and_flushes(name, ad):
    """KVM's spte.h rule: a flush is owed when MMU-writable goes 1 -> 0, not when only
    W is cleared (dirty logging, whose caller flushes the slot once)."""
    vm, rec = make_vm(name, ad, nx_huge_pages=False)
    slot = vm.add_memslot(0, BASE, 2 * MIB2, HPA, host_level=2)
    touch(vm, (BASE + 5) << 12, "write")
    assert vm.translate((BASE + 5) << 12, "read").level == 2
    rec.clear()
    assert vm.write_track_add_gfn(BASE + 5)
    assert rec.log == [("range", BASE + 5, 1)]
    assert vm.translate((BASE + 5) << 12, "write").kind == "permission"
    assert vm.handle_fault((BASE + 5) << 12, "write") is PfResult.EMULATE
    # Other pages of the former huge page become writable again as 4K pages.
    touch(vm, (BASE + 6) << 12, "write")
    assert vm.translate((BASE + 6) << 12, "write").level == 1
    assert not vm.translate((BASE + 5) << 12, "write").ok
    # A huge page is never mapped over a tracked page.
    touch(vm, (BASE + MIB2) << 12, "read")
    assert vm.translate((BASE + MIB2) << 12, "read").level == 2
    check_vm(vm)
    rec.clear()
    assert not vm.write_track_add_gfn(BASE + 5)          # already protected: no flush
    assert rec.log == []
    vm.write_track_remove_gfn(BASE + 5)
    touch(vm, (BASE + 5) << 12, "write")
    expect_hpa(vm, (BASE + 5) << 12, slot.gfn_to_hpa(BASE + 5), "write")
    check_vm(vm)


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_iterator_preorder_restart_and_forward_progress(name):
    from sw_model.tdp import TdpIter
    vm, _ = make_vm(name, None)
    vm.add_memslot(0, BASE, 3 * MIB2, HPA, host_level=2)
    for gfn in (BASE + 1, BASE + 7, BASE + MIB2, BASE + 2 * MIB2 + 5):
        touch(vm, gfn << 12, "execute" if gfn == BASE + 7 else "read")
    root = vm.roots[0].hpa
    fmt = vm.fmt

    def leaves(yield_always):
        seen, steps = [], 0
        it = TdpIter(vm.mem, fmt, root, 1, BASE, BASE + 3 * MIB2)
        for it in it:
            steps += 1
            assert steps < 10000, "no forward progress"
            if fmt.tdp_is_shadow_present(it.old_spte) and fmt.tdp_is_last_spte(it.old_spte, it.level):
                seen.append((it.gfn, it.level))
            # Yield (restart from the root) whenever the walk has moved on.
            if yield_always and it.next_last_level_gfn != it.yielded_gfn:
                it.yielded = True
        return seen, steps

    plain, plain_steps = leaves(False)
    assert [g for g, _ in plain] == sorted(g for g, _ in plain)       # pre-order, ascending
    for touched in (BASE + 1, BASE + 7, BASE + MIB2, BASE + 2 * MIB2 + 5):
        assert any(g <= touched < g + (fmt.page_size(l) >> 12) for g, l in plain)
    restarted, steps = leaves(True)
    assert sorted(set(restarted)) == plain and steps > plain_steps


def test_split_of_an_access_tracked_huge_page_stays_tracked():
    """EPT without A/D: aging hides a huge page from the walker (R/X saved in software
    bits); splitting it with NX huge pages must put X back in the saved bits (KVM's
    make_spte_executable), not make an execute-only entry. Found by the long property
    test (ept5, A/D off)."""
    vm, _ = make_vm("ept5", "off")
    slot = vm.add_memslot(0, BASE, MIB2, HPA, host_level=2)
    touch(vm, BASE << 12, "write")
    assert vm.age_gfn_range(BASE, BASE + MIB2)
    assert vm.translate(BASE << 12, "read").kind == "not_present"
    vm.split_huge_pages(0)
    assert vm.stats()["pages"][1] == MIB2
    assert vm.translate((BASE + 3) << 12, "read").kind == "not_present"
    check_vm(vm)
    touch(vm, (BASE + 3) << 12, "execute")
    expect_hpa(vm, (BASE + 3) << 12, slot.gfn_to_hpa(BASE + 3), "execute")
    check_vm(vm)
