"""L0's translation of an L2 guest-virtual address, for instruction emulation (KVM's
``gva_to_gpa`` through the nested MMU): e.g. UMIP, where L0 emulates SGDT, SIDT, SLDT,
SMSW or STR run by L2's user mode and writes the result at the guest-virtual address
the instruction names.

L2's stage-1 tables (:mod:`sw_model.formats.stage1`) live in L2's memory. L0 reads each
entry through L1's mapping of L2 (``design.composed``: L1's TDP tables under shadow
TDP, L1's MAPs under KPOP) and L0's memslots, from the host frame; an A/D update is a
write to L2's memory (``design.write_l2``). Where L1 does not map a table page, the walk
stops with a stage-2 fault that L0 reflects to L1 (``design.handle_l2_fault``) and then
walks again. The answer is the L2 GPA, or the guest's own fault for L0 to inject into
L2 (x86 #PF with its error code and CR2, #GP for a non-canonical address; a RISC-V page
fault with stval).
"""

from ..formats.stage1 import stage1_format_for
from ..memory import PAGE_SIZE, HostMemory
from ..tdp import PfResult
from ..walker import translate
from .common import PAGE_SHIFT

__all__ = ["L2Kernel", "Stage2Fault", "gva_to_gpa", "write_l2_memory"]


class Stage2Fault(Exception):
    """L1 does not map (or not for this access) an L2 GPA the walk needs."""

    def __init__(self, gpa, access):
        super().__init__(f"L2 GPA {gpa:#x} ({access}) not mapped by L1")
        self.gpa, self.access = gpa, access


class _L2Memory:
    """L2's guest-physical memory as the reference walker reads it for L0: an L2 GPA
    goes through L1's and L0's mappings to a host frame in ``ram``."""

    def __init__(self, design, ram):
        self.design, self.ram = design, ram

    def read64(self, gpa):
        found = self.design.composed(gpa, "read")
        if found is None:
            raise Stage2Fault(gpa, "read")
        return self.ram.read64(found.hpa)

    def cmpxchg64(self, gpa, old, new):
        found = self.design.write_l2(gpa)
        if found is None:
            raise Stage2Fault(gpa, "write")
        return self.ram.cmpxchg64(found.hpa, old, new)


def gva_to_gpa(design, kernel, gva, access, *, user):
    """Translate L2's ``gva`` for ``access`` at L2's privilege ``user``: a
    :class:`~sw_model.walker.Translation` (``hpa`` is the L2 GPA) or a
    :class:`~sw_model.walker.Fault` (its ``report`` is the guest's exception).
    A stage-2 fault on a table L1 maps nowhere (MMIO) raises :class:`Stage2Fault`."""
    opts = kernel.fmt.vm_options(ad=kernel.ad, user=user)
    mem = _L2Memory(design, kernel.ram)
    for _ in range(16):
        try:
            return translate(mem, kernel.fmt, kernel.cr3, gva, access, vm=opts)
        except Stage2Fault as fault:
            if design.handle_l2_fault(fault.gpa, fault.access) is PfResult.EMULATE:
                raise
    raise AssertionError(f"gva_to_gpa {gva:#x}: no progress")


def write_l2_memory(design, gpa):
    """L0 writes L2's memory at ``gpa`` (the emulated instruction's store), reflecting
    a stage-2 fault to L1 first if L1 does not let it; the :class:`~.common.Composition`
    written through."""
    for _ in range(16):
        found = design.write_l2(gpa)
        if found is not None:
            return found
        if design.handle_l2_fault(gpa, "write") is PfResult.EMULATE:
            raise Stage2Fault(gpa, "write")
    raise AssertionError(f"write to L2 GPA {gpa:#x}: no progress")


class L2Kernel:
    """L2's stage-1 page tables, built as L2's kernel would in an L2 memory region of
    their own, with an image of them addressed by L2 GPA from which the expected
    answers are computed by hand (the reference walker on the image).

    Parameters
    ----------
    arch : str
        The stage-2 architecture (the stage-1 format follows it).
    slot : L2Slot
        Where the tables live in L2 memory (L1 maps it; it is never remapped).
    l0 : L0Host
        To find the host frames of the slot.

    Members
    -------
    fmt : PageTableFormat
    ad : str
    cr3 : int
        L2 GPA of the root table (CR3 / satp).
    ram : HostMemory
        The host frames of the slot.
    mappings : dict
        ``name -> gva`` of the addresses the workload uses.
    """

    def __init__(self, arch, slot, l0):
        self.fmt = stage1_format_for(arch)
        self.ad = "hardware"
        self.slot = slot
        host, hpa = l0.compose(slot.l1_gfn)
        if host is None or not host.contains(slot.l1_gfn + slot.npages - 1):
            raise ValueError(f"slot: L1 GFNs {slot.l1_gfn:#x}+{slot.npages} are not in one "
                             "L0 memslot")
        self.ram = HostMemory(slot.npages * PAGE_SIZE, base=hpa)
        self.image = HostMemory(slot.npages * PAGE_SIZE, base=slot.base_gfn << PAGE_SHIFT)
        self._next = 0
        self.cr3 = self._alloc()
        self.mappings = {}

    def _alloc(self):
        if self._next == self.slot.npages:
            raise MemoryError("L2 kernel: no page left for a table")
        gpa = (self.slot.base_gfn + self._next) << PAGE_SHIFT
        self._next += 1
        return gpa

    def _write(self, gpa, word):
        self.image.write64(gpa, word)
        self.ram.write64(self.ram.base + gpa - self.image.base, word)

    def map(self, name, gva, gpa, level=1, *, w=True, x=True, u=True):
        """Map ``gva`` to L2 GPA ``gpa`` with a leaf at ``level``; A and D clear, so
        the walker's A/D updates are L0 writes to L2's memory."""
        fmt, table = self.fmt, self.cr3
        for lvl in range(fmt.root_level, level, -1):
            addr = fmt.entry_addr(table, gva, lvl)
            word = self.image.read64(addr)
            if not fmt.is_present(word):
                word = fmt.make_table(self._alloc())
                self._write(addr, word)
            table = fmt.decode(word, lvl).frame
        self._write(fmt.entry_addr(table, gva, level),
                    fmt.make_leaf(gpa, level, w=w, x=x, u=u))
        self.mappings[name] = gva

    def expected(self, gva, access, *, user):
        """What the reference walker answers on the image of the tables."""
        opts = self.fmt.vm_options(ad=self.ad, user=user)
        return translate(self.image, self.fmt, self.cr3, gva, access, vm=opts,
                         ad_update=False)
