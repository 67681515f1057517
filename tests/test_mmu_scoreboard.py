"""The MMU co-simulation's scoreboard (:class:`cocotb_tests.mmu_tb.Scoreboard`) on answers
made up here: it takes the right one, rejects each way a wrong one can differ, and
accepts a stale hit or a raced fault only under its stated rules, counting each. Its
companion :class:`~cocotb_tests.mmu_tb.WalkTrafficChecker` on made-up AXI traffic: PTE
reads, A/D AtomicCompares and the A/D updates a walked answer leaves owed.

The co-simulation feeds it the RTL's answers, which are right; these feed it wrong ones,
so a scoreboard that stops comparing is seen without a broken RTL.
"""

import dataclasses
import logging
import types

import pytest

from cocotb_tests.mmu_tb import HIT_CYCLES, Response, Scoreboard, WalkTrafficChecker
from hw.sim_axi import AtomicCompare, PteRead
from hw.tlb import InvalSpace
from sw_model.memory import HostMemory
from sw_model.tdp import PfResult, Vm
from sw_model.walker import Fault

BASE = 4 << 18                       # GFN of the slot (GPA 16 GiB)
HPA = 1 << 33


def _bench():
    vm = Vm("ept4", HostMemory(4 << 20), nx_huge_pages=False)
    vm.add_memslot(0, BASE, 64, HPA, host_level=1)
    for gfn in (BASE + 3, BASE + 4):
        assert vm.handle_fault(gfn << 12, "write") is PfResult.FIXED
    tb = types.SimpleNamespace(guests=[types.SimpleNamespace(vm=vm)],
                               log=logging.getLogger("test_mmu_scoreboard"))
    return vm, Scoreboard(tb)


def _request(vm, sb, gfn, accepted, access="read"):
    """A request accepted at cycle ``accepted``, its reference taken as the TB does."""
    req = Response(0, 0, (gfn << 12) | 0x123, access)
    req.root, req.accepted = vm.root_for(), accepted
    sb.take(req, accepted)
    return req


def _answer(sb, req, result, answered):
    req.result, req.answered = result, answered
    return sb.check(req)


def _right(vm, sb, gfn):
    return sb.reference(_request(vm, sb, gfn, 0))


def test_the_right_answer_is_taken():
    vm, sb = _bench()
    req = _request(vm, sb, BASE + 3, 10)
    assert _answer(sb, req, sb.reference(req), 30)
    assert (sb.checked, sb.mismatches, sb.stale_hits, sb.raced_faults) == (1, [], 0, 0)


@pytest.mark.parametrize("wrong", [
    lambda t: dataclasses.replace(t, hpa=t.hpa + 0x1000),
    lambda t: dataclasses.replace(t, level=2),
    lambda t: dataclasses.replace(t, perms={**t.perms, "w": False}),
    lambda t: dataclasses.replace(t, memtype=(t.memtype or 0) ^ 1),
    lambda t: Fault(gpa=t.gpa, access=t.access, kind="not_present", level=1,
                    pte_addr=t.pte_addrs[-1], report={}),
], ids=["frame", "level", "permission", "memtype", "fault"])
def test_each_wrong_field_is_a_mismatch(wrong):
    vm, sb = _bench()
    req = _request(vm, sb, BASE + 3, 10)
    assert not _answer(sb, req, wrong(sb.reference(req)), 30)
    assert len(sb.mismatches) == 1 and sb.mismatches[0]["gpa"] == hex(req.gpa)


def test_a_stale_hit_is_accepted_until_an_invalidation_covers_it():
    """A TLB hit on a translation the model removed without a flush is legit (counted)
    until an accepted invalidation covers it; after that it is a stale hit."""
    vm, sb = _bench()
    cached = _right(vm, sb, BASE + 3)
    vm.zap_gfn_range(BASE + 3, BASE + 4, flush=False)     # no invalidation for the RTL
    sb.changed()
    req = _request(vm, sb, BASE + 3, 20)
    assert _answer(sb, req, cached, 20 + HIT_CYCLES)
    assert (sb.stale_hits, sb.stale_kinds) == (1, {"now not_present": 1})
    sb.invalidated(0, BASE + 3, 1, 40, InvalSpace.BOTH)
    other = _request(vm, sb, BASE + 4, 41)          # a neighbour stays legit
    assert _answer(sb, other, sb.reference(other), 41 + HIT_CYCLES)
    late = _request(vm, sb, BASE + 3, 41)
    assert not _answer(sb, late, cached, 41 + HIT_CYCLES)
    assert len(sb.mismatches) == 1


@pytest.mark.parametrize("raced, on_path, accepted", [
    (False, True, False), (True, True, True), (True, False, False)])
