"""Star detection: sep's background and extraction, plus windowed centroids, as an Arrow star table.

`detect_stars` is what the photometry stage runs on a reference image (and registration on every
frame): it estimates the background with `sep.Background`, extracts sources above a threshold in
units of the background noise with `sep.extract`, and measures for each source a FWHM (from the
half-light radius) and SExtractor's windowed centroid (XWIN/YWIN, by the engine's kernel
`engine.kernels.centroid`). With deblending off (``deblend_cont=1.0``) and SExtractor's settings
(threshold 1.5, background mesh 64, filter 3) it reproduces SExtractor's catalogue of the sep test
image: the same 65 objects, barycentres equal to ~1e-4 px, windowed centroids to ~1e-3 px
(tests/test_detection.py).

Hot pixels and cosmic rays are sharper than any star, and raw frames hold many of them. The
frame's FWHM is therefore taken from its stars, not from all detections: the densest cluster of
half-light radii among bright, unsaturated, round, isolated sources whose brightest pixel is no
spike (`frame_fwhm` reads it back). A detection whose half-light radius is far below the stars'
or whose brightest pixel stands above its neighbours by a far larger share of its flux than the
stars' do is not a star: it is left out of the table. `cosmic_ray_mask` flags the sharp pixels
of a frame (cosmic-ray hits, and hot pixels the calibration left) by a like test, pixel by pixel.

Coordinates are 0-based with pixel centres on integers: x is the column, y the row (SExtractor's
X_IMAGE is x + 1). The input image is never modified.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from engine.checks import image_input, integer, positive
from engine.errors import EngineValueError
from engine.flags import MeasurementFlag
from engine.kernels import centroid as _centroid

__all__ = ["STAR_SCHEMA", "cosmic_ray_mask", "detect_stars", "frame_fwhm", "star_positions"]

#: Columns of the star table, in order. ra/dec are added (float64 degrees) when a WCS is given.
STAR_SCHEMA = pa.schema([
    ("star_id", pa.int64()),          # row number, brightest first
    ("x", pa.float64()),              # isophotal barycentre (SExtractor X_IMAGE - 1)
    ("y", pa.float64()),
    ("x_win", pa.float64()),          # windowed centroid (XWIN_IMAGE - 1); x if it failed
    ("y_win", pa.float64()),
    ("flux", pa.float64()),           # isophotal flux above the background (image units)
    ("peak", pa.float64()),           # highest background-subtracted pixel
    ("fwhm", pa.float64()),           # 2 x half-light radius (SExtractor's FLUX_RADIUS): a
                                      #   Gaussian's FWHM, ~3% high for FWHM ~3 px (pixels)
    ("a", pa.float64()),              # second-moment semi-axes (pixels) and angle (radians,
    ("b", pa.float64()),              #   counter-clockwise from +x)
    ("theta", pa.float64()),
    ("npix", pa.int32()),             # pixels above the threshold
    ("background", pa.float64()),     # background level at the star
    ("flags", pa.uint32()),           # engine.flags.MeasurementFlag bits (0 = good)
    ("extraction_flags", pa.uint16()),  # sep / SExtractor extraction flags, as sep gives them
])

# sep's extraction flag bits (sep.h): OBJ_MERGED, OBJ_TRUNC.
_SEP_MERGED = 0x0001
_SEP_TRUNC = 0x0002
_BLENDED = np.uint32(MeasurementFlag.BLENDED)
_NEAR_EDGE = np.uint32(MeasurementFlag.NEAR_EDGE)
_CENTROID_FAILED = np.uint32(MeasurementFlag.CENTROID_FAILED)
_SATURATED = np.uint32(MeasurementFlag.SATURATED)
_GAUSSIAN_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))  # 2.3548

#: A detection is sharper than the PSF (a hot pixel or a cosmic ray, not a star) when its
#: half-light radius is under this fraction of the stars' ...
SHARP_RADIUS_FRACTION = 0.6
#: ... or its brightest pixel's excess over the mean of its four neighbours (L.A.Cosmic's fine
#: structure) holds more than SHARP_PEAK_FACTOR times the stars' fraction of the flux and more
#: than SPIKE_FRACTION of it. A Gaussian star centred on a pixel gives 0.46 at FWHM 1 px, 0.23
#: at 1.5 px, 0.03 at 3 px; a hot pixel or a cosmic-ray hit ~1, a group of n of them merged into
#: one detection ~1/n (groups are caught by their radius), and a hot pixel on a star's wing a
#: tiny fraction of the star's flux.
SHARP_PEAK_FACTOR = 2.0
SPIKE_FRACTION = 0.4
#: The stars that set the frame's FWHM: at most this many of the brightest usable ones, ...
_LOCUS_STARS = 50
#: ... whose brightest pixel's excess holds less than this fraction of their flux, ...
_LOCUS_MAX_SPIKE = 0.5
#: ... rounder than this axis ratio (when any is), whose half-light radii lie within
#: this factor of the densest cluster's centre, ...
_LOCUS_ROUNDNESS = 0.6
_LOCUS_HALF_WIDTH = 1.15
#: ... with no neighbour brighter than this fraction of their flux within 3 of their FWHMs.
_LOCUS_NEIGHBOUR_FLUX = 0.2


def _image(image) -> np.ndarray:
    """A private, native-order, C-contiguous float copy of a 2-D real image."""
    if not isinstance(image, np.ndarray):
        try:
            image = np.asarray(image)
        except Exception as exc:  # ragged lists and other non-arrays
            raise EngineValueError(f"image must be a 2-D array: {exc}") from None
    if image.ndim != 2:
        raise EngineValueError(f"image must be 2-D, got shape {image.shape}")
    if image.dtype.kind not in "uif":
        raise EngineValueError(f"image must hold real numbers, got dtype {image.dtype}")
    if min(image.shape) < 3:
        raise EngineValueError(f"image is too small to search for stars: shape {image.shape}")
    dtype = np.float32 if image.dtype == np.float32 else np.float64
    return np.array(image, dtype=np.dtype(dtype).newbyteorder("="), order="C", copy=True)


def _prepared(image, mask, *, zero_masked: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """The image as `_image` copies it and its unusable pixels (masked or non-finite), None when
    every pixel is usable. Non-finite pixels are set to 0, masked ones too unless `zero_masked`
    is False (a Laplacian would see the hole a zeroed pixel leaves as a sharp source; such a
    caller also accepts an image with no usable pixel)."""
    data = _image(image)
    bad = _mask(mask, data.shape)
    nonfinite = ~np.isfinite(data)
    if nonfinite.any():
        bad = nonfinite if bad is None else (bad | nonfinite)
    if bad is not None:
        if bad.all() and zero_masked:
            raise EngineValueError("image has no usable pixel (all masked or non-finite)")
        data[bad if zero_masked else nonfinite] = 0.0
    return data, bad


def _mask(mask, shape) -> np.ndarray | None:
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise EngineValueError(f"mask shape {mask.shape} differs from the image's {shape}")
    if mask.dtype.kind not in "biuf":
        raise EngineValueError(f"mask must be boolean or numeric, got dtype {mask.dtype}")
    return mask != 0


def _sep_call(function, *args, **kwargs):
    """Call sep, growing its buffers once if a crowded image overflows them; sep raises bare
    Exceptions, which become EngineValueErrors here."""
    import sep

    for attempt in range(2):
        try:
            return function(*args, **kwargs)
        except Exception as exc:  # sep raises Exception for everything
            message = str(exc)
            if attempt == 0 and "pixel buffer full" in message:
                sep.set_extract_pixstack(max(4 * sep.get_extract_pixstack(), 4_000_000))
                continue
            if attempt == 0 and "deblending overflow" in message:
                sep.set_sub_object_limit(max(4 * sep.get_sub_object_limit(), 8192))
                continue
            raise EngineValueError(f"sep could not process the image: {message}") from None
    raise AssertionError("unreachable")


def detect_stars(image, threshold: float = 3.0, *, mask=None, noise: float | None = None,
                 background_box: int = 64, background_filter: int = 3, min_area: int = 5,
                 deblend_cont: float = 0.005, deblend_nthresh: int = 32, filter_kernel="default",
                 saturation: float | None = None, max_stars: int | None = None, wcs=None,
                 reject_sharp: bool = True, threads: int | None = None) -> pa.Table:
    """Detect the stars of an image: an Arrow table (`STAR_SCHEMA`), brightest first.

    Parameters
    ----------
    image : 2-D array
        Calibrated (or at least bias-subtracted) pixel values, any real dtype and byte order;
        or a NumPy masked array, NDData / CCDData (its mask joins `mask`, its WCS serves as
        `wcs`) or Quantity. Non-finite pixels are masked. The array is not modified.
    threshold : float
        Detection threshold in units of the background noise (sep's ``thresh`` with ``err`` =
        the global background RMS), > 0.
    mask : 2-D array, optional
        True (non-zero) where pixels are bad; they are left out of the background, the
        detection and the centroids.
    noise : float, optional
        Background noise (image units) to use instead of sep's global RMS. Give it for a
        noise-free (simulated) image: sep reports an RMS of 1.0 where it finds no scatter.
    background_box, background_filter : int
        sep.Background's mesh size (bw = bh, clipped to the image) and median filter size.
    min_area : int
        Fewest pixels above the threshold for a detection.
    deblend_cont, deblend_nthresh :
        sep's deblending contrast (1.0 switches deblending off) and number of levels.
    filter_kernel : "default", None or 2-D array
        Detection filter: sep's default 3x3 pyramid, none, or your own kernel.
    saturation : float, optional
        Raw level at or above which a star's peak pixel is flagged SATURATED.
    max_stars : int, optional
        Keep only this many of the brightest detections.
    reject_sharp : bool
        Leave out the detections sharper than the frame's stars (hot pixels, cosmic rays; see
        the module docstring). False keeps every detection, as SExtractor does.
    wcs : astropy.wcs.WCS, optional
        Celestial WCS of the image: adds ``ra`` and ``dec`` columns (degrees) at the windowed
        positions.
    threads : int, optional
        Threads for the centroid kernel.

    Returns
    -------
    pyarrow.Table with the `STAR_SCHEMA` columns (plus ra, dec); empty (with that schema) if
    nothing is detected. Its schema metadata holds the frame's FWHM measured on its stars
    (`frame_fwhm`) and the number of sharp detections left out (``sharp_rejected``).
    ``flags`` holds `engine.flags.MeasurementFlag` bits: BLENDED (sep merged
    it from several peaks), NEAR_EDGE (its pixels or its centroid window touch the edge),
    CENTROID_FAILED (the windowed centroid failed; x_win, y_win are then x, y), SATURATED.
    """
    import sep

    threshold = positive("threshold", threshold)
    given = image_input(image, wcs=wcs, any_unit=True)
    if given.pixel_flags is not None:  # the image's own mask
        mask = given.pixel_flags if mask is None else (np.asarray(mask) != 0) | (
            given.pixel_flags != 0)
    data, bad = _prepared(given.data, mask)
    box = integer("background_box", background_box, least=1)
    filter_size = integer("background_filter", background_filter, least=1)
    extract_options = _extract_options(min_area, deblend_cont, deblend_nthresh, filter_kernel)
    if max_stars is not None:
        max_stars = integer("max_stars", max_stars, least=1)

    level, noise = _subtract_background(data, bad, box, filter_size, noise)
    objects = _sep_call(sep.extract, data, threshold, err=noise, mask=bad, **extract_options)
    if len(objects) == 0:
        return _table({}, 0, given.wcs)
    objects = objects[np.argsort(-objects["flux"], kind="stable")]

    r50, total = _half_light_radius(data, objects, bad)
    x_win, y_win, flags = _windowed_positions(data, bad, objects, r50, threads)
    ny, nx = data.shape
    xpeak = np.clip(objects["xpeak"].astype(np.intp), 0, nx - 1)
    ypeak = np.clip(objects["ypeak"].astype(np.intp), 0, ny - 1)
    if saturation is not None:
        raw = np.asarray(image)[ypeak, xpeak].astype(np.float64)
        flags[raw >= float(saturation)] |= _SATURATED

    keep, star_r50 = _not_sharp(data, objects, r50, total, flags, xpeak, ypeak, noise,
                                reject_sharp)
    sharp = int(np.count_nonzero(~keep))
    if max_stars is not None:
        keep &= np.cumsum(keep) <= max_stars
    columns = {
        "x_win": x_win, "y_win": y_win, "fwhm": 2.0 * r50, "flags": flags,
        "background": level[ypeak, xpeak].astype(np.float64),
    }
    columns = {name: values[keep] for name, values in _sep_columns(objects, columns).items()}
    return _table(columns, int(np.count_nonzero(keep)), given.wcs, fwhm=2.0 * star_r50,
                  sharp=sharp)


def _sep_columns(objects, measured: dict) -> dict:
    """The star table's columns: sep's own measurements of each detection and ours."""
    return {
        "x": objects["x"].astype(np.float64), "y": objects["y"].astype(np.float64),
        "flux": objects["flux"].astype(np.float64),
        "peak": objects["peak"].astype(np.float64),
        "a": objects["a"].astype(np.float64), "b": objects["b"].astype(np.float64),
        "theta": objects["theta"].astype(np.float64),
        "npix": objects["npix"].astype(np.int32),
        "extraction_flags": objects["flag"].astype(np.uint16),
        **measured,
    }


def _extract_options(min_area, deblend_cont, deblend_nthresh, filter_kernel) -> dict:
    """sep.extract's keyword arguments for the detection area, deblending and filter, checked."""
    options = {"minarea": integer("min_area", min_area, least=1)}
    if not 0.0 <= float(deblend_cont) <= 1.0:
        raise EngineValueError(f"deblend_cont must be in [0, 1], got {deblend_cont!r}")
    options["deblend_cont"] = float(deblend_cont)
    options["deblend_nthresh"] = integer("deblend_nthresh", deblend_nthresh, least=1)
    if isinstance(filter_kernel, str):
        if filter_kernel != "default":
            raise EngineValueError(f"filter_kernel must be 'default', None or an array, "
                                   f"got {filter_kernel!r}")
    elif filter_kernel is None:
        options["filter_kernel"] = None
    else:
        kernel = np.ascontiguousarray(filter_kernel, dtype=np.float32)
        if kernel.ndim != 2 or not np.isfinite(kernel).all():
            raise EngineValueError("filter_kernel must be a finite 2-D array")
        options["filter_kernel"] = kernel
    return options


