"""Choosing and sizing a frame's PSF fit: its PSF stars, a first FWHM, default fitting boxes."""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial import cKDTree

from engine import checks
from engine.errors import EngineValueError
from engine.flags import PixelFlag
from engine.kernels.psf import fwhm_per_width

__all__ = ["default_box", "estimate_fwhm", "select_psf_stars"]

_UNUSABLE = int(PixelFlag.BAD | PixelFlag.NONFINITE | PixelFlag.COSMIC_RAY | PixelFlag.SATURATED)


def _box_centres(x, y):
    with np.errstate(invalid="ignore"):
        return np.ceil(x - 0.5), np.ceil(y - 0.5)


def select_psf_stars(image, x, y, *, box: int, pixel_flags=None, isolation: float | None = None,
                     max_stars: int = 30) -> np.ndarray:
    """Indices of the stars fit to define a PSF: bright, isolated, unflagged, wholly on the image.

    A candidate's fitting box ((2 box + 1)^2 pixels) must lie on the image and hold no flagged
    (BAD, SATURATED, NONFINITE, COSMIC_RAY) or non-finite pixel; no other star may lie within
    `isolation` pixels (default 2 box; relaxed to box, then 0, when fewer than 3 stars qualify).
    Of those, the `max_stars` with the highest peak above the median of their box's border.
    """
    image = checks.image_input(image).data
    x, y = checks.positions(x, y)
    ny, nx = image.shape
    cx, cy = _box_centres(x, y)
    inside = (np.isfinite(x) & np.isfinite(y) & (cx - box >= 0) & (cy - box >= 0)
              & (cx + box <= nx - 1) & (cy + box <= ny - 1))
    index = np.flatnonzero(inside)
    if index.size == 0:
        return index
    # Candidates' boxes as stamps (chunks of (n, 2 box + 1, 2 box + 1)): only these pixels are read.
    offsets = np.arange(-box, box + 1)
    flags = None if pixel_flags is None else np.asarray(pixel_flags)
    clean = np.zeros(index.size, dtype=bool)
    peak = np.zeros(index.size)
    chunk = max(1, 4_000_000 // offsets.size ** 2)
    for start in range(0, index.size, chunk):
        part = index[start:start + chunk]
        rows = cy[part].astype(np.int64)[:, None, None] + offsets[None, :, None]
        columns = cx[part].astype(np.int64)[:, None, None] + offsets[None, None, :]
        stamps = image[rows, columns].astype(np.float64)
        bad = ~np.isfinite(stamps)
        if flags is not None:
            bad |= (flags[rows, columns].astype(np.int64) & _UNUSABLE) != 0
        clean[start:start + chunk] = ~bad.any(axis=(1, 2))
        border = np.concatenate([stamps[:, 0, :], stamps[:, -1, :], stamps[:, 1:-1, 0],
                                 stamps[:, 1:-1, -1]], axis=1)
        with np.errstate(invalid="ignore"):
            peak[start:start + chunk] = stamps[:, box, box] - np.median(border, axis=1)
    index, peak = index[clean], peak[clean]
    if index.size == 0:
        return index
    finite_all = np.isfinite(x) & np.isfinite(y)
    if finite_all.sum() > 1:
        tree = cKDTree(np.c_[x[finite_all], y[finite_all]])
        nearest = tree.query(np.c_[x[index], y[index]], k=2)[0][:, 1]
    else:
        nearest = np.full(index.size, np.inf)
    limits = [2.0 * box, float(box), 0.0] if isolation is None else [float(isolation)]
    for limit in limits:
        chosen = (nearest > limit) & (peak > 0)
        if chosen.sum() >= 3 or limit == limits[-1]:
            break
    index, peak = index[chosen], peak[chosen]
    order = np.argsort(-peak, kind="stable")[:max_stars]
    return np.sort(index[order])


def estimate_fwhm(image, x, y, *, max_stars: int = 20) -> float:
    """A first FWHM (pixels) from adaptive Gaussian-weighted second moments of the brightest stars.

    Each star's weight width is iterated to match its profile (the weighted moment of a Gaussian
    of sigma s with weight sigma w is s^2 w^2 / (s^2 + w^2)); the median over stars is returned.
    Meant as a starting point for `fit_psf_model`, good to ~10-20%.
    """
    image = checks.image_input(image).data
    x, y = checks.positions(x, y)
    radius = 10
    index = select_psf_stars(image, x, y, box=radius, isolation=radius, max_stars=max_stars)
    if index.size == 0:
        index = select_psf_stars(image, x, y, box=5, isolation=0.0, max_stars=max_stars)
        radius = 5
    if index.size == 0:
        raise EngineValueError("no star lies far enough inside the image to estimate its FWHM")
    estimates = []
    offsets = np.arange(-radius, radius + 1)
    for s in index:
        cx, cy = int(math.ceil(x[s] - 0.5)), int(math.ceil(y[s] - 0.5))
        stamp = image[cy - radius:cy + radius + 1, cx - radius:cx + radius + 1].astype(np.float64)
        border = np.concatenate([stamp[0], stamp[-1], stamp[1:-1, 0], stamp[1:-1, -1]])
        data = stamp - np.median(border)
        dx = (cx + offsets - x[s])[None, :]
        dy = (cy + offsets - y[s])[:, None]
        r2 = dx * dx + dy * dy
        sigma = 1.5
        for _ in range(20):
            weight = np.exp(-0.5 * r2 / sigma ** 2) * data
            total = weight.sum()
            if not total > 0:
                break
            moment = (weight * r2).sum() / (2.0 * total)
            if not 0 < moment < sigma ** 2:
                break
            new = math.sqrt(moment * sigma ** 2 / (sigma ** 2 - moment))
            new = min(max(new, 0.3), radius / 2.0)
            if abs(new - sigma) < 1e-4:
                sigma = new
                break
            sigma = new
        estimates.append(fwhm_per_width("gaussian") * sigma)
    return float(np.median(estimates))


def typical_largest(fwhms: np.ndarray) -> float:
    """The largest of a block's FWHMs that is not more than twice their median (one frame's
    runaway estimate must not size every frame's boxes)."""
    median = float(np.median(fwhms))
    return float(np.max(fwhms[fwhms <= 2.0 * median]))


def default_box(fwhm: float, factor: float = 1.5) -> int:
    """A fitting box half-width (pixels) for a PSF of this FWHM: ceil(factor x fwhm), at least 2."""
    return int(max(2, math.ceil(factor * fwhm)))

