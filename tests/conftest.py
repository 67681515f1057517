"""Shared test helpers: raw page-table words encoded by hand from the manuals' bit layouts,
and a small builder that writes a walk into a :class:`~sw_model.memory.HostMemory`.

The encoders here are deliberately independent of ``sw_model.formats`` (its
``make_leaf``/``make_table`` are what the format tests check), and so is the index
arithmetic: every table index is taken from the GPA bits the manuals name.

- Intel EPT: SDM Vol. 3C §29.3.2 "EPT Translation Mechanism", Tables 29-1 to 29-7.
- AMD NPT: APM Vol. 2 §5.3.3-§5.3.5 and §5.4.1 (long-mode entries),
  used unchanged by nested paging (§15.25.5).
- RISC-V G-stage: Privileged spec, "Sv39" PTE layout (Figure "Sv39 page table entry")
  and Hypervisor extension, "Guest Physical Address Translation" (16 KiB root, 2 extra
  GPA bits indexed at the root).
"""

import os
import pathlib
import re

import pytest
from hypothesis import HealthCheck, Phase, settings

from sw_model.formats import get_format
from sw_model.memory import HostMemory
from sw_model.walker import translate

# -- geometry, from the manuals -------------------------------------------------------


def page_shift(level):
    """Level 1 maps 4 KiB, each level above it 9 more GPA bits (all three manuals)."""
    return 12 + 9 * (level - 1)


#: Levels, root index bits and GPA width per format, as the manuals give them.
GEOMETRY = {
    "ept4": (4, 9, 48), "ept5": (5, 9, 57),
    "npt4": (4, 9, 48), "npt5": (5, 9, 57),
    "sv39x4": (3, 11, 41), "sv48x4": (4, 11, 50), "sv57x4": (5, 11, 59),
}
ARCH = {"ept4": "ept", "ept5": "ept", "npt4": "npt", "npt5": "npt",
        "sv39x4": "gstage", "sv48x4": "gstage", "sv57x4": "gstage"}


def index_of(name, gpa, level):
    """The table index for ``gpa`` at ``level``: GPA bits page_shift(level)+width-1 down."""
    levels, root_bits, _ = GEOMETRY[name]
    width = root_bits if level == levels else 9
    return (gpa >> page_shift(level)) & ((1 << width) - 1)


def make_gpa(name, indices, offset=0):
    """The GPA whose index at each level is ``indices[level]`` (missing levels: 0)."""
    gpa = offset
    for level, index in indices.items():
        gpa |= index << page_shift(level)
    return gpa


def spread_gpa(name, offset=0xabc):
    """A GPA with a different non-zero index at every level (and a root index that needs
    the G-stage root's two extra bits), so a wrong index shows up as a wrong address."""
    levels, root_bits, _ = GEOMETRY[name]
    indices = {level: 0x11 * level + 3 for level in range(1, levels)}
    indices[levels] = (1 << root_bits) - 5
    return make_gpa(name, indices, offset)


# -- Intel EPT entries (SDM Vol. 3C Tables 29-1 to 29-7) ---------------------------------

EPT_R, EPT_W, EPT_X = 1 << 0, 1 << 1, 1 << 2
EPT_IPAT, EPT_PS, EPT_A, EPT_D = 1 << 6, 1 << 7, 1 << 8, 1 << 9
EPT_MT_UC, EPT_MT_WC, EPT_MT_WT, EPT_MT_WP, EPT_MT_WB = 0, 1, 4, 5, 6


def ept_table(addr, xwr=0b111, extra=0):
    """An EPT entry referencing a table: bits 2:0 X/W/R, address in 51:12."""
    return addr | xwr | extra


def ept_leaf(hpa, level, xwr=0b111, mt=EPT_MT_WB, a=False, d=False, extra=0):
    """An EPT entry mapping a page: memory type in 5:3, bit 7 set above level 1."""
    return (hpa | xwr | mt << 3 | (EPT_PS if level > 1 else 0)
            | (EPT_A if a else 0) | (EPT_D if d else 0) | extra)


