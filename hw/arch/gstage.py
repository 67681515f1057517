"""RISC-V G-stage (privileged spec, "Hypervisor Extension", two-stage address
translation) as the RTL applies it."""

from amaranth import Cat, Const, Mux

from ..decode import ACCESS_IDS, GSTAGE_CAUSE, KIND_IDS
from .base import Arch, EntryView, LeafCheck

__all__ = ["GStage"]

K = KIND_IDS


class GStage(Arch):
    name = "gstage"
    ad_every_level = False          # Svadu sets A/D in the leaf only

    def entry(self, word, level1, leaf_ok, exec_only):
        c = self.c
        r, w, x = word[c.bit_r], word[c.bit_w], word[c.bit_x]
        leaf = r | w | x
        # Sv39 translation process steps 3 and 4: W without R, or a pointer at the
        # last level, is a page fault.
        return EntryView(
            present=word[c.bit_v], leaf=leaf, frame=self.frame(word),
            perms=Cat(r, w, x, word[c.bit_u]), a=word[c.bit_a], d=word[c.bit_d],
            memtype=Const(0, 3), bad=(w & ~r) | (~leaf & level1))

    def leaf(self, acc, ent, want, *, nxe, svade, write, misaligned, a, d):
        # Steps 5 to 7: U-mode check on the leaf, misaligned superpage, Svade's A/D.
        return LeafCheck(perms=ent, faults=[
            (~ent[3] | ((ent[:3] & want) == 0), K["permission"]),
            (misaligned, K["misaligned"]),
            (svade & (~a | (write & ~d)), K["ad_clear"]),
        ])

    def ad_wanted(self, leaf, write, a, d):
        return leaf & (~a | (write & ~d))

    def report(self, kind, access, perms, gpa, nxe):
        exits = self.exits
        bus = kind == K["bus_error"]
        cause = Const(0, 64)
        for name in ("read", "write", "execute"):
            cause = Mux(access == ACCESS_IDS[name],
                        Mux(bus, GSTAGE_CAUSE["access_fault"][name],
                            GSTAGE_CAUSE["page_fault"][name]), cause)
        # htval is GPA >> 2 for a guest-page fault and zero for an access fault.
        return (Mux(bus, exits["access_fault"], exits["guest_page_fault"]), cause,
                Mux(bus, 0, gpa >> 2))

    def report_to_model(self, exit_id, code, htval):
        self.exit_name(exit_id)
        return {"cause": code, "htval": htval}
