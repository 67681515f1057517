"""``make regress``: the regression's tasks on a Dask cluster (docs/regress.md).

``python -m cocotb_tests.regress_cluster [--cluster tcp://HOST:PORT] [--jobs N]
[--resume 0|1] [--timeout S] [--only EXPR] [--results FILE]``

The tasks are those of :func:`cocotb_tests.regress_tasks.plan`. With ``--cluster`` they
run on the workers of an existing Dask scheduler; without it on a ``LocalCluster`` of
``--jobs`` worker processes on 127.0.0.1, through the same code. Each result is appended
to the results file (:mod:`cocotb_tests.regress_results`) as it arrives, with a progress
line; the summary table at the end is built from that file.

Faults: a worker that dies takes its task back to the scheduler, which runs it on
another worker (Dask gives up on a task that has killed three workers, reported as a
failure); a result is recorded once per task whatever happens. A task past its time
limit is killed on its worker and reported as a failure with its seeds. Losing the
scheduler (stopped or restarted) stops the regression with a message; ``--resume 1``
then runs only the tasks without a result, as after an interrupt (Ctrl-C).
"""

import argparse
import collections
import contextlib
import logging
import pathlib
import re
import signal
import sys
import time
import uuid
import warnings
from concurrent.futures import CancelledError

from .regress_results import ResultsError, ResultsFile, durations, table, totals
from .regress_tasks import (REPO, PlanError, failed_result, given_settings, plan,
                            run_task, settings, stop_tasks)

__all__ = ["main", "run_regression", "local_cluster"]

RESULTS = REPO / "build" / "regress" / "results.jsonl"
CONNECT_TIMEOUT = 10
#: Seconds without a result after which a line says the regression is still running.
HEARTBEAT = 60
DEFAULT_TIMEOUT = 3600


class RegressError(Exception):
    """Bad input or an unusable cluster; a one-line message, exit status 2."""


class SchedulerLost(Exception):
    """The client lost the scheduler in the middle of the regression."""


def _parse(argv):
    parser = argparse.ArgumentParser(prog="make regress", description=__doc__.split("\n")[0])
    parser.add_argument("--cluster", default="", help="tcp://HOST:PORT of a Dask scheduler "
                        "(default: a local cluster)")
    parser.add_argument("--jobs", default="", help="worker processes of the local cluster "
                        "(default 2)")
    parser.add_argument("--resume", default="", help="1: run only the tasks without a "
                        "result in the results file")
    parser.add_argument("--timeout", default="", help=f"seconds a task may run (default "
                        f"{DEFAULT_TIMEOUT})")
    parser.add_argument("--only", default="", help="pytest -k expression selecting tests")
    parser.add_argument("--results", default=str(RESULTS), help="the results file")
    parser.add_argument("pytest_args", nargs="*", default=["-m", "slow"],
                        help="pytest's selection of the tests (default: -m slow)")
    parser.error = lambda message: _fail(message)
    args = parser.parse_args(argv)
    if args.cluster and not re.fullmatch(r"tcp://[A-Za-z0-9.\-\[\]:]+:\d{1,5}", args.cluster):
        _fail(f"CLUSTER={args.cluster!r} is not a scheduler address tcp://HOST:PORT")
    args.jobs = _positive("JOBS", args.jobs or "2", int)
    args.timeout = _positive("REGRESS_TIMEOUT", args.timeout or str(DEFAULT_TIMEOUT), float)
    if args.resume not in ("", "0", "1"):
        _fail(f"RESUME={args.resume!r}: use RESUME=1 to resume, 0 or nothing to start over")
    args.resume = args.resume == "1"
    args.results = pathlib.Path(args.results)
    return args


def _fail(message):
    raise RegressError(message)


def _positive(name, text, kind):
    try:
        value = kind(text)
    except ValueError:
        value = 0
    if value <= 0:
        _fail(f"{name}={text!r} is not a positive {'integer' if kind is int else 'number'}")
    return value


