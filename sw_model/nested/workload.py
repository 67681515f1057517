"""The L2 workload run under both designs, and the checks made while it runs.

A workload is a seeded list of operations (:func:`make_workload`) that says what L1
does (map, unmap, remap, zap, zap all, age, flush, dirty logging with harvests, write
tracking), which L2 accesses happen, which L2 instructions L0 emulates (translating
their guest-virtual addresses through L2's own page tables), and, for a migration of
L1, when L0 logs and harvests L1's memory. :class:`Driver` applies an operation to a
design and checks every translation the hardware returns against the composition of
L1's and L0's mappings, every emulation against the reference walker on L2's tables,
and every dirty log against a ground-truth record of the writes; :func:`run_model` uses
the reference walker as the hardware, the cocotb scenarios the RTL.
"""

import random
import time

import numpy as np

from ..memory import HostMemory
from ..tdp import PfResult
from ..walker import translate
from .common import PAGE_SHIFT, L0Host, L2Slot
from .gva import L2Kernel, gva_to_gpa, write_l2_memory
from .kpop import KpopHost, KpopNested
from .shadow import L1Tdp, ShadowNested

__all__ = ["DESIGNS", "build", "make_workload", "Driver", "run_model", "check_tables",
           "L0_SLOTS", "L2_SLOTS", "ALIAS_SLOTS", "KERNEL_SLOT", "TRACKED", "EMULATIONS"]

DESIGNS = ("shadow", "kpop")
GIB = 1 << 30
#: L0's memslots for L1 RAM: (base L1 GFN, pages, HPA, readonly, host_level). The
#: second is 4 KiB-misaligned in host memory, so L1's 2 MiB pages there are mapped
#: 4 KiB by L0 (direct shadow pages under an L1 huge page; 4 KiB KPOP leaves).
L0_SLOTS = [(0, 0x10000, 4 * GIB, False, None), (0x10000, 0x10000, 8 * GIB + 4096, False, None)]
#: L1 keeps its tables for L2 at this L1 GPA (inside L0's first slot).
L1_TABLES = 0x8000 << PAGE_SHIFT
#: L2's memory as L1 maps it: slot 0 (huge pages, dirty-logged), slot 1 (backed by the
#: misaligned L0 slot), slot 2 (remapped between these L1 GFNs, sometimes read-only).
L2_SLOTS = [L2Slot(0, 0, 1024, 0x1000), L2Slot(1, 0x40000, 1024, 0x10200),
            L2Slot(2, 0x80000, 128, 0x3000)]
#: L2's kernel page tables (its stage-1 tables, for the emulated instructions).
KERNEL_SLOT = L2Slot(5, 0x70000, 16, 0x6000)
#: A migration's larger L2 memory: slot 3 is 16 MiB of L1 memory mapped with 2 MiB
#: pages whose first 4 MiB are slot 0's again (two shadow huge leaves for one L1 huge
#: page), slot 4 maps slot 0's one page off, so L1 maps it with 4 KiB pages (4 KiB
#: leaves in the rmaps of L1 GFNs that slots 0 and 3 map huge).
ALIAS_SLOTS = [L2Slot(3, 0xc0000, 4096, 0x1000), L2Slot(4, 0xe0000, 256, 0x1001)]
CHURN_L1 = (0x3000, 0x3400, 0x11000, 0x11400)
HOLE_GFN = 0x20000      # no L2 memslot: MMIO, emulated by L1
#: L2 GFNs L1 write-tracks for a while (e.g. a device's page tables it shadows).
TRACKED = (24, 40)
#: What L1 does after each burst of L2 accesses, in turn.
SCHEDULE = ("remap", "zap", "age", "flush", "remap", "zap", "age", "zap_all")
#: The emulated accesses: (mapping, access, user mode).
EMULATIONS = [("user", "write", True), ("user", "read", True), ("user_ro", "write", True),
              ("kernel", "write", True), ("kernel", "write", False), ("nx", "execute", True),
              ("huge", "write", True), ("absent", "read", True),
              ("noncanonical", "read", False), ("user_ro", "write", False)]


