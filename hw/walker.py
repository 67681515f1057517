"""The stage-2 page-table walker on its own: one walk at a time for EPT, NPT and RISC-V
G-stage tables, chosen per VM at run time.

A request (GPA, access, VM index, tag) is registered with what its walk starts from,
derived from the VM's context (:func:`hw.context.walk_start`); the next cycle a
:class:`hw.walkers.WalkerPool` of one engine takes it and presents the root entry's
read. Every R beat is decoded by the pool's PTE pipe (:mod:`hw.pte`, rules from
:mod:`hw.arch`); successful walks that must set A/D bits do so root first with AXI5
AtomicCompare transactions against the word the walk read, and a failed compare walks
again from the root, exactly as :func:`sw_model.walker.translate` does. The response
carries the architecture's own fault report (:func:`hw.arch.report`).

A context marked ``td`` (a TDX-style confidential VM) has a second root: a GPA whose
shared bit is clear walks ``ext_root`` (the external table), one whose shared bit is
set walks ``root``.

The fault rules are written for the RTL from the manuals and cross-checked against
the reference walker by tests/test_hw_walker.py and tests/test_hw_directed.py.
"""

from amaranth import Cat, Const, Module, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .arch import report
from .axi import AXI4Signature
from .context import ContextTable, ContextWriteSignature, check_vm_count, walk_start
from .decode import PA_WIDTH
from .engine import ALL_PERMS, PERMS_LAYOUT, names_pte
from .walkers import WalkerPool

__all__ = ["Walker", "answer", "check_parameters", "request_layout", "response_layout",
           "REPORT_LAYOUT"]

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


def check_parameters(*, num_vms=4, tag_bits=8, axi_id_width=4):
    """Raise ValueError naming the parameter unless the walker can be built with these."""
    def is_int(value):
        return isinstance(value, int) and not isinstance(value, bool)
    check_vm_count(num_vms)
    if not is_int(tag_bits) or not 1 <= tag_bits <= 32:
        raise ValueError(f"tag_bits must be an integer in [1, 32], got {tag_bits!r}")
    if not is_int(axi_id_width) or not 1 <= axi_id_width <= 16:
        raise ValueError(f"axi_id_width must be an integer in [1, 16], got {axi_id_width!r}")


def answer(m, rp, r, *, tag, arch, access, gpa, nxe):
    """Drive the response ``rp`` from walk result ``r``: the translation, or the fault
    with its entry's address and the architecture's report."""
    m.d.comb += [rp.ok.eq(r.ok), rp.kind.eq(r.kind), rp.level.eq(r.level),
                 rp.perms.eq(r.perms), rp.memtype.eq(r.memtype), rp.tag.eq(tag)]
    exit_, code, htval = report(arch, r.kind, access, r.perms, gpa, nxe)
    with m.If(r.ok):
        m.d.comb += rp.hpa.eq(r.hpa)
    with m.Else():
        m.d.comb += [rp.pte_addr.eq(Cat(Const(0, 3), r.pte)),
                     rp.pte_addr_valid.eq(names_pte(r)), rp.report.exit.eq(exit_),
                     rp.report.code.eq(code), rp.report.htval.eq(htval)]


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
        Translation requests; accepted only while no walk is in progress.
    resp : Out(stream.Signature(response_layout(tag_bits)))
        One response per request, in order.
    ctx : In(ContextWriteSignature(vm_bits))
        Context table write port. A walk uses the context of the cycle it was accepted.
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
        m.submodules.contexts = contexts = ContextTable(self.num_vms)
        m.submodules.pool = pool = WalkerPool(engines=1, tag_bits=self.tag_bits,
                                              id_width=len(self.axi.arid))
        wiring.connect(m, wiring.flipped(self.ctx), contexts.write)
        wiring.connect(m, pool.axi, wiring.flipped(self.axi))
        req, start = self.req, pool.start
        m.d.comb += pool.start_to.eq(0)

        # One walk at a time: a request is registered with its walk's start, which the
        # engine takes the cycle after.
        busy = Signal()
        m.d.comb += [contexts.read_vm[0].eq(req.payload.vm), req.ready.eq(~busy)]
        params, root_addr, in_range = walk_start(m, contexts.read[0], req.payload.gpa)
        with m.If(start.ready):
            m.d.sync += start.valid.eq(0)
        with m.If(req.valid & req.ready):
            s = start.payload
            m.d.sync += [
                busy.eq(1), start.valid.eq(1),
                s.gpa.eq(req.payload.gpa), s.access.eq(req.payload.access),
                s.tag.eq(req.payload.tag), s.params.eq(params), s.level.eq(params.levels),
                s.addr.eq(root_addr), s.root_addr.eq(root_addr), s.acc.eq(ALL_PERMS),
                s.in_range.eq(in_range),
            ]

        result, walk, resp = pool.result[0], pool.walk[0], self.resp
        m.d.comb += [resp.valid.eq(result.valid), result.ready.eq(resp.ready)]
        answer(m, resp.payload, result.payload, tag=pool.tag[0], arch=walk.params.arch,
               access=walk.access, gpa=walk.gpa, nxe=walk.params.nxe)
        with m.If(resp.valid & resp.ready):
            m.d.sync += busy.eq(0)
        return m
