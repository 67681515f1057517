"""AMD NPT (APM Vol. 2 §15.25, x86-64 long-mode entries) as the RTL applies it."""

from amaranth import Cat, Const, Mux

from ..decode import ACCESS_IDS, KIND_IDS, NPT_EC
from .base import Arch, EntryView, LeafCheck

__all__ = ["Npt"]

K = KIND_IDS


class Npt(Arch):
    name = "npt"

    def entry(self, word, level1, leaf_ok, exec_only):
        c = self.c
        pat = Mux(level1, word[c.bit_pat_4k], word[c.bit_pat_large])
        return EntryView(
            present=word[c.bit_v], leaf=level1 | (leaf_ok & word[c.bit_ps]),
            frame=self.frame(word),
            perms=Cat(Const(1, 1), word[c.bit_w], ~word[c.bit_nx], word[c.bit_u]),
            a=word[c.bit_a], d=word[c.bit_d],
            memtype=Cat(word[c.bit_pwt], word[c.bit_pcd], pat), bad=Const(0, 1))

    def leaf(self, acc, ent, want, *, nxe, svade, write, misaligned, a, d):
        # 5.6 / 15.25.5: the most restrictive rights over all levels, a user access,
        # NX only with EFER.NXE.
        x = ~nxe | acc[2]
        perms = Cat(Const(1, 1), acc[1], x, acc[3])
        fault = ~acc[3] | (want[1] & ~acc[1]) | (want[2] & ~x)
        return LeafCheck(perms=perms, faults=[(fault, K["permission"])])

    def ad_enabled(self, ad_hardware):
        return Const(1, 1)          # 5.4.2: the walker always sets A and D

    def write_tracked(self, ad_off):
        return Const(1, 1)

    def report(self, kind, access, perms, gpa, nxe):
        exits = self.exits
        exit_ = Mux(kind == K["bus_error"], exits["machine_check"], exits["npf"])
        # 15.25.6 / 8.4.2: the #NPF error code in EXITINFO1.
        p = (kind == K["permission"]) | (kind == K["reserved"])
        code = (NPT_EC["u"] | NPT_EC["final"] | Mux(access == ACCESS_IDS["write"], NPT_EC["w"], 0)
                | Mux((access == ACCESS_IDS["execute"]) & nxe, NPT_EC["id"], 0)
                | Mux(p, NPT_EC["p"], 0) | Mux(kind == K["reserved"], NPT_EC["rsvd"], 0))
        return exit_, Mux(exit_ == exits["npf"], code, 0), Const(0, 64)

    def report_to_model(self, exit_id, code, htval):
        name = self.exit_name(exit_id)
        if name == "npf":
            return {"exit": name, "error_code": code}
        return {"exit": name}
