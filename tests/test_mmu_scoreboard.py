"""The MMU co-simulation's scoreboard (:class:`cocotb_tests.mmu_tb.Scoreboard`) on answers
made up here: it takes the right one, rejects each way a wrong one can differ, and
accepts a stale hit or a raced fault only under its stated rules, counting each.

The co-simulation feeds it the RTL's answers, which are right; these feed it wrong ones,
so a scoreboard that stops comparing is seen without a broken RTL.
"""

import dataclasses
import logging
import types

import pytest

from cocotb_tests.mmu_tb import HIT_CYCLES, Response, Scoreboard
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
