"""The RTL walker against the reference walker on random vector files.

Every format in every A/D mode it supports: each response (translation or fault, with
its level, PTE address, architecture report, PTE reads and A/D writes) and the final
memory must equal what :func:`sw_model.walker.translate` gives on the same memory.
Failures print the seed; replay with ``python -m sw_model random --format F --seed S
--count N -o v.json`` and ``python -m hw run v.json --waves w.vcd``.
"""

import collections

import numpy as np
import pytest

from sw_model.formats import FORMAT_NAMES, get_format
from sw_model.vectors import random_vectors

from hw.sim import VmContext, check_against_model

COMBOS = [(name, ad) for name in FORMAT_NAMES for ad in get_format(name).ad_modes]


def _check(vectors, **kwargs):
    contexts = [VmContext(vectors.fmt, vectors.root, vectors.vm)]
    rtl, model, mismatches, rtl_mem, model_mem = check_against_model(
        vectors.memory, contexts, vectors.accesses, **kwargs)
    where = (f"format {vectors.fmt.name}, vm {vectors.vm.to_json()}, seed {vectors.seed}, "
             f"{len(vectors.accesses)} accesses, run options {kwargs}")
    assert not mismatches, (f"{len(mismatches)} mismatches ({where}); first: access "
                            f"{mismatches[0][0]}\n model {mismatches[0][1]}\n rtl   "
                            f"{mismatches[0][2]}")
    assert np.array_equal(rtl_mem.words, model_mem.words), f"final memory differs ({where})"
    return rtl, model


@pytest.mark.parametrize("name,ad", COMBOS)
def test_random_vectors(name, ad):
    # 300 accesses per format and A/D mode with a synchronous-SRAM memory (the regression
    # runs 5,000 on ten seeds each on Verilator: tests/test_cocotb_walker.py).
    seed = 1000 + FORMAT_NAMES.index(name) * 10 + get_format(name).ad_modes.index(ad)
    vectors = random_vectors(name, seed, 300, ad=ad)
    rtl, model = _check(vectors, latency=1)
    kinds = collections.Counter("ok" if r.ok else r.kind for r in model)
    # The file must exercise translations and the common faults, or it proves little.
    for kind in ("ok", "not_present", "reserved", "gpa_range"):
        assert kinds[kind], f"seed {seed}: no {kind} in {dict(kinds)}"
    assert any(r.result.ok and r.result.ad_writes for r in rtl) == (ad == "hardware"), \
        f"seed {seed}: A/D writes do not follow the A/D mode {ad}"


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_random_with_stalls(name):
    # Slow memory and random back-pressure on every channel: same answers.
    fmt = get_format(name)
    seed = 2000 + FORMAT_NAMES.index(name)
    vectors = random_vectors(name, seed, 250, ad=fmt.ad_modes[0])
    _check(vectors, latency=3, stall=0.3, seed=seed)
