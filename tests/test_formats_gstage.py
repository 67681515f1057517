"""RISC-V G-stage (sv39x4, sv48x4, sv57x4) checked against the Privileged spec with PTEs
encoded by hand.

The spec's G-stage translation ("Hypervisor Extension", "Two-Stage Address Translation",
"Guest Physical Address Translation") is the Sv39/Sv48/Sv57 algorithm of "Virtual Address
Translation Process" with a 16 KiB root indexed by two extra GPA bits, every access
checked as a U-mode access, and guest-page faults (cause 20/21/23, htval = GPA >> 2) in
place of page faults. Step numbers below are those of the translation process:
2 PTE read (access fault on a PMA/PMP violation), 3 V/encoding/reserved bits, 4 pointer or
leaf, 5 permissions, 6 misaligned superpage, 7 A/D (Svade: fault; Svadu: set by
compare-and-swap, restarting at step 2 on a mismatch).
"""

import pytest

from conftest import (ACCESS_FAULT_CAUSE, ACCESSES, GEOMETRY, GPF_CAUSE, GS_A, GS_D, GS_G,
                      GS_R, GS_U, GS_V, GS_W, GS_X, RacingMemory, Walk, assert_fault,
                      assert_translation, gs_leaf, gs_table, index_of, page_shift,
                      spread_gpa)
from sw_model.formats import get_format

GSTAGE = ("sv39x4", "sv48x4", "sv57x4")
#: One naturally aligned frame per page size: 4K, 2M, 1G, 512G, 256T (all < 2^56).
FRAME = {1: 0x8_1234_5000, 2: 0x8_4560_0000, 3: 0x8_c000_0000, 4: 0x3 << 39, 5: 0x5 << 48}
ALL_PERMS = {"r": True, "w": True, "x": True, "u": True}


def levels_of(name):
    return GEOMETRY[name][0]


def gpf(access, gpa):
    return {"cause": GPF_CAUSE[access], "htval": gpa >> 2}


def expected_hpa(level, gpa):
    return FRAME[level] | gpa & ((1 << page_shift(level)) - 1)


def leaf_cases():
    return [(name, level) for name in GSTAGE for level in range(1, levels_of(name) + 1)]


def build_with(w, gpa, level, override):
    """A 4K walk whose entry at ``level`` is ``override(next_table_or_frame)``."""
    if level == 1:
        return w.build(gpa, 1, override(FRAME[1]))
    return w.build(gpa, 1, gs_leaf(FRAME[1], a=True, d=True),
                   pointer=lambda lvl, addr: override(addr) if lvl == level else gs_table(addr))


# -- geometry: 16 KiB root, 2 extra GPA bits ----------------------------------------------------


@pytest.mark.parametrize("name", GSTAGE)
def test_geometry(name):
    levels, root_bits, gpa_bits = GEOMETRY[name]
    fmt = get_format(name)
    assert (fmt.arch, fmt.levels, fmt.gpa_bits) == ("gstage", levels, gpa_bits)
    assert fmt.root_table_bytes == 16384 and fmt.table_entries(levels) == 2048
    assert all(fmt.table_bytes(level) == 4096 for level in range(1, levels))
    # Every level may hold a leaf, the root included ("any level of PTE may be a leaf").
    assert fmt.leaf_levels == frozenset(range(1, levels + 1))
    assert set(fmt.ad_modes) == {"hardware", "fault"}


@pytest.mark.parametrize("name", GSTAGE)
def test_root_index_uses_the_two_extra_gpa_bits(name):
    levels, _, gpa_bits = GEOMETRY[name]
    w = Walk(name)
    gpa = (1 << gpa_bits) - 4096                   # root index 2047: the last root entry
    assert index_of(name, gpa, levels) == 2047
    addrs = w.build(gpa, 1, gs_leaf(FRAME[1], a=True, d=True))
    assert addrs[0] == w.root + 0x3ff8
    assert w.translate(gpa, "read").hpa == FRAME[1]


