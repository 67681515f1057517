"""Bad input everywhere: a clear error that names the field, and nothing lost.

Vector files (every field of sw_model/vectors.py), both command lines (exit status 2 and
one ``error:`` line, never a traceback), the TDP MMU model (an impossible operation
raises and leaves the VM exactly as it was: statistics, a recount of the tables, every
memory word, memslots and their bitmaps, roots and their references, the event log),
memslots built directly, and the RTL's constructors and simulator harness.
"""

import gc
import json
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
from amaranth.hdl import UnusedElaboratable

from conftest import run_cli
from sw_model import __main__ as sw_cli
from sw_model.formats import FormatError, get_format
from sw_model.memory import HostMemory
from sw_model.tdp import Memslot, PfResult, Vm
from sw_model.vectors import (MAX_MEMORY, VectorFileError, load_vectors, random_vectors,
                              run_vectors, save_vectors)


# -- vector files ------------------------------------------------------------------------


def _valid(name="ept4"):
    """A small valid file: a table pointer and a leaf (64 KiB memory, a bus error)."""
    fmt = get_format(name)
    root = 0x4000
    return {
        "tdpwalk_vectors": 1, "format": name,
        "vm": {"ad": "hardware", "pa_bits": fmt.default_pa_bits},
        "root": hex(root),
        "memory": {"base": "0x0", "size": "0x10000",
                   "words": {hex(root): hex(fmt.make_table(0x2000)),
                             "0x2000": hex(fmt.make_leaf(0x40000000, 3))},
                   "bus_errors": ["0x3000"]},
        "accesses": [{"gpa": "0x1234", "access": "write"},
                     {"gpa": "0x40000000", "access": "read"}],
        "seed": 1,
    }


def _set(path, value):
    """An edit putting ``value`` at ``path`` (a list of keys and indices)."""
    def edit(data):
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return edit


def _drop(*path):
    def edit(data):
        target = data
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
    return edit


def _add_word(addr, word):
    return lambda data: data["memory"]["words"].update({addr: word})


