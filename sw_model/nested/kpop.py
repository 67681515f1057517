"""KPOP ("KVM paravirt only paging"): L1 keeps no tables for L2; it tells L0 what it
maps through hypercalls, and L0 builds L2's tables with its TDP core's map path.

L0 keeps one guest MMU per ``(vCPU holder, as_id)`` in a hash, with a reference count
taken by MMU_LOAD_UNLOAD. A guest MMU holds a :class:`sw_model.tdp.Vm` whose memslots
are the MAP hypercalls composed with L0's own memslots for L1, so faults, zaps, splits,
aging and dirty logging are the TDP core's. Hypercalls (``hypercall(name, ...)``):

``mmu_load_unload(holder, as_id, load)``
    Take (``load``) or drop a reference on the guest MMU; returns its root. The last
    drop frees every table.
``map(holder, as_id, l2_gfn, l1_gfn, npages, writable, gpa=None, access=None)``
    Map L2 GFNs to L1 GFNs (one L1 page or huge page); with ``gpa``/``access``, the
    faulting access is installed at once (no second exit). Returns the fault result.
``unmap(holder, as_id, l2_gfn, npages)``
    Remove every mapping overlapping the range (whole mappings, as MAP made them), zap
    their entries, one flush. Dirty pages of a logged range are kept for the next
    ``dirty_log get``.
``zap(holder, as_id, l2_gfn, npages)``
    Zap the range's entries, keep the mappings: the next access is refilled by L0
    alone.
``zap_all(holder, as_id)``
    Drop every mapping and table (new root).

Added here, left undone by the proposal:

``age(holder, as_id, l2_gfn, npages, flush=False)`` / ``test_age(...)``
    ``age_gfn_range`` / ``test_age_gfn`` of the guest MMU: L1's LRU asks about L2 pages.
``dirty_log(holder, as_id, op, l2_gfn, npages)``
    ``op`` ``"enable"`` / ``"disable"``: dirty logging (with eager splitting) on every
    mapping in the range, and on mappings made there later; ``"get"``: the L2 GFNs
    written since the last ``get`` (KVM_GET_DIRTY_LOG: D or W re-protected, one flush),
    as a sorted list (a real interface writes a bitmap into an L1 buffer).
``page_track(holder, as_id, op, l2_gfn, npages)``
    ``op`` ``"add"`` / ``"remove"``: write tracking of the L2 GFNs (the TDP core's
    ``write_track_add_gfn``: W and MMU-writable cleared, huge pages split, one flush),
    e.g. for L1 to shadow a device's page tables that live in L2 memory. A tracked
    write by L2 exits to L0, which reports it to L1 (``L1Kpop.tracked_writes``) instead
    of mapping the page; L1 emulates it.

L0's own dirty logging of L1's memory (migrating L1) is not modelled under KPOP: it
needs a second dirty bitmap in the guest MMUs' memslots, whose bitmaps are L1's.
"""

import bisect

from ..tdp import PfResult, Vm
from ..tdp.check import check_vm
from .common import PAGE_SHIFT, Composition, Costs, CountingSink

__all__ = ["GuestMmu", "KpopHost", "L1Kpop", "KpopNested", "HYPERCALLS"]

HYPERCALLS = ("mmu_load_unload", "map", "unmap", "zap", "zap_all", "age", "test_age",
              "dirty_log", "page_track")


class GuestMmu:
    """L0's guest MMU for one ``(holder, as_id)``: a TDP core VM whose memslots are the
    MAP hypercalls (one memslot per MAP, L2 GFNs to host frames), with KPOP's books.

    Members
    -------
    vm : sw_model.tdp.Vm
    key : tuple
        ``(holder, as_id)``.
    refcount : int
        MMU_LOAD references.
    logged : list of (start, end)
        L2 GFN ranges under dirty logging.
    orphan_dirty : set
        Dirty L2 GFNs of mappings removed while logged, until the next ``get``.
    """

    def __init__(self, key, vm):
        self.vm, self.key = vm, key
        self.refcount = 0
        self.logged = []
        self.orphan_dirty = set()
        self._next_id = 0

    def new_slot_id(self):
        self._next_id += 1
        return self._next_id

    def is_logged(self, start, end):
        return any(lo <= start and end <= hi for lo, hi in self.logged)


