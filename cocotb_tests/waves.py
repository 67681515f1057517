"""A GTKWave save file for an MMU waveform: request/response streams, context and
invalidation ports, the AXI channels, walker states and TLB / walk-cache signals, each
group a collapsible section. ``gtkwave FILE.fst FILE.gtkw`` opens both."""

import pathlib

__all__ = ["write_gtkw", "GROUPS", "WALKER_GROUPS"]

HEX, BIN, DEC = "22", "28", "24"

#: (group, [(signal, format)]): names relative to the top (``tdpwalk_mmu``).
GROUPS = [
    ("Clock and reset", [("clk", BIN), ("rst", BIN)]),
    ("Request", [("req__valid", BIN), ("req__ready", BIN), ("req__payload", HEX)]),
    ("Response", [("resp__valid", BIN), ("resp__ready", BIN), ("resp__payload", HEX)]),
    ("Context and invalidation", [
        ("ctx__valid", BIN), ("ctx__index", DEC), ("ctx__data", HEX),
        ("inval__valid", BIN), ("inval__ready", BIN), ("inval__payload", HEX),
        ("inval_done", BIN), ("invalidator.inval_state", DEC), ("misses.stale", BIN)]),
    ("AXI read", [("axi__arvalid", BIN), ("axi__arready", BIN), ("axi__arid", DEC),
                  ("axi__araddr", HEX), ("axi__rvalid", BIN), ("axi__rready", BIN),
                  ("axi__rid", DEC), ("axi__rdata", HEX), ("axi__rresp", BIN)]),
    ("AXI atomic (A/D)", [("axi__awvalid", BIN), ("axi__awready", BIN), ("axi__awid", DEC),
                          ("axi__awaddr", HEX), ("axi__awatop", BIN), ("axi__wvalid", BIN),
                          ("axi__wready", BIN), ("axi__wdata", HEX), ("axi__wlast", BIN),
                          ("axi__bvalid", BIN), ("axi__bready", BIN), ("axi__bid", DEC),
                          ("axi__bresp", BIN)]),
    ("Walkers", [("misses.busy", BIN), ("misses.entry_valid", BIN), ("hit_turn", BIN)]
     + [(f"walkers.engine{i}.walk_state", DEC) for i in range(4)]),
    ("TLB and walk cache", [("tlb.op__valid", BIN), ("tlb.op__ready", BIN),
                            ("tlb.op__payload", HEX), ("tlb.result__payload", HEX),
                            ("tlb.inval__valid", BIN), ("tlb.inval_done", BIN),
                            ("pwc.fill__valid", BIN), ("pwc.fill__payload", HEX),
                            ("pwc.start", HEX), ("pwc.inval_done", BIN)]),
    ("Counters", [("counters", HEX)]),
]


#: The same for the walker alone (``tdpwalk_walker``, cocotb_tests/walker_bench.py).
WALKER_GROUPS = [GROUPS[0], GROUPS[1], GROUPS[2],
                 ("Context", [("ctx__valid", BIN), ("ctx__index", DEC), ("ctx__data", HEX)]),
                 GROUPS[4], GROUPS[5], ("Walker", [("pool.engine0.walk_state", DEC)])]


def write_gtkw(waves, sim="icarus", top="tdpwalk_mmu", groups=None):
    """Write ``waves`` with suffix ``.gtkw`` next to the FST; its path. Verilator puts
    the design under a ``TOP`` scope."""
    waves = pathlib.Path(waves)
    prefix = f"TOP.{top}." if sim == "verilator" else f"{top}."
    lines = [f'[dumpfile] "{waves}"', f'[savefile] "{waves.with_suffix(".gtkw")}"',
             "[timestart] 0", "[size] 1600 900", "[signals_width] 300",
             "[sst_width] 250", "[sst_expanded] 1"]
    for group, signals in groups or GROUPS:
        lines += ["@800200", f"-{group}"]
        for name, fmt in signals:
            lines += [f"@{fmt}", prefix + name]
        lines += ["@1000200", f"-{group}"]
    path = waves.with_suffix(".gtkw")
    path.write_text("\n".join(lines) + "\n")
    return path
