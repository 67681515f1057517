"""Property tests of the TDP MMU model: random operation sequences on every format.

Operations: faults, zaps, dirty-log start/stop (with and without eager splitting, and
huge-page recovery), gets and clears of the dirty log, aging (with and without a
flush), NX recovery, eager splits, slot deletion and re-creation on new frames, root
invalidation (old roots keep their mappings beside the vCPU's new root), fast zap of
all roots, write tracking.
After every step: the reference walker's view of every mapped GFN is the memslot's
frame (or a fault), page statistics equal a recount, allocated pages equal table pages
(``check_vm``). After every operation, every translation a TLB or page-walk cache may
still hold is allowed by the tables or was flushed (:class:`FlushObligations` in front
of the recorder, told of every walk the vCPU makes). At the end, zap-all returns
HostMemory to its starting free count. Every write through a writable translation while
dirty logging is on appears in the dirty bitmap of the next get (or, for a write that
raced with that get, the one after).

Hypothesis runs derandomized (reproducible) and prints the failing operation sequence.
"""

import pytest
from hypothesis import given, strategies as st

from conftest import sequence_settings

from sw_model.formats import FORMAT_NAMES, get_format
from sw_model.memory import HostMemory
from sw_model.tdp import FlushRecorder, PfResult, Vm
from sw_model.tdp.check import check_vm
from sw_model.tdp.obligations import FlushObligations

CONFIGS = [(name, ad) for name in FORMAT_NAMES for ad in get_format(name).ad_modes]
IDS = [f"{name}-{ad}" for name, ad in CONFIGS]

MIB2 = 512
# (base_gfn, npages, hpa, host_level); hpa 2M-congruent except slot 2.
SLOTS = [(4 << 18, 3 * MIB2 + 37, 1 << 33, 2),
         (8 << 18, 96, (1 << 33) + (1 << 30), 1),
         (9 << 18, 2 * MIB2, (1 << 34) + 4096, 2)]


class Harness:
    """The VM plus a vCPU that accesses memory through the walker (setting A/D bits
    as hardware does) and remembers the writes it made while logging was on."""

    def __init__(self, name, ad, yield_every):
        self.checker = FlushObligations(FlushRecorder())
        self.vm = Vm(name, HostMemory(4 << 20), ad=ad, flush_sink=self.checker,
                     yield_every=yield_every, on_yield=self.hardware, trace=False)
        self.start_free = self.vm.mem.free_pages
        self.present = {}                       # slot_id -> hpa offset in use
        self.expected = {}                      # slot_id -> GFNs written while logging
        self.late = {}                          # writes that raced with a get
        self.previous = {}                      # the last bitmap, as a GFN set
        self.in_get = None
        self.in_flags = False
        self.tracked = set()
        self.hw_cursor = 0

    def add(self, index, generation):
        base, npages, hpa, host_level = SLOTS[index]
        hpa += generation << 35                 # a re-created slot gets new frames
        self.vm.add_memslot(index, base, npages, hpa, host_level=host_level,
                            readonly=index == 1 and generation % 2 == 1)
        self.present[index] = generation
        self.expected[index], self.late[index], self.previous[index] = set(), set(), set()

    def access(self, gfn, access):
        slot = self.vm.find_memslot(gfn)
        for _ in range(4):
            result = self.vm.translate(gfn << 12, access, ad_update=True)
            if result.ok:
                self.checker.observe()
                self.record(slot, gfn, access)
                return
            r = self.vm.handle_fault(gfn << 12, access)
            if r in (PfResult.EMULATE, PfResult.NOMEM):
                assert slot is None or r is PfResult.NOMEM or access == "write" and (
                    slot.readonly or gfn in self.tracked), f"{access} at gfn {gfn:#x}: {r}"
                return
        raise AssertionError(f"{access} at gfn {gfn:#x} faults after its fault was fixed")

    def record(self, slot, gfn, access):
        if access != "write" or slot is None or not slot.dirty_logging or self.in_flags:
            return
        target = self.late if self.in_get == slot.slot_id else self.expected
        target[slot.slot_id].add(gfn)

    def hardware(self, vm):
        """Runs at yields: a vCPU write somewhere in a slot, without faulting."""
        slots = vm.memslots()
        if not slots:
            return
        self.hw_cursor += 1
        slot = slots[self.hw_cursor % len(slots)]
        gfn = slot.base_gfn + (self.hw_cursor * 131) % slot.npages
        if vm.translate(gfn << 12, "write", ad_update=True).ok:
            self.checker.observe()
            self.record(slot, gfn, "write")

    def clear_log(self, slot_id, first, mask):
        """KVM_CLEAR_DIRTY_LOG: the writes logged for the masked pages are consumed."""
        self.vm.clear_dirty_log(slot_id, first, mask)
        base = self.vm.memslot(slot_id).base_gfn + first
        cleared = {base + i for i in range(64) if mask >> i & 1}
        self.expected[slot_id] -= cleared
        self.late[slot_id] -= cleared

    def get_log(self, slot_id):
        slot = self.vm.memslot(slot_id)
        # Writes that raced with the previous get show up in that log or this one.
        raced, self.late[slot_id] = self.late[slot_id], set()
        self.in_get = slot_id
        logged = set(slot.dirty_gfns(self.vm.get_dirty_log(slot_id)))
        self.in_get = None
        missing = self.expected[slot_id] - logged
        assert not missing, f"writes missing from the dirty log: {sorted(missing)[:8]}"
        missing = raced - logged - self.previous[slot_id]
        assert not missing, f"racing writes missing from two logs: {sorted(missing)[:8]}"
        self.expected[slot_id], self.previous[slot_id] = set(), logged


