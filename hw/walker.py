"""The stage-2 page-table walker: one FSM for EPT, NPT and RISC-V G-stage tables.

A request (GPA, access, VM index, tag) selects a per-VM context (format, root, A/D
mode, physical-address width, EPT execute-only capability, EFER.NXE) from a small
register table. The walker reads one PTE per level over AXI, decodes it in the cycle
its R beat arrives (decode constants from :mod:`hw.decode`, generated from
``sw_model.formats``), and either issues the next read on the following cycle or
finishes. Successful walks that must set A/D bits do so root first with AXI5
AtomicCompare transactions against the word the walk read; a failed compare restarts
the walk, exactly as :func:`sw_model.walker.translate` does.

A context marked ``td`` (a TDX-style confidential VM) has a second root: a GPA whose
shared bit is clear walks ``ext_root`` (the external table), one whose shared bit is
set walks ``root``; the choice is made when the request is accepted and costs no cycle.

The fault rules here are written for the RTL from the manuals and cross-checked against
the reference walker by tests/test_hw_walker.py and tests/test_hw_directed.py.
"""

from amaranth import Array, Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .axi import AXI4Signature, Atop, Burst
from .decode import (ACCESS_IDS, AD_IDS, ALL_CONSTANTS, ARCH_IDS, EPT_BAD_MEMTYPES,
                     EPT_QUAL, EXIT_IDS, GSTAGE_CAUSE, KIND_IDS, MAX_LEVELS, NPT_EC,
                     PA_WIDTH, page_shift)

__all__ = ["Walker", "check_parameters", "request_layout", "response_layout", "CONTEXT_LAYOUT",
           "ContextWriteSignature", "PERMS_LAYOUT", "REPORT_LAYOUT", "is_private",
           "walk_root"]

#: Per-VM context. ``format``: :data:`hw.decode.FORMAT_IDS`; ``ad``:
#: :data:`hw.decode.AD_IDS`; ``root``: host-physical address of the root table (for a
#: confidential VM, the shared root). ``td`` makes the VM a TDX-style trust domain:
#: a GPA with bit ``shared_bit`` clear is private and walks ``ext_root`` (the external,
#: "secure EPT" root the TDX module owns), a GPA with it set walks ``root``; both walks
#: index with the full GPA, as KVM's direct root does (kvm_gfn_direct_bits). The TDX
#: fields come last so that the other fields keep their offsets.
CONTEXT_LAYOUT = data.StructLayout({
    "format": 3, "root": PA_WIDTH, "ad": 2, "pa_bits": 6, "exec_only": 1, "nxe": 1,
    "td": 1, "shared_bit": 6, "ext_root": PA_WIDTH,
})
PERMS_LAYOUT = data.StructLayout({"r": 1, "w": 1, "x": 1, "u": 1})
#: The architecture's report: ``exit`` from :data:`hw.decode.EXIT_IDS`; ``code`` is the
#: EPT exit qualification, the #NPF error code or the RISC-V cause; ``htval`` is
#: RISC-V htval (GPA >> 2 for a guest-page fault, else 0).
REPORT_LAYOUT = data.StructLayout({"exit": 2, "code": 64, "htval": 64})


def request_layout(vm_bits, tag_bits):
    """``gpa`` (64), ``access`` (2, :data:`hw.decode.ACCESS_IDS`), ``vm``, ``tag``."""
    return data.StructLayout({"gpa": 64, "access": 2, "vm": vm_bits, "tag": tag_bits})


def response_layout(tag_bits):
    """A translation (``ok`` = 1: ``hpa``, ``level``, ``perms``, ``memtype``) or a fault
    (``ok`` = 0: ``kind``, ``level``, ``pte_addr``/``pte_addr_valid``, ``report``)."""
    return data.StructLayout({
        "ok": 1, "kind": 3, "level": 3, "hpa": PA_WIDTH,
        "perms": PERMS_LAYOUT, "memtype": 3, "pte_addr": PA_WIDTH, "pte_addr_valid": 1,
        "report": REPORT_LAYOUT, "tag": tag_bits,       # last: fixed offsets above it
    })


