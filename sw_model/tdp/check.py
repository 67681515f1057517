"""Invariant checks of a :class:`~sw_model.tdp.Vm` against its tables (tests, co-sim).

``check_vm(vm)`` walks every root and raises AssertionError naming the first entry that
breaks a rule: the reference walker's view of every mapped GFN is the memslot's frame,
page statistics equal a recount, the host-writable / MMU-writable / W chain of KVM's
spte.h holds, and every table page is accounted for. For a TD, ``check_tdx(vm)`` also
holds: the mirror and external tables have the same tables and leaves and translate
every private GPA identically, and no GFN is mapped on the side its memory attribute
does not allow. Whether every operation flushed what it owed is checked by
:class:`~sw_model.tdp.obligations.FlushObligations` as the VM's flush sink.
"""

from ..memory import PAGE_SIZE
from ..walker import translate
from .iter import PAGE_SHIFT

__all__ = ["check_vm", "check_tdx", "mapped_leaves"]


def mapped_leaves(vm):
    """``[(root, gfn, level, word)]`` for every shadow-present leaf of every root."""
    return [(root, gfn, level, word) for root in vm.roots
            for gfn, level, word, _ in vm.walk_present(root)
            if vm.fmt.tdp_is_last_spte(word, level)]


def _expected_frame(vm, root, slot, gfn):
    """The host frame ``root`` must map ``gfn`` to: a TD's mirror maps private frames."""
    if root.role == "mirror":
        return vm.tdx.private_frame(slot, gfn)
    return slot.gfn_to_hpa(gfn)


def _root_gpa(vm, root, gfn):
    """The GPA that reaches ``gfn`` through ``root`` (a TD's shared root wants the bit)."""
    if vm.tdx is not None and root.role == "direct":
        gfn |= vm.tdx.shared_gfn_bit
    return gfn << PAGE_SHIFT


def _check_walk(vm, root, gfn, slot):
    fmt, opts = vm.fmt, vm.opts
    result = translate(vm.mem, fmt, root.hpa, _root_gpa(vm, root, gfn), "read", vm=opts,
                       ad_update=False)
    expected = _expected_frame(vm, root, slot, gfn)
    if result.ok:
        assert result.hpa == expected, \
            f"{fmt.name}: gfn {gfn:#x} translates to {result.hpa:#x}, memslot says {expected:#x}"
    else:
        # Without A/D bits an aged leaf is access-tracked (not present to the walker);
        # with A/D faults (Svade) an aged leaf faults on A.
        assert result.kind in ("not_present", "ad_clear"), \
            f"{fmt.name}: mapped gfn {gfn:#x} faults with {result.kind} ({result.to_json()})"


