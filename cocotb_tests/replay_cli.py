"""``python -m cocotb_tests.replay_cli VECTORS --sim icarus|verilator``: replay a vector
file on the walker's generated Verilog under cocotb and print the walker's answers, one
JSON result per line, the shape of ``python -m sw_model run`` (and of ``python -m hw
run`` in Amaranth's simulator), so the same file replays on every runner and the outputs
compare with ``diff``. ``--check`` also compares every access with the reference walker:
the answers are printed all the same, then a difference exits 1. Bad input or a missing
simulator exits 2 with a one-line error."""

import json
import pathlib
import sys

from sw_model.cli import OneLineParser, positive_int, probability, run_command
from sw_model.formats import FormatError
from sw_model.vectors import VectorFileError, load_vectors

from .runner import SIMULATORS, ReplayMismatch, ToolchainError, build_root, replay


def _cmd_replay(args):
    load_vectors(args.vectors)                      # report a bad file before building
    log = build_root() / f"replay-{args.sim}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"simulator log: {log}", file=sys.stderr)
    status, error = 0, None
    try:
        lines = replay(args.vectors, args.sim, latency=args.latency, stall=args.stall,
                       seed=args.seed, waves=args.waves, log_file=log.resolve(),
                       check=args.check)
    except ReplayMismatch as e:                     # the answers differ from the model's
        lines, status, error = e.lines, 1, f"the reference walker answers differently: {e}"
    text = "".join(json.dumps(line) + "\n" for line in lines)
    if args.output:
        pathlib.Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    if error:
        print(f"error: {error}", file=sys.stderr)
    return status


def main(argv=None, prog="python -m cocotb_tests.replay_cli"):
    parser = OneLineParser(prog=prog,
                           description="replay a vector file on the walker's Verilog")
    parser.add_argument("vectors", help="vector file (JSON)")
    parser.add_argument("--sim", choices=SIMULATORS, default="icarus")
    parser.add_argument("--waves", help="write an FST waveform and a GTKWave save file")
    parser.add_argument("--latency", type=positive_int, default=1,
                        help="memory read latency in cycles (default 1)")
    parser.add_argument("--stall", type=probability, default=0.0,
                        help="probability of back-pressure on each AXI channel per cycle")
    parser.add_argument("--seed", type=int, default=0, help="seeds the back-pressure")
    parser.add_argument("-o", "--output", help="write results here instead of stdout")
    parser.add_argument("--check", action="store_true",
                        help="also compare every answer with the reference walker on the "
                             "same memory; exit 1 on a difference")
    args = parser.parse_args(argv)
    return run_command(_cmd_replay, args, (VectorFileError, FormatError, ToolchainError))


if __name__ == "__main__":
    sys.exit(main())