@pytest.mark.parametrize("name", GSTAGE)
def test_root_must_be_16k_aligned(name):
    fmt = get_format(name)
    vm = fmt.vm_options()
    fmt.check_root(0x4000, vm)
    with pytest.raises(ValueError, match="16384"):
        fmt.check_root(0x3000, vm)


# -- translations at every level, the root included ---------------------------------------------


@pytest.mark.parametrize("name,level", leaf_cases())
@pytest.mark.parametrize("access", ACCESSES)
def test_leaf_at_every_level(name, level, access):
    w = Walk(name, ad="fault")
    gpa = spread_gpa(name) | ((1 << page_shift(level)) - 1) & 0x2_5a5a_5a5a_5a5a
    addrs = w.build(gpa, level, gs_leaf(FRAME[level], a=True, d=True))
    r = w.translate(gpa, access)
    assert_translation(r, hpa=expected_hpa(level, gpa), level=level, pte_addrs=addrs,
                       memtype=0, perms=ALL_PERMS)
    assert r.ad_writes == ()


@pytest.mark.parametrize("name", GSTAGE)
@pytest.mark.parametrize("bit", [GS_G, 1 << 8, 1 << 9])
def test_g_and_rsw_bits_are_ignored(name, bit):
    # "The G bit ... is not used by G-stage translation ... must be ignored by hardware";
    # RSW (bits 9:8) is for supervisor software.
    for level in range(levels_of(name), 0, -1):
        w = Walk(name)
        gpa = spread_gpa(name)
        build_with(w, gpa, level, lambda addr: (gs_leaf(addr, extra=bit, a=True, d=True)
                                                if level == 1 else gs_table(addr, extra=bit)))
        assert w.translate(gpa, "write").ok


# -- step 3: not valid, W without R, reserved bits ------------------------------------------


@pytest.mark.parametrize("name", GSTAGE)
@pytest.mark.parametrize("access", ACCESSES)
def test_not_valid_at_every_level(name, access):
    levels = levels_of(name)
    for level in range(levels, 0, -1):
        w = Walk(name)
        gpa = spread_gpa(name)
        addrs = w.build(gpa, level, 0x003f_ffff_ffff_fffe)   # V=0, other bits ignored
        r = w.translate(gpa, access)
        assert_fault(r, kind="not_present", level=level, pte_addr=addrs[-1],
                     report=gpf(access, gpa))
        assert list(r.pte_addrs) == addrs


@pytest.mark.parametrize("name", GSTAGE)
@pytest.mark.parametrize("bit", range(54, 64))
def test_bits_63_to_54_are_reserved_in_every_entry(name, bit):
    # Bits 63:54 are reserved (N and PBMT too: Svnapot and Svpbmt are not implemented).
    levels = levels_of(name)
    for level in range(levels, 0, -1):
        # As a pointer (level > 1) and as a leaf at that level.
        w = Walk(name)
        gpa = spread_gpa(name)
        if level > 1:
            addrs = build_with(w, gpa, level, lambda addr: gs_table(addr, extra=1 << bit))
            assert_fault(w.translate(gpa, "read"), kind="reserved", level=level,
                         pte_addr=addrs[levels - level], report=gpf("read", gpa))
        w = Walk(name)
        addrs = w.build(gpa, level, gs_leaf(FRAME[level], a=True, d=True, extra=1 << bit))
        assert_fault(w.translate(gpa, "write"), kind="reserved", level=level,
                     pte_addr=addrs[-1], report=gpf("write", gpa))


@pytest.mark.parametrize("name", GSTAGE)
@pytest.mark.parametrize("perms", ["w", "wx"])
@pytest.mark.parametrize("access", ACCESSES)
def test_write_without_read_is_reserved_at_every_level(name, perms, access):
    for level in range(levels_of(name), 0, -1):
        w = Walk(name)
        gpa = spread_gpa(name)
        addrs = w.build(gpa, level, gs_leaf(FRAME[level], perms, a=True, d=True))
        assert_fault(w.translate(gpa, access), kind="reserved", level=level,
                     pte_addr=addrs[-1], report=gpf(access, gpa))


