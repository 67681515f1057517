"""RTL cycle figures from Amaranth's simulator (simulator-independent: cycles, not seconds).

1. The walker alone: cycles from request to response per format against the memory's
   read latency, and the overhead per level beyond the memory's own latency.
2. The MMU top: walk latency per format against the memory latency with a cold walk
   cache and with its upper levels cached; TLB hit throughput; random-miss throughput
   against the number of walkers; TLB hit rate against the TLB's geometry on four
   access patterns.

Pages are mapped by the TDP model (sw_model.tdp) by fault-in, as a hypervisor would; their
accessed bits are then set by the reference walker so the measured walks make reads only.
All of it runs in Amaranth's simulator (no Verilator build per configuration), with
fewer requests under ``BENCH=quick``.
"""

import pathlib
import random

from hw.sim import VmContext, run_mmu, walk_latency
from sw_model.formats import FORMAT_NAMES
from sw_model.memory import HostMemory
from sw_model.tdp import Vm
from sw_model.walker import translate

from .report import Table

__all__ = ["main", "PATTERNS", "pattern"]

IMG = pathlib.Path(__file__).resolve().parent.parent / "docs" / "img"
LATENCIES = (1, 5, 20, 100)
MISS_LATENCY = 20
#: Cycles between an answer and the next read in the hit-rate runs: a walk's TLB fill is
#: written up to two cycles after its answer.
FILL_GAP = 2
#: TLB geometries (sets, ways) of the hit-rate sweep; (16, 4) is the default.
TLB_SIZES = ((4, 2), (8, 4), (16, 4), (32, 4), (16, 8), (64, 4))
PATTERNS = ("sequential", "strided", "random", "hot/cold")


def pattern(name, count, seed=1):
    """GPAs of an access pattern (4 KiB pages in the first 1 GiB).

    sequential: sweeps over 96 pages, four 8-byte accesses per page, repeated;
    strided: one access every 16 pages (64 KiB) over 16 pages, repeated (every page
    falls in the same TLB set while the TLB has at most 16 sets);
    random: uniform over 256 pages;
    hot/cold: the recorded-style mix of a guest working set, 85 % of accesses to
    24 hot pages and 15 % to 1024 cold ones.
    """
    rng = random.Random(seed)
    if name == "sequential":
        gpas = [(page << 12) | (k << 3) for page in range(96) for k in range(4)]
    elif name == "strided":
        gpas = [(page * 16) << 12 for page in range(16)]
    elif name == "random":
        return [rng.randrange(256) << 12 for _ in range(count)]
    elif name == "hot/cold":
        hot = rng.sample(range(4096), 24)
        return [(rng.choice(hot) if rng.random() < 0.85 else 4096 + rng.randrange(1024)) << 12
                for _ in range(count)]
    else:
        raise ValueError(f"pattern must be one of {', '.join(PATTERNS)}, got {name!r}")
    return [gpas[i % len(gpas)] for i in range(count)]


def _mapped_vm(name, gpas, *, accessed=True):
    """A VM with the 4 KiB pages at ``gpas`` faulted in (slot: the first 1 GiB); with
    ``accessed`` every entry on their paths has its A bit set already."""
    memory = HostMemory(64 << 20)
    vm = Vm(name, memory, trace=False)
    vm.add_memslot(0, 0, 1 << 18, 1 << 32, host_level=1)
    for gpa in sorted(set(gpas)):
        vm.handle_fault(gpa, "read")
    context = VmContext(vm.fmt, vm.root_for(), vm.opts)
    if accessed:
        for gpa in sorted(set(gpas)):
            assert translate(memory, vm.fmt, context.root, gpa, "read", vm=vm.opts).ok
    return memory, context


def walker_latency(latencies):
    rows = []
    for name in FORMAT_NAMES:
        row = [name]
        for latency in latencies:
            levels, cycles = walk_latency(name, latency)
            row.append(f"{cycles} ({(cycles - levels * latency) / levels:.2f})")
        rows.append(row)
    return Table("Walker alone: walk latency (cycles)", ["format"] + [f"mem {n}" for n in latencies],
                 rows, "hw.walker.Walker in hw/sim.py's harness, one 4 KiB write walk with A/D "
                 "already set, memory read latency 1 to 100 cycles; in brackets the cycles per "
                 "level beyond the memory latency.")


