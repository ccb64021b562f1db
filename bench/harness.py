"""The benchmark registry and runner: the engine and an anchor tool, checked, then timed side by side.

A benchmark is a `Benchmark` record: how to build its (seeded) inputs, how to run the engine and
the anchor on them, and how to measure their disagreement. Families live one per file in
`bench/bench_<family>.py` and call `register(...)` at import time; `run_benchmarks` imports every
such module, so adding a family means adding a file and nothing else. Family modules import their
anchor tool inside the functions that use it, never at module level, so that a missing anchor makes
a skipped record rather than a failed import.

For each selected benchmark the runner:
1. checks that the anchor's modules (`requires`) import; if not, records the benchmark as skipped
   with the reason (engine_s, anchor_s and speedup are None: nothing unchecked is timed);
2. builds the inputs with `np.random.default_rng(benchmark.seed)`;
3. runs the engine and the anchor once and compares them; a discrepancy above the tolerance raises
   `ResultMismatchError` naming the benchmark, before anything is timed;
4. warms both up once more, then times them back to back in the same process, alternating engine
   and anchor for `rounds` rounds (`quick_rounds` with quick=True), with `time.perf_counter` and
   the garbage collector paused, and keeps the medians and minima.

Records (one dict per benchmark, JSON-ready) hold at least name, size, threads, engine_s, anchor,
anchor_s and speedup (= anchor_s / engine_s), plus engine_min_s, anchor_min_s, rounds, units, unit,
engine_units_per_s, anchor_units_per_s, discrepancy, tolerance, anchor_version, quick, skipped
(None, or the reason) and notes.
"""

from __future__ import annotations

import gc
import importlib
import math
import os
import pkgutil
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from engine.errors import EngineError, EngineValueError, MissingToolError

__all__ = [
    "Benchmark",
    "Case",
    "REGISTRY",
    "Registry",
    "ResultMismatchError",
    "max_abs_difference",
    "register",
    "require",
    "run_benchmark",
    "run_benchmarks",
]


class ResultMismatchError(EngineError, RuntimeError):
    """The engine and the anchor disagree on a benchmark's inputs, so it must not be timed."""


@dataclass(frozen=True)
class Case:
    """The inputs a benchmark's setup builds, and how to describe their size.

    inputs: anything the benchmark's run_engine / run_anchor understand (often a small dict).
    size: a short human description for the table, e.g. "2000 apertures, r 3-12 px".
    units: how many units of work one run does (apertures, frames, stars), for units/s.
    unit: the name of that unit, plural.
    """

    inputs: Any
    size: str
    units: int
    unit: str


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: the engine and an anchor tool on the same inputs.

    name: unique, what `--only` selects.
    anchor: the anchor's display name, e.g. "photutils.geometry".
    requires: modules the anchor needs; any one missing makes the benchmark skipped.
    setup(quick, rng) -> Case: builds the inputs (small ones when quick) from the seeded rng.
    run_engine(inputs, threads) -> result: the engine's computation. `threads` is what the engine
        functions that take a thread count receive; it is always 1 unless `threaded` is True.
    run_anchor(inputs) -> result: the anchor's computation of the same thing.
    discrepancy(engine_result, anchor_result) -> float: disagreement as one number (e.g. the
        largest absolute difference, see `max_abs_difference`); must be <= tolerance.
    """

    name: str
    anchor: str
    requires: tuple[str, ...]
    setup: Callable[[bool, np.random.Generator], Case]
    run_engine: Callable[[Any, int], Any]
    run_anchor: Callable[[Any], Any]
    discrepancy: Callable[[Any, Any], float]
    tolerance: float
    threaded: bool = False
    rounds: int = 7
    quick_rounds: int = 3
    seed: int = 20261121
    notes: str = ""


class Registry:
    """Benchmarks by name, in registration order."""

    def __init__(self, benchmarks: Iterable[Benchmark] = ()):
        self._benchmarks: dict[str, Benchmark] = {}
        for benchmark in benchmarks:
            self.add(benchmark)

    def add(self, benchmark: Benchmark) -> Benchmark:
        """Register a benchmark (returns it); a second benchmark of the same name is an error."""
        if not isinstance(benchmark, Benchmark):
            raise EngineValueError(f"expected a Benchmark, got {type(benchmark).__name__}")
        if benchmark.name in self._benchmarks:
            raise EngineValueError(f"a benchmark named {benchmark.name!r} is already registered")
        if benchmark.rounds < 1 or benchmark.quick_rounds < 1:
            raise EngineValueError(f"benchmark {benchmark.name!r}: rounds must be >= 1")
        self._benchmarks[benchmark.name] = benchmark
        return benchmark

    def names(self) -> list[str]:
        return list(self._benchmarks)

    def select(self, only: Sequence[str] | None = None) -> list[Benchmark]:
        """The benchmarks named in `only` (in that order), or all of them when `only` is None."""
        if only is None:
            return list(self._benchmarks.values())
        if isinstance(only, str):
            only = [only]
        if len(only) == 0:
            raise EngineValueError("no benchmark names given; known benchmarks: "
                                   + ", ".join(self.names()))
        unknown = [name for name in only if name not in self._benchmarks]
        if unknown:
            raise EngineValueError(
                f"unknown benchmark{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(repr(n) for n in unknown)}; known benchmarks: "
                + (", ".join(self.names()) or "(none)"))
        return [self._benchmarks[name] for name in dict.fromkeys(only)]

    def __contains__(self, name: str) -> bool:
        return name in self._benchmarks

    def __len__(self) -> int:
        return len(self._benchmarks)


#: The suite's registry: every `bench/bench_*.py` module registers into it when imported.
REGISTRY = Registry()


def register(benchmark: Benchmark) -> Benchmark:
    """Add a benchmark to the suite's registry (`REGISTRY`); returns it."""
    return REGISTRY.add(benchmark)


