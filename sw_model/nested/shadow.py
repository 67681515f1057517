"""Shadow TDP: L0 builds L2 GPA → HPA tables from L1's TDP tables and its own mapping.

Modelled on KVM's shadow MMU for nested EPT/NPT (arch/x86/kvm/mmu/mmu.c,
paging_tmpl.h): a fault walks L1's tables (``FNAME(walk_addr)``, setting A/D there as
the CPU would), then links one shadow page per L1 table on the way down
(``kvm_mmu_get_child_sp``), write-protecting each shadowed L1 table page
(``account_shadowed``). A write by L1 to a protected page is an exit; L0 zaps the
shadow entry the write covers and flushes (``kvm_mmu_track_write``), and zaps a shadow
page written ``flood_limit`` times in a row without being used
(``detect_write_flooding``), which stops the protection. Below an L1 huge page that L0
maps smaller, "direct" shadow pages split it (``FNAME(fetch)``). L1's INVEPT is an exit
that flushes the L2 context: the shadow is never out of sync (no unsync pages).

Exits are detected by comparing L1's table memory with L0's last view of it after
every L1 operation: each changed word in a protected page is one exit, handled top-down
(a write that unlinks a table comes before the writes that free it).
"""

from dataclasses import dataclass

import numpy as np

from ..formats import check_access
from ..memory import PAGE_SIZE, HostMemory
from ..tdp import FlushSink, PfResult, Vm
from ..walker import translate
from .common import PAGE_SHIFT, Costs, CountingSink

__all__ = ["L1Tdp", "ShadowNested", "ShadowPage"]


@dataclass(eq=False)
class ShadowPage:
    """One shadow table (KVM's ``struct kvm_mmu_page`` of the shadow MMU).

    Members
    -------
    hpa, nbytes, level : int
    gfn : int
        First L2 GFN it maps.
    l1_table : int or None
        L1 GPA of the L1 table it shadows; None for a direct page under an L1 huge page.
    parent : tuple or None
        ``(ShadowPage, index)`` of the entry that links it (None for the root).
    flooding : int
        Writes to the shadowed L1 table since the page was last used by a fault.
    """
    hpa: int
    nbytes: int
    level: int
    gfn: int
    l1_table: int = None
    parent: tuple = None
    flooding: int = 0


class L1Tdp:
    """L1: a hypervisor on the TDP core whose tables for L2 live in L1 memory.

    Parameters
    ----------
    fmt_name, ad : str
    table_base, table_bytes : int
        Where L1 keeps its table pages: L1 GPAs ``[table_base, table_base +
        table_bytes)`` (a :class:`HostMemory` whose addresses are L1 GPAs).

    Members
    -------
    vm : sw_model.tdp.Vm
        L1's TDP MMU for L2 (memslots: L2 GFN → L1 GPA).
    mem : HostMemory
    """

    def __init__(self, fmt_name, *, ad=None, table_base, table_bytes=2 << 20):
        self.mem = HostMemory(table_bytes, base=table_base)
        self.vm = Vm(fmt_name, self.mem, ad=ad, trace=False)


class _InveptSink(FlushSink):
    """L1's TLB flushes: each is an INVEPT (or INVLPGA / HFENCE.GVMA) exit to L0."""
    supports_ranges = False

    def __init__(self, nested):
        self.nested = nested

    def flush_all(self, *, space="both"):
        self.nested._invept()


