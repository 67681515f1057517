"""The pytest plugin inside a regression task (``pytest -p cocotb_tests.regress_record``).

``make regress`` runs each task (:mod:`cocotb_tests.regress_tasks`) as a pytest process
with this plugin, which talks to the task through files named by environment variables:

- ``TDPWALK_REGRESS_COLLECT=FILE``: after collection, write every selected test (node id,
  file, function, parameters) to FILE as JSON; the regression's description is built
  from that list.
- ``TDPWALK_REGRESS_RECORD=FILE``: append one JSON line per finished test: its outcome,
  its duration, the last line of a failure, and every MMU co-simulation run it made
  (simulator, scenario or format, translations, mismatches, what the scoreboard checked
  and accepted, seconds, seed), recorded by wrapping :func:`cocotb_tests.runner.run_mmu`.
  A run fails when the simulator run does, or when what its scoreboard checked and
  accepted breaks the bounds (:func:`cocotb_tests.report.bound_problems`: no PTE read
  checked, no A/D update checked with hardware A/D, too many stale hits or raced faults
  accepted). A line is written as soon as its test ends, so a task killed at its time
  limit still reports the tests it finished. The process also kills itself (and the
  simulators it started) when the worker that started it dies, instead of running on
  as an orphan.
"""

import json
import os
import signal
import threading
import time

import pytest

from .report import TRAFFIC_COUNTS, bound_problems

COLLECT = "TDPWALK_REGRESS_COLLECT"
RECORD = "TDPWALK_REGRESS_RECORD"

_runs = []          # MMU runs of the running test
_reports = {}       # node id -> {"outcome", "seconds", "message"} while its phases run


def _row(item):
    """A table row name: the scenario, or ``stream <format>``."""
    if item.get("scenario") == "stream":
        return f"stream {item.get('format')}"
    return item.get("scenario", "?")


def _problems(data):
    """For each result of one simulator run, why the bounds fail it (empty: they do not).
    Judged are the results that report what their scoreboard checked: the scenarios,
    the fault tests and the streams (a speed bench's batches have no traffic checker)."""
    judged = [i for i, item in enumerate(data) if "pte_reads_checked" in item]
    why = [[] for _ in data]
    for index, message in bound_problems([data[i] for i in judged]):
        why[judged[index]].append(message)
    return why


def _recording(run_mmu):
    """``run_mmu`` that appends each of its runs to the running test's record."""
    def recorded(sim, scenarios, *args, **kwargs):
        wall = time.monotonic()
        try:
            data = run_mmu(sim, scenarios, *args, **kwargs)
        except AssertionError:
            _runs.append({"sim": sim, "row": ",".join(scenarios), "failed": True,
                          "seconds": time.monotonic() - wall, "seed": kwargs.get("seed", 0)})
            raise
        for item, problems in zip(data, _problems(data)):
            _runs.append({"sim": sim, "row": _row(item), "failed": bool(problems),
                          "problems": problems,
                          "translations": item.get("translations", item.get("responses", 0)),
                          "mismatches": item.get("mismatches", 0),
                          **{name: item.get(name, 0) for name in TRAFFIC_COUNTS},
                          "seconds": item.get("seconds", 0.0), "seed": item.get("seed")})
        return data

    recorded.recording = True
    return recorded


def _die_with_parent():
    """Kill this process group when the parent (the task's worker) goes away."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, daemon=True, name="regress-parent-watch").start()


def pytest_configure(config):
    """Wrap run_mmu before the test modules import it."""
    if not os.environ.get(RECORD):
        return
    from . import runner
    if not getattr(runner.run_mmu, "recording", False):
        runner.run_mmu = _recording(runner.run_mmu)
    if os.getpgrp() == os.getpid():     # started in its own group, as tasks are
        _die_with_parent()


def pytest_collection_finish(session):
    path = os.environ.get(COLLECT)
    if not path:
        return
    items = []
    for item in session.items:
        callspec = getattr(item, "callspec", None)
        params = {k: v if isinstance(v, (int, str)) else str(v)
                  for k, v in (callspec.params.items() if callspec else ())}
        items.append({"node": item.nodeid, "file": item.nodeid.split("::")[0],
                      "function": getattr(item, "originalname", item.name), "params": params})
    with open(path, "w") as f:
        json.dump({"rootdir": str(session.config.rootpath), "items": items}, f)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    _runs.clear()
    yield


def pytest_runtest_logreport(report):
    """Merge the phases of a test: failed if any failed, skipped if one skipped."""
    if not os.environ.get(RECORD):
        return
    seen = _reports.setdefault(report.nodeid, {"outcome": "passed", "seconds": 0.0,
                                               "message": ""})
    if report.when == "call":
        seen["seconds"] = report.duration
    if report.failed or (report.skipped and seen["outcome"] == "passed"):
        seen["outcome"] = report.outcome
        seen["message"] = _message(report.longrepr)


def _message(longrepr):
    """One line: the exception's message, or the reason of a skip."""
    if isinstance(longrepr, tuple):
        return str(longrepr[-1])[:300]
    crash = getattr(longrepr, "reprcrash", None)
    text = crash.message if crash else str(longrepr or "")
    return " ".join(text.split())[:300]


def pytest_runtest_logfinish(nodeid, location):
    path = os.environ.get(RECORD)
    if not path:
        return
    line = dict(_reports.pop(nodeid), node=nodeid, runs=list(_runs))
    _runs.clear()
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")
