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
