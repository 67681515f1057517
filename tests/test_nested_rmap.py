"""The shadow MMU's reverse maps (sw_model.nested.rmap) in KVM's shape: one entry
inline, then 14-entry descriptors from a bounded cache, only the head descriptor partly
filled."""

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sw_model.nested.rmap import (PTE_LIST_EXT, DescCache, DescCacheEmpty, PteListDesc,
                                  check_pte_list, pte_list_add, pte_list_count,
                                  pte_list_need_new_desc, pte_list_remove, pte_list_sptes)


def _fill(n, cache=None):
    cache = DescCache(64) if cache is None else cache
    cache.topup()
    head = None
    for i in range(n):
        head = pte_list_add(cache, head, 0x1000 + 8 * i)
    return head, cache


def test_one_entry_is_inline_and_needs_no_descriptor():
    cache = DescCache(0)
    assert not pte_list_need_new_desc(None)
    head = pte_list_add(cache, None, 0x1008)
    assert head == 0x1008 and pte_list_count(head) == 1 and cache.allocated == 0
    assert pte_list_need_new_desc(head)
    assert pte_list_sptes(head) == [0x1008]
    assert pte_list_remove(head, 0x1008) is None
    with pytest.raises(KeyError):
        pte_list_remove(0x1008, 0x2000)
    with pytest.raises(KeyError):
        pte_list_remove(None, 0x2000)


def test_second_entry_takes_a_descriptor_and_a_full_head_a_new_one():
    head, cache = _fill(2)
    assert isinstance(head, PteListDesc) and head.spte_count == 2 and cache.allocated == 1
    head, cache = _fill(PTE_LIST_EXT)
    assert head.spte_count == PTE_LIST_EXT and head.more is None
    assert pte_list_need_new_desc(head)
    head = pte_list_add(cache, head, 0x9000)
    assert head.spte_count == 1 and head.tail_count == PTE_LIST_EXT
    assert head.more.spte_count == PTE_LIST_EXT and cache.allocated == 2
    assert pte_list_count(head) == PTE_LIST_EXT + 1
    assert pte_list_sptes(head)[0] == 0x9000          # the head descriptor first
    check_pte_list(head)


def test_removal_fills_the_hole_from_the_head_and_frees_an_empty_head():
    head, _ = _fill(PTE_LIST_EXT + 2)               # a head of 2, a full tail
    tail = head.more
    head = pte_list_remove(head, 0x1000)            # from the tail: head's last moves
    assert tail.sptes[0] == 0x1000 + 8 * (PTE_LIST_EXT + 1) and head.spte_count == 1
    check_pte_list(head)
    head = pte_list_remove(head, 0x1000 + 8 * PTE_LIST_EXT)   # the head empties
    assert head is tail and head.tail_count == 0 and head.spte_count == PTE_LIST_EXT
    check_pte_list(head)
    with pytest.raises(KeyError):
        pte_list_remove(head, 0x1000)


def test_cache_is_bounded_and_runs_dry():
    cache = DescCache(2)
    assert len(cache) == 0
    with pytest.raises(DescCacheEmpty):
        cache.alloc()
    cache.topup()
    cache.alloc()
    cache.topup(minimum=1)          # one left: at least the minimum, no refill
    assert len(cache) == 1
    cache.topup(minimum=2)
    assert len(cache) == 2
    with pytest.raises(ValueError):
        DescCache(-1)
    head = pte_list_add(cache, None, 0x10)
    head = pte_list_add(cache, head, 0x18)
    for i in range(PTE_LIST_EXT - 2):
        head = pte_list_add(cache, head, 0x20 + 8 * i)
    head = pte_list_add(cache, head, 0x800)         # the second descriptor
    with pytest.raises(DescCacheEmpty):
        for i in range(PTE_LIST_EXT):
            head = pte_list_add(cache, head, 0x900 + 8 * i)


def test_check_catches_a_broken_shape():
    head, _ = _fill(PTE_LIST_EXT + 3)
    head.more.spte_count -= 1                        # a tail that is not full
    head.more.sptes[head.more.spte_count] = None
    head.tail_count -= 1
    with pytest.raises(AssertionError, match="not full"):
        check_pte_list(head)
    head, _ = _fill(PTE_LIST_EXT + 3)
    head.tail_count += 1
    with pytest.raises(AssertionError, match="tail_count"):
        check_pte_list(head)
    head, _ = _fill(3)
    head.sptes[1] = None
    with pytest.raises(AssertionError, match="hole"):
        check_pte_list(head)


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 40)), max_size=300),
       st.integers(0, 2**32 - 1))
def test_random_adds_and_removes_keep_the_shape_and_the_set(ops, seed):
    cache = DescCache(1000)
    cache.topup()
    head, want = None, set()
    rng = random.Random(seed)
    for add, value in ops:
        sptep = 0x1000 + 8 * value
        if add and sptep not in want:
            head = pte_list_add(cache, head, sptep)
            want.add(sptep)
        elif want:
            victim = rng.choice(sorted(want))
            head = pte_list_remove(head, victim)
            want.discard(victim)
        check_pte_list(head)
        assert sorted(pte_list_sptes(head)) == sorted(want)
        assert pte_list_count(head) == len(want)
