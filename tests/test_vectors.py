"""Vector files: round trips, validation errors that name the field, the CLI, and the
random generator's coverage of every fault kind."""

import collections
import json
import subprocess
import sys

import pytest

from sw_model.formats import FORMAT_NAMES, get_format
from sw_model.vectors import (VectorFileError, load_vectors, random_vectors, result_lines,
                              run_vectors, save_vectors)


def _small_file():
    fmt = get_format("ept4")
    return {
        "tdpwalk_vectors": 1, "format": "ept4", "vm": {"ad": "hardware", "pa_bits": 46},
        "root": "0x1000",
        "memory": {"size": "0x10000", "words": {
            "0x1000": hex(fmt.make_table(0x2000)),
            "0x2000": hex(fmt.make_leaf(0x40000000, 3)),
        }},
        "accesses": [{"gpa": "0x1234", "access": "write"},
                     {"gpa": "0x40000000", "access": "read"}],
    }


def test_load_run_and_json_shape():
    results = run_vectors(load_vectors(_small_file()))
    lines = [json.loads(line) for line in result_lines(results)]
    assert lines[0]["index"] == 0
    assert lines[0]["result"] == "translation"
    assert lines[0]["hpa"] == "0x40001234"
    assert lines[0]["level"] == 3
    assert lines[0]["pte_addrs"] == ["0x1000", "0x2000"]
    # A/D applied: A on both, D on the leaf, root first.
    assert [w[0] for w in lines[0]["ad_writes"]] == ["0x1000", "0x2000"]
    assert lines[1]["result"] == "fault" and lines[1]["kind"] == "not_present"
    assert lines[1]["report"] == {"exit": "ept_violation", "qualification": "0x1"}


def test_save_load_round_trip(tmp_path):
    vectors = random_vectors("sv48x4", seed=7, count=200, ad="fault")
    path = tmp_path / "v.json"
    save_vectors(vectors, path)
    again = load_vectors(path)
    assert again.fmt is vectors.fmt and again.vm == vectors.vm and again.root == vectors.root
    assert again.accesses == vectors.accesses
    assert again.bus_errors == vectors.bus_errors
    assert [r.to_json() for r in run_vectors(again)] == [r.to_json() for r in run_vectors(vectors)]


@pytest.mark.parametrize("edit, field", [
    (lambda d: d.update(format="ept6"), "format"),
    (lambda d: d["vm"].update(ad="fault"), "vm"),
    (lambda d: d["vm"].update(pa_bits=60), "vm"),
    (lambda d: d["vm"].update(colour="red"), "vm"),
    (lambda d: d.update(root="0x1008"), "root"),
    (lambda d: d.update(root="0x100000"), "root"),
    (lambda d: d.update(root="banana"), "root"),
    (lambda d: d["memory"].update(size="0x1001"), "memory"),
    (lambda d: d["memory"]["words"].update({"0x1004": "0x1"}), "memory.words[0x1004]"),
    (lambda d: d["memory"]["words"].update({"0x900000": "0x1"}), "memory.words[0x900000]"),
    (lambda d: d["accesses"].append({"gpa": "0x0", "access": "fetch"}), "accesses[2].access"),
    (lambda d: d["accesses"].append({"access": "read"}), "accesses[2]"),
    (lambda d: d["accesses"].append({"gpa": -1, "access": "read"}), "accesses[2].gpa"),
    (lambda d: d.pop("tdpwalk_vectors"), "tdpwalk_vectors"),
])
def test_bad_files_name_the_field(edit, field):
    data = _small_file()
    edit(data)
    with pytest.raises(VectorFileError) as info:
        load_vectors(data)
    assert str(info.value).startswith(field), str(info.value)


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(VectorFileError, match="cannot read"):
        load_vectors(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    with pytest.raises(VectorFileError, match="not valid JSON"):
        load_vectors(bad)


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_random_files_reach_every_fault_kind(name):
    fmt = get_format(name)
    kinds = collections.Counter()
    for seed in range(4):
        for ad in fmt.ad_modes:
            vectors = random_vectors(name, seed, 400, ad=ad)
            kinds.update(r.kind if not r.ok else "ok" for r in run_vectors(vectors))
    expected = {"ok", "not_present", "permission", "reserved", "gpa_range", "bus_error"}
    if fmt.arch == "gstage":
        expected |= {"misaligned", "ad_clear"}
    missing = expected - set(kinds)
    assert not missing, f"{name}: random files never produced {missing} ({dict(kinds)})"
    assert kinds["ok"] > sum(kinds.values()) // 5


def test_random_files_are_reproducible():
    a = random_vectors("npt5", 3, 100).to_json()
    b = random_vectors("npt5", 3, 100).to_json()
    assert a == b


def test_random_files_at_a_memory_base(tmp_path):
    """Tables placed from ``memory_base`` up: the root is its first page, and the file
    reads back with the same answers."""
    vectors = random_vectors("npt4", 15, 40, ad="hardware", memory_base=1 << 20)
    assert vectors.root == vectors.memory.base == 1 << 20
    save_vectors(vectors, tmp_path / "v.json")
    again = load_vectors(tmp_path / "v.json")
    assert again.memory.base == 1 << 20 and again.root == vectors.root
    assert [r.to_json() for r in run_vectors(again)] == [r.to_json() for r in run_vectors(vectors)]


def test_cli_random_then_run(tmp_path):
    path = tmp_path / "v.json"
    subprocess.run([sys.executable, "-m", "sw_model", "random", "--format", "sv39x4",
                    "--seed", "5", "--count", "30", "-o", str(path)], check=True,
                   capture_output=True)
    out = subprocess.run([sys.executable, "-m", "sw_model", "run", str(path)], check=True,
                         capture_output=True, text=True).stdout.splitlines()
    assert len(out) == 30
    assert [json.loads(line)["index"] for line in out] == list(range(30))


def test_cli_reports_bad_input_without_traceback(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**_small_file(), "format": "x86"}))
    proc = subprocess.run([sys.executable, "-m", "sw_model", "run", str(bad)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: format:")
    assert "Traceback" not in proc.stderr
