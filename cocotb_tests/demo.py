"""``python -m cocotb_tests.demo``: the main demonstration (``make demo``).

Runs VM lifetimes on the MMU's generated Verilog under Icarus or Verilator, driven by the
TDP MMU model on the hypervisor loop (guest access -> RTL -> fault -> model maps the page
-> retry), with every response checked against the reference walker. Prints progress,
then a report (translations, mismatches, faults handled by the model, TLB hit rate, walk
latency p50/p99, flushes, dirty pages harvested), writes a PNG (walk-latency histogram,
hit rate over time) and, with ``--waves``, an FST waveform and a GTKWave save file.
Exit status 1 on any mismatch or failed check.
"""

import json
import os
import pathlib
import sys
import time

from sw_model.cli import OneLineParser
from sw_model.formats import FORMAT_NAMES

from .report import percentile
from .runner import SIMULATORS, ToolchainError, build_root, run_mmu
from .scenarios import SCENARIOS, SIZES



def _table(results):
    rows = [("scenario", "VMs", "transl.", "mism.", "faults", "hit rate", "walk p50/p99",
             "flushes", "dirty harv.", "lost")]
    for r in results:
        rows.append((r["scenario"], " + ".join(r["guests"]), str(r["translations"]),
                     str(r["mismatches"]), str(r["faults_handled"]),
                     f"{100 * r['tlb_hit_rate']:.1f}%",
                     f"{r['walk_latency_p50']}/{r['walk_latency_p99']}",
                     str(r["flushes"]), str(r["dirty_pages_harvested"]), str(r["dirty_lost"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows)


def plot(results, path):
    """Walk-latency histogram and TLB hit rate over time; the PNG path, or None when
    matplotlib is missing (the [bench] extra)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    walks = [v for r in results for v in r["walk_latencies"]]
    if walks:
        left.hist(walks, bins=range(0, max(walks) + 2), color="tab:blue")
        for q, style in ((50, "--"), (99, ":")):
            left.axvline(percentile(walks, q), color="k", linestyle=style, label=f"p{q}")
        left.legend()
    left.set_xlabel("walk latency (cycles, request accepted to response)")
    left.set_ylabel("responses")
    left.set_title("TLB-miss latency")
    for r in results:
        if r["hit_timeline"]:
            xs, ys = zip(*r["hit_timeline"])
            right.plot(xs, [100 * y for y in ys], label=r["scenario"])
    right.set_xlabel("cycle")
    right.set_ylabel("TLB hits (% of the last 100 responses)")
    right.set_ylim(0, 100)
    right.set_title("hit rate over time")
    right.legend(fontsize="small")
    fig.suptitle("tdpwalk MMU co-simulation")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv=None, prog="python -m cocotb_tests.demo"):
    parser = OneLineParser(prog=prog,
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--sim", choices=SIMULATORS, default=os.environ.get("SIM") or "icarus")
    parser.add_argument("--format", choices=FORMAT_NAMES, default=os.environ.get("FORMAT") or None,
                        help="the first VM's format (default: ept4; the second VM gets "
                             "another architecture)")
    parser.add_argument("--scenario", default=os.environ.get("SCENARIO") or "mixed",
                        help=f"comma-separated, from {', '.join(SCENARIOS)}, or 'all' "
                             f"(default mixed: two VMs of different formats)")
    # String defaults from the environment (``make demo SEED=...``) go through ``type``
    # and are checked below like the options themselves.
    parser.add_argument("--seed", type=int, default=os.environ.get("SEED") or "0",
                        help="scenario seed, an integer (also SEED=)")
    parser.add_argument("--size", choices=SIZES, default="demo")
    parser.add_argument("--waves", action="store_true",
                        default=os.environ.get("WAVES") == "1",
                        help="write an FST waveform and a GTKWave save file (also WAVES=1)")
    parser.add_argument("-o", "--output", type=pathlib.Path, default=None,
                        help="directory for the report, plot and waveform (default: "
                             "demo/ under $TDPWALK_BUILD, else ./build)")
    args = parser.parse_args(argv)
    args.output = args.output or build_root() / "demo"
    for option, value, allowed in (("--sim", args.sim, SIMULATORS),
                                   ("--format", args.format, (None, *FORMAT_NAMES))):
        if value not in allowed:
            parser.error(f"{option}: invalid choice {value!r} (choose from "
                         f"{', '.join(a for a in allowed if a)})")
    names = list(SCENARIOS) if args.scenario == "all" else args.scenario.split(",")
    bad = [n for n in names if n not in SCENARIOS]
    if bad:
        parser.error(f"--scenario: unknown {', '.join(bad)} (known: {', '.join(SCENARIOS)}, all)")
    fmt = args.format or ("ept4" if args.seed == 0 else None)
    waves = args.output / "tdpwalk_mmu.fst" if args.waves else None
    print(f"tdpwalk demo: {','.join(names)} on {args.sim}, seed {args.seed}, size {args.size}"
          f"{', first VM ' + fmt if fmt else ''}", flush=True)
    print(f"building (once per configuration; cached in {build_root() / 'cocotb'}) "
          "and running ...", flush=True)
    extra = {"TDPWALK_PROGRESS": "500", "COCOTB_LOG_LEVEL": "WARNING",
             "GPI_LOG_LEVEL": "WARNING", "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    if fmt:
        extra["TDPWALK_FORMAT"] = fmt
    start = time.monotonic()
    results_path, png_path = args.output / "results.json", args.output / "report.png"
    args.output.mkdir(parents=True, exist_ok=True)
    # Results and plot of an earlier run never stay beside this run's.
    results_path.unlink(missing_ok=True)
    png_path.unlink(missing_ok=True)
    failure = None
    try:
        results = run_mmu(args.sim, names, seed=args.seed, size=args.size, waves=waves,
                          results=results_path, extra=extra)
    except ToolchainError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        results_path.unlink(missing_ok=True)
        print(f"interrupted: no results written to {args.output}", file=sys.stderr)
        return 130
    except AssertionError as e:
        failure = e
        results = json.loads(results_path.read_text()) if results_path.exists() else []
    wall = time.monotonic() - start
    print()
    print(_table(results))
    total = sum(r["translations"] for r in results)
    mism = sum(r["mismatches"] for r in results)
    hits = sum(r["counters"]["tlb_hits"] for r in results)
    reqs = sum(r["counters"]["requests"] for r in results)
    walks = [v for r in results for v in r["walk_latencies"]]
    print(f"\ntranslations {total}   mismatches {mism}   faults handled by the model "
          f"{sum(r['faults_handled'] for r in results)}   TLB hit rate "
          f"{100 * hits / max(reqs, 1):.1f}%   walk latency p50 {percentile(walks, 50)} / "
          f"p99 {percentile(walks, 99)} cycles   flushes {sum(r['flushes'] for r in results)}"
          f"   dirty pages harvested {sum(r['dirty_pages_harvested'] for r in results)} "
          f"(lost {sum(r['dirty_lost'] for r in results)})")
    print(f"scoreboard: {sum(r['checked'] for r in results)} responses checked, "
          f"{sum(r['stale_hits_allowed'] for r in results)} cached translations the model "
          f"changed without needing a flush, {sum(r['raced_faults'] for r in results)} faults "
          f"of walks racing a model step (retried)")
    kinds = {}
    for r in results:
        for kind, n in r["stale_kinds"].items():
            kinds[kind] = kinds.get(kind, 0) + n
    if kinds:
        print("  cached translations by change: " + ", ".join(f"{k} {n}" for k, n in
                                                             sorted(kinds.items())))
    for r in results:
        for heading, counts in r.get("details", {}).items():
            print(f"{r['scenario']}: {heading}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    sim_cycles = sum(r["cycles"] for r in results)
    print(f"{sim_cycles} cycles simulated in {wall:.1f} s (including build and start-up)")
    png = plot(results, png_path) if results else None
    print(f"results: {results_path}")
    if png:
        print(f"plot:    {png}")
    if waves:
        waves = pathlib.Path(results[0].get("waves", waves)) if results else waves
        print(f"waves:   {waves}  (gtkwave {waves} {waves.with_suffix('.gtkw')})")
    if failure is not None or mism:
        print(f"FAILED: {failure or f'{mism} mismatches'}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
