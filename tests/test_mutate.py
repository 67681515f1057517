"""``make mutate``: the catalogue fits the code, a planted bug is found and named, a bug
nothing catches is reported as a survivor, and bad input is a one-line error."""

import json
import pathlib
import subprocess
import sys

import pytest

import mutate.__main__ as runner
from mutate.catalogue import CATALOGUE, CatalogueError, Mutant, check

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_catalogue_applies_to_the_checkout():
    """Every entry's text occurs once in its file, across all four areas, 30 or more."""
    check(REPO)
    assert len(CATALOGUE) >= 30
    assert {m.area for m in CATALOGUE} == {"rtl", "model", "scoreboard", "harness"}


def test_an_entry_that_no_longer_fits_is_an_error(tmp_path):
    (tmp_path / "f.py").write_text("x = 1\nx = 1\n")
    mutant = Mutant("twice", "model", "f.py", "x = 1\n", "x = 2\n", "a bug", ("t",))
    with pytest.raises(CatalogueError, match="2 times, not once"):
        mutant.apply(tmp_path)


def test_a_mutant_is_caught_and_named(tmp_path, capsys):
    assert runner.main(["--only", "recycled-table-not-zeroed", "--no-baseline",
                        "--jobs", "1", "--work", str(tmp_path)]) == 0
    [result] = json.loads((tmp_path / "report.json").read_text())
    assert result["caught"] and result["scope"] == "named"
    assert result["test"] == "tests/test_memory.py::test_freed_tables_are_reused_and_zeroed"
    assert "assert" in result["message"].lower()
    assert "score: 1 of 1" in capsys.readouterr().out
    assert not (tmp_path / "trees" / "recycled-table-not-zeroed").exists()


def test_a_survivor_fails_the_run(tmp_path, capsys, monkeypatch):
    """A mutant that neither its tests nor the whole suite notices: exit status 1."""
    calls = []
    monkeypatch.setattr(runner, "_pytest", lambda work, tree, args, timeout, jobs=1:
                        calls.append(args) or ("passed", "", "", 1.0))
    assert runner.main(["--only", "recycled-table-not-zeroed", "--no-baseline",
                        "--jobs", "1", "--work", str(tmp_path)]) == 1
    assert calls[1] == []           # the named tests, then the whole fast suite
    out = capsys.readouterr().out
    assert "SURVIVED (passed)" in out and "score: 0 of 1" in out


@pytest.mark.parametrize("args, message", [
    (["--only", "no-such-bug"],
     "error: python -m mutate: unknown mutant(s) no-such-bug (see --list)"),
    (["--jobs", "0"], "error: python -m mutate: argument --jobs: must be at least 1, got 0"),
])
def test_bad_input_is_one_line(args, message):
    done = subprocess.run([sys.executable, "-m", "mutate", *args], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert message in done.stderr
