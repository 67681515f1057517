"""Run the walker, or the MMU top, in Amaranth's simulator against an AXI memory backed
by HostMemory.

:func:`run_walker` is the one harness used by the tests and by ``python -m hw run``: it
writes the context table, streams the accesses through the walker back to back, serves
its AXI transactions with the subordinate model of :mod:`hw.sim_axi` (PTE reads; AXI5
AtomicCompare for A/D updates applied with ``cmpxchg64``; DECERR outside the memory,
SLVERR on poisoned words) and turns every response into the model's own
:class:`~sw_model.walker.Translation` / :class:`~sw_model.walker.Fault`
(:class:`ResponseDecoder`), so results compare field by field with
:func:`sw_model.walker.translate` and print in the same JSON.

:func:`run_mmu` does the same for the MMU top (:mod:`hw.mmu`): several transactions
outstanding by AXI ID, with optional response jitter, invalidations and software edits
scripted between requests.

The cocotb benches use the same subordinate model (:mod:`cocotb_tests.axi_memory`) and
the same decoder, so a walk meets the same memory and its answer reads the same on
every simulator.

A single testbench coroutine does everything per cycle, sampling the DUT's outputs at
the clock edge (``ctx.tick().sample``), which keeps the Python cost per cycle low.
Building Amaranth's simulator of a walker or an MMU takes seconds and resetting one
takes none, so each design's simulator is built once per process and reset for every
run (:func:`_simulation`).
"""

import random
from dataclasses import dataclass

from amaranth.sim import Simulator

from sw_model.formats import ACCESSES, FAULT_KINDS, get_format
from sw_model.memory import HostMemory
from sw_model.walker import Fault, Translation, translate

from .axi import Resp
from .decode import ACCESS_IDS, AD_IDS, EXIT_IDS, FORMAT_IDS
from .mmu import COUNTERS, MMU
from .tlb import InvalKind, InvalSpace
from .context import CONTEXT_LAYOUT
from .sim_axi import (MANAGER_OUTPUTS, READIES, AxiSubordinate, ManagerOutputs,
                      ProtocolError, PteRead, beat_signals)
from .walker import Walker, response_layout

__all__ = ["VmContext", "WalkResult", "run_walker", "run_mmu", "MmuRun", "ProtocolError",
           "INVAL_KINDS", "INVAL_SPACES", "check_against_model", "walk_latency",
           "ResponseDecoder", "WalkLog"]


#: Simulators kept for reuse, by design: ``(factory, params) -> (dut, sim, slot)``.
_SIMULATORS = {}
_KEEP = 4


def _simulation(factory, *, fresh=False, **params):
    """``(dut, run)``: the design ``factory(**params)`` in a simulator, and
    ``run(bench, waves=None, **write_vcd_args)`` running the testbench ``bench`` on it
    from reset. The simulator is kept for the next run of the same design, unless
    ``fresh`` (a run with waves) or the run raised."""
    key = (factory, tuple(sorted(params.items())))
    cached = None if fresh else _SIMULATORS.pop(key, None)
    if cached is None:
        dut = factory(**params)
        sim = Simulator(dut)
        sim.add_clock(1e-8)
        slot = {"used": False}

        async def testbench(ctx):
            await slot["bench"](ctx)
        sim.add_testbench(testbench)
        cached = (dut, sim, slot)
    dut, sim, slot = cached

    def run(bench, waves=None, **vcd_args):
        if slot["used"]:
            sim.reset()
        slot.update(bench=bench, used=True)
        if waves:
            with sim.write_vcd(waves, **vcd_args):
                sim.run()
            return
        sim.run()
        if not fresh:
            _SIMULATORS[key] = cached           # most recently used last
            while len(_SIMULATORS) > _KEEP:
                _SIMULATORS.pop(next(iter(_SIMULATORS)))
    return dut, run


