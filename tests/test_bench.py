"""The benchmark machinery: a cheap benchmark through ``python -m bench`` writes a
results file with real tables; the table protocol, the access patterns and the parsers
of the synthesis flow's logs."""

import json
import re

import pytest

import bench.__main__ as runner
from bench.__main__ import available, main
from bench.bench_rtl import PATTERNS, pattern
from bench.bench_synth import _parse_nextpnr, _parse_yosys
from bench.report import SECTIONS, Table


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """Saved sections and docs/ in a temporary directory."""
    monkeypatch.setattr(runner, "SAVED", tmp_path / "saved")
    monkeypatch.setattr(runner, "DOCS", tmp_path / "docs")
    return tmp_path


def test_compare_writes_results(scratch, capsys):
    out = scratch / "results.md"
    assert main(["compare", "--quick", "--output", str(out)]) == 0
    text = out.read_text()
    printed = capsys.readouterr().out
    assert "Open MMUs compared" in printed
    assert text.startswith("# tdpwalk results")
    assert re.search(r"^- machine: .+, \d+ cores", text, re.M)
    assert re.search(r"^- tools: python [\d.]+, amaranth [\d.]+", text, re.M)
    assert "yosys" in text and "nextpnr" in text and "icarus" in text
    assert f"## {SECTIONS['compare']}" in text
    row = next(l for l in text.splitlines() if l.startswith("| tdpwalk"))
    # measured: cycles per level of both formats and the hit latency in cycles
    assert re.search(r"ept4 \d+\.\d\d, sv39x4 \d+\.\d\d", row)
    hit = int(re.search(r"(\d+) cycles from request accepted", row).group(1))
    assert 1 <= hit <= 4
    for anchor in ("| CVA6", "| Rocket", "| XiangShan"):
        assert anchor in text


def test_sections_merge(scratch, capsys):
    """Running one benchmark updates its section; the report needs every section."""
    info = {"date": "2026-01-01 00:00 UTC", "machine": "m"}
    others = [n for n in available() if n != "compare"]
    runner.save(others[0], True, [Table("first", ["a"], [[1]])], 1.0, info)
    assert main(["--report", "--quick"]) == 0
    assert "not written: no saved results of" in capsys.readouterr().out
    assert not (scratch / "docs" / "results.md").exists()
    for name in others[1:]:
        runner.save(name, True, [Table(f"table of {name}", ["a", "b"], [[1, "x"]])], 2.0, info)
    assert main(["compare", "--quick"]) == 0
    text = (scratch / "docs" / "results.md").read_text()
    assert "### first" in text and "| 1 | x |" in text and "### Open MMUs compared" in text
    headings = [l for l in text.splitlines() if l.startswith("## ")]
    assert headings == [f"## {SECTIONS.get(n, n)}" for n in available()]
    assert runner.load("compare", True)[0][0].title == "Open MMUs compared"
    assert runner.load("compare", False) is None


def test_available_in_report_order():
    names = available()
    assert {"rtl", "synth", "cosim", "model", "compare"} <= set(names)
    assert names.index("rtl") < names.index("synth") < names.index("compare")


def test_table_checks_rows():
    with pytest.raises(ValueError, match="row 0 has 1 cells, expected 2"):
        Table("t", ["a", "b"], [[1]])
    md = Table("t", ["a", "b"], [[1, 2]], "note", ["img/x.png"]).markdown()
    assert "| 1 | 2 |" in md and "![t](img/x.png)" in md


def test_patterns():
    for name in PATTERNS:
        gpas = pattern(name, 300)
        assert len(gpas) == 300 and gpas == pattern(name, 300)
        assert all(gpa < 1 << 30 for gpa in gpas)
    assert len({g >> 12 for g in pattern("strided", 300)}) == 16
    with pytest.raises(ValueError, match="pattern must be one of"):
        pattern("zigzag", 10)


