"""``check_vm`` (:mod:`sw_model.tdp.check`), on which every model test leans, raises on
the corruptions it is there to find: a leaf mapping another frame, W without the
MMU-writable bit, a write-tracked page left writable, and a leaked table page."""

import pytest

from sw_model.memory import HostMemory
from sw_model.tdp import PfResult, Vm
from sw_model.tdp.check import check_vm

BASE = 4 << 18
HPA = 1 << 33


def _vm(name="ept4"):
    vm = Vm(name, HostMemory(4 << 20), nx_huge_pages=False)
    vm.add_memslot(0, BASE, 64, HPA, host_level=1)
    assert vm.handle_fault((BASE + 5) << 12, "write") is PfResult.FIXED
    check_vm(vm)
    return vm


def _leaf(vm, gfn):
    """``(sptep, word)`` of ``gfn``'s leaf in the first root."""
    for found, level, word, sptep in vm.walk_present(vm.roots[0]):
        if found == gfn and vm.fmt.tdp_is_last_spte(word, level):
            return sptep, word
    raise AssertionError(f"gfn {gfn:#x} not mapped")


@pytest.mark.parametrize("name", ["ept4", "npt4", "sv48x4"])
def test_a_leaf_mapping_another_frame(name):
    vm = _vm(name)
    sptep, word = _leaf(vm, BASE + 5)
    vm.mem.write64(sptep, word ^ 0x1000)
    with pytest.raises(AssertionError, match=f"leaf gfn {BASE + 5:#x} maps"):
        check_vm(vm)


def test_writable_without_mmu_writable():
    vm = _vm()
    sptep, word = _leaf(vm, BASE + 5)
    vm.mem.write64(sptep, word & ~vm.fmt.sw_fields["mmu_writable"].mask)
    with pytest.raises(AssertionError, match="W without MMU-writable"):
        check_vm(vm)


def test_a_write_tracked_page_left_writable():
    vm = _vm()
    vm._write_tracked[0].add(BASE + 5)       # tracked behind the MMU's back
    with pytest.raises(AssertionError, match="write-tracked but MMU-writable"):
        check_vm(vm)


def test_a_leaked_table_page():
    vm = _vm()
    vm.mem.alloc_table()
    with pytest.raises(AssertionError, match="pages allocated"):
        check_vm(vm)
