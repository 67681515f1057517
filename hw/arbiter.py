"""AXI read-address arbitration of several walkers onto one manager port, the
fixed-priority choices the MMU makes (as an index, a priority encoder, or one-hot), and
the reads of one of several values by such a choice."""

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["AxiArbiter", "lowest_set", "lowest_onehot", "pick", "pick_onehot"]


def lowest_set(m, bits, width, name):
    """The index of the lowest set bit of ``bits`` (0 when none)."""
    out = Signal(range(max(2, width)), name=name)
    for i in reversed(range(width)):
        with m.If(bits[i]):
            m.d.comb += out.eq(i)
    return out


def lowest_onehot(m, bits, name):
    """``bits`` with only its lowest set bit kept, as a signal: a choice whose use is an
    AND-OR of the values (:func:`pick_onehot`), not a mux tree behind an encoder."""
    out = Signal(len(bits), name=name)
    m.d.comb += out.eq(Cat(bits[i] & ~bits[:i].any() if i else bits[0]
                           for i in range(len(bits))))
    return out


def pick(values, index):
    """``values[index]`` of a list of same-shape values. One value is read as it is:
    an index port is at least one bit wide, and an out-of-range index would otherwise
    gate every bit."""
    if len(values) == 1:
        return values[0]
    flat = Cat(v.as_value() if hasattr(v, "as_value") else v for v in values)
    width = len(flat) // len(values)
    picked = flat.word_select(index, width)
    shape = values[0].shape() if hasattr(values[0], "shape") else None
    return data.View(shape, picked) if isinstance(shape, data.Layout) else picked


def pick_onehot(onehot, values):
    """The value of ``values`` that the one-hot signal ``onehot`` names (0 when none)."""
    flat = [v.as_value() if hasattr(v, "as_value") else v for v in values]
    out = Const(0, len(flat[0]))
    for select, value in zip(onehot, flat):
        out = out | Mux(select, value, 0)
    shape = values[0].shape() if hasattr(values[0], "shape") else None
    return data.View(shape, out) if isinstance(shape, data.Layout) else out


class AxiArbiter(wiring.Component):
    """The AR requests of ``ports`` walkers onto one AR channel, the ID naming the
    walker.

    A walk in progress asks from a register (its READ state); the lowest index wins,
    and a grant is held until its handshake, so ARADDR and ARID stay stable while
    ARVALID waits (AMBA AXI, "Handshake process"). A walk being started presents its
    first read straight from the start (``start_*``) in the cycle it starts, when no
    walk in progress asks: so whether it is taken depends on registers and ARREADY
    alone, never on which walk starts (the MMU decides that late in its cycle). A start
    not taken is asked again from its walker's READ state, holding the grant.

    Members
    -------
    valid : In(ports); addr : In(width).array(ports); ready : Out(ports)
        Each walker's request in progress, and its handshake.
    start_valid, start_id, start_addr : In; start_ready : Out(1)
        The first read of the walk starting on walker ``start_id``, and its handshake.
    grant : Out(id_bits)
        The walker presented on the port this cycle.
    arvalid, araddr, arready : the shared channel (``grant`` is its ARID).
    """

    def __init__(self, ports, width):
        self.ports = ports
        id_bits = max(1, (ports - 1).bit_length())
        super().__init__({
            "valid": In(ports), "addr": In(width).array(ports), "ready": Out(ports),
            "start_valid": In(1), "start_id": In(id_bits), "start_addr": In(width),
            "start_ready": Out(1),
            "grant": Out(id_bits),
            "arvalid": Out(1), "araddr": Out(width), "arready": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        locked = Signal()
        held = Signal.like(self.grant)
        asks = self.valid.any()
        # A held grant is a walker in its READ state, so ``asks`` is set while locked.
        granted = Signal.like(self.grant)
        m.d.comb += granted.eq(Mux(locked, held, lowest_set(m, self.valid, self.ports, "lowest")))
        m.d.comb += [
            self.grant.eq(Mux(asks, granted, self.start_id)),
            self.arvalid.eq(asks | self.start_valid),
            self.araddr.eq(Mux(asks, pick(list(self.addr), granted), self.start_addr)),
            self.ready.eq(Mux(asks & self.arready, 1 << granted, 0) if self.ports > 1
                           else asks & self.arready),
            self.start_ready.eq(self.arready & ~asks),
        ]
        m.d.sync += [locked.eq(self.arvalid & ~self.arready), held.eq(self.grant)]
        return m
