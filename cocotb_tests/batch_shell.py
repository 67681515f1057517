"""The MMU in a shell that runs a batch of requests without Python, for co-simulation speed.

cocotb pays a few microseconds for every clock edge it awaits and for every signal it
reads or writes, far more than a cycle of the RTL costs the simulator; a bench that
drives one request per cycle from Python cannot go faster than cocotb's edge rate. With
the shell, the TB writes up to ``depth`` requests at once (:attr:`BatchShell.batch_req`),
starts the batch and awaits its end: the shell presents them to the MMU back to back and
keeps every response with its cycle stamps, and the TB reads them all at once
(:meth:`cocotb_tests.mmu_tb.MmuTB.run_batch`). Outside a batch the ports pass through, so
the hypervisor loop drives the same build cycle by cycle.
"""

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out, connect, flipped

__all__ = ["BatchShell", "STAMP_BITS"]

#: Cycle stamps count from the cycle the batch starts.
STAMP_BITS = 20


class BatchShell(wiring.Component):
    """``mmu`` with a request buffer and a response buffer.

    Parameters
    ----------
    mmu : hw.mmu.MMU
    depth : int
        Requests per batch, at most the number of tags.

    Members
    -------
    (every port of :class:`hw.mmu.MMU`)
        Passed through; ``req`` is not accepted and ``resp`` not presented during a batch.
    batch_req : In(depth * request width)
        Request ``i`` (the MMU's request layout) in bits ``[i*w, (i+1)*w)``; held while the
        batch runs. Tags must be distinct.
    batch_count : In(range(depth + 1))
        Requests in the batch.
    batch_go : In(1)
        Starts a batch (sampled at a clock edge while no batch runs, or on the done cycle
        of the last one).
    batch_done : Out(1)
        High for one cycle when every request of the batch has been answered.
    batch_resp : Out(depth * (response width + STAMP_BITS))
        The responses in the order they came, each the MMU's response word with the
        cycle it was answered above it: a shift register entered from the top, so after
        a batch of ``n`` the ``j``-th response is in slot ``depth - n + j``.
    batch_accepted : Out(depth * STAMP_BITS)
        The cycle each request was accepted, shifted in the same way: request ``i`` of
        ``n`` in slot ``depth - n + i``.

    The buffers are shift registers rather than slots indexed by a counter: a simulator
    such as Icarus then evaluates one wide shift per cycle instead of ``depth`` blocks
    of next-state logic.
    """

    def __init__(self, mmu, depth=64):
        if not isinstance(depth, int) or not 1 <= depth <= 1 << mmu.tag_bits:
            raise ValueError(f"depth must be an integer in [1, {1 << mmu.tag_bits}] (the "
                             f"MMU's tags), got {depth!r}")
        self.mmu, self.depth = mmu, depth
        self.req_width = mmu.signature.members["req"].signature.members["payload"].shape.size
        self.resp_width = mmu.signature.members["resp"].signature.members["payload"].shape.size
        super().__init__({
            **mmu.signature.members,
            "batch_req": In(depth * self.req_width),
            "batch_count": In(range(depth + 1)),
            "batch_go": In(1),
            "batch_done": Out(1),
            "batch_resp": Out(depth * (self.resp_width + STAMP_BITS)),
            "batch_accepted": Out(depth * STAMP_BITS),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.mmu = mmu = self.mmu
        for name in ("ctx", "inval", "axi"):
            connect(m, flipped(getattr(self, name)), getattr(mmu, name))
        m.d.comb += [self.inval_done.eq(mmu.inval_done), self.counters.eq(mmu.counters)]

        running = Signal()
        count = Signal.like(self.batch_count)
        issued = Signal(range(self.depth + 1))
        received = Signal(range(self.depth + 1))
        now = Signal(STAMP_BITS)
        answers = Signal.like(self.batch_resp)
        accepted = Signal.like(self.batch_accepted)
        answer_width = self.resp_width + STAMP_BITS
        m.d.comb += [
            self.batch_resp.eq(answers),
            self.batch_accepted.eq(accepted),
            self.batch_done.eq(running & (received == count)),
        ]

        present = running & (issued < count)
        m.d.comb += [
            mmu.req.valid.eq(Mux(running, present, self.req.valid)),
            mmu.req.payload.eq(Mux(running, self.batch_req.word_select(
                issued[:max(1, (self.depth - 1).bit_length())], self.req_width),
                self.req.payload)),
            self.req.ready.eq(mmu.req.ready & ~running),
            self.resp.valid.eq(mmu.resp.valid & ~running),
            self.resp.payload.eq(mmu.resp.payload),
            mmu.resp.ready.eq(running | self.resp.ready),
        ]

        with m.If(running):
            m.d.sync += now.eq(now + 1)
            with m.If(present & mmu.req.ready):
                m.d.sync += [accepted.eq(Cat(accepted[STAMP_BITS:], now)),
                             issued.eq(issued + 1)]
            with m.If(mmu.resp.valid):
                m.d.sync += [answers.eq(Cat(answers[answer_width:],
                                            mmu.resp.payload.as_value(), now)),
                             received.eq(received + 1)]
            with m.If(self.batch_done):
                m.d.sync += running.eq(0)
        # The TB reads a batch's results on its done cycle and may start the next one
        # there: go is taken then too.
        with m.If(self.batch_go & (~running | self.batch_done)):
            m.d.sync += [running.eq(1), count.eq(self.batch_count), issued.eq(0),
                         received.eq(0), now.eq(1)]
        return m
