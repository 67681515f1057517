"""The MMU top's generated Verilog on Icarus and Verilator (cocotb), driven by the TDP
MMU model on the hypervisor loop: every scenario (boot, steady traffic, memslot
deletion, dirty logging with eager splitting, harvesting, aging, huge-page recovery, two
VMs of different formats) with a scoreboard checking every response against the
reference walker. One simulator process per simulator runs all scenarios (one build
each, reused). `make regress` (-m slow) runs long versions over many seeds. The
waveform tests check the MMU's and the walker's GTKWave save files against their
dumps: every saved signal present and toggling, but those constant by design
(:data:`CONSTANT`, :data:`REPLAY_CONSTANT`)."""

import pathlib

import pytest

from cocotb_tests.report import bound_problems
from cocotb_tests.runner import REPO, SIMULATORS, mmu_sources, run_mmu
from cocotb_tests.scenarios import SCENARIOS

ALL = list(SCENARIOS)

#: Scenarios whose guests are TDP MMU VMs, their flush obligations checked at every
#: model step (the nested ones drive the shadow MMU, which the checker does not model).
OBLIGATIONS_CHECKED = [name for name in ALL if not name.startswith("nested")]


def _check(results, seed):
    assert [r["scenario"] for r in results] == ALL, f"seed {seed}"
    for r in results:
        assert r["mismatches"] == 0, f"{r['scenario']} seed {seed}: {r['mismatch_list'][:3]}"
        assert r["checked"] == r["responses"] > 0, f"{r['scenario']} seed {seed}"
        assert r["dirty_lost"] == 0, f"{r['scenario']} seed {seed}"
        assert (r["obligation_checks"] > 0) == (r["scenario"] in OBLIGATIONS_CHECKED), \
            (r["scenario"], seed)
    problems = bound_problems(results)     # traffic checked, acceptances within bounds
    assert not problems, [message for _, message in problems]
    by_name = {r["scenario"]: r for r in results}
    assert by_name["boot"]["faults_handled"] > 0
    assert by_name["steady"]["tlb_hit_rate"] > 0.3
    assert by_name["memslot_delete"]["flushes"] > 0 and by_name["memslot_delete"]["emulated"] > 0
    for name in ("dirty_log", "harvest", "mixed"):
        assert by_name[name]["dirty_pages_harvested"] > 0, name
        assert by_name[name]["dirty_writes"] > 0, name
    assert len(by_name["mixed"]["guests"]) == 2


def test_simulator_builds_depend_on_every_rtl_source():
    """A cached MMU build is reused only while no file it is generated from changed:
    the architecture rules under hw/arch/ included."""
    sources = {p.relative_to(REPO).as_posix() for p in mmu_sources()}
    assert {"hw/mmu.py", "hw/arch/ept.py", "hw/arch/gstage.py",
            "sw_model/formats/npt.py"} <= sources


@pytest.mark.parametrize("sim", SIMULATORS)
def test_scenarios_short(sim):
    seed = 0
    _check(run_mmu(sim, ALL, seed=seed, size="short"), seed)


