"""Page-table format descriptions: ``get_format(name)`` for the seven stage-2 formats;
:mod:`.stage1` describes the guest's own stage-1 tables (x86-64 paging, Sv48) that a
hypervisor walks to emulate a nested guest's instruction."""

from .base import (ACCESSES, AD_MODES, FAULT_KINDS, Entry, Field, FormatError,
                   PageTableFormat, VmOptions, bits, check_access, lookup_format)
from .ept import make_ept
from .gstage import make_gstage
from .npt import make_npt

__all__ = ["get_format", "FORMAT_NAMES", "ACCESSES", "AD_MODES", "FAULT_KINDS", "Entry",
           "Field", "FormatError", "PageTableFormat", "VmOptions", "bits", "check_access"]

_FORMATS = {f.name: f for f in (
    make_ept(4), make_ept(5), make_npt(4), make_npt(5),
    make_gstage(3), make_gstage(4), make_gstage(5),
)}

#: The format names, in a fixed order.
FORMAT_NAMES = tuple(_FORMATS)


def get_format(name):
    """The :class:`PageTableFormat` called ``name`` (one of :data:`FORMAT_NAMES`)."""
    return lookup_format(_FORMATS, name, "page-table")