def is_private(ctx, gpa):
    """1 when ``gpa`` is a private GPA of the context ``ctx`` (a ``CONTEXT_LAYOUT`` view):
    the VM is a TD and the shared bit is clear."""
    return ctx.td & ~gpa.bit_select(ctx.shared_bit, 1)


def walk_root(ctx, gpa):
    """The root a walk of ``gpa`` starts from: ``ext_root`` for a private GPA, else
    ``root``."""
    return Mux(is_private(ctx, gpa), ctx.ext_root, ctx.root)


class ContextWriteSignature(wiring.Signature):
    """Context table write port: when ``valid``, entry ``index`` becomes ``data``.

    Members
    -------
    valid : Out(1)
    index : Out(vm_bits)
    data : Out(CONTEXT_LAYOUT)
    """

    def __init__(self, vm_bits):
        super().__init__({"valid": Out(1), "index": Out(vm_bits), "data": Out(CONTEXT_LAYOUT)})


def check_parameters(*, num_vms=4, tag_bits=8, axi_id_width=4):
    """Raise ValueError naming the parameter unless the walker can be built with these."""
    def is_int(value):
        return isinstance(value, int) and not isinstance(value, bool)
    if not is_int(num_vms) or num_vms < 1 or num_vms & (num_vms - 1):
        raise ValueError(f"num_vms must be a power of two >= 1, got {num_vms!r}")
    if not is_int(tag_bits) or not 1 <= tag_bits <= 32:
        raise ValueError(f"tag_bits must be an integer in [1, 32], got {tag_bits!r}")
    if not is_int(axi_id_width) or not 1 <= axi_id_width <= 16:
        raise ValueError(f"axi_id_width must be an integer in [1, 16], got {axi_id_width!r}")


