"""Intel EPT (ept4, ept5) checked against the SDM with entries encoded by hand.

Every word walked here is built from the bit layout of SDM Vol. 3C §29.3.2 (Tables 29-1
to 29-7) by the helpers in conftest.py, never by ``make_leaf``/``make_table``; those two
are checked separately against the same hand encoding. Expected results come from
§29.3.3.1 (EPT misconfigurations), §29.3.3.2 (EPT violations), Table 28-7 (exit
qualification), "Accessed and Dirty Flags for EPT" and "EPT and Memory Typing".
"""

import pytest

from conftest import (ACCESSES, EPT_A, EPT_D, EPT_IPAT, EPT_MT_UC, EPT_MT_WB, EPT_MT_WC,
                      EPT_MT_WP, EPT_MT_WT, EPT_PS, GEOMETRY, Q_ACCESS, Q_EXECUTABLE,
                      Q_FETCH, Q_READ, Q_READABLE, Q_WRITABLE, Q_WRITE, RacingMemory, Walk,
                      assert_fault, assert_translation, ept_leaf, ept_table, page_shift,
                      spread_gpa)
from sw_model.formats import FormatError, get_format
from sw_model.walker import WalkRestartLimit

EPT = ("ept4", "ept5")
LEAF_LEVELS = (1, 2, 3)
#: One frame per page size, naturally aligned, below a 36-bit MAXPHYADDR.
FRAME = {1: 0x8_1234_5000, 2: 0x8_4560_0000, 3: 0x8_c000_0000}
MISCONFIG = {"exit": "ept_misconfig"}


def violation(qual):
    return {"exit": "ept_violation", "qualification": qual}


def expected_hpa(level, gpa):
    return FRAME[level] | gpa & ((1 << page_shift(level)) - 1)


def pointer_with(level_words):
    """A ``pointer`` callback for Walk.build: ``level_words[level](addr)`` at those levels."""
    return lambda level, addr: level_words.get(level, ept_table)(addr)


# -- geometry (§29.3.2) ---------------------------------------------------------------------


@pytest.mark.parametrize("name", EPT)
def test_geometry(name):
    levels, _, gpa_bits = GEOMETRY[name]
    fmt = get_format(name)
    assert (fmt.arch, fmt.levels, fmt.root_level, fmt.gpa_bits) == ("ept", levels, levels, gpa_bits)
    assert fmt.root_table_bytes == 4096
    assert all(fmt.table_entries(level) == 512 for level in range(1, levels + 1))
    assert fmt.leaf_levels == frozenset(LEAF_LEVELS)    # 4K, 2M (PDE), 1G (PDPTE)
    assert [fmt.page_size(level) for level in (1, 2, 3)] == [4096, 2 << 20, 1 << 30]
    assert fmt.ad_modes[0] == "hardware" and set(fmt.ad_modes) == {"hardware", "off"}


@pytest.mark.parametrize("name", EPT)
def test_root_must_be_aligned_and_inside_the_physical_address_width(name):
    fmt = get_format(name)
    vm = fmt.vm_options(pa_bits=39)
    fmt.check_root(0x7f_ffff_f000, vm)
    with pytest.raises(FormatError, match="aligned"):
        fmt.check_root(0x1800, vm)
    with pytest.raises(FormatError, match="39-bit"):
        fmt.check_root(1 << 39, vm)


# -- translations ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", EPT)
@pytest.mark.parametrize("level", LEAF_LEVELS)
@pytest.mark.parametrize("access", ACCESSES)
def test_leaf_at_every_allowed_level(name, level, access):
    w = Walk(name, ad="off")
    gpa = spread_gpa(name)
    addrs = w.build(gpa, level, ept_leaf(FRAME[level], level, mt=EPT_MT_WT))
    r = w.translate(gpa, access)
    assert_translation(r, hpa=expected_hpa(level, gpa), level=level, pte_addrs=addrs,
                       memtype=EPT_MT_WT, perms={"r": True, "w": True, "x": True})
    assert r.ad_writes == () and r.restarts == 0


