"""TDX-style confidential VMs in the TDP model: mirror and external tables.

Directed tests of the TD options, root selection by the shared bit, the propagation
protocol (freeze, call, commit or restore), the external manager's ordering rules and
HostMemory page ownership; then property tests: random sequences of private and shared
faults, conversions, zaps, dirty logging with eager splitting of 2M private pages,
aging, memslot deletion, root invalidation and teardown keep the mirror and external
tables translating every private GPA identically (``check_tdx``), never resolve a
private GPA through the shared root or the reverse, and leak no page after teardown.
Every TD checks its flush obligations after each operation (:class:`FlushObligations`
in front of the recorder), in both spaces.
"""

import numpy as np
import pytest
from hypothesis import given, strategies as st

from conftest import sequence_settings

from sw_model.memory import PAGE_SIZE, HostMemory, PageOwnershipError
from sw_model.tdp import FlushRecorder, PfResult, Vm
from sw_model.tdp.check import check_vm
from sw_model.tdp.obligations import FlushObligations
from sw_model.tdp.tdx import ExternalPageTableManager, ExternalTableError, MemoryAttributes

MIB2 = 512
SHARED = 1 << 47


def make_td(name="ept4", size=8 << 20, **kwargs):
    """A TD whose flush obligations are checked after every operation; ``rec`` records
    its flushes."""
    rec = FlushRecorder()
    vm = Vm(name, HostMemory(size), tdx=True, flush_sink=FlushObligations(rec), **kwargs)
    return vm, rec


# -- options ---------------------------------------------------------------------------


def test_td_options():
    assert Vm("ept4", HostMemory(1 << 20), tdx=True).tdx.shared_bit == 47
    assert Vm("ept5", HostMemory(1 << 20), tdx=True).tdx.shared_bit == 51
    assert Vm("ept4", HostMemory(1 << 20), tdx=True, shared_bit=40).tdx.shared_bit == 40
    assert Vm("ept4", HostMemory(1 << 20)).tdx is None
    for name in ("npt4", "sv48x4"):
        with pytest.raises(ValueError, match="tdx"):
            Vm(name, HostMemory(1 << 20), tdx=True)
    for bad in (48, 12, "47", True):
        with pytest.raises(ValueError, match="shared_bit"):
            Vm("ept4", HostMemory(1 << 20), tdx=True, shared_bit=bad)
    with pytest.raises(ValueError, match="shared_bit"):
        Vm("ept4", HostMemory(1 << 20), shared_bit=47)
    with pytest.raises(ValueError, match="tdx"):
        Vm("ept4", HostMemory(1 << 20), tdx=True, address_spaces=2)
    vm, _ = make_td()
    with pytest.raises(ValueError, match="readonly"):
        vm.add_memslot(0, 0, 16, 1 << 30, readonly=True)
    with pytest.raises(ValueError, match="shared bit"):
        vm.add_memslot(0, (1 << 35) - 8, 16, 1 << 30)
    with pytest.raises(ValueError, match="private_hpa"):
        vm.add_memslot(0, 0, 16, 1 << 30, private_hpa=123)
    with pytest.raises(ValueError, match="private_hpa"):
        Vm("ept4", HostMemory(1 << 20)).add_memslot(0, 0, 16, 1 << 30, private_hpa=1 << 31)
    with pytest.raises(ValueError, match="write tracking"):
        vm.write_track_add_gfn(3)
    with pytest.raises(ValueError, match="space"):
        Vm("ept4", HostMemory(1 << 20)).zap_gfn_range(0, 8, space="private")
    with pytest.raises(ValueError, match="tdx"):
        Vm("ept4", HostMemory(1 << 20)).set_memory_attributes(0, 1, False)