def test_a_fault_is_accepted_only_on_a_raced_request(raced, on_path, accepted):
    """A fault the references do not hold: a mismatch, unless a model step ran while
    the request was in flight and the entry that decided it is one a reference walk
    visited (a walk following the old path into a removed table); then counted in
    raced_faults."""
    vm, sb = _bench()
    req = _request(vm, sb, BASE + 3, 10)
    req.raced = raced
    path = sb.reference(req).pte_addrs
    fault = Fault(gpa=req.gpa, access="read", kind="not_present", level=2,
                  pte_addr=path[-2] if on_path else path[-2] ^ 0x800, report={})
    assert _answer(sb, req, fault, 30) is accepted
    assert (len(sb.mismatches), sb.raced_faults) == (int(not accepted), int(accepted))


# -- each walk's memory traffic (WalkTrafficChecker) ---------------------------------------

def _ad(vm):
    return vm.fmt.fields["a"].mask | vm.fmt.fields["d"].mask


def _traffic(vm, sb, access="read", gfn=BASE + 3):
    """A request accepted at cycle 10 whose walk must set A in every entry (and D in
    the leaf on a write: the model cleared them as aging and dirty logging do), the
    checker with it in flight."""
    for addr in _right(vm, sb, gfn).pte_addrs:
        vm.mem.write64(addr, vm.mem.read64(addr) & ~_ad(vm))
    sb.changed()
    req = _request(vm, sb, gfn, 10, access)
    in_flight = [req]
    return WalkTrafficChecker(sb, lambda: in_flight), req, in_flight


def _path(req):
    return list(req.refs[-1].pte_addrs)


def _walk(vm, traffic, req, ident=1, skip=()):
    """What the RTL's walk does: read every entry, then set the A/D bits the reference
    owes that the words read lack, root first, each compared with the word read (but
    at ``skip``)."""
    words = {}
    for cycle, addr in enumerate(_path(req), 12):
        words[addr] = vm.mem.read64(addr)
        traffic.observe(PteRead(addr, ident, words[addr], 0, cycle))
    for addr, _, new in sorted(req.ad_writes, key=lambda w: _path(req).index(w[0])):
        if addr not in skip and words[addr] | new != words[addr]:
            ok, _ = vm.mem.cmpxchg64(addr, words[addr], words[addr] | new)
            traffic.observe(AtomicCompare(addr, ident, words[addr], words[addr] | new, ok,
                                          0, 30))


def test_a_walk_reading_its_entries_and_setting_its_a_bits_is_counted():
    vm, sb = _bench()
    traffic, req, _ = _traffic(vm, sb)
    _walk(vm, traffic, req)
    assert _answer(sb, req, sb.reference(req), 40)
    traffic.answered(req)
    assert (traffic.reads, traffic.compares, traffic.walked) == (4, 4, 1)
    assert sb.mismatches == []


@pytest.mark.parametrize("when", ["neighbour", "after the answer"])
def test_a_read_of_an_entry_no_walk_in_flight_visits_is_a_mismatch(when):
    vm, sb = _bench()
    traffic, req, in_flight = _traffic(vm, sb)
    leaf = _path(req)[-1]
    addr = leaf ^ 8 if when == "neighbour" else leaf
    if when == "after the answer":
        in_flight.clear()
    traffic.observe(PteRead(addr, 2, vm.mem.read64(addr), 0, 17))
    rule = WalkTrafficChecker.UNVISITED_READ
    assert traffic.reads == 1 and [m["rule"] for m in sb.mismatches] == [rule]
    assert sb.mismatches[0]["reason"] == f"{rule}: address {addr:#x}, AXI ID 2, cycle 17"


def test_a_compare_setting_d_on_a_read_is_a_mismatch():
    vm, sb = _bench()
    traffic, req, _ = _traffic(vm, sb)
    _walk(vm, traffic, req, skip=_path(req)[-1:])
    leaf = _path(req)[-1]
    word = vm.mem.read64(leaf)
    traffic.observe(AtomicCompare(leaf, 1, word, word | _ad(vm), True, 0, 33))
    assert [m["rule"] for m in sb.mismatches] == [WalkTrafficChecker.NOT_AN_UPDATE]
    assert f"address {leaf:#x}, AXI ID 1, cycle 33" in sb.mismatches[0]["reason"]


def test_a_compare_with_a_word_the_walk_did_not_read_is_a_mismatch():
    """The compare value is what the walk read at that entry on its AXI ID: another ID's
    read, or another word, does not count."""
    vm, sb = _bench()
    traffic, req, _ = _traffic(vm, sb)
    _walk(vm, traffic, req, ident=1, skip=_path(req))
    root = _path(req)[0]
    [(_, old, new)] = [w for w in req.ad_writes if w[0] == root]
    traffic.observe(AtomicCompare(root, 2, old, new, True, 0, 31))
    traffic.observe(AtomicCompare(root, 1, old ^ 0x1000, new, False, 0, 32))
    rule = WalkTrafficChecker.UNREAD_COMPARE
    assert [m["rule"] for m in sb.mismatches] == [rule, rule]
    assert [m["id"] for m in sb.mismatches] == [2, 1]


