"""KVM's ``tdp_iter``: a pre-order walk of one root's tables over a GFN range.

The iterator re-reads an entry before stepping down (the table it names may have been
removed meanwhile), and after a yield restarts from the root at the next GFN it had not
finished (``next_last_level_gfn``), so a walk interrupted any number of times still
visits every GFN of the range. A TD's shared root is indexed with the shared bit while
GFNs stay without it (memslots, flushes and dirty bitmaps use them so): ``gfn_bits``
is added to every table index, as KVM's ``kvm_gfn_root_bits``. See
arch/x86/kvm/mmu/tdp_iter.c.
"""

__all__ = ["TdpIter"]

PAGE_SHIFT = 12          # a GFN is a GPA >> PAGE_SHIFT


class TdpIter:
    """Iterate the entries of the tables rooted at ``root_hpa`` covering ``[start, end)``.

    Use as ``for it in TdpIter(...)``: each step yields the iterator itself with
    ``gfn`` (first GFN the entry maps, without ``gfn_bits``), ``level``, ``sptep``
    (entry address) and ``old_spte`` (the word read). Entries below ``min_level`` are
    not visited.

    Members
    -------
    gfn, level, sptep, old_spte
        The current entry.
    next_last_level_gfn : int
        The GFN the walk resumes from after a yield.
    yielded_gfn : int
        ``next_last_level_gfn`` at the last yield; no yield happens again until the
        walk has moved past it (forward progress).
    yielded : bool
        Set by the caller on a yield; the next step restarts from the root.
    valid : bool
    """

    def __init__(self, mem, fmt, root_hpa, min_level, start, end, gfn_bits=0):
        self.mem = mem
        self.gfn_bits = gfn_bits
        self.fmt = fmt
        self.root_level = fmt.root_level
        self.min_level = min_level
        self.end = end
        self.pt_path = [None] * (self.root_level + 1)
        self.pt_path[self.root_level] = root_hpa
        self.next_last_level_gfn = start
        self.yielded_gfn = start
        self.yielded = False
        self._max_gfn = 1 << (fmt.gpa_bits - PAGE_SHIFT)
        self.restart()

    # tdp_iter_restart
    def restart(self):
        self.yielded = False
        self.yielded_gfn = self.next_last_level_gfn
        self.level = self.root_level
        self.gfn = self._round(self.next_last_level_gfn, self.level)
        self._refresh_sptep()
        self.valid = self.next_last_level_gfn < self._max_gfn

    def _round(self, gfn, level):
        return gfn & ~((self.fmt.page_size(level) >> PAGE_SHIFT) - 1)

    def _refresh_sptep(self):
        self.sptep = self.fmt.entry_addr(self.pt_path[self.level],
                                         (self.gfn | self.gfn_bits) << PAGE_SHIFT, self.level)
        self.old_spte = self.mem.read64(self.sptep)

    def _try_step_down(self):
        if self.level == self.min_level:
            return False
        # Re-read: the entry may have been zapped or replaced since it was read.
        self.old_spte = self.mem.read64(self.sptep)
        child = self.fmt.tdp_child_table(self.old_spte, self.level)
        if child is None:
            return False
        self.level -= 1
        self.pt_path[self.level] = child
        self.gfn = self._round(self.next_last_level_gfn, self.level)
        self._refresh_sptep()
        return True

    def _try_step_side(self):
        if self.fmt.index(self.gfn << PAGE_SHIFT, self.level) == self.fmt.table_entries(self.level) - 1:
            return False
        self.gfn += self.fmt.page_size(self.level) >> PAGE_SHIFT
        self.next_last_level_gfn = self.gfn
        self.sptep += 8
        self.old_spte = self.mem.read64(self.sptep)
        return True

    def _try_step_up(self):
        if self.level == self.root_level:
            return False
        self.level += 1
        self.gfn = self._round(self.gfn, self.level)
        self._refresh_sptep()
        return True

    # tdp_iter_next
    def next(self):
        if self.yielded:
            self.restart()
            return
        if self._try_step_down():
            return
        while True:
            if self._try_step_side():
                return
            if not self._try_step_up():
                break
        self.valid = False

    def __iter__(self):
        while self.valid and self.gfn < self.end:
            yield self
            self.next()