@contextlib.contextmanager
def _client(args):
    """A Dask client of the scheduler at ``args.cluster``, or of a local cluster."""
    from distributed import Client
    for name in ("distributed", "distributed.client"):     # this module says what failed
        logging.getLogger(name).setLevel(logging.CRITICAL)
    if args.cluster:
        try:
            client = Client(args.cluster, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as e:
            _fail(f"cannot reach the Dask scheduler at {args.cluster} within "
                  f"{CONNECT_TIMEOUT} s ({type(e).__name__}): is `dask scheduler` running "
                  f"there, and reachable from here?")
        with client:
            workers = len(client.scheduler_info()["workers"])
            print(f"regress: Dask scheduler {args.cluster}, {workers} workers"
                  f"{' (tasks wait for workers to join)' if not workers else ''}", flush=True)
            yield client
        return
    with local_cluster(args.jobs) as cluster, Client(cluster) as client:
        print(f"regress: local Dask cluster {cluster.scheduler_address}, {args.jobs} worker "
              f"processes", flush=True)
        yield client


#: Dask settings for workers whose tasks wait on a simulator process: no sampling
#: profiler (it would profile a wait) and slow housekeeping ticks. With the defaults an
#: idle two-worker cluster keeps 14 % of a core busy, which its tasks lose on a 2-core
#: machine; with these, under 2 %. docs/regress.md gives them as environment variables
#: for ``dask worker`` on other machines.
QUIET_WORKERS = {"distributed.worker.profile.enabled": False,
                 "distributed.admin.tick.interval": "1s",
                 "distributed.admin.system-monitor.interval": "2s",
                 "distributed.worker.memory.monitor-interval": "1s"}


def local_cluster(jobs):
    """A Dask cluster of ``jobs`` single-threaded worker processes on 127.0.0.1, without
    dashboards, with :data:`QUIET_WORKERS`."""
    import dask
    from distributed import LocalCluster
    # The scheduler's HTTP server moves to a free port when another cluster holds 8787:
    # nothing to warn a second regression on the same machine about.
    warnings.filterwarnings("ignore", message="Port 8787 is already in use")
    with dask.config.set(QUIET_WORKERS):        # read as the processes start
        return LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True,
                            host="127.0.0.1", dashboard_address=None,
                            silence_logs=logging.CRITICAL)


def _open_results(args, tasks):
    """The results file: resumed (checked against this run's tasks and settings) or new."""
    ids = [t.id for t in tasks]
    wanted = given_settings()
    if args.resume and args.results.exists():
        results = ResultsFile.resume(args.results)
        if sorted(results.header["tasks"]) != sorted(ids):
            raise ResultsError(f"{args.results} holds a regression of "
                               f"{len(results.header['tasks'])} other tasks than these "
                               f"{len(ids)}: select the same tests, or drop RESUME=1")
        for key, value in wanted.items():
            if results.header["settings"].get(key) != value:
                raise ResultsError(f"{key}={value} differs from the resumed regression's "
                                   f"{key}={results.header['settings'].get(key)}: unset it "
                                   f"or drop RESUME=1")
        print(f"regress: resuming {args.results}: {len(results.results)} of {len(ids)} "
              f"tasks already finished", flush=True)
        return results
    if args.resume:
        print(f"regress: nothing to resume ({args.results} does not exist): starting a new "
              f"regression", flush=True)
    return ResultsFile.start(args.results, ids, settings())


class Progress:
    """Progress lines: tasks done / total, translations per second, failures, ETA (from
    the tasks' expected seconds, calibrated by those finished in this run)."""

    def __init__(self, tasks, results):
        self.weight = {t.id: t.weight for t in tasks}
        self.total, self.done = len(tasks), len(results.results)
        self.failed = sum(r["status"] == "failed" for r in results.results.values())
        self.left = sum(self.weight[t] for t in results.pending())
        self.start, self.weight_done, self.translations = time.monotonic(), 0.0, 0

    def result(self, result):
        self.done += 1
        self.failed += result["status"] == "failed"
        self.left -= self.weight[result["task"]]
        self.weight_done += self.weight[result["task"]]
        self.translations += totals([result])["translations"]
        elapsed = time.monotonic() - self.start
        eta = self.left * elapsed / self.weight_done
        width = len(str(self.total))
        print(f"[{self.done:>{width}}/{self.total}] {result['status']:<6} "
              f"{result.get('seconds', 0):5.0f} s  {result['task']}  | "
              f"{self.translations:,} translations ({self.translations / elapsed:,.0f}/s), "
              f"{self.failed} failed, ETA {_duration(eta)}", flush=True)

    def idle(self, running, workers):
        print(f"regress: {running} tasks queued or running on {workers} workers, "
              f"{self.done}/{self.total} done, {_duration(time.monotonic() - self.start)} "
              f"elapsed", flush=True)


