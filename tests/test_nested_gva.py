"""L0's instruction emulation for an L2: the stage-1 formats (x86-64 paging, Sv48)
against entries encoded by hand from the manuals, and ``gva_to_gpa`` reading L2's own
tables through L1's mapping (both designs), checked against the reference walker on a
hand-built image; write tracking of L2 pages by L1 (KPOP's ``page_track`` hypercall,
and L1's own tracking under shadow TDP)."""

import pytest

from conftest import (EC_ID, EC_P, EC_RSV, EC_U, EC_W, GS_A, GS_D, gs_leaf, gs_table,
                      npt_leaf, npt_table)
from sw_model.formats import FormatError
from sw_model.formats.stage1 import get_stage1_format, stage1_format_for
from sw_model.memory import HostMemory
from sw_model.nested import (HYPERCALLS, Driver, L2Slot, Stage2Fault, build, gva_to_gpa,
                             write_l2_memory)
from sw_model.nested.workload import EMULATIONS, KERNEL_SLOT, L2_SLOTS
from sw_model.walker import translate

KERNEL_HALF = (1 << 64) - (1 << 47)


def _x86_tables(leaf, *, level=1, gva=0x400000):
    """A 4-level x86-64 walk to ``leaf`` written by hand; the root at 0x1000."""
    mem = HostMemory(64 << 12)
    table = 0x1000
    for lvl in range(4, level, -1):
        index = (gva >> (12 + 9 * (lvl - 1))) & 511
        nxt = 0x1000 * (6 - lvl)
        mem.write64(table + 8 * index, npt_table(nxt | 0x10000))
        table = nxt | 0x10000
    mem.write64(table + 8 * ((gva >> (12 + 9 * (level - 1))) & 511), leaf)
    return mem


def _x86(mem, gva, access, **opts):
    fmt = get_stage1_format("x86_64")
    return translate(mem, fmt, 0x1000, gva, access, vm=fmt.vm_options(**opts))


@pytest.mark.parametrize("leaf,access,opts,code", [
    (npt_leaf(0x5000, 1, us=False), "read", {"user": True}, EC_P | EC_U),
    (npt_leaf(0x5000, 1, rw=False), "write", {"user": True}, EC_P | EC_W | EC_U),
    (npt_leaf(0x5000, 1, rw=False), "write", {}, EC_P | EC_W),          # CR0.WP=1
    (npt_leaf(0x5000, 1, nx=True), "execute", {"user": True}, EC_P | EC_U | EC_ID),
    (0, "read", {"user": True}, EC_U),                                   # not present
    (npt_leaf(0x5000, 1) | 1 << 51, "read", {}, EC_P | EC_RSV),          # reserved bit
])
def test_x86_paging_page_faults(leaf, access, opts, code):
    """SDM Vol. 3A §4.6 (access rights) and §4.7 (#PF error code); CR2 = the address."""
    t = _x86(_x86_tables(leaf), 0x400123, access, **opts)
    assert not t.ok and t.report == {"exception": "pf", "error_code": code, "cr2": 0x400123}


def test_x86_paging_translations_and_ad_bits():
    mem = _x86_tables(npt_leaf(0x5000, 1, rw=False))
    assert _x86(mem, 0x400123, "write", wp=False).hpa == 0x5123   # CR0.WP=0: allowed
    mem = _x86_tables(npt_leaf(0x200000, 2), level=2)
    t = _x86(mem, 0x4abcde, "write", user=True)
    assert t.ok and t.level == 2 and t.hpa == 0x200000 + 0xabcde
    assert [new & 0x60 for _, _, new in t.ad_writes][-1] == 0x60   # A and D in the leaf
    assert _x86(mem, 1 << 47, "read").report == {"exception": "gp", "error_code": 0}
    assert _x86(_x86_tables(npt_leaf(0x5000, 1, us=False), gva=KERNEL_HALF),
                KERNEL_HALF + 8, "read").hpa == 0x5008                # canonical high half


def _sv48(leaf, gva, access, **opts):
    fmt = get_stage1_format("sv48")
    mem = HostMemory(64 << 12)
    table = 0x1000
    for lvl in range(4, 1, -1):
        nxt = 0x1000 * (6 - lvl) | 0x10000
        mem.write64(table + 8 * ((gva >> (12 + 9 * (lvl - 1))) & 511), gs_table(nxt))
        table = nxt
    mem.write64(table + 8 * ((gva >> 12) & 511), leaf)
    return translate(mem, fmt, 0x1000, gva, access, vm=fmt.vm_options(**opts))