def mmu_walk_latency(latencies):
    """{format: {latency: (cold, pwc hit, reads saved)}}."""
    first, second = 0x40_0000, 0x40_1000     # two pages of one 2 MiB region
    out = {}
    for name in FORMAT_NAMES:
        memory, context = _mapped_vm(name, [first, second])
        # Walk-cache fills land one level per cycle after the response: wait for them.
        script = [("req", first, "read", 0), ("drain",), ("delay", 8),
                  ("req", second, "read", 0), ("drain",)]
        out[name] = {}
        for latency in latencies:
            run = run_mmu(memory.copy(), [context], script, latency=latency)
            out[name][latency] = (run.cycles[0], run.cycles[1], run.counters["pwc_reads_saved"])
    return out


def tlb_hit_throughput(hits):
    """``(hits, cycles, latency, replayed)``: ``hits`` back-to-back hits to a warm page,
    the cycles they add, the longest a hit took, and the latency of a request sent in
    the cycle after the walk's answer. The warm-up waits for the walk's TLB fill to be
    written: a request right after the walk's answer finds the fill still on its way
    and is replayed into it (a merged miss, not a hit)."""
    first = 0x40_0000
    memory, context = _mapped_vm("ept4", [first])
    warm = [("req", first, "read", 0), ("drain",), ("delay", 8), ("drain",)]
    base = run_mmu(memory.copy(), [context], warm, latency=MISS_LATENCY).total
    run = run_mmu(memory.copy(), [context],
                  warm + [("req", first + 8 * i, "read", 0) for i in range(hits)]
                  + [("drain",)], latency=MISS_LATENCY)
    at_once = run_mmu(memory.copy(), [context], [("req", first, "read", 0), ("drain",),
                                                 ("req", first + 8, "read", 0), ("drain",)],
                      latency=MISS_LATENCY)
    return hits, run.total - base, max(run.cycles[i] for i in range(1, hits + 1)), \
        at_once.cycles[1]


def miss_throughput(count, walker_counts, latency):
    """{walkers: requests per cycle} for ``count`` distinct random pages (ept4)."""
    order = [page << 12 for page in random.Random(1).sample(range(1 << 18), count)]
    memory, context = _mapped_vm("ept4", order)
    script = [("req", gpa, "read", 0) for gpa in order] + [("drain",)]
    out = {}
    for walkers in walker_counts:
        run = run_mmu(memory.copy(), [context], script, latency=latency,
                      num_walkers=walkers, pending=max(8, 2 * walkers), timeout=100000)
        out[walkers] = (run.total, count / run.total)
    return out


def hit_rates(count):
    """{pattern: {(sets, ways): hit rate}}: TLB hits / requests, cold start included."""
    out = {}
    for name in PATTERNS:
        gpas = pattern(name, count)
        memory, context = _mapped_vm("ept4", gpas)
        # One request at a time, each FILL_GAP cycles after the previous answer: a miss
        # completes and its TLB fill is written before the next lookup, so no miss
        # merges into a walk or its fill and every repeat can hit (the table measures the
        # TLB's capacity; the cost of a request sent at once is in the hit throughput).
        script = [item for gpa in gpas
                  for item in (("req", gpa, "read", 0), ("drain",), ("delay", FILL_GAP))]
        out[name] = {}
        for sets, ways in TLB_SIZES:
            run = run_mmu(memory.copy(), [context], script, latency=1, tlb_sets=sets,
                          tlb_ways=ways, timeout=100000)
            out[name][(sets, ways)] = run.counters["tlb_hits"] / run.counters["requests"]
        print(f"  hit rate {name}: done", flush=True)
    return out


