"""AMD nested paging (npt4, npt5) checked against the APM with entries encoded by hand.

Nested tables use the long-mode entry format (APM Vol. 2 §5.3.3-§5.3.5,
§5.4.1); §15.25.5 makes every nested walk a user-mode access, §15.25.6 defines the #NPF
exit (EXITINFO1 = the #PF error code of §8.4.2 plus bit 32 for a fault on the final
guest-physical address). Words are built by the conftest.py helpers, not by ``make_leaf``.
"""

import pytest

from conftest import (ACCESSES, EC_FINAL, EC_ID, EC_P, EC_RSV, EC_U, EC_W, GEOMETRY, NPT_A,
                      NPT_D, NPT_G, NPT_NX, NPT_P, NPT_PAT_LARGE, NPT_PCD, NPT_PS, NPT_PWT,
                      NPT_RW, NPT_US, RacingMemory, Walk, assert_fault, assert_translation,
                      npt_leaf, npt_table, page_shift, spread_gpa)
from sw_model.formats import get_format

NPT = ("npt4", "npt5")
LEAF_LEVELS = (1, 2, 3)
FRAME = {1: 0x8_1234_5000, 2: 0x8_4560_0000, 3: 0x8_c000_0000}
ALL_PERMS = {"r": True, "w": True, "x": True, "u": True}


def npf(code):
    return {"exit": "npf", "error_code": code}


def code_for(access, nxe=True):
    """The access part of the error code: U always (user walk), W for writes, I/D for
    fetches when EFER.NXE=1 (§8.4.2), bit 32 (final GPA, §15.25.6)."""
    code = EC_U | EC_FINAL
    if access == "write":
        code |= EC_W
    if access == "execute" and nxe:
        code |= EC_ID
    return code


def expected_hpa(level, gpa):
    return FRAME[level] | gpa & ((1 << page_shift(level)) - 1)


def pointer_with(level_words):
    return lambda level, addr: level_words.get(level, npt_table)(addr)


def build_with(w, gpa, level, leaf=None, override=None):
    """A 4K walk for ``gpa``; ``override`` replaces the entry at ``level`` (a pointer
    above level 1, the leaf at level 1)."""
    leaf = npt_leaf(FRAME[1], 1) if leaf is None else leaf
    if level == 1:
        return w.build(gpa, 1, override(FRAME[1]) if override else leaf)
    return w.build(gpa, 1, leaf, pointer=pointer_with({level: override} if override else {}))


# -- geometry ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NPT)
def test_geometry(name):
    levels, _, gpa_bits = GEOMETRY[name]
    fmt = get_format(name)
    assert (fmt.arch, fmt.levels, fmt.gpa_bits, fmt.root_table_bytes) == ("npt", levels,
                                                                           gpa_bits, 4096)
    assert fmt.leaf_levels == frozenset(LEAF_LEVELS)
    assert fmt.ad_modes == ("hardware",)


# -- translations -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", NPT)
@pytest.mark.parametrize("level", LEAF_LEVELS)
@pytest.mark.parametrize("access", ACCESSES)
def test_leaf_at_every_allowed_level(name, level, access):
    w = Walk(name)
    gpa = spread_gpa(name)
    addrs = w.build(gpa, level, npt_leaf(FRAME[level], level, a=True, d=True))
    r = w.translate(gpa, access)
    assert_translation(r, hpa=expected_hpa(level, gpa), level=level, pte_addrs=addrs,
                       memtype=0, perms=ALL_PERMS)


@pytest.mark.parametrize("name", NPT)
@pytest.mark.parametrize("level", LEAF_LEVELS)
@pytest.mark.parametrize("pat", range(8))
def test_pat_index_is_the_memory_type(name, level, pat):
    # §7.8 (page-attribute table), §5.4.1: the PAT index is PAT:PCD:PWT; PAT is bit 7
    # of a PTE and bit 12 of a 2M/1G leaf (where bit 7 is PS and 12 is no address bit).
    w = Walk(name)
    gpa = spread_gpa(name)
    w.build(gpa, level, npt_leaf(FRAME[level], level, pat=pat))
    r = w.translate(gpa, "read")
    assert r.ok and r.memtype == pat and r.hpa == expected_hpa(level, gpa)


