"""Command line of the model: ``python -m sw_model {run,random,demo} ...``."""

import collections
import sys
import time

from .cli import OneLineParser, run_command
from .formats import AD_MODES, FORMAT_NAMES, FormatError, get_format
from .vectors import (VectorFileError, load_vectors, random_vectors, run_vectors,
                      save_vectors, write_results)


def _cmd_run(args):
    write_results(run_vectors(load_vectors(args.vectors)), args.output)


def _cmd_random(args):
    vectors = random_vectors(args.format, args.seed, args.count, ad=args.ad,
                             pa_bits=args.pa_bits)
    save_vectors(vectors, args.output)
    print(f"wrote {args.output}: {args.format}, seed {args.seed}, {args.count} accesses, "
          f"{len(vectors.memory.nonzero_words())} memory words, vm {vectors.vm.to_json()}",
          file=sys.stderr)


def _cmd_demo(args):
    """Model-only demonstration: random tables for every format through the reference
    walker, with a summary of outcomes per format."""
    print(f"tdpwalk model demo: {args.count} random accesses per format, seed {args.seed}")
    print(f"{'format':8} {'A/D':9} {'pa':>3} {'ok':>6} " + " ".join(
        f"{k:>11}" for k in ("not_present", "permission", "reserved", "misaligned",
                              "gpa_range", "ad_clear", "bus_error")) + f" {'walks/s':>9}")
    for name in FORMAT_NAMES:
        for ad in get_format(name).ad_modes:
            vectors = random_vectors(name, args.seed, args.count, ad=ad)
            start = time.perf_counter()
            results = run_vectors(vectors)
            rate = len(results) / (time.perf_counter() - start)
            kinds = collections.Counter(r.kind if not r.ok else "ok" for r in results)
            print(f"{name:8} {ad:9} {vectors.vm.pa_bits:>3} {kinds['ok']:>6} " + " ".join(
                f"{kinds[k]:>11}" for k in ("not_present", "permission", "reserved",
                                            "misaligned", "gpa_range", "ad_clear",
                                            "bus_error")) + f" {rate:>9.0f}")
    print("Every row is a random vector file; replay one with:\n"
          "  python -m sw_model random --format ept4 --seed 1 --count 100 -o v.json\n"
          "  python -m sw_model run v.json")


def main(argv=None):
    """Run the command line; returns the exit status: 0, or 2 with a one-line
    ``error: ...`` on stderr for any bad input (never a traceback)."""
    parser = OneLineParser(prog="python -m sw_model",
                     description="tdpwalk's Python model of stage-2 translation")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    run = sub.add_parser("run", help="translate every access of a vector file, one JSON "
                                     "result per line")
    run.add_argument("vectors", help="vector file (JSON)")
    run.add_argument("-o", "--output", help="write results here instead of stdout")
    run.set_defaults(func=_cmd_run)

    rnd = sub.add_parser("random", help="write a random vector file")
    rnd.add_argument("--format", required=True, choices=FORMAT_NAMES)
    rnd.add_argument("--seed", type=int, default=1)
    rnd.add_argument("--count", type=int, default=1000, help="number of accesses")
    rnd.add_argument("--ad", choices=AD_MODES, help="A/D mode (default: the format's)")
    rnd.add_argument("--pa-bits", type=int, help="physical-address width (default: random)")
    rnd.add_argument("-o", "--output", required=True, help="vector file to write")
    rnd.set_defaults(func=_cmd_random)

    demo = sub.add_parser("demo", help="model-only demonstration over every format")
    demo.add_argument("--seed", type=int, default=1)
    demo.add_argument("--count", type=int, default=2000)
    demo.set_defaults(func=_cmd_demo)

    args = parser.parse_args(argv)
    if getattr(args, "count", 0) < 0:
        sub.choices[args.command].error(f"argument --count: must not be negative, "
                                        f"got {args.count}")
    return run_command(args.func, args, (VectorFileError, FormatError))

if __name__ == "__main__":
    sys.exit(main())
