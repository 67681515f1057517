"""What an architecture's RTL rules look like.

An :class:`Arch` turns one page-table word into the walker's neutral view of it
(:class:`EntryView`), applies the leaf rules of its manual (:class:`LeafCheck`), writes
the architecture's own fault report, and says which accesses a TLB entry may serve.
The walker's FSM, the PTE pipeline and the MMU call these methods and nothing else, so
no format bit or fault rule is written outside :mod:`hw.arch`. The numbers (bit
positions, reserved masks, geometry) come from :mod:`hw.decode`, generated from
:mod:`sw_model.formats`.
"""

from dataclasses import dataclass

from amaranth import Cat, Value

from ..decode import ACCESS_IDS, EXIT_IDS

__all__ = ["Arch", "EntryView", "LeafCheck"]


@dataclass
class EntryView:
    """One entry as the walker sees it (Amaranth values).

    Members
    -------
    present, leaf : Value
    frame : Value
        Host-physical address the entry names (next table or page), PA_WIDTH bits.
    perms : Value
        This entry's own permissions in ``PERMS_LAYOUT`` order (r, w, x, u).
    a, d : Value
        Its accessed and dirty bits.
    memtype : Value
        The architecture's memory-type code (0 where it has none).
    bad : Value
        An encoding the manual makes a reserved-bit fault, beyond the reserved masks.
    """
    present: Value
    leaf: Value
    frame: Value
    perms: Value
    a: Value
    d: Value
    memtype: Value
    bad: Value


@dataclass
class LeafCheck:
    """The walk's answer at a leaf: ``perms`` reported, and ``faults`` as
    ``[(condition, kind id)]`` in the manual's priority order."""
    perms: Value
    faults: list


class Arch:
    """The rules of one architecture; subclasses fill in the methods.

    Members
    -------
    name : str
    arch_id : int
    formats : tuple of FormatConstants
        The formats of this architecture; they share every bit position used here
        (checked at import).
    ad_every_level : bool
        A successful walk sets A in every entry it used (x86), not only the leaf.
    """
    name = None
    ad_every_level = True

    def __init__(self, constants):
        self.formats = tuple(c for c in constants if c.arch == self.name)
        first = self.formats[0]
        self.arch_id = first.arch_id
        for c in self.formats[1:]:
            for key in ("bit_v", "bit_r", "bit_w", "bit_x", "bit_u", "bit_nx", "bit_ps",
                        "bit_a", "bit_d", "frame_lsb", "frame_width", "frame_shift",
                        "memtype_lsb", "memtype_width", "bit_pwt", "bit_pcd", "bit_pat_4k",
                        "bit_pat_large"):
                if getattr(c, key) != getattr(first, key):
                    raise ValueError(f"{c.name}: {key} differs from {first.name}'s; the "
                                     f"{self.name} RTL rules assume one layout per family")
        self.c = first
        self.exits = EXIT_IDS[self.name]

    @property
    def a_mask(self):
        return 1 << self.c.bit_a

    @property
    def d_mask(self):
        return 1 << self.c.bit_d

    def frame(self, word):
        """The address an entry names."""
        c = self.c
        return word[c.frame_lsb:c.frame_lsb + c.frame_width] << c.frame_shift

    def entry(self, word, level1, leaf_ok, exec_only):
        """:class:`EntryView` of ``word`` read at a level where ``level1`` says it is the
        last level and ``leaf_ok`` that a leaf is allowed."""
        raise NotImplementedError

    def leaf(self, acc, ent, want, *, nxe, svade, write, misaligned, a, d):
        """:class:`LeafCheck` at a present, well-formed leaf: ``acc`` the permissions
        of the walk including the leaf, ``ent`` the leaf's own, ``want`` the access as
        an r/w/x mask, ``misaligned`` the leaf's frame has bits below its page size."""
        raise NotImplementedError

    def ad_wanted(self, leaf, write, a, d):
        """The entry needs an A/D update when the walk succeeds (with A/D enabled)."""
        return ~a | (leaf & write & ~d)

    def ad_enabled(self, ad_hardware):
        """The walker sets A/D bits for a VM of this architecture."""
        return ad_hardware

    def report(self, kind, access, perms, gpa, nxe):
        """``(exit, code, htval)`` of a fault, from the response fields."""
        raise NotImplementedError

    def tlb_allow(self, perms, write_ok):
        """The accesses (r, w, x bits) a TLB entry of a successful walk may serve:
        what the walk granted, a write only when ``write_ok`` (no D update owed)."""
        user = self.user(perms)
        return Cat(user & perms[0], user & perms[1] & write_ok, user & perms[2])

    def user(self, perms):
        """The walk's permissions allow the access at all (stage-2 walks are user
        accesses where the architecture has a U bit)."""
        return perms[3]

    def write_tracked(self, ad_off):
        """A write must walk when the entry came from a read walk (it owes a D
        update or, with Svade, a D check), unless the VM has no dirty bits."""
        return ~ad_off

    def report_to_model(self, exit_id, code, htval):
        """The RTL report as the model's ``fault_report`` dict (Python side)."""
        raise NotImplementedError

    def exit_name(self, exit_id):
        """The name of ``report.exit`` value ``exit_id``; ValueError if it names none
        of this architecture's exits."""
        for name, value in self.exits.items():
            if value == exit_id:
                return name
        raise ValueError(f"response report.exit {exit_id} is not an {self.name} exit")

    @staticmethod
    def want(access):
        """``access`` as an r/w/x mask in ``PERMS_LAYOUT`` order."""
        return Cat(access == ACCESS_IDS["read"], access == ACCESS_IDS["write"],
                   access == ACCESS_IDS["execute"])
