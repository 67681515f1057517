"""Host physical memory that holds page tables.

The model (hypervisor side) and the RTL's AXI memory share one :class:`HostMemory`: the
model writes page-table entries through it, the AXI slave serves the RTL's reads from its
zero-copy :attr:`HostMemory.view`, and the RTL's A/D updates land in the same words.

Only page-table pages need storage. Guest data frames named by leaf entries may lie
anywhere in the host-physical address space; nothing is ever read from them.
"""

import numpy as np

__all__ = ["HostMemory", "MemoryAccessError", "OutOfTablePages", "PageOwnershipError",
           "PAGE_SIZE"]

PAGE_SIZE = 4096
_WORDS_PER_PAGE = PAGE_SIZE // 8


class MemoryAccessError(Exception):
    """An access outside the backed range, a misaligned access, or a poisoned word.

    The reference walker turns this into a ``bus_error`` fault; everywhere else it is a
    programming error and propagates.
    """


class OutOfTablePages(MemoryError):
    """The page allocator has no free page (or no free aligned block) left."""


class PageOwnershipError(RuntimeError):
    """Model code wrote a page allocated with an owner token without presenting it.

    A confidential VM's external page tables belong to the TDX module: the hypervisor
    (the TDP core) may not write them. Not a :class:`MemoryAccessError`, so the
    reference walker never turns it into a bus error.
    """