def test_memory_attributes_intervals():
    attrs = MemoryAttributes()
    assert attrs.is_private(5) and attrs.uniform(0, 1 << 30) is True
    attrs.set_range(10, 20, False)
    attrs.set_range(20, 30, False)
    assert attrs.shared_ranges == [(10, 30)]
    attrs.set_range(15, 16, True)
    assert attrs.shared_ranges == [(10, 15), (16, 30)]
    assert [attrs.is_private(g) for g in (9, 10, 14, 15, 16, 29, 30)] == \
        [True, False, False, True, False, False, True]
    assert attrs.uniform(10, 15) is False and attrs.uniform(0, 10) is True
    assert attrs.uniform(9, 11) is None and attrs.uniform(14, 17) is None
    assert attrs.uniform(30, 40) is True and attrs.uniform(0, 11) is None


# -- roots, faults, conversions --------------------------------------------------------


def test_private_and_shared_roots():
    vm, rec = make_td()
    slot = vm.add_memslot(0, 0x1000, 4 * MIB2, 1 << 33)
    gpa = (0x1000 + 3) << 12
    assert vm.handle_fault(gpa, "write") is PfResult.FIXED
    # A private GFN maps 2M from the start of its private frames, through the external root.
    got = vm.translate(gpa, "read")
    assert got.ok and got.level == 2 and got.hpa == vm.tdx.private_frame(slot, 0x1003)
    assert got.hpa == (1 << 33) + (1 << 40) + 3 * PAGE_SIZE
    assert got.pte_addrs[0] == vm.external_root_for() + 0
    assert vm.external_root_for() != vm.mirror_root_for() != vm.root_for()
    assert vm.tdx.external.calls == {"add_table": 2, "add_leaf": 1}
    # The same GFN as shared is refused until userspace converts it.
    assert vm.handle_fault(gpa | SHARED, "read") is PfResult.MEMORY_FAULT
    assert not vm.translate(gpa | SHARED, "read").ok
    check_vm(vm)
    rec.clear()
    vm.set_memory_attributes(0x1003, 1, False)
    assert not vm.is_private_gfn(0x1003) and vm.is_private_gfn(0x1004)
    # Part of a 2M private page converted: split (block, track, demote), then the 4K
    # page is removed (block, track, remove), each track kicking the vCPUs.
    calls = vm.tdx.external.calls
    assert calls["split"] == 1 and calls["remove"] == 1
    assert calls["block"] == calls["track"] == 2
    assert rec.log == [("all", "private"), ("all", "private"), ("range", 0x1003, 1, "private")]
    assert not vm.translate(gpa, "read").ok
    assert vm.translate(gpa + PAGE_SIZE, "read").ok          # the rest stays mapped
    assert vm.handle_fault(gpa, "read") is PfResult.MEMORY_FAULT
    assert vm.handle_fault(gpa | SHARED, "write") is PfResult.FIXED
    shared = vm.translate(gpa | SHARED, "write")
    assert shared.ok and shared.hpa == slot.gfn_to_hpa(0x1003) and shared.level == 1
    check_vm(vm)
    # Back to private: the shared mapping goes, with a shared-space flush.
    rec.clear()
    vm.set_memory_attributes(0x1000, MIB2, True)
    assert rec.log == [("range", 0x1000, MIB2, "shared")]
    assert not vm.translate(gpa | SHARED, "read").ok
    assert vm.handle_fault(gpa, "execute") is PfResult.FIXED
    assert vm.translate(gpa, "execute").level == 1           # the 2M page stays split
    check_vm(vm)


def test_gfn_of_the_shared_root_excludes_the_bit():
    """Memslots, flushes and dirty bitmaps use GFNs without the shared bit; only the
    shared root's index includes it (kvm_gfn_direct_bits)."""
    vm, rec = make_td()
    vm.add_memslot(0, 0, MIB2, 1 << 30)
    vm.set_memory_attributes(0, MIB2, False)
    assert vm.handle_fault(SHARED | 0x5000, "read") is PfResult.FIXED
    root = vm.roots[0]
    assert root.role == "direct"
    leaves = [(gfn, level) for gfn, level, word, _ in vm.walk_present(root)
              if vm.fmt.tdp_is_last_spte(word, level)]
    assert leaves == [(0, 2)]
    first = vm.mem.read_page(root.hpa)
    assert not first[:256].any() and first[256:].any()       # bit 47 is the root's top index bit
    rec.clear()
    vm.zap_gfn_range(0, MIB2, space="shared")
    assert rec.log == [("range", 0, MIB2, "shared")]
    check_vm(vm)