def _plots(walk, miss, rates):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib missing: no plots; install the [bench] extra)")
        return []
    IMG.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for i, (name, by_latency) in enumerate(walk.items()):
        lat = list(by_latency)
        color = f"C{i}"
        ax.plot(lat, [by_latency[l][0] for l in lat], marker="o", color=color, label=name)
        ax.plot(lat, [by_latency[l][1] for l in lat], marker="x", ls="--", color=color)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("memory read latency (cycles)")
    ax.set_ylabel("walk latency (cycles)")
    ax.set_title("MMU walk latency: cold (solid) vs walk-cache hit (dashed)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(IMG / "walk_latency.png", dpi=72)
    plt.close(fig)

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot(list(miss), [1000 * v[1] for v in miss.values()], marker="o")
    left.set_xscale("log", base=2)
    left.set_xlabel("walkers")
    left.set_ylabel("requests per 1000 cycles")
    left.set_title(f"random-miss throughput, memory latency {MISS_LATENCY}")
    labels = [f"{s}x{w}" for s, w in TLB_SIZES]
    for name, by_size in rates.items():
        right.plot(labels, [100 * by_size[size] for size in TLB_SIZES], marker="o", label=name)
    right.set_xlabel("TLB sets x ways")
    right.set_ylabel("hit rate (%)")
    right.set_title("TLB hit rate")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(IMG / "mmu.png", dpi=72)
    plt.close(fig)
    return ["img/walk_latency.png", "img/mmu.png"]


def main(quick=False):
    latencies = (1, 20) if quick else LATENCIES
    tables = [walker_latency(latencies)]
    walk = mmu_walk_latency(latencies)
    rows = []
    for name, by_latency in walk.items():
        row = [name]
        for latency in latencies:
            cold, warm, _ = by_latency[latency]
            row.append(f"{cold} / {warm}")
        row.append(by_latency[latencies[0]][2])
        rows.append(row)
    walk_table = Table("MMU walk latency: cold / walk-cache hit (cycles)",
                       ["format"] + [f"mem {n}" for n in latencies] + ["reads saved"], rows,
                       "hw.mmu.MMU defaults (4 walkers, 16x4 TLB, 4 walk-cache entries per "
                       "level); cycles from request accepted to response for a 4 KiB read "
                       "whose entries have A set (no A/D write), with a cold walk cache and "
                       "then for a second page of the same 2 MiB region (every non-leaf level "
                       "cached: one memory read). The walk starts below the cached levels, "
                       "so they cost no cycle (docs/mmu.md).")
    tables.append(walk_table)

    hits, cycles, latency, replayed = tlb_hit_throughput(64 if quick else 512)
    tables.append(Table("TLB hit throughput", ["hits", "cycles", "requests/cycle",
                                               "hit latency (cycles)"],
                        [[hits, cycles, f"{hits / cycles:.2f}", latency]],
                        "back-to-back hits to one warm page (ept4), after the warm-up walk and "
                        "its TLB fill; cycles include draining the last response. The latency "
                        "is the longest of the hits', from the cycle a request is accepted (TLB "
                        "lookup) to its response (hw/mmu.py answers a hit from S2, two cycles "
                        "after it was accepted). A request in the few cycles between a walk's "
                        "answer and its TLB fill is replayed into the fill: "
                        f"{replayed} cycles (a read sent in the cycle after the answer)."))

    walkers = (1, 2, 4, 8)
    count = 48 if quick else 256
    miss = miss_throughput(count, walkers, MISS_LATENCY)
    tables.append(Table(f"Random-miss throughput against walkers (memory latency {MISS_LATENCY})",
                        ["walkers", "cycles", "requests/1000 cycles", "speed-up"],
                        [[w, total, f"{1000 * rate:.1f}", f"{rate / miss[1][1]:.2f}"]
                         for w, (total, rate) in miss.items()],
                        f"{count} distinct 4 KiB pages spread over 1 GiB (ept4), each a full "
                        f"walk; pending = max(8, 2 x walkers)."))

    rates = hit_rates(200 if quick else 800)
    rate_table = Table("TLB hit rate against TLB size",
                       ["pattern"] + [f"{s}x{w} ({s * w})" for s, w in TLB_SIZES],
                       [[name] + [f"{100 * by_size[size]:.1f}%" for size in TLB_SIZES]
                        for name, by_size in rates.items()],
                       f"TLB hits / requests over {200 if quick else 800} reads, one at a time, "
                       f"each {FILL_GAP} cycles after the previous answer, once its TLB fill is "
                       f"written (ept4, 4 KiB pages, memory latency 1, cold start included); "
                       f"columns: "
                       f"sets x ways (entries). Patterns: "
                       + " ".join(pattern.__doc__.split("\n\n")[1].split()))
    tables.append(rate_table)
    plots = _plots(walk, miss, rates)
    walk_table.plots = plots[:1]
    rate_table.plots = plots[1:]
    return tables


if __name__ == "__main__":
    import sys
    for table in main(quick="--quick" in sys.argv):
        print(table.text())
