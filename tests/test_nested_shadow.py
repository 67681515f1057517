"""L0's shadow MMU for an L2 (sw_model.nested.shadow and .dirty_log): the rmaps and
parent links after every kind of update, unsync last-level pages resynced at INVEPT,
L0's dirty logging of L1's memory (write protection through the rmaps, the fast path,
harvests, huge pages coming back), and each eager-split policy of the shadow MMU,
triggered on purpose. ``check()`` verifies the books against the tables throughout."""

import pytest

from sw_model.nested import Driver, L2Slot, build, check_tables
from sw_model.nested.rmap import pte_list_count, pte_list_sptes
from sw_model.nested.workload import L1_TABLES
from sw_model.tdp import FlushRecorder

GIB = 1 << 30


def _shadow(fmt="ept4", ad=None, **options):
    rec = FlushRecorder()
    return build("shadow", fmt, ad=ad, sink=rec, **options), rec


def _access(d, gpa, access):
    """An L2 access, the reference walker as the hardware; the final answer."""
    return Driver(d).walk(gpa, access)


def _log(d, slot_id=0, eager_split=True):
    """L0 starts logging its memslot and harvests once: pages L1 wrote before (D bits
    in L0's tables for L1) are out of the way."""
    d.l0_dirty_logging(slot_id, True, eager_split=eager_split)
    d.l0_get_dirty(slot_id)


def _data_pages(gfns):
    """The L1 GFNs outside L1's tables (L0 logs its A/D updates there too)."""
    return {g for g in gfns if not L1_TABLES >> 12 <= g < (L1_TABLES >> 12) + 512}


def _leaf(d, gpa):
    """(page, index, word) of the shadow leaf mapping ``gpa``."""
    return d._shadow_leaf(gpa)


def test_rmap_follows_set_zap_and_split():
    d, _ = _shadow()
    d.add_slot(L2Slot(0, 0, 1024, 0x1000))
    assert _access(d, 0x5000, "write").level == 2
    sp, index, _ = _leaf(d, 0x5000)
    assert pte_list_sptes(d._rmaps[2][0x1000]) == [sp.hpa + 8 * index]
    d.check()
    # L0 logs the memslot: eager splitting puts 512 level-1 leaves in the rmaps
    d.l0_dirty_logging(0, True)
    assert 0x1000 not in d._rmaps[2]
    assert all(pte_list_count(d._rmaps[1][0x1000 + i]) == 1 for i in range(512))
    direct = d._sptep_to_sp(pte_list_sptes(d._rmaps[1][0x1000])[0])
    assert direct.l1_table is None and direct.direct_gfn == 0x1000
    assert pte_list_sptes(direct.parent_ptes) == [sp.hpa + 8 * index]
    d.check()
    # L1 zaps: the exit zaps the link, the parentless direct page goes with its leaves
    d.zap(0, 512)
    assert not d._rmaps[1] and not d._rmaps[2] and direct.hpa not in d._sps
    d.check()


def test_unsync_last_level_page_and_invept_resync():
    """L1 maps 4 KiB pages: its last-level table is shadowed, write-protected in L0's
    tables for L1 but not write-tracked. L1's first write to it faults and makes the
    shadow page unsync; later writes do not exit; L1's INVEPT resyncs it (the entries
    whose L1 entry changed are dropped) and write-protects it again."""
    d, rec = _shadow(ad="off")
    d.add_slot(L2Slot(0, 0, 1024, 0x1000))
    d.dirty_logging(0, True)                        # L1 maps 4 KiB from now on
    for g in range(8):
        assert _access(d, g << 12, "write").ok
    d.flush()                       # L1's INVEPT: the page its faults unsynced resyncs
    level1 = [sp for sp in d._sps.values() if sp.level == 1]
    assert len(level1) == 1 and not level1[0].unsync
    table = level1[0].l1_table >> 12
    assert not d.l0.vm.is_write_tracked(table) and d.l0.max_level(table) == 1
    assert not d.l0.vm.translate(table << 12, "write").ok
    counts = dict(d.costs.counts)
    rec.clear()
    d.get_dirty(0)              # L1 write-protects 8 leaves in that table, then flushes
    delta = {k: d.costs.counts[k] - counts.get(k, 0) for k in
             ("wp_exits", "unsync", "resyncs", "invept_exits", "resync_zapped")}
    assert delta == {"wp_exits": 1, "unsync": 1, "resyncs": 1, "invept_exits": 1,
                     "resync_zapped": 8}, delta
    assert ("all",) in rec.log
    assert not level1[0].unsync and not d.l0.vm.translate(table << 12, "write").ok
    assert not d.leaves()
    check_tables(d)
    # L2 writes again: L1 logs them (reflected), the shadow maps them again
    assert _access(d, 0x3000, "write").ok and d.get_dirty(0) == {3}
    check_tables(d)