def test_mmio_and_nomem_for_private_faults():
    vm, _ = make_td(size=5 * PAGE_SIZE)
    vm.add_memslot(0, 0, 16, 1 << 30)
    assert vm.handle_fault(0x100000 << 12, "read") is PfResult.EMULATE
    # Three mirror tables and three external ones are needed below the roots.
    assert vm.handle_fault(0, "read") is PfResult.NOMEM


def test_eager_split_of_private_huge_pages_and_dirty_log():
    vm, rec = make_td()
    slot = vm.add_memslot(0, 0, 2 * MIB2, 1 << 33)
    for gfn in (0, MIB2):
        vm.handle_fault(gfn << 12, "read")
    assert vm.stats()["pages"][2] == 2
    rec.clear()
    result = vm.set_dirty_logging(0, True)
    assert result.huge_pages_split == 2 and not result.enomem
    assert vm.tdx.external.calls["split"] == 2
    assert vm.stats()["pages"] == {1: 2 * MIB2, 2: 0, 3: 0, 4: 0}
    assert ("all", "private") in rec.log
    check_vm(vm)
    # Private pages are always reported dirty: the hypervisor cannot see their D bits.
    assert len(slot.dirty_gfns(vm.get_dirty_log(0))) == 2 * MIB2
    vm.handle_fault((2 * MIB2 - 1) << 12, "write")
    assert vm.translate((2 * MIB2 - 1) << 12, "write").level == 1
    # Stopping logging does not merge private pages (no promotion).
    vm.set_dirty_logging(0, False)
    assert vm.stats()["pages"][2] == 0
    check_vm(vm)


def test_aging_skips_private_memory():
    vm, _ = make_td(ad="hardware")
    vm.add_memslot(0, 0, MIB2, 1 << 30)
    vm.handle_fault(0, "read")
    assert not vm.age_gfn_range(0, MIB2)                     # private: not aged
    assert not vm.test_age_gfn(0, MIB2)
    vm.set_memory_attributes(0, MIB2, False)
    vm.handle_fault(SHARED, "read")
    assert vm.age_gfn_range(0, MIB2)
    check_vm(vm)


def test_memslot_deletion_removes_private_pages():
    vm, rec = make_td()
    vm.add_memslot(0, 0, 64, 1 << 30)
    for gfn in range(0, 64, 4):
        vm.handle_fault(gfn << 12, "write")
    assert vm.tdx.external.calls["add_leaf"] == 16
    vm.delete_memslot(0)
    calls = vm.tdx.external.calls
    assert calls["remove"] == calls["block"] == calls["track"] == 16
    assert not vm.tdx.external.leaves()
    check_vm(vm)


def test_teardown_frees_every_page():
    mem = HostMemory(8 << 20)
    start = mem.free_pages
    vm = Vm("ept5", mem, tdx=True, flush_sink=FlushRecorder())
    vm.add_memslot(0, 0, 3 * MIB2 + 5, 1 << 33)
    for gfn in (0, 7, MIB2, 2 * MIB2 + 3, 3 * MIB2 + 4):
        vm.handle_fault(gfn << 12, "read")
    vm.set_memory_attributes(MIB2, 1, False)
    vm.handle_fault((MIB2 << 12) | (1 << 51), "write")
    check_vm(vm)
    tracks = vm.tdx.external.calls["track"]
    vm.zap_all()
    assert mem.free_pages == start
    assert vm.tdx.external.pages == 0 and vm.tdx.external.root is None
    assert vm.tdx.external.calls["track"] == tracks           # reclaims need no tracking
    with pytest.raises(RuntimeError, match="torn down"):
        vm.handle_fault(0, "read")


