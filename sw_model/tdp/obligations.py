"""Flush obligations: what the hardware's TLBs and page-walk caches may still hold, and
the check that the MMU flushed whatever it made stale (KVM's TLB-flush rules).

:class:`FlushObligations` is a :class:`~sw_model.tdp.flush.FlushSink` that sits in front
of another sink (a :class:`~sw_model.tdp.flush.FlushRecorder`, the RTL's invalidation
port) and forwards every request to it. It keeps the *held set*: every translation a
TLB, and every non-leaf entry a page-walk cache, may have cached since the last flush
that covered it, per table tree the hardware walks (every root but a TD's mirror, and
a TD's external root; a TD's translations are in the ``"private"`` or ``"shared"``
space, an ordinary VM's in ``"both"``).

The hardware may cache what the tables say at any time, so the held set takes in the
whole of the current tables (a snapshot) at every flush before the flush removes what
it covers, at the end of every MMU operation, and whenever the harness says the
hardware walked (:meth:`FlushObligations.observe`). A flush removes what
:class:`~sw_model.tdp.flush.FlushSink` says it does: ``flush_all`` everything of its
space, ``flush_range`` the translations overlapping its GFNs (a huge page partly inside
goes whole) and the non-leaf entries whose region overlaps them.

At the end of every operation (:meth:`FlushSink.op_done`, called by the MMU's
``_end_op``) each held entry must still be allowed by the tables, else
:class:`FlushObligationError` names the operation, the GFN and space, the cached and
the current translation, and the rule broken:

- :data:`RULE_UNMAP`: the GFN is unmapped or maps another frame.
- :data:`RULE_TABLE`: a cached non-leaf entry names a table no longer linked there
  (removed, so freed by now and free to be reused), or the root itself was freed.
- :data:`RULE_PERMISSION`: read or execute is gone, or write is gone with the
  MMU-writable bit (write tracking; spte.h: only MMU-writable going from 1 to 0 needs
  an immediate flush).
- :data:`RULE_DIRTY_LOG`: write (MMU-writable kept) or D is gone, the write-protection
  of dirty logging: KVM flushes it before the log is reported, so it is checked at the
  end of an operation that reports or re-protects the GFN's log (``logged``).
- :data:`RULE_ACCESSED`: the Accessed state is gone (A bit, or access tracking).

Allowances, each what KVM relies on:

- A translation that gained permissions (a spurious fault fixes a stale one), or that
  is now served by other entries with the same frames and at least its rights (a split
  huge page), needs no flush.
- Write-protection for dirty logging may stay stale until its log is reported (the
  vCPU's writes through a stale writable entry were logged when it became writable).
- Aging may leave the Accessed state stale when its caller asks for no flush
  (``aged``; KVM's ``kvm_age_gfn`` does not flush: a stale entry only makes a used page
  look old). The held translation then counts as not accessed.

A held translation is dropped once entries within its own range that are held too
dominate it (the same frames, at least its rights: a newer leaf at the same GFN and
level, or the pieces of its split): a flush that covers any of them covers it, and a
change that makes it stale makes one of them stale. A translation served by a larger
leaf stays held (a range flush may cover that leaf and miss it).

Cost: one walk of the trees per snapshot, but a table page whose words are unchanged
since the last snapshot is not parsed again, and a split is recognised by comparing
whole table pages with the format's own ``tdp_split_children``.
"""

import numpy as np

from .flush import FlushSink, check_space
from .iter import PAGE_SHIFT

__all__ = ["FlushObligations", "FlushObligationError", "RULE_UNMAP", "RULE_TABLE",
           "RULE_PERMISSION", "RULE_DIRTY_LOG", "RULE_ACCESSED"]

RULE_UNMAP = "flush after an unmap or a frame change"
RULE_TABLE = "flush before a freed table is reused"
RULE_PERMISSION = "flush after a permission reduction"
RULE_DIRTY_LOG = "flush before the dirty log is reported"
RULE_ACCESSED = "flush after clearing the Accessed state, unless the caller asks for none"

