"""The benchmark harness: the CLI's JSON records, name selection, skipped anchors, and the
check that refuses to time an engine whose results disagree with the anchor."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest

import engine
from engine.bench import bench_overlap
from engine.bench.harness import (Benchmark, Case, Registry, ResultMismatchError, max_abs_difference,
                           run_benchmarks)

RECORD_TYPES = {
    "name": str, "size": str, "threads": int, "engine_s": float, "engine_min_s": float,
    "anchor": str, "anchor_s": float, "anchor_min_s": float, "speedup": float, "rounds": int,
    "units": int, "unit": str, "engine_units_per_s": float, "anchor_units_per_s": float,
    "discrepancy": float, "tolerance": float, "quick": bool,
}


def _engine_cli(*args, cwd):
    # Run outside the source tree: `python -m` puts the working directory first on sys.path, and
    # the checkout's engine/ has no compiled core after a plain (non-editable) `pip install .`.
    return subprocess.run([sys.executable, "-m", "engine", "bench", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_cli_quick_overlap_writes_checked_records(tmp_path):
    pytest.importorskip("photutils")
    path = tmp_path / "out" / "bench.json"
    result = _engine_cli("--quick", "--only", "overlap", "--json", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "overlap" in result.stdout and "speedup" in result.stdout  # the table was printed

    records = json.loads(path.read_text())
    assert isinstance(records, list) and len(records) == 1
    record = records[0]
    for key, kind in RECORD_TYPES.items():
        assert isinstance(record[key], kind), (key, record[key])
    assert record["name"] == "overlap"
    assert record["anchor"] == "photutils.geometry"
    assert record["threads"] == 1  # the overlap kernel takes no thread count
    assert record["skipped"] is None and record["quick"] is True
    assert record["size"] == "200 apertures, r 3-12 px"
    assert record["engine_s"] > 0 and record["anchor_s"] > 0
    assert record["speedup"] == pytest.approx(record["anchor_s"] / record["engine_s"], rel=1e-12)
    assert record["engine_min_s"] <= record["engine_s"]
    assert record["discrepancy"] <= record["tolerance"] <= 1e-10


def test_cli_unknown_name_fails_listing_known_ones(tmp_path):
    path = tmp_path / "bench.json"
    result = _engine_cli("--quick", "--only", "overlap", "no-such-bench", "--json", str(path),
                         cwd=tmp_path)
    assert result.returncode != 0
    assert "unknown benchmark 'no-such-bench'" in result.stderr
    assert "known benchmarks:" in result.stderr and "overlap" in result.stderr
    assert not path.exists()  # nothing ran, nothing written


def test_unknown_name_is_a_value_error():
    with pytest.raises(engine.EngineValueError, match="known benchmarks: overlap"):
        run_benchmarks(quick=True, only=["overlpa"], echo=False)


def test_bad_thread_count_is_refused():
    with pytest.raises(engine.EngineValueError, match="threads"):
        run_benchmarks(quick=True, only=["overlap"], threads=0, echo=False)


def _counting(fn, calls):
    def wrapped(*args):
        calls.append(1)
        return fn(*args)
    return wrapped


def test_check_before_timing_refuses_a_wrong_engine():
    pytest.importorskip("photutils")
    calls = []

    def perturbed(inputs, threads):
        masks = bench_overlap.OVERLAP.run_engine(inputs, threads)
        masks[-1][masks[-1].shape[0] // 2, 0] += 1e-7  # one pixel of one aperture, slightly off
        return masks

    wrong = Benchmark(name="overlap-perturbed", anchor="photutils.geometry",
                      requires=("photutils.geometry",), setup=bench_overlap.OVERLAP.setup,
                      run_engine=_counting(perturbed, calls),
                      run_anchor=bench_overlap.OVERLAP.run_anchor,
                      discrepancy=max_abs_difference, tolerance=1e-10)
    with pytest.raises(ResultMismatchError, match="'overlap-perturbed'.*nothing was timed"):
        run_benchmarks(quick=True, only=["overlap-perturbed"], registry=Registry([wrong]),
                       echo=False)
    assert len(calls) == 1  # run once for the check, never timed


def test_missing_anchor_is_reported_as_skipped():
    calls = []
    absent = Benchmark(name="absent", anchor="nonexistent-tool",
                       requires=("engine_bench_absent_anchor",),
                       setup=lambda quick, rng: Case(inputs=None, size="1 thing", units=1,
                                                     unit="things"),
                       run_engine=_counting(lambda inputs, threads: 0.0, calls),
                       run_anchor=lambda inputs: 0.0, discrepancy=lambda a, b: 0.0,
                       tolerance=0.0)
    (record,) = run_benchmarks(quick=True, registry=Registry([absent]), echo=False)
    assert record["anchor_s"] is None and record["speedup"] is None and record["engine_s"] is None
    assert "engine_bench_absent_anchor is not installed" in record["skipped"]
    assert calls == []  # an unchecked engine is not timed


def test_threads_reach_threaded_engines_only():
    seen = []

    def setup(quick, rng):
        return Case(inputs=rng.normal(size=8), size="8 numbers", units=8, unit="numbers")

    def make(name, threaded):
        def run_engine(inputs, threads):
            seen.append((name, threads))
            return inputs.copy()
        return Benchmark(name=name, anchor="numpy", requires=("numpy",), setup=setup,
                         run_engine=run_engine, run_anchor=lambda inputs: inputs.copy(),
                         discrepancy=max_abs_difference, tolerance=0.0, threaded=threaded,
                         quick_rounds=2)

    registry = Registry([make("threaded", True), make("serial", False)])
    records = run_benchmarks(quick=True, threads=3, registry=registry, echo=False)
    assert [r["threads"] for r in records] == [3, 1]
    assert set(seen) == {("threaded", 3), ("serial", 1)}
    assert [r["rounds"] for r in records] == [2, 2]
    for r in records:
        assert r["speedup"] == r["anchor_s"] / r["engine_s"]


def test_registry_refuses_duplicate_names():
    registry = Registry([bench_overlap.OVERLAP])
    with pytest.raises(engine.EngineValueError, match="already registered"):
        registry.add(bench_overlap.OVERLAP)


def test_max_abs_difference():
    a = [np.zeros((2, 3)), np.ones(4)]
    assert max_abs_difference(a, [np.zeros((2, 3)), np.ones(4) + 0.5]) == 0.5
    assert max_abs_difference(a, [np.zeros((3, 2)), np.ones(4)]) == math.inf  # shape differs
    assert max_abs_difference(a, a[:1]) == math.inf  # one mask missing
    assert max_abs_difference(np.array([np.nan, 1.0]), np.array([np.nan, 1.0])) == 0.0
    assert max_abs_difference(np.array([np.nan, 1.0]), np.array([0.0, 1.0])) == math.inf


def test_quick_solve_benchmark_is_checked_and_timed():
    pytest.importorskip("astroalign")
    (record,) = run_benchmarks(quick=True, only=["solve"], echo=False)
    assert record["skipped"] is None
    assert record["discrepancy"] <= record["tolerance"]
    assert record["engine_s"] > 0 and record["anchor_s"] > 0


def test_e2e_check_compares_normalised_target_curves():
    from engine.bench.bench_e2e import E2E, _discrepancy

    phase = np.linspace(0.0, 6.0, 150)
    target = 1.0 + 0.13 * np.sin(phase)  # the variable night's target, relative to its comparisons
    # Another comparison ensemble only scales the curve: no discrepancy.
    assert _discrepancy(1.7 * target, target) == pytest.approx(0.0, abs=1e-12)
    assert _discrepancy(target * (1 + 0.002 * np.cos(9 * phase)), target) <= E2E.tolerance
    # A comparison star measured as the target, or the frames out of order, is refused.
    assert _discrepancy(np.ones_like(target), target) > E2E.tolerance
    assert _discrepancy(target[::-1], target) > E2E.tolerance
    assert _discrepancy(target[1:], target) == math.inf  # a frame missing


@pytest.mark.slow
def test_e2e_real_night_is_checked_and_timed():
    """The engine's reduce and the astropy + photutils script agree on the real SARA frames."""
    pytest.importorskip("photutils")
    from engine.bench.bench_e2e import _REAL_NIGHT

    if not _REAL_NIGHT.is_dir():
        pytest.skip("the real frames are absent")
    (record,) = run_benchmarks(quick=True, only=["e2e-real"], echo=False)
    assert record["skipped"] is None
    assert record["discrepancy"] <= record["tolerance"]
    assert record["engine_s"] > 0 and record["anchor_s"] > 0
    assert record["units"] == 10
