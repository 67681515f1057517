"""Stage-1 (guest-virtual to guest-physical) page tables, for a hypervisor that
emulates a nested guest's instruction and must translate the guest-virtual addresses it
names (KVM's ``gva_to_gpa``): x86-64 4-level paging and RISC-V Sv48.

The entries are those of the stage-2 cousins: x86-64 paging uses the long-mode entry
format of :mod:`.npt` (Intel SDM Vol. 3A §4.5, AMD APM Vol. 2 §5.3), Sv48 the PTE of
:mod:`.gstage` with a 4 KiB root (RISC-V privileged spec, "Sv48"). What changes is the
access: it is made at a privilege (user or supervisor), and a fault is the guest's own
exception.

- x86-64 (SDM Vol. 3A §4.6, APM Vol. 2 §5.6): a user access needs U/S set at every
  level; a write needs R/W set at every level, for a supervisor write only while
  CR0.WP is set; an instruction fetch needs XD clear (EFER.NXE). A fault is #PF with
  the error code of SDM §4.7 (P, W/R, U/S, RSVD, I/D) and CR2 = the address; a
  non-canonical address is #GP(0). SMEP, SMAP and protection keys are not modelled.
- Sv48 (privileged spec, "Virtual Address Translation Process"): U-mode needs U set; an
  S-mode load or store to a U page needs SUM, an S-mode fetch from one always faults.
  A fault is an instruction, load or store page fault (12, 13, 15) with stval = the
  address, an access fault (1, 5, 7) on a bus error; an address whose bits 63:48 do
  not all equal bit 47 is a page fault.
"""

from dataclasses import dataclass

from .base import Field, FormatError, VmOptions, lookup_format
from .gstage import GSTAGE_FIELDS, GstageFormat
from .npt import EC_ID, EC_P, EC_RSVD, EC_U, EC_W, NPT_FIELDS, NptFormat

__all__ = ["Stage1Options", "X86Paging", "Sv48", "STAGE1_FORMAT_NAMES", "get_stage1_format",
           "stage1_format_for"]

VA_BITS = 48


@dataclass(frozen=True)
class Stage1Options(VmOptions):
    """:class:`VmOptions` plus the privilege of a stage-1 access.

    Members
    -------
    user : bool
        The access is made at CPL 3 / in U-mode.
    wp : bool
        x86 CR0.WP: supervisor writes honour R/W.
    sum : bool
        RISC-V sstatus.SUM: S-mode loads and stores may reach U pages.
    """
    user: bool = False
    wp: bool = True
    sum: bool = False


class _Stage1:
    """What both stage-1 formats add to their stage-2 cousin (``_user_field``: the
    entry's user bit)."""

    def make_leaf(self, hpa, level, *, r=True, w=True, x=True, memtype=None, a=False,
                  d=False, u=True):
        """A leaf, user-accessible unless ``u`` is False."""
        word = super().make_leaf(hpa, level, r=r, w=w, x=x, memtype=memtype, a=a, d=d)
        return word if u else word & ~self.fields[self._user_field].mask

    def vm_options(self, ad=None, pa_bits=None, exec_only=True, nxe=True, *, user=False,
                   wp=True, sum=False):
        base = super().vm_options(ad=ad, pa_bits=pa_bits, exec_only=exec_only, nxe=nxe)
        for name, value in (("user", user), ("wp", wp), ("sum", sum)):
            if not isinstance(value, bool):
                raise FormatError(f"{self.name}: {name} must be True or False, got {value!r}")
        return Stage1Options(**base.__dict__, user=user, wp=wp, sum=sum)

    def _canonical(self, va):
        top = va >> (VA_BITS - 1)
        return top == 0 or top == (1 << (64 - VA_BITS + 1)) - 1

    def gpa_in_range(self, gpa):
        return 0 <= gpa < 1 << 64 and self._canonical(gpa)


@dataclass(frozen=True, eq=False)
class X86Paging(_Stage1, NptFormat):
    _user_field = "us"

    def leaf_fault(self, entries, access, vm):
        perms = self.effective_perms(entries, vm)
        if vm.user and not perms["u"]:
            return "permission"
        if access == "write" and not perms["w"] and (vm.user or vm.wp):
            return "permission"
        if access == "execute" and not perms["x"]:
            return "permission"
        return None

    def fault_report(self, kind, access, gpa, entries, vm):
        if kind == "gpa_range":
            return {"exception": "gp", "error_code": 0}
        if kind == "bus_error":
            return {"exception": "mc"}
        code = (EC_W if access == "write" else 0) | (EC_U if vm.user else 0)
        if access == "execute" and vm.nxe:
            code |= EC_ID
        if kind in ("permission", "reserved"):
            code |= EC_P
        if kind == "reserved":
            code |= EC_RSVD
        return {"exception": "pf", "error_code": code, "cr2": gpa}


@dataclass(frozen=True, eq=False)
class Sv48(_Stage1, GstageFormat):
    _user_field = "u"

    def _leaf_permission(self, leaf, access, vm):
        if vm.user and not leaf.u:
            return False
        if not vm.user and leaf.u and (access == "execute" or not vm.sum):
            return False
        return {"read": leaf.r, "write": leaf.w, "execute": leaf.x}[access]

    def fault_report(self, kind, access, gpa, entries, vm):
        if kind == "bus_error":
            return {"cause": {"execute": 1, "read": 5, "write": 7}[access], "stval": gpa}
        return {"cause": {"execute": 12, "read": 13, "write": 15}[access], "stval": gpa}


_FORMATS = {
    "x86_64": X86Paging(
        name="x86_64", arch="x86", levels=4, root_index_bits=9,
        leaf_levels=frozenset({1, 2, 3}), fields=NPT_FIELDS, frame_field=Field(12, 40),
        frame_shift=12, sw_fields={}, frozen_word=0, ad_modes=("hardware",),
        pa_bits_range=(36, 52), default_pa_bits=46,
        manual="Intel SDM Vol. 3A §4.5; AMD APM Vol. 2 §5.3"),
    "sv48": Sv48(
        name="sv48", arch="riscv", levels=4, root_index_bits=9,
        leaf_levels=frozenset({1, 2, 3, 4}), fields=GSTAGE_FIELDS,
        frame_field=Field(10, 44), frame_shift=12, sw_fields={}, frozen_word=0,
        ad_modes=("hardware", "fault"), pa_bits_range=(56, 56), default_pa_bits=56,
        manual="RISC-V Privileged Architecture, Sv48"),
}

#: The stage-1 format names.
STAGE1_FORMAT_NAMES = tuple(_FORMATS)


def get_stage1_format(name):
    """The stage-1 format called ``name`` (one of :data:`STAGE1_FORMAT_NAMES`)."""
    return lookup_format(_FORMATS, name, "stage-1")


def stage1_format_for(arch):
    """The stage-1 format a guest of stage-2 architecture ``arch`` uses here: x86-64
    paging under EPT and NPT, Sv48 under the G-stage."""
    return _FORMATS["sv48" if arch == "gstage" else "x86_64"]
