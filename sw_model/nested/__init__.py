"""Nested virtualization: an L1 hypervisor on the TDP core runs an L2 guest, and L0
builds the L2 GPA → HPA tables the hardware walks, by shadow TDP or by KPOP.

Public API
----------
``L0Host(fmt_name, memory, slots)``
    L0's memslots for L1 RAM (a :class:`sw_model.tdp.Vm`, whose TDP tables L1 runs
    on); ``compose(l1_gfn) -> (slot, hpa)``, ``max_level(l1_gfn)``,
    ``mark_dirty(l1_gfn)``, ``vcpu_write(l1_gfn)``.
``L2Slot(slot_id, base_gfn, npages, l1_gfn, readonly=False)``
    An L2 memory region as L1 maps it.
Shadow TDP: ``L1Tdp(fmt_name, ad=, table_base=, table_bytes=)`` (L1's TDP core, its
    tables in a :class:`~sw_model.memory.HostMemory` addressed by L1 GPA) and
    ``ShadowNested(l0, l1, memory, sink=None, flood_limit=3, max_shadow_pages=None,
    split_desc_capacity=1026)``: rmaps (:mod:`.rmap`), unsync last-level pages, and
    L0's dirty logging of L1's memory with eager splitting (:mod:`.dirty_log`,
    ``split_stats``); ``l0_dirty_logging(slot_id, enable, eager_split=True)``,
    ``l0_get_dirty(slot_id) -> set of L1 GFNs``.
KPOP: ``KpopHost(l0, memory, ad=None, sink_for=None)`` (L0: ``hypercall(name, holder,
    as_id, ...)`` for the :data:`HYPERCALLS`, guest MMUs in ``mmus`` keyed by
    ``(holder, as_id)``), ``L1Kpop`` (L1's memslots, XArray and tracked writes),
    ``KpopNested(host, holder="l2", as_id=0)``.
Both designs (``ShadowNested``, ``KpopNested``) offer the same interface
    What the hardware walks: ``fmt``, ``opts``, ``mem``, ``root_for(as_id=0)``. L0's
    exit handler: ``handle_l2_fault(gpa, access) -> PfResult`` (EMULATE: the access goes
    to L1's or L0's emulation). What L1 does: ``add_slot(L2Slot)``,
    ``delete_slot(slot_id)``, ``zap(start, end)``, ``zap_all()``, ``age(start, end)``,
    ``test_age(start, end)``, ``dirty_logging(slot_id, enable)``,
    ``get_dirty(slot_id) -> set of L2 GFNs``, ``write_track(start, end, enable)``,
    ``flush()``. L0's writes to L2 memory: ``write_l2(gpa) -> Composition | None``.
    Checks: ``composed(gpa, access) -> Composition | None`` (L1's mapping then L0's),
    ``composed_by_memslots(gpa, access)`` (L1's memslots then L0's), ``check()``
    (invariants; returns the leaves), ``costs`` (:class:`Costs`, ``costs.summary()``).
Instruction emulation (:mod:`.gva`)
    ``L2Kernel(arch, slot, l0)`` (L2's stage-1 tables), ``gva_to_gpa(design, kernel,
    gva, access, user=)``, ``write_l2_memory(design, gpa)``.
Workload (:mod:`.workload`)
    ``build(design, fmt_name, memory=None, ad=None, sink=None, **options)``,
    ``make_workload(seed, scale=1, burst=40, migrate=False, eager_split=True)``,
    ``Driver(design)`` (``apply(op)``, ``translated(gpa, access, result)``,
    ``fault(gpa, access)``, ``emulate(name, access, user)``), ``run_model(design,
    ops)``, ``check_tables(design, may_be_stale=...)``.

docs/nested.md describes both designs, the hypercalls, L0's migration of L1 and the
measured costs.
"""

from .common import Composition, Costs, CountingSink, L0Host, L2Slot
from .gva import L2Kernel, Stage2Fault, gva_to_gpa, write_l2_memory
from .kpop import HYPERCALLS, GuestMmu, KpopHost, KpopNested, L1Kpop
from .shadow import L1Tdp, ShadowNested, ShadowPage
from .workload import DESIGNS, Driver, build, check_tables, make_workload, run_model

__all__ = ["Composition", "Costs", "CountingSink", "L0Host", "L2Slot", "L2Kernel",
           "Stage2Fault", "gva_to_gpa", "write_l2_memory", "HYPERCALLS", "GuestMmu",
           "KpopHost", "KpopNested", "L1Kpop", "L1Tdp", "ShadowNested", "ShadowPage",
           "DESIGNS", "Driver", "build", "check_tables", "make_workload", "run_model"]