class HostMemory:
    """Word-addressed host memory with a page allocator for page-table pages.

    Parameters
    ----------
    size : int
        Bytes of backed memory, a multiple of 4 KiB. Storage is a numpy ``uint64`` array
        allocated zero-filled, so untouched pages cost no resident memory.
    base : int
        Host-physical address of the first backed byte (4 KiB aligned).

    Members
    -------
    view : memoryview
        The backing bytes, little-endian, zero-copy: byte ``i`` is host-physical address
        ``base + i``. An AXI memory model serves the RTL from it.
    words : numpy.ndarray
        The same storage as ``uint64`` words.
    capacity : int
        Bytes of backed memory.
    """

    def __init__(self, size=64 << 20, *, base=0):
        if not isinstance(size, int) or size <= 0 or size % PAGE_SIZE:
            raise ValueError(f"HostMemory size must be a positive multiple of 4096 bytes, got {size!r}")
        if not isinstance(base, int) or base < 0 or base % PAGE_SIZE:
            raise ValueError(f"HostMemory base must be a non-negative multiple of 4096, got {base!r}")
        if base + size > 1 << 64:
            raise ValueError("HostMemory extends beyond the 64-bit address space")
        self.base = base
        self.capacity = size
        self.words = np.zeros(size // 8, dtype="<u8")
        self.view = memoryview(self.words).cast("B")
        self._used = np.zeros(size // PAGE_SIZE, dtype=bool)
        self._owner = {}
        self._hint = 0
        self._poisoned = set()

    # -- addressing ----------------------------------------------------------------

    def contains(self, addr, length=8):
        """Whether ``[addr, addr+length)`` lies inside the backed range."""
        return self.base <= addr and addr + length <= self.base + self.capacity

    def _index(self, addr):
        if not isinstance(addr, (int, np.integer)):
            raise TypeError(f"host-physical address must be an integer, got {type(addr).__name__}")
        addr = int(addr)
        if addr % 8:
            raise MemoryAccessError(f"misaligned 64-bit access at {addr:#x}")
        if not self.contains(addr):
            raise MemoryAccessError(
                f"access at {addr:#x} outside host memory "
                f"[{self.base:#x}, {self.base + self.capacity:#x})")
        if addr in self._poisoned:
            raise MemoryAccessError(f"poisoned word at {addr:#x}")
        return (addr - self.base) >> 3

    # -- 64-bit little-endian accessors -------------------------------------------

    def read64(self, addr):
        """Read the 64-bit word at ``addr``."""
        return int(self.words[self._index(addr)])

    def _check_owner(self, index, owner, what):
        """Raise unless the page of word ``index`` is unowned or owned by ``owner``."""
        page_owner = self._owner.get(index // _WORDS_PER_PAGE)
        if page_owner is not None and page_owner != owner:
            page = self.base + index // _WORDS_PER_PAGE * PAGE_SIZE
            raise PageOwnershipError(
                f"{what} at {self.base + index * 8:#x}: page {page:#x} belongs to "
                f"{page_owner!r}; only its owner may write it")

    def write64(self, addr, value, *, owner=None):
        """Write the 64-bit word at ``addr``. A page allocated with an owner token
        is written only when ``owner`` is that token (:class:`PageOwnershipError`)."""
        if not 0 <= value < 1 << 64:
            raise ValueError(f"value {value:#x} does not fit in 64 bits")
        index = self._index(addr)
        if self._owner:
            self._check_owner(index, owner, "write64")
        self.words[index] = value

    def cmpxchg64(self, addr, old, new, *, owner=None):
        """Replace the word at ``addr`` with ``new`` if it still holds ``old``.

        Returns ``(ok, current)`` where ``current`` is the word before the call, as an
        atomic compare-exchange does. The model is single-threaded, so this is atomic
        with respect to everything that goes through this object (the AXI slave too).
        Owned pages need their ``owner``, as for :meth:`write64`.
        """
        if not 0 <= new < 1 << 64:
            raise ValueError(f"value {new:#x} does not fit in 64 bits")
        index = self._index(addr)
        if self._owner:
            self._check_owner(index, owner, "cmpxchg64")
        current = int(self.words[index])
        if current != old:
            return False, current
        self.words[index] = new
        return True, current

    def read_page(self, addr, nbytes=PAGE_SIZE, *, owner=None):
        """A numpy view of the words of the table at ``addr``, writable for vectorized
        edits unless an owned page is asked for without its ``owner`` (then the view is
        read-only and numpy refuses an assignment)."""
        first = self._index(addr)
        if not self.contains(addr, nbytes) or nbytes % 8:
            raise MemoryAccessError(f"table of {nbytes} bytes at {addr:#x} outside host memory")
        words = self.words[first:first + nbytes // 8]
        if self._owner:
            pages = range(first // _WORDS_PER_PAGE, (first + nbytes // 8 - 1) // _WORDS_PER_PAGE + 1)
            if any(self._owner.get(page, owner) != owner for page in pages):
                words = words.view()
                words.flags.writeable = False
        return words

    # -- fault injection -------------------------------------------------------------

    def poison(self, addr):
        """Make every later access to the word at ``addr`` fail (a bus error)."""
        self._index(addr)
        self._poisoned.add(int(addr))

    @property
    def poisoned(self):
        """The poisoned word addresses, sorted."""
        return sorted(self._poisoned)

    def copy(self):
        """An independent copy: words, allocation state, owners and poisoned words."""
        other = HostMemory(self.capacity, base=self.base)
        other.words[:] = self.words
        other._used[:] = self._used
        other._owner = dict(self._owner)
        other._hint = self._hint
        other._poisoned = set(self._poisoned)
        return other

    def unpoison(self, addr):
        """Undo :meth:`poison`."""
        self._poisoned.discard(int(addr))

    # -- page allocator --------------------------------------------------------------

    @property
    def total_pages(self):
        return len(self._used)

    @property
    def free_pages(self):
        """Number of free 4 KiB pages."""
        return int(len(self._used) - np.count_nonzero(self._used))

    def alloc_table(self, nbytes=PAGE_SIZE, *, owner=None):
        """Allocate a zeroed, naturally aligned table of ``nbytes`` (4 KiB or 16 KiB).

        ``owner`` tags the pages (for example the external page-table manager of a
        confidential VM); :meth:`owner_of` reads it back.
        """
        if nbytes not in (PAGE_SIZE, 4 * PAGE_SIZE):
            raise ValueError(f"table size must be 4096 or 16384 bytes, got {nbytes}")
        npages = nbytes // PAGE_SIZE
        align = npages
        first_aligned = (-(self.base // PAGE_SIZE)) % align
        if npages == 1:
            start = self._find_free_page()
        else:
            used = self._used[first_aligned:]
            used = used[:len(used) // align * align].reshape(-1, align)
            free_groups = np.flatnonzero(~used.any(axis=1))
            if not len(free_groups):
                raise OutOfTablePages(f"no free {nbytes}-byte aligned block left in host memory")
            start = first_aligned + int(free_groups[0]) * align
        self._used[start:start + npages] = True
        addr = self.base + start * PAGE_SIZE
        first = start * _WORDS_PER_PAGE
        self.words[first:first + npages * _WORDS_PER_PAGE] = 0
        if owner is not None:
            for page in range(start, start + npages):
                self._owner[page] = owner
        return addr

    def _find_free_page(self):
        for lo in (self._hint, 0):
            free = np.flatnonzero(~self._used[lo:])
            if len(free):
                page = lo + int(free[0])
                self._hint = page + 1
                return page
        raise OutOfTablePages("no free 4 KiB page left in host memory")

    def free_table(self, addr, nbytes=PAGE_SIZE):
        """Return a table allocated by :meth:`alloc_table` to the free pool."""
        if addr % nbytes or not self.contains(addr, nbytes):
            raise ValueError(f"{addr:#x} is not a {nbytes}-byte table in host memory")
        start = (addr - self.base) // PAGE_SIZE
        npages = nbytes // PAGE_SIZE
        if not self._used[start:start + npages].all():
            raise ValueError(f"double free of the table at {addr:#x}")
        self._used[start:start + npages] = False
        for page in range(start, start + npages):
            self._owner.pop(page, None)
        self._poisoned = {a for a in self._poisoned if not addr <= a < addr + nbytes}
        self._hint = min(self._hint, start)

    def is_allocated(self, addr):
        return self.contains(addr, 1) and bool(self._used[(addr - self.base) // PAGE_SIZE])

    def owner_of(self, addr):
        """The owner tag given to the page holding ``addr`` when it was allocated."""
        return self._owner.get((addr - self.base) // PAGE_SIZE)

    def reserve(self, addr, nbytes=PAGE_SIZE):
        """Mark pages as in use without zeroing them (pages loaded from a vector file)."""
        if addr % PAGE_SIZE or not self.contains(addr, nbytes):
            raise ValueError(f"cannot reserve {nbytes} bytes at {addr:#x}")
        start = (addr - self.base) // PAGE_SIZE
        self._used[start:start + -(-nbytes // PAGE_SIZE)] = True

    def nonzero_words(self):
        """``{address: word}`` for every non-zero word: a sparse image of the memory."""
        index = np.flatnonzero(self.words)
        return {self.base + int(i) * 8: int(self.words[i]) for i in index}
