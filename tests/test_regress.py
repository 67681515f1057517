"""Long regressions (`make regress`, -m slow): a scoreboarded random stream of
REGRESS_COUNT translations per format (default 1,000,000) on Verilator, each format a
task of its own; `make test` runs a short stream of one
format. cocotb_tests/regress.py has the stream; docs/regress.md says how `make regress`
runs it."""

import os

import pytest

from cocotb_tests.report import bound_problems
from cocotb_tests.runner import run_mmu
from sw_model.formats import FORMAT_NAMES

COUNT = int(os.environ.get("REGRESS_COUNT", "1000000"))


def run_stream(fmt, count, seed, sim="verilator"):
    [result] = run_mmu(sim, ["stream"], seed=seed, test_module="cocotb_tests.regress",
                       extra={"TDPWALK_FORMAT": fmt, "TDPWALK_COUNT": str(count),
                              "TDPWALK_CHURN": str(max(count // 40, 500)),
                              "TDPWALK_PROGRESS": str(max(count // 10, 4096))})
    assert result["mismatches"] == 0, f"{fmt} seed {seed}: {result['mismatch_list'][:3]}"
    assert result["translations"] == result["checked"] >= count, f"{fmt} seed {seed}"
    problems = bound_problems([result])     # traffic checked, acceptances within bounds
    assert not problems, [message for _, message in problems]
    # The stream must exercise both the TLB and the walkers: hits, and at least a few
    # hundred walks (a G-stage stream over 2 MiB pages hits 99.9 % of the time).
    walks = round((1 - result["tlb_hit_rate"]) * result["translations"])
    summary = {k: v for k, v in result.items() if k != "mismatch_list"}
    assert result["flushes"] > 0 and result["tlb_hit_rate"] > 0.1, summary
    assert walks >= min(500, count // 50), summary
    return result


def test_stream_short():
    run_stream("sv48x4", 3000, 7)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMAT_NAMES)
@pytest.mark.parametrize("sim", ["verilator"])
def test_stream_million(sim, fmt):
    run_stream(fmt, COUNT, 100 + FORMAT_NAMES.index(fmt), sim)
