"""Run the walker, or the MMU top, in Amaranth's simulator against an AXI memory backed
by HostMemory.

:func:`run_walker` is the one harness used by the tests and by ``python -m hw run``: it
writes the context table, streams the accesses through the walker back to back, serves
its AXI transactions from a :class:`~sw_model.memory.HostMemory` (PTE reads; AXI5
AtomicCompare for A/D updates applied with ``cmpxchg64``; DECERR outside the memory,
SLVERR on poisoned words) and turns every response into the model's own
:class:`~sw_model.walker.Translation` / :class:`~sw_model.walker.Fault`, so results
compare field by field with :func:`sw_model.walker.translate` and print in the same JSON.

:func:`run_mmu` does the same for the MMU top (:mod:`hw.mmu`): several transactions
outstanding by AXI ID, with optional response jitter, invalidations and software edits
scripted between requests.

A single testbench coroutine does everything per cycle, sampling the DUT's outputs at
the clock edge (``ctx.tick().sample``), which keeps the Python cost per cycle low.
Building Amaranth's simulator of a walker or an MMU takes seconds and resetting one
takes none, so each design's simulator is built once per process and reset for every
run (:func:`_simulation`).
"""

import random
from collections import deque
from dataclasses import dataclass

from amaranth.sim import Simulator

from sw_model.formats import ACCESSES, FAULT_KINDS, get_format
from sw_model.memory import HostMemory, MemoryAccessError
from sw_model.walker import Fault, Translation, translate

from .axi import Atop, Burst, Resp
from .decode import ACCESS_IDS, AD_IDS, EXIT_IDS, FORMAT_IDS
from .mmu import COUNTERS, MMU
from .tlb import InvalKind, InvalSpace
from .context import CONTEXT_LAYOUT
from .walker import Walker, response_layout

__all__ = ["VmContext", "WalkResult", "run_walker", "run_mmu", "MmuRun", "ProtocolError",
           "INVAL_KINDS", "INVAL_SPACES", "check_against_model", "walk_latency",
           "unpack_response", "response_to_model"]


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


class ProtocolError(AssertionError):
    """The walker broke an AXI rule the memory model checks, or stopped answering."""


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


def unpack_response(layout, value):
    """The integer ``value`` of a response payload as nested dicts of field values."""
    out = {}
    for name, field in layout:
        part = (value >> field.offset) & ((1 << field.width) - 1)
        shape = field.shape
        out[name] = unpack_response(shape, part) if hasattr(shape, "members") else part
    return out


def _report(arch, kind, access, code, htval, exit_id):
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


