"""The regression's description: its units of work, and how one of them runs.

The regression is every test marked ``slow`` (``pytest -m slow``): the long
co-simulation seeds on Icarus and Verilator, the scoreboarded streams, the fault
injection, the formal properties at full depth, the walker fuzzing and the model's long
property tests. :func:`plan` collects them and groups them into :class:`Task` s, one
per test function × its other parameters (simulator, scenario or format) × a range of
seeds (:data:`SEEDS_PER_TASK`; one seed unless listed). A task is independent of every
other and reproducible from its node ids and the regression's settings
(:func:`settings`: ``REGRESS_COUNT`` and the ``TDPWALK_*`` variables, with the fuzzing
seed fixed).

:func:`run_task` runs one task where it is called (a Dask worker): the simulator builds
it needs (once per worker process and configuration), then its tests in a pytest process
of their own with :mod:`cocotb_tests.regress_record`, killed with everything it
started at the time limit. It returns the task's result: outcome, per-test records
(MMU runs with translations and mismatches), the failures with their seeds and the
command that replays them.
"""

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import pathlib
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time

__all__ = ["Task", "plan", "settings", "given_settings", "run_task", "failed_result",
           "stop_tasks", "replay_command", "PlanError"]

REPO = pathlib.Path(__file__).resolve().parent.parent
LOGS = REPO / "build" / "regress" / "logs"

#: Seeds per task for the slow tests that take many short seeds (a task per seed would
#: spend more time starting pytest than testing).
SEEDS_PER_TASK = {"test_random_vectors_regress": 10, "test_random_vectors_many_seeds": 5}

#: Roughly the seconds one test of a function (``function[sim]``: on that simulator)
#: takes on one idle core at the default settings, for running the longest tasks first
#: when no earlier run measured them (:func:`plan`'s ``durations``); others count 20 s.
#: The ETA is calibrated as results arrive, so these need only be right relative to
#: each other.
SECONDS_PER_TEST = {"test_fuzz_walker_long": 700, "test_stream_million": 500,
                    "test_random_vectors_regress": 25, "test_scenarios_long[icarus]": 150,
                    "test_faults_long[icarus]": 150}
DEFAULT_SECONDS = 20

#: The tests' own settings that every task gets, and that a replay needs.
SETTING_PREFIXES = ("TDPWALK_", "REGRESS_COUNT")

_PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           "-p", "cocotb_tests.regress_record"]


class PlanError(Exception):
    """The selection collects no test, or pytest cannot collect it; a one-line message."""


@dataclasses.dataclass(frozen=True)
class Task:
    """One unit of work.

    Members
    -------
    id : str
        Stable name: the node id, or for a seed range ``FILE::FUNCTION[PARAMS] seeds A-B``.
    nodes : tuple of str
        pytest node ids, relative to ``rootdir``.
    rootdir : str
        Where pytest runs.
    sims : tuple of str
        Simulators whose MMU build its tests co-simulate on (their ``sim`` parameter).
    seeds : tuple of int
        The seeds of its tests, where they take one.
    weight : float
        Expected seconds on one core.
    """
    id: str
    nodes: tuple
    rootdir: str
    sims: tuple = ()
    seeds: tuple = ()
    weight: float = DEFAULT_SECONDS


def given_settings(environ=os.environ):
    """The tests' settings set in ``environ`` (``$TDPWALK_BUILD`` says where files go,
    not how the tests run)."""
    from .runner import BUILD_VARIABLE
    return {k: v for k, v in environ.items()
            if k.startswith(SETTING_PREFIXES) and k != BUILD_VARIABLE}


def settings(environ=os.environ):
    """The tests' settings from ``environ``; the fuzzing seed is drawn once here when
    unset, so every task of a regression (and its replay) fuzzes from the same one."""
    found = given_settings(environ)
    found.setdefault("TDPWALK_FUZZ_SEED", str(random.SystemRandom().randrange(1 << 32)))
    return dict(sorted(found.items()))


def plan(pytest_args=("-m", "slow"), only="", durations=None):
    """Collect the tests selected by ``pytest_args`` (and ``-k only``) into tasks, the
    longest first: by ``durations`` (task id -> seconds an earlier run took) where it
    has the task, else by :data:`SECONDS_PER_TEST`. A few long tasks started last would
    leave the other workers idle at the end."""
    selection = [*pytest_args, *(["-k", only] if only else [])]
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "collected.json"
        done = subprocess.run([*_PYTEST, "--collect-only", *selection], cwd=REPO,
                              capture_output=True, text=True,
                              env=dict(os.environ, TDPWALK_REGRESS_COLLECT=str(out)))
        if done.returncode not in (0, 5) or not out.exists():
            lines = [l for l in (done.stdout + done.stderr).splitlines() if "ERROR" in l]
            raise PlanError(f"pytest cannot collect {shlex.join(selection)}: "
                            f"{(lines or ['exit status %d' % done.returncode])[0].strip()}")
        collected = json.loads(out.read_text())
    if not collected["items"]:
        raise PlanError(f"no test selected by {shlex.join(selection)}")
    tasks = _group(collected["items"], collected["rootdir"])
    if durations:
        tasks = (dataclasses.replace(t, weight=durations.get(t.id, t.weight)) for t in tasks)
    return sorted(tasks, key=lambda t: -t.weight)


