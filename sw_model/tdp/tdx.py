"""Confidential VMs (TDX-style TDs): memory attributes and the external page tables.

A TD splits its GPA space by a shared bit. Shared GPAs go through the ordinary
("direct") root, which the TDP core edits as for any VM. Private GPAs go, in hardware,
through an *external* table (TDX's secure EPT) that only the TDX module may write; the
TDP core keeps a *mirror* of it, edits the mirror like any other root, and propagates
every change through the module's calls (KVM's ``set_external_spte``,
``link_external_spt``, ``remove_external_spte``, ``free_external_spt``; see
arch/x86/kvm/mmu/tdp_mmu.c and arch/x86/kvm/vmx/tdx.c).

:class:`ExternalPageTableManager` stands for the TDX module: it owns its pages in
HostMemory (model code that writes them without the owner token gets a
:class:`~sw_model.memory.PageOwnershipError`), exposes only SEAMCALL-like calls, enforces
their ordering rules with :class:`ExternalTableError`, and counts calls and cost.
:class:`MemoryAttributes` is KVM_SET_MEMORY_ATTRIBUTES' private/shared state per GFN.
"""

import bisect
from collections import Counter

from ..walker import translate
from .iter import PAGE_SHIFT

__all__ = ["ExternalPageTableManager", "ExternalTableError", "MemoryAttributes", "TdxState",
           "CALL_COSTS"]

#: Nominal cost of each call, in SEAMCALL round trips (not a measurement): a call that
#: touches a page (clears, converts or flushes it) costs more, TRACK also kicks every
#: vCPU out of the TD so that the TLBs are flushed at the next entry.
CALL_COSTS = {"add_table": 2, "add_leaf": 2, "block": 1, "unblock": 1, "track": 3,
              "remove": 3, "free_table": 2, "split": 4}


class ExternalTableError(RuntimeError):
    """A call broke a rule of the external tables (the TDX module returns an error
    such as TDX_EPT_WALK_FAILED or TDX_TLB_TRACKING_NOT_DONE; KVM treats it as a bug)."""


class MemoryAttributes:
    """Private or shared, per GFN (KVM_SET_MEMORY_ATTRIBUTES). Everything starts
    private, as a TD's memory does; the shared ranges are kept as sorted, disjoint,
    merged half-open intervals.

    Members
    -------
    shared_ranges : list of (int, int)
    """

    def __init__(self):
        self.shared_ranges = []

    def set_range(self, start, end, private):
        """Make ``[start, end)`` private or shared."""
        out = []
        for lo, hi in self.shared_ranges:
            if hi <= start or lo >= end:
                out.append((lo, hi))
                continue
            if lo < start:
                out.append((lo, start))
            if hi > end:
                out.append((end, hi))
        if not private:
            out.append((start, end))
        out.sort()
        merged = []
        for lo, hi in out:
            if merged and merged[-1][1] >= lo:
                merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
            else:
                merged.append((lo, hi))
        self.shared_ranges = merged

    def _covering(self, gfn):
        index = bisect.bisect_right(self.shared_ranges, (gfn, float("inf"))) - 1
        if index >= 0 and self.shared_ranges[index][1] > gfn:
            return index
        return None

    def is_private(self, gfn):
        return self._covering(gfn) is None

    def uniform(self, start, end):
        """True if ``[start, end)`` is all private, False if all shared, None if mixed
        (a huge page may map only a uniform range: KVM's ``hugepage_has_attrs``)."""
        index = self._covering(start)
        if index is not None:
            return False if self.shared_ranges[index][1] >= end else None
        after = bisect.bisect_right(self.shared_ranges, (start, float("inf")))
        if after < len(self.shared_ranges) and self.shared_ranges[after][0] < end:
            return None
        return True


