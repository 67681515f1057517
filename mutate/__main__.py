"""``python -m mutate`` (``make mutate``): apply each bug of :mod:`mutate.catalogue` to a
copy of the checkout and report the first ``make test`` test that fails on it.

Each mutant runs in its own copy (build/mutate/trees/NAME: the files git tracks or would
track, with the one edit) on the fast tests (``-m "not slow"``, as ``make test``) that
its entry names, stopping at the first failure. A mutant those tests miss is run on the
whole fast suite before it is called a survivor. Simulator builds are shared between
copies through ``TDPWALK_BUILD`` (they are keyed by a digest of hw/ and the formats, so
a mutated RTL gets a build of its own). Before the mutants, the named tests run once on
the unmutated copy: a test that fails there would catch nothing.

The report (a table, and report.json in the work directory) gives each mutant's catching test and
the first line of its failure; the exit status is 0 only when every mutant was caught.
"""

import concurrent.futures
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

from sw_model.cli import OneLineParser, positive_int

from .catalogue import CATALOGUE, CatalogueError, check

REPO = pathlib.Path(__file__).resolve().parent.parent
WORK = REPO / "build" / "mutate"        # the default of --work
FAST = ("-m", "not slow")


def _copy(work, name):
    """A fresh copy of the checkout's source files under WORK/trees/NAME."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                            "--exclude-standard"], cwd=REPO, check=True,
                           capture_output=True).stdout.decode().split("\0")
    tree = work / "trees" / name
    shutil.rmtree(tree, ignore_errors=True)
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (tree / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, tree / rel)
    return tree


def _pytest(work, tree, args, timeout, jobs=1):
    """Run pytest in ``tree``, stopping at the first failure: ``(status, node, message,
    seconds)`` with status "passed", "failed" (a test failed, or collection did:
    ``node`` and its message), "timeout" or "error" (pytest itself failed). Outcomes come
    from the regression's recorder (:mod:`cocotb_tests.regress_record`)."""
    from cocotb_tests.regress_record import RECORD
    record = tree / "mutate.record"
    record.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=str(tree), TESTS_REQUIRE_TOOLS="1",
               TDPWALK_BUILD=str(work / "builds"), **{RECORD: str(record)})
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
               "-p", "cocotb_tests.regress_record",
               *(["-n", str(jobs)] if jobs > 1 else []), *FAST, *args]
    start = time.monotonic()
    log = tree / "mutate.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=tree, env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return "timeout", "", f"no result in {timeout} s (see {log})", \
                time.monotonic() - start
    seconds = time.monotonic() - start
    if proc.returncode == 0:
        return "passed", "", "", seconds
    tests = [json.loads(l) for l in record.read_text().splitlines()] \
        if record.exists() else []
    failed = next((t for t in tests if t["outcome"] == "failed"), None)
    last = (log.read_text(errors="replace").strip().splitlines() or [""])[-1][:200]
    if proc.returncode == 1 and failed:
        return "failed", failed["node"], failed["message"][:200], seconds
    if proc.returncode == 2:        # collection failed: make test fails the same way
        return "failed", "(collection)", f"{last} (see {log})", seconds
    return "error", "", f"pytest exit status {proc.returncode}: {last} (see {log})", seconds


def run_mutant(work, mutant, timeout, full_jobs):
    """The mutant's result: caught by a named test, by the whole fast suite, or survived."""
    tree = _copy(work, mutant.name)
    mutant.apply(tree)
    status, node, message, seconds = _pytest(work, tree, mutant.tests, timeout)
    scope = "named"
    if status == "passed":
        status, node, message, more = _pytest(work, tree, [], timeout * 4, jobs=full_jobs)
        seconds, scope = seconds + more, "suite"
    if status == "failed":
        shutil.rmtree(tree, ignore_errors=True)
    return {"name": mutant.name, "area": mutant.area, "path": mutant.path,
            "bug": mutant.bug, "caught": status == "failed", "status": status,
            "scope": scope, "test": node, "message": message, "seconds": round(seconds, 1)}


def baseline(work, mutants, timeout, jobs):
    """Every named test passes on the unmutated checkout: ``None``, or why not."""
    tests = sorted({t for m in mutants for t in m.tests})
    status, node, message, _ = _pytest(work, _copy(work, "baseline"), tests, timeout * 4,
                                       jobs=jobs)
    shutil.rmtree(work / "trees" / "baseline", ignore_errors=True)
    return None if status == "passed" else f"{status}: {node} {message}".strip()


def _table(results):
    lines = [f"{'mutant':28} {'area':9} {'caught by':58} {'s':>5}"]
    for r in results:
        what = r["test"] if r["caught"] else f"SURVIVED ({r['status']})"
        lines.append(f"{r['name']:28} {r['area']:9} {what:58} {r['seconds']:5.0f}")
    caught = sum(r["caught"] for r in results)
    lines.append(f"score: {caught} of {len(results)} mutants caught by the fast tests")
    return lines


def main(argv=None):
    parser = OneLineParser(prog="python -m mutate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=positive_int, default=2,
                        help="mutants run at once (default 2)")
    parser.add_argument("--only", default="",
                        help="comma-separated mutant names (default: the whole catalogue)")
    parser.add_argument("--timeout", type=positive_int, default=900,
                        help="seconds for one mutant's named tests (the whole suite gets 4x)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the run of the named tests on the unmutated checkout")
    parser.add_argument("--work", type=pathlib.Path, default=WORK,
                        help="where the copies, their builds and report.json go "
                             "(default build/mutate)")
    parser.add_argument("--list", action="store_true", help="print the catalogue and stop")
    args = parser.parse_args(argv)
    try:
        check(REPO)
        wanted = [n for n in args.only.split(",") if n]
        unknown = set(wanted) - {m.name for m in CATALOGUE}
        if unknown:
            raise CatalogueError(f"unknown mutant(s) {', '.join(sorted(unknown))} "
                                 f"(see --list)")
    except CatalogueError as e:
        parser.exit(2, f"error: {parser.prog}: {e}\n")
    mutants = [m for m in CATALOGUE if not wanted or m.name in wanted]
    if args.list:
        for m in mutants:
            print(f"{m.name:28} {m.area:9} {m.path}: {m.bug}")
        return 0
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if not args.no_baseline:
        print(f"mutate: the {len({t for m in mutants for t in m.tests})} named test "
              f"selections on the unmutated checkout ...", flush=True)
        problem = baseline(work, mutants, args.timeout, args.jobs)
        if problem:
            print(f"error: {parser.prog}: a named test fails without any mutation: "
                  f"{problem}", file=sys.stderr)
            return 1
    results, start = [], time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(run_mutant, work, m, args.timeout, args.jobs) for m in mutants]
        for future in concurrent.futures.as_completed(futures):
            r = future.result()
            results.append(r)
            what = f"caught by {r['test']}" if r["caught"] else f"SURVIVED ({r['status']})"
            print(f"[{len(results):2}/{len(mutants)}] {r['name']:28} {what} "
                  f"({r['seconds']:.0f} s; {time.monotonic() - start:.0f} s in all)", flush=True)
    order = [m.name for m in mutants]
    results.sort(key=lambda r: order.index(r["name"]))
    (work / "report.json").write_text(json.dumps(results, indent=1) + "\n")
    print("\n" + "\n".join(_table(results)))
    print(f"(report in {work / 'report.json'})")
    return 0 if all(r["caught"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
