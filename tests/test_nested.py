"""Nested virtualization (sw_model.nested): shadow TDP and KPOP on the same L2 workload,
with the reference walker as the hardware. Every translation must be the composition
of L1's and L0's mappings, every leaf of the L0-built tables too, and no page L2 wrote
while logged may be missing from L1's next harvest."""

import random

import pytest

from sw_model.formats import get_format
from sw_model.memory import HostMemory
from sw_model.nested import (DESIGNS, HYPERCALLS, Driver, L0Host, L2Slot, build,
                             check_tables, make_workload, run_model)
from sw_model.nested.kpop import KpopHost, KpopNested
from sw_model.nested.workload import L0_SLOTS, L2_SLOTS
from sw_model.tdp import FlushRecorder
from sw_model.walker import translate

FAST = [("ept4", "off"), ("npt4", "hardware"), ("sv39x4", "fault")]


def _l2_access(design, gpa, access):
    """An L2 access, the reference walker as the hardware; the final answer."""
    return Driver(design).walk(gpa, access)


@pytest.mark.parametrize("fmt,ad", FAST)
@pytest.mark.parametrize("design", DESIGNS)
def test_workload_matches_composition(design, fmt, ad):
    seed = 8
    try:
        drv = run_model(build(design, fmt, ad=ad), make_workload(seed))
    except AssertionError as e:
        raise AssertionError(f"{design} {fmt} ad={ad} seed {seed}: {e}") from e
    s = drv.summary()
    assert s["translations"] > 300 and s["emulated"] > 0, f"seed {seed}: {s}"
    assert s["harvests"] >= 5 and s["dirty_written"] > 0 and s["dirty_lost"] == 0, s
    assert s["young"] > 0, s
    assert s["tlb_flushes"] > 0 and s["table_pages_peak"] > 0
    if design == "shadow":
        assert s["wp_exits"] > 0 and s["invept_exits"] > 0 and s["hypercalls"] == 0
    else:
        assert s["hypercalls"] > 0 and s["wp_exits"] == s["invept_exits"] == 0


def test_kpop_has_fewer_exits_and_flushes_than_shadow():
    costs = {name: run_model(build(name, "ept4"), make_workload(3)).summary()
             for name in DESIGNS}
    assert costs["kpop"]["exits"] < costs["shadow"]["exits"]
    assert costs["kpop"]["tlb_flushes"] < costs["shadow"]["tlb_flushes"]
    assert costs["kpop"]["l1_table_pages"] == 0 < costs["shadow"]["l1_table_pages"]


def _shadow(fmt="ept4", ad=None):
    rec = FlushRecorder()
    return build("shadow", fmt, ad=ad, sink=rec), rec


def test_shadow_write_protects_l1_tables_and_zaps_on_write():
    d, rec = _shadow()
    d.add_slot(L2_SLOTS[0])
    t = _l2_access(d, 0x5000, "write")
    assert t.ok and t.hpa == 4 * 2**30 + (0x1000 << 12) + 0x5000
    assert d.costs.counts["reflected"] == 1
    protected = set(d._page_sp)         # L1 tables from the root down to its 2M leaf
    assert len(protected) == d.fmt.levels - 1
    assert all(d.l0.max_level(g) == 1 for g in protected), "not write-tracked in L0"
    assert d.l0.max_level(0x1000) == 2
    exits = d.costs.counts["wp_exits"]
    rec.clear()
    d.zap(0, 1024)                       # L1 zaps its leaf: one exit, shadow leaf gone
    assert d.costs.counts["wp_exits"] == exits + 1
    assert d.costs.counts["invept_exits"] == 1 and ("all",) in rec.log
    assert not d.leaves()
    assert d.composed(0x5000, "read") is None
    check_tables(d)


def test_shadow_write_flooding_unprotects_an_upper_level_page():
    """L1 zaps 2 MiB leaves one by one in a write-tracked level-2 table: each write
    exits until the third in a row without a fault using the page, which goes."""
    d, _ = _shadow()
    d.add_slot(L2Slot(0, 0, 4096, 0x1000))
    for g in range(0, 4096, 512):
        _l2_access(d, g << 12, "read")
    level2 = [sp for sp in d._sps.values() if sp.level == 2]
    assert len(level2) == 1
    before = d.costs.counts["wp_exits"]
    for g in range(0, 4096, 512):        # one L1 operation per 2 MiB leaf
        d.zap(g, g + 512)
    assert d.costs.counts["wp_exits"] - before == d.flood_limit
    assert not [sp for sp in d._sps.values() if sp.level == 2], "flooded page still shadowed"
    assert not d.l0.vm.is_write_tracked(level2[0].l1_table >> 12)
    check_tables(d)


