"""Memslots: a GFN range backed by contiguous host frames, with a dirty bitmap."""

from dataclasses import dataclass, field

import numpy as np

from ..memory import PAGE_SIZE

__all__ = ["Memslot"]


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
        if self.dirty_bitmap is None:
            self.dirty_bitmap = np.zeros(-(-self.npages // 64), dtype=np.uint64)

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
        """Set the bits of the GFNs in the numpy array ``gfns`` (all inside the slot)."""
        offsets = np.asarray(gfns, dtype=np.uint64) - np.uint64(self.base_gfn)
        np.bitwise_or.at(self.dirty_bitmap, offsets >> np.uint64(6),
                         np.left_shift(np.uint64(1), offsets & np.uint64(63)))

    def dirty_gfns(self, bitmap=None):
        """The GFNs whose bit is set in ``bitmap`` (default: the slot's bitmap)."""
        bitmap = self.dirty_bitmap if bitmap is None else bitmap
        bits = np.unpackbits(bitmap.view(np.uint8), bitorder="little")[:self.npages]
        return [self.base_gfn + int(i) for i in np.flatnonzero(bits)]
