"""Benchmark family: the sky solution of a reference star list against a catalogue, the engine
against astroalign.

Workload: a 1024² field (17') at 1.0 arcsec/px turned by 30°, its header pointing 2 arcmin off
and its pixel scale 5 % off; a catalogue of 2,000 stars over 19' x 19' around it; the reference
list is the 400 brightest detections (10 % of the field's catalogue stars missing, 10 % spurious
detections, 0.05 px centroid noise).

- `solve`: `engine.registration.solve.solve_field` (asterisms on catalogue tiles around the
  pointing, then the iterated TAN fit).
- Anchor: `astroalign.find_transform` from the catalogue projected on the tangent plane at the
  header's pointing and scale to the star list (a similarity transform, the part of the job it
  does; it neither fits a WCS nor matches mirror images, so it is given the plane mirrored as
  the sky is seen from the ground).

The check maps a 5 x 5 grid over the image to the tangent plane through both answers: the
largest distance between them (px) must be below the tolerance.
"""

from __future__ import annotations

import math

import numpy as np

from .harness import Benchmark, Case, register, require

_SIZE = 1024
_SCALE = 1.0            # arcsec/px, true
_HEADER_SCALE = 1.05    # what the header says
_CENTRE = (250.0, 36.0)
_GRID = np.stack(np.meshgrid(np.linspace(0, _SIZE - 1, 5), np.linspace(0, _SIZE - 1, 5)),
                 axis=-1).reshape(-1, 2)


def _plane(ra, dec, pointing, scale):
    """Tangent-plane pixels of sky positions at `pointing` (xi east, eta north)."""
    from engine.registration.catalogue import _tangent_plane

    xi, eta, _ = _tangent_plane(ra, dec, *pointing)
    per_pixel = math.radians(scale / 3600.0)
    return np.column_stack([xi, eta]) / per_pixel


def _setup(quick: bool, rng: np.random.Generator) -> Case:
    from astropy.wcs import WCS

    from engine.io.catalogue import ReferenceCatalogue

    import pyarrow as pa

    n_catalogue, half = 2000, 9.5 / 60.0
    dec = _CENTRE[1] + rng.uniform(-half, half, n_catalogue)
    ra = _CENTRE[0] + rng.uniform(-half, half, n_catalogue) / math.cos(math.radians(_CENTRE[1]))
    mag = 10.0 + 8.0 * rng.random(n_catalogue) ** 0.5
    catalogue = ReferenceCatalogue.from_table(pa.table({"ra": ra, "dec": dec, "mag": mag}))
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = _CENTRE
    wcs.wcs.crpix = [(_SIZE + 1) / 2.0] * 2
    a = math.radians(30.0)
    s = _SCALE / 3600.0
    wcs.wcs.cd = [[-s * math.cos(a), s * math.sin(a)], [s * math.sin(a), s * math.cos(a)]]
    xy = wcs.all_world2pix(np.column_stack([ra, dec]), 0)
    inside = ((xy >= 0) & (xy <= _SIZE - 1)).all(axis=1) & (rng.random(n_catalogue) > 0.1)
    xy = xy[inside] + rng.normal(0.0, 0.05, (inside.sum(), 2))
    flux = 10 ** (-0.4 * (mag[inside] - 25.0))
    n_false = inside.sum() // 10
    xy = np.vstack([xy, rng.uniform(0, _SIZE, (n_false, 2))])
    flux = np.concatenate([flux, 10 ** rng.uniform(2.0, 4.0, n_false)])
    order = np.argsort(-flux)[:400]
    pointing = (_CENTRE[0] + 2.0 / 60.0 / math.cos(math.radians(_CENTRE[1])), _CENTRE[1])
    inputs = dict(xy=xy[order], flux=flux[order], catalogue=catalogue, pointing=pointing)
    return Case(inputs=inputs, size=f"400 stars x {n_catalogue} catalogue stars, 1024², "
                f"pointing 2' off", units=1, unit="fields")


def _engine(inputs, threads: int) -> np.ndarray:
    from engine.registration.solve import solve_field

    solution = solve_field(inputs["xy"], inputs["flux"], inputs["catalogue"],
                           pointing=inputs["pointing"], pixel_scale=_HEADER_SCALE,
                           shape=(_SIZE, _SIZE))
    ra, dec = solution.wcs.all_pix2world(_GRID, 0).T
    return _plane(ra, dec, inputs["pointing"], _HEADER_SCALE)


def _astroalign(inputs) -> np.ndarray:
    astroalign = require("astroalign")
    catalogue = inputs["catalogue"]
    plane = _plane(catalogue.ra, catalogue.dec, inputs["pointing"], _HEADER_SCALE)
    order = np.argsort(catalogue.mag, kind="stable")
    # The sky seen from the ground is the tangent plane's mirror image (east is left): astroalign
    # matches only rotations, so it is told the handedness the engine finds for itself.
    mirror = np.array([-1.0, 1.0])
    transform, _ = astroalign.find_transform(plane[order] * mirror, inputs["xy"])
    return transform.inverse(_GRID) * mirror


def _discrepancy(engine_result, anchor_result) -> float:
    if np.isnan(engine_result).any() or np.isnan(anchor_result).any():
        return float("inf")
    return float(np.hypot(*(engine_result - anchor_result).T).max())


SOLVE = register(Benchmark(
    name="solve",
    anchor="astroalign",
    requires=("astroalign",),
    setup=_setup,
    run_engine=_engine,
    run_anchor=_astroalign,
    discrepancy=_discrepancy,
    tolerance=0.1,
    rounds=7,
    quick_rounds=3,
    notes="catalogue tiles around the pointing + asterisms + iterated TAN fit vs astroalign's "
          "similarity transform on the same point sets; discrepancy = largest distance (px) "
          "between the two answers' tangent-plane positions of a 5x5 grid over the image",
))