NEXTPNR_LOG = """\
Info: Device utilisation:
Info: 	          TRELLIS_IO:       3/    365     0%
Info: 	                DCCA:       1/     56     1%
Info: 	              DP16KD:       0/    208     0%
Info: 	          TRELLIS_FF:    6035/  83640     7%
Info: 	        TRELLIS_COMB:   14380/  83640    17%
Info: Critical path report for clock 'clk$TRELLIS_IO_IN' (posedge -> posedge):
Info:       type curr  total name
Info:   clk-to-q  0.52  0.52 Source mmu.U$$0.state_TRELLIS_FF_Q.Q
Info:    routing  1.20  1.72 Net mmu.U$$0.state (12,3) -> (14,5)
Info:                          Sink $abc$123$auto$lut.A
Info:      logic  0.24  1.96 Source $abc$123$auto$lut.Z
Info:    routing  0.30  2.26 Net y (14,5) -> (14,5)
Info:                          Sink mmu.wide_PFUMX_ALUT_LUT4.C
Info:      logic  0.26  2.52 Source mmu.wide_PFUMX_ALUT_LUT4.OFX
Info:    routing  0.00  2.52 Net z (14,5) -> (14,5)
Info:                          Sink mmu.add_CCU2C.CIN
Info:      logic  0.06  2.58 Source mmu.add_CCU2C.FCO
Info:    routing  0.18  2.76 Net x (14,5) -> (15,5)
Info:                          Sink mmu.tlb.valid_TRELLIS_FF_Q.DI
Info: 4.1 ns logic, 5.3 ns routing
Info: Max frequency for clock 'clk$TRELLIS_IO_IN': 106.38 MHz (PASS at 100.00 MHz)
"""

YOSYS_STAT = """\
=== top ===
    22263 cells
      746   CCU2C
    12027   LUT4
     2882   PFUMX
     6035   TRELLIS_FF
"""


def test_log_parsers():
    r = _parse_nextpnr(NEXTPNR_LOG)
    assert r["fmax"] == pytest.approx(106.38)
    assert r["util"]["TRELLIS_COMB"] == (14380, 83640)
    assert r["path"] == ["mmu.U$$0.state_TRELLIS_FF_Q.Q", "mmu.tlb.valid_TRELLIS_FF_Q.DI"]
    assert r["logic_routing"] == ("4.1", "5.3") and r["levels"] == 3     # a LUT, a wide mux, a carry hop
    cells = _parse_yosys("Printing statistics.\n" + YOSYS_STAT)
    assert cells["LUT4"] == 12027 and cells["TRELLIS_FF"] == 6035 and cells["DP16KD"] == 0


def test_synth_mode(monkeypatch):
    """The Makefile exports BENCH_SYNTH even when unset: empty means the default."""
    from bench import bench_synth
    for value, mode in [("", "run"), ("full", "full"), ("cached", "cached")]:
        monkeypatch.setenv("BENCH_SYNTH", value)
        assert bench_synth.synth_mode() == mode
    monkeypatch.delenv("BENCH_SYNTH")
    assert bench_synth.synth_mode() == "run"
    monkeypatch.setenv("BENCH_SYNTH", "fast")
    with pytest.raises(ValueError, match="BENCH_SYNTH must be one of run, full"):
        bench_synth.synth_mode()


def test_synth_configurations_build():
    """Every configuration and block the synthesis bench runs elaborates in its wrapper."""
    from bench.bench_synth import BLOCKS, DEFAULT, SMALL, WALKER, IoWrapper
    for config in (DEFAULT, SMALL, WALKER, *BLOCKS.values()):
        ins, outs = IoWrapper(config).bits()
        assert ins > 0 and outs > 0, config
    with pytest.raises(ValueError, match="block must be one of mmu, walker"):
        IoWrapper({"block": "cache"})


PEER_V = """\
module sub(input clk, input d, output reg q);
  always @(posedge clk) q <= d;
endmodule
module peer(input clk, input rst, input [7:0] a, output reg [3:0] y, output z,
            output [1:0] same, output zero);
  always @(posedge clk) y <= rst ? 4'd0 : a[3:0] ^ a[7:4];
  sub s(.clk(clk), .d(a[0]), .q(z));
  assign same = a[7:6];
  assign zero = 1'b0;
endmodule
"""


