"""`make regress` on Dask (cocotb_tests/regress_cluster.py): a scheduler and two workers
started with the `dask` command on 127.0.0.1, one of them killed in the middle of a
task; an interrupted regression resumed; a task past its time limit; a scheduler that
goes away; bad input. The regressions are small: three short scoreboarded streams, or
tests written here that sleep. Also the summary table and the record's verdict on each
co-simulation run, on results made up here."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
DASK = pathlib.Path(sys.executable).parent / "dask"
STREAMS = ["--only", "test_stream_million and (ept4 or npt4 or sv39x4)"]
STREAM_ENV = {"REGRESS_COUNT": "2000"}


def regress(*args, env=None, wait=True, **kwargs):
    """``python -m cocotb_tests.regress_cluster ARGS``: the finished process, or the
    running one."""
    proc = subprocess.Popen([sys.executable, "-m", "cocotb_tests.regress_cluster", *args],
                            cwd=REPO, env=dict(os.environ, **(env or {})), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)
    if not wait:
        return proc
    proc.stdout_text, proc.stderr_text = proc.communicate(timeout=900)
    return proc


def results_of(path):
    """The task lines of a results file (the header dropped)."""
    return [json.loads(l) for l in path.read_text().splitlines()[1:]]


def summary(stdout):
    """The summary table (its last line the totals) without its time column."""
    lines = stdout.split("== tdpwalk regression summary ==")[1].strip().splitlines()
    table = lines[:next(i for i, l in enumerate(lines) if l.startswith("total")) + 1]
    return [l if l.startswith("-") else l.rsplit(None, 1)[0] for l in table]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, seconds, what):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"no {what} after {seconds} s"
        time.sleep(0.2)


def kill_group(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture
def dask_cluster():
    """``dask scheduler`` and a ``start(name)`` for ``dask worker`` s, all on 127.0.0.1;
    everything killed afterwards."""
    assert DASK.exists(), f"{DASK} is missing (distributed is a dependency of tdpwalk)"
    address = f"tcp://127.0.0.1:{free_port()}"
    procs = []

    def spawn(*args):
        proc = subprocess.Popen([str(DASK), *args], cwd=REPO, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        return proc

    scheduler = spawn("scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1],
                      "--no-dashboard", "--no-show")
    from distributed import Client
    client = Client(address, timeout=60)

    def start(name):
        return spawn("worker", address, "--host", "127.0.0.1", "--name", name,
                     "--nthreads", "1", "--nworkers", "1", "--no-dashboard")

    try:
        yield address, client, start, scheduler
    finally:
        client.close()
        for proc in procs:
            kill_group(proc)


def test_killed_worker_task_reruns_and_counts_once(dask_cluster, tmp_path):
    address, client, start, _ = dask_cluster
    workers = {name: start(name) for name in ("w1", "w2")}
    client.wait_for_workers(2, timeout=120)
    names = {a: w["name"] for a, w in client.scheduler_info()["workers"].items()}
    out = tmp_path / "cluster.jsonl"
    proc = regress("--cluster", address, "--results", str(out), *STREAMS, env=STREAM_ENV,
                   wait=False)
    # Kill w1 while it runs a task: its process group (nanny and worker) at once.
    wait_for(lambda: proc.poll() is not None or (
        any(client.processing().values())
        and any(names.get(a) == "w1" for a, keys in client.processing().items() if keys)),
        600, "task on w1")
    assert proc.poll() is None, "the regression ended before w1 ran a task:\n" + \
        "".join(proc.communicate())
    kill_group(workers["w1"])
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stdout + stderr
    assert "workers 2 -> 1" in stdout

    local = tmp_path / "local.jsonl"
    reference = regress("--jobs", "1", "--results", str(local), *STREAMS, env=STREAM_ENV)
    assert reference.returncode == 0, reference.stdout_text + reference.stderr_text
    assert summary(stdout) == summary(reference.stdout_text)
    total = summary(stdout)[-1].split()
    assert total[:5] == ["total", "3", "0", "6,000", "0"]
    # Every stream's scoreboard checked PTE reads, AtomicCompares (ept4 and npt4 have a
    # VM whose hardware sets A/D bits) and walked answers for the A/D updates they owe.
    assert all(int(n.replace(",", "")) > 0 for n in total[5:8]), total
    # Every task once (none lost, none counted twice); the tasks after the kill on w2.
    tasks = [r["task"] for r in results_of(out)]
    assert sorted(tasks) == sorted(r["task"] for r in results_of(local)) and len(tasks) == 3
    assert results_of(out)[-1]["worker"] == "w2"
    assert len({r["builds"]["verilator"] for r in results_of(out)}) == 1


def test_builds_once_per_worker_process(monkeypatch, tmp_path):
    """A worker builds each simulator's MMU for its first task that needs it, then
    reuses it; the build id names the directory and the Verilog's hash."""
    from cocotb_tests import regress_tasks, runner
    made = []

    def build_mmu(sim):
        made.append(sim)
        (tmp_path / sim).mkdir()
        (tmp_path / sim / f"{runner.MMU_TOP}.v").write_text(f"module {sim}; endmodule")
        return None, tmp_path / sim

    monkeypatch.setattr(runner, "build_mmu", build_mmu)
    monkeypatch.setattr(regress_tasks, "_builds", {})
    ids = [regress_tasks._prepared_builds(sims) for sims in
           [("icarus",), ("icarus",), (), ("verilator", "icarus"), ("verilator",)]]
    assert made == ["icarus", "verilator"]
    assert ids[0] == ids[1] == {"icarus": ids[3]["icarus"]} and ids[2] == {}
    (icarus_dir, icarus_hash), (verilator_dir, verilator_hash) = \
        (ids[3][sim].split("/") for sim in ("icarus", "verilator"))
    assert (icarus_dir, verilator_dir) == ("icarus", "verilator")
    assert icarus_hash != verilator_hash       # two different Verilog texts


