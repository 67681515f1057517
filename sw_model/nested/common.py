"""What both nested designs share: L0's view of L1 memory, cost counters, flush
counting, and the L2 memory map that L1 manages."""

from collections import Counter
from dataclasses import dataclass
from typing import NamedTuple

from ..formats import get_format
from ..tdp import FlushSink, PfResult, Vm

__all__ = ["L0Host", "Costs", "CountingSink", "L2Slot", "Composition", "PAGE_SHIFT"]

PAGE_SHIFT = 12


class Costs:
    """Structural costs of one design, as counters.

    Members
    -------
    counts : collections.Counter
        ``table_writes`` (entries written in L0-built tables), ``l1_table_writes``
        (words L1 changed in its own tables, shadow TDP), ``tlb_flushes`` (L0's
        invalidations of the L2 context), ``l2_faults`` (L2 exits to L0),
        ``reflected`` (of those, delivered to L1), ``hc_<name>`` (KPOP hypercalls);
        shadow TDP: ``wp_exits`` (L1 writes to its protected tables that exit),
        ``invept_exits``, ``unsync`` (last-level shadow pages let go out of sync),
        ``resyncs`` and ``resync_zapped`` (pages resynced at INVEPT and entries
        dropped then), ``l0_faults`` (L2 faults L0 maps after walking L1's tables),
        ``fast_faults`` (L2 write faults fixed without walking them: W restored on a
        leaf write-protected for L0's dirty log), ``l1_faults`` (L1's own faults on
        L0's tables for it, outside its protected tables), ``l0_log_protected``
        (shadow leaves write-protected for L0's dirty log), ``l0_collapsed`` (leaves
        zapped when it stops), ``zapped_oldest`` (shadow pages zapped for the budget).
    table_pages, table_pages_peak : int
        4 KiB pages of L0-built tables for L2, now and at most.
    l1_table_pages : callable
        4 KiB pages of L1's own tables for L2 (shadow TDP; none under KPOP).
    """

    def __init__(self):
        self.counts = Counter()
        self.table_pages = self.table_pages_peak = 0
        self.l1_table_pages = lambda: 0

    def pages(self, delta):
        self.table_pages += delta
        self.table_pages_peak = max(self.table_pages_peak, self.table_pages)

    @property
    def exits(self):
        """Every exit to L0: L2 faults, write-protection and INVEPT exits, hypercalls."""
        c = self.counts
        return c["l2_faults"] + c["wp_exits"] + c["invept_exits"] + self.hypercalls

    @property
    def hypercalls(self):
        return sum(n for k, n in self.counts.items() if k.startswith("hc_"))

    def summary(self):
        """The comparison figures, ``{name: int}``."""
        c = self.counts
        return {"table_pages_peak": self.table_pages_peak, "table_pages": self.table_pages,
                "table_writes": c["table_writes"], "l1_table_pages": self.l1_table_pages(),
                "l1_table_writes": c["l1_table_writes"], "exits": self.exits,
                "l2_faults": c["l2_faults"], "reflected_to_l1": c["reflected"],
                "wp_exits": c["wp_exits"], "invept_exits": c["invept_exits"],
                "unsync": c["unsync"], "resyncs": c["resyncs"],
                "resync_zapped": c["resync_zapped"], "fast_faults": c["fast_faults"],
                "l0_faults": c["l0_faults"], "l1_faults": c["l1_faults"],
                "l0_log_protected": c["l0_log_protected"], "l0_collapsed": c["l0_collapsed"],
                "zapped_oldest": c["zapped_oldest"], "hypercalls": self.hypercalls,
                "tlb_flushes": c["tlb_flushes"]}


