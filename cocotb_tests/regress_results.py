"""The regression's results file, and the summary table built from it.

One JSON object per line, appended and flushed as each result arrives: first a header
(the task ids and the tests' settings), then one line per finished task (the result of
:func:`cocotb_tests.regress_tasks.run_task`). An interrupted regression leaves a valid
file; resuming it reads the finished tasks back and appends the others.
"""

import collections
import json
import os

from .report import TRAFFIC_COUNTS

__all__ = ["ResultsFile", "ResultsError", "table", "durations"]

FORMAT = 1


class ResultsError(Exception):
    """A results file that cannot be resumed; a one-line message."""


class ResultsFile:
    """The results file of one regression.

    Members
    -------
    path : pathlib.Path
    header : dict
        ``{"tdpwalk_regress": 1, "tasks": [...], "settings": {...}}``.
    results : dict
        Task id -> result, for every task finished so far (resumed ones included).
    """

    def __init__(self, path, header, results):
        self.path, self.header, self.results = path, header, results

    @classmethod
    def start(cls, path, task_ids, settings):
        """A new file (replacing any earlier one) for a regression of ``task_ids``."""
        header = {"tdpwalk_regress": FORMAT, "tasks": list(task_ids), "settings": settings}
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:
            f.write(json.dumps(header) + "\n")
        return cls(path, header, {})

    @classmethod
    def resume(cls, path):
        """The regression in ``path`` with the results it holds."""
        try:
            data = path.read_bytes()
            whole = data.rfind(b"\n") + 1
            if whole < len(data):       # a line cut short by a crash: its task runs again
                os.truncate(path, whole)
            lines = data[:whole].decode().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ResultsError(f"cannot resume from {path}: {e}") from None
        try:
            header = json.loads(lines[0]) if lines else {}
            if header.get("tdpwalk_regress") != FORMAT:
                raise ValueError("no regression header on its first line")
            results = {}
            for line in lines[1:]:
                if line.strip():
                    result = json.loads(line)
                    results[result["task"]] = result
        except (ValueError, KeyError) as e:
            raise ResultsError(f"cannot resume from {path}: not a results file of "
                               f"make regress ({e})") from None
        return cls(path, header, results)

    def append(self, result):
        """Record a finished task (once: a second result for a task is ignored)."""
        if result["task"] in self.results:
            return
        self.results[result["task"]] = result
        with open(self.path, "a") as f:
            f.write(json.dumps(result) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def pending(self):
        """Task ids without a result, in the header's order."""
        return [t for t in self.header["tasks"] if t not in self.results]


def durations(path):
    """Task id -> seconds of every task that passed in the results file at ``path``
    (empty when there is none, or it cannot be read): the order of the next run."""
    try:
        lines = path.read_text().splitlines()[1:]
        found = (json.loads(line) for line in lines if line.strip())
        return {r["task"]: r["seconds"] for r in found if r.get("status") == "passed"}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


#: The table's columns of what the runs' scoreboards checked and accepted.
_TRAFFIC_HEADS = dict(zip(TRAFFIC_COUNTS, ("PTE reads", "compares", "A/D done", "stale",
                                           "raced")))


def _rows(results):
    """``{(simulator, row): counts}``: an MMU run counts in its simulator and scenario
    or format; a test without MMU runs in ``python`` (or its simulator, when it never
    finished) and its file."""
    rows = collections.defaultdict(
        lambda: {"runs": 0, "failed": 0, "translations": 0, "mismatches": 0,
                 **dict.fromkeys(TRAFFIC_COUNTS, 0), "seconds": 0.0})
    for result in results:
        for test in result["tests"]:
            if test["outcome"] == "skipped":
                continue
            runs = test["runs"] or [{"sim": test.get("sim", "python"),
                                     "row": test["node"].split("::")[0],
                                     "failed": test["outcome"] == "failed",
                                     "seconds": test["seconds"]}]
            for run in runs:
                row = rows[(run["sim"], run["row"])]
                row["runs"] += 1
                row["failed"] += run["failed"]
                row["translations"] += run.get("translations", 0)
                row["mismatches"] += run.get("mismatches", 0)
                for name in TRAFFIC_COUNTS:
                    row[name] += run.get(name, 0)
                row["seconds"] += run["seconds"]
    return rows


def totals(results):
    """Runs, failed runs, translations and mismatches over ``results``."""
    total = collections.Counter()
    for row in _rows(results).values():
        total.update({k: row[k] for k in ("runs", "failed", "translations", "mismatches")})
    return total


def table(results):
    """The summary table's lines: a row per simulator × scenario/format (runs, failed
    runs, translations, mismatches, what the scoreboards checked and accepted: PTE
    reads, AtomicCompares, walked answers checked for owed A/D updates, stale hits,
    raced faults; seconds of simulation or test time), the totals, and every failure
    with its seeds and replay command."""
    head = f"{'simulator':<10} {'scenario / format':<28} {'runs':>5} {'failed':>6} " \
           f"{'translations':>13} {'mismatches':>10} " \
           + "".join(f"{h:>11}" for h in _TRAFFIC_HEADS.values()) + f" {'time (s)':>9}"

    def counts(v):
        return f"{v['runs']:>5} {v['failed']:>6} {v['translations']:>13,} " \
               f"{v['mismatches']:>10} " + "".join(f"{v[k]:>11,}" for k in _TRAFFIC_HEADS) \
               + f" {v['seconds']:>9.0f}"

    lines = [head, "-" * len(head)]
    total = collections.Counter()
    for (sim, row), v in sorted(_rows(results).items()):
        lines.append(f"{sim:<10} {row:<28} {counts(v)}")
        total.update(v)
    lines += ["-" * len(head), f"{'total':<39} {counts(total)}"]
    for result in results:
        for failure in result["failures"]:
            seeds = f" (seed {', '.join(map(str, failure['seeds']))})" if failure["seeds"] \
                else ""
            lines += [f"FAILED {failure['node']}{seeds}: {failure['message']}",
                      f"  replay: {failure['replay']}"]
    return lines
