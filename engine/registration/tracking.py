"""Tracking: every frame of a run registered to its reference stars, the pipeline's one driver.

`FrameTracker` registers frames one after the other, as the photometry stage reads them:

1. **Tracked.** The previous frame's transform predicts where the reference's bright isolated
   stars fall; they are re-centred on the pixels (`recentre`) and a least-squares similarity is
   fitted. A frame is accepted when enough of them re-centre with a small residual. Slow drifts
   cost a few centroids, no detection.
2. **Matched.** Otherwise (the first frame, a jump, a meridian flip, clouds) the frame's stars
   are detected and matched by asterisms (`engine.registration.asterisms`), with the previous
   transform tried first; the match is then refined on the re-centred tracking stars.

Frames that cannot be registered get a `Registration` with status "failed" and the reason, never
an exception. `register_images` runs the tracker over a sequence of images (the path the
pipeline, the benchmarks and the tests share); `register_frames` is the same matching step for
callers that already hold each frame's detections. `registrations_table` is the one table of
registrations (the pipeline's `photometry/RUN.registration.parquet`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from engine.detection import detect_stars
from engine.errors import EngineValueError
from engine.registration.asterisms import _OPTION_DOC, _match, _options, _stars_of
from engine.registration.recentring import recentre
from engine.registration.transform import Transform, fit_transform

__all__ = ["FrameTracker", "Registration", "register_frames", "register_images",
           "registrations_table", "stack_reference"]

@dataclass(frozen=True)
class Registration:
    """How one frame was registered.

    Attributes
    ----------
    index
        the frame's position in the input sequence.
    status
        "ok" or "failed"; reason says why a frame failed ("" when ok).
    transform
        reference -> frame (None when failed).
    n_matches, rms
        stars paired by the final fit, and their residual RMS in pixels.
    method
        "tracked" (re-centred from the previous frame's transform), "previous" (the
        previous frame's transform verified on detections), "triangles" (asterism search), or
        "" when failed.
    """

    index: int
    status: str
    reason: str = ""
    transform: Transform | None = None
    n_matches: int = 0
    rms: float = math.nan
    method: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def isolated_bright_stars(xy: np.ndarray, fwhm: float, count: int) -> np.ndarray:
    """Indices of up to `count` bright stars (xy brightest first) with no neighbour within
    4 FWHM: they re-centre without being pulled by a neighbour."""
    if len(xy) == 0:
        return np.zeros(0, dtype=np.intp)
    from scipy.spatial import cKDTree

    distance, _ = cKDTree(xy).query(xy, k=2)
    isolated = np.flatnonzero(distance[:, 1] > 4.0 * fwhm) if len(xy) > 1 else np.arange(1)
    return isolated[:count].astype(np.intp)


class FrameTracker:
    """Registers a run's frames, one after the other, to its reference stars.

    Parameters
    ----------
    reference
        star table (its `flux` orders the stars) or (n, 2) positions brightest first.
    fwhm
        the stars' FWHM in pixels (re-centring windows and isolation scale).
    detect
        image -> star table, used when tracking fails (default `detect_stars` at
        `threshold` sigma, `max_stars` brightest).
    tracking_stars, min_stars, max_rms
        bright isolated stars tracked; fewest that must
        re-centre, and the largest rms residual (px), for a tracked frame to be accepted.
    **options
        the asterism matching options (`register_frames`).
    """

    def __init__(self, reference, *, fwhm: float, reference_flux=None, detect=None,
                 threshold: float = 5.0, max_stars: int = 300, tracking_stars: int = 40,
                 min_stars: int = 6, max_rms: float = 0.5, threads: int | None = None,
                 **options):
        if not (isinstance(fwhm, (int, float, np.floating)) and math.isfinite(fwhm) and fwhm > 0):
            raise EngineValueError(f"fwhm must be finite and > 0, got {fwhm!r}")
        self.options = _options(**options)
        self.reference = _stars_of(reference, reference_flux, self.options, "reference")
        if len(self.reference.xy) < 3:
            raise EngineValueError(f"the reference has {len(self.reference.xy)} stars (3 needed)")
        self.ref_xy = self.reference.xy
        self.fwhm = float(fwhm)
        self.min_stars = int(min_stars)
        self.max_rms = float(max_rms)
        self.threads = threads
        self.detect = detect or (lambda image: detect_stars(image, threshold, max_stars=max_stars,
                                                            threads=threads))
        self.bright = isolated_bright_stars(self.ref_xy, self.fwhm, int(tracking_stars))
        self.previous: Transform | None = None
        self.previous_matches = 0

    def _track(self, image: np.ndarray, guess: Transform):
        """(transform, rms, n) from the tracking stars re-centred around `guess`, or None."""
        predicted = guess.apply(self.ref_xy[self.bright])
        ny, nx = image.shape
        inside = ((predicted[:, 0] > 2) & (predicted[:, 0] < nx - 3) & (predicted[:, 1] > 2)
                  & (predicted[:, 1] < ny - 3))
        if np.count_nonzero(inside) < self.min_stars:
            return None
        x, y, flags = recentre(image, predicted[inside, 0], predicted[inside, 1], self.fwhm,
                               max_shift=2.0 * self.fwhm, threads=self.threads)
        good = flags == 0
        if np.count_nonzero(good) < self.min_stars:
            return None
        transform, rms = fit_transform(self.ref_xy[self.bright][inside][good],
                                       np.column_stack([x[good], y[good]]), parity=guess.parity)
        if rms > self.max_rms:
            return None
        return transform, rms, int(np.count_nonzero(good))

    def register(self, image: np.ndarray, index: int = 0) -> Registration:
        """The frame's registration; the tracker remembers it for the next frame."""
        if self.previous is not None:
            tracked = self._track(image, self.previous)
            if tracked is not None:
                self.previous = tracked[0]
                return Registration(index, "ok", "", tracked[0], tracked[2], tracked[1], "tracked")
        try:
            detections = self.detect(image)
        except EngineValueError as exc:  # no usable pixel, no measurable noise
            return Registration(index, "failed", f"detection failed: {exc}")
        matched = match_detections(self.reference, detections, self.options, self.previous,
                                   self.previous_matches, index)
        if not matched.ok:
            return matched
        # Refine on the re-centred tracking stars, as a tracked frame would be.
        refined = self._track(image, matched.transform)
        if refined is not None:
            matched = Registration(index, "ok", "", refined[0], refined[2], refined[1],
                                   matched.method)
        self.previous, self.previous_matches = matched.transform, matched.n_matches
        return matched


def match_detections(reference, detections, options, guess: Transform | None,
                     expected_matches: int, index: int) -> Registration:
    """One frame's detections matched to the prepared reference (the previous transform first)."""
    frame = _stars_of(detections, None, options, f"frame {index}")
    outcome, method = _match(reference, frame, options, guess, expected_matches)
    if outcome.transform is None:
        return Registration(index, "failed", outcome.reason or "no match")
    return Registration(index, "ok", "", outcome.transform, outcome.n_matches, outcome.rms,
                        method)


def register_frames(reference, frames, *, reference_flux=None, use_previous: bool = True,
                    **options) -> list[Registration]:
    """Register every frame's detections to the reference; failures are flagged, not raised.

    Parameters
    ----------
    reference : (n, 2) array or star table
        The reference stars (brightest first for arrays, or give `reference_flux`).
    frames : sequence of (m, 2) arrays or star tables
        Each frame's detections (brightest first for arrays); an empty one is flagged.
    use_previous : bool
        Try the last registered frame's transform first (fast for slow drifts; a jump or a flip
        falls back to the asterism search).
    {options}
    Returns
    -------
    One `Registration` per frame, in order.
    """
    options = _options(**options)
    ref = _stars_of(reference, reference_flux, options, "reference")
    if len(ref.xy) < 3:
        raise EngineValueError(f"the reference has {len(ref.xy)} stars (3 needed)")
    results = []
    previous, previous_matches = None, 0
    for index, detections in enumerate(frames):
        result = match_detections(ref, detections, options, previous if use_previous else None,
                                  previous_matches, index)
        if result.ok:
            previous, previous_matches = result.transform, result.n_matches
        results.append(result)
    return results


register_frames.__doc__ = register_frames.__doc__.format(options=_OPTION_DOC)


def registrations_table(registrations) -> pa.Table:
    """The per-frame registrations as an Arrow table (transform parameters NaN where failed)."""
    rows = list(registrations)

    def column(getter, kind):
        return pa.array([getter(r) for r in rows], kind)

    def param(name):
        return column(lambda r: getattr(r.transform, name) if r.transform else math.nan,
                      pa.float64())

    return pa.table({
        "frame": column(lambda r: r.index, pa.int64()),
        "status": column(lambda r: r.status, pa.string()),
        "reason": column(lambda r: r.reason, pa.string()),
        "method": column(lambda r: r.method, pa.string()),
        "n_matches": column(lambda r: r.n_matches, pa.int32()),
        "rms": column(lambda r: r.rms, pa.float64()),
        "a": param("a"), "b": param("b"), "tx": param("tx"), "ty": param("ty"),
        "parity": column(lambda r: r.transform.parity if r.transform else 0, pa.int8()),
        "scale": param("scale"), "rotation_deg": param("rotation_deg"),
    })


def stack_reference(images, transforms, shape=None, *, order: int = 1) -> np.ndarray:
    """Median of frames resampled onto the reference grid: a deep, sharp reference image.

    images: sequence of 2-D arrays; transforms: their reference -> frame `Transform`s (None
    entries are skipped); shape: the reference grid (default: the first image's). Pixels that
    no frame covers are NaN. `order` is the spline order of the resampling (1 = bilinear).
    """
    from scipy.ndimage import affine_transform

    images = list(images)
    transforms = list(transforms)
    if len(images) != len(transforms):
        raise EngineValueError(f"{len(images)} images but {len(transforms)} transforms")
    used = [(np.asarray(im, dtype=np.float64), t) for im, t in zip(images, transforms)
            if t is not None]
    if not used:
        raise EngineValueError("no registered frame to stack")
    for im, t in used:
        if im.ndim != 2:
            raise EngineValueError(f"images must be 2-D, got shape {im.shape}")
        if not isinstance(t, Transform):
            raise EngineValueError(f"transforms must be Transform or None, got {type(t)}")
    shape = tuple(int(s) for s in (shape or used[0][0].shape))
    stack = np.empty((len(used),) + shape)
    for k, (im, t) in enumerate(used):
        m = t.matrix
        # affine_transform maps output (row, col) to input (row, col): swap x and y.
        matrix = np.array([[m[1, 1], m[1, 0]], [m[0, 1], m[0, 0]]])
        offset = np.array([m[1, 2], m[0, 2]])
        stack[k] = affine_transform(im, matrix, offset, output_shape=shape, order=order,
                                    mode="constant", cval=np.nan)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmedian(stack, axis=0)


def register_images(images, reference, *, fwhm: float | None = None, reference_flux=None,
                    threshold: float = 5.0, max_stars: int = 300, threads: int | None = None,
                    **options) -> list[Registration]:
    """Register a sequence (or a 3-D cube) of images to the reference stars with `FrameTracker`,
    the photometry stage's driver.

    reference: the reference star table or positions (brightest first, or give
    `reference_flux`). fwhm: the stars' FWHM in pixels (default: the reference table's median
    `fwhm`, else measured on the first image). An image that detection refuses (no usable pixel,
    no measurable noise) is flagged with the reason, like a frame that does not match. Other
    keywords are `FrameTracker`'s (tracking) and `register_frames`' (matching) options.
    """
    images = iter(images)
    first = next(images, None)
    if first is None:
        return []
    if fwhm is None:
        fwhm = _reference_fwhm(reference, first, threshold, max_stars, threads)
    tracker = FrameTracker(reference, fwhm=fwhm, reference_flux=reference_flux,
                           threshold=threshold, max_stars=max_stars, threads=threads, **options)
    results = [tracker.register(np.asarray(first, dtype=np.float32), 0)]
    for index, image in enumerate(images, start=1):
        results.append(tracker.register(np.asarray(image, dtype=np.float32), index))
    return results


def _reference_fwhm(reference, image, threshold, max_stars, threads) -> float:
    """The stars' FWHM from the reference table, else from the image's detections, else 3 px."""
    if isinstance(reference, pa.Table) and "fwhm" in reference.column_names:
        values = reference.column("fwhm").to_numpy(zero_copy_only=False).astype(float)
    else:
        try:
            stars = detect_stars(np.asarray(image, dtype=np.float32), threshold,
                                 max_stars=max_stars, threads=threads)
            values = stars.column("fwhm").to_numpy(zero_copy_only=False).astype(float)
        except EngineValueError:
            values = np.zeros(0)
    values = values[np.isfinite(values) & (values > 0)]
    return float(np.median(values)) if values.size else 3.0
