"""Invariant checks of a :class:`~sw_model.tdp.Vm` against its tables (tests, co-sim).

``check_vm(vm)`` walks every root and raises AssertionError naming the first entry that
breaks a rule: the reference walker's view of every mapped GFN is the memslot's frame,
page statistics equal a recount, the host-writable / MMU-writable / W chain of KVM's
spte.h holds, and every table page is accounted for.
"""

from ..memory import PAGE_SIZE
from ..walker import translate
from .iter import PAGE_SHIFT

__all__ = ["check_vm", "mapped_leaves"]


def mapped_leaves(vm):
    """``[(root, gfn, level, word)]`` for every shadow-present leaf of every root."""
    return [(root, gfn, level, word) for root in vm.roots
            for gfn, level, word, _ in vm.walk_present(root)
            if vm.fmt.tdp_is_last_spte(word, level)]


def _check_walk(vm, root, gfn, slot):
    fmt, opts = vm.fmt, vm.opts
    result = translate(vm.mem, fmt, root.hpa, gfn << PAGE_SHIFT, "read", vm=opts, ad_update=False)
    if result.ok:
        assert result.hpa == slot.gfn_to_hpa(gfn), \
            f"{fmt.name}: gfn {gfn:#x} translates to {result.hpa:#x}, memslot says {slot.gfn_to_hpa(gfn):#x}"
    else:
        # Without A/D bits an aged leaf is access-tracked (not present to the walker);
        # with A/D faults (Svade) an aged leaf faults on A.
        assert result.kind in ("not_present", "ad_clear"), \
            f"{fmt.name}: mapped gfn {gfn:#x} faults with {result.kind} ({result.to_json()})"


def check_vm(vm, *, exclusive_memory=True, max_walks=4096):
    """Raise AssertionError unless ``vm``'s tables agree with its memslots and books.

    The reference walker checks at most ``max_walks`` leaves, evenly spread (every
    leaf's entry is still checked against the memslot).

    ``exclusive_memory``: the VM is the only user of its HostMemory's allocator, so
    allocated pages must equal its table pages (no leak, no double use).
    """
    fmt, opts = vm.fmt, vm.opts
    recount = vm.recount()
    stats = vm.stats()
    assert recount["pages"] == stats["pages"], f"page stats {stats['pages']} != recount {recount['pages']}"
    assert recount["table_pages"] == stats["table_pages"], \
        f"table pages {stats['table_pages']} != recount {recount['table_pages']}"
    leaves = mapped_leaves(vm)
    stride = max(1, -(-len(leaves) // max_walks))
    dirty = {}
    for index, (root, gfn, level, word) in enumerate(leaves):
        npages = vm.fmt.page_size(level) >> PAGE_SHIFT
        slot = vm.find_memslot(gfn, root.as_id)
        assert slot is not None and slot.contains(gfn + npages - 1), \
            f"{fmt.name}: leaf gfn {gfn:#x} level {level} is not inside one memslot"
        assert fmt.tdp_spte_frame(word, level) == slot.gfn_to_hpa(gfn), \
            f"{fmt.name}: leaf gfn {gfn:#x} maps {fmt.tdp_spte_frame(word, level):#x}"
        writable = fmt.tdp_is_writable(word)
        mmu_writable = fmt.tdp_is_mmu_writable(word)
        host_writable = fmt.tdp_is_host_writable(word)
        assert not writable or mmu_writable, f"gfn {gfn:#x}: W without MMU-writable"
        assert not mmu_writable or host_writable, f"gfn {gfn:#x}: MMU-writable without host-writable"
        assert host_writable == (not slot.readonly), f"gfn {gfn:#x}: host-writable on a read-only slot"
        tracked = [g for g in vm._write_tracked[root.as_id] if gfn <= g < gfn + npages]
        assert not (tracked and mmu_writable), f"gfn {tracked[0]:#x}: write-tracked but MMU-writable"
        if writable and slot.dirty_logging and not fmt.tdp_ad_enabled(opts):
            if slot not in dirty:
                dirty[slot] = set(slot.dirty_gfns())
            assert set(range(gfn, gfn + npages)) <= dirty[slot], \
                f"gfn {gfn:#x}: writable while logging by W but not in the dirty bitmap"
        if index % stride:
            continue
        _check_walk(vm, root, gfn, slot)
        if npages > 1:
            _check_walk(vm, root, gfn + npages - 1, slot)
    # Every public operation ends with its removed tables flushed and freed.
    assert not vm._pending_free, f"{len(vm._pending_free)} removed tables not freed"
    if exclusive_memory:
        used = vm.mem.total_pages - vm.mem.free_pages
        tables = sum(sp.nbytes for sp in vm._pages.values()) // PAGE_SIZE \
            + sum(r.nbytes for r in vm.roots) // PAGE_SIZE
        assert used == tables, f"{used} pages allocated, {tables} in tables"
