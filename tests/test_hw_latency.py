"""Walk latency in cycles, printed as a table (shown even under pytest's capture).

The target: from request to response, at most two cycles per level beyond the memory's
read latency (the AR handshake, and the R beat registered before it is decoded), plus
one: ``levels * (latency + 2) + 1``. Setting A/D bits costs at most ``latency + 6``
cycles more per entry updated (the AtomicCompare's AW/W/B round trip and the compare of
the returned word), plus one for the walk; EPT and NPT set A in every entry they use
(SDM Vol. 3C §29.3 "Accessed and Dirty Flags for EPT", APM Vol. 2 §5.4.2), G-stage only
in the leaf. The cycle counts come from the simulator, so they are exact and checked;
wall-clock time is never measured.
"""

from sw_model.formats import FORMAT_NAMES, get_format

from hw.sim import walk_latency

LATENCIES = (1, 2, 4)


def test_latency_table(capsys):
    rows = []
    for name in FORMAT_NAMES:
        for latency in LATENCIES:
            levels, hit = walk_latency(name, latency, ad_set=True)
            _, with_ad = walk_latency(name, latency, ad_set=False)
            bound = levels * (latency + 2) + 1
            rows.append((name, levels, latency, hit, bound, with_ad))
            assert hit <= bound, f"{name}: {hit} cycles at memory latency {latency} > {bound}"
            updates = 1 if get_format(name).arch == "gstage" else levels
            ad_bound = hit + updates * (latency + 6) + 1
            assert hit < with_ad <= ad_bound, (
                f"{name}: {with_ad} cycles setting A/D at memory latency {latency}, "
                f"outside ({hit}, {ad_bound}]")
    with capsys.disabled():
        print("\nwalk latency (cycles from request accepted to response valid)")
        print(f"{'format':8} {'levels':>6} {'mem':>4} {'walk':>5} {'target':>6} "
              f"{'overhead':>8} {'setting A/D':>11}")
        for name, levels, latency, hit, bound, with_ad in rows:
            print(f"{name:8} {levels:>6} {latency:>4} {hit:>5} {bound:>6} "
                  f"{hit - levels * latency:>8} {with_ad:>11}")
