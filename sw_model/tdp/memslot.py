"""Memslots: a GFN range backed by contiguous host frames, with a dirty bitmap, and a
VM's memslots per address space (KVM's ``kvm_memslots``), found by GFN in O(log n)."""

import bisect
from dataclasses import dataclass, field

import numpy as np

from ..memory import PAGE_SIZE
from .iter import PAGE_SHIFT

__all__ = ["Memslot", "Memslots"]


@dataclass(eq=False)
class Memslot:
    """GFNs ``[base_gfn, base_gfn + npages)`` map to host frames from ``hpa``.

    Members
    -------
    slot_id, as_id : int
        The slot's id, unique within its address space.
    base_gfn, npages : int
    hpa : int
        Host-physical address of the frame backing ``base_gfn`` (4 KiB aligned).
    readonly : bool
        KVM_MEM_READONLY: mapped without write permission; a write is emulated (MMIO).
    dirty_logging : bool
        KVM_MEM_LOG_DIRTY_PAGES.
    host_level : int
        Largest level of the host mapping (KVM's ``host_pfn_mapping_level``, e.g. 3 for
        a 1 GiB hugetlbfs page): bounds the size of the huge pages the TDP MMU maps.
    dirty_bitmap : numpy.ndarray
        One bit per page, ``uint64`` words, bit ``i % 64`` of word ``i // 64`` for
        ``base_gfn + i`` (KVM's layout); all zero while logging is off.
    """
    slot_id: int
    as_id: int
    base_gfn: int
    npages: int
    hpa: int
    readonly: bool = False
    dirty_logging: bool = False
    host_level: int = 1
    dirty_bitmap: np.ndarray = field(default=None, repr=False)

    def __post_init__(self):
        # Vm.add_memslot checks these against the VM too; a slot built directly must not
        # be able to hold a negative or empty range either (its bitmap would be wrong).
        for name in ("slot_id", "as_id", "base_gfn", "npages", "hpa", "host_level"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"Memslot {name} must be a non-negative integer, "
                                 f"got {value!r}")
        if self.npages == 0:
            raise ValueError("Memslot npages must be positive")
        if self.hpa % PAGE_SIZE:
            raise ValueError(f"Memslot hpa {self.hpa:#x} is not 4 KiB aligned")
        if self.host_level == 0:
            raise ValueError("Memslot host_level must be at least 1 (4 KiB)")
        words = -(-self.npages // 64)
        if self.dirty_bitmap is None:
            self.dirty_bitmap = np.zeros(words, dtype=np.uint64)
        else:
            self._check_bitmap(self.dirty_bitmap, "dirty_bitmap")

    def _check_bitmap(self, bitmap, name):
        words = -(-self.npages // 64)
        if not isinstance(bitmap, np.ndarray) or bitmap.dtype != np.uint64 \
                or bitmap.shape != (words,):
            raise ValueError(f"{name} must be a numpy uint64 array of {words} words for "
                             f"{self.npages} pages")

    @property
    def end_gfn(self):
        return self.base_gfn + self.npages

    def contains(self, gfn):
        return self.base_gfn <= gfn < self.end_gfn

    def gfn_to_hpa(self, gfn):
        return self.hpa + (gfn - self.base_gfn) * PAGE_SIZE

    def mark_dirty(self, gfn, npages=1):
        """Set the bits of ``[gfn, gfn + npages)`` clipped to the slot (KVM's
        ``mark_page_dirty_in_slot``, once per page)."""
        lo = max(gfn, self.base_gfn) - self.base_gfn
        hi = min(gfn + npages, self.end_gfn) - self.base_gfn
        if hi <= lo:
            return
        if hi - lo == 1:
            self.dirty_bitmap[lo >> 6] |= np.uint64(1 << (lo & 63))
            return
        bits = np.zeros(len(self.dirty_bitmap) * 64, dtype=bool)
        bits[lo:hi] = True
        self.dirty_bitmap |= np.packbits(bits, bitorder="little").view(np.uint64)

    def mark_dirty_gfns(self, gfns):
        """Set the bits of the GFNs in the numpy array ``gfns`` (all inside the slot:
        one outside would set another page's bit or none, so it is an error)."""
        gfns = np.asarray(gfns, dtype=np.uint64)
        if len(gfns) and (int(gfns.min()) < self.base_gfn or int(gfns.max()) >= self.end_gfn):
            raise ValueError(f"gfns: [{int(gfns.min()):#x}, {int(gfns.max()):#x}] is not "
                             f"inside memslot {self.slot_id} [{self.base_gfn:#x}, "
                             f"{self.end_gfn:#x})")
        offsets = gfns - np.uint64(self.base_gfn)
        np.bitwise_or.at(self.dirty_bitmap, offsets >> np.uint64(6),
                         np.left_shift(np.uint64(1), offsets & np.uint64(63)))

    def dirty_gfns(self, bitmap=None):
        """The GFNs whose bit is set in ``bitmap`` (default: the slot's bitmap)."""
        if bitmap is None:
            bitmap = self.dirty_bitmap
        else:
            self._check_bitmap(bitmap, "bitmap")
        bits = np.unpackbits(bitmap.view(np.uint8), bitorder="little")[:self.npages]
        return [self.base_gfn + int(i) for i in np.flatnonzero(bits)]


class Memslots:
    """The memslots of :class:`~sw_model.tdp.Vm` (a mixin over
    :class:`~sw_model.tdp.core.TdpCore`)."""

    def _init_memslots(self, address_spaces):
        self._slots = [{} for _ in range(address_spaces)]
        self._slot_starts = [[] for _ in range(address_spaces)]   # sorted base GFNs
        self._slot_at = [{} for _ in range(address_spaces)]       # base GFN -> Memslot

    @staticmethod
    def _check_gfn_range(start, end):
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end):
            raise ValueError(f"start/end must be integers with 0 <= start <= end, got {start!r}, {end!r}")

    def _check_as_id(self, as_id):
        if not isinstance(as_id, int) or not 0 <= as_id < self._address_spaces:
            raise ValueError(f"as_id must be in [0, {self._address_spaces}), got {as_id!r}")

    def add_memslot(self, slot_id, base_gfn, npages, hpa, *, as_id=0, readonly=False,
                    dirty_logging=False, host_level=None, private_hpa=None):
        """Create a memslot: GFNs ``[base_gfn, base_gfn + npages)`` backed by host
        frames from ``hpa``. ``host_level`` (default: the largest level the format maps)
        bounds huge pages. A TD's slot also has private frames from ``private_hpa``
        (guest_memfd; default ``hpa + 2**40``); its GFNs lie below the shared bit.
        Returns the :class:`Memslot`."""
        self._check_as_id(as_id)
        if self.tdx is None and private_hpa is not None:
            raise ValueError("private_hpa: only a TD's memslots have private memory")
        if self.tdx is not None:
            if readonly:
                raise ValueError("readonly: a TD has no read-only memslots (as KVM for "
                                 "VMs with protected state)")
            if private_hpa is None and isinstance(hpa, int):
                private_hpa = hpa + (1 << 40)
        for name, value in (("slot_id", slot_id), ("base_gfn", base_gfn),
                            ("npages", npages), ("hpa", hpa),
                            ("private_hpa", 0 if private_hpa is None else private_hpa)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if npages == 0:
            raise ValueError("npages must be positive")
        if base_gfn + npages > self._max_gfn:
            limit = (f"the {self.fmt.gpa_bits}-bit GPA space of {self.fmt.name}"
                     if self.tdx is None else f"the TD's shared bit {self.tdx.shared_bit}")
            raise ValueError(f"base_gfn/npages: the slot ends beyond {limit}")
        for name, value in (("hpa", hpa), ("private_hpa", private_hpa)):
            if value is not None and (value % (1 << PAGE_SHIFT)
                                      or value + (npages << PAGE_SHIFT) > 1 << self.opts.pa_bits):
                raise ValueError(f"{name} {value:#x} must be 4 KiB aligned and the frames must "
                                 f"lie below 2**{self.opts.pa_bits}")
        top = max(self._map_levels)
        host_level = top if host_level is None else host_level
        if not isinstance(host_level, int) or not 1 <= host_level <= self.fmt.levels:
            raise ValueError(f"host_level must be in [1, {self.fmt.levels}], got {host_level!r}")
        slots = self._slots[as_id]
        if slot_id in slots:
            raise ValueError(f"slot_id {slot_id} already exists in address space {as_id}")
        overlap = self.memslots_in(base_gfn, base_gfn + npages, as_id)
        if overlap:
            raise ValueError(f"base_gfn/npages: overlaps memslot {overlap[0].slot_id}")
        slot = Memslot(slot_id, as_id, base_gfn, npages, hpa, readonly=bool(readonly),
                       dirty_logging=bool(dirty_logging), host_level=host_level)
        slots[slot_id] = slot
        bisect.insort(self._slot_starts[as_id], base_gfn)
        self._slot_at[as_id][base_gfn] = slot
        if self.tdx is not None:
            self.tdx.private_hpa[(as_id, slot_id)] = private_hpa
        self._trace("memslot_add", slot_id=slot_id, as_id=as_id, base_gfn=base_gfn,
                    npages=npages, hpa=hpa, readonly=slot.readonly)
        return slot

    def memslot(self, slot_id, as_id=0):
        self._check_as_id(as_id)
        try:
            return self._slots[as_id][slot_id]
        except KeyError:
            raise ValueError(f"slot_id {slot_id!r}: no such memslot in address space {as_id}") from None

    def memslots(self, as_id=0):
        self._check_as_id(as_id)
        return list(self._slots[as_id].values())

    def find_memslot(self, gfn, as_id=0):
        """The memslot holding ``gfn``, or None (MMIO)."""
        self._check_as_id(as_id)
        starts = self._slot_starts[as_id]
        index = bisect.bisect_right(starts, gfn) - 1
        if index >= 0:
            slot = self._slot_at[as_id][starts[index]]
            if slot.contains(gfn):
                return slot
        return None

    def memslots_in(self, start, end, as_id=0):
        """The memslots overlapping GFNs ``[start, end)``, by address (KVM's
        ``kvm_for_each_memslot_in_gfn_range``)."""
        self._check_as_id(as_id)
        starts = self._slot_starts[as_id]
        out = []
        for base in starts[max(bisect.bisect_right(starts, start) - 1, 0):]:
            if base >= end:
                break
            slot = self._slot_at[as_id][base]
            if slot.end_gfn > start:
                out.append(slot)
        return out

    def delete_memslot(self, slot_id, as_id=0):
        """Zap the slot's mappings in every root, flush, and forget the slot
        (KVM's ``kvm_arch_flush_shadow_memslot``)."""
        slot = self.memslot(slot_id, as_id)
        for mmu in self.nested_mmus:
            mmu.zap_memslot(slot)
        self.zap_gfn_range(slot.base_gfn, slot.end_gfn, as_id=as_id)
        del self._slots[as_id][slot_id]
        self._slot_starts[as_id].remove(slot.base_gfn)
        del self._slot_at[as_id][slot.base_gfn]
        if self.tdx is not None:
            del self.tdx.private_hpa[(as_id, slot_id)]
        self._trace("memslot_delete", slot_id=slot_id, as_id=as_id)

    def flush_remote_tlbs_memslot(self, slot_id, as_id=0):
        """Flush a memslot's range (KVM's ``kvm_flush_remote_tlbs_memslot``)."""
        slot = self.memslot(slot_id, as_id)
        self.flush_remote_tlbs_range(slot.base_gfn, slot.npages)