def write_tests(tmp_path, body):
    """A test file in ``tmp_path`` (its own pytest root) for a regression of its tests."""
    path = tmp_path / "test_sleepy.py"
    path.write_text(textwrap.dedent(body))
    return str(path)


def test_interrupt_and_resume(tmp_path):
    tests = write_tests(tmp_path, """\
        import time, pytest

        @pytest.mark.parametrize("seed", range(4))
        def test_sleep(seed):
            time.sleep(2)
    """)
    out = tmp_path / "results.jsonl"
    proc = regress("--jobs", "1", "--results", str(out), tests, wait=False)
    wait_for(lambda: out.exists() and len(out.read_text().splitlines()) >= 2, 300,
             "first result")
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout + stderr
    assert "RESUME=1" in stderr
    before = out.read_text()
    finished = len(before.splitlines()) - 1
    assert 1 <= finished < 4

    resumed = regress("--jobs", "1", "--results", str(out), "--resume", "1", tests)
    assert resumed.returncode == 0, resumed.stdout_text + resumed.stderr_text
    assert f"resuming {out}: {finished} of 4 tasks already finished" in resumed.stdout_text
    assert resumed.stdout_text.count("] passed") == 4 - finished
    assert out.read_text().startswith(before)      # appended, nothing redone
    assert sorted(r["task"] for r in results_of(out)) == \
        [f"test_sleepy.py::test_sleep[{i}]" for i in range(4)]
    assert summary(resumed.stdout_text)[-1].split() == ["total", "4", "0", "0", "0"] + \
        ["0"] * 5


def test_hung_task_fails_with_its_seed(tmp_path):
    pid_file = tmp_path / "hung.pid"
    tests = write_tests(tmp_path, f"""\
        import os, time, pytest

        def test_quick():
            pass

        @pytest.mark.parametrize("seed", [7])
        def test_hangs(seed):
            open({str(pid_file)!r}, "w").write(str(os.getpid()))
            time.sleep(600)
    """)
    out = tmp_path / "results.jsonl"
    start = time.monotonic()
    proc = regress("--jobs", "2", "--timeout", "8", "--results", str(out), tests)
    assert proc.returncode == 1, proc.stdout_text + proc.stderr_text
    assert time.monotonic() - start < 120
    failed = [l for l in proc.stdout_text.splitlines() if l.startswith("FAILED")]
    assert failed == ["FAILED test_sleepy.py::test_hangs[7] (seed 7): timed out: no "
                      "result within the task's limit of 8 s"], proc.stdout_text
    assert "replay: TDPWALK_FUZZ_SEED=" in proc.stdout_text
    assert "tools/with-env python -m pytest 'test_sleepy.py::test_hangs[7]'" \
        in proc.stdout_text
    assert "2 tasks: 1 passed, 1 failed" in proc.stdout_text
    with pytest.raises(ProcessLookupError):    # killed at the limit
        os.kill(int(pid_file.read_text()), 0)


