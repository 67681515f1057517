"""``tdpwalk``: one command over the RTL's and the co-simulation's command lines."""

import json
import subprocess
import sys

from conftest import run_cli
from sw_model.vectors import random_vectors, save_vectors

from tdpwalk.cli import COMMANDS, main


def _run(argv, capsys):
    return run_cli(main, argv, capsys)


def test_help_lists_every_command(capsys):
    status, out, err = _run(["-h"], capsys)
    assert status == 0 and err == ""
    for name in COMMANDS:
        assert f"  {name} " in out


def test_bad_commands_are_one_line(capsys):
    for argv, word in (([], "a command is required"), (["frobnicate"], "'frobnicate'"),
                       (["generate", "--config", "num_vms=3"], "num_vms"),
                       (["run", "missing.json", "--sim", "modelsim"], "--sim")):
        status, out, err = _run(argv, capsys)
        assert status == 2 and out == "", argv
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and word in err, err


def test_generate_and_run_on_amaranth(tmp_path, capsys):
    status, _, err = _run(["generate", "-o", str(tmp_path)], capsys)
    assert status == 0, err
    assert "module tdpwalk_walker(" in (tmp_path / "tdpwalk_walker.v").read_text()
    vectors = tmp_path / "vectors.json"
    save_vectors(random_vectors("npt4", 1, 4), vectors)
    status, out, err = _run(["run", str(vectors)], capsys)
    assert status == 0, err
    assert len([json.loads(line) for line in out.splitlines()]) == 4


def test_python_dash_m_form():
    done = subprocess.run([sys.executable, "-m", "tdpwalk", "-h"], capture_output=True,
                          text=True)
    assert done.returncode == 0 and "demo" in done.stdout, done.stderr
