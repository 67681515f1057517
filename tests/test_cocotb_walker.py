"""The walker's generated Verilog on Icarus and Verilator (cocotb), replaying random
vector files of every format and comparing each answer, PTE read and A/D update, and the
final memory, with the reference walker, under latency and random back-pressure on every
AXI channel."""

import random

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


@pytest.mark.slow
@pytest.mark.parametrize("name,ad", [(name, ad) for name in FORMAT_NAMES
                                     for ad in get_format(name).ad_modes])
@pytest.mark.parametrize("seed", range(10))
def test_random_vectors_regress(name, ad, seed, tmp_path):
    """The regression's walker vectors: 5,000 accesses per format, A/D mode and seed on
    Verilator (several times the rate of Amaranth's simulator, which runs 300 of them in
    tests/test_hw_walker.py)."""
    rng = random.Random(seed)
    path = tmp_path / "vectors.json"
    save_vectors(random_vectors(name, 10_000 + seed, 5000, ad=ad), path)
    lines = replay(path, "verilator", latency=rng.choice((1, 2, 5)),
                   stall=rng.choice((0.0, 0.2)), seed=seed)
    assert len(lines) == 5000, f"seed {seed}: {len(lines)} answers"