def test_scoreboard_catches_a_hypervisor_that_drops_flushes(capfd):
    """With every invalidation dropped, zapped translations and lost dirty pages must
    be detected, each by its own check (not by a crash)."""
    with pytest.raises(AssertionError, match="2 of 2 MMU scenario runs failed") as failed:
        run_mmu("verilator", ["memslot_delete", "harvest"], seed=0, size="short",
                extra={"TDPWALK_MUTATE": "drop_flushes"})
    # The failure names each scenario, its seed and the command that replays it alone.
    message = str(failed.value)
    for name, seed in (("memslot_delete", 0), ("harvest", 1)):
        assert (f"{name} (seed {seed}, " in message and "reproduce: TDPWALK_MUTATE="
                f"drop_flushes python -m cocotb_tests.demo --sim verilator --scenario "
                f"{name} --seed {seed} --size short --format " in message), message
    out = capfd.readouterr()
    text = out.out + out.err
    assert "deleted slot still translates" in text, text[-3000:]
    assert "written pages missing from the dirty log" in text, text[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("sim,seed", [(sim, seed) for sim in SIMULATORS for seed in range(1, 13)
                                      # Icarus is ~50x slower on the MMU: 4 long seeds
                                      if sim == "verilator" or seed <= 4])
def test_scenarios_long(sim, seed):
    _check(run_mmu(sim, ALL, seed=seed * 1000, size="long"), seed * 1000)


#: Saved signals of both tops that never change, by design, and why. The toggle check of
#: :func:`_check_save_file` exempts them and checks instead that each does stay at one
#: value, so that the list cannot hide a signal that stopped toggling.
CONSTANT = {
    "axi__rready": "tied to 1 (hw/walkers.py): the shared PTE decoder takes an R beat "
                   "every cycle",
    "axi__bready": "tied to 1 (hw/walkers.py): the A/D unit takes every B response at once",
    "axi__awatop": "tied to AtomicCompare (hw/walkers.py): an A/D update is the only write",
}

#: The same for a vector file replayed on the walker alone (``tdpwalk_walker``).
REPLAY_CONSTANT = {
    **CONSTANT,
    **dict.fromkeys(("axi__arid", "axi__rid", "axi__awid", "axi__bid"),
                    "0: the walker has one walk engine, and an AXI ID is the engine's "
                    "index"),
    "axi__bresp": "OKAY: a vector file's bus errors are words that fail every access, and "
                  "a walk reads a word before its A/D AtomicCompare, so no compare fails",
    **dict.fromkeys(("ctx__index", "req__payload.vm"),
                    "0: a vector file describes one VM, replayed in context 0"),
    **dict.fromkeys(("ctx__data.td", "ctx__data.shared_bit", "ctx__data.ext_root"),
                    "0: a vector file's VM is not a trust domain (the format has no TD "
                    "fields)"),
}


def _check_save_file(stem, groups, named, constant):
    """The waveform ``stem``.fst (or .vcd) and its GTKWave save file: every signal the
    file names is in the dump under the scope the simulator gave the design, every
    signal of ``groups`` is saved (as itself or, for a payload, as its fields), each
    signal ending in a key of ``named`` goes through a translate filter naming its
    values, and every saved signal toggles (takes two known values; X and Z do not
    count) except those of ``constant`` (names relative to the top, payload fields as
    ``payload.field``), each of which must keep one value."""
    import collections

    import pywellen

    from cocotb_tests.waves import saved_signals
    [waves] = [p for p in stem.parent.glob(f"{stem.name}.*")
               if p.suffix in (".fst", ".vcd")]           # VCD without lz4.h
    gtkw = waves.with_suffix(".gtkw")
    text = gtkw.read_text()
    assert f'[dumpfile] "{waves.resolve()}"' in text and "-AXI read" in text
    saved = saved_signals(gtkw)
    dump = pywellen.Waveform(str(waves), stream_only=True)
    by_name = {v.full_name: v for v in dump.all_vars()}
    assert saved and not [s for s in saved if s not in by_name], saved
    plain = [s.replace("\\", "").rstrip() for s in saved]     # Icarus escapes field names
    unsaved = [name for _, signals in groups for name, _ in signals
               if not any(s.endswith(f".{name}") or f".{name}." in s for s in plain)]
    assert not unsaved, unsaved
    assert any(s.endswith("resp__payload.hpa") for s in saved)
    assert not any(s.endswith("resp__payload") for s in saved)      # fields instead
    lines = text.splitlines()
    for suffix, names in named.items():
        at = [i for i, line in enumerate(lines) if line.rstrip().endswith(suffix)]
        assert at, suffix
        for i in at:
            assert lines[i - 1] == "@2024" and lines[i - 2].startswith("^"), lines[i - 2:i]
            table = pathlib.Path(lines[i - 2].split(" ", 1)[1]).read_text()
            assert all(name in table for name in names), table
    values = collections.defaultdict(set)
    # pywellen gives a value with X or Z bits as a string, a known one as an integer.
    dump.stream_changes(lambda t, sid, v: isinstance(v, int) and values[str(sid)].add(v),
                        [by_name[s] for s in saved])
    exempt = {}
    for full, name in zip(saved, plain):
        key = next((k for k in constant if name.endswith(f".{k}")), None)
        if key is not None:
            exempt[full] = key
    assert sorted(set(exempt.values())) == sorted(constant), \
        f"exempt but not saved: {sorted(set(constant) - set(exempt.values()))}"
    idle = [name for full, name in zip(saved, plain) if full not in exempt
            and len(values[str(by_name[full].signal_id)]) < 2]
    assert not idle, f"never toggle: {idle}"
    moving = [name for full, name in zip(saved, plain) if full in exempt
              and len(values[str(by_name[full].signal_id)]) > 1]
    assert not moving, f"listed as constant, but toggle: {moving}"


STATES = ("0 IDLE", "DONE", "READ", "WAIT", "AD")


@pytest.mark.parametrize("sim", SIMULATORS)
def test_waves_open_in_gtkwave(sim, tmp_path):
    """WAVES: a replay of the walker writes a waveform and a save file built from it
    (:func:`_check_save_file`). The vector file's tables start above 1 MiB (so the
    root is not 0) and its accesses meet bus errors (SLVERR and DECERR) as well as
    translations with A/D updates, so every saved signal toggles but those of
    :data:`REPLAY_CONSTANT`."""
    from cocotb_tests.runner import replay
    from cocotb_tests.waves import WALKER_GROUPS
    from sw_model.vectors import random_vectors, save_vectors
    path = tmp_path / "vectors.json"
    save_vectors(random_vectors("npt4", 15, 16, ad="hardware", memory_base=1 << 20), path)
    lines = replay(path, sim, waves=tmp_path / "w.fst")
    assert len(lines) == 16 and any(line.get("kind") == "bus_error" for line in lines), lines
    _check_save_file(tmp_path / "w", WALKER_GROUPS,
                     {"walk_state": STATES,
                      "resp__payload.kind": ("0 NOT_PRESENT", "6 BUS_ERROR")},
                     REPLAY_CONSTANT)


@pytest.mark.parametrize("sim", SIMULATORS)
def test_mmu_waves_open_in_gtkwave(sim, tmp_path):
    """WAVES=1 of the MMU (``make demo``) writes a waveform and a save file built from
    it (:func:`_check_save_file`), every engine's walk state and the invalidation's
    kind and space named. One simulator process runs scenarios with invalidations,
    A/D updates and misses waiting for a walk (``memslot_delete``, ``dirty_log``), a
    trust domain (``tdx``: its context's TD fields, invalidations of one space), then
    the fault bench's ``bus_error`` (two VMs of different formats, so VM 1's context,
    requests and invalidations; SLVERR on reads and AtomicCompares), all under
    back-pressure on the response port: every saved signal toggles but those of
    :data:`CONSTANT`."""
    from cocotb_tests.waves import GROUPS
    scenarios = ["memslot_delete", "dirty_log", "tdx"]
    results = run_mmu(sim, scenarios, seed=0, size="short", waves=tmp_path / "m.fst",
                      test_module="cocotb_tests.mmu_bench,cocotb_tests.fault_bench",
                      extra={"TDPWALK_FAULTS": "bus_error", "TDPWALK_RESP_STALL": "0.2"})
    assert [r["scenario"] for r in results] == scenarios + ["bus_error"]
    assert results[0]["flushes"] > 0
    _check_save_file(tmp_path / "m", GROUPS,
                     {"walk_state": STATES, "inval__payload.kind": ("0 ALL", "2 RANGE"),
                      "inval__payload.space": ("0 BOTH", "2 PRIVATE")},
                     CONSTANT)


def test_dirty_logging_after_aging_without_ad_loses_no_write():
    # Aging without A/D bits saves W and clears R/W/X without a flush; enabling dirty
    # logging must still flush (as KVM does), or writes through a cached writable
    # translation are never logged. Seed 19 lost about 40 pages before the model did.
    run_mmu("verilator", ["mixed"], seed=19, size="short",
            extra={"TDPWALK_FORMAT": "ept4", "TDPWALK_AD": "off"})


def test_batches_are_checked_response_by_response():
    """The speed bench's batched driver (cocotb_tests/batch_shell.py) answers every
    request of the hit and miss streams, each checked by the scoreboard."""
    count = 300
    results = run_mmu("verilator", ["hit", "miss"], shell=True,
                      test_module="cocotb_tests.speed_bench",
                      extra={"TDPWALK_COUNT": str(count), "TDPWALK_BATCH": "1"})
    assert [r["stream"] for r in results] == ["hit", "miss"]
    for r in results:
        assert r["batch"] and r["mismatches"] == 0, r
        assert r["checked"] == count + 64, r       # the stream and its warm-up
    hit, miss = results
    assert hit["hit_rate"] > 0.9 and miss["hit_rate"] < 0.5
    assert hit["cycles"] < 1.2 * count < miss["cycles"]


def test_builds_go_under_the_chosen_directory(monkeypatch, tmp_path):
    """Builds, results and waves go under $TDPWALK_BUILD, else ./build of the current
    directory: never next to the installed package."""
    from cocotb_tests.runner import build_root
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TDPWALK_BUILD", raising=False)
    assert build_root() == tmp_path / "build"
    monkeypatch.setenv("TDPWALK_BUILD", "elsewhere")
    assert build_root() == tmp_path / "elsewhere"
