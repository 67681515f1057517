"""Intel EPT, 4- and 5-level (Intel SDM Vol. 3C §29.3 "The Extended Page Table Mechanism").

Entry layout (§29.3.2, Tables 29-1 to 29-7): bits 2:0 R/W/X, 5:3 memory type (leaf),
6 ignore-PAT (leaf), 7 page size (PDPTE, PDE), 8 accessed, 9 dirty (leaf), 10 user-mode
execute (mode-based execute control, not modelled: ignored), address in bits
(MAXPHYADDR-1):12, bits 51:MAXPHYADDR reserved, 63:52 ignored.
"""

from dataclasses import dataclass

import numpy as np

from .base import Field, Entry, PageTableFormat, ad_updates_for, bits

__all__ = ["EptFormat"]

EPT_FIELDS = {
    "r": Field(0), "w": Field(1), "x": Field(2),
    "memtype": Field(3, 3), "ipat": Field(6), "ps": Field(7),
    "a": Field(8), "d": Field(9),
}

# SDM Vol. 3C §29.3, "Memory Type Used for Translated Guest-Physical Addresses": EPT memory
# types 2, 3 and 7 are reserved; a leaf using one is an EPT misconfiguration (§29.3.3.1).
EPT_BAD_MEMTYPES = frozenset({2, 3, 7})

# Exit qualification for EPT violations (SDM Vol. 3C Table 28-7).
QUAL_READ, QUAL_WRITE, QUAL_FETCH = 1 << 0, 1 << 1, 1 << 2
QUAL_READABLE, QUAL_WRITABLE, QUAL_EXECUTABLE = 1 << 3, 1 << 4, 1 << 5