def _duration(seconds):
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def run_regression(client, tasks, results, timeout):
    """Submit the pending tasks and record their results as they arrive."""
    from distributed import wait
    regression = uuid.uuid4().hex[:12]
    by_id = {t.id: t for t in tasks}
    task_settings = results.header["settings"]
    futures = {client.submit(run_task, by_id[tid], task_settings, timeout, regression,
                             key=f"regress-{regression}-{i}", priority=by_id[tid].weight):
               by_id[tid] for i, tid in enumerate(results.pending())}
    progress, pending = Progress(tasks, results), set(futures)
    workers = _workers(client)
    try:
        while pending:
            try:
                done, pending = wait(pending, timeout=HEARTBEAT, return_when="FIRST_COMPLETED")
            except TimeoutError:
                progress.idle(len(pending), workers)
                continue
            except CancelledError:      # every future, when the client loses the scheduler
                raise SchedulerLost() from None
            for future in done:
                task = futures[future]
                if future.status == "cancelled" or client.status != "running":
                    raise SchedulerLost()
                if future.status == "error":
                    error = future.exception()
                    result = failed_result(task, task_settings,
                                           f"{type(error).__name__}: {error}"[:300])
                else:
                    result = future.result()
                results.append(result)
                progress.result(result)
            now = _workers(client)
            if now != workers:
                print(f"regress: workers {workers} -> {now}", flush=True)
                workers = now
    except BaseException:
        with contextlib.suppress(Exception):
            if client.status == "running":
                client.cancel(list(pending))
                client.run(stop_tasks, regression, on_error="ignore")
        raise


def _workers(client):
    """How many workers the scheduler has."""
    try:
        return len(client.scheduler_info()["workers"])
    except (OSError, CancelledError):
        raise SchedulerLost() from None


def _summary(results):
    """Print the table of every result in the file; the exit status (0: all passed)."""
    finished = [results.results[t] for t in results.header["tasks"] if t in results.results]
    print("\n== tdpwalk regression summary ==")
    for line in table(finished):
        print(line)
    builds = collections.Counter(f"{sim} {build}" for r in finished
                                 for sim, build in r.get("builds", {}).items())
    sims = collections.Counter(b.split()[0] for b in builds)
    if any(n > 1 for n in sims.values()):
        print(f"WARNING: results from different builds of the MMU: {', '.join(builds)}")
    failed = sum(r["status"] == "failed" for r in finished)
    print(f"{len(finished)} tasks: {len(finished) - failed} passed, {failed} failed "
          f"(results in {results.path})")
    return 1 if failed else 0


def main(argv=None):
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    results = None
    try:
        args = _parse(argv)
        with _client(args) as client:
            tasks = plan(args.pytest_args, args.only, durations(args.results))
            results = _open_results(args, tasks)
            print(f"regress: {len(tasks)} tasks, {len(results.pending())} to run, limit "
                  f"{args.timeout:g} s each; results in {results.path}", flush=True)
            run_regression(client, tasks, results, args.timeout)
    except (RegressError, PlanError, ResultsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except SchedulerLost:
        done = len(results.results)
        print(f"error: lost the connection to the Dask scheduler at "
              f"{args.cluster or 'the local cluster'} (it "
              f"stopped or restarted): {done} of {len(results.header['tasks'])} tasks "
              f"finished, kept in {results.path}; `make regress RESUME=1` runs the others",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if results is None:
            print("regress: interrupted", file=sys.stderr)
        else:
            print(f"regress: interrupted: {len(results.results)} of "
                  f"{len(results.header['tasks'])} tasks finished, kept in {results.path}; "
                  f"`make regress RESUME=1` runs the others", file=sys.stderr)
        return 130
    return _summary(results)


if __name__ == "__main__":
    sys.exit(main())