class KpopHost:
    """L0's hypercall handlers and its hash of guest MMUs.

    Parameters
    ----------
    l0 : L0Host
        L0's memslots for L1 (composed with every MAP).
    memory : HostMemory
        Where guest MMU tables live.
    ad : str, optional
        A/D mode of the guest MMUs.
    sink_for : callable, optional
        ``sink_for(key) -> FlushSink`` for a new guest MMU (the RTL context in
        co-simulation).

    Members
    -------
    mmus : dict
        ``(holder, as_id) -> GuestMmu``.
    costs : Costs
    """

    def __init__(self, l0, memory, *, ad=None, sink_for=None):
        self.l0, self.mem, self.ad = l0, memory, ad
        self.sink_for = sink_for or (lambda key: None)
        self.mmus = {}
        self.costs = Costs()
        self._sinks = {}

    def hypercall(self, name, holder, as_id, *args, **kwargs):
        """Run hypercall ``name`` for the guest MMU of ``(holder, as_id)``."""
        if name not in HYPERCALLS:
            raise ValueError(f"hypercall {name!r}: unknown (known: {', '.join(HYPERCALLS)})")
        self.costs.counts["hc_" + name] += 1
        key = (holder, as_id)
        if name == "mmu_load_unload":
            return self._load_unload(key, *args, **kwargs)
        guest = self.mmus.get(key)
        if guest is None:
            raise ValueError(f"hypercall {name}: no guest MMU loaded for {key}")
        with self._sinks[key]:
            result = getattr(self, "_" + name)(guest, *args, **kwargs)
        self._account(guest)
        return result

    def handle_l2_fault(self, key, gpa, access):
        """An L2 fault on a guest MMU (an exit to L0): the TDP core maps it from the
        MAPs; EMULATE means L1 has not mapped it (reflect to L1)."""
        self.costs.counts["l2_faults"] += 1
        guest = self.mmus[key]
        with self._sinks[key]:
            result = guest.vm.handle_fault(gpa, access)
        self._account(guest)
        return result

    def _account(self, guest):
        """Table pages and entry writes (the TDP core's ``kvm_tdp_mmu_spte_changed``
        tracepoint, drained after every operation)."""
        fmt = guest.vm.fmt
        pages = sum(g.vm.stats()["table_pages"]
                    + len(g.vm.roots) * (fmt.root_table_bytes // 4096 - 1)
                    for g in self.mmus.values())
        self.costs.pages(pages - self.costs.table_pages)
        self.costs.counts["table_writes"] += sum(e.name == "kvm_tdp_mmu_spte_changed"
                                                 for e in guest.vm.events)
        guest.vm.events.clear()

    # -- hypercalls ----------------------------------------------------------------

    def _load_unload(self, key, load):
        guest = self.mmus.get(key)
        if load:
            if guest is None:
                sink = self._sinks[key] = CountingSink(self.costs, self.sink_for(key))
                guest = self.mmus[key] = GuestMmu(key, Vm(self.l0.fmt.name, self.mem, ad=self.ad,
                                                          flush_sink=sink))
            guest.refcount += 1
            root = guest.vm.root_for(0)
            self._account(guest)
            return root
        if guest is None or guest.refcount == 0:
            raise ValueError(f"mmu_load_unload: {key} holds no reference")
        guest.refcount -= 1
        if guest.refcount == 0:
            with self._sinks[key]:
                guest.vm.zap_all()
            del self.mmus[key], self._sinks[key]
            self._account(guest)
        return None

    def _map(self, guest, l2_gfn, l1_gfn, npages, writable, gpa=None, access=None):
        vm = guest.vm
        if vm.memslots_in(l2_gfn, l2_gfn + npages):
            raise ValueError(f"map: L2 GFNs {l2_gfn:#x}+{npages} overlap a mapping")
        logged = guest.is_logged(l2_gfn, l2_gfn + npages)
        done = 0
        while done < npages:     # one memslot per L0 memslot the range crosses
            slot = self.l0.vm.find_memslot(l1_gfn + done)
            if slot is None:
                raise ValueError(f"map: L1 GFN {l1_gfn + done:#x} is not L1 RAM")
            n = min(npages - done, slot.end_gfn - (l1_gfn + done))
            vm.add_memslot(guest.new_slot_id(), l2_gfn + done, n, slot.gfn_to_hpa(l1_gfn + done),
                           readonly=not writable or slot.readonly, dirty_logging=logged,
                           host_level=slot.host_level)
            done += n
        if gpa is None:
            return PfResult.FIXED
        return vm.handle_fault(gpa, access)

    def _remove(self, guest, slots):
        for slot in slots:
            if slot.dirty_logging:
                guest.orphan_dirty.update(slot.dirty_gfns())
            guest.vm.delete_memslot(slot.slot_id)

    def _unmap(self, guest, l2_gfn, npages):
        slots = guest.vm.memslots_in(l2_gfn, l2_gfn + npages)
        if slots:
            guest.vm.zap_gfn_range(slots[0].base_gfn, slots[-1].end_gfn)
        self._remove(guest, slots)
        return len(slots)

    def _zap(self, guest, l2_gfn, npages):
        return guest.vm.zap_gfn_range(l2_gfn, l2_gfn + npages)

    def _zap_all(self, guest):
        guest.vm.zap_all_fast()
        self._remove(guest, guest.vm.memslots())
        guest.vm.root_for(0)

    def _age(self, guest, l2_gfn, npages, flush=False):
        return guest.vm.age_gfn_range(l2_gfn, l2_gfn + npages, flush=flush)

    def _test_age(self, guest, l2_gfn, npages):
        return guest.vm.test_age_gfn(l2_gfn, l2_gfn + npages)

    def _dirty_log(self, guest, op, l2_gfn, npages):
        vm = guest.vm
        end = l2_gfn + npages
        slots = vm.memslots_in(l2_gfn, end)
        if any(s.base_gfn < l2_gfn or s.end_gfn > end for s in slots):
            raise ValueError("dirty_log: the range cuts a mapping")
        if op in ("enable", "disable"):
            enable = op == "enable"
            if enable:
                guest.logged.append((l2_gfn, end))
            else:
                guest.logged = [r for r in guest.logged if r != (l2_gfn, end)]
                guest.orphan_dirty = {g for g in guest.orphan_dirty if not l2_gfn <= g < end}
            for slot in slots:
                result = vm.set_dirty_logging(slot.slot_id, enable)
                if result is not None:
                    self.costs.counts["table_writes"] += result.sptes_created
            return None
        if op != "get":
            raise ValueError(f"dirty_log: op must be enable, disable or get, got {op!r}")
        gfns = {g for g in guest.orphan_dirty if l2_gfn <= g < end}
        guest.orphan_dirty -= gfns
        for slot in slots:
            gfns.update(slot.dirty_gfns(vm.get_dirty_log(slot.slot_id)))
        return sorted(gfns)

    def _page_track(self, guest, op, l2_gfn, npages):
        if op not in ("add", "remove"):
            raise ValueError(f"page_track: op must be add or remove, got {op!r}")
        if not isinstance(npages, int) or npages < 1:
            raise ValueError(f"page_track: npages must be a positive integer, got {npages!r}")
        for gfn in range(l2_gfn, l2_gfn + npages):
            if op == "add":
                guest.vm.write_track_add_gfn(gfn)
            else:
                guest.vm.write_track_remove_gfn(gfn)


class L1Kpop:
    """L1 under KPOP: its memslots for L2 and the XArray of what it mapped.

    Parameters
    ----------
    host : KpopHost
    holder : object
        Identifies L1's L2 VM to L0 (the proposal's vCPU holder).
    max_level : int
        Largest page L1 maps (2: 2 MiB).

    Members
    -------
    slots : dict
        ``slot_id -> L2Slot``.
    xarray : dict
        ``l2 base GFN -> (npages, l1_gfn, writable)``: one entry per MAP.
    tracked_writes : list of int
        L2 GPAs of the writes L0 reported on tracked pages, for L1 to emulate.
    """

    def __init__(self, host, holder, *, as_id=0, max_level=2):
        self.host, self.holder, self.as_id = host, holder, as_id
        self.max_level = max_level
        self.slots = {}
        self.xarray = {}
        self.tracked_writes = []
        self._keys = []
        self.root = self.call("mmu_load_unload", True)

    def call(self, name, *args, **kwargs):
        return self.host.hypercall(name, self.holder, self.as_id, *args, **kwargs)

    def find_slot(self, gfn):
        for slot in self.slots.values():
            if slot.contains(gfn):
                return slot
        return None

    def lookup(self, gfn):
        """``(base, npages, l1_gfn, writable)`` of the entry mapping ``gfn``, or None."""
        i = bisect.bisect_right(self._keys, gfn) - 1
        if i >= 0:
            base = self._keys[i]
            npages, l1_gfn, writable = self.xarray[base]
            if gfn < base + npages:
                return base, npages, l1_gfn, writable
        return None

    def _entries_in(self, start, end):
        i = max(bisect.bisect_right(self._keys, start) - 1, 0)
        return [b for b in self._keys[i:] if b < end and b + self.xarray[b][0] > start]

    def handle_fault(self, gpa, access):
        """A reflected L2 fault: map the page (huge where the slot allows) and MAP it."""
        gfn = gpa >> PAGE_SHIFT
        slot = self.find_slot(gfn)
        if slot is None or (access == "write" and slot.readonly):
            return PfResult.EMULATE
        if self.lookup(gfn) is not None:
            raise AssertionError(f"L0 reflected a fault on mapped L2 GFN {gfn:#x}")
        fmt = self.host.l0.fmt
        for level in range(self.max_level, 0, -1):
            n = fmt.page_size(level) >> PAGE_SHIFT
            base = gfn & ~(n - 1)
            if base >= slot.base_gfn and base + n <= slot.end_gfn \
                    and not (slot.base_gfn ^ slot.l1_gfn) & (n - 1) \
                    and not self._entries_in(base, base + n):
                break
        l1_gfn = slot.l1_gfn + (base - slot.base_gfn)
        self.xarray[base] = (n, l1_gfn, not slot.readonly)
        bisect.insort(self._keys, base)
        return self.call("map", base, l1_gfn, n, not slot.readonly, gpa=gpa, access=access)

    def forget(self, start, end):
        """Drop the XArray entries overlapping ``[start, end)``; their extent."""
        bases = self._entries_in(start, end)
        if not bases:
            return None
        extent = (bases[0], bases[-1] + self.xarray[bases[-1]][0])
        for base in bases:
            del self.xarray[base]
            self._keys.remove(base)
        return extent


class KpopNested:
    """One L2 under KPOP, with the same interface as :class:`ShadowNested`.

    Members
    -------
    name : str
        ``"kpop"``.
    host : KpopHost
    l1 : L1Kpop
    fmt, opts, mem
        What the hardware walks (the guest MMU's).
    costs : Costs
    """
    name = "kpop"

    def __init__(self, host, holder="l2", as_id=0):
        self.host = host
        self.l1 = L1Kpop(host, holder, as_id=as_id)
        self.key = (holder, as_id)
        self.costs = host.costs
        vm = host.mmus[self.key].vm
        self.fmt, self.opts, self.mem = vm.fmt, vm.opts, vm.mem

    @property
    def vm(self):
        """The guest MMU's TDP core VM."""
        return self.host.mmus[self.key].vm

    def root_for(self, as_id=0):
        return self.vm.root_for(0)

    @property
    def l0(self):
        return self.host.l0

    def handle_l2_fault(self, gpa, access):
        result = self.host.handle_l2_fault(self.key, gpa, access)
        if result is not PfResult.EMULATE:
            return result
        if access == "write" and self.vm.is_write_tracked(gpa >> PAGE_SHIFT):
            self.l1.tracked_writes.append(gpa)      # reported; L1 emulates the write
            self.costs.counts["tracked_writes"] += 1
            return PfResult.EMULATE
        self.costs.counts["reflected"] += 1
        return self.l1.handle_fault(gpa, access)

    def add_slot(self, slot):
        self.l1.slots[slot.slot_id] = slot

    def delete_slot(self, slot_id):
        slot = self.l1.slots.pop(slot_id)
        extent = self.l1.forget(slot.base_gfn, slot.end_gfn)
        if extent:
            self.l1.call("unmap", extent[0], extent[1] - extent[0])

    def zap(self, start, end):
        self.l1.call("zap", start, end - start)

    def zap_all(self):
        self.l1.forget(0, 1 << 64)
        self.l1.call("zap_all")

    def age(self, start, end):
        return self.l1.call("age", start, end - start)

    def test_age(self, start, end):
        return self.l1.call("test_age", start, end - start)

    def dirty_logging(self, slot_id, enable):
        slot = self.l1.slots[slot_id]
        self.l1.call("dirty_log", "enable" if enable else "disable", slot.base_gfn, slot.npages)

    def get_dirty(self, slot_id):
        slot = self.l1.slots[slot_id]
        return set(self.l1.call("dirty_log", "get", slot.base_gfn, slot.npages))

    def write_track(self, start, end, enable):
        """L1 write-tracks L2 GFNs ``[start, end)`` through the ``page_track``
        hypercall."""
        self.l1.call("page_track", "add" if enable else "remove", start, end - start)

    def flush(self):
        """L1's TLB flush for L2: nothing to do, every L0 change flushed already."""

    def l0_dirty_logging(self, slot_id, enable, *, eager_split=True):
        raise ValueError("L0's dirty logging of L1 is not modelled under KPOP (shadow "
                         "TDP only)")

    def l0_get_dirty(self, slot_id):
        raise ValueError("L0's dirty logging of L1 is not modelled under KPOP (shadow "
                         "TDP only)")

    def write_l2(self, gpa):
        """L0 writes L2's memory at ``gpa`` (an emulated store, a stage-1 A/D update):
        logged in the guest MMU's dirty log and L0's; None if L1 has not mapped it
        writable (L0 reflects a fault then)."""
        gfn = gpa >> PAGE_SHIFT
        slot = self.vm.find_memslot(gfn)
        found = self.composed(gpa, "write")
        if slot is None or found is None:
            return None
        if slot.dirty_logging:
            slot.mark_dirty(gfn)
        self.host.l0.mark_dirty(found.l1_gfn)
        return found

    def composed(self, gpa, access):
        """L1's XArray then L0's memslots: a :class:`~.common.Composition` or None."""
        entry = self.l1.lookup(gpa >> PAGE_SHIFT)
        if entry is None:
            return None
        base, _, l1_gfn, writable = entry
        l1_gfn += (gpa >> PAGE_SHIFT) - base
        slot, hpa = self.host.l0.compose(l1_gfn)
        if slot is None:
            return None
        writable = writable and not slot.readonly
        if access == "write" and not writable:
            return None
        return Composition(hpa + (gpa & 0xfff), {"r": True, "w": writable, "x": True},
                           l1_gfn)

    #: L1 keeps no tables: its XArray is its memslot view.
    composed_by_memslots = composed

    def leaves(self):
        vm = self.vm
        return [(gfn, level, word) for root in vm.roots if not root.invalid
                for gfn, level, word, _ in vm.walk_present(root)
                if vm.fmt.tdp_is_last_spte(word, level)]

    def check(self):
        """The TDP core's invariants on the guest MMU (shared memory); the leaves."""
        check_vm(self.vm, exclusive_memory=False)
        return self.leaves()