BAD_FILES = [
    # the version
    ("no version", _drop("tdpwalk_vectors"), "tdpwalk_vectors"),
    ("version 2", _set(["tdpwalk_vectors"], 2), "tdpwalk_vectors"),
    ("version true", _set(["tdpwalk_vectors"], True), "tdpwalk_vectors"),
    ("version 1.0", _set(["tdpwalk_vectors"], 1.0), "tdpwalk_vectors"),
    ("version string", _set(["tdpwalk_vectors"], "1"), "tdpwalk_vectors"),
    ("unknown top field", _set(["acesses"], []), "vector file"),
    # the format
    ("no format", _drop("format"), "vector file"),
    ("format name", _set(["format"], "ept6"), "format"),
    ("format case", _set(["format"], "EPT4"), "format"),
    ("format number", _set(["format"], 4), "format"),
    ("format list", _set(["format"], ["ept4"]), "format"),
    # VM options
    ("vm null", _set(["vm"], None), "vm"),
    ("vm list", _set(["vm"], []), "vm"),
    ("vm unknown", _set(["vm", "colour"], "red"), "vm"),
    ("ad unsupported", _set(["vm", "ad"], "fault"), "vm"),
    ("ad unknown", _set(["vm", "ad"], "sometimes"), "vm"),
    ("ad number", _set(["vm", "ad"], 1), "vm.ad"),
    ("pa_bits above", _set(["vm", "pa_bits"], 53), "vm"),
    ("pa_bits below", _set(["vm", "pa_bits"], 35), "vm"),
    ("pa_bits string", _set(["vm", "pa_bits"], "46"), "vm.pa_bits"),
    ("pa_bits bool", _set(["vm", "pa_bits"], True), "vm.pa_bits"),
    ("pa_bits float", _set(["vm", "pa_bits"], 46.0), "vm.pa_bits"),
    ("exec_only string", _set(["vm", "exec_only"], "false"), "vm.exec_only"),
    ("exec_only number", _set(["vm", "exec_only"], 0), "vm.exec_only"),
    ("nxe null", _set(["vm", "nxe"], None), "vm.nxe"),
    # the root
    ("no root", _drop("root"), "vector file"),
    ("root unaligned", _set(["root"], "0x4008"), "root"),
    ("root in a page but not aligned", _set(["root"], "0x4800"), "root"),
    ("root outside memory", _set(["root"], "0x100000"), "root"),
    ("root beyond pa_bits", _set(["root"], hex(1 << 46)), "root"),
    ("root bad hex", _set(["root"], "0x4g00"), "root"),
    ("root words", _set(["root"], "banana"), "root"),
    ("root negative", _set(["root"], -4096), "root"),
    ("root bool", _set(["root"], True), "root"),
    ("root list", _set(["root"], [0x4000]), "root"),
    ("root null", _set(["root"], None), "root"),
    ("root float", _set(["root"], 16384.0), "root"),
    # memory
    ("no memory", _drop("memory"), "vector file"),
    ("memory list", _set(["memory"], []), "memory"),
    ("memory unknown", _set(["memory", "bus_error"], ["0x3000"]), "memory"),
    ("size unaligned", _set(["memory", "size"], "0x10001"), "memory"),
    ("size zero", _set(["memory", "size"], 0), "memory"),
    ("size huge", _set(["memory", "size"], hex(MAX_MEMORY * 2)), "memory.size"),
    ("size 2**64", _set(["memory", "size"], hex(1 << 64)), "memory.size"),
    ("size bad hex", _set(["memory", "size"], "0x1z"), "memory.size"),
    ("base unaligned", _set(["memory", "base"], "0x800"), "memory"),
    ("base negative", _set(["memory", "base"], -4096), "memory.base"),
    ("memory beyond pa_bits", _set(["memory", "base"], hex((1 << 46) - 0x8000)), "memory"),
    ("words list", _set(["memory", "words"], [1, 2]), "memory.words"),
    ("word address unaligned", _add_word("0x2004", "0x1"), "memory.words[0x2004]"),
    ("word address outside", _add_word("0x10000", "0x1"), "memory.words[0x10000]"),
    ("word address bad hex", _add_word("0x2q00", "0x1"), "memory.words[0x2q00]"),
    ("word address twice", _add_word("8192", "0x1"), "memory.words[8192]"),
    ("word bad hex", _add_word("0x2008", "0xfffg"), "memory.words[0x2008]"),
    ("word above 64 bits", _add_word("0x2008", hex(1 << 64)), "memory.words[0x2008]"),
    ("word negative", _add_word("0x2008", -1), "memory.words[0x2008]"),
    ("word null", _add_word("0x2008", None), "memory.words[0x2008]"),
    ("bus_errors string", _set(["memory", "bus_errors"], "0x3000"), "memory.bus_errors"),
    ("bus_error unaligned", _set(["memory", "bus_errors"], ["0x3001"]), "memory.bus_errors[0]"),
    ("bus_error outside", _set(["memory", "bus_errors"], ["0x3000", "0x20000"]),
     "memory.bus_errors[1]"),
    ("bus_error twice", _set(["memory", "bus_errors"], ["0x3000", "12288"]),
     "memory.bus_errors[1]"),
    ("bus_error bad hex", _set(["memory", "bus_errors"], ["x3000"]), "memory.bus_errors[0]"),
    # accesses
    ("no accesses", _drop("accesses"), "vector file"),
    ("accesses object", _set(["accesses"], {"gpa": 0}), "accesses"),
    ("access not an object", _set(["accesses", 1], ["0x0", "read"]), "accesses[1]"),
    ("access without gpa", _set(["accesses", 1], {"access": "read"}), "accesses[1]"),
    ("access without kind", _set(["accesses", 1], {"gpa": "0x0"}), "accesses[1]"),
    ("access unknown field", _set(["accesses", 1, "vm"], 0), "accesses[1]"),
    ("access kind fetch", _set(["accesses", 1, "access"], "fetch"), "accesses[1].access"),
    ("access kind case", _set(["accesses", 1, "access"], "READ"), "accesses[1].access"),
    ("access kind number", _set(["accesses", 1, "access"], 0), "accesses[1].access"),
    ("gpa bad hex", _set(["accesses", 1, "gpa"], "0x1g"), "accesses[1].gpa"),
    ("gpa negative", _set(["accesses", 1, "gpa"], -1), "accesses[1].gpa"),
    ("gpa 2**64", _set(["accesses", 1, "gpa"], hex(1 << 64)), "accesses[1].gpa"),
    ("gpa bool", _set(["accesses", 1, "gpa"], False), "accesses[1].gpa"),
    ("gpa float", _set(["accesses", 1, "gpa"], 4096.0), "accesses[1].gpa"),
    # seed
    ("seed string", _set(["seed"], "one"), "seed"),
    ("seed float", _set(["seed"], 1.5), "seed"),
]


