"""Fitting a TAN (+ SIP) WCS to stars matched with a catalogue, for engine.registration.solve.

`refine_wcs` starts from predicted pixel positions of the catalogue stars, cross-matches every
detection within a pairing radius (`pair_nearest`), fits a TAN WCS by linear least squares
(CRPIX at the image centre, CRVAL moved to the fitted centre, the CD matrix), shrinks the radius
to a few times the scatter and repeats until the pairs stop changing; then adds SIP terms (order
2-3) when an F-test says the residuals hold distortion. Positions on the sky go to and from the
tangent plane at CRVAL (`tangent_degrees`), and through a WCS to pixels (`sky_to_pixels`).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special
from scipy.spatial import cKDTree

from engine.errors import SolveError
from engine.registration.catalogue import _tangent_plane

__all__ = ["in_field", "pair_nearest", "refine_wcs", "sky_to_pixels", "tangent_degrees"]

_SIP_FALSE_ALARM = 1e-3      # F-test: distortion terms are kept when chance explains less


def tangent_degrees(ra, dec, crval) -> np.ndarray:
    xi, eta, cos_c = _tangent_plane(ra, dec, crval[0], crval[1])
    plane = np.degrees(np.column_stack([xi, eta]))
    plane[cos_c <= 0] = np.nan
    return plane


def _from_tangent(plane_deg, crval) -> tuple[float, float]:
    """The sky position of a tangent-plane point (degrees) at crval (inverse gnomonic)."""
    xi, eta = np.radians(plane_deg)
    ra0, dec0 = np.radians(crval)
    rho = math.hypot(xi, eta)
    c = math.atan(rho)
    if rho == 0.0:
        return float(crval[0]), float(crval[1])
    dec = math.asin(math.cos(c) * math.sin(dec0) + eta * math.sin(c) * math.cos(dec0) / rho)
    ra = ra0 + math.atan2(xi * math.sin(c),
                          rho * math.cos(dec0) * math.cos(c) - eta * math.sin(dec0) * math.sin(c))
    return math.degrees(ra) % 360.0, math.degrees(dec)


def _powers(order: int) -> list[tuple[int, int]]:
    """Exponents (p, q) of u^p v^q with 2 <= p + q <= order (SIP's distortion terms)."""
    return [(p, t - p) for t in range(2, order + 1) for p in range(t, -1, -1)]


def _fit_tan(xy, ra, dec, crpix, crval, sip_order: int = 0):
    """Least-squares TAN(-SIP) WCS through matched stars; returns (wcs, residual px (n, 2)).

    With CRPIX fixed, a star's tangent-plane position is linear in the CD matrix and the SIP
    coefficients: (xi, eta) = CD (u + f(u, v), v + g(u, v)), u, v from CRPIX. The constant term
    of the fit moves CRVAL, and the fit is repeated at the new tangent point.
    """
    from astropy.wcs import WCS, Sip

    u = xy[:, 0] + 1.0 - crpix[0]
    v = xy[:, 1] + 1.0 - crpix[1]
    powers = _powers(sip_order) if sip_order >= 2 else []
    design = np.column_stack([np.ones_like(u), u, v] + [u ** p * v ** q for p, q in powers])
    crval = (float(crval[0]), float(crval[1]))
    for _ in range(4):
        plane = tangent_degrees(ra, dec, crval)
        coefficients, *_ = np.linalg.lstsq(design, plane, rcond=None)   # (terms, 2)
        shift = coefficients[0]
        crval = _from_tangent(shift, crval)
        if math.hypot(*shift) < 1e-10:
            break
    plane = tangent_degrees(ra, dec, crval)
    coefficients, *_ = np.linalg.lstsq(design, plane, rcond=None)
    cd = coefficients[1:3].T                  # [[xi_u, xi_v], [eta_u, eta_v]]
    wcs = WCS(naxis=2)
    wcs.wcs.crpix = crpix
    wcs.wcs.crval = crval
    wcs.wcs.cd = cd
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    if powers:
        inverse_cd = np.linalg.inv(cd)
        distortion = inverse_cd @ coefficients[3:].T                   # (2, terms)
        a = np.zeros((sip_order + 1, sip_order + 1))
        b = np.zeros_like(a)
        for k, (p, q) in enumerate(powers):
            a[p, q], b[p, q] = distortion[0, k], distortion[1, k]
        wcs.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
        wcs.sip = Sip(a, b, None, None, wcs.wcs.crpix)
    wcs.wcs.set()
    # Residuals in pixels: the fitted tangent-plane misfit mapped back through CD.
    misfit = plane - design @ coefficients
    residual = misfit @ np.linalg.inv(cd).T
    return wcs, residual


def sky_to_pixels(wcs, ra, dec) -> np.ndarray:
    """Pixel positions (origin 0) of sky positions; NaN where they do not project."""
    if len(ra) == 0:
        return np.zeros((0, 2))
    if wcs.sip is None:
        return wcs.wcs_world2pix(np.column_stack([ra, dec]), 0)
    # A mapping of a point far outside the field can fail to converge: those become NaN.
    return wcs.all_world2pix(np.column_stack([ra, dec]), 0, quiet=True)


def pair_nearest(tree: cKDTree, predicted: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one pairs (star rows, predicted rows) within radius, closest first."""
    finite = np.flatnonzero(np.isfinite(predicted).all(axis=1))
    if len(finite) == 0:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    dist, star = tree.query(predicted[finite], distance_upper_bound=radius)
    hit = np.isfinite(dist)
    rows, star, dist = finite[hit], star[hit], dist[hit]
    order = np.argsort(dist, kind="stable")
    _, first = np.unique(star[order], return_index=True)
    keep = order[first]
    return star[keep], rows[keep]


def in_field(predicted: np.ndarray, shape, margin: float) -> np.ndarray:
    rows, columns = shape
    x, y = predicted[:, 0], predicted[:, 1]
    with np.errstate(invalid="ignore"):
        return ((x >= -margin) & (x <= columns - 1 + margin) & (y >= -margin)
                & (y <= rows - 1 + margin))


def _sip_pays(residual_low, residual_high, extra_terms: int) -> bool:
    """F-test: do `extra_terms` more parameters lower the squared residual beyond chance?"""
    n = residual_high.size
    dof = n - extra_terms - 6
    low, high = float(np.sum(residual_low ** 2)), float(np.sum(residual_high ** 2))
    if dof <= 0 or high <= 0.0 or low <= high:
        return False
    f = ((low - high) / extra_terms) / (high / dof)
    # scipy.stats.f.sf without importing scipy.stats (a second on the reduce path).
    return float(special.fdtrc(extra_terms, dof, f)) < _SIP_FALSE_ALARM


def _iterate(tree, xy, ra, dec, crpix, predicted, radius, order, min_matches):
    """Cross-match and fit until the pairs stop changing, the pairing radius shrinking to a
    few times the scatter; returns (wcs, star rows, catalogue rows, residual px)."""
    previous, crval = None, None
    for _ in range(10):
        star, cat = pair_nearest(tree, predicted, radius)
        if len(star) < max(min_matches, 3):
            raise SolveError(f"only {len(star)} stars pair with the catalogue within "
                             f"{radius:.2g} px (need {min_matches})")
        if crval is None:  # start the tangent point at the matched stars' mean position
            crval = (float(np.degrees(np.arctan2(np.sin(np.radians(ra[cat])).mean(),
                                                 np.cos(np.radians(ra[cat])).mean())) % 360),
                     float(np.mean(dec[cat])))
        wcs, residual = _fit_tan(xy[star], ra[cat], dec[cat], crpix, crval, order)
        crval = tuple(wcs.wcs.crval)
        key = (star.tobytes(), cat.tobytes())
        if key == previous:
            break
        previous = key
        sigma = float(np.median(np.hypot(*residual.T))) / 1.1774  # 2-D Gaussian median radius
        radius = min(max(4.0 * sigma, 0.5), radius)
        predicted = sky_to_pixels(wcs, ra, dec)
    return wcs, star, cat, residual


def refine_wcs(xy, ra, dec, shape, predicted, *, radius: float, sip_order, min_matches: int):
    """TAN fit from first predicted catalogue positions, then SIP terms when they pay.

    Distortion pushes the field's outer stars beyond the TAN fit's shrinking radius, so the
    SIP order is chosen on the pairs within the first radius, refined from there, and kept
    only if it still pays on the final pairs. Returns (wcs, star rows, catalogue rows,
    residual px, notes); raises SolveError when too few stars pair up.
    """
    rows, columns = shape
    crpix = ((columns + 1) / 2.0, (rows + 1) / 2.0)
    tree = cKDTree(xy)
    notes = []
    tan = _iterate(tree, xy, ra, dec, crpix, predicted, radius, 0, min_matches)
    star, cat = pair_nearest(tree, sky_to_pixels(tan[0], ra, dec), radius)
    _, wide = _fit_tan(xy[star], ra[cat], dec[cat], crpix, tuple(tan[0].wcs.crval), 0)
    order = _choose_sip(xy[star], ra[cat], dec[cat], crpix, tuple(tan[0].wcs.crval), wide,
                        sip_order, notes)
    if not order:
        return (*tan, notes)
    wcs, star, cat, residual = _iterate(tree, xy, ra, dec, crpix,
                                        sky_to_pixels(tan[0], ra, dec), radius, order,
                                        min_matches)
    _, flat = _fit_tan(xy[star], ra[cat], dec[cat], crpix, tuple(wcs.wcs.crval), 0)
    if sip_order is None and not _sip_pays(flat, residual, 2 * len(_powers(order))):
        notes[:] = ["SIP terms dropped: they do not pay on the final pairs"]
        return (*tan, notes)
    return wcs, star, cat, residual, notes


def _choose_sip(xy, ra, dec, crpix, crval, residual, sip_order, notes) -> int:
    """The SIP order to fit: the one asked for, or (None) each of 2 and 3 in turn, kept when
    the F-test says it lowers the residuals beyond chance."""
    if sip_order is not None:
        order = int(sip_order)
        needed = 3 * (len(_powers(order)) + 3)
        if order >= 2 and len(xy) < needed:
            notes.append(f"SIP order {order} needs {needed} matched stars, {len(xy)} found: "
                         "TAN only")
            return 0
        return order if order >= 2 else 0
    chosen, best = 0, residual
    for order in (2, 3):  # a radial distortion is odd: order 3 can pay where 2 does not
        if len(xy) < 3 * (len(_powers(order)) + 3):
            break
        _, trial = _fit_tan(xy, ra, dec, crpix, crval, order)
        if _sip_pays(best, trial, 2 * (len(_powers(order)) - len(_powers(chosen)))):
            chosen, best = order, trial
    if chosen:
        notes.append(f"SIP order {chosen} fitted (the residuals show distortion)")
    return chosen
