"""An AXI4 subordinate for cocotb whose storage is a :class:`~sw_model.memory.HostMemory`.

Built on cocotbext-axi's channel sources and sinks (signal binding, handshakes, pause
generators for back-pressure). cocotbext-axi has no atomics, so the AW channel here adds
``awatop`` and the subordinate implements the AXI5 AtomicCompare that tdpwalk's walker
uses for A/D updates (docs/rtl.md): the compare value is the beat at AWADDR, the swap
value the other beat; the original word comes back on R with RID = AWID, then B.

Reads and atomics act on the HostMemory when their request is accepted and answer
``latency`` cycles later, in order. Out-of-range words answer DECERR; poisoned words
(:meth:`HostMemory.poison`) and addresses in :attr:`errors` answer SLVERR.

Fault injection: SLVERR on chosen PTE reads or A/D writes, by address
(:attr:`read_errors`, :attr:`atomic_errors`) or by probability (:attr:`read_error_rate`,
:attr:`atomic_error_rate`); a random latency per response (``max_latency``), which lets
responses of different AXI IDs pass each other as the AXI spec allows (A3.4.1: only
same-ID responses keep their order); back-pressure per channel (``stall`` as a dict);
:attr:`on_atomic` to change a PTE between the walker's read and its compare; and a
reset that drops everything in flight, as a real interconnect does.

Monitoring: every PTE read and AtomicCompare, as it acts on the memory, goes as a
:class:`PteRead` or :class:`AtomicCompare` to the callbacks of :attr:`on_transaction`
(a scoreboard checking each walk's memory traffic).
"""

import heapq
import random
from dataclasses import dataclass

import cocotb
from cocotb.triggers import Edge, Event, First, Timer
from cocotb.utils import get_sim_steps, get_sim_time
from cocotbext.axi import AxiBus
from cocotbext.axi.axi_channels import AxiARSink, AxiBSource, AxiRSource, AxiWSink
from cocotbext.axi.stream import define_stream

from sw_model.memory import MemoryAccessError

__all__ = ["HostMemoryAxi", "AxiProtocolError", "AtomicCompare", "PteRead", "CHANNELS"]

#: The five AXI channels, for a per-channel ``stall``.
CHANNELS = ("ar", "r", "aw", "w", "b")

OKAY, SLVERR, DECERR = 0b00, 0b10, 0b11
ATOP_COMPARE = 0b110001
BURST_INCR, BURST_WRAP = 0b01, 0b10

AxiAWAtopBus, AxiAWAtopTransaction, _, AxiAWAtopSink, _ = define_stream(
    "AxiAWAtop",
    signals=["awid", "awaddr", "awlen", "awsize", "awburst", "awatop", "awvalid", "awready"],
    optional_signals=["awlock", "awcache", "awprot"])


class AxiProtocolError(AssertionError):
    """The manager broke an AXI rule this subordinate checks."""


@dataclass(frozen=True)
class PteRead:
    """A PTE read as served: the ``word`` returned with ``resp`` on AXI ID ``ident``,
    its request accepted in clock cycle ``cycle``."""
    addr: int
    ident: int
    word: int
    resp: int
    cycle: int


