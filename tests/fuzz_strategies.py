"""Hypothesis strategies for fuzzing the walker: arbitrary PTE words on walk paths.

A drawn :class:`FuzzCase` is a page-table format and up to four VMs of it, each with
its own options (A/D mode, physical-address width, execute-only, NXE), root and a few
walk paths. A path starts well formed (table pointers down to a leaf) and then has
entries damaged: *interesting* bits flipped (every hardware field, every software bit
the TDP core uses, every reserved bit of the level for a leaf and a non-leaf, the bits
around the physical-address width, the high bits 52-63, the low frame bits), a frame
bit below the page size flipped (a misaligned huge page; a pointer to another table, a
page of zeros, or outside memory: a bus error), or the word replaced by a zero, frozen,
random, leaf or table word. Some entries answer with a bus error. Every path is walked
with each access kind in a drawn order, sometimes with a GPA bit beyond the format's
width.

:func:`build` writes a case into a :class:`~sw_model.memory.HostMemory` and returns the
contexts and accesses that :func:`hw.sim.check_against_model` takes.
"""

from dataclasses import dataclass

from hypothesis import strategies as st

from sw_model.formats import ACCESSES, get_format
from sw_model.memory import HostMemory

__all__ = ["FuzzCase", "Path", "Context", "fuzz_case", "build", "interesting_bits"]

#: Backed memory of a case: roots and tables only. Frames beyond it are bus errors.
MEMORY_BYTES = 1 << 20


@dataclass(frozen=True)
class Path:
    """One walk: ``gpa`` and, root first, ``(base, flips)`` per level: the base word
    (``"table"`` to point at the next table, or an integer) and a mask XORed into it
    after the pointer is filled in. ``poison`` names levels whose entry is a bus error."""
    gpa: int
    words: tuple
    poison: frozenset


@dataclass(frozen=True)
class Context:
    """A VM of the case: its options and the paths walked through its root."""
    vm: object
    paths: tuple
    accesses: tuple         # (path index, access, high GPA bits) per access


@dataclass(frozen=True)
class FuzzCase:
    """What the fuzzer draws: a format and up to four VMs of it."""
    fmt_name: str
    contexts: tuple


def interesting_bits(fmt, level, vm):
    """Bits worth flipping in an entry at ``level``: see the module docstring."""
    bits = set()
    for field in list(fmt.fields.values()) + list(fmt.sw_fields.values()):
        bits.update(range(field.lsb, field.lsb + field.width))
    for leaf in (False, True):
        mask = fmt.reserved_mask(level, leaf, vm)
        bits.update(b for b in range(64) if mask >> b & 1)
    bits.update(range(52, 64))
    bits.update(b for b in (vm.pa_bits - 1, vm.pa_bits, vm.pa_bits + 1) if b < 64)
    # A huge frame's low bits (misaligned superpages) and a table pointer's low frame bits
    # (a different table in memory).
    bits.update(range(12, min(12 + 9 * (level - 1) + 2, 64)))
    bits.update(range(64 - 12, 64))
    return sorted(bits)


@st.composite
def vm_options(draw, fmt):
    lo, hi = fmt.pa_bits_range
    pa_bits = draw(st.one_of(st.sampled_from(sorted({lo, fmt.default_pa_bits, hi})),
                             st.integers(lo, hi)))
    return fmt.vm_options(ad=draw(st.sampled_from(fmt.ad_modes)), pa_bits=pa_bits,
                          exec_only=draw(st.booleans()), nxe=draw(st.booleans()))


@st.composite
def leaf_word(draw, fmt, level, vm):
    """A well-formed leaf (at the nearest level that has leaves: bit patterns of a
    huge leaf then land on a level that forbids them)."""
    leaf_level = level if level in fmt.leaf_levels else max(fmt.leaf_levels)
    size = fmt.page_size(leaf_level)
    hpa = draw(st.integers(0, (1 << vm.pa_bits) - 1)) & ~(size - 1)
    # Many leaves grant everything, so that accesses get as far as the A/D rules; the
    # rest favour combinations an access can be denied by (a list, not three booleans:
    # Hypothesis favours all-False, which is only "not present").
    rwx = draw(st.sampled_from(["rwx"] * 4 + ["r", "rw", "rx", "x"] * 2 + ["w", "wx", ""]))
    perms = {k: k in rwx for k in "rwx"}
    if fmt.arch == "npt":
        perms["r"] = True
    memtype = {"ept": draw(st.sampled_from((0, 1, 4, 5, 6))),
               "npt": draw(st.integers(0, 7)), "gstage": None}[fmt.arch]
    return fmt.make_leaf(hpa, leaf_level, memtype=memtype, a=draw(st.booleans()),
                         d=draw(st.booleans()), **perms)


@st.composite
def flips(draw, fmt, level, vm):
    """A mask of one to three interesting bits to XOR into a word."""
    mask = 0
    for bit in draw(st.lists(st.sampled_from(interesting_bits(fmt, level, vm)),
                             min_size=1, max_size=3)):
        mask ^= 1 << bit
    return mask