def _subtract_background(data, bad, box: int, filter_size: int,
                         noise) -> tuple[np.ndarray, float]:
    """Subtract sep's background map from `data` in place (masked pixels become 0); returns the
    map and the background noise (`noise` if given, else sep's global RMS)."""
    import sep

    ny, nx = data.shape
    background = _sep_call(sep.Background, data, mask=bad, bw=min(box, nx), bh=min(box, ny),
                           fw=filter_size, fh=filter_size)
    if noise is None:
        noise = float(background.globalrms)
        if not (math.isfinite(noise) and noise > 0.0):
            raise EngineValueError(
                f"the background noise measured by sep is {noise!r}: pass noise= explicitly")
    else:
        noise = positive("noise", noise)
    level = background.back()
    data -= level.astype(data.dtype, copy=False)
    if bad is not None:
        data[bad] = 0.0
    return level, noise


def _windowed_positions(data, bad, objects, r50, threads):
    """Windowed centroids (XWIN, YWIN) of the detections in a Gaussian window of their own
    FWHM, and their flags: BLENDED, NEAR_EDGE, CENTROID_FAILED. A failed centroid, or one that
    moved more than max(2 px, FWHM), gives back the barycentre. Masked pixels of `data` become
    NaN here, for good: the kernel and `_peak_excess` skip them."""
    x = objects["x"].astype(np.float64)
    y = objects["y"].astype(np.float64)
    fwhm = 2.0 * r50
    sigma = np.where(np.isfinite(r50) & (r50 > 0), fwhm / _GAUSSIAN_FWHM_PER_SIGMA, 1.0)
    sigma = np.maximum(sigma, 0.25)
    if bad is not None:
        data[bad] = np.nan
    x_win, y_win, status = _centroid.windowed_centroid(
        data, x, y, sigma, background=0.0, max_shift=np.inf, threads=threads)
    moved = np.hypot(x_win - x, y_win - y)
    failed = ((status & _centroid.FAILED) != 0) | (moved > np.maximum(2.0, fwhm))

    sep_flags = objects["flag"].astype(np.uint16)
    flags = np.zeros(len(objects), dtype=np.uint32)
    flags[(sep_flags & _SEP_MERGED) != 0] |= _BLENDED
    edge = ((sep_flags & _SEP_TRUNC) != 0) | (((status & _centroid.TRUNCATED) != 0) & ~failed)
    flags[edge] |= _NEAR_EDGE
    flags[failed] |= _CENTROID_FAILED
    return np.where(failed, x, x_win), np.where(failed, y, y_win), flags


