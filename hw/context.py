"""Per-VM contexts: the table software writes, and what a walk takes from it.

One :class:`ContextTable` serves the MMU and every walker: a walk is started with its
:data:`WALK_PARAMS` and first entry address already derived from the context
(:func:`walk_start`), so no walker keeps a copy of the table.
"""

from amaranth import Array, Cat, Const, Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .arch import each_arch, format_table
from .decode import AD_IDS, PA_WIDTH

__all__ = ["CONTEXT_LAYOUT", "ContextWriteSignature", "ContextTable", "WALK_PARAMS",
           "GPA_BITS", "ADDR_BITS", "walk_start", "is_private", "check_vm_count", "vm_index"]

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

#: GPA bits any format translates (sv57x4: 59); higher bits only make a GPA out of range.
GPA_BITS = 59
#: An 8-byte entry's address without its three zero bits.
ADDR_BITS = PA_WIDTH - 3

#: What a walk keeps of its VM's context. ``ad_on``: the walker sets A/D bits;
#: ``svade``: a clear A/D faults (the A/D mode "fault", RISC-V Svade); ``dirty``: the
#: VM tracks dirty pages, so a TLB entry filled by a read walk may not serve a write.
WALK_PARAMS = data.StructLayout({
    "format": 3, "arch": 2, "levels": 3, "ad_on": 1, "svade": 1, "exec_only": 1, "nxe": 1,
    "pa_bits": 6, "dirty": 1,
})


#: The most VMs a context table holds: each takes its context and two generation
#: counters in flip-flops (about 130).
MAX_VMS = 256


def check_vm_count(num_vms):
    """Raise ValueError unless ``num_vms`` is a valid context-table size."""
    if not isinstance(num_vms, int) or isinstance(num_vms, bool) or num_vms < 1 \
            or num_vms > MAX_VMS or num_vms & (num_vms - 1):
        raise ValueError(f"num_vms must be a power of two in [1, {MAX_VMS}] (each VM's "
                         f"context and generations take about 130 flip-flops), "
                         f"got {num_vms!r}")


def vm_index(vm, num_vms):
    """The VM a port's ``vm`` field names. Ports are at least one bit wide; with one VM
    that bit is ignored, so nothing compares or stores it."""
    return vm if num_vms > 1 else Const(0, 1)


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


class ContextTable(wiring.Component):
    """``num_vms`` contexts in registers, one write port and ``reads`` read ports.

    Members
    -------
    write : In(ContextWriteSignature(vm_bits))
    read_vm : In(vm_bits).array(reads)
    read : Out(CONTEXT_LAYOUT).array(reads)
        Combinational: the context of ``read_vm[i]`` as it is this cycle.
    """

    def __init__(self, num_vms, reads=1):
        check_vm_count(num_vms)
        self.num_vms = num_vms
        self.vm_bits = max(1, (num_vms - 1).bit_length())
        super().__init__({
            "write": In(ContextWriteSignature(self.vm_bits)),
            "read_vm": In(self.vm_bits).array(reads),
            "read": Out(CONTEXT_LAYOUT).array(reads),
        })

    def elaborate(self, platform):
        m = Module()
        table = Array(Signal(CONTEXT_LAYOUT, name=f"context{i}") for i in range(self.num_vms))
        with m.If(self.write.valid):
            m.d.sync += table[vm_index(self.write.index, self.num_vms)].eq(self.write.data)
        for vm, out in zip(self.read_vm, self.read):
            m.d.comb += out.eq(table[vm_index(vm, self.num_vms)])
        return m


def is_private(ctx, gpa):
    """1 when ``gpa`` is a private GPA of the context ``ctx`` (a ``CONTEXT_LAYOUT`` view):
    the VM is a TD and the shared bit is clear."""
    return ctx.td & ~gpa.bit_select(ctx.shared_bit, 1)


def walk_start(m, ctx, gpa, private=None):
    """What a walk of ``gpa`` under context ``ctx`` starts from, as signals:
    ``(params, root_addr, in_range)``: its :data:`WALK_PARAMS`, the address (without
    the low three bits) of the root entry it reads first, and whether ``gpa`` is inside
    the format's GPA space. ``private`` is :func:`is_private` of ``ctx`` and ``gpa``
    when the caller has it in a register already."""
    params = Signal(WALK_PARAMS)
    arch = format_table(m, ctx.format, 2, lambda c: c.arch_id)
    if private is None:
        private = is_private(ctx, gpa)
    root = Mux(private, ctx.ext_root, ctx.root)
    # The root table is aligned to its size: address bits below it are not part of
    # the root (hgatp.PPN[1:0] read as zero, RISC-V priv. spec "Hypervisor Address
    # Translation and Protection Register"; EPTP/nCR3 bits 11:0 are not address bits).
    root_addr = format_table(m, ctx.format, ADDR_BITS, lambda c: Cat(
        gpa[c.page_shift(c.levels):c.page_shift(c.levels) + c.root_index_bits],
        root[3 + c.root_index_bits:]))
    in_range = format_table(m, ctx.format, 1, lambda c: gpa[c.gpa_bits:] == 0)
    hardware = ctx.ad == AD_IDS["hardware"]
    off = ctx.ad == AD_IDS["off"]
    m.d.comb += [
        params.format.eq(ctx.format), params.arch.eq(arch),
        params.levels.eq(format_table(m, ctx.format, 3, lambda c: c.levels)),
        params.ad_on.eq(each_arch(arch, lambda a: a.ad_enabled(hardware), 1)),
        params.svade.eq(ctx.ad == AD_IDS["fault"]),
        params.exec_only.eq(ctx.exec_only), params.nxe.eq(ctx.nxe),
        params.pa_bits.eq(ctx.pa_bits),
        params.dirty.eq(each_arch(arch, lambda a: a.write_tracked(off), 1)),
    ]
    return params, root_addr, in_range