def test_zap_all_fast_keeps_the_mirror():
    vm, _ = make_td()
    vm.add_memslot(0, 0, MIB2, 1 << 30)
    vm.handle_fault(0, "read")
    mirror = vm.mirror_root_for()
    vm.zap_all_fast()
    assert vm.mirror_root_for() == mirror and vm.translate(0, "read").ok
    check_vm(vm)


def test_zap_of_the_live_mirror_root_frees_external_tables():
    """Removing mirror tables in a live TD frees the external ones with
    TDH.MEM.SEPT.REMOVE after their leaves (block and track the linking entry first)."""
    vm, rec = make_td()
    vm.add_memslot(0, 0, 2 * MIB2, 1 << 30)
    for gfn in (0, 1, MIB2 + 9):
        vm.set_memory_attributes(gfn, 1, True)
        vm.handle_fault(gfn << 12, "read")
    vm.split_huge_pages(0)
    tables = len(vm.tdx.external.tables())
    assert tables == 4                           # levels 3 and 2, two level-1 tables
    mirror = [r for r in vm.roots if r.role == "mirror"][0]
    rec.clear()
    vm.zap_root(mirror)
    calls = vm.tdx.external.calls
    assert calls["free_table"] == tables and calls["remove"] == 2 * MIB2
    assert rec.log[-1] == ("all", "private")
    assert vm.tdx.external.pages == 1            # the root stays while the TD lives
    check_vm(vm)
    assert vm.handle_fault(5 << 12, "write") is PfResult.FIXED
    check_vm(vm)


def test_flush_recorder_spaces():
    rec = FlushRecorder()
    rec.flush_all()
    rec.flush_all(space="private")
    rec.flush_range(3, 4)
    rec.flush_range(3, 4, space="shared")
    assert rec.log == [("all",), ("all", "private"), ("range", 3, 4), ("range", 3, 4, "shared")]
    with pytest.raises(ValueError, match="space"):
        rec.flush_all(space="secure")


# -- the propagation protocol ------------------------------------------------------------


def test_failed_external_call_restores_the_mirror_entry(monkeypatch):
    """Freeze, call, commit or restore: a call that fails leaves the mirror entry as it
    was (not frozen), so the tables still agree and a retry works."""
    vm, _ = make_td()
    vm.add_memslot(0, 0, 16, 1 << 30)
    ext = vm.tdx.external
    real = ext.add_leaf

    def failing(gfn, level, hpa):
        raise ExternalTableError("injected: TDX_OPERAND_BUSY")

    monkeypatch.setattr(ext, "add_leaf", failing)
    with pytest.raises(ExternalTableError, match="injected"):
        vm.handle_fault(5 << 12, "read")
    frozen = vm.fmt.tdp_frozen_spte()
    mirror = [r for r in vm.roots if r.role == "mirror"][0]
    words = [word for _, _, word, _ in vm.walk_present(mirror)]
    assert frozen not in words
    assert not ext.leaves()
    check_vm(vm)
    monkeypatch.setattr(ext, "add_leaf", real)
    assert vm.handle_fault(5 << 12, "read") is PfResult.FIXED
    check_vm(vm)


def test_failed_split_unblocks_and_restores(monkeypatch):
    from sw_model.memory import OutOfTablePages
    vm, _ = make_td()
    vm.add_memslot(0, 0, MIB2, 1 << 30)
    vm.handle_fault(0, "read")
    ext = vm.tdx.external

    def failing(gfn, level):
        raise OutOfTablePages("injected")

    monkeypatch.setattr(ext, "split", failing)
    with pytest.raises(OutOfTablePages):
        vm.split_huge_pages(0)
    assert ext.calls["unblock"] == 1 and not ext.blocked
    assert vm.translate(0, "read").level == 2
    check_vm(vm)