def _not_sharp(data, objects, r50, total, flags, xpeak, ypeak, noise: float,
               reject_sharp: bool) -> tuple[np.ndarray, float]:
    """Which detections to keep (all unless `reject_sharp`: those no sharper than the frame's
    stars), and the stars' half-light radius (NaN without a stellar locus)."""
    # The smaller of FLUX_AUTO and the isophotal flux: a Kron ellipse can take in a
    # neighbour and hide a spike's share.
    isophotal = objects["flux"].astype(np.float64)
    total = np.where(np.isfinite(total), np.fmin(total, isophotal), isophotal)
    excess = _peak_excess(data, xpeak, ypeak)
    with np.errstate(divide="ignore", invalid="ignore"):
        spike = excess / total
        roundness = objects["b"].astype(np.float64) / objects["a"].astype(np.float64)
    x = objects["x"].astype(np.float64)
    y = objects["y"].astype(np.float64)
    star_r50, star_spike = _stellar_locus(r50, spike, total, roundness, flags, x, y)
    if not reject_sharp:
        return np.ones(len(objects), dtype=bool), star_r50
    # Judged on the spike less 3 sigma of its noise: faint stars' peaks are noisy.
    with np.errstate(divide="ignore", invalid="ignore"):
        surely = (excess - 3.0 * math.sqrt(1.25) * noise) / total
    return ~_sharper_than_stars(r50, surely, star_r50, star_spike), star_r50


