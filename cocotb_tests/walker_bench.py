"""cocotb bench for the page-table walker: replay a vector file and compare every answer,
PTE read and A/D update, and the final memory, with the reference walker on the same
memory.

Driven by :func:`cocotb_tests.runner.replay` through environment variables:
``TDPWALK_VECTORS`` (vector file), ``TDPWALK_RESULTS`` (the RTL's answers, one JSON line
each, written here whatever the comparison finds: the shape of ``python -m sw_model
run``), ``TDPWALK_CHECK`` (``0``: record only, no comparison), ``TDPWALK_LATENCY``,
``TDPWALK_STALL``, ``TDPWALK_SEED``.
"""

import json
import logging
import os

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge
from cocotbext.axi.stream import define_stream

from hw.decode import ACCESS_IDS
from hw.sim import ResponseDecoder, VmContext, WalkLog
from hw.walker import request_layout
from sw_model.vectors import load_vectors
from sw_model.walker import translate

from .axi_memory import HostMemoryAxi

PERIOD_NS = 10

_, _, WalkRequestSource, _, _ = define_stream("WalkRequest", signals=["payload", "valid", "ready"])
_, _, _, WalkResponseSink, _ = define_stream("WalkResponse", signals=["payload", "valid", "ready"])


class WalkerTB:
    """Clock, reset, context writes, request driver, response sink and AXI memory."""

    def __init__(self, dut, memory, *, latency=1, stall=0.0, seed=0):
        self.dut = dut
        for channel in ("req", "resp"):     # cocotbext-axi is chatty at INFO
            logging.getLogger(f"cocotb.{dut._name}.{channel}").setLevel(logging.WARNING)
        cocotb.start_soon(Clock(dut.clk, PERIOD_NS, unit="ns").start())
        self.axi = HostMemoryAxi(dut, "axi_", dut.clk, dut.rst, memory, period_ns=PERIOD_NS,
                                 latency=latency, stall=stall, seed=seed)
        self.req = WalkRequestSource(_Bus(dut, "req"), dut.clk, dut.rst)
        self.resp = WalkResponseSink(_Bus(dut, "resp"), dut.clk, dut.rst)
        self.vm_bits = len(dut.ctx__index)
        self.tag_bits = len(dut.req__payload) - 66 - self.vm_bits
        self.decoder = ResponseDecoder(self.tag_bits)
        self.walk = WalkLog()
        self.axi.on_transaction.append(self.walk)

    async def reset(self):
        for name in ("ctx__valid", "ctx__index", "ctx__data", "req__payload", "axi__rdata",
                     "axi__rresp", "axi__rid", "axi__rlast", "axi__bresp", "axi__bid"):
            getattr(self.dut, name).value = 0
        self.dut.rst.value = 1
        for _ in range(3):
            await RisingEdge(self.dut.clk)
        self.dut.rst.value = 0
        await RisingEdge(self.dut.clk)

    async def write_context(self, index, context):
        self.dut.ctx__index.value = index
        self.dut.ctx__data.value = context.raw()
        self.dut.ctx__valid.value = 1
        await RisingEdge(self.dut.clk)
        self.dut.ctx__valid.value = 0

    async def translate(self, gpa, access, vm_index, tag, context):
        """The walker's answer to one request, with the PTE reads and A/D writes of its
        last walk (a failed compare restarts it)."""
        payload = request_layout(self.vm_bits, self.tag_bits).const(
            {"gpa": gpa, "access": ACCESS_IDS[access], "vm": vm_index, "tag": tag})
        frame = self.req._transaction_obj()
        frame.payload = payload.as_value().value
        await self.req.send(frame)
        answer = await self.resp.recv()
        reads, writes, _ = self.walk.take()
        return self.decoder.result(int(answer.payload), gpa, access, context.fmt.arch,
                                   reads, writes)


class _Bus:
    """The ``payload``/``valid``/``ready`` signals of an Amaranth stream port."""

    def __init__(self, dut, name):
        self._entity, self._name = dut, name
        for signal in ("payload", "valid", "ready"):
            setattr(self, signal, getattr(dut, f"{name}__{signal}"))
        self._signals = {s: s for s in ("payload", "valid", "ready")}
        self._optional_signals = {}

    def drive(self, obj):
        self.payload.value = obj.payload

    def sample(self, obj):
        obj.payload = self.payload.value


@cocotb.test()
async def replay_vectors(dut):
    """Every access of TDPWALK_VECTORS through the walker, compared with the model
    unless TDPWALK_CHECK=0."""
    vectors = load_vectors(os.environ["TDPWALK_VECTORS"])
    check = os.environ.get("TDPWALK_CHECK", "1") != "0"
    model_memory = vectors.memory.copy()
    tb = WalkerTB(dut, vectors.memory, latency=int(os.environ.get("TDPWALK_LATENCY", "1")),
                  stall=float(os.environ.get("TDPWALK_STALL", "0")),
                  seed=int(os.environ.get("TDPWALK_SEED", "0")))
    await tb.reset()
    context = VmContext(fmt=vectors.fmt, root=vectors.root, vm=vectors.vm)
    await tb.write_context(0, context)
    mismatches, lines = [], []
    for index, (gpa, access) in enumerate(vectors.accesses):
        got = (await tb.translate(gpa, access, 0, index & ((1 << tb.tag_bits) - 1),
                                  context)).to_json()
        lines.append(json.dumps({"index": index, **got}))
        if not check:
            continue
        expect = translate(model_memory, vectors.fmt, vectors.root, gpa, access,
                           vm=vectors.vm).to_json()
        if got != expect:
            mismatches.append(index)
            if len(mismatches) <= 5:
                dut._log.error("access %d mismatch\n  model: %s\n  rtl:   %s", index, expect, got)
    out = os.environ.get("TDPWALK_RESULTS")
    if out:
        with open(out, "w") as f:
            f.writelines(line + "\n" for line in lines)
    dut._log.info("%d accesses, %d mismatches", len(lines), len(mismatches))
    assert not mismatches, f"{len(mismatches)} mismatches, first at access {mismatches[0]}"
    assert not check or np.array_equal(vectors.memory.words, model_memory.words), \
        "final memory differs from the reference walker's"