@pytest.mark.parametrize("leaf,access,opts,ok", [
    (gs_leaf(0x5000, u=False, a=True, d=True), "read", {"user": True}, False),
    (gs_leaf(0x5000, a=True, d=True), "read", {}, False),               # S-mode, no SUM
    (gs_leaf(0x5000, a=True, d=True), "write", {"sum": True}, True),
    (gs_leaf(0x5000, a=True, d=True), "execute", {"sum": True}, False),  # never from S
    (gs_leaf(0x5000, "r", a=True), "write", {"user": True}, False),
    (gs_leaf(0x5000, "rwx"), "read", {"user": True, "ad": "fault"}, False),   # Svade
    (gs_leaf(0x5000, "rwx"), "read", {"user": True}, True),             # Svadu sets A
])
def test_sv48_rules(leaf, access, opts, ok):
    """Privileged spec, "Virtual Address Translation Process" steps 5 and 7; a page
    fault is cause 12, 13 or 15 with stval = the address."""
    t = _sv48(leaf, 0x400123, access, **opts)
    assert t.ok == ok
    if not ok:
        cause = {"execute": 12, "read": 13, "write": 15}[access]
        assert t.report == {"cause": cause, "stval": 0x400123}
    else:
        assert t.hpa == 0x5123 and (t.ad_writes or leaf & GS_A)


def test_sv48_non_canonical_is_a_page_fault():
    t = _sv48(gs_leaf(0x5000, a=True, d=True), 0x400000, "read", user=True)
    assert t.ok
    fmt = get_stage1_format("sv48")
    t = translate(HostMemory(8 << 12), fmt, 0, 1 << 47, "write", vm=fmt.vm_options())
    assert not t.ok and t.report == {"cause": 15, "stval": 1 << 47}
    assert GS_D and stage1_format_for("gstage") is fmt
    assert stage1_format_for("ept").name == stage1_format_for("npt").name == "x86_64"
    with pytest.raises(FormatError, match="unknown stage-1"):
        get_stage1_format("sv39")
    with pytest.raises(FormatError, match="user"):
        fmt.vm_options(user=1)


@pytest.mark.parametrize("fmt", ["ept4", "npt5", "sv48x4"])
@pytest.mark.parametrize("design", ["shadow", "kpop"])
def test_gva_to_gpa_walks_l2_tables_through_l1_mapping(design, fmt):
    """Before L2 ever touched its page tables, L1 maps none of them: each table read
    is a stage-2 fault L0 reflects to L1. Every answer equals the reference walker's
    on the image of the tables, faults included; the stage-1 A/D updates are L0's
    writes to L2 memory (logged by L1 while it logs)."""
    d = build(design, fmt)
    d.add_slot(L2_SLOTS[0])
    d.add_slot(KERNEL_SLOT)
    kernel = d.l2_kernel
    reflected = d.costs.counts["reflected"]
    for name, access, user in EMULATIONS:
        gva = kernel.mappings[name]
        got = gva_to_gpa(d, kernel, gva, access, user=user)
        want = kernel.expected(gva, access, user=user)
        assert got.ok == want.ok, (name, got.to_json(), want.to_json())
        if got.ok:
            assert got.hpa == want.hpa
        else:
            assert (got.kind, got.report) == (want.kind, want.report)
    assert d.costs.counts["reflected"] > reflected
    assert kernel.ram.words.any() and (kernel.ram.words != kernel.image.words).any()
    d.dirty_logging(0, True)
    got = gva_to_gpa(d, kernel, kernel.mappings["user"], "write", user=True)
    assert write_l2_memory(d, got.hpa).l1_gfn == 0x1000 + 16
    assert d.get_dirty(0) == {16}
    check = d.check()
    assert check is not None


def test_gva_to_gpa_stops_on_a_table_l1_maps_nowhere():
    d = build("kpop", "ept4")
    d.add_slot(L2Slot(0, 0, 1024, 0x1000))          # no kernel slot: tables are MMIO
    with pytest.raises(Stage2Fault, match="not mapped by L1"):
        gva_to_gpa(d, d.l2_kernel, 0x400000, "read", user=True)


def _loop(d, gpa, access):
    return Driver(d).walk(gpa, access)


@pytest.mark.parametrize("design", ["shadow", "kpop"])
def test_write_tracking_of_l2_pages(design):
    """L1 write-tracks L2 pages (KPOP: the page_track hypercall; shadow TDP: its own
    TDP core's tracking): reads translate, writes exit and are emulated (KPOP: L0
    reports each to L1), a write next to them maps 4 KiB; removing the tracking lets
    the next write map the page writable."""
    d = build(design, "ept4")
    d.add_slot(L2_SLOTS[0])
    assert _loop(d, 0x28000, "write").level == 2
    d.write_track(40, 48, True)
    assert _loop(d, 0x28000, "read").ok
    assert not _loop(d, 0x29008, "write").ok
    assert _loop(d, 0x30000, "read").level == 2          # write-protected, still huge
    assert _loop(d, 0x30000, "write").level == 1         # a write maps 4 KiB around them
    assert _loop(d, 0x50000, "write").ok
    if design == "kpop":
        assert d.l1.tracked_writes == [0x29008]
        assert d.costs.counts["tracked_writes"] == 1 and d.costs.counts["hc_page_track"] == 1
        with pytest.raises(ValueError, match="op must be add or remove"):
            d.l1.call("page_track", "toggle", 40, 1)
        assert "page_track" in HYPERCALLS
    d.write_track(40, 48, False)
    assert _loop(d, 0x29008, "write").ok
    d.check()