@dataclass(frozen=True)
class VmContext:
    """One entry of the walker's context table.

    Members
    -------
    fmt : PageTableFormat
    root : int
        The root table (a TD's shared root).
    vm : VmOptions
    ext_root : int or None
        A TDX-style TD's external (private) root; None for an ordinary VM.
    shared_bit : int or None
        The TD's shared-bit position in the GPA; given with ``ext_root``.
    """
    fmt: object
    root: int
    vm: object
    ext_root: int = None
    shared_bit: int = None

    def __post_init__(self):
        if (self.ext_root is None) != (self.shared_bit is None):
            raise ValueError("VmContext: ext_root and shared_bit go together (a TD has "
                             f"both), got ext_root={self.ext_root!r}, "
                             f"shared_bit={self.shared_bit!r}")
        if self.shared_bit is not None and not 12 <= self.shared_bit < self.fmt.gpa_bits:
            raise ValueError(f"VmContext: shared_bit must be in [12, {self.fmt.gpa_bits}) "
                             f"for {self.fmt.name}, got {self.shared_bit!r}")

    @property
    def td(self):
        """A TDX-style trust domain (private GPAs walk ``ext_root``)."""
        return self.shared_bit is not None

    def is_private(self, gpa):
        return self.td and not (gpa >> self.shared_bit) & 1

    def root_of(self, gpa):
        """The root the walk of ``gpa`` starts from, as the RTL chooses it."""
        return self.ext_root if self.is_private(gpa) else self.root

    def raw(self):
        """The context entry as the integer written through the ``ctx`` port."""
        value = CONTEXT_LAYOUT.const({
            "format": FORMAT_IDS[self.fmt.name], "root": self.root,
            "ad": AD_IDS[self.vm.ad], "pa_bits": self.vm.pa_bits,
            "exec_only": int(self.vm.exec_only), "nxe": int(self.vm.nxe),
            "td": int(self.td), "shared_bit": self.shared_bit or 0,
            "ext_root": self.ext_root or 0})
        return value.as_value().value


@dataclass
class WalkResult:
    """One walker answer: the model-shaped ``result``, the number of walk ``restarts``
    (failed A/D compares) and ``cycles`` from request accepted to response valid."""
    result: object
    restarts: int
    cycles: int


def _unpack(layout, value):
    """The integer ``value`` of a ``layout`` as nested dicts of field values."""
    out = {}
    for name, field in layout:
        part = (value >> field.offset) & ((1 << field.width) - 1)
        shape = field.shape
        out[name] = _unpack(shape, part) if hasattr(shape, "members") else part
    return out


def _field(layout, *path):
    """``(offset, mask)`` of the field of ``layout`` at ``path``."""
    offset = 0
    for name in path:
        field = layout[name]
        offset, layout = offset + field.offset, field.shape
    return offset, (1 << field.width) - 1


def _report(arch, code, htval, exit_id):
    exits = {v: k for k, v in EXIT_IDS[arch].items()}
    exit_name = exits.get(exit_id)
    if exit_name is None:
        raise ProtocolError(f"response report.exit {exit_id} is not an {arch} exit")
    if arch == "gstage":
        return {"cause": code, "htval": htval}
    if exit_name in ("ept_violation",):
        return {"exit": exit_name, "qualification": code}
    if exit_name == "npf":
        return {"exit": exit_name, "error_code": code}
    return {"exit": exit_name}


class ResponseDecoder:
    """Reads the response words of the walker and of the MMU
    (:func:`hw.walker.response_layout`) as the model's :class:`Translation` or
    :class:`Fault`, for every bench on every simulator, so an RTL answer compares field
    by field with :func:`sw_model.walker.translate` and prints in the same JSON. A
    translation, most of a long co-simulation's answers, is read straight from the
    layout's offsets.

    Members
    -------
    layout : StructLayout
        The response layout for ``tag_bits``.
    """

    def __init__(self, tag_bits):
        self.layout = layout = response_layout(tag_bits)
        self._tag = _field(layout, "tag")
        self._ok = _field(layout, "ok")
        self._hpa, self._level = _field(layout, "hpa"), _field(layout, "level")
        self._memtype = _field(layout, "memtype")
        self._perms = {name: _field(layout, "perms", name) for name in ("r", "w", "x", "u")}

    def tag(self, raw):
        """The request tag of response word ``raw``."""
        return self._get(raw, self._tag)

    def result(self, raw, gpa, access, arch, pte_addrs=(), ad_writes=()):
        """Response word ``raw`` to the request ``(gpa, access)`` of a VM of architecture
        ``arch``, as a :class:`Translation` or :class:`Fault`, with the PTE reads and A/D
        writes the bus saw (none for the MMU, whose answers may come from its TLB)."""
        if self._get(raw, self._ok):
            perms = {name: bool(self._get(raw, field)) for name, field in self._perms.items()
                     if name != "u" or arch != "ept"}
            return Translation(gpa=gpa, access=access, hpa=self._get(raw, self._hpa),
                               level=self._get(raw, self._level), perms=perms,
                               memtype=self._get(raw, self._memtype),
                               pte_addrs=tuple(pte_addrs), ad_writes=tuple(ad_writes))
        fields = _unpack(self.layout, raw)
        rep = fields["report"]
        return Fault(gpa=gpa, access=access, kind=FAULT_KINDS[fields["kind"]],
                     level=fields["level"],
                     pte_addr=fields["pte_addr"] if fields["pte_addr_valid"] else None,
                     report=_report(arch, rep["code"], rep["htval"], rep["exit"]),
                     pte_addrs=tuple(pte_addrs))

    @staticmethod
    def _get(raw, field):
        offset, mask = field
        return (raw >> offset) & mask