class ShadowNested:
    """L0's shadow TDP for one L2, with L1 on the TDP core.

    Parameters
    ----------
    l0 : L0Host
    l1 : L1Tdp
    memory : HostMemory
        Host memory for the shadow tables (shared with the RTL in co-simulation).
    sink : FlushSink, optional
        L0's invalidations of the L2 context (the RTL's, in co-simulation).
    flood_limit : int
        KVM's write-flooding threshold (3).

    Members
    -------
    name : str
        ``"shadow"``.
    fmt, opts, mem
        What the hardware walks: the format, options and memory of the shadow tables.
    costs : Costs
    """
    name = "shadow"

    def __init__(self, l0, l1, memory, *, sink=None, flood_limit=3):
        self.l0, self.l1, self.mem = l0, l1, memory
        self.fmt, self.opts = l1.vm.fmt, l1.vm.opts
        if l0.fmt.arch != self.fmt.arch:
            raise ValueError(f"l1: format {self.fmt.name} is not of L0's architecture "
                             f"{l0.fmt.arch}")
        self.costs = Costs()
        self.sink = CountingSink(self.costs, sink)
        if not isinstance(flood_limit, int) or flood_limit < 1:
            raise ValueError(f"flood_limit must be a positive integer, got {flood_limit!r}")
        self.flood_limit = flood_limit
        self.costs.l1_table_pages = lambda: l1.vm.stats()["table_pages"] + len(l1.vm.roots) \
            * (self.fmt.root_table_bytes // PAGE_SIZE - 1)
        self._sps = {}                  # hpa -> ShadowPage
        self._by_l1 = {}                # L1 table GPA -> ShadowPage
        self._page_sp = {}              # protected L1 GFN -> ShadowPage
        self._known = l1.mem.words.copy()
        self._pending = []
        self._root = None
        l1.vm.sink = _InveptSink(self)

    # -- what the hardware walks ---------------------------------------------------

    def root_for(self, as_id=0):
        """The shadow root for L1's current root (vmcs12's EPTP)."""
        self._load_root()
        return self._root.hpa

    def _load_root(self):
        l1_root = self.l1.vm.root_for(0)
        self._sync()
        if self._root is not None and self._root.l1_table == l1_root:
            return
        with self.sink:
            if self._root is not None:
                self._free_tree(self._root)
                self.sink.flush_all()
            self._root = self._new_sp(self.fmt.root_level, 0, l1_root, None)
        self._free_pending()

    # -- shadow pages ----------------------------------------------------------------

    def _pages_at(self, level):
        return self.fmt.page_size(level) >> PAGE_SHIFT

    def _new_sp(self, level, gfn, l1_table, parent):
        nbytes = self.fmt.table_bytes(level)
        sp = ShadowPage(self.mem.alloc_table(nbytes), nbytes, level, gfn, l1_table, parent)
        self._sps[sp.hpa] = sp
        self.costs.pages(nbytes // PAGE_SIZE)
        if l1_table is not None:
            self._by_l1[l1_table] = sp
            for page in range(l1_table >> PAGE_SHIFT, (l1_table + nbytes) >> PAGE_SHIFT):
                self._page_sp[page] = sp
                self.l0.write_track(page, True)
        return sp

    def _free_tree(self, sp):
        """Unlink every child (one write per present entry, as
        ``kvm_mmu_page_unlink_children``) and queue the pages to be freed."""
        fmt = self.fmt
        words = self.mem.read_page(sp.hpa, sp.nbytes)
        present = fmt.tdp_present_mask(words).nonzero()[0]
        self.costs.counts["table_writes"] += len(present)
        for index in present:
            child = fmt.tdp_child_table(int(words[index]), sp.level)
            if child is not None:
                self._free_tree(self._sps[child])
        words[:] = 0
        del self._sps[sp.hpa]
        if sp.l1_table is not None:
            del self._by_l1[sp.l1_table]
            for page in range(sp.l1_table >> PAGE_SHIFT, (sp.l1_table + sp.nbytes) >> PAGE_SHIFT):
                del self._page_sp[page]
                self.l0.write_track(page, False)
        self.costs.pages(-(sp.nbytes // PAGE_SIZE))
        self._pending.append(sp)

    def _free_pending(self):
        """Free unlinked pages once their flush has been issued (the RCU grace period:
        the TB drives the invalidations before the next model step)."""
        for sp in self._pending:
            self.mem.free_table(sp.hpa, sp.nbytes)
        self._pending.clear()

    def _zap_entry(self, sp, index):
        """Zap one shadow entry (``mmu_page_zap_pte``), flushing its range."""
        addr = sp.hpa + 8 * index
        old = self.mem.read64(addr)
        if not self.fmt.tdp_is_shadow_present(old):
            return False
        self.mem.write64(addr, 0)
        self.costs.counts["table_writes"] += 1
        child = self.fmt.tdp_child_table(old, sp.level)
        if child is not None:
            self._free_tree(self._sps[child])
        span = self._pages_at(sp.level)
        self.sink.flush_range(sp.gfn + index * span, span)
        return True

    def _unlink(self, sp):
        parent, index = sp.parent
        self._zap_entry(parent, index)

    # -- L1's writes to its tables (write-protection exits) --------------------------

    def _sync(self):
        """Handle every L1 write to its table memory since the last call: one exit per
        changed word of a write-protected page."""
        words = self.l1.mem.words
        changed = np.flatnonzero(words != self._known)
        if not len(changed):
            return
        base = self.l1.mem.base >> PAGE_SHIFT
        pages = changed // (PAGE_SIZE // 8)
        order = []
        for page in np.unique(pages):
            sp = self._page_sp.get(base + int(page))
            if sp is not None:
                order.append((-sp.level, int(page)))
        for _, page in sorted(order):
            for index in changed[pages == page]:
                sp = self._page_sp.get(base + page)
                if sp is None:          # unprotected meanwhile (zapped above)
                    break
                self.costs.counts["wp_exits"] += 1
                entry = (self.l1.mem.base + 8 * int(index) - sp.l1_table) // 8
                with self.sink:
                    self._zap_entry(sp, entry)
                    sp.flooding += 1
                    if sp.flooding >= self.flood_limit and sp.parent is not None:
                        self._unlink(sp)
                self._free_pending()
        self._known[changed] = words[changed]
        self.costs.counts["l1_table_writes"] += len(changed)

    def _invept(self):
        self.costs.counts["invept_exits"] += 1
        self._sync()
        self.sink.flush_all()
        self._free_pending()

    # -- L2 faults ---------------------------------------------------------------------

    def handle_l2_fault(self, gpa, access):
        """An L2 stage-2 fault on the shadow tables (an exit to L0): walk L1's tables;
        reflect the fault to L1 if they fault, else build the shadow entry."""
        check_access(access)
        self.costs.counts["l2_faults"] += 1
        self._load_root()
        fmt, l1mem = self.fmt, self.l1.mem
        gw = translate(l1mem, fmt, self._root.l1_table, gpa, access, vm=self.opts)
        for addr in gw.pte_addrs:       # A/D bits L0 set in L1's tables: not exits
            if l1mem.contains(addr):
                self._known[(addr - l1mem.base) // 8] = l1mem.read64(addr)
        if not gw.ok:
            return self._reflect(gpa, access)
        l1_gfn = gw.hpa >> PAGE_SHIFT
        slot, _ = self.l0.compose(l1_gfn)
        if slot is None or (access == "write" and slot.readonly):
            return PfResult.EMULATE      # L1 gave L2 something that is not L1 RAM
        leaf = fmt.decode(l1mem.read64(gw.pte_addrs[-1]), gw.level)
        level = min(gw.level, self.l0.max_level(l1_gfn))
        npages = self._pages_at(level)
        frame = slot.gfn_to_hpa(l1_gfn & ~(npages - 1))
        writable = (gw.perms["w"] and not slot.readonly
                    and (leaf.d or not fmt.tdp_ad_enabled(self.opts))
                    and l1_gfn not in self._page_sp)  # L2 never writes L1's tables
        with self.sink:
            result = self._fetch(gpa, access, gw, level, frame, writable, gw.perms["x"])
        self._free_pending()
        return result

    def _reflect(self, gpa, access):
        """Deliver the fault to L1 (an EPT violation in vmcs12); L1's handler edits its
        tables, and the writes to protected pages exit to L0."""
        self.costs.counts["reflected"] += 1
        result = self.l1.vm.handle_fault(gpa, access)
        self._after_l1()
        if result is PfResult.NOMEM:
            raise MemoryError("L1 ran out of table pages")
        return result

    def _fetch(self, gpa, access, gw, target, frame, writable, executable):
        """KVM's ``FNAME(fetch)``: link shadow pages down to ``target`` and set the leaf."""
        fmt, mem = self.fmt, self.mem
        sp, level, changed = self._root, fmt.root_level, False
        while True:
            sp.flooding = 0
            index = fmt.index(gpa, level)
            sptep = sp.hpa + 8 * index
            old = mem.read64(sptep)
            span = self._pages_at(level)
            gfn = sp.gfn + index * span
            if level == target:
                return self._set_leaf(sp, index, old, access, frame, writable, executable,
                                      changed)
            child = fmt.tdp_child_table(old, level)
            if child is not None:
                sp, level = self._sps[child], level - 1
                continue
            if fmt.tdp_is_shadow_present(old):      # a huge leaf where a table goes now
                self._zap_entry(sp, index)
            l1_table = None
            if level - 1 >= gw.level:
                addr = gw.pte_addrs[fmt.root_level - (level - 1)]
                l1_table = addr & ~(fmt.table_bytes(level - 1) - 1)
                stale = self._by_l1.get(l1_table)
                if stale is not None:               # L1 moved a table: drop the old one
                    self._unlink(stale)
            child_sp = self._new_sp(level - 1, gfn, l1_table, (sp, index))
            mem.write64(sptep, fmt.tdp_make_nonleaf(child_sp.hpa, self.opts))
            self.costs.counts["table_writes"] += 1
            changed = True
            sp, level = child_sp, level - 1

    def _set_leaf(self, sp, index, old, access, frame, writable, executable, changed):
        fmt, level = self.fmt, sp.level
        span = self._pages_at(level)
        if fmt.tdp_is_shadow_present(old) and fmt.tdp_is_last_spte(old, level) \
                and fmt.tdp_spte_frame(old, level) == frame \
                and fmt.tdp_access_allowed(old, level, access, self.opts):
            return PfResult.FIXED if changed else PfResult.SPURIOUS
        new = fmt.tdp_make_spte(frame, level, self.opts, writable=writable,
                                executable=executable, host_writable=True, accessed=True,
                                dirty=writable)
        child = fmt.tdp_child_table(old, level)
        if child is not None:
            self._free_tree(self._sps[child])
        self.mem.write64(sp.hpa + 8 * index, new)
        self.costs.counts["table_writes"] += 1
        if child is not None:
            self.sink.flush_range(sp.gfn + index * span, span)
        elif fmt.tdp_is_shadow_present(old):
            was, now = fmt.decode(old, level), fmt.decode(new, level)
            if was.frame != now.frame or any(getattr(was, k) and not getattr(now, k)
                                             for k in "rwx"):
                self.sink.flush_range(sp.gfn + index * span, span)
        return PfResult.FIXED

    # -- L1 operations (L1 runs them on its own TDP core) ------------------------------

    def _after_l1(self):
        self._sync()
        self._load_root()
        self._free_pending()

    def add_slot(self, slot):
        self.l1.vm.add_memslot(slot.slot_id, slot.base_gfn, slot.npages,
                               slot.l1_gfn << PAGE_SHIFT, readonly=slot.readonly)
        self._after_l1()

    def delete_slot(self, slot_id):
        self.l1.vm.delete_memslot(slot_id)
        self._after_l1()

    def zap(self, start, end):
        self.l1.vm.zap_gfn_range(start, end)
        self._after_l1()

    def zap_all(self):
        self.l1.vm.zap_all_fast()
        self._after_l1()

    def age(self, start, end):
        young = self.l1.vm.age_gfn_range(start, end)
        self._after_l1()
        return young

    def test_age(self, start, end):
        return self.l1.vm.test_age_gfn(start, end)

    def dirty_logging(self, slot_id, enable):
        self.l1.vm.set_dirty_logging(slot_id, enable)
        self._after_l1()

    def get_dirty(self, slot_id):
        bitmap = self.l1.vm.get_dirty_log(slot_id)
        self._after_l1()
        return set(self.l1.vm.memslot(slot_id).dirty_gfns(bitmap))

    def flush(self):
        self.l1.vm.flush_remote_tlbs()
        self._after_l1()

    # -- checks --------------------------------------------------------------------

    def composed(self, gpa, access):
        """L1's tables then L0's memslots: ``(hpa, perms)`` or None where it faults."""
        l1mem = self.l1.mem
        t = translate(l1mem, self.fmt, self.l1.vm.root_for(0), gpa, access, vm=self.opts,
                      ad_update=False)
        if not t.ok:
            return None
        slot, hpa = self.l0.compose(t.hpa >> PAGE_SHIFT)
        if slot is None or (access == "write" and slot.readonly):
            return None
        perms = dict(t.perms, w=t.perms["w"] and not slot.readonly)
        return hpa + (gpa & (PAGE_SIZE - 1)), perms

    def leaves(self):
        """``(gfn, level, word)`` of every present shadow leaf."""
        fmt, out = self.fmt, []
        stack = [self._root] if self._root is not None else []
        while stack:
            sp = stack.pop()
            words = self.mem.read_page(sp.hpa, sp.nbytes)
            span = self._pages_at(sp.level)
            for index in fmt.tdp_present_mask(words).nonzero()[0]:
                word = int(words[index])
                child = fmt.tdp_child_table(word, sp.level)
                if child is None:
                    out.append((sp.gfn + int(index) * span, sp.level, word))
                else:
                    stack.append(self._sps[child])
        return out

    def check(self):
        """Raise AssertionError unless the books match the tables and L1's protected
        pages are exactly the shadowed ones."""
        assert self._known.tobytes() == self.l1.mem.words.tobytes(), "unsynced L1 writes"
        pages = sum(sp.nbytes for sp in self._sps.values()) // PAGE_SIZE
        assert pages == self.costs.table_pages, f"{pages} shadow pages, books say " \
            f"{self.costs.table_pages}"
        for sp in self._sps.values():
            if sp.parent is not None:
                parent, index = sp.parent
                word = self.mem.read64(parent.hpa + 8 * index)
                assert self.fmt.tdp_child_table(word, parent.level) == sp.hpa, \
                    f"shadow page {sp.hpa:#x} is not linked from its parent"
        return self.leaves()
