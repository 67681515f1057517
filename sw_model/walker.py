"""The reference walker: the oracle every RTL answer is compared with.

:func:`translate` walks a format's tables in :class:`~sw_model.memory.HostMemory` the way
the architecture's hardware does, applying the format's rules in a fixed order:

1. a GPA wider than the format's input width is a ``gpa_range`` fault at the root;
2. each entry, root first, is checked by ``fmt.entry_fault`` (not present, reserved
   bits and encodings); a read that fails is a ``bus_error``;
3. at the leaf, ``fmt.leaf_fault`` checks permissions, alignment and Svade A/D rules;
4. A/D updates are written root first with compare-exchange against the word the walk
   read; if software changed that word in between, the whole walk restarts, so an
   update never overwrites a concurrent change; an update that fails on the bus is a
   ``bus_error`` at that entry.

A/D bits are written only when the access succeeds (the RISC-V rule; a permitted,
deterministic choice for x86, which may also set them on faulting walks).
"""

from dataclasses import dataclass

from .formats import FormatError, check_access
from .memory import MemoryAccessError

__all__ = ["translate", "Translation", "Fault", "WalkRestartLimit"]

_HEX_REPORT_KEYS = ("qualification", "error_code", "htval")


def _hex(value):
    return None if value is None else f"{value:#x}"


def perms_string(perms):
    """``{"r": True, "w": False, ...}`` as ``"r"``, letters in the order r, w, x, u."""
    return "".join(letter for letter in "rwxu" if perms.get(letter))


class WalkRestartLimit(RuntimeError):
    """A/D compare-exchange kept failing: something rewrites the entry continuously."""


@dataclass(frozen=True)
class Translation:
    """A successful translation.

    ``ad_writes`` lists ``(address, old, new)`` for each A/D update, root first; with
    ``ad_update=False`` they are what the walker would have written.
    """
    gpa: int
    access: str
    hpa: int
    level: int
    perms: dict
    memtype: int
    pte_addrs: tuple
    ad_writes: tuple = ()
    restarts: int = 0
    ok = True

    def to_json(self):
        return {"result": "translation", "gpa": _hex(self.gpa), "access": self.access,
                "hpa": _hex(self.hpa), "level": self.level,
                "perms": perms_string(self.perms), "memtype": self.memtype,
                "pte_addrs": [_hex(a) for a in self.pte_addrs],
                "ad_writes": [[_hex(a), _hex(o), _hex(n)] for a, o, n in self.ad_writes]}


@dataclass(frozen=True)
class Fault:
    """A translation fault: normalized ``kind``, the ``level`` and ``pte_addr`` of the
    entry that decided it (the root level and None for ``gpa_range``), and the
    architecture's own ``report``."""
    gpa: int
    access: str
    kind: str
    level: int
    pte_addr: int
    report: dict
    pte_addrs: tuple = ()
    restarts: int = 0
    ok = False

    def to_json(self):
        report = {k: (_hex(v) if k in _HEX_REPORT_KEYS else v) for k, v in self.report.items()}
        return {"result": "fault", "gpa": _hex(self.gpa), "access": self.access,
                "kind": self.kind, "level": self.level, "pte_addr": _hex(self.pte_addr),
                "report": report, "pte_addrs": [_hex(a) for a in self.pte_addrs]}


def translate(mem, fmt, root, gpa, access, *, vm=None, ad_update=True, max_restarts=64):
    """Translate ``gpa`` for ``access`` through the ``fmt`` tables rooted at ``root``.

    Parameters
    ----------
    mem : HostMemory
    fmt : PageTableFormat
    root : int
        Host-physical address of the root table. Bits below the root table's size
        are ignored, as the hardware does (hgatp.PPN[1:0] read as zero; EPTP and
        nCR3 bits 11:0 are not address bits), so a walk never leaves the root table.
    gpa : int
    access : str
        ``"read"``, ``"write"`` or ``"execute"``.
    vm : VmOptions, optional
        Defaults to ``fmt.vm_options()``.
    ad_update : bool
        Write the A/D updates to ``mem`` (compare-exchange). With False, report them
        without writing.

    Returns
    -------
    Translation or Fault
    """
    check_access(access)
    vm = fmt.vm_options() if vm is None else vm
    if not isinstance(gpa, int) or gpa < 0:
        raise FormatError(f"gpa must be a non-negative integer, got {gpa!r}")
    if not fmt.gpa_in_range(gpa):
        return _fault(fmt, "gpa_range", access, gpa, [], fmt.root_level, None, vm, 0)

    for restarts in range(max_restarts + 1):
        entries, addrs = [], []
        table = root & ~(fmt.root_table_bytes - 1)
        for level in range(fmt.root_level, 0, -1):
            addr = fmt.entry_addr(table, gpa, level)
            addrs.append(addr)
            try:
                word = mem.read64(addr)
            except MemoryAccessError:
                return _fault(fmt, "bus_error", access, gpa, entries, level, addr, vm,
                              restarts, addrs)
            kind = fmt.entry_fault(word, level, vm)
            entry = fmt.decode(word, level)
            entries.append(entry)
            if kind:
                return _fault(fmt, kind, access, gpa, entries, level, addr, vm, restarts,
                              addrs)
            if entry.leaf:
                break
            table = entry.frame
        leaf = entries[-1]
        kind = fmt.leaf_fault(entries, access, vm)
        if kind:
            return _fault(fmt, kind, access, gpa, entries, leaf.level, addrs[-1], vm,
                          restarts, addrs)
        updates = fmt.ad_updates(entries, access, vm)
        writes = [(addrs[pos], entries[pos].word, new) for pos, new in updates]
        if ad_update:
            changed = False
            for (addr, old, new), (pos, _) in zip(writes, updates):
                try:
                    ok, _ = mem.cmpxchg64(addr, old, new)
                except MemoryAccessError:
                    # The update itself fails on the bus: a bus error at that entry;
                    # the updates before it stay done, as in the RTL.
                    return _fault(fmt, "bus_error", access, gpa, entries[:pos + 1],
                                  entries[pos].level, addr, vm, restarts, addrs)
                if not ok:
                    changed = True           # software changed an entry: walk again
                    break
            if changed:
                continue
        offset = gpa & (fmt.page_size(leaf.level) - 1)
        return Translation(gpa=gpa, access=access, hpa=leaf.frame | offset, level=leaf.level,
                           perms=fmt.effective_perms(entries, vm), memtype=leaf.memtype,
                           pte_addrs=tuple(addrs), ad_writes=tuple(writes), restarts=restarts)
    raise WalkRestartLimit(f"A/D update at gpa {gpa:#x} failed {max_restarts + 1} times")


def _fault(fmt, kind, access, gpa, entries, level, pte_addr, vm, restarts, addrs=()):
    return Fault(gpa=gpa, access=access, kind=kind, level=level, pte_addr=pte_addr,
                 report=fmt.fault_report(kind, access, gpa, entries, vm),
                 pte_addrs=tuple(addrs), restarts=restarts)