def check_vm(vm, *, exclusive_memory=True, max_walks=4096, sample_gfns=()):
    """Raise AssertionError unless ``vm``'s tables agree with its memslots and books.

    The reference walker checks at most ``max_walks`` leaves, evenly spread (every
    leaf's entry is still checked against the memslot).

    ``exclusive_memory``: the VM is the only user of its HostMemory's allocator, so
    allocated pages must equal its table pages (no leak, no double use).

    A TD is also checked by :func:`check_tdx` (``sample_gfns`` goes to it).
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
        assert fmt.tdp_spte_frame(word, level) == _expected_frame(vm, root, slot, gfn), \
            f"{fmt.name}: leaf gfn {gfn:#x} maps {fmt.tdp_spte_frame(word, level):#x}"
        writable = fmt.tdp_is_writable(word)
        mmu_writable = fmt.tdp_is_mmu_writable(word)
        host_writable = fmt.tdp_is_host_writable(word)
        assert not writable or mmu_writable, f"gfn {gfn:#x}: W without MMU-writable"
        assert not mmu_writable or host_writable, f"gfn {gfn:#x}: MMU-writable without host-writable"
        assert host_writable == (not slot.readonly), f"gfn {gfn:#x}: host-writable on a read-only slot"
        tracked = [g for g in vm._write_tracked[root.as_id] if gfn <= g < gfn + npages]
        assert not (tracked and mmu_writable), f"gfn {tracked[0]:#x}: write-tracked but MMU-writable"
        # Private pages are not logged by W: every mapped one is reported dirty.
        if writable and slot.dirty_logging and not fmt.tdp_ad_enabled(opts) \
                and root.role != "mirror":
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
    if vm.tdx is not None:
        check_tdx(vm, sample_gfns=sample_gfns)
    if exclusive_memory:
        used = vm.mem.total_pages - vm.mem.free_pages
        tables = sum(sp.nbytes for sp in vm._pages.values()) // PAGE_SIZE \
            + sum(r.nbytes for r in vm.roots) // PAGE_SIZE \
            + (vm.tdx.external.pages if vm.tdx is not None else 0)
        assert used == tables, f"{used} pages allocated, {tables} in tables"


def _tree(vm, root):
    """``({(gfn, level): frame} of leaves, {(gfn, level)} of tables below the root)``."""
    fmt = vm.fmt
    leaves, tables = {}, set()
    for gfn, level, word, _ in vm.walk_present(root):
        if fmt.tdp_is_last_spte(word, level):
            leaves[(gfn, level)] = fmt.tdp_spte_frame(word, level)
        else:
            tables.add((gfn, level - 1))
    return leaves, tables


def check_tdx(vm, *, max_walks=64, sample_gfns=()):
    """Raise AssertionError unless a TD's private and shared mappings are consistent.

    The mirror and external trees have the same tables and leaves (so they translate
    every private GPA identically, or both fault); the reference walker confirms it on
    at most ``max_walks`` leaves, evenly spread, and on ``sample_gfns`` (mapped or not),
    and that private ones do not translate through the shared root; no entry is
    left blocked; no leaf maps a GFN on the side its attribute excludes, so a private
    GPA never resolves through the shared root, nor a shared one through the external
    root.
    """
    fmt, opts, tdx = vm.fmt, vm.opts, vm.tdx
    ext = tdx.external
    assert not ext.blocked, f"{ext.blocked} external entries left blocked"
    mirrors = [r for r in vm.roots if r.role == "mirror" and not r.invalid]
    assert len(mirrors) <= 1, f"{len(mirrors)} valid mirror roots"
    if not mirrors:
        assert not ext.leaves() and not ext.tables(), "external tables without a mirror root"
        return
    mirror = mirrors[0]
    leaves, tables = _tree(vm, mirror)
    ext_leaves = ext.leaves()
    assert leaves == ext_leaves, (
        f"mirror and external leaves differ: only mirror "
        f"{sorted(set(leaves.items()) - set(ext_leaves.items()))[:4]}, only external "
        f"{sorted(set(ext_leaves.items()) - set(leaves.items()))[:4]}")
    assert tables == ext.tables(), \
        f"mirror and external tables differ: {sorted(tables ^ ext.tables())[:4]}"
    attrs = tdx.attributes
    for root in vm.roots:
        private = root.role == "mirror"
        for (gfn, level) in _tree(vm, root)[0]:
            n = fmt.page_size(level) >> PAGE_SHIFT
            assert attrs.uniform(gfn, gfn + n) is private, \
                f"gfn {gfn:#x} level {level}: mapped {'privately' if private else 'shared'} " \
                f"but its memory attribute says otherwise"
    direct = [r for r in vm.roots if r.role == "direct"]
    keys = sorted(leaves)
    stride = max(1, -(-len(keys) // max_walks))
    gfns = [gfn for gfn, _ in keys[::stride]] + list(sample_gfns)
    for gfn in gfns:
        gpa = gfn << PAGE_SHIFT
        want = translate(vm.mem, fmt, mirror.hpa, gpa, "read", vm=opts, ad_update=False)
        got = translate(vm.mem, fmt, ext.root, gpa, "read", vm=opts, ad_update=False)
        assert want.ok == got.ok, f"gfn {gfn:#x}: mirror {want.to_json()} external {got.to_json()}"
        if got.ok:
            assert (got.hpa, got.level) == (want.hpa, want.level), \
                f"gfn {gfn:#x}: mirror {want.to_json()} external {got.to_json()}"
            assert not got.ad_writes, f"gfn {gfn:#x}: the walker would write external memory"
        else:
            assert got.kind == want.kind == "not_present", \
                f"gfn {gfn:#x}: mirror {want.to_json()} external {got.to_json()}"
        if attrs.is_private(gfn):
            for root in direct:
                shared = translate(vm.mem, fmt, root.hpa, gpa | (1 << tdx.shared_bit), "read",
                                   vm=opts, ad_update=False)
                assert not shared.ok, f"private gfn {gfn:#x} translates through the shared root"
        else:
            assert not got.ok, f"shared gfn {gfn:#x} translates through the external root"
