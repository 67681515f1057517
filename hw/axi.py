"""AXI4 manager signature with the AXI5 ``AWATOP`` extension used for A/D updates.

Signal names are the AMBA ones in lower case, so an Amaranth member ``axi`` becomes the
Verilog ports ``axi__araddr`` ... and a cocotb bench finds them with the prefix ``axi_``.
Only the signals the walker needs are present: no QOS, REGION or USER.

A/D updates are AXI5 AtomicCompare transactions (AMBA AXI spec, "Atomic transactions",
AWATOP = 0b110001): the manager sends compare and swap values (16 bytes outbound, two
8-byte beats on a 64-bit bus) and the subordinate returns the original 8-byte value on R
with RID = AWID, plus a B response. The compare value goes in the first beat, which is
at AWADDR: INCR when AWADDR is 16-byte aligned, WRAP when it is the upper half.
"""

from amaranth.lib import enum, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Burst", "Resp", "Atop", "AXI4Signature"]


class Burst(enum.Enum, shape=2):
    FIXED = 0b00
    INCR = 0b01
    WRAP = 0b10


class Resp(enum.Enum, shape=2):
    OKAY = 0b00
    EXOKAY = 0b01
    SLVERR = 0b10
    DECERR = 0b11


class Atop(enum.Enum, shape=6):
    NON_ATOMIC = 0b000000
    COMPARE = 0b110001


class AXI4Signature(wiring.Signature):
    """AXI4 manager (master) signature, one data beat of ``data_width`` bits.

    Parameters
    ----------
    addr_width : int
    data_width : int
        Must be 64: page-table entries are 64-bit words.
    id_width : int

    Members
    -------
    aw*, w*, b*, ar*, r*
        The AMBA AXI4 channels, outputs of the manager except ``*ready`` of AW/W/AR and
        every B/R payload, plus ``awatop`` (AXI5 atomic operation type).
    """

    def __init__(self, *, addr_width=64, data_width=64, id_width=4):
        if not isinstance(addr_width, int) or not 32 <= addr_width <= 64:
            raise ValueError(f"addr_width must be an integer in [32, 64], got {addr_width!r}")
        if data_width != 64:
            raise ValueError(f"data_width must be 64 (page-table entries are 64-bit), "
                             f"got {data_width!r}")
        if not isinstance(id_width, int) or not 1 <= id_width <= 16:
            raise ValueError(f"id_width must be an integer in [1, 16], got {id_width!r}")
        self.addr_width, self.data_width, self.id_width = addr_width, data_width, id_width
        super().__init__({
            "awid": Out(id_width), "awaddr": Out(addr_width), "awlen": Out(8),
            "awsize": Out(3), "awburst": Out(2), "awlock": Out(1), "awcache": Out(4),
            "awprot": Out(3), "awatop": Out(6), "awvalid": Out(1), "awready": In(1),
            "wdata": Out(data_width), "wstrb": Out(data_width // 8), "wlast": Out(1),
            "wvalid": Out(1), "wready": In(1),
            "bid": In(id_width), "bresp": In(2), "bvalid": In(1), "bready": Out(1),
            "arid": Out(id_width), "araddr": Out(addr_width), "arlen": Out(8),
            "arsize": Out(3), "arburst": Out(2), "arlock": Out(1), "arcache": Out(4),
            "arprot": Out(3), "arvalid": Out(1), "arready": In(1),
            "rid": In(id_width), "rdata": In(data_width), "rresp": In(2), "rlast": In(1),
            "rvalid": In(1), "rready": Out(1),
        })

    def __eq__(self, other):
        return (isinstance(other, AXI4Signature) and self.addr_width == other.addr_width
                and self.data_width == other.data_width and self.id_width == other.id_width)

    def __repr__(self):
        return (f"AXI4Signature(addr_width={self.addr_width}, data_width={self.data_width}, "
                f"id_width={self.id_width})")
