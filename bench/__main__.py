"""``python -m bench [NAME ...]``: run the benchmarks (all by default), print their tables
and write docs/results.md with the plots under docs/img/.

``BENCH=quick`` (or ``--quick``) runs the short versions. Figures that depend on the
machine are printed as measured here, with ratios where a comparison is made.

Each benchmark's tables are also saved under build/bench/, so running some of them
(``python -m bench synth``) updates their sections and rewrites docs/results.md from the
saved sections of the others, as long as every benchmark has one; ``--report`` only
rewrites it. ``--output FILE`` writes the report of this run's benchmarks alone.
"""

import dataclasses
import importlib
import json
import os
import pathlib
import sys
import time
import traceback

from sw_model.cli import OneLineParser

from .bench_synth import synth_mode
from .report import SECTIONS, Table, machine, write_results

REPO = pathlib.Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
SAVED = REPO / "build" / "bench"


def available():
    """Benchmark names, in the report's order (:data:`bench.report.SECTIONS`)."""
    here = pathlib.Path(__file__).parent
    found = [p.stem[len("bench_"):] for p in here.glob("bench_*.py")]
    order = list(SECTIONS)
    return sorted(found, key=lambda n: (order.index(n) if n in order else len(order), n))


def _saved_path(name, quick):
    return SAVED / f"{name}{'-quick' if quick else ''}.json"


def save(name, quick, tables, seconds, info):
    SAVED.mkdir(parents=True, exist_ok=True)
    _saved_path(name, quick).write_text(json.dumps(
        {"tables": [dataclasses.asdict(t) for t in tables], "seconds": seconds,
         "date": info["date"], "machine": info["machine"]}, indent=1))


def load(name, quick):
    """``(tables, seconds, date)`` saved by an earlier run, or None."""
    path = _saved_path(name, quick)
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    return [Table(**t) for t in saved["tables"]], saved["seconds"], saved["date"]


def run(names, quick, info):
    """Run the benchmarks ``names``; ``([(name, tables, seconds)], failed names)``.

    A benchmark that raises is reported (traceback printed, a one-line table in the
    report, nothing saved) and the others still run.
    """
    sections, failed = [], []
    for name in names:
        print(f"\n== {name} ==", flush=True)
        start = time.perf_counter()
        try:
            tables = importlib.import_module(f"bench.bench_{name}").main(quick=quick)
            if not isinstance(tables, list) or not all(isinstance(t, Table) for t in tables):
                raise TypeError(f"bench/bench_{name}.py: main() must return a list of "
                                f"bench.report.Table, got {type(tables).__name__}")
        except Exception as e:
            traceback.print_exc()
            failed.append(name)
            tables = [Table(f"{name}: failed", ["error"], [[f"{type(e).__name__}: {e}"]],
                            "see the output of `make bench`")]
        seconds = time.perf_counter() - start
        for table in tables:
            print("\n" + table.text(), flush=True)
        if name not in failed:
            save(name, quick, tables, seconds, info)
        sections.append((name, tables, seconds))
    return sections, failed


def main(argv=None):
    names = available()
    parser = OneLineParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run (default: all of {', '.join(names)})")
    parser.add_argument("--quick", action="store_true", default=os.environ.get("BENCH") == "quick",
                        help="short runs (also BENCH=quick)")
    parser.add_argument("--output", type=pathlib.Path, default=None,
                        help="write the report of this run's benchmarks alone to this file")
    parser.add_argument("--report", action="store_true",
                        help="run nothing; rewrite docs/results.md from the saved sections")
    args = parser.parse_args(argv)
    # The Makefile's variables, checked before anything runs.
    if (os.environ.get("BENCH") or "quick") != "quick":
        parser.error(f"BENCH={os.environ['BENCH']!r}: use BENCH=quick, or nothing for the "
                     f"full runs")
    try:
        synth_mode()
    except ValueError as e:
        parser.error(str(e))
    unknown = set(args.names) - set(names)
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(sorted(unknown))}; "
                     f"available: {', '.join(names)}")
    info = machine()
    print(f"tdpwalk benchmarks on {info['machine']}, {info['date']}"
          f"{', quick' if args.quick else ''}")
    start = time.perf_counter()
    ran, failed = ([], []) if args.report else run(args.names or names, args.quick, info)
    total = time.perf_counter() - start
    if args.output:
        write_results(args.output, ran, quick=args.quick, total=total, info=info)
        print(f"\nwrote {args.output}")
    else:
        this_run = {name: (tables, seconds) for name, tables, seconds in ran}
        sections, missing = [], []
        for name in names:
            if name in this_run:
                sections.append((name, *this_run[name]))
            elif (saved := load(name, args.quick)) is not None:
                tables, seconds, date = saved
                sections.append((name, tables, seconds))
                print(f"{name}: the section saved on {date}")
            else:
                missing.append(name)
        if missing:
            print(f"\ndocs/results.md not written: no saved results of {', '.join(missing)} "
                  f"(run `python -m bench{' --quick' if args.quick else ''} "
                  f"{' '.join(missing)}`)")
        else:
            write_results(DOCS / "results.md", sections, quick=args.quick,
                          total=sum(s for _, _, s in sections), info=info)
            print(f"\nwrote {DOCS / 'results.md'} (this run {total / 60:.1f} min)")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