@pytest.mark.parametrize("edit, field", [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_bad_vector_file_names_the_field(edit, field):
    data = _valid()
    load_vectors(data)                      # the unedited file is fine
    edit(data)
    with pytest.raises(VectorFileError) as info:
        load_vectors(data)
    assert info.value.field == field, str(info.value)
    assert str(info.value).startswith(f"{field}: "), str(info.value)


@pytest.mark.parametrize("name", ["sv39x4", "sv57x4"])
def test_gstage_root_must_be_16k_aligned_and_inside(name):
    data = _valid(name)
    data["root"] = "0x5000"                 # 4 KiB aligned only: hgatp.PPN[1:0] must be 0
    with pytest.raises(VectorFileError, match="^root: .*16384"):
        load_vectors(data)
    data["memory"]["size"] = "0x11000"      # the 16 KiB root would straddle the end
    data["root"] = "0x10000"
    with pytest.raises(VectorFileError, match="^root: .*outside memory"):
        load_vectors(data)


def test_file_errors_name_the_file(tmp_path):
    data = _valid()
    data["accesses"][0]["access"] = "fetch"
    path = tmp_path / "v.json"
    path.write_text(json.dumps(data))
    with pytest.raises(VectorFileError) as info:
        load_vectors(path)
    assert info.value.field == "accesses[0].access" and info.value.path == path
    assert str(info.value).endswith(f"(in {path})")


@pytest.mark.parametrize("text, problem", [
    ("", "not valid JSON"),
    ("{ not json", "not valid JSON"),
    ("[1, 2]", "expected an object"),
    ("null", "expected an object"),
    ('{"tdpwalk_vectors": 1, "tdpwalk_vectors": 1}', "given twice"),
    (b"\xff\xfe\x00garbage", "not text"),
])
def test_malformed_files(tmp_path, text, problem):
    path = tmp_path / "v.json"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with pytest.raises(VectorFileError, match=problem) as info:
        load_vectors(path)
    assert str(path) in str(info.value)


def test_duplicate_word_keys_in_a_file(tmp_path):
    """JSON keeps the last of two equal keys silently; a vector file must not."""
    text = json.dumps(_valid()).replace('"words": {', '"words": {"0x2000": "0x1", ', 1)
    path = tmp_path / "v.json"
    path.write_text(text)
    with pytest.raises(VectorFileError, match="'0x2000': given twice"):
        load_vectors(path)


def test_unreadable_paths(tmp_path):
    for path in (tmp_path / "missing.json", tmp_path):
        with pytest.raises(VectorFileError, match="cannot read it") as info:
            load_vectors(path)
        assert info.value.field == "vector file"


def test_valid_edge_cases_load():
    """What looks odd but is valid: GPAs beyond the format's width (the walk reports a
    gpa_range fault), the largest 64-bit GPA, no accesses, no vm (defaults), integers
    instead of strings, a null seed."""
    data = _valid()
    data["accesses"] = [{"gpa": 1 << 48, "access": "read"},
                        {"gpa": hex((1 << 64) - 1), "access": "execute"}]
    data.pop("vm")
    data["root"] = 0x4000
    data["seed"] = None
    vectors = load_vectors(data)
    assert vectors.vm == get_format("ept4").vm_options()
    assert [r.kind for r in run_vectors(vectors)] == ["gpa_range", "gpa_range"]
    data["accesses"] = []
    assert run_vectors(load_vectors(data)) == []


def test_load_leaves_the_input_alone():
    data = _valid()
    copy = json.loads(json.dumps(data))
    load_vectors(data)
    assert data == copy


@pytest.mark.parametrize("name", ["ept5", "npt4", "sv48x4"])
def test_save_load_is_exact(tmp_path, name):
    vectors = random_vectors(name, 11, 60)
    path = tmp_path / "v.json"
    save_vectors(vectors, path)
    again = load_vectors(path)
    assert again.to_json() == vectors.to_json()
    assert again.memory.poisoned == vectors.memory.poisoned


# -- command lines -----------------------------------------------------------------------


def _assert_one_line_error(status, err, *words):
    assert status == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], err


@pytest.fixture
def bad_file(tmp_path):
    data = _valid()
    data["memory"]["words"]["0x2004"] = "0x1"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    return path


def test_sw_model_cli_errors(tmp_path, bad_file, capsys):
    good = tmp_path / "good.json"
    save_vectors(random_vectors("ept4", 1, 5), good)
    cases = [
        ([], ["command"]),
        (["run"], ["vectors"]),
        (["frobnicate"], ["frobnicate"]),
        (["run", str(tmp_path / "missing.json")], ["missing.json", "cannot read"]),
        (["run", str(bad_file)], ["memory.words[0x2004]", str(bad_file)]),
        (["run", str(good), "-o", str(tmp_path / "no" / "such" / "out")], ["no/such/out"]),
        (["random", "--format", "ept9", "-o", "x"], ["--format", "ept9"]),
        (["random", "--format", "ept4", "--count", "-1", "-o", "x"], ["--count"]),
        (["random", "--format", "ept4", "--count", "many", "-o", "x"], ["--count"]),
        (["random", "--format", "ept4", "--seed", "x", "-o", "x"], ["--seed"]),
        (["random", "--format", "ept4", "--pa-bits", "99", "-o", "x"], ["pa_bits"]),
        (["random", "--format", "sv39x4", "--ad", "off", "-o", "x"], ["A/D mode"]),
        (["random", "--format", "ept4", "--count", "2", "-o", str(tmp_path)], [str(tmp_path)]),
        (["random", "--format", "ept4"], ["-o"]),
        (["demo", "--count", "-5"], ["--count"]),
    ]
    for argv, words in cases:
        status, out, err = run_cli(sw_cli.main, argv, capsys)
        _assert_one_line_error(status, err, *words)
        assert out == "", argv
    assert not (tmp_path / "x").exists()


def test_sw_model_cli_in_a_process(bad_file):
    """The real entry point: exit status 2, one line, no traceback."""
    done = subprocess.run([sys.executable, "-m", "sw_model", "run", str(bad_file)],
                          capture_output=True, text=True)
    _assert_one_line_error(done.returncode, done.stderr, "memory.words[0x2004]")
    assert done.stdout == ""


def test_hw_cli_bad_vector_file(bad_file, capsys):
    from hw import __main__ as hw_cli
    status, out, err = run_cli(hw_cli.main, ["run", str(bad_file)], capsys)
    _assert_one_line_error(status, err, "memory.words[0x2004]")
    status, out, err = run_cli(hw_cli.main, ["generate", "--config", "num_vms=3", "-o",
                                          "/nonexistent"], capsys)
    _assert_one_line_error(status, err, "num_vms")
    status, out, err = run_cli(hw_cli.main, ["generate", "--config", "colour=1"], capsys)
    _assert_one_line_error(status, err, "colour")


@pytest.mark.parametrize("args, words", [
    (["--latency", "0"], ["--latency"]),
    (["--stall", "1.5"], ["--stall"]),
    (["-o", "/nonexistent/dir/out"], ["/nonexistent/dir/out"]),
    (["--sim", "modelsim"], ["--sim"]),
])
def test_hw_cli_bad_options(tmp_path, capsys, args, words):
    from hw import __main__ as hw_cli
    good = tmp_path / "good.json"
    save_vectors(random_vectors("ept4", 1, 3), good)
    status, out, err = run_cli(hw_cli.main, ["run", str(good), *args], capsys)
    _assert_one_line_error(status, err, *words)


# -- the TDP MMU model: refused operations leave everything as it was ---------------------

GIB = 1 << 18           # pages


def _snapshot(vm):
    slots = []
    for as_id in range(vm._address_spaces):
        for s in vm.memslots(as_id):
            slots.append((as_id, s.slot_id, s.base_gfn, s.npages, s.hpa, s.readonly,
                          s.dirty_logging, s.host_level, s.dirty_bitmap.tobytes()))
    return {
        "stats": vm.stats(), "recount": vm.recount(), "slots": slots,
        "roots": [(r.hpa, r.as_id, r.refcount, r.invalid) for r in vm.roots],
        "words": vm.mem.words.copy(), "used": vm.mem._used.copy(),
        "poisoned": vm.mem.poisoned, "events": list(vm.events),
    }


def _assert_unchanged(before, after, *, faults_may_count=False):
    if faults_may_count:        # a refused fault is still a fault: it counts, and logs
        for snap in (before, after):
            snap["stats"] = {k: v for k, v in snap["stats"].items() if k != "faults"}
            snap["events"] = None
    assert np.array_equal(before.pop("words"), after.pop("words")), "memory words changed"
    assert np.array_equal(before.pop("used"), after.pop("used")), "page allocation changed"
    assert before == after


@pytest.fixture(params=["ept4", "npt5", "sv39x4"])
def vm(request):
    """A VM with two address spaces, three memslots (one dirty-logged, one read-only),
    4K and huge mappings in both spaces, and a root reference held by a user."""
    vm = Vm(request.param, HostMemory(4 << 20), address_spaces=2)
    vm.add_memslot(0, 0, 2 * GIB, 1 << 32)
    vm.add_memslot(1, 2 * GIB, 100, 1 << 33, dirty_logging=True)
    vm.add_memslot(2, 3 * GIB, 16, 1 << 34, readonly=True)
    vm.add_memslot(0, 0, 512, 1 << 35, as_id=1)
    for gpa, access, max_level in ((0x1000, "write", 1), (GIB << 12, "read", None),
                                   (0x40_0000, "execute", 2), ((2 * GIB + 3) << 12, "write", None),
                                   ((3 * GIB) << 12, "read", None)):
        assert vm.handle_fault(gpa, access, max_level=max_level) is PfResult.FIXED
    assert vm.handle_fault(0x2000, "write", as_id=1) is PfResult.FIXED
    assert all(vm.recount()["pages"][level] for level in (1, 2, 3))
    vm.user_root = vm.get_root()
    return vm


REFUSED = [
    # memslots
    ("overlapping memslot", lambda vm: vm.add_memslot(5, GIB + 7, 10, 0), "overlaps memslot 0"),
    ("memslot overlapping at the end", lambda vm: vm.add_memslot(5, 2 * GIB + 99, 2, 0),
     "overlaps memslot 1"),
    ("duplicate slot id", lambda vm: vm.add_memslot(1, 5 * GIB, 1, 0), "already exists"),
    ("memslot beyond the GPA width",
     lambda vm: vm.add_memslot(5, (1 << (vm.fmt.gpa_bits - 12)) - 1, 2, 0), "GPA space"),
    ("memslot hpa unaligned", lambda vm: vm.add_memslot(5, 5 * GIB, 1, 0x800), "hpa"),
    ("memslot hpa beyond pa_bits",
     lambda vm: vm.add_memslot(5, 5 * GIB, 1, 1 << vm.opts.pa_bits), "hpa"),
    ("memslot without pages", lambda vm: vm.add_memslot(5, 5 * GIB, 0, 0), "npages"),
    ("memslot negative gfn", lambda vm: vm.add_memslot(5, -1, 1, 0), "base_gfn"),
    ("memslot gfn not an int", lambda vm: vm.add_memslot(5, 1.5, 1, 0), "base_gfn"),
    ("memslot host_level", lambda vm: vm.add_memslot(5, 5 * GIB, 1, 0, host_level=0),
     "host_level"),
    ("memslot bad as_id", lambda vm: vm.add_memslot(5, 5 * GIB, 1, 0, as_id=2), "as_id"),
    ("delete a missing slot", lambda vm: vm.delete_memslot(9), "slot_id 9"),
    ("delete in a bad as_id", lambda vm: vm.delete_memslot(0, as_id=-1), "as_id"),
    ("delete a slot of the other space", lambda vm: vm.delete_memslot(2, as_id=1), "slot_id 2"),
    ("look up a missing slot", lambda vm: vm.memslot(9), "slot_id 9"),
    ("memslots of a bad as_id", lambda vm: vm.memslots(5), "as_id"),
    # roots
    ("root of a bad as_id", lambda vm: vm.get_root(as_id=2), "as_id"),
    ("vCPU root of a bad as_id", lambda vm: vm.root_for(-1), "as_id"),
    ("put another VM's root", lambda vm: vm.put_root(Vm(vm.fmt.name).get_root()),
     "holds no reference"),
    ("zap another VM's root", lambda vm: vm.zap_root(Vm(vm.fmt.name).get_root()), "not a root"),
    # faults
    ("fault at a negative GPA", lambda vm: vm.handle_fault(-4096, "read"), "gpa"),
    ("fault at a float GPA", lambda vm: vm.handle_fault(4096.0, "read"), "gpa"),
    ("fault with a bad access", lambda vm: vm.handle_fault(0x1000, "fetch"), "access"),
    ("fault in a bad as_id", lambda vm: vm.handle_fault(0x1000, "read", as_id=2), "as_id"),
    # zap, aging, write tracking, NX recovery
    ("zap a reversed range", lambda vm: vm.zap_gfn_range(10, 5), "start/end"),
    ("zap a negative range", lambda vm: vm.zap_gfn_range(-5, 5), "start/end"),
    ("zap a bad as_id", lambda vm: vm.zap_gfn_range(0, 5, as_id=3), "as_id"),
    ("age a bad as_id", lambda vm: vm.age_gfn_range(0, 5, as_id=3), "as_id"),
    ("write-track a bad as_id", lambda vm: vm.write_track_add_gfn(1, as_id=3), "as_id"),
    ("NX recovery ratio", lambda vm: vm.recover_nx_huge_pages(-1), "ratio"),
    # dirty logging
    ("dirty log of a slot without logging", lambda vm: vm.get_dirty_log(0), "dirty logging is off"),
    ("clear the log of a slot without logging", lambda vm: vm.clear_dirty_log(0, 0, 1),
     "dirty logging is off"),
    ("dirty log of a missing slot", lambda vm: vm.get_dirty_log(7), "slot_id 7"),
    ("logging on a missing slot", lambda vm: vm.set_dirty_logging(7, True), "slot_id 7"),
    ("clear_dirty_log first_page unaligned", lambda vm: vm.clear_dirty_log(1, 3, 1), "first_page"),
    ("clear_dirty_log first_page beyond the slot", lambda vm: vm.clear_dirty_log(1, 128, 1),
     "first_page"),
    ("clear_dirty_log negative mask", lambda vm: vm.clear_dirty_log(1, 0, -1), "mask"),
    ("clear_dirty_log mask above 64 bits", lambda vm: vm.clear_dirty_log(1, 0, 1 << 64), "mask"),
    ("split a missing slot", lambda vm: vm.split_huge_pages(9), "slot_id 9"),
    # The slot has 100 pages: bits 36..63 of the second word name pages beyond it
    # (KVM_CLEAR_DIRTY_LOG's -EINVAL in kvm_clear_dirty_log_protect).
    ("clear_dirty_log mask beyond the slot", lambda vm: vm.clear_dirty_log(1, 64, 1 << 40),
     "mask"),
    ("find a slot in a bad as_id", lambda vm: vm.find_memslot(0, as_id=-1), "as_id"),
    ("age a reversed range", lambda vm: vm.age_gfn_range(10, 0), "start/end"),
    ("test the age of a reversed range", lambda vm: vm.test_age_gfn(10, 0), "start/end"),
    ("write-track a negative gfn", lambda vm: vm.write_track_add_gfn(-1), "gfn"),
    ("split to a level that cannot be mapped", lambda vm: vm.split_huge_pages(0, target_level=7),
     "target_level"),
]


@pytest.mark.parametrize("op, match", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_refused_operation_changes_nothing(vm, op, match):
    before = _snapshot(vm)
    with pytest.raises((ValueError, FormatError), match=match):
        op(vm)
    _assert_unchanged(before, _snapshot(vm))


def test_double_put_of_a_freed_root(vm):
    """A root freed by invalidation holds no reference: a second put is refused."""
    root = vm.user_root
    vm.invalidate_all_roots()
    vm.zap_invalidated_roots()
    vm.root_for(0)                          # the vCPU moves to a new root
    vm.put_root(root)                       # the user's reference: the root goes
    assert root not in vm.roots
    before = _snapshot(vm)
    with pytest.raises(ValueError, match="holds no reference"):
        vm.put_root(root)
    _assert_unchanged(before, _snapshot(vm))


def test_put_of_a_live_roots_last_reference(vm):
    """The MMU's own reference to a valid root goes only by invalidation: a put that
    would drop it is refused before the count changes."""
    root = vm.user_root
    vm.put_root(root)
    vm.put_root(root)                       # the vCPU's reference (a caller's bug)
    assert root.refcount == 1 and not root.invalid
    before = _snapshot(vm)
    with pytest.raises(ValueError, match="put_root"):
        vm.put_root(root)
    _assert_unchanged(before, _snapshot(vm))


@pytest.mark.parametrize("gpa, access, why", [
    ("width", "read", "beyond the GPA width"),
    ("2**64", "write", "beyond 64 bits"),
    ((5 * GIB) << 12, "read", "no memslot (MMIO)"),
    ("readonly", "write", "a write to a read-only slot"),
])
def test_faults_that_map_nothing(vm, gpa, access, why):
    """Faults the MMU cannot map go to userspace (EMULATE) without touching a table."""
    gpa = {"width": 1 << vm.fmt.gpa_bits, "2**64": 1 << 64,
           "readonly": (3 * GIB + 1) << 12}.get(gpa, gpa)
    vm.root_for(0)
    before = _snapshot(vm)
    assert vm.handle_fault(gpa, access) is PfResult.EMULATE, why
    _assert_unchanged(before, _snapshot(vm), faults_may_count=True)


@pytest.mark.parametrize("kwargs, match", [
    (dict(fmt_name="ept6"), "unknown page-table format"),
    (dict(fmt_name=None), "unknown page-table format"),
    (dict(fmt_name="ept4", ad="fault"), "A/D mode"),
    (dict(fmt_name="ept4", pa_bits=60), "pa_bits"),
    (dict(fmt_name="sv39x4", pa_bits=46), "pa_bits"),
    (dict(fmt_name="ept4", address_spaces=0), "address_spaces"),
    (dict(fmt_name="ept4", memory=bytearray(4096)), "memory"),
    (dict(fmt_name="sv48x4", nx_huge_pages=True), "nx_huge_pages"),
    (dict(fmt_name="ept4", yield_every=-1), "yield_every"),
    (dict(fmt_name="ept4", min_free_pages=-1), "min_free_pages"),
    (dict(fmt_name="ept4", exec_only="no"), "exec_only"),
    (dict(fmt_name="npt4", nxe="yes"), "nxe"),
])
def test_bad_vm_parameters(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        Vm(**kwargs)


# -- memslots built directly ---------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    (dict(npages=0), "npages"),
    (dict(npages=-1), "npages"),
    (dict(base_gfn=-1), "base_gfn"),
    (dict(base_gfn=1.0), "base_gfn"),
    (dict(hpa=0x800), "hpa"),
    (dict(hpa=True), "hpa"),
    (dict(slot_id=None), "slot_id"),
    (dict(as_id=-1), "as_id"),
    (dict(host_level=0), "host_level"),
    (dict(dirty_bitmap=np.zeros(3, dtype=np.uint64)), "dirty_bitmap"),
    (dict(dirty_bitmap=np.zeros(2, dtype=np.int64)), "dirty_bitmap"),
])
def test_bad_memslot(kwargs, match):
    args = dict(slot_id=0, as_id=0, base_gfn=100, npages=100, hpa=0x10000) | kwargs
    with pytest.raises(ValueError, match=match):
        Memslot(**args)


def test_memslot_dirty_bits_stay_inside():
    slot = Memslot(0, 0, 100, 100, 0x10000)
    slot.mark_dirty(90, 20)                 # clipped to the slot, as KVM does
    slot.mark_dirty_gfns(np.array([150, 199]))
    assert slot.dirty_gfns() == list(range(100, 110)) + [150, 199]
    before = slot.dirty_bitmap.copy()
    for gfns in ([99], [200], [150, 250]):
        with pytest.raises(ValueError, match="gfns"):
            slot.mark_dirty_gfns(np.array(gfns))
    assert np.array_equal(slot.dirty_bitmap, before)
    with pytest.raises(ValueError, match="bitmap"):
        slot.dirty_gfns(np.zeros(1, dtype=np.uint64))


# -- the RTL's constructors and simulator harness -------------------------------------------


def _refused_elaboratable(build, match):
    """``build()`` raises ValueError matching ``match``. The parts it built before the
    error are collected here, where their "never used" warning is expected, not in a
    later test."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)
        try:
            build()
        except ValueError as e:
            assert re.search(match, str(e)), str(e)
        else:
            pytest.fail(f"no ValueError matching {match!r}")
        gc.collect()


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_vms=3), "num_vms"), (dict(num_vms=0), "num_vms"),
    (dict(tag_bits=0), "tag_bits"), (dict(tag_bits=33), "tag_bits"),
    (dict(tag_bits=8.0), "tag_bits"), (dict(axi_id_width=0), "id_width"),
    (dict(axi_id_width=17), "id_width"),
    (dict(num_vms=True), "num_vms"),
    (dict(num_vms=1 << 30), r"num_vms must be a power of two in \[1, 256\]"),
    (dict(axi_id_width=-1), "axi_id_width"),
])
def test_bad_walker_parameters(kwargs, match):
    from hw.walker import Walker
    _refused_elaboratable(lambda: Walker(**kwargs), match)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_walkers=0), "num_walkers"), (dict(num_walkers=17), "num_walkers"),
    (dict(num_walkers=8, axi_id_width=2), "axi_id_width"), (dict(pending=2), "pending"),
    (dict(pending=65), "pending"), (dict(counter_width=0), "counter_width"),
    (dict(num_vms=5), "num_vms"), (dict(tag_bits=0), "tag_bits"),
    (dict(tlb_sets=3), "tlb_sets"),
    (dict(tlb_ways=0), "tlb_ways"),
    (dict(pwc_entries=0), "pwc_entries"),
    (dict(num_vms=65536), "num_vms.*flip-flops"),
    (dict(tlb_sets=4096, tlb_ways=64), r"tlb_sets x ways must be at most 4096"),
])
def test_bad_mmu_parameters(kwargs, match):
    from hw.mmu import MMU
    _refused_elaboratable(lambda: MMU(**kwargs), match)


def _context():
    from hw.sim import VmContext
    fmt = get_format("ept4")
    return VmContext(fmt, 0, fmt.vm_options())


@pytest.mark.parametrize("kwargs, match", [
    (dict(latency=0), "latency"), (dict(latency=1.5), "latency"),
    (dict(stall=1.0), "stall"), (dict(stall=-0.1), "stall"),
    (dict(contexts=[]), "contexts"),
    (dict(accesses=[(0, "fetch")]), r"accesses\[0\]"),
    (dict(accesses=[(0, "read"), (0, "read", 1)]), r"accesses\[1\]"),
])
def test_bad_run_walker_arguments(kwargs, match):
    from hw.sim import run_walker
    args = dict(memory=HostMemory(1 << 16), contexts=[_context()], accesses=[(0, "read")])
    with pytest.raises(ValueError, match=match):
        run_walker(**(args | kwargs))


def test_run_walker_with_no_accesses():
    from hw.sim import run_walker
    assert run_walker(HostMemory(1 << 16), [_context()], [], timeout=50) == []


@pytest.mark.parametrize("argv, env, words", [
    (["--seed", "abc"], {}, ["--seed", "abc"]),
    ([], {"SEED": "abc"}, ["--seed", "abc"]),
    ([], {"SIM": "modelsim"}, ["--sim", "modelsim"]),
    ([], {"FORMAT": "ept9"}, ["--format", "ept9"]),
    (["--scenario", "nosuch"], {}, ["--scenario", "nosuch"]),
])
def test_demo_bad_options(monkeypatch, capsys, argv, env, words):
    """``make demo`` passes SEED, SIM, FORMAT ... through the environment too: a bad one
    ends in one line before anything is built."""
    from cocotb_tests import demo
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    status, out, err = run_cli(demo.main, argv, capsys)
    _assert_one_line_error(status, err, *words)
    assert out == ""


def test_demo_interrupted_leaves_no_results(monkeypatch, capsys, tmp_path):
    """Ctrl-C during the run: one line, exit status 130, and neither a partial results
    file nor an earlier run's plot left in the output directory."""
    from cocotb_tests import demo
    (tmp_path / "report.png").write_bytes(b"an earlier run's plot")

    def interrupted(*args, results, **kwargs):
        results.write_text('[{"partial": ')
        raise KeyboardInterrupt
    monkeypatch.setattr(demo, "run_mmu", interrupted)
    status, out, err = run_cli(demo.main, ["-o", str(tmp_path)], capsys)
    assert status == 130
    assert err.splitlines() == [f"interrupted: no results written to {tmp_path}"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("sim", ["icarus", "verilator"])
def test_ctrl_c_in_a_simulation_is_one_line(sim, tmp_path):
    """Ctrl-C at the terminal (SIGINT to the whole process group) while the simulator
    runs: the demo ends with its one line and status 130; the simulator, started with
    Ctrl-C ignored, is stopped by the demo and prints no traceback of its own."""
    import os
    import signal
    import sys
    proc = subprocess.Popen([sys.executable, "-m", "cocotb_tests.demo", "--sim", sim,
                             "--scenario", "steady", "--size", "long", "-o", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines = []
    for line in proc.stdout:        # the simulation is running once it reports progress
        lines.append(line)
        if "translations" in line:
            break
    os.killpg(proc.pid, signal.SIGINT)
    rest = proc.communicate(timeout=60)[0]
    output = "".join(lines) + rest
    assert proc.returncode == 130, output[-2000:]
    assert f"interrupted: no results written to {tmp_path}" in output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output[-2000:]


@pytest.mark.parametrize("variable, words", [("JOBS=abc", "JOBS"), ("JOBS=0", "JOBS"),
                                             ("SIM=modelsim", "SIM")])
def test_make_variables_are_checked(variable, words):
    """A bad make variable stops make with one line before any target runs."""
    import pathlib
    repo = pathlib.Path(__file__).resolve().parent.parent
    import os
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    done = subprocess.run(["make", "-n", "test", variable], cwd=repo, capture_output=True,
                          text=True, env=env)
    assert done.returncode != 0 and done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and words in done.stderr, done.stderr