def test_l1_writes_go_through_l0_tables_for_l1_and_are_logged():
    d, _ = _shadow()
    d.add_slot(L2Slot(0, 0, 1024, 0x1000))
    _access(d, 0x5000, "read")
    _log(d)
    d.zap(0, 1024)                      # L1 writes its level-2 table: an emulated exit
    tables = {sp.l1_table >> 12 for sp in d._by_l1.values()}
    got = d.l0_get_dirty(0)
    assert got and got <= tables | {L1_TABLES >> 12}
    _access(d, 0x5000, "read")          # L0 walks L1's tables and sets A: L0's write
    assert d.l0_get_dirty(0)
    check_tables(d)


def test_l0_dirty_log_write_protects_through_rmaps_and_huge_pages_come_back():
    d, rec = _shadow()
    d.add_slot(L2Slot(0, 0, 1024, 0x1000))
    for g in (5, 700):
        assert _access(d, g << 12, "write").level == 2
    rec.clear()
    _log(d)
    assert d.split_stats["split"] == 2 and ("all",) in rec.log
    sp, index, word = _leaf(d, 5 << 12)
    assert sp.level == 1 and not d.fmt.tdp_is_writable(word) and d.fmt.tdp_is_mmu_writable(word)
    d.check()
    fast = d.costs.counts["fast_faults"]
    assert _access(d, 5 << 12, "write").ok             # W back without walking L1
    assert d.costs.counts["fast_faults"] == fast + 1
    assert _access(d, 6 << 12, "read").ok              # split: no fault at all
    assert d.l0_get_dirty(0) == {0x1005}
    assert not d.fmt.tdp_is_writable(_leaf(d, 5 << 12)[2]), "not protected again"
    assert d.l0_get_dirty(0) == set()
    d.check()
    d.l0_dirty_logging(0, False)
    assert d.costs.counts["l0_collapsed"] >= 1024
    assert _access(d, 5 << 12, "write").level == 2, "huge page not back"
    check_tables(d)


def test_without_eager_splitting_the_first_touches_take_slow_faults():
    slow = {}
    for eager in (True, False):
        d, _ = _shadow()
        d.add_slot(L2Slot(0, 0, 1024, 0x1000))
        _access(d, 0, "write")              # L1's leaf is dirty: writes may go fast
        _log(d, eager_split=eager)
        before = d.costs.counts["l0_faults"]
        for g in range(1, 64):
            _access(d, g << 12, "read" if g % 2 else "write")
        slow[eager] = d.costs.counts["l0_faults"] - before
        assert _data_pages(d.l0_get_dirty(0)) == {0x1000 + g for g in range(2, 64, 2)}
        d.check()
    assert slow[True] == 0 and slow[False] > 50


def test_policy_1_refuses_when_the_shadow_page_budget_is_low():
    d, _ = _shadow(max_shadow_pages=9)
    d.add_slot(L2Slot(0, 0, 4096, 0x1000))
    for g in range(0, 4096, 512):
        _access(d, g << 12, "read")
    assert len(d._sps) == d.fmt.levels - 1           # root to the level-2 table
    _log(d)
    stats = d.split_stats
    # KVM_MIN_FREE_MMU_PAGES (5) or fewer left: after 9 - 3 - 5 = 1 split, refusals
    assert stats["split"] == 1 and stats["refused_budget"] == 7
    assert all(not d.fmt.tdp_is_writable(w) for _, _, w in d.leaves())
    assert _access(d, (3 * 512 + 7) << 12, "write").ok
    assert _data_pages(d.l0_get_dirty(0)) == {0x1000 + 3 * 512 + 7}
    assert len(d._sps) <= d.max_shadow_pages
    d.check()


def test_make_mmu_pages_available_zaps_the_oldest_pages():
    d, _ = _shadow(max_shadow_pages=30)
    d.add_slot(L2Slot(0, 0, 0x10000, 0x10000))      # 4 KiB-misaligned in L0: direct pages
    for g in range(0, 0x10000, 512):
        _access(d, g << 12, "read")
    assert d.costs.counts["zapped_oldest"] > 0 and len(d._sps) <= 30
    check_tables(d)


