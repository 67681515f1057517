"""Per-format decode constants, generated from :mod:`sw_model.formats`.

The RTL never retypes a bit position: every field position, reserved-bit mask, frame
field and geometry number used by :mod:`hw.walker` comes from the format objects
through :func:`format_constants`. Reserved masks that depend on the VM options are split
into a static part and run-time parts (the physical-address width and EFER.NXE), and
the split is checked against ``reserved_mask`` for every allowed option value, so a
format whose masks cannot be expressed this way fails loudly at elaboration.

Encodings shared by the RTL ports and the test benches are defined here too: they are
the positions of the names in the model's own tuples, so they cannot drift apart.
"""

from dataclasses import dataclass

from sw_model.formats import (ACCESSES, AD_MODES, FAULT_KINDS, FORMAT_NAMES, PageTableFormat,
                              get_format)
from sw_model.formats import ept as _ept, gstage as _gstage, npt as _npt

__all__ = [
    "FORMAT_IDS", "ARCH_IDS", "AD_IDS", "ACCESS_IDS", "KIND_IDS", "EXIT_IDS",
    "MAX_LEVELS", "PA_WIDTH", "FormatConstants", "format_constants", "ALL_CONSTANTS",
    "EPT_BAD_MEMTYPES", "EPT_QUAL", "NPT_EC", "GSTAGE_CAUSE", "page_shift",
]

#: Format id written in the context table: the index in ``FORMAT_NAMES``
#: (ept4=0, ept5=1, npt4=2, npt5=3, sv39x4=4, sv48x4=5, sv57x4=6).
FORMAT_IDS = {name: i for i, name in enumerate(FORMAT_NAMES)}
#: Architecture id used inside the walker.
ARCH_IDS = {"ept": 0, "npt": 1, "gstage": 2}
#: A/D mode id in the context table: off=0, hardware=1, fault=2.
AD_IDS = {mode: i for i, mode in enumerate(AD_MODES)}
#: Access id in a request: read=0, write=1, execute=2.
ACCESS_IDS = {access: i for i, access in enumerate(ACCESSES)}
#: Fault kind id in a response: not_present=0, permission=1, reserved=2, misaligned=3,
#: gpa_range=4, ad_clear=5, bus_error=6.
KIND_IDS = {kind: i for i, kind in enumerate(FAULT_KINDS)}
#: ``report.exit`` in a response. EPT: violation / misconfiguration / machine check;
#: NPT: #NPF / machine check; G-stage: guest-page fault / access fault.
EXIT_IDS = {
    "ept": {"ept_violation": 0, "ept_misconfig": 1, "machine_check": 2},
    "npt": {"npf": 0, "machine_check": 2},
    "gstage": {"guest_page_fault": 0, "access_fault": 2},
}

#: Address bits below the index of ``level`` (the same for every format: 4 KiB pages,
#: 9 index bits below the root; :func:`format_constants` checks it).
page_shift = PageTableFormat.page_shift

MAX_LEVELS = max(get_format(name).levels for name in FORMAT_NAMES)

# Architecture report constants, imported from the model rather than retyped.
EPT_BAD_MEMTYPES = tuple(sorted(_ept.EPT_BAD_MEMTYPES))
EPT_QUAL = {"read": _ept.QUAL_READ, "write": _ept.QUAL_WRITE, "execute": _ept.QUAL_FETCH,
            "r": _ept.QUAL_READABLE, "w": _ept.QUAL_WRITABLE, "x": _ept.QUAL_EXECUTABLE}
NPT_EC = {"p": _npt.EC_P, "w": _npt.EC_W, "u": _npt.EC_U, "rsvd": _npt.EC_RSVD,
          "id": _npt.EC_ID, "final": _npt.EC_FINAL_GPA}
GSTAGE_CAUSE = {"page_fault": dict(_gstage.GUEST_PAGE_FAULT),
                "access_fault": dict(_gstage.ACCESS_FAULT)}


def _field(fmt, name):
    f = fmt.fields[name]
    if f.width != 1:
        raise ValueError(f"{fmt.name}: field {name!r} is expected to be one bit wide")
    return f.lsb


@dataclass(frozen=True)
class FormatConstants:
    """Everything the walker needs to know about one format, as plain integers.

    Members
    -------
    name, fmt_id, arch, arch_id, levels, root_index_bits, gpa_bits
        Geometry; the root is level ``levels``.
    leaf_levels : int
        Bit ``l`` set when a leaf is allowed at level ``l``.
    frame_lsb, frame_width, frame_shift
        The frame field: address = ``word[lsb +: width] << shift``.
    bit_v, bit_r, bit_w, bit_x, bit_u, bit_nx, bit_ps, bit_a, bit_d : int or None
        Single-bit field positions (None when the format has no such field).
    memtype_lsb, memtype_width
        EPT memory-type field; NPT uses ``pwt``, ``pcd`` and ``pat_4k``/``pat_large``.
    reserved : dict
        ``(level, leaf) -> (static, pa_dependent, nxe_dependent)``: the reserved mask is
        ``static | (pa_dependent & ~((1 << pa_bits) - 1)) | (nxe_dependent if not nxe)``.
    """
    name: str
    fmt_id: int
    arch: str
    arch_id: int
    levels: int
    root_index_bits: int
    gpa_bits: int
    leaf_levels: int
    frame_lsb: int
    frame_width: int
    frame_shift: int
    bit_v: int
    bit_r: int
    bit_w: int
    bit_x: int
    bit_u: int
    bit_nx: int
    bit_ps: int
    bit_a: int
    bit_d: int
    memtype_lsb: int
    memtype_width: int
    bit_pwt: int
    bit_pcd: int
    bit_pat_4k: int
    bit_pat_large: int
    reserved: dict

    def page_shift(self, level):
        return page_shift(level)


