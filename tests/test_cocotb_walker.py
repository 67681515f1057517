"""The walker's generated Verilog on Icarus and Verilator (cocotb), replaying random
vector files of every format and comparing each answer, PTE read and A/D update with the
reference walker, under latency and random back-pressure on every AXI channel."""

import pytest

from cocotb_tests.runner import SIMULATORS, replay
from sw_model.formats import FORMAT_NAMES, get_format
from sw_model.vectors import load_vectors, random_vectors, run_vectors, save_vectors


@pytest.mark.parametrize("sim", SIMULATORS)
@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_random_vectors_on_simulator(sim, name, tmp_path):
    fmt = get_format(name)
    seed = FORMAT_NAMES.index(name) + 100
    ad = fmt.ad_modes[seed % len(fmt.ad_modes)]
    path = tmp_path / "vectors.json"
    save_vectors(random_vectors(name, seed, 150, ad=ad), path)
    lines = replay(path, sim, latency=1 + seed % 3, stall=0.25, seed=seed)
    expect = [r.to_json() for r in run_vectors(load_vectors(path))]
    assert len(lines) == len(expect) == 150
    for line, want in zip(lines, expect):
        assert {k: v for k, v in line.items() if k != "index"} == want, f"seed {seed}"