def test_policy_2_skips_unsync_and_invalid_pages():
    d, _ = _shadow()
    d.add_slot(L2Slot(0, 0, 2048, 0x1000))
    for g in (0, 1024):
        _access(d, g << 12, "read")
    sp = _leaf(d, 0)[0]
    other = _leaf(d, 1024 << 12)[0]
    assert sp is other and sp.level == 2
    # Only last-level pages go unsync and invalid pages are transient in KVM, so the
    # state is set up by hand: the split must leave both huge leaves alone.
    sp.invalid = True
    d.l0_dirty_logging(0, True)
    assert d.split_stats["skipped_unsync_invalid"] == 2 and d.split_stats["split"] == 0
    d.l0_dirty_logging(0, False)
    sp.invalid, sp.unsync = False, True
    d._unsync[sp] = None
    d.l0_dirty_logging(0, True)
    assert d.split_stats["skipped_unsync_invalid"] == 4 and d.split_stats["split"] == 0
    sp.unsync = False
    d._unsync.clear()
    d.check()


def test_policy_3_reuses_the_direct_page_of_an_alias():
    """Two L2 regions map one L1 huge page with 2 MiB pages: the second split finds
    the direct page of the first and links it again; no second page is allocated."""
    d, rec = _shadow()
    d.add_slot(L2Slot(0, 0, 512, 0x1000))
    d.add_slot(L2Slot(3, 0xc0000, 512, 0x1000))
    for base in (0, 0xc0000):
        assert _access(d, base << 12, "write").level == 2
    assert pte_list_count(d._rmaps[2][0x1000]) == 2
    pages = len(d._sps)
    _log(d)
    assert d.split_stats["split"] == 2 and d.split_stats["aliased"] == 1
    assert d.split_stats["aliased_flush"] == 0
    assert len(d._sps) == pages + 1
    direct = d._sptep_to_sp(pte_list_sptes(d._rmaps[1][0x1000])[0])
    assert pte_list_count(d._rmaps[1][0x1000]) == 1, "a second direct page"
    assert pte_list_count(direct.parent_ptes) == 2
    assert _access(d, (0xc0000 + 9) << 12, "write").ok
    assert d.l0_get_dirty(0) == {0x1009}
    # Both aliases reach the same leaf: write-protected again for both.
    assert not d.fmt.tdp_is_writable(_leaf(d, 9 << 12)[2])
    check_tables(d)


def test_policy_3_flushes_when_the_reused_page_links_a_lower_table():
    """Two L2 regions map one L1 1 GiB page. A write while L0 logs (no eager split)
    maps 4 KiB under the first: direct pages at levels 2 and 1. Splitting the second
    region's 1 GiB leaf then reuses that level-2 page, whose first entry links a table
    that maps only part of its range: the split flushes."""
    d, rec = _shadow("sv48x4")
    d.l0.vm.add_memslot(7, 0x40000, 0x40000, 16 * GIB)
    d.add_slot(L2Slot(0, 0x40000, 0x40000, 0x40000))
    d.add_slot(L2Slot(3, 0x80000, 0x40000, 0x40000))
    for base in (0x40000, 0x80000):                 # both L1 leaves dirty: one role
        assert _access(d, base << 12, "write").level == 3
    d.l0_dirty_logging(7, True, eager_split=False)
    assert _access(d, 0x40000 << 12, "write").level == 1
    d.l0_dirty_logging(7, False)
    rec.clear()
    d.l0.vm.split_huge_pages(7, target_level=2)
    assert d.split_stats["split"] == 1 and d.split_stats["aliased"] == 1
    assert d.split_stats["aliased_flush"] == 1
    assert ("range", 0x80000, 0x40000) in rec.log
    check_tables(d)