class WalkLog:
    """The PTE reads and A/D writes of the walk in progress, from the AXI subordinate's
    transactions (an :attr:`~hw.sim_axi.AxiSubordinate.on_transaction` callback): what
    the model's own walk reports. A compare that fails restarts the walk, so it forgets
    what came before and counts a restart."""

    def __init__(self):
        self.reads, self.writes, self.restarts = [], [], 0

    def __call__(self, event):
        if isinstance(event, PteRead):
            self.reads.append(event.addr)
        elif event.ok:
            self.writes.append((event.addr, event.compare, event.swap))
        elif event.resp == Resp.OKAY.value:
            self.reads, self.writes = [], []
            self.restarts += 1

    def take(self):
        """``(reads, writes, restarts)`` of the walk just answered; the next walk starts."""
        walk = self.reads, self.writes, self.restarts
        self.reads, self.writes, self.restarts = [], [], 0
        return walk


class _AxiPort:
    """An :class:`~hw.sim_axi.AxiSubordinate` on a design's ``axi`` port in Amaranth's
    simulator: the manager outputs to sample at each edge (:attr:`sampled`), and the
    subordinate's answers driven, each signal only when it changes (a ``ctx.set`` costs
    time)."""

    def __init__(self, ctx, axi, subordinate):
        self.ctx, self.axi, self.subordinate = ctx, axi, subordinate
        self.sampled = tuple(getattr(axi, name) for name in MANAGER_OUTPUTS)
        self._driven = {}

    def edge(self, cycle, values):
        """The edge ending ``cycle``, ``values`` sampled from :attr:`sampled`."""
        self.subordinate.edge(cycle, ManagerOutputs(*values))

    def drive_readies(self):
        for name, ready in zip(READIES, self.subordinate.readies()):
            self._set(name, int(ready))

    def drive_beats(self):
        for name, value in beat_signals(*self.subordinate.beats()):
            self._set(name, value)

    def _set(self, name, value):
        if self._driven.get(name) != value:
            self._driven[name] = value
            self.ctx.set(getattr(self.axi, name), value)


