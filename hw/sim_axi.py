"""The AXI subordinate of every bench: PTE reads and AXI5 AtomicCompares served from a
:class:`~sw_model.memory.HostMemory`, one clock edge at a time.

One model for both simulators, so a walk meets the same memory in Amaranth's simulator
(:mod:`hw.sim`) and in cocotb (:mod:`cocotb_tests.axi_memory`): each front end samples the
manager's outputs at a clock edge, calls :meth:`AxiSubordinate.edge`, then drives what
:meth:`AxiSubordinate.readies` and :meth:`AxiSubordinate.beats` return until the next
edge. Nothing here imports a simulator; it lives in hw/ because hw imports nothing from
cocotb_tests, while cocotb_tests may import hw.

A read acts on the memory when its AR is taken; an AtomicCompare (AMBA AXI spec,
"Atomic transactions"; docs/rtl.md) when its AW and both W beats are: the compare value
is the beat at AWADDR, the swap value the other beat, and the original word comes back
on R with RID = AWID, then B. An answer's handshake comes ``latency`` cycles after its
request's when nothing is held back (1 is a synchronous SRAM), or a random latency up to
``max_latency``; only answers of one AXI ID keep their order (A3.4.1). Out-of-range words answer DECERR; poisoned words
(:meth:`HostMemory.poison`), :attr:`~AxiSubordinate.errors` and injected errors answer
SLVERR. Every read and AtomicCompare goes, as it acts on the memory, as a
:class:`PteRead` or :class:`AtomicCompare` to the callbacks of
:attr:`~AxiSubordinate.on_transaction`: the monitors of the walks' memory traffic.
"""

import random
from collections import namedtuple
from dataclasses import dataclass

from sw_model.memory import MemoryAccessError

from .axi import Atop, Burst, Resp

__all__ = ["AxiSubordinate", "Backpressure", "ProtocolError", "PteRead", "AtomicCompare",
           "Answer", "CHANNELS", "MANAGER_OUTPUTS", "ManagerOutputs", "SUBORDINATE_OUTPUTS",
           "READIES", "beat_signals", "OKAY", "SLVERR", "DECERR"]

#: The five AXI channels, for a per-channel ``stall``.
CHANNELS = ("ar", "r", "aw", "w", "b")
#: The manager's outputs the subordinate samples at a clock edge (AMBA names).
MANAGER_OUTPUTS = ("arvalid", "arid", "araddr", "arlen", "arsize", "arburst", "rready",
                   "awvalid", "awid", "awaddr", "awlen", "awsize", "awburst", "awatop",
                   "wvalid", "wdata", "wstrb", "wlast", "bready")
#: One edge's sample of :data:`MANAGER_OUTPUTS`, for a front end that samples them all.
ManagerOutputs = namedtuple("ManagerOutputs", MANAGER_OUTPUTS)
#: The subordinate's outputs a front end drives.
SUBORDINATE_OUTPUTS = ("arready", "awready", "wready", "rvalid", "rid", "rdata", "rresp",
                       "rlast", "bvalid", "bid", "bresp")
#: The readies, in the order :meth:`AxiSubordinate.readies` returns them.
READIES = ("arready", "awready", "wready")

#: The response codes of :class:`hw.axi.Resp` as the integers on RRESP and BRESP.
OKAY, SLVERR, DECERR = Resp.OKAY.value, Resp.SLVERR.value, Resp.DECERR.value
_INCR, _COMPARE = Burst.INCR.value, Atop.COMPARE.value


class ProtocolError(AssertionError):
    """The manager broke an AXI rule the subordinate checks, or stopped answering."""


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


@dataclass(frozen=True)
class Answer:
    """An R beat (``data``: the word) or a B beat (``data`` None) to present."""
    ident: int
    resp: int
    data: int = None


def beat_signals(r, b):
    """The R and B beats of :meth:`AxiSubordinate.beats` as ``(signal, value)`` pairs to
    drive: each channel's valid, and a presented beat's payload (left as it was while
    no beat is presented)."""
    pairs = []
    if r is not None:
        pairs += [("rid", r.ident), ("rdata", r.data), ("rresp", r.resp), ("rlast", 1)]
    pairs.append(("rvalid", int(r is not None)))
    if b is not None:
        pairs += [("bid", b.ident), ("bresp", b.resp)]
    pairs.append(("bvalid", int(b is not None)))
    return pairs