def build(design, fmt_name, memory=None, *, ad=None, sink=None, **options):
    """A design (``"shadow"`` or ``"kpop"``) for one L2 on format ``fmt_name``, with
    L2's kernel page tables built (``design.l2_kernel``). ``options`` go to
    :class:`ShadowNested`."""
    memory = HostMemory(8 << 20) if memory is None else memory
    l0 = L0Host(fmt_name, memory, L0_SLOTS)
    if design == "shadow":
        l1 = L1Tdp(fmt_name, ad=ad, table_base=L1_TABLES)
        made = ShadowNested(l0, l1, memory, sink=sink, **options)
    elif design == "kpop":
        if options:
            raise ValueError(f"options: {', '.join(options)} apply to shadow TDP only")
        made = KpopNested(KpopHost(l0, memory, ad=ad, sink_for=lambda key: sink))
    else:
        raise ValueError(f"design must be one of {', '.join(DESIGNS)}, got {design!r}")
    made.l2_kernel = _l2_kernel(l0)
    return made


def _l2_kernel(l0):
    kernel = L2Kernel(l0.fmt.arch, KERNEL_SLOT, l0)
    high = (1 << 64) - (1 << 47)          # the kernel half of the address space
    kernel.map("user", 0x400000, 16 << PAGE_SHIFT)
    kernel.map("user_ro", 0x401000, 17 << PAGE_SHIFT, w=False)
    kernel.map("nx", 0x402000, 18 << PAGE_SHIFT, x=False)
    kernel.map("kernel", high + 0x200000, 20 << PAGE_SHIFT, u=False)
    kernel.map("huge", 0x600000, 512 << PAGE_SHIFT, level=2)
    kernel.mappings["absent"] = 0x800000
    kernel.mappings["noncanonical"] = 1 << 47
    return kernel


def _accesses(rng, n, slots, weights, hole=0.02):
    out = []
    for _ in range(n):
        if rng.random() < hole:
            gfn = HOLE_GFN + rng.randrange(16)
        else:
            slot = rng.choices(slots, weights)[0]
            # Locality in the small slots; a large one (a migrated guest's RAM) is
            # touched all over.
            gfn = slot.base_gfn + min(int(rng.expovariate(1 / 96)), slot.npages - 1) \
                if rng.random() < 0.7 and slot.npages <= 1024 \
                else slot.base_gfn + rng.randrange(slot.npages)
        kind = rng.random()
        access = "write" if kind < 0.3 else "execute" if kind < 0.35 else "read"
        out.append(((gfn << PAGE_SHIFT) | (rng.randrange(512) << 3), access))
    return out


def make_workload(seed, scale=1, burst=40, *, migrate=False, eager_split=True):
    """``12 * scale`` bursts of ``burst`` L2 accesses, each followed by emulated L2
    instructions and an L1 operation from :data:`SCHEDULE`, dirty logging on slot 0
    with harvests over bursts 5 to 10 of every 12, write tracking of :data:`TRACKED`
    over bursts 7 to 9.

    ``migrate``: L0 migrates L1 at the same time: slots 3 and 4 (:data:`ALIAS_SLOTS`)
    take part, slots 0, 3 and 4 are read all over before L0 starts logging both of its
    memslots of L1 RAM after the 3rd burst of every 12 (``eager_split``: with eager
    splitting); L0 harvests them after each of the next eight bursts, then stops.

    The operation list: ``("slot", L2Slot)``, ``("delete", slot_id)``, ``("access",
    [(gpa, access)])``, ``("emulate", [(mapping, access, user)])``, ``("zap", start,
    end)``, ``("zap_all",)``, ``("age", start, end)``, ``("flush",)``, ``("log",
    enable)``, ``("harvest",)``, ``("track", start, end, enable)``, ``("l0_log", slot,
    enable, eager_split)``, ``("l0_harvest", slot)``."""
    rng = random.Random(seed)
    slots = L2_SLOTS + (ALIAS_SLOTS if migrate else [])
    weights = [55, 25, 20] + ([40, 10] if migrate else [])
    ops = [("slot", s) for s in slots + [KERNEL_SLOT]]
    ops.append(("access", [((g << PAGE_SHIFT), "write") for g in range(0, 1024, 37)]
                + [((0x40000 + g) << PAGE_SHIFT, "read") for g in range(0, 1024, 41)]))
    churn = L2_SLOTS[2]
    logging = l0_logging = False
    for step in range(12 * scale):
        ops.append(("access", _accesses(rng, burst, slots, weights)))
        ops.append(("emulate", rng.sample(EMULATIONS, 3)))
        if migrate and step % 12 == 2:
            ops.append(("access", [((s.base_gfn + g) << PAGE_SHIFT, "read")
                                   for s in [L2_SLOTS[0]] + ALIAS_SLOTS
                                   for g in range(0, s.npages, 64)]))
            ops += [("l0_log", s, True, eager_split) for s in (0, 1)]
            l0_logging = True
        elif l0_logging:
            ops += [("l0_harvest", s) for s in (0, 1)]
            if step % 12 == 10:
                ops += [("l0_log", s, False, eager_split) for s in (0, 1)]
                l0_logging = False
        if step % 12 == 4:
            ops.append(("log", True))
            logging = True
        elif step % 12 == 9 and logging:
            ops.append(("harvest",))
            ops.append(("log", False))
            logging = False
        elif logging:
            ops.append(("harvest",))
        if step % 12 in (6, 8):
            ops.append(("track", *TRACKED, step % 12 == 6))
        kind = SCHEDULE[step % len(SCHEDULE)]
        if kind == "remap":
            l1_gfn = rng.choice([g for g in CHURN_L1 if g != churn.l1_gfn])
            churn = L2Slot(2, churn.base_gfn, churn.npages, l1_gfn, rng.random() < 0.3)
            ops += [("delete", 2), ("slot", churn)]
        elif kind == "zap":
            slot = rng.choice(L2_SLOTS[:2])
            start = slot.base_gfn + rng.randrange(slot.npages)
            ops.append(("zap", start, min(start + rng.choice((1, 8, 300)), slot.end_gfn)))
        elif kind == "age":
            ops.append(("age", 0, L2_SLOTS[0].npages))
        else:
            ops.append((kind,))
    if logging:
        ops += [("harvest",), ("log", False)]
    if l0_logging:
        ops += [("l0_harvest", s) for s in (0, 1)]
        ops += [("l0_log", s, False, eager_split) for s in (0, 1)]
    return ops