_RIGHTS = ("read", "write", "execute", "accessed", "dirty")

#: Rights lost under the dirty-logging rule (with MMU-writable kept for "write").
_LOGGING = frozenset({"write", "dirty"})


class FlushObligationError(AssertionError):
    """A translation the hardware may still hold is more permissive than the tables,
    and no flush covered it."""


def _covers(flush_space, space):
    return flush_space == "both" or space in (flush_space, "both")


def _show(translation):
    frame, rights = translation
    return f"{frame:#x} " + ("+".join(r for r in _RIGHTS if r in rights) or "no rights")


class FlushObligations(FlushSink):
    """A sink that forwards to ``sink`` and checks the MMU's flush obligations.

    Give it to the VM as its ``flush_sink``; the VM attaches itself. Translations are
    ``(frame, rights)`` with the format's ``tdp_leaf_rights``; held entries are keyed
    ``(space, root, gfn, level)``.

    Parameters
    ----------
    sink : FlushSink, optional
        Where the flushes go (default: dropped).

    Members
    -------
    sink : FlushSink
    supports_ranges : bool
        The wrapped sink's (read each time).
    checks : int
        Operations checked so far.
    """

    def __init__(self, sink=None):
        self.sink = FlushSink() if sink is None else sink
        self.checks = 0
        self._mmu = None
        self._leaves = {}        # key -> the latest leaf word seen there
        self._stale = {}         # key -> {(frame, rights)}: older translations still held
        self._walks = {}         # key -> the table the latest non-leaf entry names
        self._stale_walks = {}   # key -> {table}: older non-leaf entries still held
        self._tables = {}        # (space, root, table, level, gfn) -> parsed table page
        self._translations = {}  # (word, level) -> (frame, rights)

    @property
    def supports_ranges(self):
        return self.sink.supports_ranges

    def attach(self, mmu):
        if self._mmu is not None and self._mmu is not mmu:
            raise ValueError("FlushObligations: already attached to another MMU")
        self._mmu = mmu
        fmt = mmu.fmt
        self._pages = {level: fmt.page_size(level) >> PAGE_SHIFT
                       for level in range(1, fmt.levels + 1)}
        self.sink.attach(mmu)

    # -- what the hardware may cache -----------------------------------------------------

    def observe(self):
        """The hardware may have walked, and cached, the tables as they are now."""
        leaves, walks, _ = self._snapshot()
        for key, word in leaves.items() - self._leaves.items():
            old = self._leaves.get(key)
            if old is not None:
                self._hold(key, self._translation(old, key[3]), word)
        self._leaves.update(leaves)
        for key, table in walks.items() - self._walks.items():
            old = self._walks.get(key)
            if old is not None:
                self._stale_walks.setdefault(key, set()).add(old)
        self._walks.update(walks)

    def _hold(self, key, translation, word):
        """Keep ``translation`` held at ``key`` beside the leaf ``word`` now there,
        unless ``word`` dominates it (same frame, at least its rights)."""
        frame, rights = self._translation(word, key[3])
        if translation[0] != frame or not translation[1] <= rights:
            self._stale.setdefault(key, set()).add(translation)

    def _snapshot(self):
        """``({key: word} of leaves, {key: table} of non-leaf entries, {(space, root)})``
        of every tree the hardware walks; a table page whose words did not change since
        the last snapshot is not parsed again."""
        mmu = self._mmu
        fmt, mem = mmu.fmt, mmu.mem
        leaves, walks, tables = {}, {}, {}
        roots = mmu.hardware_roots()
        for space, root, bits in roots:
            stack = [(root, fmt.root_level, 0)]
            while stack:
                table, level, gfn = stack.pop()
                key = (space, root, table, level, gfn)
                words = mem.read_page(table, fmt.table_bytes(level))
                seen = self._tables.get(key)
                if seen is None or not np.array_equal(seen[0], words):
                    seen = self._parse(space, root, words, level, gfn, bits)
                tables[key] = seen
                leaves.update(seen[1])
                walks.update(seen[2])
                stack.extend(seen[3])
        self._tables = tables
        return leaves, walks, {(space, root) for space, root, _ in roots}

    def _parse(self, space, root, words, level, gfn, bits):
        """``(words, leaves, walks, children)`` of one table page (a last-level entry
        always maps a page, as KVM's ``is_last_spte`` says)."""
        fmt = self._mmu.fmt
        step = self._pages[level]
        leaves, walks, children = {}, {}, []
        for index in fmt.tdp_present_mask(words).nonzero()[0]:
            word = int(words[index])
            at = (gfn + int(index) * step) & ~bits
            child = None if level == 1 else fmt.tdp_child_table(word, level)
            if child is None:
                leaves[(space, root, at, level)] = word
            else:
                walks[(space, root, at, level)] = child
                children.append((child, level - 1, at))
        return words.copy(), leaves, walks, children

    def _translation(self, word, level):
        key = (word, level)
        found = self._translations.get(key)
        if found is None:
            fmt = self._mmu.fmt
            found = self._translations[key] = (
                fmt.tdp_spte_frame(word, level),
                fmt.tdp_leaf_rights(word, level, self._mmu.opts))
        return found

    # -- flushes -------------------------------------------------------------------------

    def _drop(self, covered):
        self._leaves = {k: v for k, v in self._leaves.items() if not covered(k)}
        self._stale = {k: v for k, v in self._stale.items() if not covered(k)}
        self._walks = {k: v for k, v in self._walks.items() if not covered(k)}
        self._stale_walks = {k: v for k, v in self._stale_walks.items() if not covered(k)}

    def flush_all(self, *, space="both"):
        check_space(space)
        self.observe()
        if space == "both":
            self._leaves, self._stale, self._walks, self._stale_walks = {}, {}, {}, {}
            self.sink.flush_all()
        else:
            self._drop(lambda key: _covers(space, key[0]))
            self.sink.flush_all(space=space)

    def flush_range(self, gfn, npages, *, space="both"):
        check_space(space)
        self.observe()
        end, pages = gfn + npages, self._pages
        self._drop(lambda key: _covers(space, key[0]) and key[2] < end
                   and key[2] + pages[key[3]] > gfn)
        if space == "both":
            self.sink.flush_range(gfn, npages)
        else:
            self.sink.flush_range(gfn, npages, space=space)

    # -- the check -----------------------------------------------------------------------

    def op_done(self, op, *, aged=None, logged=None):
        """Check every held entry against the tables after ``op`` (see the module
        docstring for the rules and allowances), then hold the tables as they are."""
        self.checks += 1
        leaves, walks, live = self._snapshot()
        held = [(key, self._translation(word, key[3]), word)
                for key, word in self._leaves.items() - leaves.items()]
        held += [(key, t, None) for key, ts in self._stale.items() for t in ts]
        problems, stale = [], {}
        # In key order, so that the first problem reported is the lowest GFN's.
        for key, translation, word in sorted(held, key=lambda h: h[0]):
            verdict = self._judge(key, translation, word, leaves, walks, live, aged, logged)
            if isinstance(verdict, str):
                problems.append(f"{op}: {self._where(key)}: cached {_show(translation)}, "
                                f"{verdict}; no flush covered it")
            elif verdict is not None:
                stale.setdefault(key, set()).add(verdict)
        walked = [(key, table) for key, table in self._walks.items() - walks.items()]
        walked += [(key, t) for key, ts in self._stale_walks.items() for t in ts
                   if walks.get(key) != t]
        for key, table in sorted(walked):
            now = ("root freed" if key[:2] not in live else
                   "a leaf" if key in leaves else
                   f"table {walks[key]:#x}" if key in walks else "not present")
            problems.append(f"{op}: {self._where(key)}: cached non-leaf entry to table "
                            f"{table:#x}, now {now}: {RULE_TABLE}; no flush covered it")
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise FlushObligationError(problems[0] + more)
        self._leaves, self._stale = leaves, stale
        self._walks, self._stale_walks = walks, {}
        self.sink.op_done(op, aged=aged, logged=logged)

    @staticmethod
    def _where(key):
        space, root, gfn, level = key
        return f"gfn {gfn:#x} level {level} ({space}, root {root:#x})"

    def _judge(self, key, translation, word, leaves, walks, live, aged, logged):
        """A broken rule as text; else the translation to keep holding (stale but
        allowed, or served by a larger leaf), or None when the current entries within
        its range dominate it. ``word``: the held leaf word, when known."""
        space, root, gfn, level = key
        if (space, root) not in live:
            return f"now root freed: {RULE_TABLE}"
        if word is not None and key in walks and self._split_of(word, key, walks):
            return None
        pieces, hole = self._current(key, leaves, walks)
        if hole is not None:
            return f"now gfn {hole:#x} not mapped: {RULE_UNMAP}"
        fmt = self._mmu.fmt
        frame, rights = translation
        end = gfn + self._pages[level]
        lost = set()
        for piece_gfn, piece_level, piece in pieces:
            now = self._translation(piece, piece_level)
            first = max(gfn, piece_gfn)
            shown = f"now {_show(now)} at level {piece_level}"
            if (frame + ((first - gfn) << PAGE_SHIFT)
                    != now[0] + ((first - piece_gfn) << PAGE_SHIFT)):
                return f"{shown}: {RULE_UNMAP}"
            missing = rights - now[1]
            if not missing:
                continue
            lost |= missing
            if missing & {"read", "execute"} or ("write" in missing
                                                  and not fmt.tdp_is_mmu_writable(piece)):
                return f"{shown}: {RULE_PERMISSION}"
            if missing & _LOGGING and logged is not None and gfn < logged[1] and logged[0] < end:
                return f"{shown}: {RULE_DIRTY_LOG}"
            if "accessed" in missing and not (aged is not None
                                              and gfn < aged[1] and aged[0] < end):
                return f"{shown}: {RULE_ACCESSED}"
        if lost:
            return (frame, rights - (lost & {"accessed"}))
        # Dominated when its own range holds the pieces (a flush may cover a larger
        # leaf serving it without covering it).
        return translation if pieces[0][1] > level else None

    def _split_of(self, word, key, walks):
        """Whether the tables now under ``key`` hold exactly the split of the held huge
        leaf ``word`` (the last level made executable is a gained right), compared a
        table page at a time with the format's own split."""
        space, root, gfn, level = key
        fmt, opts = self._mmu.fmt, self._mmu.opts
        words = self._tables[(space, root, walks[key], level - 1, gfn)][0]
        children = fmt.tdp_split_children(word, level, opts)
        differ = words != children
        if level == 2:
            differ &= words != fmt.tdp_split_children(word, level, opts, executable=True)
        step = self._pages[level - 1]
        for index in differ.nonzero()[0]:
            child_key = (space, root, gfn + int(index) * step, level - 1)
            if child_key not in walks or not self._split_of(int(children[index]), child_key,
                                                             walks):
                return False
        return True

    def _current(self, key, leaves, walks):
        """``(pieces, hole)``: the current leaves ``(gfn, level, word)`` of the same tree
        covering ``key``'s range, and the first GFN of it not mapped (or None)."""
        space, root, gfn, level = key
        pages = self._pages
        for above in range(self._mmu.fmt.root_level, level, -1):
            first = gfn & ~(pages[above] - 1)
            word = leaves.get((space, root, first, above))
            if word is not None:
                return [(first, above, word)], None
            if (space, root, first, above) not in walks:
                return [], gfn
        pieces = []
        stack = [(gfn, level)]
        while stack:
            at, lvl = stack.pop()
            word = leaves.get((space, root, at, lvl))
            if word is not None:
                pieces.append((at, lvl, word))
            elif (space, root, at, lvl) in walks:
                step = pages[lvl - 1]
                stack.extend((at + i * step, lvl - 1)
                             for i in range(self._mmu.fmt.table_entries(lvl - 1)))
            else:
                return pieces, at
        return pieces, None