class Walker(wiring.Component):
    """Page-table walker for all seven formats, chosen per VM at run time.

    Parameters
    ----------
    num_vms : int
        Entries of the context table, a power of two.
    tag_bits : int
        Width of the request tag echoed in the response.
    axi_id_width : int
        AXI ID width. Every transaction uses ID 0; one is outstanding at a time. AXI
        addresses are 64 bits wide (host-physical addresses are 56 bits, zero-extended).

    Members
    -------
    req : In(stream.Signature(request_layout(vm_bits, tag_bits)))
        Translation requests; accepted only while the walker is idle.
    resp : Out(stream.Signature(response_layout(tag_bits)))
        One response per request, in order.
    ctx : In(ContextWriteSignature(vm_bits))
        Context table write port. A walk uses the context latched when it was accepted.
    axi : Out(AXI4Signature(...))
        PTE reads (AR/R, ARPROT privileged data) and A/D AtomicCompares (AW/W/B + R).
    """

    def __init__(self, *, num_vms=4, tag_bits=8, axi_id_width=4):
        check_parameters(num_vms=num_vms, tag_bits=tag_bits, axi_id_width=axi_id_width)
        self.num_vms, self.tag_bits = num_vms, tag_bits
        self.vm_bits = max(1, (num_vms - 1).bit_length())
        super().__init__({
            "req": In(stream.Signature(request_layout(self.vm_bits, tag_bits))),
            "resp": Out(stream.Signature(response_layout(tag_bits))),
            "ctx": In(ContextWriteSignature(self.vm_bits)),
            "axi": Out(AXI4Signature(addr_width=64, data_width=64, id_width=axi_id_width)),
        })

    def elaborate(self, platform):
        m = Module()
        axi, req, resp = self.axi, self.req, self.resp
        EPT, NPT, GST = ARCH_IDS["ept"], ARCH_IDS["npt"], ARCH_IDS["gstage"]
        K = KIND_IDS
        WRITE, EXEC = ACCESS_IDS["write"], ACCESS_IDS["execute"]

        # -- context table ------------------------------------------------------------
        contexts = Array(Signal(CONTEXT_LAYOUT.size, name=f"context{i}")
                         for i in range(self.num_vms))
        with m.If(self.ctx.valid):
            m.d.sync += contexts[self.ctx.index].eq(self.ctx.data.as_value())

        # -- walk state (latched at accept) ---------------------------------------------
        fmt = Signal(3)
        arch = Signal(2)
        levels = Signal(3)
        ad_on = Signal()            # the walker sets A/D bits (x86 A/D, Svadu)
        svade = Signal()            # G-stage Svade: a clear A/D faults
        pa_high = Signal(64)        # ~((1 << pa_bits) - 1): bits reserved above pa_bits
        exec_only = Signal()
        nxe = Signal()
        gpa = Signal(64)
        access = Signal(2)
        tag = Signal(self.tag_bits)
        root_addr = Signal(PA_WIDTH)
        level = Signal(3)
        ar_addr = Signal(PA_WIDTH)
        words = [Signal(64, name=f"word_l{l}") for l in range(1, MAX_LEVELS + 1)]
        addrs = [Signal(PA_WIDTH, name=f"addr_l{l}") for l in range(1, MAX_LEVELS + 1)]
        acc = Signal(PERMS_LAYOUT, init={"r": 1, "w": 1, "x": 1, "u": 1})
        need = Signal(MAX_LEVELS)   # bit l-1: the entry at level l needs an A/D update
        leaf_level = Signal(3)

        # response registers
        r_ok = Signal()
        r_kind = Signal(3)
        r_level = Signal(3)
        r_hpa = Signal(PA_WIDTH)
        r_perms = Signal(PERMS_LAYOUT)
        r_memtype = Signal(3)
        r_pte_addr = Signal(PA_WIDTH)
        r_pte_valid = Signal()

        # -- request decode (combinational, on the incoming request) -------------------
        ctx_in = data.View(CONTEXT_LAYOUT, contexts[req.payload.vm])
        in_gpa = req.payload.gpa
        in_range = Signal()
        in_root_addr = Signal(PA_WIDTH)
        in_arch = Signal(2)
        in_levels = Signal(3)
        in_base = walk_root(ctx_in, in_gpa)[12:]    # the root table this GPA walks, in pages
        with m.Switch(ctx_in.format):
            for c in ALL_CONSTANTS:
                with m.Case(c.fmt_id):
                    shift = c.page_shift(c.levels)
                    index = in_gpa[shift:shift + c.root_index_bits]
                    m.d.comb += [
                        in_range.eq(in_gpa[c.gpa_bits:] == 0),
                        # The root table is aligned to its size: address bits below
                        # it are not part of the root (hgatp.PPN[1:0] read as zero,
                        # RISC-V priv. spec "Hypervisor Address Translation and
                        # Protection Register"; EPTP/nCR3 bits 11:0 are not address bits).
                        in_root_addr.eq(Cat(Const(0, 3), index,
                                            in_base[3 + c.root_index_bits - 12:])),
                        in_arch.eq(c.arch_id),
                        in_levels.eq(c.levels),
                    ]

        # -- PTE decode (combinational, on the R beat at the current level) ------------
        word = axi.rdata
        present = Signal()
        leaf = Signal()
        frame = Signal(PA_WIDTH)
        ent = Signal(PERMS_LAYOUT)
        ent_a = Signal()
        ent_d = Signal()
        memtype = Signal(3)
        bad_encoding = Signal()     # reserved encodings other than reserved bits
        rsvd_mask = Signal(64)
        a_mask = Signal(64)
        d_mask = Signal(64)
        page_mask = Signal(PA_WIDTH)
        next_index = Signal(9)
        with m.Switch(level):
            for l in range(1, MAX_LEVELS + 1):
                with m.Case(l):
                    m.d.comb += page_mask.eq((1 << page_shift(l)) - 1)
                    if l > 1:
                        shift = page_shift(l - 1)
                        m.d.comb += next_index.eq(gpa[shift:shift + len(next_index)])

        with m.Switch(fmt):
            for c in ALL_CONSTANTS:
                with m.Case(c.fmt_id):
                    leaf_allowed = Const(c.leaf_levels, MAX_LEVELS + 1).bit_select(level, 1)
                    m.d.comb += [
                        frame.eq(word[c.frame_lsb:c.frame_lsb + c.frame_width] << c.frame_shift),
                        ent_a.eq(word[c.bit_a]), ent_d.eq(word[c.bit_d]),
                        a_mask.eq(1 << c.bit_a), d_mask.eq(1 << c.bit_d),
                    ]
                    if c.arch == "ept":
                        r, w, x = word[c.bit_r], word[c.bit_w], word[c.bit_x]
                        mt = word[c.memtype_lsb:c.memtype_lsb + c.memtype_width]
                        # SDM 29.3.2: present iff any of R/W/X; 29.3.3.1: write without
                        # read, or execute-only without the capability, misconfigure.
                        m.d.comb += [
                            present.eq(r | w | x),
                            leaf.eq((level == 1) | (leaf_allowed & word[c.bit_ps])),
                            ent.eq(Cat(r, w, x, Const(1, 1))),
                            bad_encoding.eq((w & ~r) | (x & ~r & ~w & ~exec_only)
                                            | (leaf & mt.matches(*EPT_BAD_MEMTYPES))),
                            memtype.eq(mt),
                        ]
                    elif c.arch == "npt":
                        pat = Mux(level == 1, word[c.bit_pat_4k], word[c.bit_pat_large])
                        m.d.comb += [
                            present.eq(word[c.bit_v]),
                            leaf.eq((level == 1) | (leaf_allowed & word[c.bit_ps])),
                            ent.eq(Cat(Const(1, 1), word[c.bit_w], ~word[c.bit_nx],
                                       word[c.bit_u])),
                            memtype.eq(Cat(word[c.bit_pwt], word[c.bit_pcd], pat)),
                        ]
                    else:
                        r, w, x = word[c.bit_r], word[c.bit_w], word[c.bit_x]
                        # Privileged spec, Sv39 translation process step 3 and 4:
                        # V=0, W without R, or a pointer at level 1 is a page fault.
                        m.d.comb += [
                            present.eq(word[c.bit_v]),
                            leaf.eq(r | w | x),
                            ent.eq(Cat(r, w, x, word[c.bit_u])),
                            bad_encoding.eq((w & ~r) | (~leaf & (level == 1))),
                        ]
                    with m.Switch(level):
                        for l in range(1, c.levels + 1):
                            with m.Case(l):
                                s_t, p_t, n_t = c.reserved[(l, False)]
                                s_l, p_l, n_l = c.reserved[(l, True)]
                                m.d.comb += rsvd_mask.eq(Mux(
                                    leaf,
                                    s_l | (pa_high & p_l) | Mux(nxe, 0, n_l),
                                    s_t | (pa_high & p_t) | Mux(nxe, 0, n_t)))

        entry_fault = Signal()
        entry_kind = Signal(3)
        with m.If(~present):
            m.d.comb += [entry_fault.eq(1), entry_kind.eq(K["not_present"])]
        with m.Elif(bad_encoding | (word & rsvd_mask).any()):
            m.d.comb += [entry_fault.eq(1), entry_kind.eq(K["reserved"])]

        # Permissions of the walk so far including this entry, and the leaf rules.
        acc_next = Signal(PERMS_LAYOUT)
        m.d.comb += acc_next.eq(acc.as_value() & ent.as_value())
        # The access as a mask in PERMS_LAYOUT order (r, w, x).
        want = Cat(access == ACCESS_IDS["read"], access == WRITE, access == EXEC)
        leaf_fault = Signal()
        leaf_kind = Signal(3)
        out_perms = Signal(PERMS_LAYOUT)
        with m.Switch(arch):
            with m.Case(EPT):
                # SDM 29.3.3.2: an access needs the permission in every entry used.
                m.d.comb += out_perms.eq(Cat(acc_next.r, acc_next.w, acc_next.x, Const(0, 1)))
                with m.If((acc_next.as_value() & want) == 0):
                    m.d.comb += [leaf_fault.eq(1), leaf_kind.eq(K["permission"])]
            with m.Case(NPT):
                # APM 5.6 / 15.25.5: most restrictive over levels, user access, NX
                # only with EFER.NXE.
                eff_x = ~nxe | acc_next.x
                m.d.comb += out_perms.eq(Cat(Const(1, 1), acc_next.w, eff_x, acc_next.u))
                with m.If(~acc_next.u | ((access == WRITE) & ~acc_next.w)
                          | ((access == EXEC) & ~eff_x)):
                    m.d.comb += [leaf_fault.eq(1), leaf_kind.eq(K["permission"])]
            with m.Case(GST):
                # Translation process steps 5-7: U-mode check on the leaf, misaligned
                # superpage, then Svade's A/D check.
                m.d.comb += out_perms.eq(ent)
                with m.If(~ent.u | ((ent.as_value() & want) == 0)):
                    m.d.comb += [leaf_fault.eq(1), leaf_kind.eq(K["permission"])]
                with m.Elif((frame & page_mask).any()):
                    m.d.comb += [leaf_fault.eq(1), leaf_kind.eq(K["misaligned"])]
                with m.Elif(svade & (~ent_a | ((access == WRITE) & ~ent_d))):
                    m.d.comb += [leaf_fault.eq(1), leaf_kind.eq(K["ad_clear"])]

        # A/D update this entry would need if the access succeeds (x86: every entry
        # used gets A, the leaf D on a write; Svadu: the leaf only).
        new_word = word | a_mask | Mux(leaf & (access == WRITE), d_mask, 0)
        need_here = ad_on & ((arch != GST) | leaf) & (new_word != word)
        level_bit = Signal(MAX_LEVELS)
        with m.Switch(level):
            for l in range(1, MAX_LEVELS + 1):
                with m.Case(l):
                    m.d.comb += level_bit.eq(1 << (l - 1))
        need_next = need | Mux(need_here, level_bit, 0)

        # -- A/D update selection: the highest level still to update (root first) -------
        sel = Signal(3)
        sel_bit = Signal(MAX_LEVELS)
        sel_word = Signal(64)
        sel_addr = Signal(PA_WIDTH)
        for l in range(1, MAX_LEVELS + 1):
            with m.If(need[l - 1]):
                m.d.comb += [sel.eq(l), sel_bit.eq(1 << (l - 1)),
                             sel_word.eq(words[l - 1]), sel_addr.eq(addrs[l - 1])]
        sel_new = sel_word | a_mask | Mux((sel == leaf_level) & (access == WRITE), d_mask, 0)
        aw_done = Signal()
        w_beat = Signal(2)
        got_r = Signal()
        got_b = Signal()
        ad_rdata = Signal(64)
        ad_err = Signal()

        # -- AXI constant fields ------------------------------------------------------
        m.d.comb += [
            axi.arid.eq(0), axi.arlen.eq(0), axi.arsize.eq(3), axi.arburst.eq(Burst.INCR),
            axi.arlock.eq(0), axi.arcache.eq(0b0010), axi.arprot.eq(0b001),
            axi.araddr.eq(ar_addr),
            axi.awid.eq(0), axi.awlen.eq(1), axi.awsize.eq(3), axi.awlock.eq(0),
            axi.awcache.eq(0b0010), axi.awprot.eq(0b001), axi.awatop.eq(Atop.COMPARE),
            axi.awaddr.eq(sel_addr),
            axi.awburst.eq(Mux(sel_addr[3], Burst.WRAP, Burst.INCR)),
            axi.wstrb.eq(0xff), axi.wlast.eq(w_beat == 1),
            axi.wdata.eq(Mux(w_beat == 0, sel_word, sel_new)),
        ]

        # -- response payload ---------------------------------------------------------
        rp = resp.payload
        m.d.comb += [
            rp.tag.eq(tag), rp.ok.eq(r_ok), rp.kind.eq(r_kind), rp.level.eq(r_level),
            rp.hpa.eq(r_hpa), rp.perms.eq(r_perms), rp.memtype.eq(r_memtype),
            rp.pte_addr.eq(r_pte_addr), rp.pte_addr_valid.eq(r_pte_valid),
        ]
        report = rp.report
        with m.If(~r_ok):
            with m.Switch(arch):
                with m.Case(EPT):
                    exits = EXIT_IDS["ept"]
                    qual = Mux(access == WRITE, EPT_QUAL["write"],
                               Mux(access == EXEC, EPT_QUAL["execute"], EPT_QUAL["read"]))
                    rwx = (Mux(r_perms.r, EPT_QUAL["r"], 0) | Mux(r_perms.w, EPT_QUAL["w"], 0)
                           | Mux(r_perms.x, EPT_QUAL["x"], 0))
                    with m.If(r_kind == K["bus_error"]):
                        m.d.comb += report.exit.eq(exits["machine_check"])
                    with m.Elif(r_kind == K["reserved"]):
                        m.d.comb += report.exit.eq(exits["ept_misconfig"])
                    with m.Else():
                        # SDM Table 28-7: bits 5:3 report the walk's R/W/X only for a
                        # permission fault (a not-present entry contributes zeros).
                        m.d.comb += [report.exit.eq(exits["ept_violation"]),
                                     report.code.eq(qual | Mux(r_kind == K["permission"],
                                                               rwx, 0))]
                with m.Case(NPT):
                    exits = EXIT_IDS["npt"]
                    with m.If(r_kind == K["bus_error"]):
                        m.d.comb += report.exit.eq(exits["machine_check"])
                    with m.Else():
                        # APM 15.25.6 / 8.4.2: the #NPF error code in EXITINFO1.
                        p = (r_kind == K["permission"]) | (r_kind == K["reserved"])
                        m.d.comb += [
                            report.exit.eq(exits["npf"]),
                            report.code.eq(
                                NPT_EC["u"] | NPT_EC["final"]
                                | Mux(access == WRITE, NPT_EC["w"], 0)
                                | Mux((access == EXEC) & nxe, NPT_EC["id"], 0)
                                | Mux(p, NPT_EC["p"], 0)
                                | Mux(r_kind == K["reserved"], NPT_EC["rsvd"], 0)),
                        ]
                with m.Case(GST):
                    exits = EXIT_IDS["gstage"]
                    with m.If(r_kind == K["bus_error"]):
                        m.d.comb += report.exit.eq(exits["access_fault"])
                    with m.Else():
                        m.d.comb += [report.exit.eq(exits["guest_page_fault"]),
                                     report.htval.eq(gpa >> 2)]
                    with m.Switch(want):
                        for name in ("read", "write", "execute"):
                            with m.Case(1 << ACCESS_IDS[name]):
                                cause = Mux(r_kind == K["bus_error"],
                                            GSTAGE_CAUSE["access_fault"][name],
                                            GSTAGE_CAUSE["page_fault"][name])
                                m.d.comb += report.code.eq(cause)

        def fault(kind, at_level, pte_addr, perms=None):
            stmts = [r_ok.eq(0), r_kind.eq(kind), r_level.eq(at_level),
                     r_pte_addr.eq(pte_addr), r_pte_valid.eq(1)]
            if perms is not None:
                stmts.append(r_perms.eq(perms))
            return stmts

        def restart():
            return [level.eq(levels), ar_addr.eq(root_addr), acc.eq(acc.shape().const(
                {"r": 1, "w": 1, "x": 1, "u": 1})), need.eq(0)]

        # -- the FSM ------------------------------------------------------------------
        with m.FSM(name="walk"):
            with m.State("IDLE"):
                m.d.comb += req.ready.eq(1)
                with m.If(req.valid):
                    c = ctx_in
                    m.d.sync += [
                        fmt.eq(c.format), arch.eq(in_arch), levels.eq(in_levels),
                        ad_on.eq((in_arch == NPT) | (c.ad == AD_IDS["hardware"])),
                        svade.eq((in_arch == GST) & (c.ad == AD_IDS["fault"])),
                        pa_high.eq((Const(2**64 - 1, 64) << c.pa_bits)[:64]),
                        exec_only.eq(c.exec_only), nxe.eq(c.nxe),
                        gpa.eq(in_gpa), access.eq(req.payload.access), tag.eq(req.payload.tag),
                        root_addr.eq(in_root_addr), ar_addr.eq(in_root_addr),
                        level.eq(in_levels), need.eq(0),
                        acc.eq(acc.shape().const({"r": 1, "w": 1, "x": 1, "u": 1})),
                    ]
                    with m.If(in_range):
                        m.next = "READ"
                    with m.Else():
                        m.d.sync += [r_ok.eq(0), r_kind.eq(K["gpa_range"]),
                                     r_level.eq(in_levels), r_pte_valid.eq(0),
                                     r_pte_addr.eq(0)]
                        m.next = "RESPOND"

            with m.State("READ"):
                m.d.comb += axi.arvalid.eq(1)
                with m.If(axi.arready):
                    m.next = "WAIT"

            with m.State("WAIT"):
                m.d.comb += axi.rready.eq(1)
                with m.If(axi.rvalid):
                    for l in range(1, MAX_LEVELS + 1):
                        with m.If(level == l):
                            m.d.sync += [words[l - 1].eq(word), addrs[l - 1].eq(ar_addr)]
                    m.d.sync += acc.eq(acc_next)
                    with m.If(axi.rresp[1]):                  # SLVERR or DECERR
                        m.d.sync += fault(K["bus_error"], level, ar_addr)
                        m.next = "RESPOND"
                    with m.Elif(entry_fault):
                        m.d.sync += fault(entry_kind, level, ar_addr, out_perms)
                        m.next = "RESPOND"
                    with m.Elif(~leaf):
                        m.d.sync += [need.eq(need_next), level.eq(level - 1),
                                     ar_addr.eq(frame + (next_index << 3))]
                        m.next = "READ"
                    with m.Elif(leaf_fault):
                        m.d.sync += fault(leaf_kind, level, ar_addr, out_perms)
                        m.next = "RESPOND"
                    with m.Else():
                        m.d.sync += [
                            r_ok.eq(1), r_kind.eq(0), r_pte_addr.eq(0), r_pte_valid.eq(0),
                            r_level.eq(level), r_perms.eq(out_perms),
                            r_hpa.eq((frame & ~page_mask) | (gpa[:PA_WIDTH] & page_mask)),
                            r_memtype.eq(Mux(arch == GST, 0, memtype)),
                            need.eq(need_next), leaf_level.eq(level),
                            aw_done.eq(0), w_beat.eq(0), got_r.eq(0), got_b.eq(0),
                            ad_err.eq(0),
                        ]
                        with m.If(need_next.any()):
                            m.next = "UPDATE"
                        with m.Else():
                            m.next = "RESPOND"

            with m.State("UPDATE"):
                # One AtomicCompare: AW and both W beats, then its R and B responses.
                m.d.comb += [axi.awvalid.eq(~aw_done), axi.wvalid.eq(w_beat != 2),
                             axi.rready.eq(~got_r), axi.bready.eq(~got_b)]
                with m.If(axi.awvalid & axi.awready):
                    m.d.sync += aw_done.eq(1)
                with m.If(axi.wvalid & axi.wready):
                    m.d.sync += w_beat.eq(w_beat + 1)
                with m.If(axi.rvalid & axi.rready):
                    m.d.sync += [got_r.eq(1), ad_rdata.eq(axi.rdata)]
                    with m.If(axi.rresp[1]):
                        m.d.sync += ad_err.eq(1)
                with m.If(axi.bvalid & axi.bready):
                    m.d.sync += got_b.eq(1)
                    with m.If(axi.bresp[1]):
                        m.d.sync += ad_err.eq(1)
                with m.If(aw_done & (w_beat == 2) & got_r & got_b):
                    m.next = "UPDATED"

            with m.State("UPDATED"):
                m.d.sync += [aw_done.eq(0), w_beat.eq(0), got_r.eq(0), got_b.eq(0)]
                with m.If(ad_err):
                    m.d.sync += fault(K["bus_error"], sel, sel_addr)
                    m.next = "RESPOND"
                with m.Elif(ad_rdata != sel_word):
                    # Software changed the entry since the walk read it: walk again.
                    m.d.sync += restart()
                    m.next = "READ"
                with m.Else():
                    remaining = need & ~sel_bit
                    m.d.sync += need.eq(remaining)
                    with m.If(remaining.any()):
                        m.next = "UPDATE"
                    with m.Else():
                        m.next = "RESPOND"

            with m.State("RESPOND"):
                m.d.comb += resp.valid.eq(1)
                with m.If(resp.ready):
                    m.next = "IDLE"

        return m
