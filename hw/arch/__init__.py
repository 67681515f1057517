"""The RTL's architecture rules, one module per architecture.

:mod:`.ept`, :mod:`.npt` and :mod:`.gstage` hold every rule of their manual the
hardware applies: entry decode, leaf permissions, A/D, the fault report, what a TLB
entry may serve, and how software reads the report back. This package also holds the
per-format tables (geometry, reserved bits) the walker looks up by format id. The
walker FSM, its PTE pipeline and the MMU name no format: they call :func:`each_arch`
and :func:`format_table`.
"""

from amaranth import Const, Mux, Signal

from ..decode import ALL_CONSTANTS, ARCH_IDS, FORMAT_IDS
from .base import Arch, EntryView, LeafCheck
from .ept import Ept
from .gstage import GStage
from .npt import Npt

__all__ = ["ARCHS", "Arch", "EntryView", "LeafCheck", "arch_of", "each_arch",
           "format_table", "report", "FORMATS"]

#: The architectures in ``ARCH_IDS`` order.
ARCHS = tuple(sorted((Ept(ALL_CONSTANTS), Npt(ALL_CONSTANTS), GStage(ALL_CONSTANTS)),
                     key=lambda a: a.arch_id))
assert [a.arch_id for a in ARCHS] == sorted(ARCH_IDS.values())
#: Format constants in ``FORMAT_IDS`` order.
FORMATS = tuple(sorted(ALL_CONSTANTS, key=lambda c: c.fmt_id))
assert [c.fmt_id for c in FORMATS] == sorted(FORMAT_IDS.values())


def arch_of(name):
    """The :class:`Arch` of architecture ``name`` (``ept``, ``npt``, ``gstage``)."""
    for arch in ARCHS:
        if arch.name == name:
            return arch
    raise ValueError(f"unknown architecture {name!r}")


def each_arch(arch_id, build, width):
    """A value: ``build(arch)`` for the architecture ``arch_id`` names (0 for none)."""
    out = Const(0, width)
    for arch in ARCHS:
        out = Mux(arch_id == arch.arch_id, build(arch), out)
    return out


def report(arch_id, kind, access, perms, gpa, nxe):
    """``(exit, code, htval)``: the fault report of architecture ``arch_id``."""
    parts = {a.arch_id: a.report(kind, access, perms, gpa, nxe) for a in ARCHS}
    return tuple(each_arch(arch_id, lambda a, k=k: parts[a.arch_id][k], width)
                 for k, width in enumerate((2, 64, 64)))


def format_table(m, fmt_id, width, value_of, *, name=None):
    """A ``width``-bit signal holding ``value_of(constants)`` for the format ``fmt_id``
    (0 for an id that names no format)."""
    out = Signal(width, name=name)
    with m.Switch(fmt_id):
        for c in FORMATS:
            with m.Case(c.fmt_id):
                m.d.comb += out.eq(value_of(c))
    return out
