"""AMD nested paging, 4- and 5-level (AMD APM Vol. 2 §15.25 "Nested Paging").

Nested page tables use the long-mode entry format (APM Vol. 2 §5.3.3 and §5.4, Figures
5-18 to 5-25): bit 0 P, 1 R/W, 2 U/S, 3 PWT, 4 PCD, 5 A, 6 D (leaf), 7 PS (PDPE, PDE) or
PAT (PTE), 8 G (leaf), 11:9 available, address in (MAXPHYADDR-1):12, 51:MAXPHYADDR
reserved, 62:52 available, 63 NX. Per §15.25.5 every nested-table access is a user
access, so U/S must be set at every level.
"""

from dataclasses import dataclass

import numpy as np

from .base import Field, Entry, FormatError, PageTableFormat, ad_updates_for, bits

__all__ = ["NptFormat"]

NPT_FIELDS = {
    "p": Field(0), "rw": Field(1), "us": Field(2), "pwt": Field(3), "pcd": Field(4),
    "a": Field(5), "d": Field(6), "ps": Field(7), "g": Field(8), "nx": Field(63),
}
PAT_4K, PAT_LARGE = Field(7), Field(12)

# #NPF error code in EXITINFO1 (APM Vol. 2 §15.25.6, §8.4.2 page-fault error code).
EC_P, EC_W, EC_U, EC_RSVD, EC_ID = 1 << 0, 1 << 1, 1 << 2, 1 << 3, 1 << 4
EC_FINAL_GPA = 1 << 32          # the fault happened on the final guest-physical address


@dataclass(frozen=True, eq=False)
class NptFormat(PageTableFormat):

    def reserved_mask(self, level, leaf, vm):
        mask = bits(51, vm.pa_bits)          # §5.3.3: bits 51:MAXPHYADDR are MBZ
        if not vm.nxe:
            mask |= bits(63, 63)             # NX is reserved unless EFER.NXE=1
        if level >= 4:
            mask |= bits(8, 7)               # PML5E / PML4E: bits 8:7 MBZ
        elif level > 1 and leaf:
            mask |= bits(self.page_shift(level) - 1, 13)   # 1G: 29:13, 2M: 20:13
        return mask

    def is_present(self, word):
        return bool(word & 1)

    def _pat_field(self, level):
        return PAT_4K if level == 1 else PAT_LARGE

    def decode(self, word, level):
        f = self.fields
        leaf = level == 1 or (level in self.leaf_levels and bool(f["ps"].get(word)))
        memtype = 0
        if leaf:
            memtype = (self._pat_field(level).get(word) << 2 | f["pcd"].get(word) << 1
                       | f["pwt"].get(word))
        frame = self.frame_of(word)
        if leaf and level > 1:
            frame &= ~(self.page_size(level) - 1)     # bit 12 is PAT, not address
        return Entry(word=word, level=level, present=self.is_present(word), leaf=leaf,
                     frame=frame, r=True, w=bool(f["rw"].get(word)),
                     x=not f["nx"].get(word), u=bool(f["us"].get(word)),
                     a=bool(f["a"].get(word)), d=bool(f["d"].get(word)), memtype=memtype)

    def make_table(self, table_hpa):
        return self.put_frame(0b111, table_hpa)       # P, R/W, U/S

    def make_leaf(self, hpa, level, *, r=True, w=True, x=True, memtype=None,
                  a=False, d=False):
        if not r:
            raise FormatError("NPT cannot encode a present entry without read permission")
        f = self.fields
        word = self.put_frame(0, hpa) | 1 | w << 1 | 1 << 2 | a << 5 | d << 6
        word |= (not x) << 63
        memtype = memtype or 0
        word = f["pwt"].put(word, memtype & 1)
        word = f["pcd"].put(word, memtype >> 1 & 1)
        word = self._pat_field(level).put(word, memtype >> 2 & 1)
        if level > 1:
            word |= f["ps"].mask
        return word

    def entry_fault(self, word, level, vm):
        if not self.is_present(word):
            return "not_present"
        if word & self.reserved_mask(level, self.decode(word, level).leaf, vm):
            return "reserved"
        return None

    def effective_perms(self, entries, vm):
        # §5.6: rights are the most restrictive of all levels; NX only with EFER.NXE.
        return {"r": True, "w": all(e.w for e in entries),
                "x": not vm.nxe or all(e.x for e in entries),
                "u": all(e.u for e in entries)}

    def leaf_fault(self, entries, access, vm):
        perms = self.effective_perms(entries, vm)
        if not perms["u"]:                   # §15.25.5: nested walks are user accesses
            return "permission"
        if access == "write" and not perms["w"]:
            return "permission"
        if access == "execute" and not perms["x"]:
            return "permission"
        return None

    def ad_updates(self, entries, access, vm):
        # §5.4.2: A is set in every entry used, D in the leaf on a write.
        return ad_updates_for(entries, access, self.fields["a"].mask, self.fields["d"].mask,
                              leaf_only=False)

    def fault_report(self, kind, access, gpa, entries, vm):
        if kind == "bus_error":
            return {"exit": "machine_check"}
        code = EC_U | EC_FINAL_GPA
        if access == "write":
            code |= EC_W
        if access == "execute" and vm.nxe:
            code |= EC_ID                    # §8.4.2: I/D is reported when NX is enabled
        if kind in ("permission", "reserved"):
            code |= EC_P
        if kind == "reserved":
            code |= EC_RSVD
        return {"exit": "npf", "error_code": code}

    # -- arch hooks for the TDP core (sw_model/tdp) --

    def tdp_present_mask(self, words):
        return (words & np.uint64(self.fields["p"].mask)) != 0

    def tdp_write_mask(self):
        return self.fields["rw"].mask

    def tdp_nx_huge_pages(self):
        return True

    def tdp_can_deny_exec(self, vm):
        # Without EFER.NXE bit 63 is reserved (APM Vol. 2 §5.6.1): nothing is non-executable.
        return vm.nxe


def make_npt(levels):
    return NptFormat(
        name=f"npt{levels}", arch="npt", levels=levels, root_index_bits=9,
        leaf_levels=frozenset({1, 2, 3}), fields=NPT_FIELDS,
        frame_field=Field(12, 40), frame_shift=12,
        # KVM's non-EPT SPTEs: host-writable bit 9, MMU-writable bit 10 (spte.h).
        sw_fields={"host_writable": Field(9), "mmu_writable": Field(10)},
        frozen_word=0x5a0,
        ad_modes=("hardware",), pa_bits_range=(36, 52), default_pa_bits=46,
        manual="AMD APM Vol. 2 §15.25")
