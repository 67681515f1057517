"""Fault injection on the MMU top's Verilog, on Icarus and Verilator: AXI
error responses on PTE reads and A/D writes, random latency, reordering and
back-pressure on every AXI channel, reset in the middle of walks and invalidations,
invalidations at every cycle offset of a walk, and software changing a PTE between the
walker's read and its A/D compare (cocotb_tests/fault_bench.py). `make test` runs each
short on both simulators; `make regress` (-m slow) runs every format over more seeds."""

import pytest

from cocotb_tests.fault_bench import FAULTS
from cocotb_tests.report import bound_problems
from cocotb_tests.runner import SIMULATORS, run_mmu

ALL = list(FAULTS)


def run_faults(sim, names, seed, size):
    results = run_mmu(sim, names, seed=seed, size=size,
                      test_module="cocotb_tests.fault_bench")
    assert [r["scenario"] for r in results] == names, f"seed {seed}"
    for r in results:
        assert r["mismatches"] == 0, f"{r['scenario']} seed {r['seed']}: {r['mismatch_list'][:3]}"
        assert r["checked"] > 0 and r["translations"] > 0, f"{r['scenario']} seed {r['seed']}"
    # The scoreboard checks what no fault decides, and each walk's traffic (a request
    # whose answer a fault decides pauses it): traffic checked, acceptances within bounds.
    problems = bound_problems(results)
    assert not problems, [message for _, message in problems]
    return {r["scenario"]: r for r in results}


def _check_coverage(by_name):
    """The faults were really injected, not skipped."""
    if "bus_error" in by_name:
        injected = by_name["bus_error"]["details"]["bus errors"]
        assert injected.get("read_injected", 0) > 0, injected
        assert injected.get("atomic_injected", 0) + injected.get("random_injected", 0) > 0
    if "reset_walk" in by_name:
        assert by_name["reset_walk"]["lost"] > 0, "no request was in flight at a reset"
        assert by_name["reset_walk"]["axi_resets"] == by_name["reset_walk"]["resets"] + 1
    if "inval_offset" in by_name:
        offsets = by_name["inval_offset"]["offsets"]
        walk = min(v for k, v in by_name["inval_offset"]["details"]["invalidation offsets"]
                   .items() if k.endswith("walk cycles"))
        # The invalidation met the walk at every cycle from its acceptance to its answer.
        assert set(range(1, walk)) <= set(offsets), offsets
    if "ad_race" in by_name:
        races = by_name["ad_race"]["details"]["A/D races"]
        fired = sum(v for k, v in races.items() if k not in ("no A/D update", "no translation"))
        assert fired >= 8, races
        # Each raced compare, and the restarted walks', checked by the scoreboard.
        assert by_name["ad_race"]["atomic_compares_checked"] >= fired, by_name["ad_race"]


@pytest.mark.parametrize("sim", SIMULATORS)
def test_faults_short(sim):
    _check_coverage(run_faults(sim, ALL, 0, "short"))


@pytest.mark.slow
@pytest.mark.parametrize("sim,seed", [(sim, seed) for sim in SIMULATORS for seed in range(1, 5)
                                      # Icarus is ~50x slower on the MMU: one long seed
                                      if sim == "verilator" or seed == 1])
def test_faults_long(sim, seed):
    _check_coverage(run_faults(sim, ALL, seed * 1000, "long"))
