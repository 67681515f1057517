"""The common shape of a page-table format description.

A format is data first: the geometry (levels, index bits, GPA width), named bit fields,
reserved-bit masks per level as a function of the physical-address width, and the
software-available bits the TDP core may use. The RTL's decode logic is generated from
that data. Around it, each format implements the fault rules of its manual in a few small
methods that the reference walker (:mod:`sw_model.walker`) calls in a fixed order:

1. :meth:`PageTableFormat.entry_fault` for every entry read, top-down;
2. :meth:`PageTableFormat.leaf_fault` once a leaf is reached, with the entries used;
3. :meth:`PageTableFormat.ad_updates` for the A/D words to write when the access succeeds.

Levels are numbered as in KVM: level 1 maps 4 KiB pages, the root is level ``levels``.
"""

import functools
from dataclasses import dataclass, field, replace

import numpy as np

__all__ = [
    "ACCESSES", "AD_MODES", "FAULT_KINDS", "Field", "Entry", "VmOptions",
    "PageTableFormat", "bits", "FormatError", "check_access", "ad_updates_for",
    "lookup_format",
]

ACCESSES = ("read", "write", "execute")
#: "off": no A/D bits (EPT without EPTP[6]); "hardware": the walker sets them (x86,
#: RISC-V Svadu); "fault": a clear A, or a clear D on a write, faults (RISC-V Svade).
AD_MODES = ("off", "hardware", "fault")
FAULT_KINDS = ("not_present", "permission", "reserved", "misaligned", "gpa_range",
               "ad_clear", "bus_error")


class FormatError(ValueError):
    """Bad input to a format: unknown name, invalid option, unencodable entry."""


def bits(hi, lo):
    """Mask of bits ``hi`` down to ``lo`` inclusive (empty when ``hi < lo``)."""
    if hi < lo:
        return 0
    return ((1 << (hi - lo + 1)) - 1) << lo


@dataclass(frozen=True)
class Field:
    """A bit field of an entry: ``width`` bits starting at ``lsb``."""
    lsb: int
    width: int = 1

    @property
    def mask(self):
        return bits(self.lsb + self.width - 1, self.lsb)

    def get(self, word):
        return (word >> self.lsb) & ((1 << self.width) - 1)

    def put(self, word, value):
        if not 0 <= value < 1 << self.width:
            raise FormatError(f"value {value:#x} does not fit a {self.width}-bit field")
        return (word & ~self.mask) | (value << self.lsb)


@dataclass(frozen=True)
class VmOptions:
    """Per-VM options that change how a format's entries are interpreted.

    Members
    -------
    ad : str
        One of :data:`AD_MODES` allowed by the format.
    pa_bits : int
        Host physical-address width (x86 MAXPHYADDR): entry bits from ``pa_bits`` to 51
        are reserved on x86. RISC-V has no such reserved bits; its value is fixed at 56.
    exec_only : bool
        EPT: the CPU supports execute-only entries (IA32_VMX_EPT_VPID_CAP bit 0).
    nxe : bool
        NPT: EFER.NXE; without it bit 63 is reserved.
    """
    ad: str
    pa_bits: int
    exec_only: bool = True
    nxe: bool = True

    def to_json(self):
        return {"ad": self.ad, "pa_bits": self.pa_bits, "exec_only": self.exec_only,
                "nxe": self.nxe}


@dataclass(frozen=True)
class Entry:
    """An entry decoded at a level, architecture-neutral.

    ``frame`` is the host-physical address the entry names (next table or page),
    ``memtype`` the architecture's memory-type code (EPT MT, x86 PAT index, 0 on RISC-V).
    """
    word: int
    level: int
    present: bool
    leaf: bool
    frame: int = 0
    r: bool = False
    w: bool = False
    x: bool = False
    u: bool = False
    a: bool = False
    d: bool = False
    memtype: int = 0


