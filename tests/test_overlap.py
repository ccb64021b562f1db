"""The compiled circle-pixel overlap against the slow reference and against analytic answers."""

import math
import threading

import numpy as np
import pytest

import engine
import reference
from engine.cext import _core


def test_matches_reference_on_random_circles():
    rng = np.random.default_rng(20261121)
    for _ in range(300):
        x, y = rng.uniform(-4.0, 16.0, size=2)
        r = rng.choice([rng.uniform(0.01, 1.0), rng.uniform(1.0, 9.0)])
        fast = engine.circle_overlap_grid(x, y, r, (13, 11))
        slow = reference.circle_overlap_grid(x, y, r, (13, 11))
        np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-12)


@pytest.mark.parametrize("r", [0.05, 0.5, 1.0, 1.5, 2.9, 10.0, 33.3])
def test_sum_over_grid_is_pi_r_squared(r):
    n = int(2 * r) + 8
    rng = np.random.default_rng(int(r * 100))
    x, y = n / 2 + rng.uniform(-0.5, 0.5, size=2)
    total = engine.circle_overlap_grid(x, y, r, (n, n)).sum()
    assert total == pytest.approx(math.pi * r * r, rel=1e-13, abs=1e-13)


def test_radius_below_one_pixel_stays_in_its_pixel():
    grid = engine.circle_overlap_grid(2.2, 1.8, 0.25, (4, 5))
    assert grid[2, 2] == pytest.approx(math.pi * 0.0625, abs=1e-15)
    assert np.count_nonzero(grid) == 1


def test_edge_pixels_and_symmetry():
    # A circle centred on a pixel centre is symmetric under flips and transposition.
    grid = engine.circle_overlap_grid(5.0, 5.0, 3.7, (11, 11))
    np.testing.assert_allclose(grid, grid[::-1, :], atol=1e-14)
    np.testing.assert_allclose(grid, grid[:, ::-1], atol=1e-14)
    np.testing.assert_allclose(grid, grid.T, atol=1e-14)
    # Interior pixels are full, pixels beyond the radius empty, rim pixels strictly between.
    assert grid[5, 5] == 1.0 and grid[5, 7] == 1.0
    assert grid[0, 0] == 0.0
    assert 0.0 < grid[5, 9] < 1.0


@pytest.mark.parametrize("x, y, fraction", [
    (-0.5, 10.0, 0.5),   # centre on the left edge of the grid: the right half is counted
    (-0.5, -0.5, 0.25),  # on the corner: one quadrant
    (9.5, 10.0, 0.5),    # on the right edge of a 10-column grid
    (-20.0, 3.0, 0.0),   # entirely off the grid
])
def test_centres_off_the_grid(x, y, fraction):
    r = 4.0
    total = engine.circle_overlap_grid(x, y, r, (21, 10)).sum()
    assert total == pytest.approx(fraction * math.pi * r * r, abs=1e-12)


def test_large_radius_parity_with_reference():
    fast = engine.circle_overlap_grid(40.3, 39.6, 37.9, (81, 81))
    for j, i in [(40, 2), (1, 40), (78, 40), (13, 12), (67, 66)]:
        slow = reference.disk_rectangle_area(i - 0.5 - 40.3, i + 0.5 - 40.3,
                                             j - 0.5 - 39.6, j + 0.5 - 39.6, 37.9)
        assert fast[j, i] == pytest.approx(slow, abs=1e-12)


def test_disk_rectangle_area_analytic():
    assert engine.disk_rectangle_area(-5, 5, -5, 5, 2.0) == pytest.approx(4 * math.pi, abs=1e-14)
    assert engine.disk_rectangle_area(0, 5, 0, 5, 2.0) == pytest.approx(math.pi, abs=1e-14)
    assert engine.disk_rectangle_area(0, 1, 0, -1, 2.0) == 0.0  # inverted rectangle


def test_out_argument_is_filled_in_place():
    out = np.full((6, 7), -1.0)
    result = engine.circle_overlap_grid(3.0, 2.5, 1.2, out.shape, out=out)
    assert result is out
    assert out.min() >= 0.0 and out.sum() == pytest.approx(math.pi * 1.44)


@pytest.mark.parametrize("kwargs", [
    dict(x=np.nan, y=0.0, r=1.0, shape=(3, 3)),
    dict(x=0.0, y=np.inf, r=1.0, shape=(3, 3)),
    dict(x=0.0, y=0.0, r=0.0, shape=(3, 3)),
    dict(x=0.0, y=0.0, r=-2.0, shape=(3, 3)),
    dict(x=0.0, y=0.0, r=1.0, shape=(-1, 3)),
    dict(x=0.0, y=0.0, r=1.0, shape="wide"),
])
def test_bad_arguments_raise_value_errors(kwargs):
    with pytest.raises(engine.EngineValueError):
        engine.circle_overlap_grid(**kwargs)


def _read_only(a):
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("out", [
    np.zeros((3, 3), dtype=np.float32),
    np.zeros((4, 3)),
    np.zeros((3, 6))[:, ::2],
    np.asfortranarray(np.zeros((3, 4)))[:, :3],
    _read_only(np.zeros((3, 3))),
])
def test_bad_out_arrays_are_rejected(out):
    with pytest.raises(engine.EngineValueError):
        engine.circle_overlap_grid(1.0, 1.0, 1.0, (3, 3), out=out)


def test_binding_itself_refuses_bad_arrays():
    # Even called directly, the extension refuses what could corrupt memory.
    with pytest.raises(ValueError):
        _core.circle_overlap_grid(1.0, 1.0, 1.0, np.zeros(9))
    with pytest.raises(TypeError):
        _core.circle_overlap_grid(1.0, 1.0, 1.0, np.zeros((3, 3), dtype=np.float32))
    with pytest.raises(ValueError):
        _core.circle_overlap_grid(1.0, 1.0, -1.0, np.zeros((3, 3)))


def test_threads_share_the_core_safely():
    # The core releases the GIL; concurrent calls on separate outputs give the serial answer.
    expected = engine.circle_overlap_grid(100.2, 99.7, 60.0, (200, 200))
    results = [None] * 4

    def work(k):
        results[k] = engine.circle_overlap_grid(100.2, 99.7, 60.0, (200, 200))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for res in results:
        np.testing.assert_array_equal(res, expected)