def response_to_model(payload, gpa, access, ctx, pte_addrs, ad_writes):
    """An unpacked response as the model's :class:`Translation` or :class:`Fault`, with
    the PTE reads and A/D writes the bus saw, so it compares with the model's JSON."""
    fmt = ctx.fmt
    if payload["ok"]:
        p = payload["perms"]
        perms = {"r": bool(p["r"]), "w": bool(p["w"]), "x": bool(p["x"])}
        if fmt.arch != "ept":
            perms["u"] = bool(p["u"])
        return Translation(gpa=gpa, access=access, hpa=payload["hpa"], level=payload["level"],
                           perms=perms, memtype=payload["memtype"], pte_addrs=tuple(pte_addrs),
                           ad_writes=tuple(ad_writes))
    kind = FAULT_KINDS[payload["kind"]]
    rep = payload["report"]
    return Fault(gpa=gpa, access=access, kind=kind, level=payload["level"],
                 pte_addr=payload["pte_addr"] if payload["pte_addr_valid"] else None,
                 report=_report(fmt.arch, kind, access, rep["code"], rep["htval"], rep["exit"]),
                 pte_addrs=tuple(pte_addrs))


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
    if not isinstance(latency, int) or latency < 1:
        raise ValueError(f"latency must be an integer >= 1, got {latency!r}")
    if not 0.0 <= stall < 1.0:
        raise ValueError(f"stall must be a probability in [0, 1), got {stall!r}")
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
    layout = response_layout(tag_bits)
    rng = random.Random(seed)
    axi, req, resp = dut.axi, dut.req, dut.resp
    results = []

    async def bench(ctx):
        for index, context in enumerate(contexts):
            ctx.set(dut.ctx.valid, 1)
            ctx.set(dut.ctx.index, index)
            ctx.set(dut.ctx.data.as_value(), context.raw())
            await ctx.tick()
        ctx.set(dut.ctx.valid, 0)

        rq = deque()                # (due cycle, rdata, rresp)
        bq = deque()                # (due cycle, bresp)
        aw = None
        wbeats = []
        reads, writes, restarts = [], [], 0
        next_job, accepted_at = 0, None
        drive = dict(arready=0, awready=0, wready=0, rvalid=0, bvalid=0, req_valid=0,
                     resp_ready=0)
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
        sampled = (axi.arvalid, axi.araddr, axi.arlen, axi.arsize, axi.arburst, axi.rready,
                   axi.awvalid, axi.awaddr, axi.awatop, axi.awlen, axi.awsize, axi.awburst,
                   axi.wvalid, axi.wdata, axi.wlast, axi.wstrb, axi.bready,
                   req.ready, resp.valid, resp.payload.as_value())
        async for (_, _, arvalid, araddr, arlen, arsize, arburst, rready,
                   awvalid, awaddr, awatop, awlen, awsize, awburst,
                   wvalid, wdata, wlast, wstrb, bready,
                   req_ready, resp_valid, payload) in ctx.tick().sample(*sampled):
            t += 1
            edge = t - 1            # the cycle whose closing edge was just sampled
            if drive["req_valid"] and req_ready:
                accepted_at = edge
                next_job += 1
                present_request()
            if arvalid and drive["arready"]:
                if arlen != 0 or arsize != 3 or arburst != Burst.INCR.value:
                    raise ProtocolError(f"PTE read at {araddr:#x}: ARLEN={arlen} "
                                        f"ARSIZE={arsize} ARBURST={arburst}, expected a "
                                        f"single 8-byte INCR beat")
                reads.append(araddr)
                try:
                    rq.append((edge + latency, memory.read64(araddr), Resp.OKAY.value))
                except MemoryAccessError:
                    code = Resp.SLVERR if memory.contains(araddr) else Resp.DECERR
                    rq.append((edge + latency, 0, code.value))
            if drive["rvalid"] and rready:
                rq.popleft()
            if awvalid and drive["awready"]:
                if aw is not None:
                    raise ProtocolError("a second AW before the first AtomicCompare finished")
                want_burst = Burst.WRAP if awaddr & 8 else Burst.INCR
                if (awatop != Atop.COMPARE.value or awlen != 1 or awsize != 3
                        or awburst != want_burst.value):
                    raise ProtocolError(
                        f"A/D update at {awaddr:#x}: AWATOP={awatop:#b} AWLEN={awlen} "
                        f"AWSIZE={awsize} AWBURST={awburst}, expected an AtomicCompare of "
                        f"two 8-byte beats, burst {want_burst.name}")
                aw = awaddr
            if wvalid and drive["wready"]:
                if wstrb != 0xff or bool(wlast) != (len(wbeats) == 1):
                    raise ProtocolError(f"W beat {len(wbeats)}: WSTRB={wstrb:#x} WLAST={wlast}")
                wbeats.append(wdata)
            if aw is not None and len(wbeats) == 2:
                compare, swap = wbeats
                if on_atomic is not None:
                    on_atomic(aw, memory)
                try:
                    ok, current = memory.cmpxchg64(aw, compare, swap)
                    code = Resp.OKAY.value
                except MemoryAccessError:
                    ok, current = False, 0
                    code = (Resp.SLVERR if memory.contains(aw) else Resp.DECERR).value
                rq.append((edge + latency, current, code))
                bq.append((edge + latency, code))
                if ok:
                    writes.append((aw, compare, swap))
                elif code == Resp.OKAY.value:
                    # The compare failed: the walker restarts; the model reports only
                    # the reads and writes of the last walk.
                    reads, writes = [], []
                    restarts += 1
                aw, wbeats = None, []
            if drive["bvalid"] and bready:
                bq.popleft()
            if resp_valid and drive["resp_ready"]:
                fields = unpack_response(layout, payload)
                index = len(results)
                if fields["tag"] != index & ((1 << tag_bits) - 1):
                    raise ProtocolError(f"response {index} carries tag {fields['tag']}")
                gpa, access, vm_index = jobs[index]
                results.append(WalkResult(
                    result=response_to_model(fields, gpa, access, contexts[vm_index], reads, writes),
                    restarts=restarts, cycles=edge - accepted_at))
                reads, writes, restarts = [], [], 0
                last_progress = t
                if len(results) == len(jobs):
                    return
            if t - last_progress > timeout:
                raise ProtocolError(f"no response for {timeout} cycles (access {len(results)}, "
                                    f"state: {len(rq)} R and {len(bq)} B beats queued)")

            # Drive this cycle.
            set_if("arready", axi.arready, 0 if stall and rng.random() < stall else 1)
            set_if("awready", axi.awready, 0 if stall and rng.random() < stall else 1)
            set_if("wready", axi.wready, 0 if stall and rng.random() < stall else 1)
            set_if("resp_ready", resp.ready, 0 if stall and rng.random() < stall else 1)
            # A subordinate may delay a beat but never withdraw one it presented.
            if rq and rq[0][0] <= t and (drive["rvalid"] or not (stall and rng.random() < stall)):
                _, rdata, rresp = rq[0]
                ctx.set(axi.rdata, rdata)
                ctx.set(axi.rresp, rresp)
                set_if("rvalid", axi.rvalid, 1)
            else:
                set_if("rvalid", axi.rvalid, 0)
            if bq and bq[0][0] <= t and (drive["bvalid"] or not (stall and rng.random() < stall)):
                ctx.set(axi.bresp, bq[0][1])
                set_if("bvalid", axi.bvalid, 1)
            else:
                set_if("bvalid", axi.bvalid, 0)

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
            timeout=3000, waves=None, **mmu_kwargs):
    """Run ``script`` on a fresh MMU. Items, executed in order:

    ``("req", gpa, access, vm)``: present a request (back to back with the next one);
    ``("inval", kind, vm, start, count[, space])``: present an invalidation (``space``
    "both" by default, or "shared" / "private") and wait for its done;
    ``("mem", fn)``: call ``fn(memory)`` (software editing tables);
    ``("ctx", index, VmContext)``: write a context (one per cycle);
    ``("delay", n)``: wait ``n`` cycles; ``("drain",)``: wait for every response.
    ``jitter`` adds 0..jitter random cycles to each memory response, reordering IDs.
    ``waves``: write a VCD waveform of the run to this path.
    """
    num_vms = 1 << max(0, (len(contexts) - 1).bit_length())
    dut, run = _simulation(MMU, fresh=bool(waves), num_vms=max(2, num_vms), tag_bits=TAG_BITS,
                           **mmu_kwargs)
    layout = response_layout(TAG_BITS)
    rng = random.Random(seed)
    out = MmuRun()
    reqs = []                   # (gpa, access, vm) per request index
    axi, req, resp = dut.axi, dut.req, dut.resp

    async def bench(ctx):
        for index, context in enumerate(contexts):
            ctx.set(dut.ctx.valid, 1)
            ctx.set(dut.ctx.index, index)
            ctx.set(dut.ctx.data.as_value(), context.raw())
            await ctx.tick()
        ctx.set(dut.ctx.valid, 0)
        rq, bq = [], []         # [due, id, data, resp] / [due, id, resp]
        r_cur = b_cur = None
        aw, wbeats = None, []
        outstanding = {}        # tag -> request index
        accepted = {}
        cursor, wait_until, in_inval, inval_at = 0, 0, None, 0
        t = last_progress = 0
        drive = {}

        def put(name, signal, value):
            if drive.get(name) != value:
                drive[name] = value
                ctx.set(signal, value)

        sampled = (axi.arvalid, axi.araddr, axi.arid, axi.arlen, axi.arsize, axi.arburst,
                   axi.rready, axi.awvalid, axi.awaddr, axi.awid, axi.awatop, axi.awlen,
                   axi.awburst, axi.wvalid, axi.wdata, axi.wlast, axi.bready,
                   req.ready, resp.valid, resp.payload.as_value(), dut.inval.ready,
                   dut.inval_done)
        put("resp_ready", resp.ready, 1)
        async for (_, _, arvalid, araddr, arid, arlen, arsize, arburst, rready, awvalid,
                   awaddr, awid, awatop, awlen, awburst, wvalid, wdata, wlast, bready,
                   req_ready, resp_valid, payload, inval_ready,
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
            if arvalid and drive.get("arready"):
                if (arlen, arsize, arburst) != (0, 3, Burst.INCR.value):
                    raise ProtocolError(f"read {araddr:#x}: not a single 8-byte beat")
                out.reads.append((edge, araddr))
                try:
                    word, code = memory.read64(araddr), Resp.OKAY.value
                except MemoryAccessError:
                    word = 0
                    code = (Resp.SLVERR if memory.contains(araddr) else Resp.DECERR).value
                rq.append([edge + latency + rng.randint(0, jitter), arid, word, code])
            if r_cur is not None and rready:
                rq.remove(r_cur)
                r_cur = None
            if awvalid and drive.get("awready"):
                if aw is not None or awatop != Atop.COMPARE.value or awlen != 1:
                    raise ProtocolError(f"bad AtomicCompare AW at {awaddr:#x}")
                want = Burst.WRAP if awaddr & 8 else Burst.INCR
                if awburst != want.value:
                    raise ProtocolError(f"AtomicCompare at {awaddr:#x}: burst {awburst}")
                aw = (awaddr, awid)
            if wvalid and drive.get("wready"):
                if bool(wlast) != (len(wbeats) == 1):
                    raise ProtocolError("WLAST on the wrong beat")
                wbeats.append(wdata)
            if aw is not None and len(wbeats) == 2:
                try:
                    _, current = memory.cmpxchg64(aw[0], wbeats[0], wbeats[1])
                    code = Resp.OKAY.value
                except MemoryAccessError:
                    current = 0
                    code = (Resp.SLVERR if memory.contains(aw[0]) else Resp.DECERR).value
                due = edge + latency + rng.randint(0, jitter)
                rq.append([due, aw[1], current, code])
                bq.append([due, aw[1], code])
                aw, wbeats = None, []
            if b_cur is not None and bready:
                bq.remove(b_cur)
                b_cur = None
            if resp_valid and drive["resp_ready"]:
                fields = unpack_response(layout, payload)
                index = outstanding.pop(fields["tag"], None)
                if index is None:
                    raise ProtocolError(f"response with unknown tag {fields['tag']}")
                gpa, access, vm = reqs[index]
                out.results[index] = response_to_model(fields, gpa, access, contexts[vm], (), ())
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

            # -- the subordinate's side ----------------------------------------------------
            def stalled():
                return stall and rng.random() < stall
            put("arready", axi.arready, 0 if stalled() else 1)
            put("awready", axi.awready, 0 if stalled() else 1)
            put("wready", axi.wready, 0 if stalled() else 1)
            put("resp_ready", resp.ready, 0 if stalled() else 1)
            if r_cur is None:
                ready = [x for x in rq if x[0] <= t]
                if ready and not stalled():
                    r_cur = min(ready)
                    ctx.set(axi.rid, r_cur[1])
                    ctx.set(axi.rdata, r_cur[2])
                    ctx.set(axi.rresp, r_cur[3])
                    ctx.set(axi.rlast, 1)
            put("rvalid", axi.rvalid, int(r_cur is not None))
            if b_cur is None:
                ready = [x for x in bq if x[0] <= t]
                if ready and not stalled():
                    b_cur = min(ready)
                    ctx.set(axi.bid, b_cur[1])
                    ctx.set(axi.bresp, b_cur[2])
            put("bvalid", axi.bvalid, int(b_cur is not None))
        out.total = t
        for name in COUNTERS:
            out.counters[name] = ctx.get(getattr(dut.counters, name))

    run(bench, waves)
    return out
