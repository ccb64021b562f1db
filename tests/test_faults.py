"""A reduction killed with SIGKILL at random moments resumes to the products of an uninterrupted one."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from engine.simulation import simulate

SCRIPT = """
import json, sys
from engine.pipeline import reduce
raw, out, target, positions = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
reduce([raw], out, target=tuple(target), target_xy={k: tuple(v) for k, v in positions.items()})
"""

PRODUCTS = ("frames.parquet", "photometry.parquet", "stars.parquet", "lightcurves.parquet")


def _reduce(raw, out, target, positions, kill_after=None):
    process = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(raw), str(out), json.dumps(target),
         json.dumps(positions)], cwd=tempfile.gettempdir(), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    if kill_after is None:
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err
        return True
    try:
        process.wait(timeout=kill_after)
        return False  # finished before the kill
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        return True


def _table(path):
    table = pq.read_table(path)
    keep = [c for c in table.column_names if c not in ("file_mtime_ns", "path")]
    return table.select(keep)


#: Floats agree to this relative tolerance, exactly for everything else: Numba's compiled code
#: may differ in the last bits between a cold and a warm cache or another thread count (2e-14
#: seen), never more. Near zero the tolerance is relative to the column's largest value.
RTOL = 1e-12


def _assert_same(a_dir: Path, b_dir: Path):
    for name in PRODUCTS:
        a, b = _table(a_dir / name), _table(b_dir / name)
        assert a.schema.names == b.schema.names, name
        for column in a.column_names:
            x = a.column(column).to_numpy(zero_copy_only=False)
            y = b.column(column).to_numpy(zero_copy_only=False)
            if x.dtype.kind == "f":
                finite = np.isfinite(x)
                scale = np.abs(x[finite]).max() if finite.any() else 0.0
                np.testing.assert_allclose(x, y, rtol=RTOL, atol=RTOL * scale, equal_nan=True,
                                           err_msg=f"{name}:{column}")
            else:
                assert a.column(column).to_pylist() == b.column(column).to_pylist(), \
                    f"{name}:{column}"


@pytest.mark.slow
def test_sigkill_at_random_moments_then_rerun_gives_the_same_products(tmp_path):
    from engine.ingest import ingest
    from engine.simulation import target_positions

    raw = tmp_path / "raw"
    truth = simulate(raw, preset="tiny", seed=4).truth
    target = [truth["target"]["ra_deg"], truth["target"]["dec_deg"]]
    positions = target_positions(truth, ingest([raw], tmp_path / "probe", target=target).frames)
    reference = tmp_path / "reference"
    start = time.perf_counter()
    _reduce(raw, reference, target, positions)
    duration = time.perf_counter() - start
    rng = np.random.default_rng(11)
    killed = trials = 0
    # On a loaded machine a run may end before its kill comes: trials go on until six kills
    # have landed (at most twelve trials).
    while killed < 6 and trials < 12:
        out = tmp_path / f"trial{trials}"
        # Kill once or twice per trial at random moments of a run, then let it finish.
        for _ in range(int(rng.integers(1, 3))):
            killed += _reduce(raw, out, target, positions,
                              kill_after=float(rng.uniform(0.3, 0.95) * duration))
        _reduce(raw, out, target, positions)
        _assert_same(reference, out)
        trials += 1
    assert killed >= 5