def run_walker(memory, contexts, accesses, *, latency=1, stall=0.0, seed=0, on_atomic=None,
               waves=None, tag_bits=8, timeout=4000):
    """Translate ``accesses`` on the RTL walker; a list of :class:`WalkResult`.

    Parameters
    ----------
    memory : HostMemory
        Serves the walker's AXI transactions; A/D updates change it.
    contexts : list of VmContext
        Written to the context table, entry ``i`` from ``contexts[i]``.
    accesses : list of (gpa, access) or (gpa, access, vm_index)
    latency : int
        Cycles from an AR (or the last W beat) handshake to the R (and B) beat; 1 is a
        synchronous SRAM.
    stall : float
        Probability that a ready (AR, AW, W, response) is held low on a cycle, and that
        an R/B beat is delayed by a cycle: exercises every handshake.
    on_atomic : callable, optional
        ``on_atomic(addr, memory)`` runs before each AtomicCompare is applied: software
        changing a PTE in the middle of a walk.
    waves : str, optional
        Write a VCD waveform of the run to this path, and a GTKWave save file with the
        ports as traces next to it (``.gtkw``).
    timeout : int
        Cycles a walk may take before the walker is declared hung.
    """
    rng = random.Random(seed)
    subordinate = AxiSubordinate(memory, latency=latency, stall=stall, stall_rng=rng)
    subordinate.on_atomic = on_atomic
    if not contexts:
        raise ValueError("contexts: at least one VM context is needed")
    num_vms = 1 << max(0, (len(contexts) - 1).bit_length())
    jobs = []
    for i, item in enumerate(accesses):
        gpa, access, vm_index = (*item, 0) if len(item) == 2 else item
        if access not in ACCESSES:
            raise ValueError(f"accesses[{i}]: access must be one of {ACCESSES}, got {access!r}")
        if not 0 <= vm_index < len(contexts):
            raise ValueError(f"accesses[{i}]: vm index {vm_index} has no context")
        jobs.append((gpa, access, vm_index))
    if not jobs:
        return []

    dut, run = _simulation(Walker, fresh=bool(waves), num_vms=num_vms, tag_bits=tag_bits)
    decoder = ResponseDecoder(tag_bits)
    walk = WalkLog()
    subordinate.on_transaction.append(walk)
    req, resp = dut.req, dut.resp
    results = []

    async def bench(ctx):
        for index, context in enumerate(contexts):
            ctx.set(dut.ctx.valid, 1)
            ctx.set(dut.ctx.index, index)
            ctx.set(dut.ctx.data.as_value(), context.raw())
            await ctx.tick()
        ctx.set(dut.ctx.valid, 0)

        axi = _AxiPort(ctx, dut.axi, subordinate)
        next_job, accepted_at = 0, None
        drive = dict(req_valid=0, resp_ready=0)
        t = 0
        last_progress = 0

        def set_if(name, signal, value):
            if drive[name] != value:
                drive[name] = value
                ctx.set(signal, value)

        def present_request():
            if next_job < len(jobs):
                gpa, access, vm_index = jobs[next_job]
                ctx.set(req.payload.gpa, gpa & ((1 << 64) - 1))
                ctx.set(req.payload.access, ACCESS_IDS[access])
                ctx.set(req.payload.vm, vm_index)
                ctx.set(req.payload.tag, next_job & ((1 << tag_bits) - 1))
                set_if("req_valid", req.valid, 1)
            else:
                set_if("req_valid", req.valid, 0)

        present_request()
        sampled = (*axi.sampled, req.ready, resp.valid, resp.payload.as_value())
        async for (_, _, *values, req_ready, resp_valid,
                   payload) in ctx.tick().sample(*sampled):
            t += 1
            edge = t - 1            # the cycle whose closing edge was just sampled
            if drive["req_valid"] and req_ready:
                accepted_at = edge
                next_job += 1
                present_request()
            axi.edge(edge, values)
            if resp_valid and drive["resp_ready"]:
                index = len(results)
                tag = decoder.tag(payload)
                if tag != index & ((1 << tag_bits) - 1):
                    raise ProtocolError(f"response {index} carries tag {tag}")
                gpa, access, vm_index = jobs[index]
                reads, writes, restarts = walk.take()
                results.append(WalkResult(
                    result=decoder.result(payload, gpa, access, contexts[vm_index].fmt.arch,
                                          reads, writes),
                    restarts=restarts, cycles=edge - accepted_at))
                last_progress = t
                if len(results) == len(jobs):
                    return
            if t - last_progress > timeout:
                raise ProtocolError(f"no response for {timeout} cycles (access {len(results)}, "
                                    f"state: {subordinate.queued('r')} R and "
                                    f"{subordinate.queued('b')} B beats queued)")

            # Drive this cycle; the response port's back-pressure is drawn from the same
            # generator, between the subordinate's readies and its beats.
            axi.drive_readies()
            set_if("resp_ready", resp.ready, 0 if stall and rng.random() < stall else 1)
            axi.drive_beats()

    if waves:
        # A GTKWave save file next to the VCD opens with the ports already grouped.
        run(bench, waves, gtkw_file=str(waves).rsplit(".", 1)[0] + ".gtkw",
            traces=[dut.req, dut.resp, dut.ctx, dut.axi])
    else:
        run(bench)
    return results


def check_against_model(memory, contexts, accesses, **kwargs):
    """Run ``accesses`` on the RTL and on :func:`~sw_model.walker.translate`, each on its
    own copy of ``memory``, in order (A/D updates applied as they happen).

    Returns ``(rtl, model, mismatches, rtl_memory, model_memory)``: the
    :class:`WalkResult` list, the model's results, and ``[(index, model_json, rtl_json)]``
    for every access whose JSON differs. ``kwargs`` go to :func:`run_walker`.
    """
    rtl_memory, model_memory = memory.copy(), memory.copy()
    rtl = run_walker(rtl_memory, contexts, accesses, **kwargs)
    model, mismatches = [], []
    for index, item in enumerate(accesses):
        gpa, access, vm_index = (*item, 0) if len(item) == 2 else item
        ctx = contexts[vm_index]
        expect = translate(model_memory, ctx.fmt, ctx.root_of(gpa), gpa, access, vm=ctx.vm)
        model.append(expect)
        if expect.to_json() != rtl[index].result.to_json():
            mismatches.append((index, expect.to_json(), rtl[index].result.to_json()))
    return rtl, model, mismatches, rtl_memory, model_memory