@pytest.mark.parametrize("name", EPT)
@pytest.mark.parametrize("level", LEAF_LEVELS)
@pytest.mark.parametrize("mt", [EPT_MT_UC, EPT_MT_WC, EPT_MT_WT, EPT_MT_WP, EPT_MT_WB])
def test_every_defined_memory_type_is_reported(name, level, mt):
    # §29.3.7.2: bits 5:3 of the leaf give the memory type; 0, 1, 4, 5, 6 are defined.
    w = Walk(name, ad="off")
    gpa = spread_gpa(name)
    w.build(gpa, level, ept_leaf(FRAME[level], level, mt=mt, extra=EPT_IPAT))
    r = w.translate(gpa, "read")
    assert r.ok and r.memtype == mt


@pytest.mark.parametrize("name", EPT)
def test_offset_within_large_pages_comes_from_the_gpa(name):
    w = Walk(name, ad="off")
    gpa = spread_gpa(name) | 0x3ff_f123       # all of bits 29:0 are offset in a 1G page
    w.build(gpa, 3, ept_leaf(FRAME[3], 3))
    assert w.translate(gpa, "read").hpa == FRAME[3] | gpa & 0x3fff_ffff


@pytest.mark.parametrize("name", EPT)
@pytest.mark.parametrize("bit", [7, 10, 11] + list(range(52, 64)))
def test_ignored_bits_of_a_pte_do_not_fault(name, bit):
    # EPT PTE format table: bit 7 is ignored, bit 10 only matters with mode-based
    # execute control, 11 and 63:52 are ignored (63 only matters with EPT-violation #VE).
    w = Walk(name, ad="off")
    gpa = spread_gpa(name)
    w.build(gpa, 1, ept_leaf(FRAME[1], 1, extra=1 << bit))
    r = w.translate(gpa, "write")
    assert r.ok and r.hpa == expected_hpa(1, gpa)


@pytest.mark.parametrize("name", EPT)
@pytest.mark.parametrize("bit", [8, 9, 10, 11] + list(range(52, 64)))
def test_ignored_bits_of_non_leaf_entries_do_not_fault(name, bit):
    # EPT PML5E/PML4E and non-leaf PDPTE/PDE formats: bits 9, 11 and 63:52 are ignored,
    # bit 8 is the accessed flag (ignored with A/D off), bit 10 needs MBEC.
    w = Walk(name, ad="off")
    gpa = spread_gpa(name)
    w.build(gpa, 1, ept_leaf(FRAME[1], 1),
            pointer=lambda level, addr: ept_table(addr, extra=1 << bit))
    assert w.translate(gpa, "read").ok


# -- not present (§29.3.2: bits 2:0 all zero) ---------------------------------------------


@pytest.mark.parametrize("name", EPT)
@pytest.mark.parametrize("access", ACCESSES)
def test_not_present_at_every_level(name, access):
    levels = GEOMETRY[name][0]
    for level in range(levels, 0, -1):
        w = Walk(name)
        gpa = spread_gpa(name)
        # "If bits 2:0 are all 0, the entry is not present; the processor ignores 63:3."
        addrs = w.build(gpa, level, 0xffff_ffff_ffff_fff8)
        r = w.translate(gpa, access)
        # Table 28-7: bits 5:3 are the AND over the entries used, the not-present one
        # (R=W=X=0) included, so only the access bit is set.
        assert_fault(r, kind="not_present", level=level, pte_addr=addrs[-1],
                     report=violation(Q_ACCESS[access]))
        assert list(r.pte_addrs) == addrs
        assert w.words(addrs[:-1]) == [ept_table(w._child[a]) for a in addrs[:-1]]


# -- misconfigurations (§29.3.3.1) ----------------------------------------------------------


