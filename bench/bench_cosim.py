"""Co-simulation speed: MMU translations per second on Icarus and Verilator (cocotb),
for a hit-heavy stream (16 pages, all TLB hits) and a miss-heavy one (2048 4 KiB
pages, nearly all walks), with the scoreboard checking every response and without it.
The Amaranth-simulator figure is the walker harness of hw/sim.py (no TLB), for scale.
"""

import os
import time

from cocotb_tests.runner import SIMULATORS, ToolchainError, run_mmu

from .report import Table

__all__ = ["main"]


def _amaranth(count):
    from hw.sim import VmContext, run_walker
    from sw_model.vectors import random_vectors
    vf = random_vectors("ept4", 1, count)
    start = time.perf_counter()
    run_walker(vf.memory, [VmContext(vf.fmt, vf.root, vf.vm)], vf.accesses)
    return count / (time.perf_counter() - start)


def main(quick=False, simulators=SIMULATORS):
    counts = {"icarus": 500 if quick else 2000, "verilator": 5000 if quick else 30000}
    rows, skipped = [], []
    for sim in simulators:
        try:
            for batch in (False, True):
                for check in (True, False):
                    results = run_mmu(sim, ["hit", "miss"], shell=batch,
                                      test_module="cocotb_tests.speed_bench",
                                      extra={"TDPWALK_COUNT": str(counts[sim]),
                                             "TDPWALK_CHECK": "1" if check else "0",
                                             "TDPWALK_BATCH": "1" if batch else "0",
                                             "COCOTB_LOG_LEVEL": "WARNING",
                                             "GPI_LOG_LEVEL": "WARNING",
                                             "PYTHONWARNINGS": "ignore::DeprecationWarning"})
                    for r in results:
                        rows.append([sim, "batches of 64" if batch else "per cycle",
                                     r["stream"], "on" if check else "off", r["count"],
                                     f"{100 * r['hit_rate']:.0f}%",
                                     f"{r['cycles'] / r['count']:.2f}", f"{r['rate']:,.0f}"])
        except ToolchainError as e:
            skipped.append(f"{sim} skipped ({e})")
    amaranth_count = 100 if quick else 400
    rows.append(["amaranth (walker only)", "per cycle", "miss", "on", amaranth_count, "0%",
                 "-", f"{_amaranth(amaranth_count):,.0f}"])
    note = (f"os.cpu_count() = {os.cpu_count()}; wall-clock time of the stream only, excluding "
            f"build and simulator start-up; memory latency 2 cycles; ept4. Drivers: per "
            f"cycle, the hypervisor loop's (Python at every clock edge); batches of 64, "
            f"cocotb_tests/batch_shell.py (Python once per batch, the shell presents the "
            f"requests back to back and keeps the responses with their cycle stamps); "
            f"the scoreboard checks every response in both.")
    rates = {(r[0], r[1], r[2], r[3]): float(r[7].replace(",", "")) for r in rows}
    gains = [f"{sim} {rates[sim, 'batches of 64', 'hit', 'on'] / rate:.2f}x"
             for sim in simulators if (rate := rates.get((sim, "per cycle", "hit", "on")))]
    if gains:
        note += (f" Batches of 64 against the per-cycle driver, hit stream, scoreboard on: "
                 f"{', '.join(gains)}; a ratio near 1 means the simulator's evaluation of "
                 f"the design, not Python, is what limits the rate.")
    if skipped:
        note += " " + "; ".join(skipped) + "."
    return [Table("Co-simulation speed (translations per second)",
                  ["simulator", "driver", "stream", "scoreboard", "translations",
                   "TLB hits", "cycles/transl.", "translations/s"], rows, note)]


if __name__ == "__main__":
    import sys
    for table in main(quick="--quick" in sys.argv):
        print(table.text())