def walk_latency(format_name, latency, *, ad_set=True):
    """Cycles from request accepted to response valid for a 4 KiB write walk of
    ``format_name`` through memory of read ``latency``: ``(levels, cycles)``.

    With ``ad_set`` the entries already hold their A/D bits (no update); without, the
    walk also sets them (one AtomicCompare per entry on x86, the leaf on RISC-V).
    """
    fmt = get_format(format_name)
    vm = fmt.vm_options(ad="hardware")
    memory = HostMemory(1 << 20)
    root = memory.alloc_table(fmt.root_table_bytes)
    gpa = random.Random(format_name).randrange(1 << fmt.gpa_bits) & ~0xfff
    table = root
    for level in range(fmt.levels, 1, -1):
        child = memory.alloc_table()
        word = fmt.make_table(child)
        if ad_set and fmt.arch != "gstage":     # G-stage non-leaf A/D are reserved
            word |= fmt.fields["a"].mask
        memory.write64(fmt.entry_addr(table, gpa, level), word)
        table = child
    memory.write64(fmt.entry_addr(table, gpa, 1),
                   fmt.make_leaf(0x1234000, 1, a=ad_set, d=ad_set))
    [result] = run_walker(memory, [VmContext(fmt, root, vm)], [(gpa, "write")],
                          latency=latency)
    if not result.result.ok:
        raise AssertionError(f"{format_name}: latency walk faulted: {result.result.to_json()}")
    return fmt.levels, result.cycles


# -- the MMU top -------------------------------------------------------------------

TAG_BITS = 8
INVAL_KINDS = {"all": InvalKind.ALL, "vm": InvalKind.VM, "range": InvalKind.RANGE}
#: The model's flush-API ``space`` names as :class:`hw.tlb.InvalSpace`.
INVAL_SPACES = {"both": InvalSpace.BOTH, "shared": InvalSpace.SHARED,
                "private": InvalSpace.PRIVATE}


class MmuRun:
    """What :func:`run_mmu` returns: ``results[i]`` (model-shaped), ``cycles[i]`` from
    accept to response, ``counters`` at the end, ``total`` cycles, ``inval_cycles``,
    ``reads``."""

    def __init__(self):
        self.results, self.cycles, self.counters = {}, {}, {}
        self.total = 0
        self.inval_cycles = []
        self.reads = []         # (cycle, address) of every AR on the bus