@pytest.mark.parametrize("name", EPT)
@pytest.mark.parametrize("pa_bits", [36, 39, 46, 48, 51])
def test_bits_51_to_maxphyaddr_are_reserved_in_every_entry(name, pa_bits):
    levels = GEOMETRY[name][0]
    for bit in sorted({pa_bits, (pa_bits + 51) // 2, 51}):
        # Non-leaf entries at every level.
        for level in range(levels, 1, -1):
            w = Walk(name, pa_bits=pa_bits)
            gpa = spread_gpa(name)
            addrs = w.build(gpa, 1, ept_leaf(FRAME[1], 1), pointer=pointer_with(
                {level: lambda addr: ept_table(addr, extra=1 << bit)}))
            assert_fault(w.translate(gpa, "read"), kind="reserved", level=level,
                         pte_addr=addrs[levels - level], report=MISCONFIG)
        # Leaves at every leaf level.
        for level in LEAF_LEVELS:
            w = Walk(name, pa_bits=pa_bits)
            gpa = spread_gpa(name)
            addrs = w.build(gpa, level, ept_leaf(FRAME[level], level, extra=1 << bit))
            assert_fault(w.translate(gpa, "read"), kind="reserved", level=level,
                         pte_addr=addrs[-1], report=MISCONFIG)


@pytest.mark.parametrize("name", EPT)
@pytest.mark.parametrize("pa_bits", [36, 39, 46, 52])
@pytest.mark.parametrize("level", LEAF_LEVELS)
def test_the_top_address_bit_below_maxphyaddr_is_an_address_bit(name, pa_bits, level):
    w = Walk(name, pa_bits=pa_bits)
    gpa = spread_gpa(name)
    frame = 1 << (pa_bits - 1) | FRAME[level]
    w.build(gpa, level, ept_leaf(frame, level))
    r = w.translate(gpa, "read")
    assert r.ok and r.hpa == frame | gpa & ((1 << page_shift(level)) - 1)


@pytest.mark.parametrize("name", EPT)
@pytest.mark.parametrize("bit", [3, 4, 5, 6, 7])
def test_bits_7_to_3_of_pml4e_and_pml5e_are_reserved(name, bit):
    # EPT PML4E and PML5E format tables: bits 7:3 reserved, so in
    # particular bit 7 (a "page size" at the top) is a misconfiguration.
    levels = GEOMETRY[name][0]
    for level in range(levels, 3, -1):
        w = Walk(name)
        gpa = spread_gpa(name)
        addrs = w.build(gpa, 1, ept_leaf(FRAME[1], 1), pointer=pointer_with(
            {level: lambda addr: ept_table(addr, extra=1 << bit)}))
        assert_fault(w.translate(gpa, "execute"), kind="reserved", level=level,
                     pte_addr=addrs[levels - level], report=MISCONFIG)


@pytest.mark.parametrize("name", EPT)
@pytest.mark.parametrize("level", [3, 2])
@pytest.mark.parametrize("bit", [3, 4, 5, 6])
def test_bits_6_to_3_of_a_non_leaf_pdpte_or_pde_are_reserved(name, level, bit):
    # EPT PDPTE/PDE referencing a table: bits 7:3 reserved (bit 7 = 0 selects a table).
    levels = GEOMETRY[name][0]
    w = Walk(name)
    gpa = spread_gpa(name)
    addrs = w.build(gpa, 1, ept_leaf(FRAME[1], 1), pointer=pointer_with(
        {level: lambda addr: ept_table(addr, extra=1 << bit)}))
    assert_fault(w.translate(gpa, "read"), kind="reserved", level=level,
                 pte_addr=addrs[levels - level], report=MISCONFIG)


@pytest.mark.parametrize("name", EPT)
@pytest.mark.parametrize("level,bits", [(3, range(12, 30)), (2, range(12, 21))])
def test_low_address_bits_of_large_pages_are_reserved(name, level, bits):
    # EPT PDPTE mapping a 1-GByte page: bits 29:12 reserved; PDE mapping 2 MBytes: 20:12.
    for bit in bits:
        w = Walk(name)
        gpa = spread_gpa(name)
        addrs = w.build(gpa, level, ept_leaf(FRAME[level], level, extra=1 << bit))
        assert_fault(w.translate(gpa, "read"), kind="reserved", level=level,
                     pte_addr=addrs[-1], report=MISCONFIG)


@pytest.mark.parametrize("name", EPT)
@pytest.mark.parametrize("level", LEAF_LEVELS)
@pytest.mark.parametrize("mt", [2, 3, 7])
@pytest.mark.parametrize("access", ACCESSES)
def test_reserved_memory_types_on_a_leaf(name, level, mt, access):
    w = Walk(name)
    gpa = spread_gpa(name)
    addrs = w.build(gpa, level, ept_leaf(FRAME[level], level, mt=mt))
    assert_fault(w.translate(gpa, access), kind="reserved", level=level,
                 pte_addr=addrs[-1], report=MISCONFIG)


@pytest.mark.parametrize("name", EPT)
@pytest.mark.parametrize("xwr", [0b010, 0b110])
def test_write_without_read_is_a_misconfiguration_at_every_level(name, xwr):
    levels = GEOMETRY[name][0]
    for level in range(levels, 0, -1):
        w = Walk(name)
        gpa = spread_gpa(name)
        if level == 1:
            addrs = w.build(gpa, 1, ept_leaf(FRAME[1], 1, xwr=xwr))
        else:
            addrs = w.build(gpa, 1, ept_leaf(FRAME[1], 1), pointer=pointer_with(
                {level: lambda addr: ept_table(addr, xwr=xwr)}))
        for access in ACCESSES:
            assert_fault(w.translate(gpa, access), kind="reserved", level=level,
                         pte_addr=addrs[levels - level], report=MISCONFIG)


@pytest.mark.parametrize("name", EPT)
@pytest.mark.parametrize("level", LEAF_LEVELS)
def test_write_without_read_on_a_large_leaf(name, level):
    w = Walk(name)
    gpa = spread_gpa(name)
    addrs = w.build(gpa, level, ept_leaf(FRAME[level], level, xwr=0b010))
    assert_fault(w.translate(gpa, "write"), kind="reserved", level=level,
                 pte_addr=addrs[-1], report=MISCONFIG)


@pytest.mark.parametrize("name", EPT)
def test_execute_only_without_the_capability_is_a_misconfiguration(name):
    # §29.3.3.1: bits 2:0 = 100b is a misconfiguration when IA32_VMX_EPT_VPID_CAP bit 0
    # (execute-only translations) is 0.
    levels = GEOMETRY[name][0]
    for level in range(levels, 0, -1):
        w = Walk(name, exec_only=False)
        gpa = spread_gpa(name)
        if level == 1:
            addrs = w.build(gpa, 1, ept_leaf(FRAME[1], 1, xwr=0b100))
        else:
            addrs = w.build(gpa, 1, ept_leaf(FRAME[1], 1), pointer=pointer_with(
                {level: lambda addr: ept_table(addr, xwr=0b100)}))
        assert_fault(w.translate(gpa, "execute"), kind="reserved", level=level,
                     pte_addr=addrs[levels - level], report=MISCONFIG)


@pytest.mark.parametrize("name", EPT)
def test_execute_only_with_the_capability_is_a_present_entry(name):
    levels = GEOMETRY[name][0]
    for level in range(levels, 0, -1):
        w = Walk(name, exec_only=True, ad="off")
        gpa = spread_gpa(name)
        if level == 1:
            addrs = w.build(gpa, 1, ept_leaf(FRAME[1], 1, xwr=0b100))
        else:
            addrs = w.build(gpa, 1, ept_leaf(FRAME[1], 1), pointer=pointer_with(
                {level: lambda addr: ept_table(addr, xwr=0b100)}))
        r = w.translate(gpa, "execute")
        assert_translation(r, hpa=expected_hpa(1, gpa), level=1, pte_addrs=addrs,
                           perms={"r": False, "w": False, "x": True})
        assert_fault(w.translate(gpa, "read"), kind="permission", level=1,
                     pte_addr=addrs[-1], report=violation(Q_READ | Q_EXECUTABLE))


@pytest.mark.parametrize("name", EPT)
def test_a_misconfiguration_below_takes_priority_over_a_violation_above(name):
    # §29.3.3: "An EPT violation occurs when there is no EPT misconfiguration": a
    # read-only root does not turn a write to a page with memory type 2 into a violation.
    w = Walk(name)
    gpa = spread_gpa(name)
    levels = GEOMETRY[name][0]
    addrs = w.build(gpa, 1, ept_leaf(FRAME[1], 1, mt=2), pointer=pointer_with(
        {levels: lambda addr: ept_table(addr, xwr=0b001)}))
    assert_fault(w.translate(gpa, "write"), kind="reserved", level=1, pte_addr=addrs[-1],
                 report=MISCONFIG)


# -- violations: permissions are the AND over all levels (§29.3.3.2) -----------------------


DENIALS = [
    # (xwr at one level, access, exit qualification: access bit | AND of R/W/X bits)
    (0b101, "write", Q_WRITE | Q_READABLE | Q_EXECUTABLE),
    (0b011, "execute", Q_FETCH | Q_READABLE | Q_WRITABLE),
    (0b001, "write", Q_WRITE | Q_READABLE),
    (0b001, "execute", Q_FETCH | Q_READABLE),
    (0b100, "read", Q_READ | Q_EXECUTABLE),
    (0b100, "write", Q_WRITE | Q_EXECUTABLE),
    (0b011, "read", None),      # allowed
    (0b101, "execute", None),   # allowed
]


@pytest.mark.parametrize("name", EPT)
@pytest.mark.parametrize("xwr,access,qual", DENIALS)
def test_permissions_are_the_and_over_every_level(name, xwr, access, qual):
    levels = GEOMETRY[name][0]
    for level in range(levels, 0, -1):
        w = Walk(name, exec_only=True)
        gpa = spread_gpa(name)
        if level == 1:
            addrs = w.build(gpa, 1, ept_leaf(FRAME[1], 1, xwr=xwr))
        else:
            addrs = w.build(gpa, 1, ept_leaf(FRAME[1], 1), pointer=pointer_with(
                {level: lambda addr: ept_table(addr, xwr=xwr)}))
        before = w.words(addrs)
        r = w.translate(gpa, access)
        if qual is None:
            assert_translation(r, hpa=expected_hpa(1, gpa), level=1, pte_addrs=addrs,
                               perms={"r": bool(xwr & 1), "w": bool(xwr & 2),
                                      "x": bool(xwr & 4)})
        else:
            # The permission check happens once the walk is complete: the fault is
            # reported at the leaf, and no A/D flag is written (tdpwalk choice).
            assert_fault(r, kind="permission", level=1, pte_addr=addrs[-1],
                         report=violation(qual))
            assert w.words(addrs) == before


@pytest.mark.parametrize("name", EPT)
@pytest.mark.parametrize("level", [2, 3])
def test_permissions_on_large_leaves(name, level):
    w = Walk(name)
    gpa = spread_gpa(name)
    addrs = w.build(gpa, level, ept_leaf(FRAME[level], level, xwr=0b001))
    assert w.translate(gpa, "read").ok
    assert_fault(w.translate(gpa, "write"), kind="permission", level=level,
                 pte_addr=addrs[-1], report=violation(Q_WRITE | Q_READABLE))


# -- accessed and dirty flags ("Accessed and Dirty Flags for EPT") ------------------------


@pytest.mark.parametrize("name", EPT)
@pytest.mark.parametrize("level", LEAF_LEVELS)
@pytest.mark.parametrize("access", ACCESSES)
def test_hardware_ad_sets_a_everywhere_and_d_on_the_leaf_for_writes(name, level, access):
    w = Walk(name, ad="hardware")
    gpa = spread_gpa(name)
    addrs = w.build(gpa, level, ept_leaf(FRAME[level], level))
    before = w.words(addrs)
    r = w.translate(gpa, access)
    expected = [word | EPT_A for word in before]
    if access == "write":
        expected[-1] |= EPT_D
    assert r.ok
    assert list(r.ad_writes) == [(a, old, new) for a, old, new in zip(addrs, before, expected)]
    assert w.words(addrs) == expected
    # A second access finds the flags set and writes nothing.
    assert w.translate(gpa, access).ad_writes == ()


@pytest.mark.parametrize("name", EPT)
def test_hardware_ad_only_writes_entries_that_change(name):
    w = Walk(name, ad="hardware")
    gpa = spread_gpa(name)
    levels = GEOMETRY[name][0]
    addrs = w.build(gpa, 1, ept_leaf(FRAME[1], 1, a=True), pointer=pointer_with(
        {levels: lambda addr: ept_table(addr, extra=EPT_A)}))
    r = w.translate(gpa, "read")
    assert [a for a, _, _ in r.ad_writes] == addrs[1:-1]
    r = w.translate(gpa, "write")
    assert [(a, new ^ old) for a, old, new in r.ad_writes] == [(addrs[-1], EPT_D)]


@pytest.mark.parametrize("name", EPT)
def test_dirty_is_never_set_in_a_non_leaf_entry(name):
    w = Walk(name, ad="hardware")
    gpa = spread_gpa(name)
    addrs = w.build(gpa, 2, ept_leaf(FRAME[2], 2))
    w.translate(gpa, "write")
    assert all(word & EPT_D == 0 for word in w.words(addrs[:-1]))
    assert w.words(addrs)[-1] & (EPT_A | EPT_D) == EPT_A | EPT_D


@pytest.mark.parametrize("name", EPT)
def test_ad_off_writes_nothing(name):
    # Without EPTP bit 6 the processor does not set the flags (bits 8/9 are ignored).
    w = Walk(name, ad="off")
    gpa = spread_gpa(name)
    addrs = w.build(gpa, 1, ept_leaf(FRAME[1], 1))
    before = w.words(addrs)
    r = w.translate(gpa, "write")
    assert r.ok and r.ad_writes == () and w.words(addrs) == before


@pytest.mark.parametrize("name", EPT)
def test_ad_update_false_reports_without_writing(name):
    w = Walk(name, ad="hardware")
    gpa = spread_gpa(name)
    addrs = w.build(gpa, 1, ept_leaf(FRAME[1], 1))
    before = w.words(addrs)
    r = w.translate(gpa, "write", ad_update=False)
    assert [a for a, _, _ in r.ad_writes] == addrs
    assert r.ad_writes[-1][2] == before[-1] | EPT_A | EPT_D
    assert w.words(addrs) == before


@pytest.mark.parametrize("name", EPT)
@pytest.mark.parametrize("kind", ["not_present", "reserved", "permission"])
def test_faults_write_no_ad_flags(name, kind):
    # tdpwalk choice (the SDM allows either): A/D are written only for a successful access.
    w = Walk(name, ad="hardware")
    gpa = spread_gpa(name)
    leaf = {"not_present": 0, "reserved": ept_leaf(FRAME[1], 1, mt=7),
            "permission": ept_leaf(FRAME[1], 1, xwr=0b101)}[kind]
    addrs = w.build(gpa, 1, leaf)
    before = w.words(addrs)
    r = w.translate(gpa, "write")
    assert r.kind == kind and w.words(addrs) == before


@pytest.mark.parametrize("name", EPT)
def test_a_racing_store_makes_the_walk_restart_and_is_kept(name):
    mem = RacingMemory(2 << 20)
    w = Walk(name, mem=mem, ad="hardware")
    gpa = spread_gpa(name)
    addrs = w.build(gpa, 1, ept_leaf(FRAME[1], 1))
    before = w.words(addrs)
    soft_bit = 1 << 52                         # ignored by the processor, kept by software
    mem.race(addrs[0], lambda word: word | soft_bit)
    r = w.translate(gpa, "write")
    assert r.ok and r.restarts == 1
    expected = [word | EPT_A for word in before]
    expected[0] |= soft_bit
    expected[-1] |= EPT_D
    assert w.words(addrs) == expected
    assert r.ad_writes[0] == (addrs[0], before[0] | soft_bit, expected[0])


@pytest.mark.parametrize("name", EPT)
def test_a_racing_zap_of_the_leaf_turns_the_retry_into_a_fault(name):
    mem = RacingMemory(2 << 20)
    w = Walk(name, mem=mem, ad="hardware")
    gpa = spread_gpa(name)
    addrs = w.build(gpa, 1, ept_leaf(FRAME[1], 1))
    mem.race(addrs[-1], lambda word: 0)
    r = w.translate(gpa, "read")
    assert_fault(r, kind="not_present", level=1, pte_addr=addrs[-1],
                 report=violation(Q_READ))
    assert r.restarts == 1
    assert mem.read64(addrs[-1]) == 0          # the zap was not overwritten by A


# -- GPA width, bus errors -------------------------------------------------------------------


@pytest.mark.parametrize("name", EPT)
@pytest.mark.parametrize("access", ACCESSES)
def test_gpa_beyond_the_walk_width(name, access):
    levels, _, gpa_bits = GEOMETRY[name]
    w = Walk(name)
    top = (1 << gpa_bits) - 1
    w.build(top, 1, ept_leaf(FRAME[1], 1))
    assert w.translate(top, access).hpa == FRAME[1] | 0xfff
    for gpa in (1 << gpa_bits, top + (1 << gpa_bits), 1 << 63):
        r = w.translate(gpa, access)
        # tdpwalk: reported as gpa_range at the root, no entry read; an EPT violation
        # with only the access bit (no entry was used).
        assert_fault(r, kind="gpa_range", level=levels, pte_addr=None,
                     report=violation(Q_ACCESS[access]))
        assert r.pte_addrs == ()


@pytest.mark.parametrize("name", EPT)
@pytest.mark.parametrize("access", ACCESSES)
def test_bus_error_at_every_level(name, access):
    levels = GEOMETRY[name][0]
    for level in range(levels, 0, -1):
        w = Walk(name)
        gpa = spread_gpa(name)
        addrs = w.build(gpa, 1, ept_leaf(FRAME[1], 1))
        w.mem.poison(addrs[levels - level])
        r = w.translate(gpa, access)
        assert_fault(r, kind="bus_error", level=level, pte_addr=addrs[levels - level],
                     report={"exit": "machine_check"})
        assert list(r.pte_addrs) == addrs[:levels - level + 1]


# -- JSON shape ------------------------------------------------------------------------------


def test_json_shape_of_a_translation_and_a_fault():
    w = Walk("ept4", ad="hardware")
    gpa = spread_gpa("ept4")
    addrs = w.build(gpa, 1, ept_leaf(FRAME[1], 1, xwr=0b101))
    t = w.translate(gpa, "read").to_json()
    assert t == {"result": "translation", "gpa": hex(gpa), "access": "read",
                 "hpa": hex(expected_hpa(1, gpa)), "level": 1, "perms": "rx", "memtype": 6,
                 "pte_addrs": [hex(a) for a in addrs],
                 "ad_writes": [[hex(a), hex(ept_table(w._child[a]) if i < 3
                                            else ept_leaf(FRAME[1], 1, xwr=0b101)),
                                hex((ept_table(w._child[a]) if i < 3
                                     else ept_leaf(FRAME[1], 1, xwr=0b101)) | EPT_A)]
                               for i, a in enumerate(addrs)]}
    f = w.translate(gpa, "write").to_json()
    assert f == {"result": "fault", "gpa": hex(gpa), "access": "write", "kind": "permission",
                 "level": 1, "pte_addr": hex(addrs[-1]),
                 "report": {"exit": "ept_violation",
                            "qualification": hex(Q_WRITE | Q_READABLE | Q_EXECUTABLE)},
                 "pte_addrs": [hex(a) for a in addrs]}


# -- the encoder against the hand encoding --------------------------------------------------


@pytest.mark.parametrize("name", EPT)
@pytest.mark.parametrize("level", LEAF_LEVELS)
def test_make_leaf_matches_the_manual_layout(name, level):
    fmt = get_format(name)
    for xwr in (0b001, 0b011, 0b101, 0b111, 0b100):
        for mt in (0, 1, 4, 5, 6):
            for a, d in ((False, False), (True, False), (True, True)):
                word = fmt.make_leaf(FRAME[level], level, r=bool(xwr & 1), w=bool(xwr & 2),
                                     x=bool(xwr & 4), memtype=mt, a=a, d=d)
                assert word == ept_leaf(FRAME[level], level, xwr=xwr, mt=mt, a=a, d=d)
    assert fmt.make_leaf(FRAME[level], level) == ept_leaf(FRAME[level], level)  # WB default


@pytest.mark.parametrize("name", EPT)
def test_make_table_matches_the_manual_layout(name):
    fmt = get_format(name)
    for addr in (0x1000, 0x7f_ffff_f000, 0xf_ffff_ffff_f000):
        assert fmt.make_table(addr) == ept_table(addr)


def test_an_entry_that_changes_before_every_update_stops_the_walk():
    class AlwaysRacing(RacingMemory):
        def cmpxchg64(self, addr, old, new):
            self.race(addr, lambda word: word ^ 1 << 52)
            return super().cmpxchg64(addr, old, new)

    mem = AlwaysRacing(2 << 20)
    w = Walk("ept4", mem=mem, ad="hardware")
    gpa = spread_gpa("ept4")
    w.build(gpa, 1, ept_leaf(FRAME[1], 1))
    with pytest.raises(WalkRestartLimit):
        w.translate(gpa, "read", max_restarts=3)
    assert mem.cmpxchg_calls == 4


def test_hand_encoding_constants():
    # Tables 29-1 to 29-7: R 0, W 1, X 2, memory type 5:3, ignore PAT 6, page size 7,
    # accessed 8, dirty 9; frames from bit 12.
    assert [EPT_IPAT, EPT_PS, EPT_A, EPT_D] == [1 << 6, 1 << 7, 1 << 8, 1 << 9]
    assert ept_leaf(0x20_0000, 2, xwr=0b101, mt=EPT_MT_WB) == 0x20_0000 | 0b101 | 6 << 3 | 1 << 7
