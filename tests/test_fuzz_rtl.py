"""Fuzzing the RTL walker against the reference walker with arbitrary PTE words.

Every example (tests/fuzz_strategies.py) writes walk paths of arbitrary entries for up
to four VMs of one format into one memory and runs all their accesses through the RTL
walker in Amaranth's simulator in one run (hw.sim.check_against_model), comparing every
result field by field with sw_model.walker.translate, and the final memories (A/D
updates). A disagreement, or an AXI protocol error or hang, fails the example; Hypothesis
shrinks it, and the smallest one is saved as a vector file per failing VM under
build/fuzz-failures/, named in the assertion message, to replay with
``python -m hw run FILE --sim amaranth`` next to ``python -m sw_model run FILE``.

The fast slice is derandomized (the same examples every run). The slow variant
(``make regress``) draws from a seed it prints, ``TDPWALK_FUZZ_SEED`` to repeat it, and
``TDPWALK_FUZZ_EXAMPLES`` examples per format.
"""

import collections
import dataclasses
import os
import pathlib
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, find, given, seed, settings
from hypothesis.errors import NoSuchExample

from fuzz_strategies import Context, FuzzCase, Path, build, fuzz_case
from hw.sim import ProtocolError, VmContext, check_against_model, run_walker
from sw_model.walker import translate
from sw_model.formats import FORMAT_NAMES, get_format
from sw_model.vectors import VectorFile, load_vectors, run_vectors, save_vectors

FAILURES = pathlib.Path(__file__).resolve().parents[1] / "build" / "fuzz-failures"
FAST_EXAMPLES = 40
SLOW_EXAMPLES = int(os.environ.get("TDPWALK_FUZZ_EXAMPLES", 2000))
SLOW_SEED = int(os.environ.get("TDPWALK_FUZZ_SEED", random.SystemRandom().randrange(1 << 32)))

#: Outcomes the fast slice must reach per architecture (EPT and NPT report a misaligned
#: huge frame as a reserved-bit fault; only x86 has no A/D faults).
REACHED = {
    "ept": ("ok", "not_present", "permission", "reserved", "gpa_range", "bus_error"),
    "npt": ("ok", "not_present", "permission", "reserved", "gpa_range", "bus_error"),
    "gstage": ("ok", "not_present", "permission", "reserved", "misaligned", "gpa_range",
               "bus_error", "ad_clear"),
}