def _group(items, rootdir):
    """Tasks from collected tests: one per function and non-seed parameters, its seeds
    cut into ranges of SEEDS_PER_TASK."""
    groups = {}
    for item in items:
        params = {k: v for k, v in item["params"].items() if k != "seed"}
        groups.setdefault((item["file"], item["function"], json.dumps(params)), []).append(item)
    for (file, function, params), members in groups.items():
        params = json.loads(params)
        sim = params.get("sim")
        seconds = SECONDS_PER_TEST.get(f"{function}[{sim}]",
                                       SECONDS_PER_TEST.get(function, DEFAULT_SECONDS))
        size = SEEDS_PER_TASK.get(function, 1)
        for start in range(0, len(members), size):
            chunk = members[start:start + size]
            seeds = tuple(m["params"]["seed"] for m in chunk if "seed" in m["params"])
            name = chunk[0]["node"]
            if len(chunk) > 1:
                shown = f"[{'-'.join(map(str, params.values()))}]" if params else ""
                name = f"{file}::{function}{shown} seeds {seeds[0]}-{seeds[-1]}"
            yield Task(name, tuple(m["node"] for m in chunk), rootdir,
                       (sim,) if sim else (), seeds, len(chunk) * seconds)


def replay_command(nodes, task_settings):
    """The shell command that reruns ``nodes`` with the regression's settings."""
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in task_settings.items())
    return f"{env} tools/with-env python -m pytest {' '.join(map(shlex.quote, nodes))}"


# -- on a worker ----------------------------------------------------------------------

_builds = {}
_builds_lock = threading.Lock()


def _prepared_builds(sims):
    """Build the MMU for each simulator once per worker process: ``{sim: build id}``, the
    id naming the build directory and a hash of the Verilog it was built from."""
    from .runner import MMU_TOP, build_mmu
    with _builds_lock:
        for sim in sims:
            if sim not in _builds:
                with contextlib.redirect_stdout(io.StringIO()):
                    _, build_dir = build_mmu(sim)
                verilog = hashlib.sha256((build_dir / f"{MMU_TOP}.v").read_bytes())
                _builds[sim] = f"{build_dir.name}/{verilog.hexdigest()[:12]}"
        return {sim: _builds[sim] for sim in sims}


def _worker_name():
    try:
        from distributed import get_worker
        worker = get_worker()
        return str(worker.name) if worker.name is not None else worker.address
    except ValueError:          # called outside a worker
        return None


def run_task(task, task_settings, timeout, regression=""):
    """Run ``task`` here; its result (a JSON-ready dict, see the module's docstring).
    ``regression`` names the regression, for :func:`stop_tasks`."""
    start = time.monotonic()
    try:
        builds = _prepared_builds(task.sims)
    except Exception as e:      # a missing simulator or a failed build fails the task
        return failed_result(task, task_settings,
                             f"build: {type(e).__name__}: {e}".splitlines()[0][:300])
    tests, log_path = _run_tests(task, task_settings, timeout, regression)
    result = _result(task, task_settings, tests, log_path, builds=builds,
                     seconds=time.monotonic() - start)
    if result["status"] == "passed":
        log_path.unlink()
    return result


def failed_result(task, task_settings, message):
    """The result of a task that could not run: each of its tests failed with
    ``message``."""
    return _result(task, task_settings, _unfinished(task, (), message), None, builds={},
                   seconds=0.0)


def _result(task, task_settings, tests, log_path, **more):
    failures = [{"node": t["node"], "seeds": _seeds_of(task, t["node"]),
                 "message": t["message"], "log": str(log_path) if log_path else None,
                 "replay": replay_command([t["node"]], task_settings)}
                for t in tests if t["outcome"] == "failed"]
    return {"task": task.id, "status": "failed" if failures else "passed",
            "worker": _worker_name(), "tests": tests, "failures": failures, **more}


_running = {}      # regression -> its pytest processes running in this worker


def stop_tasks(regression):
    """Kill the running tasks of ``regression`` in this process (a worker), with
    everything they started; how many."""
    procs = _running.pop(regression, set())
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return len(procs)


def _run_tests(task, task_settings, timeout, regression):
    """The task's tests in a pytest process of their own, killed with everything it
    started at ``timeout`` seconds; ``(test records, log path)``."""
    LOGS.mkdir(parents=True, exist_ok=True)
    # Named by regression and task: two regressions may run in one checkout at once.
    name = f"{regression or 'local'}-{hashlib.sha256(task.id.encode()).hexdigest()[:12]}"
    log_path, record = LOGS / f"{name}.log", LOGS / f"{name}.record"
    record.unlink(missing_ok=True)
    env = dict(os.environ, **task_settings, TDPWALK_REGRESS_RECORD=str(record),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO),
                                                        os.environ.get("PYTHONPATH")])))
    with open(log_path, "w") as log:
        proc = subprocess.Popen([*_PYTEST, *task.nodes], cwd=task.rootdir, env=env,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        _running.setdefault(regression, set()).add(proc)
        try:
            proc.wait(timeout)
            message = f"no result (pytest exited with status {{}}; see {log_path})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            message = f"timed out: no result within the task's limit of {timeout:g} s"
        finally:
            _running.get(regression, set()).discard(proc)
    tests = [json.loads(l) for l in record.read_text().splitlines()] if record.exists() else []
    record.unlink(missing_ok=True)
    tests += _unfinished(task, {t["node"] for t in tests}, message.format(proc.returncode))
    return tests, log_path


def _unfinished(task, finished, message):
    """A failed test record, saying ``message``, for each test of the task not finished."""
    return [{"node": node, "outcome": "failed", "seconds": 0.0, "message": message,
             "runs": [], "sim": task.sims[0] if task.sims else "python"}
            for node in task.nodes if node not in finished]


def _seeds_of(task, node):
    if len(task.seeds) == len(task.nodes):
        return [task.seeds[task.nodes.index(node)]]
    return list(task.seeds)
