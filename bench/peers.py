"""Other open MMUs through the synthesis flow of bench/bench_synth.py, so their area and
Fmax are measured the same way as ours, not quoted.

A peer is a module of the Verilog or SystemVerilog that a PyPI ``pythondata-cpu-*``
package ships (the sources LiteX builds its SoCs from). Yosys elaborates it
(``read_verilog``, or the slang frontend ``read_slang`` for SystemVerilog), keeps only
that module's hierarchy (``peer.il``) and lists its ports (``portlist``). Amaranth then
wraps it as our blocks are wrapped (:class:`VerilogWrapper`, a
:class:`~bench.bench_synth.PinWrapper`): its clock port on the wrapper's clock, every
other input (resets included) a bit of the shift register, every output registered and
XOR-folded. ``synth_ecp5`` and nextpnr then run exactly as for our blocks, cached under
build/synth/ with the peer's sources in the key.

``{"peer": NAME}`` is the configuration :func:`bench.bench_synth.synthesize` takes for a
peer of :data:`PEERS`.
"""

import hashlib
import importlib
import importlib.metadata
import json
import re
from dataclasses import dataclass, field

from amaranth import ClockSignal, Instance, Signal
from amaranth.back import rtlil

from .bench_synth import _ELABORATE, PinWrapper, yosys

__all__ = ["Peer", "PEERS", "VerilogWrapper", "elaborate", "read_ports"]


class VerilogWrapper(PinWrapper):
    """A Verilog module ``module`` in a :class:`~bench.bench_synth.PinWrapper`.

    ``ports``: ``(direction, width, name)`` of each port (:func:`read_ports`); the input
    ``clock`` is driven by the wrapper's clock, every other input by the shift register.
    """

    def __init__(self, module, ports, clock):
        directions = {name: direction for direction, _, name in ports}
        if directions.get(clock) != "input":
            raise ValueError(f"{module} has no input port {clock!r} for the clock")
        inouts = [name for direction, _, name in ports if direction not in ("input", "output")]
        if inouts:
            raise ValueError(f"{module}: a wrapper has no pins for {', '.join(inouts)}")
        self.ins = [(name, Signal(width, name=name)) for direction, width, name in ports
                    if direction == "input" and name != clock]
        self.outs = [(name, Signal(width, name=name)) for direction, width, name in ports
                     if direction == "output"]
        super().__init__(Instance(module, ("i", clock, ClockSignal()),
                                  *(("i", name, s) for name, s in self.ins),
                                  *(("o", name, s) for name, s in self.outs)))

    def ports(self):
        return [s for _, s in self.ins], [s for _, s in self.outs]


def read_ports(text):
    """``(direction, width, name)`` of each port listed by Yosys's ``portlist``."""
    return [(direction, abs(int(msb) - int(lsb)) + 1, name) for direction, msb, lsb, name in
            re.findall(r"^(input|output|inout) \[(-?\d+):(-?\d+)\] (\S+)$", text, re.M)]


def elaborate(reads, top, work):
    """Yosys reads the design (``reads``, its commands) and keeps the hierarchy under
    ``top``: written to ``work / "peer.il"``; the ports of ``top`` (:func:`read_ports`)."""
    yosys(f"{reads}; hierarchy -top {top}; write_rtlil peer.il; "
          f"tee -q -o ports.txt portlist {top}", work, "elaborate.log", top)
    return read_ports((work / "ports.txt").read_text())