def _load_families() -> None:
    """Import every `bench/bench_*.py` module once, which registers its benchmarks."""
    package = importlib.import_module(__package__)  # engine.bench, or bench in a checkout

    for module in sorted(m.name for m in pkgutil.iter_modules(package.__path__)):
        if module.startswith("bench_"):
            importlib.import_module(f"{__package__}.{module}")


def require(module: str, install: str | None = None):
    """Import and return an anchor module, or raise MissingToolError saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = install or module.split(".")[0]
        raise MissingToolError(
            f"{module} is not installed (pip install {package}): {exc}") from None


def max_abs_difference(engine_result, anchor_result) -> float:
    """Largest absolute difference between two arrays, or between two equal-length sequences of
    arrays (compared pairwise). Shapes that differ, or NaN where the other has none, give inf."""
    if isinstance(engine_result, np.ndarray) or isinstance(anchor_result, np.ndarray):
        pairs = [(engine_result, anchor_result)]
    else:
        engine_result, anchor_result = list(engine_result), list(anchor_result)
        if len(engine_result) != len(anchor_result):
            return math.inf
        pairs = list(zip(engine_result, anchor_result))
    worst = 0.0
    for a, b in pairs:
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if a.shape != b.shape:
            return math.inf
        if a.size == 0:
            continue
        if not np.array_equal(np.isnan(a), np.isnan(b)):
            return math.inf
        diff = np.abs(a - b)
        finite = ~np.isnan(diff)
        if finite.any():
            worst = max(worst, float(diff[finite].max()))
    return worst


def _default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        return os.cpu_count() or 1


def _seconds(fn: Callable[[], Any]) -> float:
    """Wall time of one call, with the garbage collector paused as timeit does."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    finally:
        if was_enabled:
            gc.enable()


def _version(modules: Sequence[str]) -> str | None:
    if not modules:
        return None
    top = modules[0].split(".")[0]
    version = getattr(importlib.import_module(top), "__version__", None)
    return f"{top} {version}" if version else top


def _record(benchmark: Benchmark, *, size: str | None, threads: int, quick: bool) -> dict:
    return {
        "name": benchmark.name, "size": size, "threads": threads,
        "engine_s": None, "engine_min_s": None,
        "anchor": benchmark.anchor, "anchor_version": None, "anchor_s": None, "anchor_min_s": None,
        "speedup": None, "rounds": 0, "units": None, "unit": None,
        "engine_units_per_s": None, "anchor_units_per_s": None,
        "discrepancy": None, "tolerance": benchmark.tolerance,
        "quick": quick, "skipped": None, "notes": benchmark.notes,
    }