def test_a_write_sets_d_after_another_walk_set_a():
    """The RTL's own update since the reference (a read's walk set A) leaves the write's
    walk to set D over a word with A already set: still the reference's update."""
    vm, sb = _bench()
    traffic, writer, in_flight = _traffic(vm, sb, "write")
    reader = _request(vm, sb, BASE + 3, 11)
    in_flight.append(reader)
    _walk(vm, traffic, reader, ident=0)
    _walk(vm, traffic, writer, ident=1)
    assert traffic.compares == 5 and sb.mismatches == []


@pytest.mark.parametrize("answer, checked", [("walked", True), ("hit", False),
                                             ("raced", False)])
def test_a_walked_answer_whose_a_bit_was_never_set_is_a_mismatch(answer, checked):
    """Only a walked translation (a TLB hit may be an entry the model aged since) of a
    request no model step raced owes its A/D updates done."""
    vm, sb = _bench()
    traffic, req, _ = _traffic(vm, sb)
    leaf = _path(req)[-1]
    _walk(vm, traffic, req, skip=[leaf])
    req.raced = answer == "raced"
    answered = 10 + (HIT_CYCLES if answer == "hit" else 30)
    assert _answer(sb, req, sb.reference(req), answered)
    traffic.answered(req)
    assert traffic.walked == int(checked)
    assert [m["rule"] for m in sb.mismatches] == \
        [WalkTrafficChecker.UPDATE_OWED] * checked
    if checked:
        assert sb.mismatches[0]["addr"] == hex(leaf)


@pytest.mark.parametrize("changed", [False, True], ids=["left alone", "changed"])
def test_an_entry_read_with_a_clear_is_owed_its_a_after_a_model_step(changed):
    """A walk read every entry with A clear and set none (it faulted below, say); after
    a model step that left those entries alone, a walk that reads the leaf only (its
    walk cache served the rest) owes their A bits: a walk cache keeps an entry only once
    its A is set. Not where the model changed the entry since the RTL read it (aging
    and dirty logging clear bits that a cached entry may keep)."""
    vm, sb = _bench()
    traffic, req, in_flight = _traffic(vm, sb)
    path = _path(req)
    for cycle, addr in enumerate(path, 12):
        traffic.observe(PteRead(addr, 1, vm.mem.read64(addr), 0, cycle))
    in_flight.clear()
    if changed:
        software = vm.fmt.sw_fields["host_writable"].mask
        for addr in path[:-1]:
            vm.mem.write64(addr, vm.mem.read64(addr) | software)
    sb.changed()
    again = _request(vm, sb, BASE + 3, 50)
    in_flight.append(again)
    leaf = path[-1]
    [(_, old, new)] = [w for w in again.ad_writes if w[0] == leaf]
    traffic.observe(PteRead(leaf, 2, old, 0, 52))
    ok, _ = vm.mem.cmpxchg64(leaf, old, new)
    traffic.observe(AtomicCompare(leaf, 2, old, new, ok, 0, 60))
    assert _answer(sb, again, sb.reference(again), 70)
    traffic.answered(again)
    rule = WalkTrafficChecker.UPDATE_OWED
    assert [m["rule"] for m in sb.mismatches] == [rule] * (not changed)
    if not changed:
        assert sb.mismatches[0]["reason"] == \
            f"{rule}: address {path[0]:#x}, vm 0 read {again.gpa:#x}, cycles 50..70"
        assert [a for a, _, _ in sb.mismatches[0]["owed"]] == [hex(a) for a in path[:-1]]


@pytest.mark.parametrize("done", [True, False], ids=["set by it", "never set"])
def test_an_update_a_walk_in_flight_owes_is_checked_once_its_request_is_answered(done):
    """A walk answered from its walk cache while another request's walk has read the
    entries with A clear and not yet set A: the update is that walk's, checked when its
    request is answered (here raced, so its own answer is not checked): a mismatch
    naming the first answer only if A was never set."""
    vm, sb = _bench()
    traffic, first, in_flight = _traffic(vm, sb)
    other = _request(vm, sb, BASE + 3, 11)
    in_flight.append(other)
    path = _path(other)
    for cycle, addr in enumerate(path, 12):
        traffic.observe(PteRead(addr, 2, vm.mem.read64(addr), 0, cycle))
    in_flight.remove(first)
    assert _answer(sb, first, sb.reference(first), 20)
    traffic.answered(first)
    assert sb.mismatches == []
    _walk(vm, traffic, other, ident=2, skip=() if done else path)
    in_flight.remove(other)
    other.raced = True
    assert _answer(sb, other, sb.reference(other), 40)
    traffic.answered(other)
    rule = WalkTrafficChecker.UPDATE_OWED
    assert [m["rule"] for m in sb.mismatches] == [rule] * (not done)
    if not done:
        assert sb.mismatches[0]["reason"] == \
            f"{rule}: address {path[0]:#x}, vm 0 read {first.gpa:#x}, cycles 10..20"