@dataclass(frozen=True)
class AtomicCompare:
    """An AtomicCompare as applied: ``ok`` when the word equalled ``compare`` and was
    replaced by ``swap``; ``resp`` its response, ``cycle`` the clock cycle it was
    applied in."""
    addr: int
    ident: int
    compare: int
    swap: int
    ok: bool
    resp: int
    cycle: int


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
    max_latency : int or None
        If set, each response takes a random latency in ``[latency, max_latency]``;
        responses are then ordered per AXI ID only.
    stall : float or dict
        Probability that a ready or valid of the subordinate is held back on a cycle;
        a dict gives it per channel (keys from :data:`CHANNELS`, missing ones 0).
    seed : int
        Seeds the back-pressure pattern, the random latencies and the random errors.

    Members
    -------
    transactions : list
        Every transaction in the order accepted: ``("read", addr)`` or
        ``("atomic", addr, compare, swap, ok)``.
    errors : set
        Extra word addresses that answer SLVERR (reads and AtomicCompares).
    read_errors, atomic_errors : set
        Word addresses whose reads, or whose AtomicCompares, answer SLVERR.
    read_error_rate, atomic_error_rate : float
        Probability that any read, or any AtomicCompare, answers SLVERR.
    injected : list
        The errors injected by the four members above: ``("read", addr)`` or
        ``("atomic", addr)``, in order.
    on_atomic : callable or None
        ``on_atomic(addr, memory)`` runs before an AtomicCompare is applied: software
        changing a PTE between the walker's read and its update.
    on_transaction : list of callables
        Each is called with every :class:`PteRead` and :class:`AtomicCompare` as it acts
        on the memory (injected errors included).
    resets : int
        Resets seen (everything in flight was dropped at each).
    """

    def __init__(self, dut, prefix, clock, reset, memory, *, period_ns, latency=1, stall=0.0,
                 seed=0, max_latency=None):
        if not isinstance(latency, int) or latency < 1:
            raise ValueError(f"latency must be an integer >= 1, got {latency!r}")
        if max_latency is not None and (not isinstance(max_latency, int)
                                        or max_latency < latency):
            raise ValueError(f"max_latency must be an integer >= latency ({latency}), "
                             f"got {max_latency!r}")
        stalls = stall if isinstance(stall, dict) else dict.fromkeys(CHANNELS, stall)
        unknown = set(stalls) - set(CHANNELS)
        if unknown:
            raise ValueError(f"stall: unknown channel(s) {', '.join(sorted(unknown))} "
                             f"(channels: {', '.join(CHANNELS)})")
        for name, p in stalls.items():
            if not 0.0 <= p < 1.0:
                raise ValueError(f"stall[{name!r}] must be a probability in [0, 1), got {p!r}")
        self.memory, self.latency, self.clock = memory, latency, clock
        self.max_latency = max_latency
        bus = AxiBus.from_prefix(dut, prefix)
        self.ar = AxiARSink(bus.read.ar, clock, reset)
        self.r = AxiRSource(bus.read.r, clock, reset)
        self.aw = AxiAWAtopSink(AxiAWAtopBus.from_prefix(dut, prefix), clock, reset)
        self.w = AxiWSink(bus.write.w, clock, reset)
        self.b = AxiBSource(bus.write.b, clock, reset)
        self.set_stall(stalls, seed)
        self.transactions, self.errors = [], set()
        self.read_errors, self.atomic_errors = set(), set()
        self.read_error_rate = self.atomic_error_rate = 0.0
        self.injected = []
        self.on_atomic = None
        self.on_transaction = []
        self.resets = 0
        self._rng = random.Random(seed ^ 0x5eed)
        self._period = get_sim_steps(period_ns, "ns")
        self._due = []          # heap of (sim time due, serial, kind, transaction)
        self._last = {}         # (kind, id) -> due time of its latest response
        self._serial = 0
        self._pending = Event()
        self._reset = reset
        self._tasks = []
        self._start()
        if reset is not None:
            cocotb.start_soon(self._watch_reset())

    def set_stall(self, stall, seed=0):
        """Back-pressure from now on: ``stall`` as for the constructor."""
        stalls = stall if isinstance(stall, dict) else dict.fromkeys(CHANNELS, stall)
        rng = random.Random(seed)
        for name in CHANNELS:
            p = stalls.get(name, 0.0)
            channel = getattr(self, name)
            if p:
                channel.set_pause_generator(iter(lambda p=p: rng.random() < p, None))
            else:
                channel.clear_pause_generator()
                channel.pause = False

    def _start(self):
        self._tasks = [cocotb.start_soon(self._serve_reads()),
                       cocotb.start_soon(self._serve_atomics()),
                       cocotb.start_soon(self._respond())]

    async def _watch_reset(self):
        """On reset, forget every request and queued beat (cocotbext-axi's channels stop
        driving but keep their queues); serve again once reset is released."""
        while True:
            await Edge(self._reset)
            if str(self._reset.value) == "1":
                self.resets += 1
                for task in self._tasks:
                    task.cancel()
                self._tasks = []
                self._due.clear()
                self._last.clear()
                for channel in (self.ar, self.r, self.aw, self.w, self.b):
                    channel.clear()
            elif not self._tasks:
                self._start()

    def _inject(self, kind, addr):
        """Whether this read or AtomicCompare answers an injected SLVERR."""
        if kind == "read":
            hit = addr in self.read_errors or (
                self.read_error_rate and self._rng.random() < self.read_error_rate)
        else:
            hit = addr in self.atomic_errors or (
                self.atomic_error_rate and self._rng.random() < self.atomic_error_rate)
        if hit:
            self.injected.append((kind, addr))
        return bool(hit)

    def _load(self, addr):
        if addr in self.errors:
            return 0, SLVERR
        try:
            return self.memory.read64(addr), OKAY
        except MemoryAccessError:
            return 0, SLVERR if self.memory.contains(addr) else DECERR

    def _cycle(self):
        return get_sim_time("step") // self._period

    def _tell(self, event):
        for callback in self.on_transaction:
            callback(event)

    def _answer(self, kind, ident, transaction):
        # A source drives a queued beat at the next clock edge: that edge is cycle 1.
        latency = self.latency if self.max_latency is None else \
            self._rng.randint(self.latency, self.max_latency)
        due = max(get_sim_time("step") + self._period * (latency - 1),
                  self._last.get((kind, ident), 0))
        self._last[(kind, ident)] = due
        heapq.heappush(self._due, (due, self._serial, kind, transaction))
        self._serial += 1
        self._pending.set()

    async def _serve_reads(self):
        while True:
            ar = await self.ar.recv()
            addr, length, size = int(ar.araddr), int(ar.arlen), int(ar.arsize)
            if length != 0 or size != 3 or addr % 8:
                raise AxiProtocolError(f"read at {addr:#x}: ARLEN={length} ARSIZE={size}; "
                                       f"the walker reads single aligned 8-byte words")
            self.transactions.append(("read", addr))
            data, resp = (0, SLVERR) if self._inject("read", addr) else self._load(addr)
            r = self.r._transaction_obj()
            r.rid, r.rdata, r.rresp, r.rlast = int(ar.arid), data, resp, 1
            self._tell(PteRead(addr, r.rid, data, resp, self._cycle()))
            self._answer("r", r.rid, r)

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
            if resp == OKAY and self._inject("atomic", addr):
                resp = SLVERR
            ok = False
            if resp == OKAY:
                ok, current = self.memory.cmpxchg64(addr, compare, swap)
            self.transactions.append(("atomic", addr, compare, swap, ok))
            self._tell(AtomicCompare(addr, int(aw.awid), compare, swap, ok, resp,
                                     self._cycle()))
            r = self.r._transaction_obj()
            r.rid, r.rdata, r.rresp, r.rlast = int(aw.awid), current, resp, 1
            b = self.b._transaction_obj()
            b.bid, b.bresp = int(aw.awid), resp
            self._answer("r", r.rid, r)
            self._answer("b", b.bid, b)

    async def _respond(self):
        while True:
            if not self._due:
                self._pending.clear()
                await self._pending.wait()
            due = self._due[0][0]
            now = get_sim_time("step")
            if due > now:
                if self.max_latency is None:    # fixed latency: nothing can pass the head
                    await Timer(due - now, "step")
                else:   # a response queued meanwhile may be due earlier: wait for either
                    self._pending.clear()
                    await First(Timer(due - now, "step"), self._pending.wait())
                    continue
            _, _, kind, transaction = heapq.heappop(self._due)
            await (self.r if kind == "r" else self.b).send(transaction)