def run_benchmark(benchmark: Benchmark, *, quick: bool = False, threads: int = 1) -> dict:
    """Check, then time, one benchmark; returns its record (see the module docstring)."""
    threads = threads if benchmark.threaded else 1
    record = _record(benchmark, size=None, threads=threads, quick=quick)
    try:
        for module in benchmark.requires:
            require(module)
        record["anchor_version"] = _version(benchmark.requires)
        case = benchmark.setup(quick, np.random.default_rng(benchmark.seed))
        record.update(size=case.size, units=case.units, unit=case.unit)

        # Check before timing: the first runs are also the first warm-up (JIT compilation, caches).
        engine_result = benchmark.run_engine(case.inputs, threads)
        anchor_result = benchmark.run_anchor(case.inputs)
    except MissingToolError as exc:
        record["skipped"] = str(exc)
        return record
    discrepancy = float(benchmark.discrepancy(engine_result, anchor_result))
    if not discrepancy <= benchmark.tolerance:  # also catches NaN
        raise ResultMismatchError(
            f"benchmark {benchmark.name!r}: the engine and {benchmark.anchor} disagree on "
            f"{case.size} (discrepancy {discrepancy:.3g} > tolerance {benchmark.tolerance:.3g}); "
            "nothing was timed")
    record["discrepancy"] = discrepancy
    del engine_result, anchor_result

    def engine_call():
        benchmark.run_engine(case.inputs, threads)

    def anchor_call():
        benchmark.run_anchor(case.inputs)

    engine_call()
    anchor_call()
    rounds = benchmark.quick_rounds if quick else benchmark.rounds
    engine_times, anchor_times = [], []
    for _ in range(rounds):
        engine_times.append(_seconds(engine_call))
        anchor_times.append(_seconds(anchor_call))

    engine_s = statistics.median(engine_times)
    anchor_s = statistics.median(anchor_times)
    record.update(
        engine_s=engine_s, engine_min_s=min(engine_times),
        anchor_s=anchor_s, anchor_min_s=min(anchor_times),
        speedup=anchor_s / engine_s if engine_s > 0 else None,
        rounds=rounds,
        engine_units_per_s=case.units / engine_s if engine_s > 0 else None,
        anchor_units_per_s=case.units / anchor_s if anchor_s > 0 else None,
    )
    return record


_COLUMNS = (("name", 12), ("size", 28), ("threads", 7), ("engine s", 10), ("anchor", 20),
            ("anchor s", 10), ("speedup", 8))


def _row(cells: Sequence[str]) -> str:
    return "  ".join(f"{cell:<{width}}" if k in (0, 1, 4) else f"{cell:>{width}}"
                     for k, (cell, (_, width)) in enumerate(zip(cells, _COLUMNS)))


def _speedup(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}x" if value < 10 else f"{value:.1f}x"


def _format(record: dict) -> str:
    def seconds(value):
        return "-" if value is None else f"{value:.4g}"

    cells = [record["name"], record["size"] or "-", str(record["threads"]),
             seconds(record["engine_s"]), record["anchor"], seconds(record["anchor_s"]),
             _speedup(record["speedup"])]
    line = _row(cells)
    if record["skipped"]:
        line += f"  skipped: {record['skipped']}"
    return line


def run_benchmarks(quick: bool = False, only: list[str] | None = None,
                   threads: int | None = None, *, registry: Registry | None = None,
                   echo: bool = True) -> list[dict]:
    """Run the selected benchmarks, print a table row as each finishes, return the records.

    quick: small sizes and few rounds (the whole quick suite takes seconds).
    only: benchmark names to run (default: all); an unknown name raises EngineValueError
        listing the known ones.
    threads: thread count for the engine functions that take one (default: every core this
        process may use); benchmarks whose engine takes none record threads = 1.
    registry: the benchmarks to choose from (default: the suite, every bench/bench_*.py).
    echo: print the table.
    """
    if registry is None:
        _load_families()
        registry = REGISTRY
    if threads is None:
        threads = _default_threads()
    elif isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise EngineValueError(f"threads must be a positive integer, got {threads!r}")
    selected = registry.select(only)

    if echo:
        header = _row([title for title, _ in _COLUMNS])
        print(header)
        print("-" * len(header), flush=True)
    records = []
    for benchmark in selected:
        record = run_benchmark(benchmark, quick=quick, threads=int(threads))
        records.append(record)
        if echo:
            print(_format(record), flush=True)
    return records