class ExternalPageTableManager:
    """The TDX module's side of a TD's private memory: the external tables.

    Addresses are ``(gfn, level)`` as in the SEAMCALLs (GPA and level of an entry);
    ``level`` is KVM-style (1 maps 4 KiB). Each call checks its rules and raises
    :class:`ExternalTableError` naming the call, the GPA, the level and the rule:

    - ``add_table`` (TDH.MEM.SEPT.ADD), ``add_leaf`` (TDH.MEM.PAGE.AUG): the walk to the
      entry must reach it through present tables and the entry must be free.
    - ``block`` (TDH.MEM.RANGE.BLOCK): a present entry becomes non-present to the CPU.
    - ``unblock`` (TDH.MEM.RANGE.UNBLOCK): undoes a block (a failed split).
    - ``track`` (TDH.MEM.TRACK): starts a new TLB epoch and kicks the vCPUs (``kick``).
    - ``remove`` (TDH.MEM.PAGE.REMOVE), ``split`` (TDH.MEM.PAGE.DEMOTE, from the TDX
      huge-page series), ``free_table`` (TDH.MEM.SEPT.REMOVE): the entry must be
      blocked and a track done since; ``free_table`` also needs an empty table.
    - after :meth:`release_hkid` (TD teardown: no vCPU runs any more) ``remove`` and
      ``free_table`` reclaim pages without block and track (TDH.PHYMEM.PAGE.RECLAIM),
      and nothing can be added.

    Private leaves are written readable, writable and executable with A and D already
    set: the module owns secure-EPT A/D bits, so the CPU (the RTL walker) never writes
    external-table memory.

    Parameters
    ----------
    mem : HostMemory
    fmt : PageTableFormat
    opts : VmOptions
    kick : callable, optional
        Called by ``track``: the TD's vCPUs leave the TD and their private translations
        are flushed (the VM sends a private-space flush).

    Members
    -------
    calls : collections.Counter
        Call name -> count.
    cost : int
        Sum of :data:`CALL_COSTS` over the calls made.
    root : int or None
        HPA of the external root once allocated (:meth:`ensure_root`).
    epoch : int
        TLB-tracking epoch, incremented by ``track``.
    hkid_assigned : bool
        False after :meth:`release_hkid`.
    """

    def __init__(self, mem, fmt, opts, *, kick=None):
        self.mem = mem
        self.fmt = fmt
        self.opts = opts
        self.kick = kick
        self.calls = Counter()
        self.cost = 0
        self.root = None
        self.epoch = 0
        self.hkid_assigned = True
        self._tables = {}        # hpa -> (gfn, level): every external table, root included
        self._blocked = {}       # entry address -> (epoch at block, word before block)

    def __repr__(self):
        return f"<external tables root={self.root if self.root is None else hex(self.root)}>"

    # -- bookkeeping -------------------------------------------------------------------

    @property
    def pages(self):
        """Pages of HostMemory the manager holds (root included)."""
        return sum(self._table_bytes(level) for _, level in self._tables.values()) >> PAGE_SHIFT

    def _table_bytes(self, level):
        return self.fmt.root_table_bytes if level == self.fmt.root_level \
            else self.fmt.table_bytes(level)

    def _count(self, name):
        self.calls[name] += 1
        self.cost += CALL_COSTS[name]

    def _fail(self, call, gfn, level, rule):
        raise ExternalTableError(f"{call}(gpa={gfn << PAGE_SHIFT:#x}, level={level}): {rule}")

    def _write(self, addr, word):
        self.mem.write64(addr, word, owner=self)

    def ensure_root(self):
        """Allocate the external root (TD creation) if not done; return its HPA."""
        if self.root is None:
            if not self.hkid_assigned:
                raise ExternalTableError("ensure_root: the TD is torn down")
            nbytes = self.fmt.root_table_bytes
            self.root = self.mem.alloc_table(nbytes, owner=self)
            self._tables[self.root] = (0, self.fmt.root_level)
        return self.root

    def _leaf_word(self, hpa, level):
        return self.fmt.tdp_make_spte(hpa, level, self.opts, writable=True, executable=True,
                                      host_writable=True, accessed=True, dirty=True)

    def _set_accessed(self, gfn):
        """Set A (and D) on every entry the CPU uses to reach the page at ``gfn``, by
        the walker's own rule: the module owns secure-EPT A/D, the CPU never writes
        them."""
        result = translate(self.mem, self.fmt, self.root, gfn << PAGE_SHIFT, "write",
                           vm=self.opts, ad_update=False)
        for addr, old, new in getattr(result, "ad_writes", ()):
            self.mem.cmpxchg64(addr, old, new, owner=self)

    def _walk(self, call, gfn, level):
        """The address of the entry at ``level`` for ``gfn``: every entry above it must
        be a present, unblocked table."""
        fmt = self.fmt
        if self.root is None:
            self._fail(call, gfn, level, "the TD has no external root")
        if not 1 <= level <= fmt.root_level:
            self._fail(call, gfn, level, f"level must be in [1, {fmt.root_level}]")
        gpa = gfn << PAGE_SHIFT
        table = self.root
        for above in range(fmt.root_level, level, -1):
            addr = fmt.entry_addr(table, gpa, above)
            if addr in self._blocked:
                self._fail(call, gfn, level, f"the level-{above} entry on the way is blocked")
            word = self.mem.read64(addr)
            child = fmt.tdp_child_table(word, above)
            if child is None:
                what = "maps a huge page" if fmt.tdp_is_shadow_present(word) else "is not present"
                self._fail(call, gfn, level, f"the level-{above} entry on the way {what} "
                                             f"(no level-{above - 1} table: add_table first)")
            table = child
        return fmt.entry_addr(table, gpa, level)

    def _check_aligned(self, call, gfn, level):
        if gfn & ((self.fmt.page_size(level) >> PAGE_SHIFT) - 1):
            self._fail(call, gfn, level, "the GPA is not aligned to the level's page size")

    def _check_live(self, call, gfn, level):
        if not self.hkid_assigned:
            self._fail(call, gfn, level, "the TD is torn down (its HKID was released)")

    def _check_tracked(self, call, gfn, level, addr):
        if addr not in self._blocked:
            self._fail(call, gfn, level, "the entry is not blocked (block it first)")
        if self._blocked[addr][0] >= self.epoch:
            self._fail(call, gfn, level, "no track since the entry was blocked "
                                         "(TLB tracking not done)")

    # -- calls -------------------------------------------------------------------------

    def add_table(self, gfn, level):
        """TDH.MEM.SEPT.ADD: link a new table whose entries are at ``level`` under
        the free entry at ``level + 1``. Returns the table's HPA."""
        self._check_live("add_table", gfn, level)
        if not 1 <= level < self.fmt.root_level:
            self._fail("add_table", gfn, level, f"a table level must be in [1, {self.fmt.root_level - 1}]")
        addr = self._walk("add_table", gfn, level + 1)
        if addr in self._blocked or self.mem.read64(addr):
            self._fail("add_table", gfn, level, "the linking entry is not free")
        nbytes = self.fmt.table_bytes(level)
        hpa = self.mem.alloc_table(nbytes, owner=self)
        span = self.fmt.page_size(level + 1) >> PAGE_SHIFT
        self._tables[hpa] = (gfn & ~(span - 1), level)
        self._write(addr, self.fmt.tdp_make_nonleaf(hpa, self.opts))
        self._count("add_table")
        return hpa

    def add_leaf(self, gfn, level, hpa):
        """TDH.MEM.PAGE.AUG: map the private page at ``hpa`` (4K or 2M) at a free entry."""
        self._check_live("add_leaf", gfn, level)
        if level not in (1, 2):
            self._fail("add_leaf", gfn, level, "private pages are 4K or 2M")
        self._check_aligned("add_leaf", gfn, level)
        if hpa % self.fmt.page_size(level):
            self._fail("add_leaf", gfn, level, f"hpa {hpa:#x} is not aligned to the page size")
        addr = self._walk("add_leaf", gfn, level)
        if addr in self._blocked or self.mem.read64(addr):
            self._fail("add_leaf", gfn, level, "the entry is not free")
        self._write(addr, self._leaf_word(hpa, level))
        self._set_accessed(gfn)
        self._count("add_leaf")

    def block(self, gfn, level):
        """TDH.MEM.RANGE.BLOCK: make a present entry (leaf or table) non-present to
        the CPU; it stays reserved for ``remove``/``split``/``free_table``."""
        self._check_live("block", gfn, level)
        addr = self._walk("block", gfn, level)
        if addr in self._blocked:
            self._fail("block", gfn, level, "the entry is already blocked")
        word = self.mem.read64(addr)
        if not self.fmt.tdp_is_shadow_present(word):
            self._fail("block", gfn, level, "the entry is not present")
        self._blocked[addr] = (self.epoch, word)
        self._write(addr, 0)
        self._count("block")

    def unblock(self, gfn, level):
        """TDH.MEM.RANGE.UNBLOCK: make a blocked entry present again, unchanged."""
        self._check_live("unblock", gfn, level)
        addr = self._walk("unblock", gfn, level)
        if addr not in self._blocked:
            self._fail("unblock", gfn, level, "the entry is not blocked")
        self._write(addr, self._blocked.pop(addr)[1])
        self._count("unblock")

    def track(self):
        """TDH.MEM.TRACK: start a new TLB epoch, then kick the vCPUs (their private
        translations are flushed before they run again)."""
        if not self.hkid_assigned:
            raise ExternalTableError("track: the TD is torn down (its HKID was released)")
        self.epoch += 1
        self._count("track")
        if self.kick is not None:
            self.kick()

    def remove(self, gfn, level, hpa):
        """TDH.MEM.PAGE.REMOVE: unmap the blocked private page ``hpa`` (tracked since
        the block). After :meth:`release_hkid`, a reclaim: no block or track needed."""
        addr = self._walk("remove", gfn, level)
        if self.hkid_assigned:
            self._check_tracked("remove", gfn, level, addr)
            word = self._blocked[addr][1]
        else:
            word = self._blocked[addr][1] if addr in self._blocked else self.mem.read64(addr)
        fmt = self.fmt
        if not fmt.tdp_is_shadow_present(word) or not fmt.tdp_is_last_spte(word, level):
            self._fail("remove", gfn, level, "the entry does not map a page")
        if fmt.tdp_spte_frame(word, level) != hpa:
            self._fail("remove", gfn, level, f"the entry maps {fmt.tdp_spte_frame(word, level):#x}, "
                                             f"not {hpa:#x}")
        self._blocked.pop(addr, None)
        self._write(addr, 0)
        self._count("remove")

    def split(self, gfn, level):
        """TDH.MEM.PAGE.DEMOTE: replace the blocked, tracked 2M leaf with a new table of
        4K leaves mapping the same frames. Returns the table's HPA."""
        self._check_live("split", gfn, level)
        if level != 2:
            self._fail("split", gfn, level, "only 2M private pages split")
        addr = self._walk("split", gfn, level)
        self._check_tracked("split", gfn, level, addr)
        fmt = self.fmt
        word = self._blocked[addr][1]
        if not fmt.tdp_is_last_spte(word, level):
            self._fail("split", gfn, level, "the entry is a table, not a huge page")
        frame = fmt.tdp_spte_frame(word, level)
        nbytes = fmt.table_bytes(level - 1)
        hpa = self.mem.alloc_table(nbytes, owner=self)
        self._tables[hpa] = (gfn & ~((fmt.page_size(level) >> PAGE_SHIFT) - 1), level - 1)
        words = self.mem.read_page(hpa, nbytes, owner=self)
        step = fmt.page_size(level - 1)
        for index in range(len(words)):
            words[index] = self._leaf_word(frame + index * step, level - 1)
        del self._blocked[addr]
        self._write(addr, fmt.tdp_make_nonleaf(hpa, self.opts))
        self._set_accessed(gfn)
        self._count("split")
        return hpa

    def free_table(self, gfn, level):
        """TDH.MEM.SEPT.REMOVE: unlink and free the empty table whose entries are at
        ``level``; its linking entry must be blocked and tracked (live TD)."""
        fmt = self.fmt
        if not 1 <= level < fmt.root_level:
            self._fail("free_table", gfn, level, f"a table level must be in [1, {fmt.root_level - 1}]")
        addr = self._walk("free_table", gfn, level + 1)
        if self.hkid_assigned:
            self._check_tracked("free_table", gfn, level, addr)
            word = self._blocked[addr][1]
        else:
            word = self._blocked[addr][1] if addr in self._blocked else self.mem.read64(addr)
        table = fmt.tdp_child_table(word, level + 1)
        if table is None:
            self._fail("free_table", gfn, level, "the linking entry does not name a table")
        self._check_empty("free_table", gfn, level, table)
        self._blocked.pop(addr, None)
        self._write(addr, 0)
        self._release(table)
        self._count("free_table")

    def _check_empty(self, call, gfn, level, table):
        nbytes = self._table_bytes(level)
        used = int((self.mem.read_page(table, nbytes) != 0).sum()) \
            + sum(table <= a < table + nbytes for a in self._blocked)
        if used:
            self._fail(call, gfn, level, f"the table at {table:#x} still has {used} entries")

    def _release(self, table):
        _, level = self._tables.pop(table)
        self.mem.free_table(table, self._table_bytes(level))

    def release_hkid(self):
        """TD teardown (TDH.MNG.VPFLUSHDONE, TDH.MNG.KEY.FREEID): no vCPU runs any
        more, so pages are reclaimed without block and track, and nothing is added."""
        self.hkid_assigned = False

    def free_root(self):
        """Free the (empty) external root after teardown."""
        if self.hkid_assigned:
            raise ExternalTableError("free_root: the TD is live (release_hkid first)")
        if self.root is not None:
            self._check_empty("free_root", 0, self.fmt.root_level, self.root)
            self._release(self.root)
            self.root = None

    # -- introspection (what a debugger of the module would show) --------------------

    def leaves(self):
        """``{(gfn, level): frame}`` of every present leaf."""
        fmt = self.fmt
        out = {}
        for table, (gfn, level) in self._tables.items():
            words = self.mem.read_page(table, self._table_bytes(level))
            step = fmt.page_size(level) >> PAGE_SHIFT
            for index in fmt.tdp_present_mask(words).nonzero()[0]:
                word = int(words[index])
                if fmt.tdp_is_last_spte(word, level):
                    out[(gfn + int(index) * step, level)] = fmt.tdp_spte_frame(word, level)
        return out

    def tables(self):
        """``{(gfn, level)}`` of every table below the root."""
        return {key for key in self._tables.values() if key[1] != self.fmt.root_level}

    @property
    def blocked(self):
        """Number of entries blocked and not yet removed, split or freed."""
        return len(self._blocked)


class TdxState:
    """A TD's state in the VM (``vm.tdx``).

    Members
    -------
    shared_bit : int
        GPA bit that selects shared memory.
    shared_gfn_bit : int
        The same bit in a GFN (``1 << (shared_bit - 12)``).
    external : ExternalPageTableManager
    attributes : MemoryAttributes
    private_hpa : dict
        ``(as_id, slot_id) -> hpa`` of the first private frame of each memslot
        (guest_memfd backing: different host frames from the shared ones).
    """

    def __init__(self, shared_bit, external):
        self.shared_bit = shared_bit
        self.shared_gfn_bit = 1 << (shared_bit - PAGE_SHIFT)
        self.external = external
        self.attributes = MemoryAttributes()
        self.private_hpa = {}

    def private_frame(self, slot, gfn):
        """The private host frame of ``gfn`` in ``slot``."""
        return self.private_hpa[(slot.as_id, slot.slot_id)] + ((gfn - slot.base_gfn) << PAGE_SHIFT)
