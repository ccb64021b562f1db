"""Benchmark family: exact circle-pixel overlap masks, the engine against photutils.geometry.

Workload: the exact-overlap mask of many circular apertures (random sub-pixel centres, radii
3-12 px), each on its minimal bounding box, which is what aperture photometry computes per star.

Both sides use photutils' bounding box convention (`BoundingBox.from_float`): the box spans pixel
columns ixmin <= i < ixmax with ixmin = floor(x - r + 0.5) and ixmax = ceil(x + r + 0.5) (rows
alike). The engine gets the centre relative to the box (x - ixmin, y - iymin), since its pixel i
covers [i - 0.5, i + 0.5]. photutils' `circular_overlap_grid` takes the box edges relative to the
centre, xmin = ixmin - 0.5 - x and xmax = ixmax - 0.5 - x, with nx = ixmax - ixmin pixels of width
(xmax - xmin) / nx = 1 (as `CircularAperture._centered_edges` builds them), and returns the
fraction of each pixel covered, which for unit pixels is the area.
"""

from __future__ import annotations

import math

import numpy as np

import engine
from .harness import Benchmark, Case, max_abs_difference, register, require

_APERTURES = {False: 2000, True: 200}  # full, quick
_RADIUS_RANGE = (3.0, 12.0)
_IMAGE_SIZE = 2048  # centres fall anywhere in a 2048 x 2048 frame


def _setup(quick: bool, rng: np.random.Generator) -> Case:
    n = _APERTURES[quick]
    x = rng.uniform(20.0, _IMAGE_SIZE - 20.0, n)
    y = rng.uniform(20.0, _IMAGE_SIZE - 20.0, n)
    r = rng.uniform(*_RADIUS_RANGE, n)
    engine_args, anchor_args = [], []
    for xc, yc, rc in zip(x.tolist(), y.tolist(), r.tolist()):
        ixmin, ixmax = math.floor(xc - rc + 0.5), math.ceil(xc + rc + 0.5)
        iymin, iymax = math.floor(yc - rc + 0.5), math.ceil(yc + rc + 0.5)
        nx, ny = ixmax - ixmin, iymax - iymin
        engine_args.append((xc - ixmin, yc - iymin, rc, (ny, nx)))
        anchor_args.append((ixmin - 0.5 - xc, ixmax - 0.5 - xc, iymin - 0.5 - yc,
                            iymax - 0.5 - yc, nx, ny, rc))
    lo, hi = _RADIUS_RANGE
    return Case(inputs={"engine": engine_args, "anchor": anchor_args},
                size=f"{n} apertures, r {lo:g}-{hi:g} px", units=n, unit="apertures")


def _engine_masks(inputs, threads: int) -> list[np.ndarray]:
    overlap = engine.circle_overlap_grid
    return [overlap(x, y, r, shape) for x, y, r, shape in inputs["engine"]]


def _photutils_masks(inputs) -> list[np.ndarray]:
    overlap = require("photutils.geometry").circular_overlap_grid
    return [overlap(xmin, xmax, ymin, ymax, nx, ny, r, 1, 1)
            for xmin, xmax, ymin, ymax, nx, ny, r in inputs["anchor"]]


OVERLAP = register(Benchmark(
    name="overlap",
    anchor="photutils.geometry",
    requires=("photutils.geometry",),
    setup=_setup,
    run_engine=_engine_masks,
    run_anchor=_photutils_masks,
    discrepancy=max_abs_difference,  # largest per-pixel difference over every aperture's mask
    tolerance=1e-10,
    threaded=False,  # the overlap kernel takes no thread count
    rounds=11,  # one round is ~10 ms: cheap, so more rounds for a steadier median
    notes="exact circle-pixel overlap mask per aperture on its bounding box "
          "(circular_overlap_grid, use_exact=1)",
))