@st.composite
def damaged(draw, fmt, level, vm, word):
    """``word`` (a ``(base, flips)`` pair) damaged: bits flipped, a frame address bit
    below the page size flipped (a misaligned huge page, or a pointer to another table),
    or the word replaced by a zero, frozen, random, leaf or table word, itself maybe with
    bits flipped."""
    base, mask = word
    kinds = ["flip"] * 4 + ["frame"] * 2 + ["zero", "frozen", "random", "leaf"] \
        + (["table"] if level > 1 else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "flip":
        return base, mask ^ draw(flips(fmt, level, vm))
    if kind == "frame":
        bit = draw(st.integers(fmt.frame_shift, max(fmt.page_shift(level), 13) - 1))
        return base, mask ^ 1 << (fmt.frame_field.lsb + bit - fmt.frame_shift)
    if kind == "leaf":
        base = draw(leaf_word(fmt, level, vm))
    elif kind == "random":
        base = draw(st.integers(0, (1 << 64) - 1))
    else:
        base = {"zero": 0, "frozen": fmt.frozen_word, "table": "table"}[kind]
    return base, draw(flips(fmt, level, vm)) if draw(st.booleans()) else 0


@st.composite
def path(draw, fmt, vm):
    """A well-formed walk to a leaf (mostly at a level that may hold one), then damage
    at none, one or two of its entries: a third of the walks are clean, so that
    accesses reach the permission and A/D rules; the rest fail one rule at a time."""
    gpa = draw(st.integers(0, (1 << fmt.gpa_bits) - 1))
    bottom = draw(st.sampled_from(sorted(fmt.leaf_levels) * 3 + list(range(1, fmt.levels + 1))))
    words = [("table", 0)] * (fmt.levels - bottom) + [(draw(leaf_word(fmt, bottom, vm)), 0)]
    for _ in range(draw(st.sampled_from((0, 0, 1, 1, 1, 2)))):
        level = draw(st.integers(bottom, fmt.levels))
        i = fmt.levels - level
        words[i] = draw(damaged(fmt, level, vm, words[i]))
    poison = draw(st.frozensets(st.integers(bottom, fmt.levels), max_size=1)
                  if draw(st.integers(0, 7)) == 0 else st.just(frozenset()))
    return Path(gpa, tuple(words), poison)


@st.composite
def context(draw, fmt):
    vm = draw(vm_options(fmt))
    paths = draw(st.lists(path(fmt, vm), min_size=1, max_size=3))
    # Each walk is taken with every access kind, in a drawn order (the A/D updates of one
    # change what the next sees); one in six with a GPA bit beyond the format's width.
    accesses = []
    for index in range(len(paths)):
        high = draw(st.sampled_from((0, 0, 0, 0, 0, 1)))
        accesses.extend((index, access, high) for access in draw(st.permutations(ACCESSES)))
    return Context(vm, tuple(paths), tuple(accesses))


def fuzz_case(fmt_name, max_vms=4):
    """Strategy for a :class:`FuzzCase` of the format ``fmt_name``."""
    fmt = get_format(fmt_name)
    return st.builds(FuzzCase, st.just(fmt_name),
                     st.lists(context(fmt), min_size=1, max_size=max_vms).map(tuple))


def build(case):
    """``(memory, contexts, accesses, per_context)``: the case written into a fresh
    HostMemory, the VmContexts, the accesses as ``(gpa, access, vm index)``, and for
    each VM its ``(root, [(gpa, access)])`` (what a single-VM vector file needs)."""
    from hw.sim import VmContext
    fmt = get_format(case.fmt_name)
    memory = HostMemory(MEMORY_BYTES)
    contexts, accesses, per_context = [], [], []
    poison = set()
    children = {}            # entry address -> the table it points to: paths share them
    for index, ctx in enumerate(case.contexts):
        root = memory.alloc_table(fmt.root_table_bytes)
        gpas = []
        for p in ctx.paths:
            table = root
            for level, (base, flips) in zip(range(fmt.levels, 0, -1), p.words):
                addr = fmt.entry_addr(table, p.gpa, level)
                if base == "table":
                    child = children.get(addr)
                    if child is None:
                        child = children[addr] = memory.alloc_table()
                    word = fmt.make_table(child) ^ flips
                    table = child
                else:
                    word = base ^ flips
                memory.write64(addr, word)
                if level in p.poison:
                    poison.add(addr)
            gpas.append(p.gpa)
        mine = []
        for path_index, access, high in ctx.accesses:
            gpa = gpas[path_index] | (high << fmt.gpa_bits if fmt.gpa_bits < 64 else 0)
            accesses.append((gpa, access, index))
            mine.append((gpa, access))
        contexts.append(VmContext(fmt, root, ctx.vm))
        per_context.append((root, mine))
    for addr in sorted(poison):
        memory.poison(addr)
    return memory, contexts, accesses, per_context
