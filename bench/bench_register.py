"""Benchmark family: registering frames' star lists to the reference, the engine against astroalign.

Workload (the issue's): a 2048² field of 1,000 stars; a night of frames whose detections are the
stars seen through a drifting field (a few px a frame with a slow rotation), a re-centring jump of
~400 px a third of the way in and a 180° meridian flip two thirds in, each with 0.03 px centroid
noise, 10% of the stars missing and 10% spurious detections, brightest first (as
`engine.detect_stars` returns them). The reference is a deeper list of the same stars.

What is timed is the matching alone, star lists in, transforms out: detection is sep's work for
both tools (astroalign also detects with sep) and is the same cost either way.
- `register`: `engine.registration.register_frames`, the matching step of the pipeline's
  `FrameTracker` (`engine.registration.tracking`) when re-centring cannot track a frame: each
  frame first tries the previous frame's transform and falls back to the asterism search (the
  jump, the flip). The tracker's pixel-level tracking is timed inside `bench.night`.
- `register-blind`: every frame searched from scratch (`use_previous=False`), like astroalign.
The anchor is `astroalign.find_transform(reference, frame)` per frame (its default 50 control
points), the tool a user would otherwise pick.

The check before timing maps a 5 x 5 grid of points spanning the frame through both tools'
transforms for every frame: the largest distance between them (px) must be below the tolerance
(both estimates carry ~0.01-0.05 px of noise; a wrong match is off by tens of pixels).
"""

from __future__ import annotations

import numpy as np

from .harness import Benchmark, Case, register, require

_SIZE = 2048
_GRID = np.stack(np.meshgrid(np.linspace(0, _SIZE - 1, 5), np.linspace(0, _SIZE - 1, 5)),
                 axis=-1).reshape(-1, 2)


def _about_centre(rotation_deg: float, shift, size: int):
    from engine.registration import Transform

    c = np.array([(size - 1) / 2.0] * 2)
    turn = Transform.from_parameters(rotation_deg=rotation_deg)
    tx, ty = c - turn.apply(c) + np.asarray(shift, dtype=float)
    return Transform(turn.a, turn.b, tx, ty)


def _detections(rng, xy, flux, transform, size, noise, missing, spurious):
    p = transform.apply(xy) + rng.normal(0.0, noise, xy.shape)
    keep = ((p >= 0) & (p < size)).all(axis=1) & (rng.random(len(xy)) >= missing)
    p, f = p[keep], flux[keep] * np.exp(rng.normal(0.0, 0.05, keep.sum()))
    n_false = int(round(spurious * len(p)))
    p = np.vstack([p, rng.uniform(0, size, (n_false, 2))])
    f = np.concatenate([f, 10 ** rng.uniform(2.0, 5.0, n_false)])
    return p[np.argsort(-f)]


def _setup(quick: bool, rng: np.random.Generator) -> Case:
    n_frames = 20 if quick else 100
    n_stars = 1000
    xy = rng.uniform(0, _SIZE, (n_stars, 2))
    flux = 10 ** rng.uniform(2.0, 5.0, n_stars)
    reference = _detections(rng, xy, flux, _about_centre(0.0, (0.0, 0.0), _SIZE), _SIZE,
                            noise=0.01, missing=0.0, spurious=0.0)
    frames = []
    drift = np.zeros(2)
    for k in range(n_frames):
        drift += rng.normal([3.0, -2.0], 0.7)
        jump = np.array([420.0, 180.0]) if k >= n_frames // 3 else 0.0
        flip = 180.0 if k >= 2 * n_frames // 3 else 0.0
        t = _about_centre(flip + 0.01 * k, drift + jump, _SIZE)
        frames.append(_detections(rng, xy, flux, t, _SIZE, noise=0.03, missing=0.1,
                                  spurious=0.1))
    return Case(inputs=dict(reference=reference, frames=frames),
                size=f"{n_frames} frames x {n_stars} stars, 2048², drift+jump+flip",
                units=n_frames, unit="frames")


def _grid_positions(transforms) -> np.ndarray:
    return np.stack([t.apply(_GRID) if t is not None else np.full(_GRID.shape, np.nan)
                     for t in transforms])


def _engine_for(use_previous: bool):
    def run(inputs, threads: int) -> np.ndarray:
        from engine.registration import register_frames

        results = register_frames(inputs["reference"], inputs["frames"],
                                  use_previous=use_previous)
        return _grid_positions([r.transform for r in results])
    return run


def _astroalign(inputs) -> np.ndarray:
    astroalign = require("astroalign")
    from engine.registration import Transform

    transforms = []
    for frame in inputs["frames"]:
        t, _ = astroalign.find_transform(inputs["reference"], frame)
        m = t.params  # 3x3 homogeneous, (x, y) order
        transforms.append(Transform(float(m[0, 0]), float(m[1, 0]), float(m[0, 2]),
                                    float(m[1, 2])))
    return _grid_positions(transforms)


def _discrepancy(engine_result: np.ndarray, anchor_result: np.ndarray) -> float:
    if engine_result.shape != anchor_result.shape or np.isnan(engine_result).any():
        return float("inf")
    return float(np.hypot(*(engine_result - anchor_result).reshape(-1, 2).T).max())


_NOTES = ("matching alone (star lists in, transforms out; detection is sep's work for both); "
          "1000 stars, 10% missing + 10% spurious, 0.03 px noise; discrepancy = largest "
          "distance (px) between the two tools' mapped 5x5 grids over all frames")

REGISTER = register(Benchmark(
    name="register",
    anchor="astroalign",
    requires=("astroalign",),
    setup=_setup,
    run_engine=_engine_for(use_previous=True),
    run_anchor=_astroalign,
    discrepancy=_discrepancy,
    tolerance=0.15,
    rounds=5,
    quick_rounds=2,
    notes="previous frame's transform first, asterisms on a jump or flip; " + _NOTES,
))

REGISTER_BLIND = register(Benchmark(
    name="register-blind",
    anchor="astroalign",
    requires=("astroalign",),
    setup=_setup,
    run_engine=_engine_for(use_previous=False),
    run_anchor=_astroalign,
    discrepancy=_discrepancy,
    tolerance=0.15,
    rounds=5,
    quick_rounds=2,
    notes="every frame searched by asterisms from scratch; " + _NOTES,
))
