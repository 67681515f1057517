"""The L2 workload run under both designs, and the checks made while it runs.

A workload is a seeded list of operations (:func:`make_workload`) that says what L1
does (map, unmap, remap, zap, zap all, age, flush, dirty logging with harvests) and
which L2 accesses happen. :class:`Driver` applies an operation to a design and checks
every translation the hardware returns against the composition of L1's and L0's
mappings; :func:`run_model` uses the reference walker as the hardware, the cocotb
scenario the RTL.
"""

import random

from ..memory import HostMemory
from ..tdp import PfResult
from ..walker import translate
from .common import PAGE_SHIFT, L0Host, L2Slot
from .kpop import KpopHost, KpopNested
from .shadow import L1Tdp, ShadowNested

__all__ = ["DESIGNS", "build", "make_workload", "Driver", "run_model", "check_tables",
           "L0_SLOTS", "L2_SLOTS"]

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
CHURN_L1 = (0x3000, 0x3400, 0x11000, 0x11400)
HOLE_GFN = 0x20000      # no L2 memslot: MMIO, emulated by L1
#: What L1 does after each burst of L2 accesses, in turn.
SCHEDULE = ("remap", "zap", "age", "flush", "remap", "zap", "age", "zap_all")


def build(design, fmt_name, memory=None, *, ad=None, sink=None):
    """A design (``"shadow"`` or ``"kpop"``) for one L2 on format ``fmt_name``."""
    memory = HostMemory(8 << 20) if memory is None else memory
    l0 = L0Host(fmt_name, memory, L0_SLOTS)
    if design == "shadow":
        l1 = L1Tdp(fmt_name, ad=ad, table_base=L1_TABLES)
        return ShadowNested(l0, l1, memory, sink=sink)
    if design == "kpop":
        host = KpopHost(l0, memory, ad=ad, sink_for=lambda key: sink)
        return KpopNested(host)
    raise ValueError(f"design must be one of {', '.join(DESIGNS)}, got {design!r}")


def _accesses(rng, n, slots, hole=0.02):
    out = []
    for _ in range(n):
        r = rng.random()
        if r < hole:
            gfn = HOLE_GFN + rng.randrange(16)
        else:
            slot = slots[0] if r < 0.55 else slots[1] if r < 0.8 else slots[2]
            gfn = slot.base_gfn + min(int(rng.expovariate(1 / 96)), slot.npages - 1) \
                if rng.random() < 0.7 else slot.base_gfn + rng.randrange(slot.npages)
        kind = rng.random()
        access = "write" if kind < 0.3 else "execute" if kind < 0.35 else "read"
        out.append(((gfn << PAGE_SHIFT) | (rng.randrange(512) << 3), access))
    return out


def make_workload(seed, scale=1, burst=40):
    """``12 * scale`` bursts of ``burst`` L2 accesses, each followed by an L1
    operation from :data:`SCHEDULE`, dirty logging on slot 0 with harvests over bursts
    5 to 10 of every 12. The operation list: ``("slot", L2Slot)``, ``("delete", slot_id)``,
    ``("access", [(gpa, access)])``, ``("zap", start, end)``, ``("zap_all",)``,
    ``("age", start, end)``, ``("flush",)``, ``("log", enable)``, ``("harvest",)``."""
    rng = random.Random(seed)
    ops = [("slot", s) for s in L2_SLOTS]
    ops.append(("access", [((g << PAGE_SHIFT), "write") for g in range(0, 1024, 37)]
                + [((0x40000 + g) << PAGE_SHIFT, "read") for g in range(0, 1024, 41)]))
    churn = L2_SLOTS[2]
    logging = False
    for step in range(12 * scale):
        ops.append(("access", _accesses(rng, burst, L2_SLOTS)))
        if step % 12 == 4:
            ops.append(("log", True))
            logging = True
        elif step % 12 == 9 and logging:
            ops.append(("harvest",))
            ops.append(("log", False))
            logging = False
        elif logging:
            ops.append(("harvest",))
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
    return ops