def test_lost_scheduler_is_reported(dask_cluster, tmp_path):
    address, client, start, scheduler = dask_cluster
    started = tmp_path / "started"
    tests = write_tests(tmp_path, f"""\
        import time

        def test_long():
            open({str(started)!r}, "w").close()
            time.sleep(120)
    """)
    start("w1")
    client.wait_for_workers(1, timeout=120)
    proc = regress("--cluster", address, "--results", str(tmp_path / "r.jsonl"), tests,
                   wait=False)
    wait_for(started.exists, 300, "task start")
    kill_group(scheduler)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stdout + stderr
    assert f"error: lost the connection to the Dask scheduler at {address}" in stderr
    assert "RESUME=1" in stderr


@pytest.mark.parametrize("args, env, message", [
    (["--jobs", "0"], {}, "error: JOBS='0' is not a positive integer"),
    (["--jobs", "two"], {}, "error: JOBS='two' is not a positive integer"),
    (["--resume", "yes"], {}, "error: RESUME='yes': use RESUME=1 to resume"),
    (["--timeout", "-5"], {}, "error: REGRESS_TIMEOUT='-5' is not a positive number"),
    (["--cluster", "127.0.0.1:8786"], {}, "error: CLUSTER='127.0.0.1:8786' is not a "
                                          "scheduler address tcp://HOST:PORT"),
    (["--cluster", "tcp://127.0.0.1:{port}"], {}, "error: cannot reach the Dask scheduler "
                                                  "at tcp://127.0.0.1:{port} within 10 s"),
    (["--only", "no_such_test", "--jobs", "1"], {},
     "error: no test selected by -m slow -k no_such_test"),
    (["--resume", "1", "--results", "{results}", "--jobs", "1", *STREAMS],
     {"REGRESS_COUNT": "5"}, "error: REGRESS_COUNT=5 differs from the resumed regression's "
                             "REGRESS_COUNT=2000"),
])
def test_bad_input_is_one_line(args, env, message, tmp_path):
    port, results = free_port(), tmp_path / "results.jsonl"
    from cocotb_tests.regress_results import ResultsFile
    ResultsFile.start(results, ["tests/test_regress.py::test_stream_million[verilator-ept4]",
                                "tests/test_regress.py::test_stream_million[verilator-npt4]",
                                "tests/test_regress.py::test_stream_million[verilator-sv39x4]"],
                      {"REGRESS_COUNT": "2000"})
    proc = regress(*(a.format(port=port, results=results) for a in args), env=env)
    assert proc.returncode == 2, proc.stdout_text + proc.stderr_text
    assert proc.stderr_text.count("\n") == 1, proc.stderr_text
    assert proc.stderr_text.startswith(message.format(port=port)), proc.stderr_text


def test_resume_drops_a_line_cut_short(tmp_path):
    """A crash in the middle of a write leaves half a line: resuming drops it (that task
    runs again) and appends after the last whole line."""
    from cocotb_tests.regress_results import ResultsFile
    path = tmp_path / "results.jsonl"
    results = ResultsFile.start(path, ["a", "b"], {})
    results.append({"task": "a", "status": "passed", "tests": [], "failures": []})
    whole = path.read_text()
    with open(path, "a") as f:
        f.write('{"task": "b", "sta')
    resumed = ResultsFile.resume(path)
    assert list(resumed.results) == ["a"] and resumed.pending() == ["b"]
    assert path.read_text() == whole


def test_order_follows_the_last_runs_durations(tmp_path):
    """Tasks run the longest first by what the last run measured (passed tasks only),
    else by the estimates; an unreadable results file is no history."""
    from cocotb_tests.regress_results import ResultsFile, durations
    from cocotb_tests.regress_tasks import plan
    tests = write_tests(tmp_path, """\
        import pytest

        @pytest.mark.parametrize("n", range(3))
        def test_n(n):
            pass
    """)
    ids = [f"test_sleepy.py::test_n[{n}]" for n in range(3)]
    assert [t.id for t in plan([tests])] == ids         # equal estimates: collection order
    path = tmp_path / "results.jsonl"
    results = ResultsFile.start(path, ids, {})
    results.append({"task": ids[0], "status": "passed", "seconds": 1.0})
    results.append({"task": ids[1], "status": "failed", "seconds": 900.0})
    results.append({"task": ids[2], "status": "passed", "seconds": 30.0})
    assert durations(path) == {ids[0]: 1.0, ids[2]: 30.0}
    order = plan([tests], durations=durations(path))
    assert [(t.id, t.weight) for t in order] == [(ids[2], 30.0), (ids[1], 20), (ids[0], 1.0)]
    path.write_text("not json\n{")
    assert durations(path) == {} and durations(tmp_path / "none.jsonl") == {}


