"""An AXI4 subordinate for cocotb whose storage is a :class:`~sw_model.memory.HostMemory`.

Built on cocotbext-axi's channel sources and sinks (signal binding, handshakes, pause
generators for back-pressure). cocotbext-axi has no atomics, so the AW channel here adds
``awatop`` and the subordinate implements the AXI5 AtomicCompare that tdpwalk's walker
uses for A/D updates (docs/rtl.md): the compare value is the beat at AWADDR, the swap
value the other beat; the original word comes back on R with RID = AWID, then B.

Reads and atomics act on the HostMemory when their request is accepted and answer
``latency`` cycles later, in order. Out-of-range words answer DECERR; poisoned words
(:meth:`HostMemory.poison`) and addresses in :attr:`errors` answer SLVERR.
"""

import collections
import random

import cocotb
from cocotb.triggers import Event, Timer
from cocotb.utils import get_sim_steps, get_sim_time
from cocotbext.axi import AxiBus
from cocotbext.axi.axi_channels import AxiARSink, AxiBSource, AxiRSource, AxiWSink
from cocotbext.axi.stream import define_stream

from sw_model.memory import MemoryAccessError

__all__ = ["HostMemoryAxi", "AxiProtocolError"]

OKAY, SLVERR, DECERR = 0b00, 0b10, 0b11
ATOP_COMPARE = 0b110001
BURST_INCR, BURST_WRAP = 0b01, 0b10

AxiAWAtopBus, AxiAWAtopTransaction, _, AxiAWAtopSink, _ = define_stream(
    "AxiAWAtop",
    signals=["awid", "awaddr", "awlen", "awsize", "awburst", "awatop", "awvalid", "awready"],
    optional_signals=["awlock", "awcache", "awprot"])


class AxiProtocolError(AssertionError):
    """The manager broke an AXI rule this subordinate checks."""


class HostMemoryAxi:
    """AXI subordinate serving PTE reads and AtomicCompares from a HostMemory.

    Parameters
    ----------
    dut, prefix
        The design and the prefix of its AXI ports (``"axi_"`` for Amaranth's
        ``axi__araddr`` ...).
    clock, reset
        Clock and active-high reset signals.
    period_ns : float
        The clock period, to turn ``latency`` into simulation time.
    memory : HostMemory
    latency : int
        Cycles from a request's acceptance to its first response beat (>= 1).
    stall : float
        Probability that a ready or valid of the subordinate is held back on a cycle.
    seed : int
        Seeds the back-pressure pattern.

    Members
    -------
    transactions : list
        Every transaction in the order accepted: ``("read", addr)`` or
        ``("atomic", addr, compare, swap, ok)``.
    errors : set
        Extra word addresses that answer SLVERR.
    on_atomic : callable or None
        ``on_atomic(addr, memory)`` runs before an AtomicCompare is applied: software
        changing a PTE between the walker's read and its update.
    """

    def __init__(self, dut, prefix, clock, reset, memory, *, period_ns, latency=1, stall=0.0,
                 seed=0):
        if not isinstance(latency, int) or latency < 1:
            raise ValueError(f"latency must be an integer >= 1, got {latency!r}")
        if not 0.0 <= stall < 1.0:
            raise ValueError(f"stall must be a probability in [0, 1), got {stall!r}")
        self.memory, self.latency, self.clock = memory, latency, clock
        bus = AxiBus.from_prefix(dut, prefix)
        self.ar = AxiARSink(bus.read.ar, clock, reset)
        self.r = AxiRSource(bus.read.r, clock, reset)
        self.aw = AxiAWAtopSink(AxiAWAtopBus.from_prefix(dut, prefix), clock, reset)
        self.w = AxiWSink(bus.write.w, clock, reset)
        self.b = AxiBSource(bus.write.b, clock, reset)
        if stall:
            rng = random.Random(seed)
            for channel in (self.ar, self.r, self.aw, self.w, self.b):
                channel.set_pause_generator(iter(lambda: rng.random() < stall, None))
        self.transactions, self.errors = [], set()
        self.on_atomic = None
        self._delay = get_sim_steps(period_ns * (latency - 1), "ns")
        self._due = collections.deque()      # (sim time due, kind, transaction)
        self._pending = Event()
        cocotb.start_soon(self._serve_reads())
        cocotb.start_soon(self._serve_atomics())
        cocotb.start_soon(self._respond())

    def _load(self, addr):
        if addr in self.errors:
            return 0, SLVERR
        try:
            return self.memory.read64(addr), OKAY
        except MemoryAccessError:
            return 0, SLVERR if self.memory.contains(addr) else DECERR

    def _answer(self, kind, transaction):
        # A source drives a queued beat at the next clock edge: that edge is cycle 1.
        self._due.append((get_sim_time("step") + self._delay, kind, transaction))
        self._pending.set()

    async def _serve_reads(self):
        while True:
            ar = await self.ar.recv()
            addr, length, size = int(ar.araddr), int(ar.arlen), int(ar.arsize)
            if length != 0 or size != 3 or addr % 8:
                raise AxiProtocolError(f"read at {addr:#x}: ARLEN={length} ARSIZE={size}; "
                                       f"the walker reads single aligned 8-byte words")
            self.transactions.append(("read", addr))
            data, resp = self._load(addr)
            r = self.r._transaction_obj()
            r.rid, r.rdata, r.rresp, r.rlast = int(ar.arid), data, resp, 1
            self._answer("r", r)

    async def _serve_atomics(self):
        while True:
            aw = await self.aw.recv()
            addr, atop = int(aw.awaddr), int(aw.awatop)
            burst = BURST_WRAP if addr & 8 else BURST_INCR
            if (atop != ATOP_COMPARE or int(aw.awlen) != 1 or int(aw.awsize) != 3
                    or int(aw.awburst) != burst):
                raise AxiProtocolError(
                    f"write at {addr:#x}: AWATOP={atop:#b} AWLEN={int(aw.awlen)} "
                    f"AWSIZE={int(aw.awsize)} AWBURST={int(aw.awburst)}; expected an "
                    f"AtomicCompare of two 8-byte beats")
            beats = [await self.w.recv() for _ in range(2)]
            if int(beats[0].wlast) or not int(beats[1].wlast):
                raise AxiProtocolError(f"AtomicCompare at {addr:#x}: WLAST on the wrong beat")
            compare, swap = (int(beat.wdata) for beat in beats)
            if self.on_atomic is not None:
                self.on_atomic(addr, self.memory)
            current, resp = self._load(addr)
            ok = False
            if resp == OKAY:
                ok, current = self.memory.cmpxchg64(addr, compare, swap)
            self.transactions.append(("atomic", addr, compare, swap, ok))
            r = self.r._transaction_obj()
            r.rid, r.rdata, r.rresp, r.rlast = int(aw.awid), current, resp, 1
            b = self.b._transaction_obj()
            b.bid, b.bresp = int(aw.awid), resp
            self._answer("r", r)
            self._answer("b", b)

    async def _respond(self):
        while True:
            if not self._due:
                self._pending.clear()
                await self._pending.wait()
            due, kind, transaction = self._due.popleft()
            now = get_sim_time("step")
            if due > now:
                await Timer(due - now, "step")
            await (self.r if kind == "r" else self.b).send(transaction)