class Driver:
    """Applies workload operations to a design and checks what the hardware returns.

    Members
    -------
    design : ShadowNested or KpopNested
    stats : dict
        ``translations``, ``faults``, ``emulated``, ``young`` (ages that found a young
        page), ``harvests``, ``dirty_written`` and ``dirty_lost`` (pages written while
        logged and missing from the next harvest: must stay 0).
    """

    def __init__(self, design):
        self.design = design
        self.stats = dict.fromkeys(("translations", "faults", "emulated", "young",
                                    "harvests", "dirty_written", "dirty_lost"), 0)
        self.logging = False
        self._written = set()

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
        else:
            raise ValueError(f"unknown workload operation {op!r}")
        return []

    def translated(self, gpa, access, result):
        """Check one hardware answer: a translation must be the composition (same
        frame, no permission the composition lacks)."""
        d = self.design
        if not result.ok:
            return
        self.stats["translations"] += 1
        want = d.composed(gpa, access)
        assert want is not None, (f"{d.name}: {access} {gpa:#x} translates to "
                                  f"{result.hpa:#x} but L1∘L0 faults")
        hpa, perms = want
        assert result.hpa == hpa, (f"{d.name}: {access} {gpa:#x} -> {result.hpa:#x}, "
                                   f"L1∘L0 gives {hpa:#x}")
        extra = [k for k in "rwx" if result.perms.get(k) and not perms.get(k)]
        assert not extra, f"{d.name}: {gpa:#x} has permissions {extra} beyond L1∘L0"
        gfn = gpa >> PAGE_SHIFT
        if self.logging and access == "write" and L2_SLOTS[0].contains(gfn):
            self._written.add(gfn)
            self.stats["dirty_written"] += 1

    def fault(self, gpa, access):
        """The hardware faulted: L0's exit handler. Returns False when the access is
        emulated (no retry)."""
        self.stats["faults"] += 1
        result = self.design.handle_l2_fault(gpa, access)
        if result is PfResult.NOMEM:
            raise MemoryError(f"{self.design.name}: out of table pages at {gpa:#x}")
        if result is PfResult.EMULATE:
            self.stats["emulated"] += 1
            return False
        return True

    def summary(self):
        return {**self.design.costs.summary(), **self.stats}


def check_tables(design, max_leaves=256):
    """Every leaf of the L0-built tables (a spread of at most ``max_leaves``) agrees
    with the composition of L1's and L0's mappings, at its first and last page."""
    leaves = design.check()
    stride = max(1, -(-len(leaves) // max_leaves))
    fmt, opts = design.fmt, design.opts
    root = design.root_for(0)
    for gfn, level, _ in leaves[::stride]:
        npages = fmt.page_size(level) >> PAGE_SHIFT
        for g in (gfn, gfn + npages - 1):
            t = translate(design.mem, fmt, root, g << PAGE_SHIFT, "read", vm=opts,
                          ad_update=False)
            want = design.composed(g << PAGE_SHIFT, "read")
            if t.ok:
                assert want is not None and want[0] == t.hpa, (
                    f"{design.name}: L2 GFN {g:#x} maps {t.hpa:#x}, L1∘L0: {want}")
                if t.perms["w"]:
                    assert design.composed(g << PAGE_SHIFT, "write") is not None, \
                        f"{design.name}: L2 GFN {g:#x} writable, L1∘L0 read-only"
    return len(leaves)


def run_model(design, ops, *, check_every=8):
    """Run ``ops`` with the reference walker as the hardware (A/D updates applied).
    Returns the :class:`Driver`."""
    drv = Driver(design)
    for n, op in enumerate(ops):
        for gpa, access in drv.apply(op):
            for _ in range(16):
                t = translate(design.mem, design.fmt, design.root_for(0), gpa, access,
                              vm=design.opts)
                if t.ok:
                    drv.translated(gpa, access, t)
                    break
                if not drv.fault(gpa, access):
                    break
            else:
                raise AssertionError(f"{design.name}: no progress on {access} {gpa:#x}")
        if check_every and n % check_every == 0:
            check_tables(design)
    check_tables(design)
    return drv

