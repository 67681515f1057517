"""Benchmarks: each ``bench/bench_*.py`` module has ``main(quick)`` and prints its tables."""