@dataclass(frozen=True, eq=False)
class PageTableFormat:
    """Description of one page-table format. Subclasses fill in the rules.

    Members
    -------
    name : str
        ``ept4``, ``ept5``, ``npt4``, ``npt5``, ``sv39x4``, ``sv48x4`` or ``sv57x4``.
    arch : str
        ``ept``, ``npt`` or ``gstage``.
    levels : int
        Number of levels; the root is level ``levels``.
    root_index_bits : int
        Index bits of the root table (9, or 11 for G-stage's 16 KiB roots).
    leaf_levels : frozenset
        Levels at which a leaf entry is architecturally allowed.
    fields : dict
        Named :class:`Field` s of the entry (hardware-defined bits).
    frame_field, frame_shift
        The frame number field and how far it is shifted to form an address.
    sw_fields : dict
        Software-available bits the TDP core may use (ignored by the walker).
    frozen_word : int
        A non-present word that marks an entry frozen by the TDP core.
    ad_modes : tuple
        The A/D modes this format supports; the first is the default.
    pa_bits_range : tuple
        Allowed ``(min, max)`` physical-address width; ``default_pa_bits`` is the default.
    """
    name: str
    arch: str
    levels: int
    root_index_bits: int
    leaf_levels: frozenset
    fields: dict
    frame_field: Field
    frame_shift: int
    sw_fields: dict
    frozen_word: int
    ad_modes: tuple
    pa_bits_range: tuple
    default_pa_bits: int
    manual: str = field(default="", compare=False)

    # -- geometry -----------------------------------------------------------------

    @property
    def root_level(self):
        return self.levels

    def index_bits(self, level):
        return self.root_index_bits if level == self.levels else 9

    def table_entries(self, level):
        return 1 << self.index_bits(level)

    def table_bytes(self, level):
        return 8 << self.index_bits(level)

    @property
    def root_table_bytes(self):
        return self.table_bytes(self.levels)

    @staticmethod
    def page_shift(level):
        return 12 + 9 * (level - 1)

    def page_size(self, level):
        return 1 << self.page_shift(level)

    @property
    def gpa_bits(self):
        return 12 + 9 * (self.levels - 1) + self.root_index_bits

    def gpa_in_range(self, gpa):
        return 0 <= gpa < 1 << self.gpa_bits

    def index(self, gpa, level):
        return (gpa >> self.page_shift(level)) & (self.table_entries(level) - 1)

    def entry_addr(self, table, gpa, level):
        return table + 8 * self.index(gpa, level)

    # -- options and validation -----------------------------------------------------

    def vm_options(self, ad=None, pa_bits=None, exec_only=True, nxe=True):
        """Validated :class:`VmOptions` for this format, defaults filled in."""
        ad = self.ad_modes[0] if ad is None else ad
        if ad not in self.ad_modes:
            raise FormatError(f"{self.name}: A/D mode {ad!r} not supported "
                              f"(choose one of {', '.join(self.ad_modes)})")
        pa_bits = self.default_pa_bits if pa_bits is None else pa_bits
        lo, hi = self.pa_bits_range
        if not isinstance(pa_bits, int) or not lo <= pa_bits <= hi:
            raise FormatError(f"{self.name}: pa_bits must be an integer in [{lo}, {hi}], got {pa_bits!r}")
        for name, value in (("exec_only", exec_only), ("nxe", nxe)):
            if not isinstance(value, bool):
                raise FormatError(f"{self.name}: {name} must be True or False, got {value!r}")
        return VmOptions(ad=ad, pa_bits=pa_bits, exec_only=exec_only, nxe=nxe)

    def check_root(self, root, vm):
        """Raise :class:`FormatError` unless ``root`` is a valid root-table address."""
        if not isinstance(root, int) or root < 0:
            raise FormatError(f"root must be a non-negative integer, got {root!r}")
        if root % self.root_table_bytes:
            raise FormatError(f"{self.name}: root {root:#x} is not aligned to "
                              f"{self.root_table_bytes} bytes")
        if root >= 1 << vm.pa_bits:
            raise FormatError(f"{self.name}: root {root:#x} is beyond the {vm.pa_bits}-bit "
                              f"physical-address width")

    # -- frames -------------------------------------------------------------------

    def frame_of(self, word):
        return self.frame_field.get(word) << self.frame_shift

    def put_frame(self, word, hpa):
        if hpa % 4096:
            raise FormatError(f"frame address {hpa:#x} is not 4 KiB aligned")
        return self.frame_field.put(word, hpa >> self.frame_shift)

    # -- what each architecture provides -------------------------------------------

    def reserved_mask(self, level, leaf, vm):
        """Bits that must be zero in a present entry at ``level`` (a leaf or not)."""
        raise NotImplementedError

    def is_present(self, word):
        raise NotImplementedError

    def decode(self, word, level):
        """Decode ``word`` at ``level`` into an :class:`Entry` (no fault checks)."""
        raise NotImplementedError

    def make_table(self, table_hpa):
        """A non-leaf entry pointing to the table at ``table_hpa``, full permissions."""
        raise NotImplementedError

    def make_leaf(self, hpa, level, *, r=True, w=True, x=True, memtype=None,
                  a=False, d=False):
        """A leaf entry mapping the page at ``hpa`` at ``level``."""
        raise NotImplementedError

    def entry_fault(self, word, level, vm):
        """The fault kind of an entry read during a walk, or None to go on."""
        raise NotImplementedError

    def leaf_fault(self, entries, access, vm):
        """The fault kind for an access through ``entries`` (root first, leaf last)."""
        raise NotImplementedError

    def effective_perms(self, entries, vm):
        """``dict(r=, w=, x=[, u=])`` granted by the walk ``entries``."""
        raise NotImplementedError

    def ad_updates(self, entries, access, vm):
        """``[(position, new_word)]`` A/D updates for a successful access."""
        raise NotImplementedError

    def fault_report(self, kind, access, gpa, entries, vm):
        """The architecture's own report of a fault, JSON-ready."""
        raise NotImplementedError

    # -- arch hooks for the TDP core (sw_model/tdp) --
    # The TDP core calls only these (and the geometry above) to read and build entries,
    # so it never names a bit. Names follow KVM's arch/x86/kvm/mmu/spte.h. Every hook
    # is pure: it maps words to words; the core does the compare-exchange.

    def tdp_write_mask(self):
        """The hardware write-permission bit(s) of a leaf."""
        raise NotImplementedError

    def tdp_map_levels(self):
        """Levels at which the TDP core may map a leaf, smallest first (4K, 2M, 1G)."""
        return tuple(sorted(level for level in self.leaf_levels if level <= 3))

    def tdp_nx_huge_pages(self):
        """Whether the NX-huge-page mitigation applies (x86's iTLB multihit erratum)."""
        return False

    def tdp_ad_enabled(self, vm):
        """A/D bits exist (KVM's ``kvm_ad_enabled``): dirty logging clears D, not W."""
        return vm.ad != "off"

    def tdp_ad_faults(self, vm):
        """A clear A, or a clear D on a write, faults instead of being set by the walker."""
        return vm.ad == "fault"

    def tdp_can_deny_exec(self, vm):
        """Whether a leaf can be made non-executable (NX huge pages need it)."""
        return True

    def tdp_shared_bit_default(self):
        """The GPA bit that selects a TDX-style TD's shared memory by default, or None
        where the architecture has no such confidential VMs."""
        return None

    def tdp_frozen_spte(self):
        """KVM's ``FROZEN_SPTE``: non-present, never written by the walker."""
        return self.frozen_word

    def tdp_is_frozen(self, word):
        return word == self.frozen_word

    def tdp_is_shadow_present(self, word):
        """KVM's ``is_shadow_present_pte``: a live entry, access-tracked ones included."""
        return self.is_present(word)

    def tdp_present_mask(self, words):
        """Vectorized :meth:`tdp_is_shadow_present` over a numpy ``uint64`` array."""
        raise NotImplementedError

    def tdp_dirty_mask(self, words, vm):
        """Vectorized :meth:`tdp_is_dirty` over a numpy ``uint64`` array of leaves."""
        mask = self.fields["d"].mask if self.tdp_ad_enabled(vm) else self.tdp_write_mask()
        return (words & np.uint64(mask)) != 0

    def tdp_clear_dirty_words(self, words, vm):
        """Vectorized :meth:`tdp_clear_dirty` over a numpy ``uint64`` array of leaves."""
        mask = self.fields["d"].mask if self.tdp_ad_enabled(vm) else self.tdp_write_mask()
        return words & np.uint64(~mask & (1 << 64) - 1)

    def tdp_is_last_spte(self, word, level):
        return self.decode(word, level).leaf

    def tdp_child_table(self, word, level):
        """KVM's ``spte_to_child_pt``: the table a present non-leaf names, else None."""
        if not self.tdp_is_shadow_present(word) or self.tdp_is_last_spte(word, level):
            return None
        return self.frame_of(word)

    def tdp_spte_frame(self, word, level):
        """The frame a leaf maps (low bits of a huge frame cleared)."""
        return self.decode(word, level).frame

    def tdp_make_nonleaf(self, table_hpa, vm):
        """KVM's ``make_nonleaf_spte``."""
        return self.make_table(table_hpa)

    def _tdp_put_sw(self, word, name, value):
        return self.sw_fields[name].put(word, int(bool(value)))

    def tdp_make_spte(self, hpa, level, vm, *, writable, executable, host_writable,
                      mmu_writable=None, accessed=True, dirty=False):
        """KVM's ``make_spte`` for a TDP leaf: readable, W only if host- and MMU-writable.

        MMU-writable (default: as host-writable) is clear only for a write-tracked page:
        write-protection for dirty logging clears only W, so a later write fault may
        set W again.
        """
        mmu_writable = host_writable if mmu_writable is None else mmu_writable
        if (writable and not mmu_writable) or (mmu_writable and not host_writable):
            raise FormatError("W needs MMU-writable, and MMU-writable needs host-writable")
        ad = self.tdp_ad_enabled(vm)
        word = self.make_leaf(hpa, level, r=True, w=writable,
                              x=executable or not self.tdp_can_deny_exec(vm),
                              a=accessed and ad, d=dirty and ad)
        word = self._tdp_put_sw(word, "host_writable", host_writable)
        return self._tdp_put_sw(word, "mmu_writable", mmu_writable)

    def tdp_is_writable(self, word):
        return bool(word & self.tdp_write_mask())

    def tdp_is_host_writable(self, word):
        return bool(self.sw_fields["host_writable"].get(word))

    def tdp_is_mmu_writable(self, word):
        return bool(self.sw_fields["mmu_writable"].get(word))

    def tdp_access_allowed(self, word, level, access, vm):
        """Whether the leaf ``word`` alone lets ``access`` through (the fault was
        spurious): the walker's own rules, tables above granting everything."""
        return (self.entry_fault(word, level, vm) is None
                and self.leaf_fault([self.decode(word, level)], access, vm) is None)

    def tdp_leaf_rights(self, word, level, vm):
        """What a TLB entry filled from the leaf ``word`` lets the CPU do without walking
        again (the flush-obligation checker compares these): a frozenset of
        ``"read"``, ``"write"``, ``"execute"`` (the accesses the leaf grants once
        accessed, so aging alone takes none away), ``"accessed"`` (an access through it
        sets no A and faults on none) and ``"dirty"`` (with A/D bits: a write through it
        sets no D and faults on none)."""
        # The frame does not change the rights: one computation per kind of leaf.
        return self._tdp_rights_of(self.put_frame(word, 0), level, vm)

    @functools.lru_cache(maxsize=4096)
    def _tdp_rights_of(self, word, level, vm):
        restored = self._tdp_restore_acc_track(word)
        entry = replace(self.decode(restored, level), a=True, d=True)
        rights = set()
        if self.entry_fault(restored, level, vm) is None:
            rights.update(access for access in ACCESSES
                          if self.leaf_fault([entry], access, vm) is None)
        if self.tdp_is_accessed(word, vm):
            rights.add("accessed")
        if self.tdp_ad_enabled(vm) and self.tdp_is_dirty(word, vm):
            rights.add("dirty")
        return frozenset(rights)

    def _tdp_restore_acc_track(self, word):
        """KVM's ``restore_acc_track_spte``: the permissions an access-tracked leaf had
        (formats without access tracking: the word itself)."""
        return word

    def tdp_make_writable(self, word, vm):
        """KVM's fast page fault on a write: W back on an MMU-writable leaf, and D where
        A/D bits exist (the access is a write)."""
        if not self.tdp_is_mmu_writable(word):
            raise FormatError("W needs MMU-writable")
        word |= self.tdp_write_mask()
        if self.tdp_ad_enabled(vm):
            word |= self.fields["d"].mask
        return word

    def tdp_write_protect(self, word):
        """Clear W only (dirty logging): MMU-writable stays, so no TLB flush is owed."""
        return word & ~self.tdp_write_mask()

    def tdp_clear_mmu_writable(self, word):
        """Clear W and MMU-writable (a real write-protection: a TLB flush is owed)."""
        return word & ~(self.tdp_write_mask() | self.sw_fields["mmu_writable"].mask)

    def tdp_is_accessed(self, word, vm):
        """KVM's ``is_accessed_spte``."""
        if not self.tdp_ad_enabled(vm):
            return self.is_present(word)
        return bool(self.fields["a"].get(word))

    def tdp_mark_not_accessed(self, word, vm):
        """Clear A (KVM's ``mark_spte_for_access_track`` when A/D bits exist)."""
        if not self.tdp_ad_enabled(vm):
            raise FormatError(f"{self.name}: no access tracking without A/D bits")
        return word & ~self.fields["a"].mask

    def tdp_is_dirty(self, word, vm):
        """KVM's ``is_dirty_spte``: D where A/D bits exist, else W."""
        if self.tdp_ad_enabled(vm):
            return bool(self.fields["d"].get(word))
        return self.tdp_is_writable(word)

    def tdp_clear_dirty(self, word, vm):
        """Clear D where A/D bits exist, else W (KVM's ``clear_dirty_gfn_range``)."""
        if self.tdp_ad_enabled(vm):
            return word & ~self.fields["d"].mask
        return self.tdp_write_protect(word)

    def _tdp_copy_sw(self, dst, src):
        for f in self.sw_fields.values():
            dst = f.put(dst, f.get(src))
        return dst

    def _tdp_releaf(self, word, level, new_level, hpa, executable):
        e = self.decode(word, level)
        new = self.make_leaf(hpa, new_level, r=e.r, w=e.w, x=e.x if executable is None
                             else executable, memtype=e.memtype, a=e.a, d=e.d)
        return self._tdp_copy_sw(new, word)

    def tdp_split_children(self, word, level, vm, *, executable=None):
        """KVM's ``make_huge_page_split_spte`` for every child of the huge leaf ``word``.

        Returns a numpy ``uint64`` array, one entry per child, built as the first child
        plus a multiple of the frame increment (one vectorized add). ``executable``
        None keeps the huge leaf's X permission.
        """
        child = level - 1
        first = self._tdp_releaf(word, level, child, self.tdp_spte_frame(word, level),
                                 None if executable is None
                                 else executable or not self.tdp_can_deny_exec(vm))
        step = (self.page_size(child) >> self.frame_shift) << self.frame_field.lsb
        n = self.table_entries(child)
        return np.uint64(first) + np.arange(n, dtype=np.uint64) * np.uint64(step)

    def tdp_make_huge_spte(self, word, level, huge_level, vm, *, executable=None):
        """KVM's ``make_huge_spte``: the leaf at ``huge_level`` covering the small leaf
        ``word`` at ``level``, with its permissions, A/D and software bits."""
        frame = self.tdp_spte_frame(word, level) & ~(self.page_size(huge_level) - 1)
        return self._tdp_releaf(word, level, huge_level, frame,
                                None if executable is None
                                else executable or not self.tdp_can_deny_exec(vm))



def ad_updates_for(entries, access, a_mask, d_mask, *, leaf_only):
    """``[(position, new_word)]`` setting A in the entries used (only the leaf when
    ``leaf_only``) and D in the leaf on a write: the hardware A/D rule of every format."""
    updates = []
    for position, entry in enumerate(entries):
        if leaf_only and not entry.leaf:
            continue
        new = entry.word | a_mask
        if entry.leaf and access == "write":
            new |= d_mask
        if new != entry.word:
            updates.append((position, new))
    return updates


def lookup_format(formats, name, kind):
    """``formats[name]``, or a :class:`FormatError` naming the ``kind`` of format and
    the choices."""
    try:
        return formats[name]
    except (KeyError, TypeError):
        raise FormatError(f"unknown {kind} format {name!r} "
                          f"(choose one of {', '.join(formats)})") from None


def check_access(access):
    if access not in ACCESSES:
        raise FormatError(f"access must be one of {', '.join(ACCESSES)}, got {access!r}")