def test_shadow_direct_pages_under_l1_huge_page():
    """L1 maps 2 MiB, L0 backs that L1 memory with a misaligned slot: 4 KiB shadow
    leaves in a direct shadow page."""
    d, _ = _shadow()
    d.add_slot(L2_SLOTS[1])
    t = _l2_access(d, (0x40000 + 3) << 12, "read")
    assert t.ok and t.level == 1
    l1 = translate(d.l1.mem, d.fmt, d.l1.vm.root_for(0), (0x40000 + 3) << 12, "read",
                   vm=d.opts)
    assert l1.level == 2
    assert any(sp.l1_table is None for sp in d._sps.values())
    check_tables(d)


def _kpop(fmt="ept4"):
    memory = HostMemory(4 << 20)
    rec = FlushRecorder()
    host = KpopHost(L0Host(fmt, memory, L0_SLOTS), memory, sink_for=lambda key: rec)
    return KpopNested(host), host, rec, memory


def test_kpop_hypercalls_map_unmap_zap():
    d, host, rec, _ = _kpop()
    d.add_slot(L2_SLOTS[0])
    t = _l2_access(d, 0x3000, "write")
    assert t.ok and t.level == 2 and t.hpa == 4 * 2**30 + (0x1000 << 12) + 0x3000
    assert host.costs.counts["hc_map"] == 1 and d.l1.xarray == {0: (512, 0x1000, True)}
    with pytest.raises(ValueError, match="overlap"):
        d.l1.call("map", 0x100, 0x2000, 1, True)
    # zap keeps the mapping: the refault is handled by L0 alone
    d.zap(0, 1024)
    reflected = host.costs.counts["reflected"]
    assert _l2_access(d, 0x3000, "read").ok
    assert host.costs.counts["reflected"] == reflected
    # unmap removes it: the next access goes to L1 again
    rec.clear()
    d.delete_slot(0)
    assert host.costs.counts["hc_unmap"] == 1 and rec.log and not d.l1.xarray
    assert _l2_access(d, 0x3000, "read").kind == "not_present"
    with pytest.raises(ValueError, match="unknown"):
        host.hypercall("flush_everything", "l2", 0)
    assert set(HYPERCALLS) >= {"map", "unmap", "mmu_load_unload", "age", "dirty_log"}


def test_kpop_guest_mmus_are_refcounted_per_holder_and_as_id():
    d, host, _, memory = _kpop()
    free = memory.free_pages
    root = host.hypercall("mmu_load_unload", "l2", 0, True)      # a second vCPU
    assert root == d.root_for(0) and host.mmus[("l2", 0)].refcount == 2
    other = host.hypercall("mmu_load_unload", "l2", 1, True)     # another address space
    assert other != root and len(host.mmus) == 2
    d.add_slot(L2_SLOTS[0])
    _l2_access(d, 0x3000, "read")
    host.hypercall("mmu_load_unload", "l2", 1, False)
    host.hypercall("mmu_load_unload", "l2", 0, False)
    assert ("l2", 0) in host.mmus and ("l2", 1) not in host.mmus
    host.hypercall("mmu_load_unload", "l2", 0, False)
    assert not host.mmus and memory.free_pages == free + 1      # d's own root freed too
    with pytest.raises(ValueError, match="no reference"):
        host.hypercall("mmu_load_unload", "l2", 0, False)


def test_kpop_dirty_log_keeps_pages_of_unmapped_and_zapped_mappings():
    d, host, _, _ = _kpop()
    d.add_slot(L2_SLOTS[0])
    d.dirty_logging(0, True)
    for g in (1, 600, 700):
        assert _l2_access(d, g << 12, "write").ok
    d.zap_all()                          # every mapping goes; the dirty pages stay
    assert d.get_dirty(0) == {1, 600, 700}
    assert d.get_dirty(0) == set()
    assert _l2_access(d, 5 << 12, "write").ok      # a new MAP inside the logged range
    d.age(0, 1024)
    assert not d.test_age(0, 1024)
    assert d.get_dirty(0) == {5}
    d.dirty_logging(0, False)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["ept4", "ept5", "npt4", "npt5", "sv39x4", "sv48x4", "sv57x4"])
@pytest.mark.parametrize("design", DESIGNS)
def test_workload_many_seeds(design, fmt):
    rng = random.Random(fmt)
    modes = get_format(fmt).ad_modes
    for _ in range(6):
        seed = rng.randrange(1 << 30)
        ad = modes[seed % len(modes)]
        try:
            drv = run_model(build(design, fmt, ad=ad), make_workload(seed, scale=3))
        except AssertionError as e:
            raise AssertionError(f"{design} {fmt} ad={ad} seed {seed}: {e}") from e
        assert drv.stats["dirty_lost"] == 0


def test_cosim_scenario_is_registered():
    from cocotb_tests.scenarios import SCENARIOS
    from cocotb_tests.scenario_nested import nested
    assert SCENARIOS["nested"] is nested