class CountingSink(FlushSink):
    """Passes L0's invalidations of an L2 context to ``sink`` and counts them.

    Members
    -------
    supports_ranges : bool
        As the downstream sink.
    """

    def __init__(self, costs, sink=None):
        self.costs = costs
        self.sink = FlushSink() if sink is None else sink
        self.supports_ranges = self.sink.supports_ranges
        self._batch = None          # None, or [start, end] / "all" while batching

    def flush_all(self, *, space="both"):
        if self._batch is not None:
            self._batch = "all"
            return
        self.costs.counts["tlb_flushes"] += 1
        self.sink.flush_all()

    def flush_range(self, gfn, npages, *, space="both"):
        if self._batch is not None:
            if self._batch != "all":
                lo, hi = self._batch
                self._batch = [min(lo, gfn), max(hi, gfn + npages)]
            return
        self.costs.counts["tlb_flushes"] += 1
        self.sink.flush_range(gfn, npages)

    def __enter__(self):
        """Collect the flushes of one exit or hypercall into one (KVM flushes once
        per operation, after dropping mmu_lock). Safe here: an operation is atomic
        with respect to the walker, and freed tables are reused only by a later one."""
        if self._batch is not None:
            raise RuntimeError("flush batches do not nest")
        self._batch = [1 << 64, 0]
        return self

    def __exit__(self, *exc):
        batch, self._batch = self._batch, None
        if batch == "all":
            self.flush_all()
        elif batch[1] > batch[0]:
            self.flush_range(batch[0], batch[1] - batch[0])


class Composition(NamedTuple):
    """L1's mapping of an L2 GPA composed with L0's: the host address, the permissions
    both allow, and the L1 GFN in between."""
    hpa: int
    perms: dict
    l1_gfn: int


@dataclass(frozen=True)
class L2Slot:
    """An L2 memory region as L1 sees it: L2 GFNs ``[base_gfn, base_gfn + npages)``
    backed by L1 GFNs from ``l1_gfn`` (L1's memslot for its L2 guest)."""
    slot_id: int
    base_gfn: int
    npages: int
    l1_gfn: int
    readonly: bool = False

    @property
    def end_gfn(self):
        return self.base_gfn + self.npages

    def contains(self, gfn):
        return self.base_gfn <= gfn < self.end_gfn


class L0Host:
    """L0's side of L1: a :class:`sw_model.tdp.Vm` whose memslots map L1 GPAs to host
    frames. Both designs compose L1's L2 mapping with these memslots (KVM resolves an
    L1 GFN through L1's memslots, ``kvm_vcpu_gfn_to_memslot``, not through L0's own
    TDP tables for L1).

    Parameters
    ----------
    fmt_name : str
    memory : HostMemory
        Host memory for L0-built tables.
    slots : list of (base_gfn, npages, hpa, readonly, host_level)
        L1's RAM.

    Members
    -------
    vm : sw_model.tdp.Vm
    fmt : PageTableFormat
    """

    def __init__(self, fmt_name, memory, slots):
        self.fmt = get_format(fmt_name)
        self.vm = Vm(fmt_name, memory, trace=False)
        for slot_id, (base, npages, hpa, readonly, host_level) in enumerate(slots):
            self.vm.add_memslot(slot_id, base, npages, hpa, readonly=readonly,
                                host_level=host_level)

    def compose(self, l1_gfn):
        """``(slot, hpa)`` of L1 GFN ``l1_gfn``, or ``(None, None)`` (not L1 RAM)."""
        slot = self.vm.find_memslot(l1_gfn)
        if slot is None:
            return None, None
        return slot, slot.gfn_to_hpa(l1_gfn)

    def max_level(self, l1_gfn):
        """Largest page L0's mapping of ``l1_gfn`` allows (alignment, host mapping,
        write tracking): a shadow or KPOP leaf is never larger."""
        slot = self.vm.find_memslot(l1_gfn)
        return 1 if slot is None else self.vm.max_mapping_level(slot, l1_gfn)

    def mark_dirty(self, gfn):
        """L0 wrote L1's page ``gfn`` itself (KVM's ``mark_page_dirty``): logged if its
        memslot is."""
        slot = self.vm.find_memslot(gfn)
        if slot is not None and slot.dirty_logging:
            slot.mark_dirty(gfn)

    def vcpu_write(self, gfn):
        """L1's vCPU writes its page ``gfn`` through L0's TDP tables for L1: the walk
        sets D (logged with A/D bits), or faults to L0, which maps the page (logging a
        write by W) or, for a write-tracked page, emulates the write and logs it.
        Returns the :class:`PfResult` of each fault taken (empty: no exit)."""
        gpa = gfn << PAGE_SHIFT
        faults = []
        for _ in range(8):
            if self.vm.translate(gpa, "write", ad_update=True).ok:
                return faults
            faults.append(self.vm.handle_fault(gpa, "write"))
            if faults[-1] is PfResult.EMULATE:
                self.mark_dirty(gfn)
                return faults
        raise AssertionError(f"L1's write to its GFN {gfn:#x}: no progress ({faults})")