def test_summary_counts_mismatches_and_failures():
    """The table adds each run's translations, mismatches and what its scoreboard
    checked and accepted in its simulator and format, lists every failure with its
    seeds and replay, and totals them."""
    from cocotb_tests.regress_results import table, totals
    run = {"sim": "verilator", "row": "stream ept4", "translations": 1000, "seconds": 2.0,
           "pte_reads_checked": 700, "atomic_compares_checked": 40, "ad_done_checked": 9,
           "stale_hits_allowed": 5, "raced_faults": 1}
    results = [{"tests": [{"node": "t.py::a", "outcome": "passed", "seconds": 2.0,
                           "runs": [dict(run, failed=False, mismatches=0)]},
                          {"node": "t.py::b", "outcome": "failed", "seconds": 2.0,
                           "runs": [dict(run, failed=True, mismatches=3)]}],
                "failures": [{"node": "t.py::b", "seeds": [7], "message": "3 mismatches",
                              "replay": "TDPWALK_FUZZ_SEED=1 pytest t.py::b"}]}]
    assert dict(totals(results)) == {"runs": 2, "failed": 1, "translations": 2000,
                                     "mismatches": 3}
    lines = table(results)
    row = next(l for l in lines if l.startswith("verilator"))
    assert row.split()[-10:] == ["2", "1", "2,000", "3", "1,400", "80", "18", "10", "2", "4"]
    assert lines[-2:] == ["FAILED t.py::b (seed 7): 3 mismatches",
                          "  replay: TDPWALK_FUZZ_SEED=1 pytest t.py::b"]


def _result(scenario, **counts):
    """A co-simulation run's result that keeps every bound, but ``counts``."""
    return {"scenario": scenario, "seed": 3, "translations": 100, "mismatches": 0,
            "checked": 100, "pte_reads_checked": 80, "atomic_compares_checked": 20,
            "ad_done_checked": 4, "stale_hits_allowed": 10, "raced_faults": 1,
            "stale_kinds": {"split": 10}, "ad_modes": [["ept4", "hardware"]],
            "seconds": 1.0, **counts}


@pytest.mark.parametrize("results, failed", [
    ([_result("boot")], [[]]),
    ([_result("boot", pte_reads_checked=0)], [["boot (seed 3): no PTE read checked"]]),
    ([_result("boot", raced_faults=2), _result("mixed", stale_hits_allowed=51)],
     [["boot (seed 3): 2 raced faults accepted in 100 answers checked, above 1%"],
      ["mixed (seed 3): 51 stale hits accepted in 100 answers checked, above 50% "
       "({'split': 10})"]]),
    ([_result("steady", atomic_compares_checked=0),
      _result("aging", atomic_compares_checked=0, ad_modes=[["sv48x4", "hardware"]])],
     [["steady (seed 3): no AtomicCompare checked, with x86 hardware A/D "
       "([['ept4', 'hardware']])"], []]),
    ([_result("boot", ad_done_checked=0, ad_modes=[["ept4", "off"]]),
      _result("steady", ad_done_checked=0), _result("aging", ad_done_checked=0)],
     [[]] + [[f"{name} (seed 3): no walked answer checked for the A/D updates it owes, "
              f"in any of the run's 2 results with hardware A/D"]
             for name in ("steady", "aging")]),
    ([{"stream": "hit", "translations": 300, "mismatches": 0, "seconds": 1.0}], [[]]),
], ids=["kept", "no-reads", "raced-and-stale", "no-compares", "no-ad-done", "not-judged"])
def test_a_run_breaking_the_scoreboard_bounds_fails_in_the_record(monkeypatch, results,
                                                                   failed):
    """The record judges each co-simulation run by the bounds of
    :func:`cocotb_tests.report.bound_problems` and names why one fails: no A/D update
    checked over the runs with hardware A/D fails each of them; a result without the
    counts (a bench without the traffic checker) is not judged. The counts are recorded
    for the summary table."""
    from cocotb_tests import regress_record
    monkeypatch.setattr(regress_record, "_runs", [])
    regress_record._recording(lambda sim, scenarios, **kwargs: results)(
        "verilator", [r.get("scenario", "stream") for r in results], seed=3)
    runs = regress_record._runs
    assert [run["problems"] for run in runs] == failed
    assert [run["failed"] for run in runs] == [bool(f) for f in failed]
    assert [run["pte_reads_checked"] for run in runs] == \
        [r.get("pte_reads_checked", 0) for r in results]
