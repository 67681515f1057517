"""Intel EPT (SDM Vol. 3C ch. 29) as the RTL applies it."""

from amaranth import Cat, Const, Mux

from ..decode import ACCESS_IDS, EPT_BAD_MEMTYPES, EPT_QUAL, KIND_IDS
from .base import Arch, EntryView, LeafCheck

__all__ = ["Ept"]

K = KIND_IDS


class Ept(Arch):
    name = "ept"

    def entry(self, word, level1, leaf_ok, exec_only):
        c = self.c
        r, w, x = word[c.bit_r], word[c.bit_w], word[c.bit_x]
        memtype = word[c.memtype_lsb:c.memtype_lsb + c.memtype_width]
        leaf = level1 | (leaf_ok & word[c.bit_ps])
        # 29.3.2: present iff any of R/W/X. 29.3.3.1: write without read, execute-only
        # without the capability, and a leaf's reserved memory type misconfigure.
        return EntryView(
            present=r | w | x, leaf=leaf, frame=self.frame(word),
            perms=Cat(r, w, x, Const(1, 1)), a=word[c.bit_a], d=word[c.bit_d],
            memtype=memtype,
            bad=(w & ~r) | (x & ~r & ~w & ~exec_only)
                | (leaf & memtype.matches(*EPT_BAD_MEMTYPES)))

    def leaf(self, acc, ent, want, *, nxe, svade, write, misaligned, a, d):
        # 29.3.3.2: an access needs the permission in every entry used.
        return LeafCheck(perms=Cat(acc[:3], Const(0, 1)),
                         faults=[((acc[:3] & want) == 0, K["permission"])])

    def user(self, perms):
        return Const(1, 1)

    def report(self, kind, access, perms, gpa, nxe):
        exits = self.exits
        exit_ = Mux(kind == K["bus_error"], exits["machine_check"],
                    Mux(kind == K["reserved"], exits["ept_misconfig"], exits["ept_violation"]))
        qual = Mux(access == ACCESS_IDS["write"], EPT_QUAL["write"],
                   Mux(access == ACCESS_IDS["execute"], EPT_QUAL["execute"], EPT_QUAL["read"]))
        # Table 28-7: bits 5:3 report the walk's R/W/X only for a permission fault.
        rwx = (Mux(perms[0], EPT_QUAL["r"], 0) | Mux(perms[1], EPT_QUAL["w"], 0)
               | Mux(perms[2], EPT_QUAL["x"], 0))
        code = Mux(exit_ == exits["ept_violation"],
                   qual | Mux(kind == K["permission"], rwx, 0), 0)
        return exit_, code, Const(0, 64)

    def report_to_model(self, exit_id, code, htval):
        name = self.exit_name(exit_id)
        if name == "ept_violation":
            return {"exit": name, "qualification": code}
        return {"exit": name}