@pytest.mark.parametrize("name", GSTAGE)
@pytest.mark.parametrize("bit", [GS_A, GS_D, GS_U])
def test_a_d_u_in_a_non_leaf_entry_are_reserved(name, bit):
    # "For non-leaf PTEs, the D, A, and U bits are reserved for future standard use";
    # step 3 faults on any reserved bit (Spike and QEMU do the same).
    levels = levels_of(name)
    for level in range(levels, 1, -1):
        w = Walk(name)
        gpa = spread_gpa(name)
        addrs = build_with(w, gpa, level, lambda addr: gs_table(addr, extra=bit))
        assert_fault(w.translate(gpa, "read"), kind="reserved", level=level,
                     pte_addr=addrs[levels - level], report=gpf("read", gpa))


@pytest.mark.parametrize("name", GSTAGE)
@pytest.mark.parametrize("access", ACCESSES)
def test_a_pointer_at_level_1_faults(name, access):
    # Step 4: a pointer when i = 0 ("if i < 0, stop and raise a page-fault").
    w = Walk(name)
    gpa = spread_gpa(name)
    addrs = w.build(gpa, 1, gs_table(0x8_0000_0000))
    assert_fault(w.translate(gpa, access), kind="reserved", level=1, pte_addr=addrs[-1],
                 report=gpf(access, gpa))


# -- step 5: permissions, checked as U-mode, on the leaf only ------------------------------------


PERMS = [
    ("r", {"read"}), ("rw", {"read", "write"}), ("x", {"execute"}),
    ("rx", {"read", "execute"}), ("rwx", {"read", "write", "execute"}),
]


@pytest.mark.parametrize("name,level", leaf_cases())
@pytest.mark.parametrize("perms,allowed", PERMS)
def test_leaf_rwx(name, level, perms, allowed):
    w = Walk(name)
    gpa = spread_gpa(name)
    addrs = w.build(gpa, level, gs_leaf(FRAME[level], perms, a=True, d=True))
    for access in ACCESSES:
        r = w.translate(gpa, access)
        if access in allowed:
            assert_translation(r, hpa=expected_hpa(level, gpa), level=level, pte_addrs=addrs,
                               perms={"r": "r" in perms, "w": "w" in perms,
                                      "x": "x" in perms, "u": True})
        else:
            assert_fault(r, kind="permission", level=level, pte_addr=addrs[-1],
                         report=gpf(access, gpa))


@pytest.mark.parametrize("name,level", leaf_cases())
@pytest.mark.parametrize("access", ACCESSES)
def test_u_must_be_set_on_the_leaf(name, level, access):
    w = Walk(name)
    gpa = spread_gpa(name)
    addrs = w.build(gpa, level, gs_leaf(FRAME[level], u=False, a=True, d=True))
    assert_fault(w.translate(gpa, access), kind="permission", level=level,
                 pte_addr=addrs[-1], report=gpf(access, gpa))


# -- step 6: misaligned superpages ----------------------------------------------------------


@pytest.mark.parametrize("name,level", [c for c in leaf_cases() if c[1] > 1])
@pytest.mark.parametrize("access", ACCESSES)
def test_misaligned_superpage(name, level, access):
    for low_bit in (12, page_shift(level) - 1):        # PPN[0] bit 0 .. PPN[i-1] top bit
        w = Walk(name)
        gpa = spread_gpa(name)
        addrs = w.build(gpa, level, gs_leaf(FRAME[level] | 1 << low_bit, a=True, d=True))
        assert_fault(w.translate(gpa, access), kind="misaligned", level=level,
                     pte_addr=addrs[-1], report=gpf(access, gpa))


@pytest.mark.parametrize("name", GSTAGE)
def test_permission_is_checked_before_alignment_and_alignment_before_a_d(name):
    w = Walk(name, ad="fault")
    gpa = spread_gpa(name)
    addrs = w.build(gpa, 2, gs_leaf(FRAME[2] | 0x1000, "r", a=False))
    assert w.translate(gpa, "write").kind == "permission"     # step 5
    assert w.translate(gpa, "read").kind == "misaligned"      # step 6 before step 7
    w.mem.write64(addrs[-1], gs_leaf(FRAME[2], "r", a=False))
    assert w.translate(gpa, "read").kind == "ad_clear"        # step 7