class Backpressure:
    """Random back-pressure on the subordinate's side of the channels: in each cycle a
    channel is held (AR, AW, W: ready low; R, B: a due beat not presented yet) with its
    own probability. One generator serves every channel, drawn in a fixed order, so a
    seed gives one pattern.

    Parameters
    ----------
    stall : float or dict
        The probability for every channel, or per channel (keys from :data:`CHANNELS`,
        missing ones 0).
    rng : random.Random
    """

    def __init__(self, stall=0.0, rng=None):
        if isinstance(stall, dict):
            unknown = set(stall) - set(CHANNELS)
            if unknown:
                raise ValueError(f"stall: unknown channel(s) {', '.join(sorted(unknown))} "
                                 f"(channels: {', '.join(CHANNELS)})")
            for name, p in stall.items():
                if not 0.0 <= p < 1.0:
                    raise ValueError(f"stall[{name!r}] must be a probability in [0, 1), "
                                     f"got {p!r}")
            self.probability = {name: stall.get(name, 0.0) for name in CHANNELS}
        else:
            if not 0.0 <= stall < 1.0:
                raise ValueError(f"stall must be a probability in [0, 1), got {stall!r}")
            self.probability = dict.fromkeys(CHANNELS, stall)
        self.rng = rng if rng is not None else random.Random(0)

    def holds(self, channel):
        """Whether ``channel`` is held in the coming cycle (a draw only if it may be)."""
        p = self.probability[channel]
        return bool(p) and self.rng.random() < p