@dataclass(frozen=True, eq=False)
class EptFormat(PageTableFormat):

    def reserved_mask(self, level, leaf, vm):
        # §29.3.3.1: bits 51:MAXPHYADDR of every present entry are reserved.
        mask = bits(51, vm.pa_bits)
        if level >= 4:
            mask |= bits(7, 3)               # PML5E / PML4E: bits 7:3 reserved
        elif level > 1 and not leaf:
            mask |= bits(6, 3)               # PDPTE / PDE referencing a table
        elif level > 1 and leaf:
            mask |= bits(self.page_shift(level) - 1, 12)   # 1G: 29:12, 2M: 20:12
        return mask

    def is_present(self, word):
        # §29.3.2: an entry is present if any of bits 2:0 is set.
        return bool(word & 0b111)

    def decode(self, word, level):
        f = self.fields
        present = self.is_present(word)
        leaf = level == 1 or (level in self.leaf_levels and bool(f["ps"].get(word)))
        return Entry(word=word, level=level, present=present, leaf=leaf,
                     frame=self.frame_of(word) & ~(self.page_size(level) - 1 if leaf else 0),
                     r=bool(f["r"].get(word)), w=bool(f["w"].get(word)), x=bool(f["x"].get(word)),
                     a=bool(f["a"].get(word)), d=bool(f["d"].get(word)),
                     memtype=f["memtype"].get(word) if leaf else 0)

    def make_table(self, table_hpa):
        return self.put_frame(0b111, table_hpa)

    def make_leaf(self, hpa, level, *, r=True, w=True, x=True, memtype=None,
                  a=False, d=False):
        f = self.fields
        word = self.put_frame(0, hpa) | r << 0 | w << 1 | x << 2 | a << 8 | d << 9
        word = f["memtype"].put(word, 6 if memtype is None else memtype)   # 6 = write-back
        if level > 1:
            word |= f["ps"].mask
        return word

    def entry_fault(self, word, level, vm):
        if not self.is_present(word):
            return "not_present"
        xwr = word & 0b111
        # §29.3.3.1: write-only / write-execute entries, and execute-only without the
        # capability, are misconfigurations at any level.
        if xwr in (0b010, 0b110) or (xwr == 0b100 and not vm.exec_only):
            return "reserved"
        entry = self.decode(word, level)
        if word & self.reserved_mask(level, entry.leaf, vm):
            return "reserved"
        if entry.leaf and entry.memtype in EPT_BAD_MEMTYPES:
            return "reserved"
        return None

    def effective_perms(self, entries, vm):
        # §29.3.3.2: an access is allowed only if every entry used allows it.
        return {"r": all(e.r for e in entries), "w": all(e.w for e in entries),
                "x": all(e.x for e in entries)}

    def leaf_fault(self, entries, access, vm):
        perms = self.effective_perms(entries, vm)
        if not perms[{"read": "r", "write": "w", "execute": "x"}[access]]:
            return "permission"
        return None

    def ad_updates(self, entries, access, vm):
        # SDM Vol. 3C §29.3, "Accessed and Dirty Flags for EPT": with EPTP[6] set, the
        # accessed flag is set in every entry used and the dirty flag in the leaf on a write.
        if vm.ad != "hardware":
            return []
        return ad_updates_for(entries, access, self.fields["a"].mask, self.fields["d"].mask,
                              leaf_only=False)

    def fault_report(self, kind, access, gpa, entries, vm):
        if kind == "bus_error":
            return {"exit": "machine_check"}
        if kind == "reserved":
            return {"exit": "ept_misconfig"}
        qual = {"read": QUAL_READ, "write": QUAL_WRITE, "execute": QUAL_FETCH}[access]
        # Bits 5:3 are the AND of R/W/X over the entries used, the faulting one
        # included; a not-present entry contributes zeros.
        if entries and kind == "permission":
            perms = self.effective_perms(entries, vm)
            qual |= (QUAL_READABLE * perms["r"] | QUAL_WRITABLE * perms["w"]
                     | QUAL_EXECUTABLE * perms["x"])
        return {"exit": "ept_violation", "qualification": qual}

    # -- arch hooks for the TDP core (sw_model/tdp) --

    def tdp_write_mask(self):
        return self.fields["w"].mask

    def tdp_nx_huge_pages(self):
        return True

    def tdp_shared_bit_default(self):
        # TDX: GPA.SHARED is the top GPA bit of the secure EPT, bit 47 with 4 levels
        # (GPAW 48) and bit 51 with 5 levels (GPAW 52) (Intel TDX Module base spec,
        # "GPA Shared Bit").
        return {4: 47, 5: 51}[self.levels]

    def _tdp_rx_mask(self):
        return self.fields["r"].mask | self.fields["x"].mask

    def tdp_is_shadow_present(self, word):
        # An access-tracked entry (A/D off) is not present to the CPU but still maps
        # the page for KVM: its R/X live in the saved_rwx software bits.
        return self.is_present(word) or bool(self.sw_fields["saved_rwx"].get(word))

    def tdp_present_mask(self, words):
        rwx = self.fields["r"].mask | self.fields["w"].mask | self.fields["x"].mask
        return (words & np.uint64(rwx | self.sw_fields["saved_rwx"].mask)) != 0

    def _tdp_releaf(self, word, level, new_level, hpa, executable):
        # KVM's make_spte_executable: an access-tracked entry is restored, changed and
        # tracked again, so X lands in the saved bits, never in a non-readable entry.
        saved = self.sw_fields["saved_rwx"]
        if self.is_present(word) or not saved.get(word):
            return super()._tdp_releaf(word, level, new_level, hpa, executable)
        new = super()._tdp_releaf(self._tdp_restore_acc_track(word), level, new_level, hpa,
                                  executable)
        rwx = self.fields["r"].mask | self.fields["w"].mask | self.fields["x"].mask
        return saved.put(new & ~rwx, new & self._tdp_rx_mask())

    def _tdp_restore_acc_track(self, word):
        saved = self.sw_fields["saved_rwx"]
        if self.is_present(word) or not saved.get(word):
            return word
        return saved.put(word, 0) | saved.get(word)

    def tdp_mark_not_accessed(self, word, vm):
        # KVM's mark_spte_for_access_track without A/D bits (EPTP[6] clear; SDM Vol. 3C
        # §29.3, "Accessed and Dirty Flags for EPT"): save R and X in software bits and
        # clear R/W/X so that the next access faults (an EPT violation, entry not
        # present). W is not saved; a write fault restores it (dirty tracking by W).
        if self.tdp_ad_enabled(vm):
            return super().tdp_mark_not_accessed(word, vm)
        if not self.is_present(word):
            return word
        rwx = self.fields["r"].mask | self.fields["w"].mask | self.fields["x"].mask
        saved = self.sw_fields["saved_rwx"]
        return saved.put(word & ~rwx, word & self._tdp_rx_mask())


def make_ept(levels):
    return EptFormat(
        name=f"ept{levels}", arch="ept", levels=levels, root_index_bits=9,
        leaf_levels=frozenset({1, 2, 3}), fields=EPT_FIELDS,
        frame_field=Field(12, 40), frame_shift=12,
        # KVM's EPT SPTEs: host-writable bit 57, MMU-writable bit 58 (spte.h), and
        # bits 54:56 to save R/W/X while access tracking makes an entry not present.
        sw_fields={"host_writable": Field(57), "mmu_writable": Field(58),
                   "saved_rwx": Field(54, 3)},
        frozen_word=0x5a0,
        ad_modes=("hardware", "off"), pa_bits_range=(36, 52), default_pa_bits=46,
        manual="Intel SDM Vol. 3C §29.3")