@pytest.mark.parametrize("name", NPT)
@pytest.mark.parametrize("bit", [8, 9, 10, 11] + list(range(52, 63)))
def test_ignored_and_available_bits_of_a_pte_do_not_fault(name, bit):
    # §5.4.1 (4-Kbyte PTE): bit 8 is G (no effect on nested walks), 11:9 and 62:52
    # are available to software.
    w = Walk(name)
    gpa = spread_gpa(name)
    w.build(gpa, 1, npt_leaf(FRAME[1], 1, extra=1 << bit))
    assert w.translate(gpa, "write").ok


@pytest.mark.parametrize("name", NPT)
@pytest.mark.parametrize("level", [3, 2])
@pytest.mark.parametrize("bit", [6, 8])
def test_bits_6_and_8_of_non_leaf_pdpe_and_pde_are_ignored(name, level, bit):
    # §5.3.3: bits 6 and 8 of a PDPE/PDE that references a table are ignored (bit 8 is
    # MBZ only in the PML4E/PML5E; KVM commit 5ecad245de2a reads the APM the same way).
    w = Walk(name)
    gpa = spread_gpa(name)
    build_with(w, gpa, level, override=lambda addr: npt_table(addr, extra=1 << bit))
    assert w.translate(gpa, "read").ok


# -- not present --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NPT)
@pytest.mark.parametrize("access", ACCESSES)
@pytest.mark.parametrize("nxe", [True, False])
def test_not_present_at_every_level(name, access, nxe):
    levels = GEOMETRY[name][0]
    for level in range(levels, 0, -1):
        w = Walk(name, nxe=nxe)
        gpa = spread_gpa(name)
        # P=0: "all remaining bits are available to software" (§5.4.1), reserved ones too.
        addrs = w.build(gpa, level, 0xffff_ffff_ffff_fffe)
        r = w.translate(gpa, access)
        assert_fault(r, kind="not_present", level=level, pte_addr=addrs[-1],
                     report=npf(code_for(access, nxe)))
        assert list(r.pte_addrs) == addrs


# -- reserved bits (RSV=1 in the error code) ----------------------------------------------------