class AxiSubordinate:
    """AXI subordinate serving PTE reads and AtomicCompares from a HostMemory, driven
    one clock edge at a time by a simulator's front end.

    Parameters
    ----------
    memory : HostMemory
    latency : int
        Cycles from a request's handshake to its answer's (>= 1) when nothing is held.
    max_latency : int or None
        If set, each transaction takes a random latency in ``[latency, max_latency]``
        (one draw for an AtomicCompare's R and B); answers are then ordered per AXI ID
        only.
    stall : float or dict
        :class:`Backpressure` probabilities.
    stall_rng : random.Random
        Draws the back-pressure.
    rng : random.Random
        Draws the random latencies and the random errors (may be ``stall_rng``).

    Members
    -------
    cycle : int
        The clock cycle of the last edge.
    backpressure : Backpressure
    ready : tuple of bool
        AR, AW and W ready as driven until the next edge.
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
    """

    def __init__(self, memory, *, latency=1, max_latency=None, stall=0.0, stall_rng=None,
                 rng=None):
        if not isinstance(latency, int) or latency < 1:
            raise ValueError(f"latency must be an integer >= 1, got {latency!r}")
        if max_latency is not None and (not isinstance(max_latency, int)
                                        or max_latency < latency):
            raise ValueError(f"max_latency must be an integer >= latency ({latency}), "
                             f"got {max_latency!r}")
        self.memory, self.latency, self.max_latency = memory, latency, max_latency
        self.backpressure = Backpressure(stall, stall_rng)
        self.rng = rng if rng is not None else random.Random(0)
        self.errors, self.read_errors, self.atomic_errors = set(), set(), set()
        self.read_error_rate = self.atomic_error_rate = 0.0
        self.injected = []
        self.on_atomic = None
        self.on_transaction = []
        self.cycle = 0
        self.reset()

    def reset(self):
        """Drop every request and answer in flight, as an interconnect reset does; the
        readies are low until the next :meth:`readies`."""
        self.ready = (False, False, False)
        self._pending = {"r": [], "b": []}      # [(due, ident, serial, Answer)]
        self._shown = {"r": None, "b": None}    # the entry presented, until taken
        self._last_due = {}                     # (channel, ident) -> due of its last answer
        self._serial = 0
        self._aw = None                         # (addr, ident) of the AtomicCompare in progress
        self._wdata = []

    @property
    def idle(self):
        """Nothing in flight: no answer queued or presented, no AtomicCompare begun."""
        return not (self._pending["r"] or self._pending["b"] or self._aw is not None
                    or self._wdata)

    def queued(self, channel):
        """Answers of ``channel`` ("r" or "b") not taken yet, the one presented included."""
        return len(self._pending[channel])

    # -- a clock edge ----------------------------------------------------------------

    def edge(self, cycle, manager):
        """The clock edge that ends ``cycle``: take the handshakes it completes.
        ``manager`` has the :data:`MANAGER_OUTPUTS` as attributes, sampled at the edge
        (only those of a channel that can hand over are read)."""
        self.cycle = cycle
        ar_ready, aw_ready, w_ready = self.ready
        if ar_ready and manager.arvalid:
            self._read(manager.araddr, manager.arid, manager.arlen, manager.arsize,
                       manager.arburst)
        if self._shown["r"] is not None and manager.rready:
            self._take("r")
        if aw_ready and manager.awvalid:
            self._address_write(manager.awaddr, manager.awid, manager.awatop, manager.awlen,
                                manager.awsize, manager.awburst)
        if w_ready and manager.wvalid:
            self._write_beat(manager.wdata, manager.wstrb, manager.wlast)
        if self._aw is not None and len(self._wdata) == 2:
            self._atomic()
        if self._shown["b"] is not None and manager.bready:
            self._take("b")

    def readies(self):
        """AR, AW and W ready for the coming cycle (drawn, in that order)."""
        holds = self.backpressure.holds
        self.ready = (not holds("ar"), not holds("aw"), not holds("w"))
        return self.ready

    def beats(self):
        """The R and B :class:`Answer` presented in the coming cycle, or None. A beat
        presented stays until taken: a subordinate may delay a beat, never withdraw it.
        Of the answers due, the lowest AXI ID goes first, then the oldest."""
        shown = []
        for channel in ("r", "b"):
            entry = self._shown[channel]
            if entry is None:
                due = [e for e in self._pending[channel] if e[0] <= self.cycle + 1]
                if due and not self.backpressure.holds(channel):
                    entry = self._shown[channel] = min(due)
            shown.append(None if entry is None else entry[3])
        return tuple(shown)

    # -- transactions ----------------------------------------------------------------

    def _take(self, channel):
        self._pending[channel].remove(self._shown[channel])
        self._shown[channel] = None

    def _read(self, addr, ident, length, size, burst):
        if length != 0 or size != 3 or burst != _INCR or addr % 8:
            raise ProtocolError(f"PTE read at {addr:#x}: ARLEN={length} ARSIZE={size} "
                                f"ARBURST={burst}, expected a single aligned 8-byte INCR "
                                f"beat")
        data, resp = (0, SLVERR) if self._inject("read", addr) else self._load(addr)
        self._tell(PteRead(addr, ident, data, resp, self.cycle))
        self._answer(("r",), ident, Answer(ident, resp, data))

    def _address_write(self, addr, ident, atop, length, size, burst):
        if self._aw is not None:
            raise ProtocolError("a second AW before the first AtomicCompare finished")
        want = Burst.WRAP if addr & 8 else Burst.INCR
        if atop != _COMPARE or length != 1 or size != 3 or burst != want.value:
            raise ProtocolError(
                f"A/D update at {addr:#x}: AWATOP={atop:#b} AWLEN={length} AWSIZE={size} "
                f"AWBURST={burst}, expected an AtomicCompare of two 8-byte beats, burst "
                f"{want.name}")
        self._aw = (addr, ident)

    def _write_beat(self, data, strb, last):
        if strb != 0xff or bool(last) != (len(self._wdata) == 1):
            raise ProtocolError(f"W beat {len(self._wdata)}: WSTRB={strb:#x} WLAST={last}")
        self._wdata.append(data)

    def _atomic(self):
        (addr, ident), (compare, swap) = self._aw, self._wdata
        self._aw, self._wdata = None, []
        if self.on_atomic is not None:
            self.on_atomic(addr, self.memory)
        current, resp = self._load(addr)
        if resp == OKAY and self._inject("atomic", addr):
            resp = SLVERR
        ok = False
        if resp == OKAY:
            ok, current = self.memory.cmpxchg64(addr, compare, swap)
        self._tell(AtomicCompare(addr, ident, compare, swap, ok, resp, self.cycle))
        self._answer(("r", "b"), ident, Answer(ident, resp, current), Answer(ident, resp))

    def _load(self, addr):
        if addr in self.errors:
            return 0, SLVERR
        try:
            return self.memory.read64(addr), OKAY
        except MemoryAccessError:
            return 0, SLVERR if self.memory.contains(addr) else DECERR

    def _inject(self, kind, addr):
        """Whether this read or AtomicCompare answers an injected SLVERR."""
        if kind == "read":
            hit = addr in self.read_errors or (
                self.read_error_rate and self.rng.random() < self.read_error_rate)
        else:
            hit = addr in self.atomic_errors or (
                self.atomic_error_rate and self.rng.random() < self.atomic_error_rate)
        if hit:
            self.injected.append((kind, addr))
        return bool(hit)

    def _tell(self, event):
        for callback in self.on_transaction:
            callback(event)

    def _answer(self, channels, ident, *answers):
        """Queue a transaction's answers, one per channel, due after its latency and
        after the last answer of the same AXI ID on that channel."""
        due = self.cycle + (self.latency if self.max_latency is None
                            else self.rng.randint(self.latency, self.max_latency))
        for channel, answer in zip(channels, answers):
            key = (channel, ident)
            at = max(due, self._last_due.get(key, due))
            self._last_due[key] = at
            self._pending[channel].append((at, ident, self._serial, answer))
            self._serial += 1