def _peak_excess(data, xpeak, ypeak) -> np.ndarray:
    """Each detection's brightest pixel less the mean of its 4 neighbours (edges repeat), on
    the background-subtracted image (NaN next to a masked pixel: not judged)."""
    ny, nx = data.shape
    around = sum(data[np.clip(ypeak + dy, 0, ny - 1), np.clip(xpeak + dx, 0, nx - 1)]
                 for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))) / 4.0
    return data[ypeak, xpeak].astype(np.float64) - around


def _stellar_locus(r50, spike, total, roundness, flags, x, y) -> tuple[float, float]:
    """Half-light radius and peak spike fraction of the frame's stars (NaN, NaN if none).

    Candidates are not saturated, cut by the edge, nor with a failed centroid, have a spike
    fraction under _LOCUS_MAX_SPIKE, and have no neighbour
    brighter than _LOCUS_NEIGHBOUR_FLUX of theirs within 3 FWHM; the round ones are preferred.
    Of the brightest _LOCUS_STARS, the most compact cluster of half-light radii (a factor
    _LOCUS_HALF_WIDTH either side) holding 3 or more and at least half as many as the densest is
    the stars':
    hot pixels and cosmic rays fall below it, galaxies and blends above it. With no cluster of
    3, the brightest candidate's radius is taken.
    """
    # BLENDED is allowed: a hot pixel or a hit on a star's wing makes sep split it off; the
    # isolation test below keeps out stars blended with stars.
    usable = (((flags & ~_BLENDED) == 0) & np.isfinite(r50) & (r50 > 0) & np.isfinite(total)
              & (total > 0) & (spike < _LOCUS_MAX_SPIKE))
    candidates = np.flatnonzero(usable)
    candidates = candidates[np.argsort(-total[candidates], kind="stable")]
    if len(candidates) == 0:
        return math.nan, math.nan
    from scipy.spatial import cKDTree

    tree = cKDTree(np.column_stack([x, y]))
    isolated = []
    for i in candidates[: 4 * _LOCUS_STARS]:
        near = tree.query_ball_point((x[i], y[i]), 6.0 * r50[i])
        if all(j == i or total[j] < _LOCUS_NEIGHBOUR_FLUX * total[i] for j in near):
            isolated.append(i)
    candidates = np.asarray(isolated if isolated else candidates, dtype=np.intp)
    round_ones = candidates[roundness[candidates] > _LOCUS_ROUNDNESS]
    if len(round_ones):
        candidates = round_ones  # else every star is trailed
    candidates = candidates[:_LOCUS_STARS]
    log_r50 = np.log(r50[candidates])
    width = math.log(_LOCUS_HALF_WIDTH)
    density = (np.abs(log_r50[:, None] - log_r50[None, :]) <= width).sum(axis=1)
    if density.max() >= 3:
        # Stars are the most compact of the well-populated clusters: compact galaxies can
        # outnumber them a little above their radius.
        centre = float(np.min(log_r50[density >= max(3, 0.5 * density.max())]))
    else:
        centre = float(log_r50[0])  # too few to cluster: the brightest is a star
    members = candidates[np.abs(log_r50 - centre) <= width]
    return float(np.median(r50[members])), float(np.median(spike[members]))


