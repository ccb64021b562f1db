"""Stars on the sky: the target in a star table, and a star table matched to a catalogue.

`match_catalogue` projects a catalogue onto the tangent plane at a pointing and matches it to the
stars by asterisms (any rotation, either handedness, any offset); `sky_to_pixels` then places any
sky position through that transform. The full sky solution (a WCS) is `engine.registration.solve`.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
from scipy.spatial import cKDTree

from engine.detection import star_positions
from engine.errors import EngineValueError, RegistrationError
from engine.registration.asterisms import _options, match_transform
from engine.registration.transform import Transform

__all__ = ["identify_target", "match_catalogue", "sky_to_pixels"]

def identify_target(stars, *, xy=None, radec=None, wcs=None, transform: Transform | None = None,
                    max_distance: float = 5.0) -> int:
    """The star_id (row) of the target in a star table.

    Give either `xy` (a position in some frame, e.g. `--target-xy` in the run's first frame,
    with `transform` that frame's reference -> frame transform; without it, reference
    coordinates) or `radec` (degrees) with the reference's `wcs` (astropy WCS). The nearest
    star within `max_distance` pixels is returned; none raises RegistrationError.
    """
    positions = star_positions(stars)
    if (xy is None) == (radec is None):
        raise EngineValueError("give exactly one of xy and radec")
    if radec is not None:
        if wcs is None:
            raise EngineValueError("radec needs the reference's wcs")
        ra, dec = (float(v) for v in radec)
        px, py = wcs.celestial.all_world2pix([[ra, dec]], 0)[0]
        point = np.array([px, py], dtype=np.float64)
    else:
        point = np.asarray(xy, dtype=np.float64).reshape(2)
        if transform is not None:
            point = transform.inverse().apply(point)
    if not np.isfinite(point).all():
        raise EngineValueError(f"target position is not finite: {point}")
    if len(positions) == 0:
        raise RegistrationError("the star table is empty")
    distance = np.hypot(*(positions - point).T)
    best = int(np.argmin(distance))
    if distance[best] > max_distance:
        raise RegistrationError(f"no star within {max_distance:g} px of the target at "
                                f"({point[0]:.2f}, {point[1]:.2f}); nearest is "
                                f"{distance[best]:.1f} px away")
    if isinstance(stars, pa.Table) and "star_id" in stars.column_names:
        return int(stars.column("star_id")[best].as_py())
    return best


def _tangent_plane(ra, dec, ra0, dec0):
    """Gnomonic projection (standard coordinates xi east, eta north), radians."""
    ra, dec = np.radians(ra), np.radians(dec)
    ra0, dec0 = math.radians(ra0), math.radians(dec0)
    cos_c = math.sin(dec0) * np.sin(dec) + math.cos(dec0) * np.cos(dec) * np.cos(ra - ra0)
    xi = np.cos(dec) * np.sin(ra - ra0) / cos_c
    eta = (math.cos(dec0) * np.sin(dec) - math.sin(dec0) * np.cos(dec) * np.cos(ra - ra0)) / cos_c
    return xi, eta, cos_c


def match_catalogue(stars, ra, dec, *, pointing, pixel_scale: float, catalogue_flux=None,
                    **options):
    """Match a star table to a reference catalogue given the pointing and the pixel scale.

    The catalogue (ra, dec in degrees, brightest first unless `catalogue_flux` is given) is
    projected onto the tangent plane at `pointing` (ra0, dec0 degrees) in pixels of
    `pixel_scale` arcsec, and matched to the stars by asterisms with any rotation, either
    handedness and any offset (the pointing may be off by many pixels).

    Returns (transform, index): the transform from tangent-plane pixels to image pixels, and for
    each star the row of its catalogue counterpart (-1 when none lies within `match_radius`).
    `sky_to_pixels` locates any sky position (the target's) through that transform.
    """
    ra = np.asarray(ra, dtype=np.float64)
    dec = np.asarray(dec, dtype=np.float64)
    if ra.ndim != 1 or ra.shape != dec.shape:
        raise EngineValueError("ra and dec must be 1-D arrays of one length")
    ra0, dec0 = (float(v) for v in pointing)
    scale = float(pixel_scale)
    if not (math.isfinite(scale) and scale > 0):
        raise EngineValueError(f"pixel_scale must be finite and > 0, got {pixel_scale!r}")
    plane = _catalogue_plane(ra, dec, ra0, dec0, scale)
    options.setdefault("allow_reflection", True)
    options.setdefault("scale_range", (0.9, 1.1))
    transform = match_transform(plane, stars, ref_flux=catalogue_flux, **options)
    radius = _options(**options).match_radius
    mapped = transform.apply(plane)
    finite = np.isfinite(mapped).all(axis=1)
    positions = star_positions(stars)
    index = np.full(len(positions), -1, dtype=np.int64)
    if finite.any() and len(positions):
        rows = np.flatnonzero(finite)
        dist, j = cKDTree(mapped[rows]).query(positions, distance_upper_bound=radius)
        hit = np.isfinite(dist)
        index[hit] = rows[j[hit]]
    return transform, index


def _catalogue_plane(ra, dec, ra0, dec0, pixel_scale):
    xi, eta, cos_c = _tangent_plane(ra, dec, ra0, dec0)
    per_pixel = math.radians(pixel_scale / 3600.0)
    plane = np.column_stack([xi / per_pixel, eta / per_pixel])
    plane[cos_c <= 0] = np.nan  # the far hemisphere does not project
    return plane


def sky_to_pixels(transform: Transform, ra, dec, *, pointing, pixel_scale: float) -> np.ndarray:
    """Pixel positions of sky positions through a `match_catalogue` transform."""
    ra0, dec0 = (float(v) for v in pointing)
    plane = _catalogue_plane(np.atleast_1d(np.asarray(ra, dtype=np.float64)),
                             np.atleast_1d(np.asarray(dec, dtype=np.float64)), ra0, dec0,
                             float(pixel_scale))
    return transform.apply(plane)


