"""The benchmark suite: the engine against the anchor tools a user would otherwise pick.

`bench.harness` holds the registry and the runner (`python -m engine bench` calls
`bench.harness.run_benchmarks`). Each `bench_*.py` module is one family of benchmarks and registers
them when imported; the harness finds and imports every such module itself. This file only marks
the package and defines nothing.
"""
