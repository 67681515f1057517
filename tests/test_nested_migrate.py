"""L0 migrates L1 while L2 runs under shadow TDP: L0 dirty-logs its memslots of L1's
RAM, which covers its own tables for L1 and every shadow entry mapping those pages
(write protection through the rmaps, eager splitting of shadow huge pages). No page L1
or L2 wrote may be missing from L0's next harvest (a ground truth kept by the driver:
every L2 write translated or emulated, every change to L1's memory), while L1 itself
logs, remaps, zaps and tracks; the shadow's books (rmaps, parent links, protection)
hold after every step."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import sequence_settings
from sw_model.formats import FORMAT_NAMES, get_format
from sw_model.nested import Driver, L2Slot, build, check_tables, make_workload, run_model
from sw_model.nested.workload import ALIAS_SLOTS, EMULATIONS, KERNEL_SLOT, L2_SLOTS, TRACKED

PAGE_SHIFT = 12
CONFIGS = [(name, ad) for name in FORMAT_NAMES for ad in get_format(name).ad_modes]
IDS = [f"{name}-{ad}" for name, ad in CONFIGS]


@pytest.mark.parametrize("fmt", ["ept4", "npt4", "sv39x4"])
@pytest.mark.parametrize("eager_split", [True, False])
def test_migration_workload_loses_no_dirty_page(fmt, eager_split):
    d = build("shadow", fmt)
    drv = run_model(d, make_workload(5, migrate=True, eager_split=eager_split))
    s = drv.summary()
    assert s["l0_harvests"] >= 16 and s["l0_dirty_written"] > 50 and s["l0_dirty_lost"] == 0
    assert s["harvests"] > 0 and s["dirty_lost"] == 0 and s["emulations"] > 0
    assert (s.get("split", 0) > 0) == eager_split
    assert s["unsync"] > 0 and s["resyncs"] > 0


def test_huge_pages_come_back_after_migration():
    d = build("shadow", "sv48x4")
    drv = run_model(d, make_workload(2, migrate=True))
    for g in range(0, ALIAS_SLOTS[0].npages, 512):
        drv.walk((ALIAS_SLOTS[0].base_gfn + g) << PAGE_SHIFT, "read")
    assert any(level == 2 for _, level, _ in d.leaves())
    assert d.costs.counts["l0_collapsed"] > 0


def _op(data):
    """One random step of a nested workload with L0 migrating L1."""
    kind = data.draw(st.sampled_from(
        ["access"] * 6 + ["emulate", "zap", "zap_all", "age", "flush", "remap", "l1_log",
                          "harvest", "track", "l0_log", "l0_harvest", "l0_harvest"]))
    if kind == "access":
        slot = data.draw(st.sampled_from(L2_SLOTS + ALIAS_SLOTS))
        pages = data.draw(st.lists(st.integers(0, slot.npages - 1), min_size=1, max_size=8))
        access = data.draw(st.sampled_from(["read", "write", "write", "execute"]))
        return ("access", [((slot.base_gfn + p) << PAGE_SHIFT, access) for p in pages])
    if kind == "emulate":
        return ("emulate", [data.draw(st.sampled_from(EMULATIONS))])
    if kind == "zap":
        start = data.draw(st.integers(0, 1023))
        return ("zap", start, start + data.draw(st.sampled_from([1, 8, 512])))
    if kind == "remap":
        return ("remap", data.draw(st.sampled_from([0x3000, 0x3400, 0x11000])),
                data.draw(st.booleans()))
    if kind == "age":
        return ("age", 0, L2_SLOTS[0].npages)
    if kind in ("l1_log", "track"):
        return (kind, data.draw(st.booleans()))
    if kind in ("l0_log", "l0_harvest"):
        return (kind, data.draw(st.sampled_from([0, 1])), data.draw(st.booleans()))
    return (kind,)


def run_sequence(fmt, ad, data):
    d = build("shadow", fmt, ad=ad, max_shadow_pages=data.draw(st.sampled_from([24, 2621])),
              split_desc_capacity=data.draw(st.sampled_from([0, 8, 1026])))
    drv = Driver(d)
    for slot in L2_SLOTS + ALIAS_SLOTS + [KERNEL_SLOT]:
        drv.apply(("slot", slot))
    l0_logged, l1_logged, tracked = set(), False, False
    for _ in range(data.draw(st.integers(10, 30), label="steps")):
        op = _op(data)
        kind = op[0]
        if kind == "remap":
            drv.apply(("delete", 2))
            drv.apply(("slot", L2Slot(2, L2_SLOTS[2].base_gfn, 128, op[1], op[2])))
        elif kind == "l1_log" and op[1] != l1_logged:
            drv.apply(("log", op[1]))
            l1_logged = op[1]
        elif kind == "harvest" and l1_logged:
            drv.apply(("harvest",))
        elif kind == "track" and op[1] != tracked:
            drv.apply(("track", *TRACKED, op[1]))
            tracked = op[1]
        elif kind == "l0_log":
            slot_id, eager = op[1], op[2]
            enable = slot_id not in l0_logged
            drv.apply(("l0_log", slot_id, enable, eager))
            l0_logged ^= {slot_id}
        elif kind == "l0_harvest" and op[1] in l0_logged:
            drv.apply(("l0_harvest", op[1]))
        elif kind in ("access", "emulate", "zap", "zap_all", "age", "flush"):
            for gpa, access in drv.apply(op):
                drv.walk(gpa, access)
        check_tables(d, drv.may_be_stale)
    for slot_id in sorted(l0_logged):
        drv.apply(("l0_harvest", slot_id))
    assert drv.stats["l0_dirty_lost"] == 0 and drv.stats["dirty_lost"] == 0


@pytest.mark.parametrize("fmt, ad", CONFIGS, ids=IDS)
@sequence_settings(3)
@given(data=st.data())
def test_random_nested_workloads_with_l0_logging(fmt, ad, data):
    run_sequence(fmt, ad, data)


@pytest.mark.slow
@pytest.mark.parametrize("fmt, ad", CONFIGS, ids=IDS)
@sequence_settings(30)
@given(data=st.data())
def test_random_nested_workloads_with_l0_logging_long(fmt, ad, data):
    run_sequence(fmt, ad, data)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_migration_workload_many_seeds(fmt):
    for seed in range(3):
        ad = get_format(fmt).ad_modes[seed % len(get_format(fmt).ad_modes)]
        drv = run_model(build("shadow", fmt, ad=ad),
                        make_workload(seed, scale=2, migrate=True, eager_split=seed % 2 == 0))
        assert drv.stats["l0_dirty_lost"] == 0 and drv.stats["dirty_lost"] == 0