def _split_reserved(fmt, level, leaf):
    """Split ``fmt.reserved_mask`` into static, pa_bits- and nxe-dependent parts and
    check the split reproduces it for every allowed option value."""
    lo, hi = fmt.pa_bits_range
    static = fmt.reserved_mask(level, leaf, fmt.vm_options(pa_bits=hi, nxe=True))
    pa_dep = fmt.reserved_mask(level, leaf, fmt.vm_options(pa_bits=lo, nxe=True)) & ~static
    nxe_dep = fmt.reserved_mask(level, leaf, fmt.vm_options(pa_bits=hi, nxe=False)) & ~static
    for pa_bits in range(lo, hi + 1):
        for nxe in (False, True):
            want = fmt.reserved_mask(level, leaf, fmt.vm_options(pa_bits=pa_bits, nxe=nxe))
            got = static | (pa_dep & ~((1 << pa_bits) - 1)) | (0 if nxe else nxe_dep)
            if want != got:
                raise ValueError(
                    f"{fmt.name}: reserved mask at level {level} (leaf={leaf}) with "
                    f"pa_bits={pa_bits}, nxe={nxe} is {want:#x}, which the RTL's "
                    f"static|pa|nxe split cannot express (it gives {got:#x})")
    return static, pa_dep, nxe_dep


def format_constants(name):
    """The :class:`FormatConstants` of format ``name``."""
    fmt = get_format(name)
    f = fmt.fields
    if fmt.frame_shift != 12:
        raise ValueError(f"{name}: the walker assumes 4 KiB frames (frame_shift 12)")
    if any(fmt.index_bits(level) != 9 for level in range(1, fmt.levels)):
        raise ValueError(f"{name}: the walker assumes 9 index bits below the root")
    if fmt.arch == "ept":
        bits = dict(bit_v=None, bit_r=_field(fmt, "r"), bit_w=_field(fmt, "w"),
                    bit_x=_field(fmt, "x"), bit_u=None, bit_nx=None, bit_ps=_field(fmt, "ps"))
        memtype = dict(memtype_lsb=f["memtype"].lsb, memtype_width=f["memtype"].width,
                       bit_pwt=None, bit_pcd=None, bit_pat_4k=None, bit_pat_large=None)
    elif fmt.arch == "npt":
        bits = dict(bit_v=_field(fmt, "p"), bit_r=None, bit_w=_field(fmt, "rw"), bit_x=None,
                    bit_u=_field(fmt, "us"), bit_nx=_field(fmt, "nx"), bit_ps=_field(fmt, "ps"))
        memtype = dict(memtype_lsb=None, memtype_width=None, bit_pwt=_field(fmt, "pwt"),
                       bit_pcd=_field(fmt, "pcd"), bit_pat_4k=_npt.PAT_4K.lsb,
                       bit_pat_large=_npt.PAT_LARGE.lsb)
    elif fmt.arch == "gstage":
        bits = dict(bit_v=_field(fmt, "v"), bit_r=_field(fmt, "r"), bit_w=_field(fmt, "w"),
                    bit_x=_field(fmt, "x"), bit_u=_field(fmt, "u"), bit_nx=None, bit_ps=None)
        memtype = dict(memtype_lsb=None, memtype_width=None, bit_pwt=None, bit_pcd=None,
                       bit_pat_4k=None, bit_pat_large=None)
    else:
        raise ValueError(f"{name}: unknown architecture {fmt.arch!r}")
    reserved = {(level, leaf): _split_reserved(fmt, level, leaf)
                for level in range(1, fmt.levels + 1) for leaf in (False, True)}
    return FormatConstants(
        name=name, fmt_id=FORMAT_IDS[name], arch=fmt.arch, arch_id=ARCH_IDS[fmt.arch],
        levels=fmt.levels, root_index_bits=fmt.root_index_bits, gpa_bits=fmt.gpa_bits,
        leaf_levels=sum(1 << level for level in fmt.leaf_levels),
        frame_lsb=fmt.frame_field.lsb, frame_width=fmt.frame_field.width,
        frame_shift=fmt.frame_shift, bit_a=_field(fmt, "a"), bit_d=_field(fmt, "d"),
        reserved=reserved, **bits, **memtype)


ALL_CONSTANTS = tuple(format_constants(name) for name in FORMAT_NAMES)

#: Host-physical address width carried by the walker: the widest frame any format can
#: name (G-stage: 44-bit PPN << 12 = 56 bits).
PA_WIDTH = max(c.frame_width + c.frame_shift for c in ALL_CONSTANTS)