@pytest.mark.parametrize("name", NPT)
@pytest.mark.parametrize("pa_bits", [36, 40, 46, 48, 51])
def test_bits_51_to_maxphyaddr_are_reserved_in_every_entry(name, pa_bits):
    levels = GEOMETRY[name][0]
    for bit in sorted({pa_bits, (pa_bits + 51) // 2, 51}):
        for level in range(levels, 1, -1):
            w = Walk(name, pa_bits=pa_bits)
            gpa = spread_gpa(name)
            addrs = build_with(w, gpa, level,
                               override=lambda addr: npt_table(addr, extra=1 << bit))
            assert_fault(w.translate(gpa, "write"), kind="reserved", level=level,
                         pte_addr=addrs[levels - level],
                         report=npf(EC_P | EC_RSV | code_for("write")))
        for level in LEAF_LEVELS:
            w = Walk(name, pa_bits=pa_bits)
            gpa = spread_gpa(name)
            addrs = w.build(gpa, level, npt_leaf(FRAME[level], level, extra=1 << bit))
            assert_fault(w.translate(gpa, "read"), kind="reserved", level=level,
                         pte_addr=addrs[-1], report=npf(EC_P | EC_RSV | code_for("read")))


@pytest.mark.parametrize("name", NPT)
@pytest.mark.parametrize("pa_bits", [36, 46, 52])
@pytest.mark.parametrize("level", LEAF_LEVELS)
def test_the_top_address_bit_below_maxphyaddr_is_an_address_bit(name, pa_bits, level):
    w = Walk(name, pa_bits=pa_bits)
    gpa = spread_gpa(name)
    frame = 1 << (pa_bits - 1) | FRAME[level]
    w.build(gpa, level, npt_leaf(frame, level))
    r = w.translate(gpa, "read")
    assert r.ok and r.hpa == frame | gpa & ((1 << page_shift(level)) - 1)


@pytest.mark.parametrize("name", NPT)
@pytest.mark.parametrize("bit", [7, 8])
@pytest.mark.parametrize("access", ACCESSES)
def test_ps_and_bit_8_of_pml4e_and_pml5e_are_reserved(name, bit, access):
    # §5.3.3 (long-mode PML4E, and the PML5E): bits 8:7 are MBZ (no 512G pages).
    levels = GEOMETRY[name][0]
    for level in range(levels, 3, -1):
        w = Walk(name)
        gpa = spread_gpa(name)
        addrs = build_with(w, gpa, level, override=lambda addr: npt_table(addr, extra=1 << bit))
        assert_fault(w.translate(gpa, access), kind="reserved", level=level,
                     pte_addr=addrs[levels - level],
                     report=npf(EC_P | EC_RSV | code_for(access)))


@pytest.mark.parametrize("name", NPT)
@pytest.mark.parametrize("level,bits", [(3, range(13, 30)), (2, range(13, 21))])
def test_low_address_bits_of_large_pages_are_reserved(name, level, bits):
    # §5.3.5 (1-Gbyte PDPE): 29:13 MBZ; §5.3.4 (2-Mbyte PDE): 20:13 MBZ.
    for bit in bits:
        w = Walk(name)
        gpa = spread_gpa(name)
        addrs = w.build(gpa, level, npt_leaf(FRAME[level], level, extra=1 << bit))
        assert_fault(w.translate(gpa, "read"), kind="reserved", level=level,
                     pte_addr=addrs[-1], report=npf(EC_P | EC_RSV | code_for("read")))


@pytest.mark.parametrize("name", NPT)
@pytest.mark.parametrize("access", ACCESSES)
def test_nx_is_reserved_without_efer_nxe_at_every_level(name, access):
    # §5.4.1: with EFER.NXE=0 bit 63 is reserved (MBZ) in every entry; the I/D
    # bit is then not reported (§8.4.2).
    levels = GEOMETRY[name][0]
    for level in range(levels, 0, -1):
        w = Walk(name, nxe=False)
        gpa = spread_gpa(name)
        addrs = build_with(w, gpa, level,
                           override=lambda addr: (npt_leaf(addr, 1, nx=True) if level == 1
                                                  else npt_table(addr, extra=NPT_NX)))
        assert_fault(w.translate(gpa, access), kind="reserved", level=level,
                     pte_addr=addrs[levels - level],
                     report=npf(EC_P | EC_RSV | code_for(access, nxe=False)))


@pytest.mark.parametrize("name", NPT)
def test_without_nxe_every_present_page_is_executable(name):
    w = Walk(name, nxe=False)
    gpa = spread_gpa(name)
    addrs = w.build(gpa, 1, npt_leaf(FRAME[1], 1, rw=False))
    r = w.translate(gpa, "execute")
    assert_translation(r, hpa=expected_hpa(1, gpa), level=1, pte_addrs=addrs,
                       perms={"r": True, "w": False, "x": True, "u": True})


# -- permissions: U at every level, R/W and NX accumulated (§15.25.5, §5.6) --------------------


@pytest.mark.parametrize("name", NPT)
@pytest.mark.parametrize("access", ACCESSES)
def test_user_bit_must_be_set_at_every_level(name, access):
    levels = GEOMETRY[name][0]
    for level in range(levels, 0, -1):
        w = Walk(name)
        gpa = spread_gpa(name)
        addrs = build_with(w, gpa, level,
                           override=lambda addr: (npt_leaf(addr, 1, us=False) if level == 1
                                                  else npt_table(addr, NPT_P | NPT_RW)))
        before = w.words(addrs)
        # A protection violation: P=1, and U=1 because the walk is a user access.
        assert_fault(w.translate(gpa, access), kind="permission", level=1,
                     pte_addr=addrs[-1], report=npf(EC_P | code_for(access)))
        assert w.words(addrs) == before         # no A/D on a fault (tdpwalk choice)


@pytest.mark.parametrize("name", NPT)
def test_read_write_is_accumulated_over_every_level(name):
    levels = GEOMETRY[name][0]
    for level in range(levels, 0, -1):
        w = Walk(name)
        gpa = spread_gpa(name)
        addrs = build_with(w, gpa, level,
                           override=lambda addr: (npt_leaf(addr, 1, rw=False) if level == 1
                                                  else npt_table(addr, NPT_P | NPT_US)))
        r = w.translate(gpa, "read")
        assert_translation(r, hpa=expected_hpa(1, gpa), level=1, pte_addrs=addrs,
                           perms={"r": True, "w": False, "x": True, "u": True})
        assert w.translate(gpa, "execute").ok
        assert_fault(w.translate(gpa, "write"), kind="permission", level=1,
                     pte_addr=addrs[-1], report=npf(EC_P | code_for("write")))


@pytest.mark.parametrize("name", NPT)
def test_nx_is_accumulated_over_every_level(name):
    levels = GEOMETRY[name][0]
    for level in range(levels, 0, -1):
        w = Walk(name, nxe=True)
        gpa = spread_gpa(name)
        addrs = build_with(w, gpa, level,
                           override=lambda addr: (npt_leaf(addr, 1, nx=True) if level == 1
                                                  else npt_table(addr, extra=NPT_NX)))
        r = w.translate(gpa, "write")
        assert_translation(r, hpa=expected_hpa(1, gpa), level=1, pte_addrs=addrs,
                           perms={"r": True, "w": True, "x": False, "u": True})
        assert_fault(w.translate(gpa, "execute"), kind="permission", level=1,
                     pte_addr=addrs[-1], report=npf(EC_P | code_for("execute")))


@pytest.mark.parametrize("name", NPT)
@pytest.mark.parametrize("level", [2, 3])
def test_permissions_on_large_leaves(name, level):
    w = Walk(name)
    gpa = spread_gpa(name)
    addrs = w.build(gpa, level, npt_leaf(FRAME[level], level, rw=False, nx=True))
    assert w.translate(gpa, "read").ok
    for access in ("write", "execute"):
        assert_fault(w.translate(gpa, access), kind="permission", level=level,
                     pte_addr=addrs[-1], report=npf(EC_P | code_for(access)))


@pytest.mark.parametrize("name", NPT)
def test_reserved_bit_beats_a_missing_user_bit_above(name):
    # The walk stops at the entry with the reserved bit; permissions are only checked
    # for a completed walk, so the report has RSV set.
    levels = GEOMETRY[name][0]
    w = Walk(name)
    gpa = spread_gpa(name)
    addrs = w.build(gpa, 1, npt_leaf(FRAME[1], 1, extra=1 << 51), pointer=pointer_with(
        {levels: lambda addr: npt_table(addr, NPT_P | NPT_RW)}))
    assert_fault(w.translate(gpa, "read"), kind="reserved", level=1, pte_addr=addrs[-1],
                 report=npf(EC_P | EC_RSV | code_for("read")))


# -- accessed and dirty (§5.4.2) ------------------------------------------------------------------


@pytest.mark.parametrize("name", NPT)
@pytest.mark.parametrize("level", LEAF_LEVELS)
@pytest.mark.parametrize("access", ACCESSES)
def test_a_is_set_in_every_entry_and_d_in_the_leaf_on_writes(name, level, access):
    w = Walk(name)
    gpa = spread_gpa(name)
    addrs = w.build(gpa, level, npt_leaf(FRAME[level], level))
    before = w.words(addrs)
    r = w.translate(gpa, access)
    expected = [word | NPT_A for word in before]
    if access == "write":
        expected[-1] |= NPT_D
    assert r.ok
    assert list(r.ad_writes) == list(zip(addrs, before, expected))
    assert w.words(addrs) == expected
    assert w.translate(gpa, access).ad_writes == ()


@pytest.mark.parametrize("name", NPT)
def test_d_is_never_set_in_a_non_leaf_entry(name):
    w = Walk(name)
    gpa = spread_gpa(name)
    addrs = w.build(gpa, 1, npt_leaf(FRAME[1], 1, a=True))
    w.translate(gpa, "write")
    words = w.words(addrs)
    assert all(word & NPT_D == 0 for word in words[:-1])
    assert words[-1] & NPT_D


@pytest.mark.parametrize("name", NPT)
def test_ad_update_false_reports_without_writing(name):
    w = Walk(name)
    gpa = spread_gpa(name)
    addrs = w.build(gpa, 2, npt_leaf(FRAME[2], 2))
    before = w.words(addrs)
    r = w.translate(gpa, "write", ad_update=False)
    assert [a for a, _, _ in r.ad_writes] == addrs
    assert r.ad_writes[-1][2] == before[-1] | NPT_A | NPT_D
    assert w.words(addrs) == before


@pytest.mark.parametrize("name", NPT)
def test_a_racing_store_makes_the_walk_restart_and_is_kept(name):
    mem = RacingMemory(2 << 20)
    w = Walk(name, mem=mem)
    gpa = spread_gpa(name)
    addrs = w.build(gpa, 1, npt_leaf(FRAME[1], 1))
    before = w.words(addrs)
    # Software write-protects the leaf between the walk's read and its A/D update (the
    # race fires before the first compare-exchange, the root's).
    mem.race(addrs[-1], lambda word: word & ~NPT_RW)
    r = w.translate(gpa, "write")
    assert_fault(r, kind="permission", level=1, pte_addr=addrs[-1],
                 report=npf(EC_P | code_for("write")))
    assert r.restarts == 1
    assert mem.read64(addrs[-1]) == before[-1] & ~NPT_RW   # neither A nor D written over it


@pytest.mark.parametrize("name", NPT)
def test_a_racing_software_bit_is_kept(name):
    mem = RacingMemory(2 << 20)
    w = Walk(name, mem=mem)
    gpa = spread_gpa(name)
    addrs = w.build(gpa, 1, npt_leaf(FRAME[1], 1))
    before = w.words(addrs)
    mem.race(addrs[1], lambda word: word | 1 << 9)     # an available bit
    r = w.translate(gpa, "read")
    assert r.ok and r.restarts == 1
    expected = [word | NPT_A for word in before]
    expected[1] |= 1 << 9
    assert w.words(addrs) == expected


# -- GPA width, bus errors, JSON ----------------------------------------------------------------


@pytest.mark.parametrize("name", NPT)
@pytest.mark.parametrize("access", ACCESSES)
def test_gpa_beyond_the_walk_width(name, access):
    levels, _, gpa_bits = GEOMETRY[name]
    w = Walk(name)
    top = (1 << gpa_bits) - 1
    w.build(top, 1, npt_leaf(FRAME[1], 1))
    assert w.translate(top, access).hpa == FRAME[1] | 0xfff
    for gpa in (1 << gpa_bits, 1 << 63):
        r = w.translate(gpa, access)
        # tdpwalk: gpa_range at the root, nothing read, reported like a not-present #NPF.
        assert_fault(r, kind="gpa_range", level=levels, pte_addr=None,
                     report=npf(code_for(access)))
        assert r.pte_addrs == ()


@pytest.mark.parametrize("name", NPT)
@pytest.mark.parametrize("access", ACCESSES)
def test_bus_error_at_every_level(name, access):
    levels = GEOMETRY[name][0]
    for level in range(levels, 0, -1):
        w = Walk(name)
        gpa = spread_gpa(name)
        addrs = w.build(gpa, 1, npt_leaf(FRAME[1], 1))
        w.mem.poison(addrs[levels - level])
        r = w.translate(gpa, access)
        assert_fault(r, kind="bus_error", level=level, pte_addr=addrs[levels - level],
                     report={"exit": "machine_check"})
        assert list(r.pte_addrs) == addrs[:levels - level + 1]


def test_json_report_is_hex():
    w = Walk("npt4")
    gpa = spread_gpa("npt4")
    w.build(gpa, 1, 0)
    j = w.translate(gpa, "write").to_json()
    assert j["report"] == {"exit": "npf", "error_code": hex(EC_FINAL | EC_U | EC_W)}
    assert j["kind"] == "not_present" and j["level"] == 1


# -- the encoder against the hand encoding ------------------------------------------------------


@pytest.mark.parametrize("name", NPT)
@pytest.mark.parametrize("level", LEAF_LEVELS)
def test_make_leaf_matches_the_manual_layout(name, level):
    fmt = get_format(name)
    for rw in (False, True):
        for nx in (False, True):
            for pat in range(8):
                for a, d in ((False, False), (True, False), (True, True)):
                    word = fmt.make_leaf(FRAME[level], level, r=True, w=rw, x=not nx,
                                         memtype=pat, a=a, d=d)
                    assert word == npt_leaf(FRAME[level], level, rw=rw, nx=nx, pat=pat,
                                            a=a, d=d)


@pytest.mark.parametrize("name", NPT)
def test_make_table_matches_the_manual_layout(name):
    fmt = get_format(name)
    for addr in (0x1000, 0xf_ffff_ffff_f000):
        assert fmt.make_table(addr) == npt_table(addr) == addr | NPT_P | NPT_RW | NPT_US


def test_hand_encoding_constants():
    # §5.4.1 (4-Kbyte PTE): P 0, R/W 1, U/S 2, PWT 3, PCD 4, A 5, D 6, PAT 7, G 8, NX 63;
    # bit 7 is PS and bit 12 PAT in 2M/1G leaves (§5.3.4, §5.3.5).
    assert [NPT_P, NPT_RW, NPT_US, NPT_PWT, NPT_PCD, NPT_A, NPT_D, NPT_PS, NPT_G] == [
        1 << i for i in range(9)]
    assert NPT_PAT_LARGE == 1 << 12 and NPT_NX == 1 << 63