def test_verilog_peer_wrapper(tmp_path):
    """Another MMU's Verilog module in the synthesis wrapper: its hierarchy kept, its clock
    on the wrapper's clock, every other port bit on the shift register or the fold; after
    ``synth_ecp5`` the wrapper's cells are counted exactly, also where an output repeats
    an input (its register merged with a shift-register stage) or is constant 0 (none)."""
    from amaranth.back import rtlil
    from bench.bench_synth import wrapper_cells, yosys
    from bench.peers import VerilogWrapper, elaborate
    (tmp_path / "peer.v").write_text(PEER_V)
    # A relative path: YoWASP's /tmp is not the host's.
    ports = elaborate("read_verilog peer.v", "peer", tmp_path)
    assert ports == [("input", 1, "clk"), ("input", 1, "rst"), ("input", 8, "a"),
                     ("output", 4, "y"), ("output", 1, "z"), ("output", 2, "same"),
                     ("output", 1, "zero")]
    design = (tmp_path / "peer.il").read_text()
    assert "module \\peer" in design and "module \\sub" in design
    wrapper = VerilogWrapper("peer", ports, "clk")
    assert wrapper.bits() == (9, 8)
    text = rtlil.convert(wrapper, name="top")
    cell = text[text.index("cell \\peer "):]
    cell = cell[:cell.index("\n  end")]
    assert re.search(r"connect \\clk \\clk( \[0\])?$", cell, re.M)
    assert re.search(r"connect \\rst \\chain \[0\]$", cell, re.M)
    assert re.search(r"connect \\a \\chain \[8:1\]$", cell, re.M)
    with pytest.raises(ValueError, match="no input port 'clock'"):
        VerilogWrapper("peer", ports, "clock")
    (tmp_path / "top.il").write_text(text)
    yosys("read_rtlil peer.il; read_rtlil top.il; synth_ecp5 -top top -json top.json",
          tmp_path, "yosys.log", "peer")
    netlist = json.loads((tmp_path / "top.json").read_text())
    types = [c["type"] for c in netlist["modules"]["top"]["cells"].values()]
    # 9 shift-register stages; output registers: y 4, z 1, same 1 (same[0] is the stage
    # after a[6]), zero none; the fold's
    luts, ffs = wrapper_cells(netlist)
    assert ffs == 9 + 4 + 1 + 1 + 1
    assert types.count("TRELLIS_FF") - ffs == 5         # y and the submodule's q
    assert types.count("LUT4") - luts == 4              # y's XOR


@pytest.mark.parametrize("name", ["Rocket TLB", "Rocket PTW", "VexRiscv Linux core",
                                  "CVA6 MMU"])
def test_peers_resolve(name):
    """Each peer's sources are found in its installed package and declare its module."""
    from bench.peers import PEERS
    peer = PEERS[name]
    paths = peer.paths()
    assert len(paths) == len(peer.files)
    declared = re.compile(rf"^\s*module\s+{peer.top}\b", re.M)
    assert any(declared.search(open(path).read()) for path in paths)
    assert peer.version().startswith(peer.package)
    assert len(peer.digest()) == 64


def test_peer_errors():
    from bench.bench_synth import design
    from bench.peers import PEERS, Peer
    assert set(PEERS) == {"Rocket TLB", "Rocket PTW", "VexRiscv Linux core", "CVA6 MMU"}
    missing = Peer("x", "pythondata-cpu-none", ("x.v",), "x", "clk", "")
    with pytest.raises(RuntimeError, match=r"pythondata-cpu-none is missing: install the "
                                           r"\[bench\] extra"):
        missing.paths()
    with pytest.raises(ValueError, match="peer must be one of Rocket TLB"):
        design({"peer": "BOOM"})


@pytest.mark.parametrize("name, value", [("BENCH", "full"), ("BENCH_SYNTH", "fast")])
def test_bad_make_variables_stop_before_anything_runs(monkeypatch, capsys, name, value):
    """``make bench BENCH=full`` (a typo for BENCH_SYNTH=full) or a bad BENCH_SYNTH ends
    in one line, before any benchmark starts."""
    from bench.__main__ import main
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as stopped:
        main([])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and len(err.splitlines()) == 1 and value in err, err
