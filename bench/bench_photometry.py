"""Benchmark family: aperture photometry of many stars on many frames.

Workload (the issue's): 1,000 stars on each of 100 frames of 2048² float32, three aperture radii
plus a background annulus, star positions moving slightly from frame to frame. The engine does it
in one call (exact overlap, sigma-clipped annulus median with neighbouring stars masked, flags);
sep does the same geometry with three `sum_circle` calls and one `sum_circann` per frame in its
exact mode (subpix=0) — a plain annulus mean, less work than the engine's clipped median; photutils
does three `CircularAperture`s and a `CircularAnnulus` through `aperture_photometry(method='exact')`
on a few frames.

The check before timing compares the raw aperture sums (the engine's `sum` against the anchor's
aperture sums) as a largest relative difference.
"""

from __future__ import annotations

import numpy as np

from .harness import Benchmark, Case, register, require
from engine.cext import aperture_sums

_RADII = np.array([3.0, 5.0, 8.0])
_ANNULUS = (12.0, 18.0)
_SIZE = 2048


def _frames(rng, n_frames: int, n_stars: int, size: int):
    """n_frames float32 frames of a star field, and the stars' (n_frames, n_stars) positions."""
    base = rng.normal(500.0, 12.0, size=(size, size)).astype(np.float32)
    x0 = rng.uniform(30.0, size - 30.0, n_stars)
    y0 = rng.uniform(30.0, size - 30.0, n_stars)
    flux = rng.uniform(1e3, 1e5, n_stars)
    stamp = np.arange(-8, 9)
    for xs, ys, f in zip(x0, y0, flux):  # Gaussian stars, sigma 1.7 px
        i, j = int(round(xs)), int(round(ys))
        gx = np.exp(-0.5 * ((stamp + i - xs) / 1.7) ** 2)
        gy = np.exp(-0.5 * ((stamp + j - ys) / 1.7) ** 2)
        base[j - 8:j + 9, i - 8:i + 9] += (f / (2 * np.pi * 1.7 ** 2) * np.outer(gy, gx)).astype(np.float32)
    frames = np.repeat(base[None], n_frames, axis=0)
    frames += rng.normal(0.0, 3.0, size=(n_frames, 1, 1)).astype(np.float32)  # sky changes
    jitter = rng.normal(0.0, 0.3, size=(n_frames, 2))
    x = x0[None, :] + jitter[:, :1]
    y = y0[None, :] + jitter[:, 1:]
    return frames, x, y


def _setup_for(n_frames_full: int, n_frames_quick: int):
    def setup(quick: bool, rng: np.random.Generator) -> Case:
        n_frames = n_frames_quick if quick else n_frames_full
        n_stars = 200 if quick else 1000
        size = 512 if quick else _SIZE
        frames, x, y = _frames(rng, n_frames, n_stars, size)
        return Case(inputs=dict(frames=frames, x=x, y=y),
                    size=f"{n_stars} stars x {n_frames} frames of {size}², 3 radii + annulus",
                    units=n_stars * n_frames, unit="stars")
    return setup


def _engine(inputs, threads: int) -> np.ndarray:
    result = aperture_sums(inputs["frames"], inputs["x"], inputs["y"], _RADII, annulus=_ANNULUS,
                           mask_radius=float(_RADII[-1]), blend_radius=float(_RADII[-1]),
                           threads=threads)
    return result["sum"]  # (frames, stars, radii)


def _sep(inputs) -> np.ndarray:
    sep = require("sep")
    frames, x, y = inputs["frames"], inputs["x"], inputs["y"]
    sums = np.empty(x.shape + (len(_RADII),))
    for f in range(frames.shape[0]):
        for k, r in enumerate(_RADII):
            sums[f, :, k] = sep.sum_circle(frames[f], x[f], y[f], r, subpix=0)[0]
        sep.sum_circann(frames[f], x[f], y[f], _ANNULUS[0], _ANNULUS[1], subpix=0)
    return sums


def _photutils(inputs) -> np.ndarray:
    aperture = require("photutils.aperture")
    frames, x, y = inputs["frames"], inputs["x"], inputs["y"]
    sums = np.empty(x.shape + (len(_RADII),))
    for f in range(frames.shape[0]):
        positions = np.c_[x[f], y[f]]
        apertures = [aperture.CircularAperture(positions, r) for r in _RADII]
        apertures.append(aperture.CircularAnnulus(positions, *_ANNULUS))
        table = aperture.aperture_photometry(frames[f], apertures, method="exact")
        for k in range(len(_RADII)):
            sums[f, :, k] = np.asarray(table[f"aperture_sum_{k}"], dtype=np.float64)
    return sums


def _relative_difference(engine_sums, anchor_sums) -> float:
    engine_sums = np.asarray(engine_sums)
    anchor_sums = np.asarray(anchor_sums)
    if engine_sums.shape != anchor_sums.shape:
        return float("inf")
    return float(np.max(np.abs(engine_sums - anchor_sums) / np.abs(anchor_sums)))


_COMMON = dict(run_engine=_engine, discrepancy=_relative_difference,
               tolerance=1e-6)  # float32 data summed in double by both sides

register(Benchmark(
    name="aperture", anchor="sep", requires=("sep",), setup=_setup_for(100, 4), run_anchor=_sep,
    threaded=False, rounds=3, quick_rounds=2,
    notes="per core: engine threads=1 vs sep (sum_circle x3 + sum_circann, subpix=0)", **_COMMON))

register(Benchmark(
    name="aperture-threads", anchor="sep", requires=("sep",), setup=_setup_for(100, 4),
    run_anchor=_sep, threaded=True, rounds=3, quick_rounds=2,
    notes="engine on every thread given vs sep on one core", **_COMMON))

register(Benchmark(
    name="aperture-photutils", anchor="photutils", requires=("photutils.aperture",),
    setup=_setup_for(3, 1), run_anchor=_photutils, threaded=False, rounds=3, quick_rounds=1,
    notes="per core: engine threads=1 vs photutils aperture_photometry(method='exact'), "
          "3 circles + annulus", **_COMMON))
