"""The AXI subordinate model of :mod:`hw.sim_axi` on a cocotb design's AXI ports.

:class:`HostMemoryAxi` is :class:`~hw.sim_axi.AxiSubordinate` (its memory, latency,
back-pressure, error injection, AtomicCompare, protocol checks and transaction events)
with a cocotb front end: one coroutine samples the manager's outputs at every rising
clock edge and drives the subordinate's answers, as :mod:`hw.sim` does in Amaranth's
simulator, so a walk meets the same memory on every simulator. It sleeps while nothing
is in flight and no ready is held back, woken by a valid rising, so idle cycles cost no
Python. On the DUT's reset it drops every request and answer in flight, as a real
interconnect does.
"""

import random

import cocotb
from cocotb.triggers import Event, RisingEdge
from cocotb.types import LogicArray
from cocotb.utils import get_sim_steps, get_sim_time

from hw.sim_axi import (CHANNELS, MANAGER_OUTPUTS, READIES, SUBORDINATE_OUTPUTS,
                        AtomicCompare, AxiSubordinate, Backpressure, beat_signals)

__all__ = ["HostMemoryAxi", "CHANNELS"]

#: The subordinate's outputs that carry a beat's payload: unknown until the first beat.
_PAYLOADS = ("rid", "rdata", "rresp", "rlast", "bid", "bresp")


class _ManagerSignals:
    """The manager's AXI outputs by their AMBA names, each read from the simulator only
    when the subordinate asks for it (most only on a handshake)."""

    def __init__(self, dut, prefix):
        self._handles = {name: getattr(dut, f"{prefix}_{name}") for name in MANAGER_OUTPUTS}

    def __getattr__(self, name):
        return int(self._handles[name].value)


class HostMemoryAxi(AxiSubordinate):
    """:class:`~hw.sim_axi.AxiSubordinate` serving a cocotb design's AXI ports.

    Parameters
    ----------
    dut, prefix
        The design and the prefix of its AXI ports (``"axi_"`` for Amaranth's
        ``axi__araddr`` ...).
    clock, reset
        Clock and active-high reset signals.
    memory : HostMemory
    period_ns : float
        The clock period, to number the clock cycles from simulation time.
    latency, max_latency
        As for :class:`~hw.sim_axi.AxiSubordinate`.
    stall : float or dict
        Probability that a ready or valid of the subordinate is held back on a cycle;
        a dict gives it per channel (keys from :data:`CHANNELS`, missing ones 0).
    seed : int
        Seeds the back-pressure pattern, and apart from it the random latencies and the
        random errors.

    Members
    -------
    transactions : list
        Every transaction in the order it acted on the memory: ``("read", addr)`` or
        ``("atomic", addr, compare, swap, ok)``.
    resets : int
        Resets seen (everything in flight was dropped at each).

    and those of :class:`~hw.sim_axi.AxiSubordinate` (error injection, ``on_atomic``,
    ``on_transaction``).
    """

    def __init__(self, dut, prefix, clock, reset, memory, *, period_ns, latency=1, stall=0.0,
                 seed=0, max_latency=None):
        super().__init__(memory, latency=latency, max_latency=max_latency, stall=stall,
                         stall_rng=random.Random(seed), rng=random.Random(seed ^ 0x5eed))
        self.transactions = []
        self.resets = 0
        self._manager = _ManagerSignals(dut, prefix)
        self._ports = {name: getattr(dut, f"{prefix}_{name}") for name in SUBORDINATE_OUTPUTS}
        self._driven = {}
        self._last_drive = None
        self._clock, self._reset = clock, reset
        self._in_reset = reset is not None and str(reset.value) == "1"
        self._period = get_sim_steps(period_ns, "ns")
        self._wake = Event()
        for name in _PAYLOADS:
            self._ports[name].value = LogicArray("X" * len(self._ports[name]))
        self._drive(self.ready, (None, None))
        cocotb.start_soon(self._serve())
        for name in ("arvalid", "awvalid", "wvalid"):
            cocotb.start_soon(self._wake_on(RisingEdge(getattr(dut, f"{prefix}_{name}"))))
        if reset is not None:
            cocotb.start_soon(self._count_resets())

    def set_stall(self, stall, seed=0):
        """Back-pressure from now on: ``stall`` as for the constructor."""
        self.backpressure = Backpressure(stall, random.Random(seed))
        self._wake.set()

    def _tell(self, event):
        if isinstance(event, AtomicCompare):
            self.transactions.append(("atomic", event.addr, event.compare, event.swap,
                                      event.ok))
        else:
            self.transactions.append(("read", event.addr))
        super()._tell(event)

    async def _serve(self):
        """Every rising edge while anything is in flight: take the handshakes, drive the
        next cycle. In reset: drop everything, drive no valid or ready."""
        edge = RisingEdge(self._clock)
        while True:
            await edge
            if self._in_reset:
                self.reset()
                self._drive(self.ready, (None, None))
                continue
            sampled_all = all(self.ready)       # the valids were read: none may be high
            self.edge(get_sim_time("step") // self._period, self._manager)
            self._drive(self.readies(), self.beats())
            held = self.backpressure.probability
            if sampled_all and self.idle and not (held["ar"] or held["aw"] or held["w"]):
                self._wake.clear()
                await self._wake.wait()

    async def _wake_on(self, trigger):
        while True:
            await trigger
            self._wake.set()

    async def _count_resets(self):
        """Follow the reset as the design samples it: a change lands after the edge it
        is written at, and the next edge sees it."""
        while True:
            await self._reset.value_change
            in_reset = str(self._reset.value) == "1"
            if in_reset and not self._in_reset:
                self.resets += 1
                self._wake.set()
            self._in_reset = in_reset

    def _drive(self, readies, beats):
        if (readies, *beats) == self._last_drive:
            return
        self._last_drive = (readies, *beats)
        for name, value in [*zip(READIES, map(int, readies)), *beat_signals(*beats)]:
            if self._driven.get(name) != value:
                self._driven[name] = value
                self._ports[name].value = value