@dataclass(frozen=True)
class Peer:
    """A module of another MMU's Verilog, for :func:`bench.bench_synth.synthesize`.

    Members
    -------
    name : str
        The row's name in the table.
    package : str
        The PyPI distribution holding the sources (a ``pythondata-cpu-*`` package).
    files : tuple of str
        Source files, relative to the package's ``data_location``, in reading order.
    top : str
        The module to synthesize.
    clock : str
        Its clock port.
    what : str
        What the module is, for the table's note.
    slang : bool
        Read with ``read_slang`` (SystemVerilog) instead of ``read_verilog``.
    params : dict
        Parameters of ``top`` (``read_slang -G``), as the core instantiates it.
    """
    name: str
    package: str
    files: tuple
    top: str
    clock: str
    what: str
    slang: bool = False
    params: dict = field(default_factory=dict)

    @property
    def config(self):
        return {"peer": self.name}

    def _module(self):
        module = self.package.replace("-", "_")
        try:
            return importlib.import_module(module)
        except ImportError:
            raise RuntimeError(f"{self.package} is missing: install the [bench] extra "
                               f"(pip install {self.package})") from None

    def paths(self):
        """The absolute paths of :attr:`files`; an error if the package or a file is missing."""
        root = self._module().data_location
        paths = [f"{root}/{name}" for name in self.files]
        for path in paths:
            try:
                open(path, "rb").close()
            except OSError:
                raise RuntimeError(f"{self.package} has no {path}") from None
        return paths

    def version(self):
        """The package's version and the upstream revision its sources come from."""
        return (f"{self.package} {importlib.metadata.version(self.package)} "
                f"({self._module().data_git_describe})")

    def digest(self):
        """A digest of the sources and of how they are read (part of the cache key)."""
        digest = hashlib.sha256(json.dumps([self.top, self.clock, self.slang,
                                            sorted(self.params.items())]).encode())
        for path in self.paths():
            with open(path, "rb") as f:
                digest.update(f.read())
        return digest.hexdigest()

    def _reads(self):
        files = " ".join(self.paths())
        if not self.slang:
            return f"read_verilog {files}"
        params = "".join(f" -G {k}={v}" for k, v in self.params.items())
        return f"read_slang -j 1 --top {self.top}{params} {files}"   # -j 1: no threads in WASI

    def wrapper(self, work):
        """The module in its :class:`VerilogWrapper`, from the ports :meth:`prepare` listed."""
        return VerilogWrapper(self.top, read_ports((work / "ports.txt").read_text()),
                              self.clock)

    def prepare(self, work):
        """Elaborate the module and write its wrapper to ``work``: (the commands that read
        both, the wrapper)."""
        wrapper = VerilogWrapper(self.top, elaborate(self._reads(), self.top, work), self.clock)
        with _ELABORATE:
            (work / "top.il").write_text(rtlil.convert(wrapper, name="top"))
        return "read_rtlil peer.il; read_rtlil top.il", wrapper


ROCKET = "generated-src/freechips.rocketchip.system.LitexLinuxConfig.v"
#: The CVA6 core's packages (64-bit, Sv39), then the MMU, its PTW, TLB and PMP checkers.
CVA6 = ("core/include/cv64a6_imafdc_sv39_config_pkg.sv", "core/include/riscv_pkg.sv",
        "corev_apu/riscv-dbg/src/dm_pkg.sv", "core/include/ariane_pkg.sv",
        "common/submodules/common_cells/src/cf_math_pkg.sv",
        "common/submodules/common_cells/src/lzc.sv", "core/pmp/src/pmp_entry.sv",
        "core/pmp/src/pmp.sv", "core/mmu_sv39/tlb.sv", "core/mmu_sv39/ptw.sv",
        "core/mmu_sv39/mmu.sv")

#: The peers, cheapest first.
PEERS = {peer.name: peer for peer in [
    Peer("Rocket TLB", "pythondata-cpu-rocket", (ROCKET,), "TLB_1", "clock",
         "Rocket's instruction TLB (module `TLB_1` of `LitexLinuxConfig`, the RV64 Sv39 "
         "core of LiteX's `linux` variant: a sector of 4 pages, 4 superpage entries, its "
         "PMP checker)"),
    Peer("Rocket PTW", "pythondata-cpu-rocket", (ROCKET,), "PTW", "clock",
         "Rocket's page-table walker (module `PTW` of the same configuration: one walk at "
         "a time, an 8-entry PTE cache, the arbiter of its requestors)"),
    Peer("VexRiscv Linux core", "pythondata-cpu-vexriscv", ("VexRiscv_Linux.v",),
         "VexRiscv", "clk",
         "the whole VexRiscv core of LiteX's `linux` variant (`VexRiscv_Linux.v`: RV32 "
         "with an Sv32 MMU, a 4-entry TLB per port, 4 KiB instruction and data caches), "
         "as a scale for the others"),
    Peer("CVA6 MMU", "pythondata-cpu-cva6", CVA6, "mmu", "clk_i",
         "CVA6's MMU (`core/mmu_sv39/mmu.sv`, the older Sv39 MMU: instruction and data "
         "TLBs, the PTW and the PMP checkers), as the core's load/store unit instantiates "
         "it: 16-entry TLBs, 16-bit ASIDs; SystemVerilog read by Yosys's slang frontend",
         slang=True, params={"INSTR_TLB_ENTRIES": 16, "DATA_TLB_ENTRIES": 16,
                             "ASID_WIDTH": 16}),
]}