OPS = ["fault", "fault", "fault", "zap", "log_start", "log_stop", "get_log", "clear_log",
       "age", "nx_recover", "slot_delete", "invalidate_roots", "zap_all_fast", "split",
       "write_track"]


@pytest.mark.parametrize("name, ad", CONFIGS, ids=IDS)
@sequence_settings(8)
@given(data=st.data())
def test_random_operation_sequences(name, ad, data):
    run_sequence(name, ad, data)


@pytest.mark.slow
@pytest.mark.parametrize("name, ad", CONFIGS, ids=IDS)
@sequence_settings(300)
@given(data=st.data())
def test_random_operation_sequences_long(name, ad, data):
    run_sequence(name, ad, data)


def run_sequence(name, ad, data):
    h = Harness(name, ad, data.draw(st.sampled_from([0, 1, 3]), label="yield_every"))
    vm = h.vm
    generations = [0, 0, 0]
    for index in range(len(SLOTS)):
        h.add(index, 0)
    for _ in range(data.draw(st.integers(8, 24), label="steps")):
        op = data.draw(st.sampled_from(OPS), label="op")
        live = sorted(h.present)
        if op == "fault" and live:
            index = data.draw(st.sampled_from(live), label="slot")
            base, npages = SLOTS[index][:2]
            offset = data.draw(st.integers(0, npages + 3), label="offset")
            access = data.draw(st.sampled_from(["read", "write", "execute"]), label="access")
            h.access(base + offset, access)
        elif op == "zap":
            start = SLOTS[0][0] + data.draw(st.integers(0, 4 * MIB2), label="zap_start")
            vm.zap_gfn_range(start, start + data.draw(st.integers(1, 2 * MIB2), label="zap_len"))
        elif op in ("log_start", "log_stop", "get_log", "clear_log", "split") and live:
            index = data.draw(st.sampled_from(live), label="slot")
            slot = vm.memslot(index)
            if op == "log_start" and not slot.dirty_logging:
                h.in_flags = True
                vm.set_dirty_logging(index, True,
                                     eager_split=data.draw(st.booleans(), label="eager"))
                h.in_flags = False
                h.expected[index], h.late[index], h.previous[index] = set(), set(), set()
            elif op == "log_stop" and slot.dirty_logging:
                h.get_log(index)
                vm.set_dirty_logging(index, False)
            elif op == "get_log" and slot.dirty_logging:
                h.get_log(index)
            elif op == "clear_log" and slot.dirty_logging:
                first = 64 * data.draw(st.integers(0, (slot.npages - 1) // 64), label="first")
                mask = data.draw(st.integers(1, (1 << min(64, slot.npages - first)) - 1),
                                 label="mask")
                h.clear_log(index, first, mask)
            elif op == "split":
                vm.split_huge_pages(index)
        elif op == "age" and live:
            base, npages = SLOTS[data.draw(st.sampled_from(live), label="slot")][:2]
            vm.age_gfn_range(base, base + npages, flush=data.draw(st.booleans(), label="flush"))
        elif op == "nx_recover":
            vm.recover_nx_huge_pages(ratio=data.draw(st.integers(1, 3), label="ratio"))
        elif op == "slot_delete" and live:
            index = data.draw(st.sampled_from(live), label="slot")
            if vm.memslot(index).dirty_logging:
                h.get_log(index)
            vm.delete_memslot(index)
            del h.present[index]
            generations[index] += 1
            h.add(index, generations[index])
        elif op == "invalidate_roots":
            # The first half of a fast zap: the old roots keep their mappings (and the
            # MMU's reference) while the vCPU moves to a new root, until a fast zap.
            vm.invalidate_all_roots()
        elif op == "zap_all_fast":
            vm.zap_all_fast()
        elif op == "write_track":
            gfn = SLOTS[0][0] + data.draw(st.integers(0, SLOTS[0][1] - 1), label="gfn")
            if gfn in h.tracked:
                vm.write_track_remove_gfn(gfn)
                h.tracked.discard(gfn)
            else:
                vm.write_track_add_gfn(gfn)
                h.tracked.add(gfn)
        check_vm(vm)
    for index in sorted(h.present):
        if vm.memslot(index).dirty_logging:
            h.get_log(index)
    vm.on_yield = None                          # teardown: the vCPUs have stopped
    vm.zap_all()
    assert h.checker.checks and vm.mem.free_pages == h.start_free
    assert vm.stats()["table_pages"] == 0 and not any(vm.stats()["pages"].values())
