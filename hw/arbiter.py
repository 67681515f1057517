"""AXI read-address arbitration of several walkers onto one manager port, and the
priority encoder every fixed-priority choice of the MMU uses."""

from amaranth import Array, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["AxiArbiter", "lowest_set"]


def lowest_set(m, bits, width, name):
    """The index of the lowest set bit of ``bits`` (0 when none)."""
    out = Signal(range(max(2, width)), name=name)
    for i in reversed(range(width)):
        with m.If(bits[i]):
            m.d.comb += out.eq(i)
    return out


class AxiArbiter(wiring.Component):
    """The AR requests of ``ports`` walkers onto one AR channel, the ID naming the
    walker. The lowest index wins; a grant is held until its handshake, so ARADDR and
    ARID stay stable while ARVALID waits (AMBA AXI, "Handshake process").

    Members
    -------
    valid : In(ports); addr : In(width).array(ports); ready : Out(ports)
        Each walker's request and its handshake.
    grant : Out(id_bits)
        The walker presented on the port this cycle.
    arvalid, araddr, arready : the shared channel (``grant`` is its ARID).
    """

    def __init__(self, ports, width):
        self.ports = ports
        id_bits = max(1, (ports - 1).bit_length())
        super().__init__({
            "valid": In(ports), "addr": In(width).array(ports), "ready": Out(ports),
            "grant": Out(id_bits),
            "arvalid": Out(1), "araddr": Out(width), "arready": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        locked = Signal()
        held = Signal.like(self.grant)
        lowest = lowest_set(m, self.valid, self.ports, "lowest")
        grant = self.grant
        m.d.comb += [
            grant.eq(Mux(locked, held, lowest)),
            self.arvalid.eq(self.valid.any()),
            self.araddr.eq(Array(self.addr)[grant]),
            self.ready.eq((self.arready & self.arvalid) << grant),
        ]
        m.d.sync += [locked.eq(self.arvalid & ~self.arready), held.eq(grant)]
        return m