def _sharper_than_stars(r50, spike, star_r50, star_spike) -> np.ndarray:
    """True for detections sharper than the frame's stars allow (see SHARP_RADIUS_FRACTION);
    none without a stellar locus to compare with."""
    if not (math.isfinite(star_r50) and math.isfinite(star_spike)):
        return np.zeros(len(r50), dtype=bool)
    limit = max(SHARP_PEAK_FACTOR * star_spike, SPIKE_FRACTION)
    with np.errstate(invalid="ignore"):
        return (r50 < SHARP_RADIUS_FRACTION * star_r50) | (spike > limit)


def frame_fwhm(stars: pa.Table) -> float:
    """The frame's FWHM (pixels) as `detect_stars` measured it from its stars (2 x their
    half-light radius); NaN when it found none to measure."""
    metadata = stars.schema.metadata or {}
    if b"fwhm" not in metadata:
        raise EngineValueError("this star table does not come from detect_stars: no frame FWHM")
    return float(metadata[b"fwhm"])


def cosmic_ray_mask(image, fwhm: float, *, threshold: float = 6.0, mask=None) -> np.ndarray:
    """Boolean mask of the pixels sharper than a star of this FWHM can make them: cosmic-ray
    hits, and hot pixels the calibration did not remove (tell the two apart by persistence:
    a hot pixel is sharp on every frame, a cosmic ray on one).

    A pixel is sharp when it stands `threshold` noise sigmas above the mean of its four
    neighbours (L.A.Cosmic's fine structure, van Dokkum 2001) and that excess is more than
    twice the share of its height above the background that a star centred on it could give:
    a Gaussian of `fwhm` / 1.5, as peaked as a Moffat (beta ~2.5) core whose half-light
    diameter is `fwhm` (detect_stars' FWHM). That share is 45 % of the peak at `fwhm` 3 px and
    8 % at 10 px; below ~2.5 px a star drops as steeply as a hit and nothing is flagged.
    Unlike L.A.Cosmic, no gain is needed: the bound scales with the pixel's height, so bright
    star cores stay clear. The 8 neighbours of a sharp pixel that
    stand 3 sigma above the background are flagged with it (the rest of a track, charge
    spread). `mask`: True where pixels are already known bad (left out of the background).
    """
    import sep
    from scipy import ndimage
    from scipy.special import erf

    fwhm = positive("fwhm", fwhm)
    threshold = positive("threshold", threshold)
    data, bad = _prepared(image, mask, zero_masked=False)
    ny, nx = data.shape
    # The background varies over tens of pixels: measured on every 4th pixel of a large frame
    # (16 times less work on the photometry stage's every frame), it is looked up only where
    # the fine structure already stands out.
    step = 4 if min(ny, nx) >= 256 else 1
    coarse = np.ascontiguousarray(data[::step, ::step])
    coarse_bad = None if bad is None else np.ascontiguousarray(bad[::step, ::step])
    cy, cx = coarse.shape
    background = _sep_call(sep.Background, coarse, mask=coarse_bad,
                           bw=min(64 // step, cx), bh=min(64 // step, cy))
    noise = float(background.globalrms)
    if not (math.isfinite(noise) and noise > 0.0):
        return np.zeros(data.shape, dtype=bool)
    level = background.back()

    def height(rows, columns):
        return data[rows, columns] - level[np.minimum(rows // step, cy - 1),
                                           np.minimum(columns // step, cx - 1)]

    padded = np.pad(data, 1, mode="edge")
    neighbours = 0.25 * (padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2]
                         + padded[1:-1, 2:])
    fine = data - neighbours
    # A pixel-integrated Gaussian centred on a pixel: the neighbours' mean over the peak.
    root = fwhm / 1.5 / _GAUSSIAN_FWHM_PER_SIGMA * math.sqrt(2.0)
    centre = erf(0.5 / root)
    drop = 1.0 - 0.5 * (erf(1.5 / root) - centre) / centre
    rows, columns = np.nonzero(fine > threshold * noise * math.sqrt(1.25))
    keep = fine[rows, columns] > 2.0 * drop * height(rows, columns)
    if bad is not None:
        keep &= ~bad[rows, columns]
    sharp = np.zeros(data.shape, dtype=bool)
    sharp[rows[keep], columns[keep]] = True
    if keep.any():
        grown = ndimage.binary_dilation(sharp, structure=np.ones((3, 3), bool)) & ~sharp
        rows, columns = np.nonzero(grown)
        bright = height(rows, columns) > 3.0 * noise
        sharp[rows[bright], columns[bright]] = True
    return sharp


def _half_light_radius(data, objects, bad) -> np.ndarray:
    """SExtractor's FLUX_RADIUS(0.5): the radius holding half of FLUX_AUTO.

    FLUX_AUTO is the flux in the Kron ellipse (2.5 Kron radii, Kron radius measured out to 6
    semi-axes); the half-light radius is searched out to 6 semi-major axes (at least 3 px). For a
    Gaussian star FWHM = 2 r50 exactly, and SExtractor's window for XWIN is sigma = 2 r50 / 2.35.
    Where FLUX_AUTO is unusable, the flux within that radius normalises instead.
    Returns (r50, the normalising flux).
    """
    import sep

    x = objects["x"].astype(np.float64)
    y = objects["y"].astype(np.float64)
    a = np.maximum(objects["a"].astype(np.float64), 1e-3)
    b = np.clip(objects["b"].astype(np.float64), 1e-3, a)
    theta = np.clip(objects["theta"].astype(np.float64), -np.pi / 2, np.pi / 2)
    kron, _ = _sep_call(sep.kron_radius, data, x, y, a, b, theta, 6.0, mask=bad)
    kron = np.where(np.isfinite(kron) & (kron > 0), kron, 1.0)
    flux_auto, _, _ = _sep_call(sep.sum_ellipse, data, x, y, a, b, theta, 2.5 * kron,
                                mask=bad, subpix=1)
    rmax = np.maximum(6.0 * a, 3.0)
    usable = np.isfinite(flux_auto) & (flux_auto > 0)
    normflux = np.where(usable, flux_auto, 1.0)
    r50, _ = _sep_call(sep.flux_radius, data, x, y, rmax, 0.5, normflux=normflux, mask=bad,
                       subpix=5)
    r50 = np.asarray(r50, dtype=np.float64)
    if not usable.all():
        own, _ = _sep_call(sep.flux_radius, data, x[~usable], y[~usable], rmax[~usable], 0.5,
                           mask=bad, subpix=5)
        r50[~usable] = own
    return r50, np.where(usable, flux_auto, np.nan)


def _table(columns: dict, n: int, wcs, *, fwhm: float = math.nan, sharp: int = 0) -> pa.Table:
    arrays = {"star_id": np.arange(n, dtype=np.int64)}
    for field in STAR_SCHEMA:
        if field.name != "star_id":
            arrays[field.name] = columns.get(field.name,
                                             np.zeros(0, dtype=field.type.to_pandas_dtype()))
    # The frame's FWHM and the count of detections left out as sharper than its stars travel
    # with the table (schema metadata: equality with STAR_SCHEMA ignores it).
    table = pa.table(arrays, schema=STAR_SCHEMA.with_metadata(
        {"fwhm": repr(float(fwhm)), "sharp_rejected": str(int(sharp))}))
    if wcs is not None:
        ra, dec = _sky(wcs, arrays["x_win"], arrays["y_win"])
        table = table.append_column("ra", pa.array(ra, pa.float64()))
        table = table.append_column("dec", pa.array(dec, pa.float64()))
    return table


def _sky(wcs, x, y):
    celestial = getattr(wcs, "celestial", None)
    if celestial is None or not getattr(wcs, "has_celestial", False):
        raise EngineValueError("wcs must be an astropy WCS with celestial axes")
    if celestial.naxis != 2:
        raise EngineValueError(f"the celestial WCS must have 2 axes, got {celestial.naxis}")
    if len(x) == 0:
        return np.zeros(0), np.zeros(0)
    ra, dec = celestial.all_pix2world(x, y, 0)  # origin 0: pixel centres on integers, as here
    return np.asarray(ra, dtype=np.float64), np.asarray(dec, dtype=np.float64)


def star_positions(stars, *, windowed: bool = True) -> np.ndarray:
    """(n, 2) float64 array of x, y from a star table (or an (n, 2) array, returned as float64).

    windowed: use x_win / y_win when the table has them.
    """
    if isinstance(stars, pa.Table):
        names = stars.column_names
        xs, ys = ("x_win", "y_win") if windowed and "x_win" in names else ("x", "y")
        if xs not in names or ys not in names:
            raise EngineValueError(f"a star table needs x and y columns, got {names}")
        return np.column_stack([stars.column(xs).to_numpy(zero_copy_only=False),
                                stars.column(ys).to_numpy(zero_copy_only=False)]
                               ).astype(np.float64)
    try:
        xy = np.asarray(stars, dtype=np.float64)
    except (TypeError, ValueError):
        raise EngineValueError("star positions must be a star table or an (n, 2) array") from None
    if xy.ndim != 2 or xy.shape[1] != 2:
        if xy.size == 0:
            return np.zeros((0, 2))
        raise EngineValueError(f"star positions must have shape (n, 2), got {xy.shape}")
    return xy