# -- step 7: Svade and Svadu -------------------------------------------------------------------


@pytest.mark.parametrize("name,level", leaf_cases())
@pytest.mark.parametrize("access", ACCESSES)
def test_svade_faults_on_a_clear_accessed_bit(name, level, access):
    w = Walk(name, ad="fault")
    gpa = spread_gpa(name)
    addrs = w.build(gpa, level, gs_leaf(FRAME[level], a=False, d=True))
    before = w.words(addrs)
    assert_fault(w.translate(gpa, access), kind="ad_clear", level=level, pte_addr=addrs[-1],
                 report=gpf(access, gpa))
    assert w.words(addrs) == before


@pytest.mark.parametrize("name,level", leaf_cases())
def test_svade_faults_on_a_clear_dirty_bit_only_for_stores(name, level):
    w = Walk(name, ad="fault")
    gpa = spread_gpa(name)
    addrs = w.build(gpa, level, gs_leaf(FRAME[level], a=True, d=False))
    assert w.translate(gpa, "read").ok and w.translate(gpa, "execute").ok
    assert_fault(w.translate(gpa, "write"), kind="ad_clear", level=level,
                 pte_addr=addrs[-1], report=gpf("write", gpa))


@pytest.mark.parametrize("name,level", leaf_cases())
@pytest.mark.parametrize("access", ACCESSES)
def test_svadu_sets_a_and_d_in_the_leaf_only(name, level, access):
    w = Walk(name, ad="hardware")
    gpa = spread_gpa(name)
    addrs = w.build(gpa, level, gs_leaf(FRAME[level]))
    before = w.words(addrs)
    r = w.translate(gpa, access)
    new_leaf = before[-1] | GS_A | (GS_D if access == "write" else 0)
    assert r.ok and list(r.ad_writes) == [(addrs[-1], before[-1], new_leaf)]
    # Non-leaf A/D are reserved: never set.
    assert w.words(addrs) == before[:-1] + [new_leaf]
    assert w.translate(gpa, access).ad_writes == ()


@pytest.mark.parametrize("name", GSTAGE)
def test_svadu_does_not_write_on_a_fault(name):
    w = Walk(name, ad="hardware")
    gpa = spread_gpa(name)
    addrs = w.build(gpa, 1, gs_leaf(FRAME[1], "r"))
    assert w.translate(gpa, "write").kind == "permission"
    assert w.mem.read64(addrs[-1]) & (GS_A | GS_D) == 0


@pytest.mark.parametrize("name", GSTAGE)
def test_svadu_ad_update_false_reports_without_writing(name):
    w = Walk(name, ad="hardware")
    gpa = spread_gpa(name)
    addrs = w.build(gpa, 1, gs_leaf(FRAME[1]))
    before = w.words(addrs)
    r = w.translate(gpa, "write", ad_update=False)
    assert list(r.ad_writes) == [(addrs[-1], before[-1], before[-1] | GS_A | GS_D)]
    assert w.words(addrs) == before


@pytest.mark.parametrize("name", GSTAGE)
def test_svadu_compare_and_swap_restarts_and_keeps_a_racing_store(name):
    mem = RacingMemory(2 << 20)
    w = Walk(name, mem=mem, ad="hardware")
    gpa = spread_gpa(name)
    addrs = w.build(gpa, 1, gs_leaf(FRAME[1]))
    before = mem.read64(addrs[-1])
    mem.race(addrs[-1], lambda word: word | 1 << 8)      # software sets an RSW bit
    r = w.translate(gpa, "write")
    assert r.ok and r.restarts == 1
    assert mem.read64(addrs[-1]) == before | 1 << 8 | GS_A | GS_D