class Driver:
    """Applies workload operations to a design and checks what the hardware returns.

    Members
    -------
    design : ShadowNested or KpopNested
    stats : dict
        ``translations``, ``faults``, ``emulated``, ``young`` (ages that found a young
        page), ``harvests``, ``dirty_written`` and ``dirty_lost`` (pages written while
        L1 logged and missing from its next harvest: must stay 0), ``tracked_writes``
        (L2 writes to pages L1 tracks, emulated), ``emulations`` and
        ``emulation_faults`` (L2 instructions L0 emulated, and of those the ones whose
        address faulted), ``l0_harvests``, ``l0_dirty_written`` and ``l0_dirty_lost``
        (L1 pages written while L0 logged and missing from its next harvest: must stay
        0), ``l0_log_seconds`` (CPU time to enable L0's logging).
    """

    def __init__(self, design):
        self.design = design
        self.stats = dict.fromkeys(("translations", "faults", "emulated", "young",
                                    "harvests", "dirty_written", "dirty_lost",
                                    "tracked_writes", "emulations", "emulation_faults",
                                    "l0_harvests", "l0_dirty_written", "l0_dirty_lost"), 0)
        self.stats["l0_log_seconds"] = 0.0
        self.logging = False
        self._written = set()
        self._tracked = set()
        self._aged = None                # (start, end, L1 flushes then) of the last age
        self._l0_pending = {}            # L0 slot id -> L1 GFNs written while logged
        self._memory = None              # L1 memory as last seen while L0 logs

    # -- operations ------------------------------------------------------------------

    def apply(self, op):
        """Run one non-access operation; returns the accesses of an ``access`` op."""
        d, kind = self.design, op[0]
        if kind == "access":
            return op[1]
        if kind == "slot":
            d.add_slot(op[1])
        elif kind == "delete":
            d.delete_slot(op[1])
        elif kind == "zap":
            d.zap(op[1], op[2])
        elif kind == "zap_all":
            d.zap_all()
        elif kind == "age":
            self.stats["young"] += bool(d.age(op[1], op[2]))
            assert not d.test_age(op[1], op[2]), f"{d.name}: young right after aging"
            self._aged = (op[1], op[2], self._l1_flushes())
        elif kind == "flush":
            d.flush()
        elif kind == "log":
            d.dirty_logging(0, op[1])
            self.logging = op[1]
            self._written.clear()
        elif kind == "harvest":
            got = d.get_dirty(0)
            self.stats["harvests"] += 1
            self.stats["dirty_lost"] += len(self._written - got)
            assert self._written <= got, (
                f"{d.name}: written L2 pages missing from the dirty log: "
                f"{sorted(hex(g) for g in self._written - got)[:8]}")
            self._written.clear()
        elif kind == "track":
            d.write_track(op[1], op[2], op[3])
            gfns = set(range(op[1], op[2]))
            self._tracked = self._tracked | gfns if op[3] else self._tracked - gfns
        elif kind == "emulate":
            for name, access, user in op[1]:
                self.emulate(name, access, user)
        elif kind == "l0_log":
            self._l0_log(*op[1:])
        elif kind == "l0_harvest":
            self._l0_harvest(op[1])
        else:
            raise ValueError(f"unknown workload operation {op!r}")
        return []

    def _l1_flushes(self):
        return self.design.costs.counts["invept_exits"]

    def may_be_stale(self, gfn):
        """Whether a translation of L2 GFN ``gfn`` may still show L1's mapping from
        before its last aging: L1 does not flush after aging (as KVM), so until its
        next flush the hardware may use a translation L1 has since marked old."""
        return self._aged is not None and self._aged[0] <= gfn < self._aged[1] \
            and self._aged[2] == self._l1_flushes()

    # -- checks of the hardware's answers ------------------------------------------------

    def translated(self, gpa, access, result):
        """Check one hardware answer: a translation must be the composition (same
        frame, no permission the composition lacks)."""
        d = self.design
        if not result.ok:
            return
        self.stats["translations"] += 1
        gfn = gpa >> PAGE_SHIFT
        want = d.composed(gpa, access)
        if (want is None or want.hpa != result.hpa) and self.may_be_stale(gfn):
            want = d.composed_by_memslots(gpa, access)
        assert want is not None, (f"{d.name}: {access} {gpa:#x} translates to "
                                  f"{result.hpa:#x} but L1∘L0 faults")
        assert result.hpa == want.hpa, (f"{d.name}: {access} {gpa:#x} -> {result.hpa:#x}, "
                                        f"L1∘L0 gives {want.hpa:#x}")
        extra = [k for k in "rwx" if result.perms.get(k) and not want.perms.get(k)]
        assert not extra, f"{d.name}: {gpa:#x} has permissions {extra} beyond L1∘L0"
        if access != "write":
            return
        assert gfn not in self._tracked, f"{d.name}: write to tracked L2 GFN {gfn:#x} " \
            "translated"
        self._wrote(gfn, want.l1_gfn)

    def _wrote(self, gfn, l1_gfn):
        """The ground truth: L2 wrote its GFN ``gfn``, L1's GFN ``l1_gfn``."""
        if self.logging and L2_SLOTS[0].contains(gfn):
            self._written.add(gfn)
            self.stats["dirty_written"] += 1
        if self._l0_pending:
            slot = self.design.l0.vm.find_memslot(l1_gfn)
            if slot.slot_id in self._l0_pending:
                self._l0_pending[slot.slot_id].add(l1_gfn)

    def walk(self, gpa, access):
        """One L2 access with the reference walker as the hardware (A/D updates
        applied): a fault goes to L0's exit handler and the access is retried. The
        final answer."""
        d = self.design
        for _ in range(16):
            t = translate(d.mem, d.fmt, d.root_for(0), gpa, access, vm=d.opts)
            if t.ok:
                self.translated(gpa, access, t)
                return t
            if not self.fault(gpa, access):
                return t
        raise AssertionError(f"{d.name}: no progress on {access} {gpa:#x}")

    def fault(self, gpa, access):
        """The hardware faulted: L0's exit handler. Returns False when the access is
        emulated (no retry)."""
        self.stats["faults"] += 1
        result = self.design.handle_l2_fault(gpa, access)
        if result is PfResult.NOMEM:
            raise MemoryError(f"{self.design.name}: out of table pages at {gpa:#x}")
        if result is PfResult.EMULATE:
            self.stats["emulated"] += 1
            if access == "write" and gpa >> PAGE_SHIFT in self._tracked:
                self.stats["tracked_writes"] += 1
            return False
        return True

    def emulate(self, name, access, user):
        """L0 emulates an L2 instruction that accesses the guest-virtual address of
        mapping ``name``: the translation must be the reference walker's on L2's
        tables (the L2 GPA, or the same fault); a store is then done (and logged)."""
        d, kernel = self.design, self.design.l2_kernel
        gva = kernel.mappings[name]
        want = kernel.expected(gva, access, user=user)
        got = gva_to_gpa(d, kernel, gva, access, user=user)
        self.stats["emulations"] += 1
        assert got.ok == want.ok and (got.hpa == want.hpa if got.ok else
                                      (got.kind, got.report) == (want.kind, want.report)), \
            f"{d.name}: gva_to_gpa({name} {gva:#x}, {access}, user={user}): " \
            f"{got.to_json()}, the reference walker says {want.to_json()}"
        if not got.ok:
            self.stats["emulation_faults"] += 1
            return
        if access == "write":
            self._wrote(got.hpa >> PAGE_SHIFT, write_l2_memory(d, got.hpa).l1_gfn)

    # -- L0's dirty log of L1 ----------------------------------------------------------

    def _l0_log(self, slot_id, enable, eager_split):
        d = self.design
        self._note_l1_memory_writes()
        start = time.process_time()
        d.l0_dirty_logging(slot_id, enable, eager_split=eager_split)
        if enable:
            self.stats["l0_log_seconds"] += time.process_time() - start
            self._l0_pending[slot_id] = set()
        else:
            del self._l0_pending[slot_id]

    def _l1_memory(self):
        """L1's memory the model holds: its tables, and L2's kernel tables (in L1 RAM)
        with their host frames; ``[(words, L1 GFN of the first page)]``."""
        d = self.design
        out = [(d.l2_kernel.ram.words, d.l2_kernel.slot.l1_gfn)]
        if hasattr(d, "l1") and hasattr(d.l1, "mem"):
            out.append((d.l1.mem.words, d.l1.mem.base >> PAGE_SHIFT))
        return out

    def _note_l1_memory_writes(self):
        """Every page of L1 memory changed since the last look (L1's writes to its
        tables, L0's A/D updates in L1's and L2's tables) joins the ground truth."""
        now = [words.copy() for words, _ in self._l1_memory()]
        if self._memory is not None and self._l0_pending:
            vm = self.design.l0.vm
            for old, new, (_, first) in zip(self._memory, now, self._l1_memory()):
                pages = np.unique(np.flatnonzero(old != new) // (4096 // 8))
                for gfn in (first + int(p) for p in pages):
                    slot = vm.find_memslot(gfn)
                    if slot.slot_id in self._l0_pending:
                        self._l0_pending[slot.slot_id].add(gfn)
        self._memory = now

    def _l0_harvest(self, slot_id):
        d = self.design
        self._note_l1_memory_writes()
        got = d.l0_get_dirty(slot_id)
        written = self._l0_pending[slot_id]
        self.stats["l0_harvests"] += 1
        self.stats["l0_dirty_written"] += len(written)
        self.stats["l0_dirty_lost"] += len(written - got)
        assert written <= got, (
            f"{d.name}: L1 pages written while L0 logs, missing from L0's dirty log of "
            f"memslot {slot_id}: {sorted(hex(g) for g in written - got)[:8]}")
        self._l0_pending[slot_id] = set()

    def summary(self):
        """The costs, the checks' counts and the split policies' counts."""
        d = self.design
        stats = dict(self.stats, l0_log_seconds=round(self.stats["l0_log_seconds"], 4))
        return {**d.costs.summary(), **stats, **getattr(d, "split_stats", {})}


def check_tables(design, may_be_stale=lambda gfn: False, max_leaves=256):
    """Every leaf of the L0-built tables (a spread of at most ``max_leaves``) agrees
    with the composition of L1's and L0's mappings, at its first and last page (or, for
    a GFN ``may_be_stale`` names, with L1's memslots)."""
    leaves = design.check()
    stride = max(1, -(-len(leaves) // max_leaves))
    fmt, opts = design.fmt, design.opts
    root = design.root_for(0)
    for gfn, level, _ in leaves[::stride]:
        npages = fmt.page_size(level) >> PAGE_SHIFT
        for g in (gfn, gfn + npages - 1):
            gpa = g << PAGE_SHIFT
            t = translate(design.mem, fmt, root, gpa, "read", vm=opts, ad_update=False)
            if not t.ok:
                continue
            want = design.composed(gpa, "read")
            if (want is None or want.hpa != t.hpa) and may_be_stale(g):
                want = design.composed_by_memslots(gpa, "read")
            assert want is not None and want.hpa == t.hpa, (
                f"{design.name}: L2 GFN {g:#x} maps {t.hpa:#x}, L1∘L0: {want}")
            if t.perms["w"]:
                assert design.composed(gpa, "write") is not None or (
                    may_be_stale(g) and design.composed_by_memslots(gpa, "write")), \
                    f"{design.name}: L2 GFN {g:#x} writable, L1∘L0 read-only"
    return len(leaves)


def run_model(design, ops, *, check_every=8):
    """Run ``ops`` with the reference walker as the hardware (A/D updates applied).
    Returns the :class:`Driver`."""
    drv = Driver(design)
    for n, op in enumerate(ops):
        for gpa, access in drv.apply(op):
            drv.walk(gpa, access)
        if check_every and n % check_every == 0:
            check_tables(design, drv.may_be_stale)
    check_tables(design, drv.may_be_stale)
    return drv
