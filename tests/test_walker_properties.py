"""Property tests for every format: encode/decode round trips, and random mappings that
translate every mapped address to the mapped frame and fault everywhere else.

Hypothesis runs derandomized (a fixed seed), so a failure reproduces on every run and
Hypothesis prints the falsifying example.
"""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import GEOMETRY, page_shift
from sw_model.formats import FORMAT_NAMES, get_format
from sw_model.memory import HostMemory
from sw_model.walker import translate

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])

#: Permission sets that are valid leaves, per architecture (EPT with execute-only support).
VALID_PERMS = {
    "ept": ["r", "rw", "rx", "rwx", "x"],
    "npt": ["r", "rw", "rx", "rwx"],
    "gstage": ["r", "rw", "rx", "rwx", "x"],
}
MEMTYPES = {"ept": [0, 1, 4, 5, 6], "npt": list(range(8)), "gstage": [None]}


def hpa_limit(fmt):
    return 1 << (56 if fmt.arch == "gstage" else fmt.default_pa_bits)


def frames(fmt, level):
    shift = page_shift(level)
    return st.integers(0, (hpa_limit(fmt) >> shift) - 1).map(lambda n: n << shift)


def allows(perms, access, arch):
    if arch == "npt" and access == "read":
        return True
    return {"read": "r", "write": "w", "execute": "x"}[access] in perms


# -- encode/decode round trips -------------------------------------------------------------


@pytest.mark.parametrize("name", FORMAT_NAMES)
@SETTINGS
@given(data=st.data())
def test_leaf_round_trip(name, data):
    fmt = get_format(name)
    vm = fmt.vm_options()
    level = data.draw(st.sampled_from(sorted(fmt.leaf_levels)), label="level")
    hpa = data.draw(frames(fmt, level), label="hpa")
    perms = data.draw(st.sampled_from(VALID_PERMS[fmt.arch]), label="perms")
    memtype = data.draw(st.sampled_from(MEMTYPES[fmt.arch]), label="memtype")
    a = data.draw(st.booleans(), label="a")
    d = data.draw(st.booleans(), label="d") and a
    word = fmt.make_leaf(hpa, level, r="r" in perms, w="w" in perms, x="x" in perms,
                         memtype=memtype, a=a, d=d)
    e = fmt.decode(word, level)
    assert (e.present, e.leaf, e.level, e.frame, e.word) == (True, True, level, hpa, word)
    assert fmt.is_present(word)
    assert (e.r, e.w, e.x) == ("r" in perms or fmt.arch == "npt", "w" in perms, "x" in perms)
    assert (e.a, e.d) == (a, d)
    assert e.memtype == (memtype or 0)
    if fmt.arch == "gstage":
        assert e.u
    assert fmt.entry_fault(word, level, vm) is None
    assert word & fmt.reserved_mask(level, True, vm) == 0
    # Software-available bits the TDP core may set never change what the walker sees.
    soft = word
    for field in fmt.sw_fields.values():
        soft |= field.mask
    assert fmt.entry_fault(soft, level, vm) is None
    assert fmt.decode(soft, level).frame == hpa


@pytest.mark.parametrize("name", FORMAT_NAMES)
@SETTINGS
@given(data=st.data())
def test_table_round_trip(name, data):
    fmt = get_format(name)
    vm = fmt.vm_options()
    level = data.draw(st.integers(2, fmt.levels), label="level")
    addr = data.draw(frames(fmt, 1), label="table")
    word = fmt.make_table(addr)
    e = fmt.decode(word, level)
    assert (e.present, e.leaf, e.frame) == (True, False, addr)
    assert fmt.entry_fault(word, level, vm) is None
    assert fmt.frame_of(word) == addr


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_frozen_word_is_not_present(name):
    fmt = get_format(name)
    assert not fmt.is_present(fmt.frozen_word)
    assert fmt.entry_fault(fmt.frozen_word, 1, fmt.vm_options()) == "not_present"


# -- random mappings ------------------------------------------------------------------------------