# Exit qualification for EPT violations (SDM Vol. 3C Table 28-7).
Q_READ, Q_WRITE, Q_FETCH = 1 << 0, 1 << 1, 1 << 2
Q_READABLE, Q_WRITABLE, Q_EXECUTABLE = 1 << 3, 1 << 4, 1 << 5
Q_ACCESS = {"read": Q_READ, "write": Q_WRITE, "execute": Q_FETCH}

# -- AMD NPT entries (APM Vol. 2 §5.3.3-§5.3.5, §5.4.1) ------------------------------

NPT_P, NPT_RW, NPT_US, NPT_PWT, NPT_PCD = 1 << 0, 1 << 1, 1 << 2, 1 << 3, 1 << 4
NPT_A, NPT_D, NPT_PS, NPT_G, NPT_NX = 1 << 5, 1 << 6, 1 << 7, 1 << 8, 1 << 63
NPT_PAT_4K, NPT_PAT_LARGE = 1 << 7, 1 << 12


def npt_table(addr, flags=NPT_P | NPT_RW | NPT_US, extra=0):
    return addr | flags | extra


def npt_leaf(hpa, level, *, rw=True, us=True, nx=False, a=False, d=False,
             pat=0, extra=0):
    """A long-mode entry mapping a page; ``pat`` is the 3-bit PAT index PAT:PCD:PWT."""
    word = hpa | NPT_P | (NPT_RW if rw else 0) | (NPT_US if us else 0)
    word |= (NPT_A if a else 0) | (NPT_D if d else 0) | (NPT_NX if nx else 0)
    word |= (NPT_PWT if pat & 1 else 0) | (NPT_PCD if pat & 2 else 0)
    if level > 1:
        word |= NPT_PS | (NPT_PAT_LARGE if pat & 4 else 0)
    else:
        word |= NPT_PAT_4K if pat & 4 else 0
    return word | extra


# #PF error-code bits (APM Vol. 2 §8.4.2) and #NPF EXITINFO1 bit 32 (§15.25.6).
EC_P, EC_W, EC_U, EC_RSV, EC_ID = 1 << 0, 1 << 1, 1 << 2, 1 << 3, 1 << 4
EC_FINAL = 1 << 32

# -- RISC-V G-stage entries (Privileged spec, Sv39/Sv48/Sv57 PTE) -------------------------

GS_V, GS_R, GS_W, GS_X, GS_U, GS_G, GS_A, GS_D = (1 << i for i in range(8))
GS_RWX = {"r": GS_R, "w": GS_W, "x": GS_X}


def gs_table(addr, extra=0):
    """A non-leaf PTE: V set, R=W=X=0, PPN (bits 53:10) = addr >> 12."""
    return (addr >> 12) << 10 | GS_V | extra


def gs_leaf(hpa, perms="rwx", *, u=True, a=False, d=False, extra=0):
    word = (hpa >> 12) << 10 | GS_V | (GS_U if u else 0)
    for letter in perms:
        word |= GS_RWX[letter]
    return word | (GS_A if a else 0) | (GS_D if d else 0) | extra


GPF_CAUSE = {"execute": 20, "read": 21, "write": 23}       # guest-page faults
ACCESS_FAULT_CAUSE = {"execute": 1, "read": 5, "write": 7}

ACCESSES = ("read", "write", "execute")


def default_pointer(name):
    return {"ept": ept_table, "npt": npt_table, "gstage": gs_table}[ARCH[name]]


class Walk:
    """One format's tables in a fresh HostMemory, written entry by entry.

    Members
    -------
    fmt, vm
        The format under test and its VM options.
    mem : HostMemory
    root : int
        The root table (16 KiB for G-stage, per the Hypervisor extension; 4 KiB else).
    """

    def __init__(self, name, *, mem=None, **vm_options):
        self.name = name
        self.fmt = get_format(name)
        self.vm = self.fmt.vm_options(**vm_options)
        self.levels = GEOMETRY[name][0]
        self.mem = mem if mem is not None else HostMemory(2 << 20)
        self.root = self.mem.alloc_table(16384 if ARCH[name] == "gstage" else 4096)
        self._child = {}

    def entry_addr(self, table, gpa, level):
        return table + 8 * index_of(self.name, gpa, level)

    def build(self, gpa, level, word, pointer=None):
        """Write pointer entries from the root down to ``level + 1`` (new tables as needed)
        and ``word`` at ``level`` for ``gpa``. ``pointer(level, table_addr)`` overrides the
        pointer words. Returns the entry addresses, root first."""
        pointer = pointer or (lambda lvl, addr: default_pointer(self.name)(addr))
        addrs, table = [], self.root
        for lvl in range(self.levels, level, -1):
            addr = self.entry_addr(table, gpa, lvl)
            child = self._child.get(addr)
            if child is None:
                child = self._child[addr] = self.mem.alloc_table(4096)
            self.mem.write64(addr, pointer(lvl, child))
            addrs.append(addr)
            table = child
        addr = self.entry_addr(table, gpa, level)
        self.mem.write64(addr, word)
        addrs.append(addr)
        return addrs

    def words(self, addrs):
        return [self.mem.read64(a) for a in addrs]

    def translate(self, gpa, access, **kwargs):
        return translate(self.mem, self.fmt, self.root, gpa, access, vm=self.vm, **kwargs)


