"""``python -m hw run`` replays a vector file and prints exactly what
``python -m sw_model run`` prints; ``--waves`` writes a waveform."""

import json
import subprocess
import sys

from sw_model.vectors import random_vectors, save_vectors


def _run(*args):
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_run_matches_model_output(tmp_path):
    for name, ad in (("ept5", "off"), ("npt4", "hardware"), ("sv39x4", "fault")):
        path = tmp_path / f"{name}.json"
        save_vectors(random_vectors(name, 5, 150, ad=ad), path)
        model = _run("-m", "sw_model", "run", str(path))
        rtl = _run("-m", "hw", "run", str(path), "--sim", "amaranth")
        assert model.splitlines() == rtl.splitlines()
        assert len(rtl.splitlines()) == 150


def test_waves_and_generate(tmp_path):
    path = tmp_path / "v.json"
    save_vectors(random_vectors("sv57x4", 2, 20), path)
    waves = tmp_path / "w.vcd"
    _run("-m", "hw", "run", str(path), "--waves", str(waves), "-o", str(tmp_path / "out"))
    assert waves.stat().st_size > 1000 and "axi" in waves.read_text()
    assert "req" in (tmp_path / "w.gtkw").read_text()
    _run("-m", "hw", "generate", "--config", "default", "-o", str(tmp_path / "build"))
    assert (tmp_path / "build" / "tdpwalk_walker.v").exists()


def test_bad_vector_file_is_an_error(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"tdpwalk_vectors": 1, "format": "ept9"}')
    done = subprocess.run([sys.executable, "-m", "hw", "run", str(path)],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "format" in done.stderr


def test_cocotb_replay_cli_rejects_bad_input_in_one_line(tmp_path):
    """The cocotb replay command (the Verilog under Icarus or Verilator) names a bad
    vector file in one line and exits 2 before building anything."""
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    done = subprocess.run([sys.executable, "-m", "cocotb_tests.replay_cli", str(bad)],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr


def test_cocotb_replay_cli_prints_the_rtls_answers(tmp_path, monkeypatch, capsys):
    """The walker's own answers are printed whatever the model says: by default they are
    not compared; with --check a difference is reported after them and exits 1."""
    from cocotb_tests import replay_cli
    from cocotb_tests.runner import ReplayMismatch
    path = tmp_path / "v.json"
    save_vectors(random_vectors("ept4", 1, 2), path)
    answers = [{"index": 0, "ok": True}, {"index": 1, "ok": False}]
    checks = []

    def replay(vectors, sim, *, check, **kwargs):
        checks.append(check)
        if check:
            raise ReplayMismatch("1 mismatches, first at access 1", answers)
        return answers
    monkeypatch.setattr(replay_cli, "replay", replay)
    monkeypatch.setenv("TDPWALK_BUILD", str(tmp_path / "build"))
    for argv, status in (([], 0), (["--check"], 1)):
        assert replay_cli.main([str(path), *argv]) == status
        out = capsys.readouterr()
        assert [json.loads(line) for line in out.out.splitlines()] == answers
        errors = [line for line in out.err.splitlines() if line.startswith("error: ")]
        assert len(errors) == status and all("first at access 1" in e for e in errors)
    assert checks == [False, True]