@st.composite
def mappings(draw, name):
    """Non-overlapping pages ``[(gpa, level, hpa, perms)]`` clustered in a few windows, so
    that walks share upper-level tables and leave holes between them."""
    fmt = get_format(name)
    gpa_bits = GEOMETRY[name][2]
    windows = draw(st.lists(st.integers(0, (1 << (gpa_bits - 32)) - 1), min_size=1,
                            max_size=3, unique=True), label="windows")
    out = []
    for _ in range(draw(st.integers(1, 12), label="count")):
        level = draw(st.sampled_from(sorted(fmt.leaf_levels)), label="level")
        if page_shift(level) > 31:                     # a page larger than a window
            base = draw(st.integers(0, (1 << (gpa_bits - page_shift(level))) - 1))
            gpa = base << page_shift(level)
        else:
            window = draw(st.sampled_from(windows))
            gpa = window << 32 | draw(st.integers(0, (1 << 32) - 1))
            gpa &= ~((1 << page_shift(level)) - 1)
        size = 1 << page_shift(level)
        if any(gpa < g + (1 << page_shift(lv)) and g < gpa + size for g, lv, _, _ in out):
            continue
        out.append((gpa, level, draw(frames(fmt, level)),
                    draw(st.sampled_from(VALID_PERMS[fmt.arch]))))
    return windows, out


def build(fmt, mem, maps):
    """Tables for ``maps`` written with the format's own encoders."""
    root = mem.alloc_table(fmt.root_table_bytes)
    for gpa, level, hpa, perms in maps:
        table = root
        for lvl in range(fmt.levels, level, -1):
            addr = fmt.entry_addr(table, gpa, lvl)
            word = mem.read64(addr)
            if word == 0:
                child = mem.alloc_table()
                mem.write64(addr, fmt.make_table(child))
                table = child
            else:
                table = fmt.decode(word, lvl).frame
        mem.write64(fmt.entry_addr(table, gpa, level),
                    fmt.make_leaf(hpa, level, r="r" in perms, w="w" in perms,
                                  x="x" in perms, a=True, d=True))
    return root


@pytest.mark.parametrize("name", FORMAT_NAMES)
@SETTINGS
@given(data=st.data())
def test_random_mapping_translates_mapped_addresses_and_faults_elsewhere(name, data):
    fmt = get_format(name)
    gpa_bits = GEOMETRY[name][2]
    windows, maps = data.draw(mappings(name), label="mappings")
    mem = HostMemory(4 << 20)
    root = build(fmt, mem, maps)

    for gpa, level, hpa, perms in maps:
        size = 1 << page_shift(level)
        for offset in (0, size - 1, data.draw(st.integers(0, size - 1), label="offset")):
            for access in ("read", "write", "execute"):
                r = translate(mem, fmt, root, gpa + offset, access)
                if allows(perms, access, fmt.arch):
                    assert r.ok, (hex(gpa + offset), access, r)
                    assert (r.hpa, r.level) == (hpa + offset, level)
                else:
                    assert (r.ok, r.kind, r.level) == (False, "permission", level)

    def mapped(g):
        return any(m <= g < m + (1 << page_shift(lv)) for m, lv, _, _ in maps)

    probes = data.draw(st.lists(st.one_of(
        st.integers(0, (1 << gpa_bits) - 1),
        st.tuples(st.sampled_from(windows), st.integers(0, (1 << 32) - 1)).map(
            lambda t: t[0] << 32 | t[1])), min_size=1, max_size=20), label="probes")
    for gpa in probes:
        if mapped(gpa):
            continue
        r = translate(mem, fmt, root, gpa, data.draw(st.sampled_from(
            ("read", "write", "execute")), label="access"))
        assert (r.ok, r.kind) == (False, "not_present"), (hex(gpa), r)
    beyond = data.draw(st.integers(1 << gpa_bits, (1 << 64) - 1), label="beyond")
    r = translate(mem, fmt, root, beyond, "read")
    assert (r.ok, r.kind, r.level) == (False, "gpa_range", fmt.levels)
