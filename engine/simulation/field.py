"""The star field: positions, magnitudes, colours and which stars vary.

Star 0 is always the target. Then come the comparison candidates placed where every site sees
them (one of them the variable, if the field has one), the saturating stars, and the random
field stars. Positions are drawn on the tangent plane around the target and projected back
to RA/Dec (gnomonic), the same projection the cameras' pixel grids use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engine.simulation.config import Field, SimulationConfig, Variability, filter_magnitude

__all__ = ["StarField", "make_field", "variability_flux"]

_ARCSEC = math.pi / (180.0 * 3600.0)


@dataclass
class StarField:
    """Arrays with one entry per star (index = star id)."""

    ra_deg: np.ndarray
    dec_deg: np.ndarray
    mag_g: np.ndarray
    bp_rp: np.ndarray
    is_target: np.ndarray
    is_comparison: np.ndarray   # placed as a comparison candidate (target-like, seen by all)
    is_variable: np.ndarray     # a variable star other than the target
    is_saturating: np.ndarray   # placed to saturate
    variability: dict           # star id -> Variability (target included when it varies)
    inner_radius_arcsec: float  # where comparison candidates were placed
    radius_arcsec: float        # half-width of the square the field stars fill

    @property
    def n(self) -> int:
        return self.ra_deg.shape[0]

    def magnitudes(self, band: str) -> np.ndarray:
        return filter_magnitude(band, self.mag_g, self.bp_rp)


def variability_flux(v: Variability, bjd_tdb) -> np.ndarray:
    """Flux relative to the mean magnitude: 10^(-0.4 sum_k A_k cos(2 pi k phase + phi_k))."""
    phase = (np.asarray(bjd_tdb, dtype=np.float64) - v.epoch_bjd_tdb) / v.period_days
    dm = np.zeros_like(phase)
    for k, (amp, phi) in enumerate(zip(v.amplitudes_mag, v.phases_rad), start=1):
        dm += amp * np.cos(2.0 * math.pi * k * phase + phi)
    return 10.0 ** (-0.4 * dm)


def tangent_to_sky(ra0_deg, dec0_deg, xi_arcsec, eta_arcsec):
    """Inverse gnomonic projection: standard coordinates (xi east, eta north) to RA/Dec."""
    ra0 = math.radians(ra0_deg)
    dec0 = math.radians(dec0_deg)
    xi = np.asarray(xi_arcsec, dtype=np.float64) * _ARCSEC
    eta = np.asarray(eta_arcsec, dtype=np.float64) * _ARCSEC
    denom = math.cos(dec0) - eta * math.sin(dec0)
    ra = ra0 + np.arctan2(xi, denom)
    dec = np.arctan2(math.sin(dec0) + eta * math.cos(dec0), np.hypot(xi, denom))
    return np.degrees(ra) % 360.0, np.degrees(dec)


def _site_extents(config: SimulationConfig):
    """Per site, arcsec: half the smaller frame side less drift and offset (seen all night),
    the half-diagonal plus drift and offset (ever seen), and the plain half-diagonal."""
    out = []
    for s in config.sites:
        cam = s.camera
        scale = s.pixel_scale_arcsec
        # The longest stretch of drift without a re-centring (a flip also re-centres).
        hours = s.window_end_h - s.window_start_h
        if s.recentre_at is not None:
            hours *= max(s.recentre_at, 1.0 - s.recentre_at)
        drift = math.hypot(*s.drift_px_per_hour) * (hours + 0.25)
        offset = math.hypot(*s.pointing_offset_arcsec)
        margin = 12.0 + drift + 4.0 * s.drift_jitter_px
        half_min = (0.5 * min(cam.width, cam.height) - margin) * scale - offset
        half_diag = (0.5 * math.hypot(cam.width, cam.height) + drift + 10.0) * scale + offset
        out.append((half_min, half_diag, 0.5 * math.hypot(cam.width, cam.height) * scale))
    return out


def make_field(config: SimulationConfig, rng: np.random.Generator) -> StarField:
    """Draw the star field of a configuration (deterministic for a given generator state)."""
    f: Field = config.field
    extents = _site_extents(config)
    inner = max(15.0, 0.9 * min(e[0] for e in extents))
    radius = f.radius_arcmin * 60.0 if f.radius_arcmin else 1.05 * max(e[1] for e in extents)
    seeing = max(s.seeing_arcsec for s in config.sites)
    min_sep = max(12.0, 7.0 * seeing)

    # The order of the steps is the order of draws from the generator.
    placed = _Placed(xi=[0.0], eta=[0.0], mag=[f.target_mag_g], col=[f.target_bp_rp],
                     kind=["target"])
    _place_comparisons(placed, f, inner, min_sep, rng)
    _place_saturating(placed, f, inner, max(e[2] for e in extents), min_sep, rng)
    _place_field_stars(placed, f, radius, min_sep, rng)

    ra, dec = tangent_to_sky(f.ra_deg, f.dec_deg, placed.xi, placed.eta)
    ra[0], dec[0] = f.ra_deg, f.dec_deg
    kinds = np.array(placed.kind)
    mags = np.array(placed.mag)
    is_comp = kinds == "comparison"
    is_var, variability = _pick_variables(f, is_comp, mags)
    return StarField(
        ra_deg=np.asarray(ra, dtype=np.float64), dec_deg=np.asarray(dec, dtype=np.float64),
        mag_g=mags.astype(np.float64), bp_rp=np.array(placed.col, dtype=np.float64),
        is_target=kinds == "target", is_comparison=is_comp, is_variable=is_var,
        is_saturating=kinds == "saturated", variability=variability,
        inner_radius_arcsec=float(inner), radius_arcsec=float(radius))


@dataclass
class _Placed:
    """The stars placed so far: tangent-plane offsets from the target (arcsec), G magnitude,
    BP-RP colour and kind ('target', 'comparison', 'saturated', 'field')."""

    xi: list
    eta: list
    mag: list
    col: list
    kind: list

    def add(self, x, y, mag, col, kind) -> None:
        self.xi.append(x)
        self.eta.append(y)
        self.mag.append(mag)
        self.col.append(col)
        self.kind.append(kind)

    def far_enough(self, x, y, sep) -> bool:
        return all(math.hypot(x - a, y - b) >= sep for a, b in zip(self.xi, self.eta))


def _place_comparisons(placed: _Placed, f: Field, inner, min_sep, rng) -> None:
    """Comparison candidates: inside `inner`, away from the target and from each other."""
    count = 0
    tries = 0
    while count < f.n_comparisons and tries < 20000:
        tries += 1
        r = inner * math.sqrt(rng.uniform(0.05, 1.0))
        a = rng.uniform(0.0, 2.0 * math.pi)
        x, y = r * math.cos(a), r * math.sin(a)
        sep = min_sep if tries < 10000 else 0.6 * min_sep
        if not placed.far_enough(x, y, sep):
            continue
        placed.add(x, y, f.target_mag_g + rng.uniform(-f.comparison_range,
                                                      0.5 * f.comparison_range),
                   float(np.clip(rng.normal(0.95, 0.3), 0.3, 2.2)), "comparison")
        count += 1


def _place_saturating(placed: _Placed, f: Field, inner, half_diag, min_sep, rng) -> None:
    """Saturating stars: outside the comparisons' disk, well away from every star placed so far
    (their wings and bleed trails would spoil a comparison), inside some fields of view."""
    lo = 1.2 * inner + 5.0
    hi = max(lo + 10.0, 1.3 * inner + 10.0, 0.7 * half_diag)
    for _ in range(f.n_saturated):
        for attempt in range(4000):
            r = rng.uniform(lo, hi)
            a = rng.uniform(0.0, 2.0 * math.pi)
            x, y = r * math.cos(a), r * math.sin(a)
            sep = 2.0 * min_sep if attempt < 2000 else 1.5 * min_sep
            if placed.far_enough(x, y, sep) or attempt == 3999:
                break
        placed.add(x, y, f.saturated_mag + rng.uniform(-0.3, 0.3),
                   float(np.clip(rng.normal(1.1, 0.4), 0.2, 2.5)), "saturated")


def _place_field_stars(placed: _Placed, f: Field, radius, min_sep, rng) -> None:
    """Field stars: luminosity function dN/dm ~ 10^(0.3 m), two colour populations, kept
    only where they do not blend with the stars placed before them."""
    n = f.n_stars
    lo, hi = 10.0 ** (0.3 * f.mag_bright), 10.0 ** (0.3 * f.mag_faint)
    field_mag = np.log10(lo + rng.uniform(0.0, 1.0, n) * (hi - lo)) / 0.3
    giants = rng.uniform(0.0, 1.0, n) < 0.3
    field_col = np.where(giants, rng.normal(1.6, 0.45, n), rng.normal(0.95, 0.3, n))
    field_col = np.clip(field_col, 0.2, 3.5)
    fx = rng.uniform(-radius, radius, n)
    fy = rng.uniform(-radius, radius, n)
    keep = np.ones(n, dtype=bool)
    bright_x = np.array(placed.xi)
    bright_y = np.array(placed.eta)
    bright_m = np.array(placed.mag)
    for k in range(n):
        d = np.hypot(fx[k] - bright_x, fy[k] - bright_y)
        # No field star blends with a target or comparison unless it is > 4 mag fainter.
        close = d < max(10.0, 2.0 * min_sep)
        if np.any(close & (field_mag[k] < bright_m + 4.0)) or np.any(d < 0.6 * min_sep):
            keep[k] = False
    placed.xi.extend(fx[keep].tolist())
    placed.eta.extend(fy[keep].tolist())
    placed.mag.extend(field_mag[keep].tolist())
    placed.col.extend(field_col[keep].tolist())
    placed.kind.extend(["field"] * int(keep.sum()))


def _pick_variables(f: Field, is_comp, mags):
    """Which stars vary (a flag per star, the target excluded) and how (star id ->
    Variability, the target included)."""
    is_var = np.zeros(is_comp.shape[0], dtype=bool)
    variability = {}
    if f.target_variability is not None:
        variability[0] = f.target_variability
    if f.variable is not None and is_comp.any():
        # The most tempting comparison: the one closest in brightness to the target.
        candidates = np.flatnonzero(is_comp)
        pick = int(candidates[np.argmin(np.abs(mags[candidates] - f.target_mag_g))])
        is_var[pick] = True
        variability[pick] = f.variable
    return is_var, variability
