"""RISC-V G-stage translation: Sv39x4, Sv48x4, Sv57x4.

RISC-V Privileged Architecture, "Hypervisor Extension", §"Two-Stage Address
Translation" / "Guest Physical Address Translation" (hgatp), which reuses the Sv39/48/57
PTE format and the algorithm of §"Virtual Address Translation Process" with these
changes: the root table is 16 KiB (2 extra GPA bits, 2048 entries), every access is
checked as a U-mode access, and a fault is a guest-page fault (cause 20, 21, 23) with
htval = GPA >> 2.

PTE layout (§"Sv39 Implementation"): 0 V, 1 R, 2 W, 3 X, 4 U, 5 G (ignored for G-stage),
6 A, 7 D, 9:8 RSW, 53:10 PPN, 63:54 reserved (Svpbmt and Svnapot are not implemented,
so PBMT and N are reserved too).
"""

from dataclasses import dataclass

import numpy as np

from .base import Field, Entry, FormatError, PageTableFormat, ad_updates_for, bits

__all__ = ["GstageFormat"]

GSTAGE_FIELDS = {
    "v": Field(0), "r": Field(1), "w": Field(2), "x": Field(3), "u": Field(4),
    "g": Field(5), "a": Field(6), "d": Field(7),
}

GUEST_PAGE_FAULT = {"execute": 20, "read": 21, "write": 23}
ACCESS_FAULT = {"execute": 1, "read": 5, "write": 7}


@dataclass(frozen=True, eq=False)
class GstageFormat(PageTableFormat):

    def reserved_mask(self, level, leaf, vm):
        mask = bits(63, 54)                  # reserved for future standard use
        if not leaf:
            # "For non-leaf PTEs, the D, A, and U bits are reserved for future
            # standard use" and a set reserved bit raises a page fault (step 2).
            mask |= bits(7, 6) | bits(4, 4)
        return mask

    def is_present(self, word):
        return bool(word & 1)

    def decode(self, word, level):
        f = self.fields
        leaf = bool(word & 0b1110)           # any of R, W, X
        return Entry(word=word, level=level, present=self.is_present(word), leaf=leaf,
                     frame=self.frame_of(word), r=bool(f["r"].get(word)),
                     w=bool(f["w"].get(word)), x=bool(f["x"].get(word)),
                     u=bool(f["u"].get(word)), a=bool(f["a"].get(word)),
                     d=bool(f["d"].get(word)))

    def make_table(self, table_hpa):
        return self.put_frame(1, table_hpa)

    def make_leaf(self, hpa, level, *, r=True, w=True, x=True, memtype=None,
                  a=False, d=False):
        if memtype:
            raise FormatError("G-stage entries carry no memory type (Svpbmt not implemented)")
        return self.put_frame(0, hpa) | 1 | r << 1 | w << 2 | x << 3 | 1 << 4 | a << 6 | d << 7

    def entry_fault(self, word, level, vm):
        # Translation process step 3: V=0, or R=0 with W=1, or a reserved bit set.
        if not self.is_present(word):
            return "not_present"
        if word & 0b110 == 0b100:
            return "reserved"
        entry = self.decode(word, level)
        if word & self.reserved_mask(level, entry.leaf, vm):
            return "reserved"
        # Step 4: a pointer at the last level is a page fault.
        if not entry.leaf and level == 1:
            return "reserved"
        return None

    def effective_perms(self, entries, vm):
        leaf = entries[-1]
        return {"r": leaf.r, "w": leaf.w, "x": leaf.x, "u": leaf.u}

    def _leaf_permission(self, leaf, access, vm):
        # Step 5: G-stage accesses are checked as U-mode: U must be set.
        return leaf.u and {"read": leaf.r, "write": leaf.w, "execute": leaf.x}[access]

    def leaf_fault(self, entries, access, vm):
        leaf = entries[-1]
        if not self._leaf_permission(leaf, access, vm):
            return "permission"
        # Step 6: a superpage whose low PPN bits are not zero is misaligned.
        if leaf.level > 1 and leaf.frame & (self.page_size(leaf.level) - 1):
            return "misaligned"
        # Step 7 (Svade): A clear, or D clear on a store, faults.
        if vm.ad == "fault" and (not leaf.a or (access == "write" and not leaf.d)):
            return "ad_clear"
        return None

    def ad_updates(self, entries, access, vm):
        # Svadu: A (and D on a store) is set in the leaf only, atomically with the
        # permission check; non-leaf A/D are reserved.
        if vm.ad != "hardware":
            return []
        return ad_updates_for(entries, access, self.fields["a"].mask, self.fields["d"].mask,
                              leaf_only=True)

    def fault_report(self, kind, access, gpa, entries, vm):
        if kind == "bus_error":
            # An implicit access that fails is an access fault; htval is zero for
            # traps other than guest-page faults.
            return {"cause": ACCESS_FAULT[access], "htval": 0}
        return {"cause": GUEST_PAGE_FAULT[access], "htval": gpa >> 2}

    # -- arch hooks for the TDP core (sw_model/tdp) --

    def tdp_present_mask(self, words):
        return (words & np.uint64(self.fields["v"].mask)) != 0

    def tdp_write_mask(self):
        return self.fields["w"].mask

    def tdp_map_levels(self):
        # Up to 512 GiB leaves (level 4), as Sv48x4/Sv57x4 allow; level-5 leaves
        # (256 TiB) are legal but never useful for a memslot.
        return tuple(sorted(level for level in self.leaf_levels if level <= 4))


def make_gstage(levels):
    return GstageFormat(
        name={3: "sv39x4", 4: "sv48x4", 5: "sv57x4"}[levels], arch="gstage",
        levels=levels, root_index_bits=11,
        # Any level may hold a leaf (Sv57 has 256 TiB pages at its root).
        leaf_levels=frozenset(range(1, levels + 1)), fields=GSTAGE_FIELDS,
        frame_field=Field(10, 44), frame_shift=12,
        sw_fields={"host_writable": Field(8), "mmu_writable": Field(9)},
        frozen_word=0x5a0,
        ad_modes=("hardware", "fault"), pa_bits_range=(56, 56), default_pa_bits=56,
        manual="RISC-V Privileged Architecture, Hypervisor Extension")