def test_mirror_entries_are_frozen_during_the_call(monkeypatch):
    vm, _ = make_td()
    vm.add_memslot(0, 0, 16, 1 << 30)
    ext = vm.tdx.external
    seen = []
    real = ext.add_leaf

    def spy(gfn, level, hpa):
        mirror = [r for r in vm.roots if r.role == "mirror"][0]
        table = mirror.hpa
        for lvl in range(vm.fmt.root_level, level, -1):
            table = vm.fmt.tdp_child_table(vm.mem.read64(vm.fmt.entry_addr(table, gfn << 12, lvl)), lvl)
        seen.append(vm.mem.read64(vm.fmt.entry_addr(table, gfn << 12, level)))
        real(gfn, level, hpa)

    monkeypatch.setattr(ext, "add_leaf", spy)
    vm.handle_fault(3 << 12, "read")
    assert seen == [vm.fmt.tdp_frozen_spte()]


# -- the external manager's rules and page ownership ----------------------------------------


@pytest.fixture
def manager():
    vm = Vm("ept4", HostMemory(1 << 20))
    ext = ExternalPageTableManager(vm.mem, vm.fmt, vm.opts)
    ext.ensure_root()
    for level in (3, 2, 1):
        ext.add_table(0, level)
    return ext


def test_manager_rejects_bad_orderings(manager):
    ext = manager
    ext.add_leaf(0, 1, 1 << 30)
    with pytest.raises(ExternalTableError, match=r"remove\(gpa=0x0, level=1\): the entry is not blocked"):
        ext.remove(0, 1, 1 << 30)
    ext.block(0, 1)
    with pytest.raises(ExternalTableError, match="already blocked"):
        ext.block(0, 1)
    with pytest.raises(ExternalTableError, match="no track since the entry was blocked"):
        ext.remove(0, 1, 1 << 30)
    ext.track()
    with pytest.raises(ExternalTableError, match="maps 0x40000000, not 0x40001000"):
        ext.remove(0, 1, (1 << 30) + PAGE_SIZE)
    ext.remove(0, 1, 1 << 30)
    ext.add_leaf(1, 1, 1 << 30)
    ext.block(0, 2)
    ext.track()
    with pytest.raises(ExternalTableError, match="still has 1 entries"):
        ext.free_table(0, 1)
    with pytest.raises(ExternalTableError, match=r"add_leaf\(gpa=0x40000000, level=1\).*"
                                                 r"is not present \(no level-2 table: add_table first\)"):
        ext.add_leaf(1 << 18, 1, 1 << 30)
    with pytest.raises(ExternalTableError, match="on the way is blocked"):
        ext.add_leaf(2, 1, 1 << 30)
    with pytest.raises(ExternalTableError, match="not free"):
        ext.add_table(0, 1)
    with pytest.raises(ExternalTableError, match="4K or 2M"):
        ext.add_leaf(0, 3, 1 << 30)
    with pytest.raises(ExternalTableError, match="not aligned"):
        ext.add_leaf(5, 2, 1 << 30)
    with pytest.raises(ExternalTableError, match="free_root: the TD is live"):
        ext.free_root()
    assert ext.calls == {"add_table": 3, "add_leaf": 2, "block": 2, "track": 2, "remove": 1}


def test_manager_split_and_table_free(manager):
    ext = manager
    ext.add_table(1 << 9, 1)
    ext.block(1 << 9, 2)
    ext.track()
    with pytest.raises(ExternalTableError, match="a table, not a huge page"):
        ext.split(1 << 9, 2)
    ext.free_table(1 << 9, 1)                     # empty, blocked, tracked
    ext.add_leaf(1 << 9, 2, 1 << 31)
    ext.block(1 << 9, 2)
    with pytest.raises(ExternalTableError, match="no track"):
        ext.split(1 << 9, 2)
    ext.track()
    ext.split(1 << 9, 2)
    leaves = ext.leaves()
    assert len(leaves) == 512 and leaves[((1 << 9) + 5, 1)] == (1 << 31) + 5 * PAGE_SIZE
    ext.release_hkid()
    with pytest.raises(ExternalTableError, match="torn down"):
        ext.add_leaf(0, 1, 1 << 30)
    with pytest.raises(ExternalTableError, match="torn down"):
        ext.track()
    with pytest.raises(ExternalTableError, match="still has 512 entries"):
        ext.free_table(1 << 9, 1)