def assert_translation(result, *, hpa, level, pte_addrs, memtype=None, perms=None):
    assert result.ok, f"expected a translation, got {result}"
    assert result.hpa == hpa, f"hpa {result.hpa:#x} != {hpa:#x}"
    assert result.level == level
    assert list(result.pte_addrs) == list(pte_addrs)
    if memtype is not None:
        assert result.memtype == memtype
    if perms is not None:
        assert {k: bool(v) for k, v in result.perms.items()} == perms


def assert_fault(result, *, kind, level, pte_addr, report=None):
    assert not result.ok, f"expected a {kind} fault, got {result}"
    assert (result.kind, result.level, result.pte_addr) == (kind, level, pte_addr), (
        f"got {result.kind} at level {result.level} pte {result.pte_addr}")
    if report is not None:
        assert result.report == report


class RacingMemory(HostMemory):
    """HostMemory whose first compare-exchange is preceded by a software store.

    Models another CPU (or the hypervisor) changing an entry between the walker's read and
    its A/D update: ``race(addr, fn)`` makes the first ``cmpxchg64`` first replace the
    word at ``addr`` with ``fn(word)``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._race = None
        self.cmpxchg_calls = 0

    def race(self, addr, fn):
        self._race = (addr, fn)

    def cmpxchg64(self, addr, old, new):
        self.cmpxchg_calls += 1
        if self._race is not None:
            target, fn = self._race
            self._race = None
            self.write64(target, fn(self.read64(target)))
        return super().cmpxchg64(addr, old, new)


def leaf_addr(fmt, mem, root, gpa, level):
    """The address of ``gpa``'s entry at ``level``, creating tables above it as needed."""
    t = root
    for lvl in range(fmt.levels, level, -1):
        addr = fmt.entry_addr(t, gpa, lvl)
        word = mem.read64(addr)
        if fmt.is_present(word):
            t = fmt.frame_of(word)
        else:
            t = mem.alloc_table(4096)
            mem.write64(addr, fmt.make_table(t))
    return fmt.entry_addr(t, gpa, level)


def sequence_settings(examples):
    """Hypothesis settings for the operation-sequence property tests: reproducible, no
    deadline, and no shrinking (an example runs many model operations)."""
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=[HealthCheck.too_slow])


# -- tools ------------------------------------------------------------------------------


def require_tool(found, what):
    """Skip a test whose tool is missing, except under ``make test``
    (``TESTS_REQUIRE_TOOLS=1``), which installs every tool: there a missing one fails
    the run instead of turning into a skip."""
    if found:
        return
    if os.environ.get("TESTS_REQUIRE_TOOLS") == "1":
        pytest.fail(f"{what} is missing (make test installs it through tools/with-env)",
                    pytrace=False)
    pytest.skip(f"{what} is not installed")


def run_cli(main, argv, capsys):
    """``(status, stdout, stderr)`` of an in-process command line run."""
    try:
        status = main(argv)
    except SystemExit as e:
        status = e.code
    out = capsys.readouterr()
    return status, out.out, out.err


def documented_user_test():
    """The cocotb test of docs/integration.md ("A cocotb test of your own"), as its text."""
    page = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "integration.md").read_text()
    return re.search(r"```python\n# user_mmu_test.py\n(.*?)```", page, re.S).group(1)