_COMMON = dict(deadline=None, database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def save_failure(case, memory, per_context, indices, tag):
    """Write one vector file per VM in ``indices`` (the initial memory, that VM's
    accesses) to build/fuzz-failures/; their paths. Older files of ``tag`` go first, so
    after shrinking only the smallest example's files remain."""
    FAILURES.mkdir(parents=True, exist_ok=True)
    for old in FAILURES.glob(f"{tag}-vm*.json"):
        old.unlink()
    paths = []
    for index in indices:
        root, accesses = per_context[index]
        vectors = VectorFile(fmt=get_format(case.fmt_name), vm=case.contexts[index].vm, root=root,
                             memory=memory.copy(), accesses=accesses,
                             bus_errors=memory.poisoned)
        path = FAILURES / f"{tag}-vm{index}.json"
        save_vectors(vectors, path)
        paths.append(path)
    return paths


def check_case(case, tag):
    """Run ``case`` on the RTL and the model; the model's results, or AssertionError
    naming the saved vector files on any difference."""
    memory, contexts, accesses, per_context = build(case)
    try:
        rtl, model, mismatches, rtl_mem, model_mem = check_against_model(memory, contexts,
                                                                         accesses)
    except ProtocolError as e:
        problem, indices = f"AXI protocol error or hang: {e}", range(len(contexts))
    else:
        if mismatches:
            index, expect, got = mismatches[0]
            problem = (f"{len(mismatches)} of {len(accesses)} results differ; first, "
                       f"access {index} (VM {accesses[index][2]}):\n  model {expect}\n"
                       f"  rtl   {got}")
            indices = sorted({accesses[i][2] for i, _, _ in mismatches})
        elif not np.array_equal(rtl_mem.words, model_mem.words):
            differ = np.flatnonzero(rtl_mem.words != model_mem.words)[:4] * 8
            problem = f"memories differ after the run at {[hex(a) for a in differ]}"
            indices = range(len(contexts))
        else:
            return model
    paths = save_failure(case, memory, per_context, indices, tag)
    replay = "\n".join(f"  python -m hw run {p} --sim amaranth   # vs python -m sw_model "
                       f"run {p}" for p in paths)
    raise AssertionError(f"{case.fmt_name}: {problem}\nsaved for replay:\n{replay}")


@pytest.mark.parametrize("fmt_name", FORMAT_NAMES)
def test_fuzz_walker(fmt_name):
    @settings(max_examples=FAST_EXAMPLES, derandomize=True, **_COMMON)
    @given(fuzz_case(fmt_name))
    def run(case):
        kinds.update(_kinds(check_case(case, fmt_name)))
    kinds = collections.Counter()
    run()
    # The fuzzer is only as good as what it reaches: every outcome, on every format.
    # Which examples Hypothesis draws depends on the modules loaded (it mines their
    # constants), so an outcome the run missed is searched for, on the model alone,
    # and the example found is checked on the RTL too.
    for kind in sorted(set(REACHED[get_format(fmt_name).arch]) - set(kinds)):
        try:
            case = find(fuzz_case(fmt_name), lambda c, kind=kind: kind in _model_kinds(c),
                        settings=settings(max_examples=300, derandomize=True,
                                          phases=[Phase.generate], **_COMMON))
        except NoSuchExample:
            raise AssertionError(f"{fmt_name}: the fuzzer never produces {kind} "
                                 f"(it reached {dict(kinds)})") from None
        kinds.update(_kinds(check_case(case, fmt_name)))


@pytest.mark.slow
@pytest.mark.parametrize("fmt_name", FORMAT_NAMES)
def test_fuzz_walker_long(fmt_name):
    print(f"fuzz seed {SLOW_SEED} (TDPWALK_FUZZ_SEED), {SLOW_EXAMPLES} examples")

    @seed(SLOW_SEED)
    @settings(max_examples=SLOW_EXAMPLES, **_COMMON)
    @given(fuzz_case(fmt_name))
    def run(case):
        check_case(case, f"{fmt_name}-long")
    try:
        run()
    except AssertionError as e:
        raise AssertionError(f"{e}\nfuzz seed {SLOW_SEED}: repeat with "
                             f"TDPWALK_FUZZ_SEED={SLOW_SEED}") from None


def test_a_disagreement_is_saved_and_replays(monkeypatch):
    """The harness itself: a model that gets one HPA wrong fails the example, and the
    saved file replays on the RTL (right HPA) and on the model (the file is faithful)."""
    import hw.sim
    real = hw.sim.translate

    def wrong(*args, **kwargs):
        result = real(*args, **kwargs)
        if result.ok:
            result = dataclasses.replace(result, hpa=result.hpa ^ 0x1000)
        return result

    fmt = get_format("npt4")
    vm = fmt.vm_options()
    leaf = fmt.make_leaf(0x1234000, 1)
    path = Path(gpa=0x7654321000, words=(("table", 0),) * 3 + ((leaf, 0),), poison=frozenset())
    case = FuzzCase("npt4", (Context(vm, (path,), ((0, "read", 0), (0, "write", 0))),
                             Context(vm, (path,), ((0, "execute", 0),))))
    monkeypatch.setattr(hw.sim, "translate", wrong)
    with pytest.raises(AssertionError, match="results differ") as info:
        check_case(case, "selftest")
    monkeypatch.undo()
    paths = [line.split()[4] for line in str(info.value).splitlines()
             if line.startswith("  python -m hw run")]
    assert paths and all(pathlib.Path(p).exists() for p in paths)
    for p in paths:
        vectors = load_vectors(p)
        model = [r.to_json() for r in run_vectors(load_vectors(p))]
        rtl = [r.result.to_json() for r in run_walker(vectors.memory, [_context(vectors)],
                                                     vectors.accesses)]
        assert rtl == model
        pathlib.Path(p).unlink()


def _context(vectors):
    return VmContext(vectors.fmt, vectors.root, vectors.vm)


def _kinds(results):
    return [r.kind if not r.ok else "ok" for r in results]


def _model_kinds(case):
    """The outcomes of ``case`` on the reference walker alone (cheap: no simulator)."""
    memory, contexts, accesses, _ = build(case)
    return set(_kinds(translate(memory, contexts[vm].fmt, contexts[vm].root, gpa, access,
                                vm=contexts[vm].vm) for gpa, access, vm in accesses))