def test_policy_4_leaves_entries_not_present_when_the_cache_runs_dry():
    """L1 maps slot 0's L1 memory with a 2 MiB page and, one page off, with 4 KiB
    pages: splitting the huge leaf adds level-1 leaves to rmaps that hold one already,
    which need descriptors; with an empty split cache they stay not present and the
    operation flushes; faults map them later."""
    d, rec = _shadow(split_desc_capacity=0)
    d.add_slot(L2Slot(0, 0, 512, 0x1000))
    d.add_slot(L2Slot(4, 0xe0000, 256, 0x1001))
    assert _access(d, 0, "read").level == 2
    for g in range(0, 16):
        assert _access(d, (0xe0000 + g) << 12, "read").level == 1
    rec.clear()
    d.l0_dirty_logging(0, True)
    assert d.split_stats["split"] == 1 and d.split_stats["rmap_cache_dry"] == 16
    assert rec.log, "no flush for the unmapped part of the huge page"
    direct = d._sptep_to_sp(pte_list_sptes(d._rmaps[1][0x1000])[0])
    assert direct.l1_table is None
    words = d.mem.read_page(direct.hpa, direct.nbytes)
    assert not any(d.fmt.tdp_is_shadow_present(int(words[1 + g])) for g in range(16))
    d.check()
    assert _access(d, 5 << 12, "read").ok             # a fault maps it
    assert pte_list_count(d._rmaps[1][0x1005]) == 2
    check_tables(d)


def test_rmap_descriptors_come_from_the_fault_cache():
    d, _ = _shadow()
    d.add_slot(L2Slot(0, 0, 512, 0x1000))
    d.add_slot(L2Slot(4, 0xe0000, 256, 0x1001))
    d.add_slot(L2Slot(6, 0xf0000, 256, 0x1001))
    _access(d, (0xe0000 + 3) << 12, "read")
    assert d._fault_cache.allocated == 0
    _access(d, (0xf0000 + 3) << 12, "read")          # the same L1 GFN, a second leaf
    assert d._fault_cache.allocated == 1
    assert pte_list_count(d._rmaps[1][0x1004]) == 2
    d.check()


def test_check_catches_a_stale_rmap():
    d, _ = _shadow()
    d.add_slot(L2Slot(0, 0, 512, 0x1000))
    _access(d, 0, "read")
    d._rmaps[2][0x1200] = 0x1234
    with pytest.raises(AssertionError, match="rmaps"):
        d.check()


def test_bad_options():
    with pytest.raises(ValueError, match="max_shadow_pages"):
        _shadow(max_shadow_pages=3)
    with pytest.raises(ValueError, match="capacity"):
        _shadow(split_desc_capacity=-1)
    with pytest.raises(ValueError, match="flood_limit"):
        _shadow(flood_limit=0)
    with pytest.raises(ValueError, match="shadow TDP only"):
        build("kpop", "ept4", max_shadow_pages=100)
    d = build("kpop", "ept4")
    with pytest.raises(ValueError, match="not modelled under KPOP"):
        d.l0_dirty_logging(0, True)
    with pytest.raises(ValueError, match="not modelled under KPOP"):
        d.l0_get_dirty(0)
    with pytest.raises(ValueError, match="page_track: npages"):
        d.l1.call("page_track", "add", 40, 0)


def test_l0_memslot_deletion_zaps_the_shadow_entries_mapping_it():
    d, rec = _shadow()
    d.add_slot(L2Slot(1, 0x40000, 1024, 0x10200))
    d.add_slot(L2Slot(0, 0, 512, 0x1000))
    assert _access(d, (0x40000 + 5) << 12, "write").ok and _access(d, 0, "read").ok
    rec.clear()
    d.l0.vm.delete_memslot(1)
    assert all(g < 0x10000 for level in range(1, 5) for g in d._rmaps[level])
    assert rec.log and _access(d, 0, "read").ok
    t = _access(d, (0x40000 + 5) << 12, "read")
    assert not t.ok, "L1 RAM that L0 deleted still translates"
    d.check()


def test_aliases_of_a_clean_and_a_dirty_l1_leaf_get_different_direct_pages():
    """The access L1 grants is part of a direct page's role, the write access of a
    clean L1 leaf removed (FNAME(protect_clean_gpte)): a page built below a dirty alias
    must not serve the clean one, or L2 could write through it without L1's leaf ever
    becoming dirty."""
    d, _ = _shadow()
    d.add_slot(L2Slot(0, 0, 512, 0x1000))
    d.add_slot(L2Slot(3, 0xc0000, 512, 0x1000))
    _log(d)                                  # L0 logs: 4 KiB leaves in direct pages
    assert _access(d, (0xc0000 + 7) << 12, "write").level == 1
    assert _access(d, 7 << 12, "read").level == 1
    clean, dirty = _leaf(d, 7 << 12), _leaf(d, (0xc0000 + 7) << 12)
    assert clean[0] is not dirty[0]
    assert d.fmt.tdp_is_writable(dirty[2]) and not d.fmt.tdp_is_mmu_writable(clean[2])
    assert pte_list_count(d._rmaps[1][0x1007]) == 2
    d.check()