def test_core_cannot_write_external_pages():
    vm, _ = make_td()
    vm.add_memslot(0, 0, 16, 1 << 30)
    vm.handle_fault(0, "read")
    ext = vm.tdx.external
    root = vm.external_root_for()
    assert vm.mem.owner_of(root) is ext
    word = vm.mem.read64(root)                    # reading is allowed (debug, checks)
    with pytest.raises(PageOwnershipError, match=f"page {root:#x} belongs to"):
        vm.mem.write64(root, 0)
    with pytest.raises(PageOwnershipError, match="only its owner may write it"):
        vm.mem.cmpxchg64(root, word, 0)
    with pytest.raises(ValueError, match="read-only"):
        vm.mem.read_page(root)[0] = 0
    assert vm.mem.read64(root) == word
    # The AXI slave's zero-copy view is not affected (hardware writes go through it).
    assert np.frombuffer(vm.mem.view, dtype="<u8")[root // 8] == word
    # Plain pages and the owner itself are unaffected.
    vm.mem.write64(root, word, owner=ext)
    page = vm.mem.alloc_table()
    vm.mem.write64(page, 1)
    assert vm.mem.read_page(page).flags.writeable


# -- property tests ----------------------------------------------------------------------

# (base_gfn, npages, hpa, host_level): a 2M-capable slot, a 4K-only one, and one whose
# frames are not 2M-congruent (private frames are, so only private pages map 2M there).
SLOTS = [(0x4000, 3 * MIB2 + 37, 1 << 33, 2),
         (0x5000, 96, (1 << 33) + (1 << 30), 1),
         (0x6000, 2 * MIB2, (1 << 34) + 4096, 2)]
OPS = ["fault"] * 6 + ["convert", "convert", "zap", "log_start", "log_stop", "get_log",
                      "split", "age", "slot_delete", "invalidate_roots", "zap_all_fast"]


class TdHarness:
    """A TD and a vCPU acting as the hypervisor loop: an access goes to the walker; a
    fault goes to the model; a memory fault is converted as userspace would."""

    def __init__(self, name, ad):
        self.rec = FlushRecorder()
        self.checker = FlushObligations(self.rec)
        self.vm = Vm(name, HostMemory(8 << 20), ad=ad, flush_sink=self.checker, trace=False,
                     tdx=True)
        self.bit = 1 << self.vm.tdx.shared_bit
        self.start_free = self.vm.mem.free_pages
        self.generation = [0] * len(SLOTS)
        self.live = set()

    def add(self, index):
        base, npages, hpa, host_level = SLOTS[index]
        hpa += self.generation[index] << 35
        # Private frames 2M-congruent with the GFNs even where the shared ones are not.
        private_hpa = (hpa & ~((2 << 20) - 1)) + (1 << 40)
        self.vm.add_memslot(index, base, npages, hpa, host_level=host_level,
                            private_hpa=private_hpa)
        self.live.add(index)

    def access(self, gfn, private, access):
        vm = self.vm
        gpa = gfn << 12 | (0 if private else self.bit)
        for _ in range(4):
            result = vm.translate(gpa, access, ad_update=True)
            if result.ok:
                self.checker.observe()
                slot = vm.find_memslot(gfn)
                want = vm.tdx.private_frame(slot, gfn) if private else slot.gfn_to_hpa(gfn)
                assert result.hpa == want, f"gpa {gpa:#x}: {result.hpa:#x} != {want:#x}"
                assert vm.is_private_gfn(gfn) == private
                return
            r = vm.handle_fault(gpa, access)
            if r is PfResult.MEMORY_FAULT:
                vm.set_memory_attributes(gfn, 1, private)
            elif r in (PfResult.EMULATE, PfResult.NOMEM):
                assert vm.find_memslot(gfn) is None or r is PfResult.NOMEM, f"{gpa:#x}: {r}"
                return
        raise AssertionError(f"{access} at gpa {gpa:#x} faults after its fault was fixed")


def run_td_sequence(name, ad, data):
    h = TdHarness(name, ad)
    vm = h.vm
    for index in range(len(SLOTS)):
        h.add(index)
    for _ in range(data.draw(st.integers(8, 24), label="steps")):
        op = data.draw(st.sampled_from(OPS), label="op")
        live = sorted(h.live)
        index = data.draw(st.sampled_from(live), label="slot") if live else None
        base, npages = SLOTS[index][:2] if live else (SLOTS[0][:2])
        if op == "fault":
            offset = data.draw(st.integers(0, npages + 3), label="offset")
            h.access(base + offset, data.draw(st.booleans(), label="private"),
                     data.draw(st.sampled_from(["read", "write", "execute"]), label="access"))
        elif op == "convert":
            start = base + data.draw(st.integers(0, npages), label="start")
            length = data.draw(st.sampled_from([1, 7, MIB2, MIB2 + 3]), label="length")
            vm.set_memory_attributes(start, length, data.draw(st.booleans(), label="private"))
        elif op == "zap":
            start = base + data.draw(st.integers(0, npages), label="start")
            vm.zap_gfn_range(start, start + data.draw(st.integers(1, MIB2), label="length"),
                             space=data.draw(st.sampled_from(["both", "private", "shared"]),
                                             label="space"))
        elif op == "log_start" and live and not vm.memslot(index).dirty_logging:
            vm.set_dirty_logging(index, True, eager_split=data.draw(st.booleans(), label="eager"))
        elif op == "log_stop" and live and vm.memslot(index).dirty_logging:
            vm.get_dirty_log(index)
            vm.set_dirty_logging(index, False)
        elif op == "get_log" and live and vm.memslot(index).dirty_logging:
            slot = vm.memslot(index)
            logged = set(slot.dirty_gfns(vm.get_dirty_log(index)))
            mapped = set()
            for gfn, level in vm.tdx.external.leaves():
                mapped.update(range(gfn, gfn + (vm.fmt.page_size(level) >> 12)))
            assert mapped & set(range(slot.base_gfn, slot.end_gfn)) <= logged, \
                "a mapped private page is missing from the dirty log"
        elif op == "split" and live:
            vm.split_huge_pages(index)
        elif op == "age" and live:
            vm.age_gfn_range(base, base + npages)
        elif op == "slot_delete" and live:
            vm.delete_memslot(index)
            h.generation[index] += 1
            h.live.discard(index)
            h.add(index)
        elif op == "invalidate_roots":
            vm.invalidate_all_roots()           # the shared roots; the mirror stays
        elif op == "zap_all_fast":
            vm.zap_all_fast()
        samples = [base + data.draw(st.integers(0, npages), label="sample") for _ in range(4)]
        check_vm(vm, max_walks=128, sample_gfns=samples)
    vm.zap_all()
    assert h.checker.checks
    assert vm.mem.free_pages == h.start_free, "pages leaked after TD teardown"
    assert vm.stats()["table_pages"] == 0 and vm.tdx.external.pages == 0


CONFIGS = [("ept4", "hardware"), ("ept4", "off"), ("ept5", "hardware")]
IDS = [f"{name}-{ad}" for name, ad in CONFIGS]


@pytest.mark.parametrize("name, ad", CONFIGS, ids=IDS)
@sequence_settings(10)
@given(data=st.data())
def test_td_random_operation_sequences(name, ad, data):
    run_td_sequence(name, ad, data)


@pytest.mark.slow
@pytest.mark.parametrize("name, ad", CONFIGS, ids=IDS)
@sequence_settings(150)
@given(data=st.data())
def test_td_random_operation_sequences_long(name, ad, data):
    run_td_sequence(name, ad, data)