def run_mmu(memory, contexts, script, *, latency=4, jitter=0, stall=0.0, seed=0,
            timeout=3000, waves=None, num_vms=None, **mmu_kwargs):
    """Run ``script`` on a fresh MMU. Items, executed in order:

    ``("req", gpa, access, vm)``: present a request (back to back with the next one);
    ``("inval", kind, vm, start, count[, space])``: present an invalidation (``space``
    "both" by default, or "shared" / "private") and wait for its done;
    ``("mem", fn)``: call ``fn(memory)`` (software editing tables);
    ``("ctx", index, VmContext)``: write a context (one per cycle);
    ``("delay", n)``: wait ``n`` cycles; ``("drain",)``: wait for every response.
    ``jitter`` adds 0..jitter random cycles to each memory response, reordering IDs.
    ``waves``: write a VCD waveform of the run to this path. ``num_vms``: the context
    table's size (default: the contexts' count rounded up to a power of two, at least 2).
    """
    if num_vms is None:
        num_vms = max(2, 1 << max(0, (len(contexts) - 1).bit_length()))
    dut, run = _simulation(MMU, fresh=bool(waves), num_vms=num_vms, tag_bits=TAG_BITS,
                           **mmu_kwargs)
    decoder = ResponseDecoder(TAG_BITS)
    rng = random.Random(seed)
    out = MmuRun()
    subordinate = AxiSubordinate(memory, latency=latency, max_latency=latency + jitter,
                                 stall=stall, stall_rng=rng, rng=rng)

    def note_read(event):
        if isinstance(event, PteRead):
            out.reads.append((event.cycle, event.addr))
    subordinate.on_transaction.append(note_read)
    reqs = []                   # (gpa, access, vm) per request index
    req, resp = dut.req, dut.resp

    async def bench(ctx):
        for index, context in enumerate(contexts):
            ctx.set(dut.ctx.valid, 1)
            ctx.set(dut.ctx.index, index)
            ctx.set(dut.ctx.data.as_value(), context.raw())
            await ctx.tick()
        ctx.set(dut.ctx.valid, 0)
        axi = _AxiPort(ctx, dut.axi, subordinate)
        outstanding = {}        # tag -> request index
        accepted = {}
        cursor, wait_until, in_inval, inval_at = 0, 0, None, 0
        t = last_progress = 0
        drive = {}

        def put(name, signal, value):
            if drive.get(name) != value:
                drive[name] = value
                ctx.set(signal, value)

        sampled = (*axi.sampled, req.ready, resp.valid, resp.payload.as_value(),
                   dut.inval.ready, dut.inval_done)
        put("resp_ready", resp.ready, 1)
        async for (_, _, *values, req_ready, resp_valid, payload, inval_ready,
                   inval_done) in ctx.tick().sample(*sampled):
            edge, t = t, t + 1
            # -- handshakes of the cycle that just ended ---------------------------------
            if drive.get("req_valid") and req_ready:
                tag = len(reqs) % (1 << TAG_BITS)
                if tag in outstanding:
                    raise ProtocolError(f"tag {tag} reused while outstanding")
                outstanding[tag] = len(reqs)
                accepted[len(reqs)] = edge
                reqs.append(script[cursor][1:])
                cursor += 1
                last_progress = t
            if drive.get("inval_valid") and inval_ready:
                cursor += 1
                inval_at = edge
                in_inval = "wait"
            elif in_inval == "wait" and inval_done:
                out.inval_cycles.append(edge - inval_at)
                in_inval = False
            axi.edge(edge, values)
            if resp_valid and drive["resp_ready"]:
                tag = decoder.tag(payload)
                index = outstanding.pop(tag, None)
                if index is None:
                    raise ProtocolError(f"response with unknown tag {tag}")
                gpa, access, vm = reqs[index]
                out.results[index] = decoder.result(payload, gpa, access,
                                                    contexts[vm & (num_vms - 1)].fmt.arch)
                out.cycles[index] = edge - accepted[index]
                last_progress = t
            if t - last_progress > timeout and (outstanding or in_inval
                                                  or drive.get("req_valid")):
                raise ProtocolError(f"no progress for {timeout} cycles: {len(outstanding)} "
                                    f"requests outstanding, invalidation {in_inval}, "
                                    f"a request {'' if drive.get('req_valid') else 'not '}"
                                    f"waiting to be accepted")

            # -- the script ----------------------------------------------------------------
            put("req_valid", req.valid, 0)
            put("ctx_valid", dut.ctx.valid, 0)
            if in_inval != "present":
                put("inval_valid", dut.inval.valid, 0)
            while cursor < len(script) and not in_inval and t >= wait_until:
                item = script[cursor]
                if item[0] == "req":
                    _, gpa, access, vm = item
                    ctx.set(req.payload.gpa, gpa)
                    ctx.set(req.payload.access, ACCESS_IDS[access])
                    ctx.set(req.payload.vm, vm)
                    ctx.set(req.payload.tag, len(reqs) % (1 << TAG_BITS))
                    put("req_valid", req.valid, 1)
                    break
                if item[0] == "inval":
                    _, kind, vm, start, count, *space = item
                    ctx.set(dut.inval.payload, {
                        "kind": INVAL_KINDS[kind], "vm": vm, "start": start, "count": count,
                        "space": INVAL_SPACES[space[0] if space else "both"]})
                    put("inval_valid", dut.inval.valid, 1)
                    in_inval = "present"
                    break
                if item[0] == "ctx":
                    ctx.set(dut.ctx.index, item[1])
                    ctx.set(dut.ctx.data.as_value(), item[2].raw())
                    put("ctx_valid", dut.ctx.valid, 1)
                    cursor += 1
                    break
                if item[0] == "mem":
                    item[1](memory)
                elif item[0] == "delay":
                    wait_until = t + item[1]
                elif item[0] == "drain":
                    if outstanding:
                        break
                else:
                    raise ValueError(f"script item {item!r}")
                cursor += 1
            if cursor >= len(script) and not outstanding and not in_inval:
                break

            # -- the subordinate's side; the response port's back-pressure is drawn from
            # the same generator, between the subordinate's readies and its beats -------
            axi.drive_readies()
            put("resp_ready", resp.ready, 0 if stall and rng.random() < stall else 1)
            axi.drive_beats()
        out.total = t
        for name in COUNTERS:
            out.counters[name] = ctx.get(getattr(dut.counters, name))

    run(bench, waves)
    return out
