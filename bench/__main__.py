"""``python -m bench [NAME ...]``: run the benchmarks (all by default) and print their tables.

``BENCH=quick`` (or ``--quick``) runs the short versions. Figures that depend on the
machine are printed as measured here, with ratios where a comparison is made.
"""

import argparse
import importlib
import os
import pathlib
import platform
import sys
import time


def available():
    here = pathlib.Path(__file__).parent
    return sorted(p.stem[len("bench_"):] for p in here.glob("bench_*.py"))


def main(argv=None):
    names = available()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run (default: all of {', '.join(names)})")
    parser.add_argument("--quick", action="store_true", default=os.environ.get("BENCH") == "quick",
                        help="short runs (also BENCH=quick)")
    args = parser.parse_args(argv)
    unknown = set(args.names) - set(names)
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(sorted(unknown))}; "
                     f"available: {', '.join(names)}")
    print(f"tdpwalk benchmarks on {platform.node()} ({platform.machine()}, {os.cpu_count()} cores), "
          f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M')}"
          f"{', quick' if args.quick else ''}")
    for name in args.names or names:
        print(f"\n== {name} ==", flush=True)
        importlib.import_module(f"bench.bench_{name}").main(quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