@pytest.mark.parametrize("name", GSTAGE)
def test_svadu_compare_and_swap_sees_a_racing_write_protect(name):
    mem = RacingMemory(2 << 20)
    w = Walk(name, mem=mem, ad="hardware")
    gpa = spread_gpa(name)
    addrs = w.build(gpa, 1, gs_leaf(FRAME[1]))
    before = mem.read64(addrs[-1])
    mem.race(addrs[-1], lambda word: word & ~GS_W)
    r = w.translate(gpa, "write")
    assert_fault(r, kind="permission", level=1, pte_addr=addrs[-1], report=gpf("write", gpa))
    assert r.restarts == 1
    assert mem.read64(addrs[-1]) == before & ~GS_W


# -- GPA width, access faults --------------------------------------------------------------------


@pytest.mark.parametrize("name", GSTAGE)
@pytest.mark.parametrize("access", ACCESSES)
def test_gpa_beyond_the_mode_width_is_a_guest_page_fault(name, access):
    # "For Sv39x4, address bits 63:41 must all be zeros, or else a guest-page-fault
    # exception occurs" (50 bits for Sv48x4, 59 for Sv57x4).
    levels, _, gpa_bits = GEOMETRY[name]
    w = Walk(name)
    top = (1 << gpa_bits) - 1
    w.build(top, 1, gs_leaf(FRAME[1], a=True, d=True))
    assert w.translate(top, access).hpa == FRAME[1] | 0xfff
    for gpa in (1 << gpa_bits, top + (1 << gpa_bits), (1 << 64) - 1):
        r = w.translate(gpa, access)
        assert_fault(r, kind="gpa_range", level=levels, pte_addr=None, report=gpf(access, gpa))
        assert r.pte_addrs == ()


@pytest.mark.parametrize("name", GSTAGE)
@pytest.mark.parametrize("access", ACCESSES)
def test_bus_error_is_an_access_fault_at_every_level(name, access):
    # Step 2: a PTE read that fails PMA/PMP checks raises an access fault for the original
    # access type (1, 5, 7); htval is written only for guest-page faults, so it is 0.
    levels = levels_of(name)
    for level in range(levels, 0, -1):
        w = Walk(name)
        gpa = spread_gpa(name)
        addrs = w.build(gpa, 1, gs_leaf(FRAME[1], a=True, d=True))
        w.mem.poison(addrs[levels - level])
        r = w.translate(gpa, access)
        assert_fault(r, kind="bus_error", level=level, pte_addr=addrs[levels - level],
                     report={"cause": ACCESS_FAULT_CAUSE[access], "htval": 0})
        assert list(r.pte_addrs) == addrs[:levels - level + 1]


def test_json_report():
    w = Walk("sv48x4")
    gpa = spread_gpa("sv48x4")
    w.build(gpa, 1, 0)
    j = w.translate(gpa, "execute").to_json()
    assert j["report"] == {"cause": 20, "htval": hex(gpa >> 2)}
    assert j["kind"] == "not_present" and j["pte_addr"].startswith("0x")


# -- the encoder against the hand encoding -------------------------------------------------------


@pytest.mark.parametrize("name,level", leaf_cases())
def test_make_leaf_matches_the_manual_layout(name, level):
    fmt = get_format(name)
    for perms in ("r", "rw", "x", "rx", "rwx"):
        for a, d in ((False, False), (True, False), (True, True)):
            word = fmt.make_leaf(FRAME[level], level, r="r" in perms, w="w" in perms,
                                 x="x" in perms, a=a, d=d)
            assert word == gs_leaf(FRAME[level], perms, a=a, d=d)


@pytest.mark.parametrize("name", GSTAGE)
def test_make_table_matches_the_manual_layout(name):
    fmt = get_format(name)
    for addr in (0x1000, 0xff_ffff_ffff_f000):
        assert fmt.make_table(addr) == gs_table(addr) == (addr >> 2) | GS_V


def test_hand_encoding_constants():
    # Sv39 PTE: V 0, R 1, W 2, X 3, U 4, G 5, A 6, D 7, RSW 9:8, PPN 53:10.
    assert [GS_V, GS_R, GS_W, GS_X, GS_U, GS_G, GS_A, GS_D] == [1 << i for i in range(8)]
    assert gs_leaf(0xff_ffff_ffff_f000, "") >> 10 == (1 << 44) - 1
