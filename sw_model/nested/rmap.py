"""Reverse maps of the shadow MMU, in the shape of KVM's (arch/x86/kvm/mmu/mmu.c).

A reverse map lists the shadow entries (their host addresses, ``sptep``) that point at
one thing: the leaves that map one (L1 GFN, level), or the entries that link one shadow
page (its ``parent_ptes``). Most lists hold one entry, so the head holds it inline; a
longer list is a chain of fixed-size descriptors (``struct pte_list_desc``, 14 entries)
taken from a :class:`DescCache`. As in KVM, only the head descriptor may be partly
filled: a new head is allocated when it is full, and a removal moves the head's last
entry into the hole, so every tail descriptor stays full and ``tail_count`` is stable.

A head is ``None`` (empty), an ``int`` (one sptep) or a :class:`PteListDesc`; the
functions return the new head, as KVM writes ``rmap_head->val``.
"""

__all__ = ["PTE_LIST_EXT", "PteListDesc", "DescCache", "DescCacheEmpty", "pte_list_add",
           "pte_list_remove", "pte_list_need_new_desc", "pte_list_count", "pte_list_sptes",
           "check_pte_list"]

#: Entries per descriptor (KVM's PTE_LIST_EXT: a 128-byte ``pte_list_desc``).
PTE_LIST_EXT = 14


class PteListDesc:
    """KVM's ``struct pte_list_desc``.

    Members
    -------
    sptes : list
        ``PTE_LIST_EXT`` slots, the first ``spte_count`` in use.
    spte_count : int
    tail_count : int
        Entries in the descriptors after this one (all full).
    more : PteListDesc or None
        The next descriptor.
    """
    __slots__ = ("sptes", "spte_count", "tail_count", "more")

    def __init__(self):
        self.sptes = [None] * PTE_LIST_EXT
        self.spte_count = self.tail_count = 0
        self.more = None


class DescCacheEmpty(RuntimeError):
    """A descriptor was taken from an empty cache (a bug: callers check first)."""


class DescCache:
    """KVM's ``kvm_mmu_memory_cache`` of ``pte_list_desc`` objects: filled up to its
    capacity in advance (``topup``, where KVM may sleep), taken from where it may not.

    Parameters
    ----------
    capacity : int
        Objects after a top-up.

    Members
    -------
    allocated : int
        Descriptors taken so far.
    """

    def __init__(self, capacity):
        if not isinstance(capacity, int) or capacity < 0:
            raise ValueError(f"capacity must be a non-negative integer, got {capacity!r}")
        self.capacity = capacity
        self._free = 0
        self.allocated = 0

    def __len__(self):
        return self._free

    def topup(self, minimum=None):
        """Refill to capacity when fewer than ``minimum`` (default: capacity) are left
        (``kvm_mmu_topup_memory_cache``)."""
        if self._free < (self.capacity if minimum is None else minimum):
            self._free = self.capacity

    def alloc(self):
        if not self._free:
            raise DescCacheEmpty("pte_list_desc cache is empty")
        self._free -= 1
        self.allocated += 1
        return PteListDesc()


def pte_list_need_new_desc(head):
    """Whether adding an entry to ``head`` takes a descriptor from the cache."""
    if head is None:
        return False
    return isinstance(head, int) or head.spte_count == PTE_LIST_EXT


def pte_list_add(cache, head, sptep):
    """KVM's ``pte_list_add``: ``head`` with ``sptep`` added."""
    if head is None:
        return sptep
    if isinstance(head, int):
        desc = cache.alloc()
        desc.sptes[0], desc.sptes[1] = head, sptep
        desc.spte_count = 2
        return desc
    if head.spte_count == PTE_LIST_EXT:
        desc = cache.alloc()
        desc.more = head
        desc.tail_count = head.tail_count + head.spte_count
        head = desc
    head.sptes[head.spte_count] = sptep
    head.spte_count += 1
    return head


def pte_list_remove(head, sptep):
    """KVM's ``pte_list_remove``: ``head`` without ``sptep`` (which must be there).
    An emptied head descriptor is freed and the next one becomes the head."""
    if head is None:
        raise KeyError(f"sptep {sptep:#x}: empty rmap")
    if isinstance(head, int):
        if head != sptep:
            raise KeyError(f"sptep {sptep:#x}: rmap holds {head:#x}")
        return None
    desc = head
    while desc is not None:
        for i in range(desc.spte_count):
            if desc.sptes[i] == sptep:
                last = head.spte_count - 1
                desc.sptes[i] = head.sptes[last]
                head.sptes[last] = None
                head.spte_count = last
                if last:
                    return head
                return head.more
        desc = desc.more
    raise KeyError(f"sptep {sptep:#x}: not in the rmap")


def pte_list_count(head):
    """KVM's ``pte_list_count``."""
    if head is None:
        return 0
    if isinstance(head, int):
        return 1
    return head.tail_count + head.spte_count


def pte_list_sptes(head):
    """The entries of ``head``, head descriptor first (``for_each_rmap_spte``)."""
    if head is None:
        return []
    if isinstance(head, int):
        return [head]
    out = []
    desc = head
    while desc is not None:
        out.extend(desc.sptes[:desc.spte_count])
        desc = desc.more
    return out


def check_pte_list(head):
    """Raise AssertionError unless ``head`` has KVM's shape: a non-empty head
    descriptor, full tail descriptors, correct ``tail_count`` and no empty slot
    in use."""
    if head is None or isinstance(head, int):
        return
    assert head.spte_count > 0, "empty head descriptor"
    desc, first = head, True
    while desc is not None:
        assert first or desc.spte_count == PTE_LIST_EXT, "a tail descriptor is not full"
        assert all(s is not None for s in desc.sptes[:desc.spte_count]), "hole in a descriptor"
        assert all(s is None for s in desc.sptes[desc.spte_count:]), "stale slot in a descriptor"
        tail = 0 if desc.more is None else desc.more.tail_count + desc.more.spte_count
        assert desc.tail_count == tail, f"tail_count {desc.tail_count}, expected {tail}"
        desc, first = desc.more, False
