"""Regression throughput on Dask (``make regress``): the same slice of the regression on
a local cluster of 1 and of 2 worker processes (1, 2, 2, 1: see :data:`ORDER`), and
what the engine costs per task.

The slice is the seven scoreboarded streams (``REGRESS_COUNT`` translations each) and
the fourteen formal properties at full depth: co-simulation and solver work, 21 tasks
of different lengths. Times run from the first submission to the last result (the
cluster's start and the collection of the tests excluded).
"""

import contextlib
import dataclasses
import os
import pathlib
import tempfile
import time

from cocotb_tests.regress_cluster import local_cluster, run_regression
from cocotb_tests.regress_results import ResultsFile, totals
from cocotb_tests.regress_tasks import plan, settings

from .report import Table

__all__ = ["main"]

SLICE = "test_stream_million or test_full_depth"
QUICK_SLICE = "test_stream_million"


@contextlib.contextmanager
def _environ(**values):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k)
            else:
                os.environ[k] = v


def _cluster(jobs):
    from distributed import Client
    cluster = local_cluster(jobs)
    return cluster, Client(cluster)


def _regression(tasks, jobs, path):
    """Run ``tasks`` on ``jobs`` local workers, results to ``path``:
    ``(seconds, results)``."""
    cluster, client = _cluster(jobs)
    with cluster, client:
        results = ResultsFile.start(path, [t.id for t in tasks], settings())
        start = time.monotonic()
        run_regression(client, tasks, results, timeout=3600)
        return time.monotonic() - start, list(results.results.values())


def _round_trip(count=200):
    """Milliseconds per task of Dask alone (submit, run a no-op, gather) on 1 worker."""
    cluster, client = _cluster(1)
    with cluster, client:
        client.gather(client.map(abs, range(20), pure=False))          # warm up
        start = time.monotonic()
        client.gather(client.map(abs, range(count), pure=False))
        return 1000 * (time.monotonic() - start) / count


def _packed(seconds, workers):
    """The longest-first packing of task durations on ``workers``: the makespan."""
    loads = [0.0] * workers
    for s in sorted(seconds, reverse=True):
        loads[loads.index(min(loads))] += s
    return max(loads)


#: The runs in order: 1 worker, 2, 2, 1. This machine's speed drifts by 10 % and more
#: over minutes; in this order a drift that is linear in time weighs the same on both
#: sides of the ratio.
ORDER = (1, 2, 2, 1)


def main(quick=False):
    count = "20000" if quick else "200000"
    runs = []
    with _environ(REGRESS_COUNT=count), tempfile.TemporaryDirectory() as tmp:
        tasks = plan(only=QUICK_SLICE if quick else SLICE)
        for index, jobs in enumerate(ORDER):
            runs.append((jobs, *_regression(tasks, jobs, pathlib.Path(tmp) / f"run{index}.jsonl")))
            if index == 0:
                # As make regress orders tasks by an earlier run's durations: the
                # longest first.
                measured = {r["task"]: r["seconds"] for r in runs[0][2]}
                tasks = sorted((dataclasses.replace(t, weight=measured[t.id]) for t in tasks),
                               key=lambda t: -t.weight)
    total_seconds = {jobs: sum(s for j, s, _ in runs if j == jobs) for jobs in (1, 2)}
    speedup = total_seconds[1] / total_seconds[2]
    rows = []
    for jobs, seconds, results in runs:
        total = totals(results)
        failed = sum(r["status"] == "failed" for r in results)
        rows.append([jobs, len(results), failed, f"{seconds:.0f}",
                     f"{len(results) / seconds * 60:.1f}", f"{total['translations']:,}",
                     f"{total['translations'] / seconds:,.0f}",
                     f"{sum(r['seconds'] for r in results):.0f}"])
    rows.append(["1 vs 2", "", "", "", "", "", "", f"speed-up {speedup:.2f}x"])
    one = [r for j, _, results in runs if j == 1 for r in results]
    two = [r for j, _, results in runs if j == 2 for r in results]
    overhead = [r["seconds"] - sum(t["seconds"] for t in r["tests"]) for r in one]
    first = runs[0][2]
    bound = sum(r["seconds"] for r in first) / _packed([r["seconds"] for r in first], 2)
    slower = sum(r["seconds"] for r in two) / sum(r["seconds"] for r in one)
    busy = sum(r["seconds"] for r in two) / (2 * total_seconds[2])
    streams = sum("test_stream_million" in t.id for t in tasks)
    what = f"the {streams} streams" + ("" if quick else
                                       f" and the {len(tasks) - streams} formal properties")
    note = (f"os.cpu_count() = {os.cpu_count()}; a LocalCluster of single-threaded worker "
            f"processes on 127.0.0.1; {len(tasks)} tasks ({what}), REGRESS_COUNT={count}; "
            f"time from the first submission to the last result. Four runs, 1, 2, 2 and 1 "
            f"workers in that order; the speed-up is the two 1-worker times over the two "
            f"2-worker times. The 2-worker runs take the tasks longest first by the first "
            f"run's durations, which allow at most {bound:.2f}x on 2 (no overhead). "
            f"'task seconds' adds the tasks' own durations: on 2 workers they took "
            f"{slower:.2f}x their time on 1 (above 1: tasks side by side slow each other "
            f"down), and the workers were busy {busy:.0%} of the 2-worker runs.")
    throughput = Table("Regression throughput on Dask (make regress)",
                       ["workers", "tasks", "failed", "seconds", "tasks/min",
                        "translations", "translations/s", "task seconds"], rows, note)
    costs = Table("Engine overhead per task", ["what", "per task"], [
        ["task (pytest process, imports, collection, build check, result)",
         f"{sum(overhead) / len(overhead):.2f} s"],
        ["Dask alone (submit, run a no-op, gather; 1 worker)", f"{_round_trip():.1f} ms"],
    ], "The task figure is the task's time on its worker less its tests' own time "
       "(pytest's call durations), averaged over the 1-worker runs; it is paid once per "
       "task, whatever the test runs.")
    return [throughput, costs]


if __name__ == "__main__":
    import sys
    for table in main(quick="--quick" in sys.argv):
        print(table.text())
