"""Master frames from calibration stacks: bias, dark (rate or exposure-matched), flat, bad pixels.

- `master_bias`: the sigma-clipped mean of the bias frames (after overscan and trim when given).
- `master_dark`: the darks grouped by exposure time, each group combined with the bias removed;
  then a linearity test over the exposure times decides between a dark-current rate (ADU/s,
  scaled by each light's exposure) and exposure-matched darks (CMOS amp glow often does not
  scale). The evidence is kept (`DarkModel.evidence`) and goes into the FITS headers. The fit,
  the test and the choice are steps in engine.calibration.dark_model.
- `master_flat`: per filter, each flat with bias and dark removed and divided by its own median,
  combined, then normalised to a median of 1.
- `bad_pixel_mask`: hot pixels from the dark rate, dead and low-response pixels from the flat.
- `check_frames`: which calibration frames fit the lights (shape, binning, temperature); it
  lives in engine.calibration.frame_checks and is re-exported here.

Stacks are NumPy or Zarr arrays (frame, y, x), read a block of rows at a time within a memory
budget (`combine_stack`), so a large stack is never held whole. The combine defaults are
astropy's sigma_clip defaults (sigma 3, maxiters 5, cenfunc median, stdfunc std), then the mean
of what is kept (engine.kernels.combine); stacks too small to clip are averaged plainly, and
the notes say so.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import numpy as np

from engine.calibration.blocks import local_level, robust_sigma, smooth
from engine.calibration.dark_model import (DarkModel, dark_cards, dark_mode, exposure_groups,
                                           fit_dark_line, line_evidence, linearity_test)
from engine.calibration.frame_checks import check_frames, implausible_levels
from engine.errors import EngineValueError
from engine.flags import PixelFlag
from engine.kernels.calibrate import calibrate_frames
from engine.kernels.combine import sigma_clip_combine

__all__ = ["DarkModel", "MIN_FRAMES_TO_CLIP", "Master", "bad_pixel_mask", "check_frames",
           "combine_stack", "implausible_levels", "master_bias", "master_dark", "master_flat"]

log = logging.getLogger("engine.calibration")

#: Fewer frames than this are averaged without clipping (a clip needs a spread to measure).
MIN_FRAMES_TO_CLIP = 3
_BUDGET = 256 * 1024 * 1024  # bytes of stack (as float32) held at a time
_IMAGETYP = {"bias": "MASTER BIAS", "dark": "MASTER DARK", "flat": "MASTER FLAT",
             "bad_pixels": "BAD PIXEL MASK"}


@dataclass(frozen=True)
class Master:
    """One master frame and what made it.

    kind: 'bias', 'dark', 'flat' or 'bad_pixels'. data: float32 (ADU; a dark rate in ADU/s; a
    flat normalised to median 1), or uint8 PixelFlag bits for a bad-pixel mask.
    ncombine: frames combined. exptime: a matched dark's (or a flat's median) exposure, s.
    rate: a dark given as ADU/s. filter: the flat's filter (or the frames'). binning, temperature
    (median sensor temperature, C), camera: what the frames were taken with.
    notes: what a user should know (fallbacks, choices, rejections). cards: extra FITS header
    cards (keyword, value, comment). sources: names of the input files. extensions: (name,
    image) written as FITS image extensions after the primary (a dark rate's OFFSET map).
    """

    kind: str
    data: np.ndarray
    ncombine: int
    exptime: float | None = None
    rate: bool = False
    filter: str | None = None
    binning: tuple[int, int] | None = None
    temperature: float | None = None
    camera: str | None = None
    notes: tuple[str, ...] = ()
    cards: tuple[tuple[str, object, str], ...] = ()
    sources: tuple[str, ...] = ()
    extensions: tuple[tuple[str, np.ndarray], ...] = ()

    @property
    def imagetyp(self) -> str:
        return _IMAGETYP[self.kind]

    @property
    def bunit(self) -> str:
        if self.kind == "bad_pixels" or self.kind == "flat":
            return ""
        return "adu/s" if self.rate else "adu"


def _note(notes: list[str], text: str) -> None:
    notes.append(text)
    log.info(text)


# ---------------------------------------------------------------------------------------------
# Streaming combine
# ---------------------------------------------------------------------------------------------


def _frames_of(stack, frames) -> list[int]:
    n = stack.shape[0]
    if frames is None:
        return list(range(n))
    frames = [int(k) for k in frames]
    for k in frames:
        if not 0 <= k < n:
            raise EngineValueError(f"frame index {k} is outside the stack of {n} frames")
    return frames


def _read_rows(stack, frames: list[int], y0: int, y1: int) -> np.ndarray:
    """stack[frames, y0:y1, :] as one NumPy array (a Zarr array decodes only these frames)."""
    if isinstance(stack, np.ndarray):
        if frames == list(range(stack.shape[0])):
            return stack[:, y0:y1]
        return stack[frames, y0:y1]
    return np.stack([np.asarray(stack[k, y0:y1]) for k in frames])


def _geometry(stack, trim, overscan):
    if stack.ndim != 3 or 0 in stack.shape:
        raise EngineValueError(f"a stack must be (frames, rows, columns), got shape {stack.shape}")
    _, ny, nx = stack.shape
    trim = (0, ny, 0, nx) if trim is None else tuple(int(v) for v in trim)
    if len(trim) != 4 or not (0 <= trim[0] < trim[1] <= ny and 0 <= trim[2] < trim[3] <= nx):
        raise EngineValueError(f"trim {trim} does not fit frames of {ny} x {nx}")
    return trim, (None if overscan is None else tuple(int(v) for v in overscan))


def combine_stack(stack, *, frames=None, trim=None, overscan=None, overscan_method="median",
                  nonlinearity=None, bias=None, dark=None, exptimes=None, divide_by=None,
                  sigma: float = 3.0, maxiters: int | None = 5, cenfunc: str = "median",
                  method: str = "mean", min_frames: int = MIN_FRAMES_TO_CLIP,
                  budget_bytes: int = _BUDGET, threads: int | None = None,
                  notes: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Calibrate and combine frames of a stack, a block of rows at a time.

    stack: (frames, rows, columns) NumPy or Zarr array of raw frames. frames: which to use
    (default all). Each frame is calibrated as `calibrate_frames` does (trim, overscan,
    nonlinearity, bias, dark * exptime), divided by `divide_by[k]` when given, then the frames
    are sigma-clipped and averaged pixel by pixel (sigma, maxiters, cenfunc, method as
    `sigma_clip_combine`). Fewer than `min_frames` frames are averaged without clipping, and a
    note says so. Rows are read in blocks so that the block of all frames (as float32) stays
    within `budget_bytes`.
    Returns (combined float32 (rows, columns) of the trimmed frame, counts int32: values kept).
    """
    notes = [] if notes is None else notes
    frames = _frames_of(stack, frames)
    n = len(frames)
    if n == 0:
        raise EngineValueError("no frames to combine")
    trim, overscan = _geometry(stack, trim, overscan)
    ty0, ty1, tx0, tx1 = trim
    ny, nx = ty1 - ty0, tx1 - tx0
    scale_exptimes = None
    if dark is not None:
        if exptimes is None:
            raise EngineValueError("a dark needs the frames' exposure times")
        scale_exptimes = np.asarray(exptimes, dtype=np.float64)
        if scale_exptimes.shape != (n,):
            raise EngineValueError(f"{scale_exptimes.size} exposure times for {n} frames")
    divisors = None
    if divide_by is not None:
        divisors = np.asarray(divide_by, dtype=np.float64)
        if divisors.shape != (n,) or not np.all(np.isfinite(divisors)) or np.any(divisors == 0):
            raise EngineValueError("divide_by needs one finite, non-zero number per frame")
    clip = n >= min_frames
    if not clip:
        _note(notes, f"too few frames to clip ({n} < {min_frames}): "
                     + ("the frame is used as it is" if n == 1 else "a plain mean"))
    combined = np.empty((ny, nx), np.float32)
    counts = np.empty((ny, nx), np.int32)
    rows_per_block = max(1, min(ny, budget_bytes // max(1, n * stack.shape[2] * 4 * 2)))
    for r0 in range(0, ny, rows_per_block):
        r1 = min(ny, r0 + rows_per_block)
        raw = _read_rows(stack, frames, ty0 + r0, ty0 + r1)
        block = calibrate_frames(
            raw, trim=(0, r1 - r0, tx0, tx1), overscan=overscan, overscan_method=overscan_method,
            nonlinearity=nonlinearity, bias=None if bias is None else bias[r0:r1],
            dark=None if dark is None else dark[r0:r1], dark_scale=scale_exptimes, mask=False,
            threads=threads).data
        if divisors is not None:
            block /= divisors.astype(np.float32)[:, None, None]
        if clip:
            sigma_clip_combine(block, method=method, sigma=sigma, maxiters=maxiters,
                               cenfunc=cenfunc, out=combined[r0:r1], counts=counts[r0:r1],
                               threads=threads)
        else:
            combined[r0:r1] = block.mean(axis=0) if method == "mean" else np.median(block, axis=0)
            counts[r0:r1] = np.isfinite(block).sum(axis=0)
    return combined, counts


def _sources(names, frames) -> tuple[str, ...]:
    if not names:
        return ()
    names = list(names)
    return tuple(os.path.basename(str(names[k])) for k in frames)


def _median_or_none(values) -> float | None:
    values = [float(v) for v in (values or ()) if v is not None and math.isfinite(float(v))]
    return float(np.median(values)) if values else None


def _combine_cards(sigma, maxiters, cenfunc, clipped: bool) -> tuple:
    if not clipped:
        return (("COMBINE", "mean", "plain mean: too few frames to clip"),)
    return (("COMBINE", "sigma-clipped mean", "astropy sigma_clip semantics, then mean"),
            ("CLIPSIG", float(sigma), "clipping threshold, sigma (lower and upper)"),
            ("CLIPITER", -1 if maxiters is None else int(maxiters), "most clipping iterations"),
            ("CLIPCEN", cenfunc, "clipping centre; spread: standard deviation"))


# ---------------------------------------------------------------------------------------------
# Masters
# ---------------------------------------------------------------------------------------------


def master_bias(stack, *, frames=None, names=(), trim=None, overscan=None,
                overscan_method="median", nonlinearity=None, sigma: float = 3.0,
                maxiters: int | None = 5, cenfunc: str = "median", binning=None,
                temperatures=None, camera=None, budget_bytes: int = _BUDGET,
                threads: int | None = None) -> Master:
    """The master bias: the sigma-clipped mean of the bias frames (after overscan and trim).

    names: the frames' file names (provenance); binning, temperatures (per frame, C), camera:
    recorded in the header. Fewer than MIN_FRAMES_TO_CLIP frames are averaged plainly (noted).
    """
    notes: list[str] = []
    frames = _frames_of(stack, frames)
    data, _ = combine_stack(stack, frames=frames, trim=trim, overscan=overscan,
                            overscan_method=overscan_method, nonlinearity=None, sigma=sigma,
                            maxiters=maxiters, cenfunc=cenfunc, budget_bytes=budget_bytes,
                            threads=threads, notes=notes)
    if nonlinearity is not None:
        _note(notes, "the non-linearity polynomial is applied to counts above the bias, so not "
                     "to the bias itself")
    return Master("bias", data, len(frames), binning=binning,
                  temperature=_median_or_none(temperatures), camera=camera, notes=tuple(notes),
                  cards=_combine_cards(sigma, maxiters, cenfunc, len(frames) >= MIN_FRAMES_TO_CLIP),
                  sources=_sources(names, frames))


def master_dark(stack, exptimes, *, frames=None, names=(), bias: Master | np.ndarray | None = None,
                trim=None, overscan=None, overscan_method="median", nonlinearity=None,
                sigma: float = 3.0, maxiters: int | None = 5, cenfunc: str = "median",
                gain: float | None = None, significance: float = 5.0,
                tolerance: float = 0.05, binning=None, temperatures=None, camera=None,
                budget_bytes: int = _BUDGET, threads: int | None = None) -> DarkModel:
    """Dark masters, with a measured choice between a dark-current rate and matched darks.

    exptimes: each frame's exposure time, s (one per frame of `stack`, or of `frames`).
    bias: the master bias (a Master or an array of the trimmed shape), or None.

    The darks are grouped by exposure time (1 ms) and each group is combined (the bias
    subtracted). With the bias and two or more exposure times, the rate is the least-squares
    slope through the origin over the groups (weighted by their frame counts), per pixel; without
    a bias, a line with an intercept over three or more exposure times (the intercept stands in
    for the bias). The linearity test then compares each group with the rate's prediction in
    32 x 32-pixel blocks: the median residual of every block, less the exposure's frame-wide
    level, must stay within `significance` times the noise of a block median (measured from the
    blocks' even against odd rows) or within `tolerance` of the dark signal (whichever is
    larger, and at least 1 ADU). Pass: mode 'rate'. Fail: mode 'matched', one dark
    per exposure (the rate is kept for exposures no dark matches, and said so). With a single
    exposure time nothing can be tested: with a bias the rate is assumed (and said), without one
    the dark is used as an exposure-matched dark that still holds the bias.

    evidence (DarkModel.evidence): exposure times, frames per group, median dark signal (ADU),
    worst block residual and its allowance per group, the median rate in ADU/s (and e-/s/pixel
    when `gain`, e-/ADU, is given), whether the test ran and passed.
    """
    notes: list[str] = []
    frames = _frames_of(stack, frames)
    times = _exposure_times(stack, exptimes, frames)
    bias_data = bias.data if isinstance(bias, Master) else bias
    if bias_data is None:
        _note(notes, "no bias frames: the darks keep the bias level")
    groups = exposure_groups(frames, times)
    counts = {t: len(members) for t, members in groups.items()}
    combined: dict[float, np.ndarray] = {}
    for t in sorted(groups):
        group_notes: list[str] = []
        combined[t], _ = combine_stack(
            stack, frames=groups[t], trim=trim, overscan=overscan,
            overscan_method=overscan_method, nonlinearity=nonlinearity, bias=bias_data,
            sigma=sigma, maxiters=maxiters, cenfunc=cenfunc, budget_bytes=budget_bytes,
            threads=threads, notes=group_notes)
        notes.extend(f"{t:g} s darks: {text}" for text in group_notes)
    rate, intercept = fit_dark_line(combined, counts, bias_data is not None)
    evidence = line_evidence(rate, intercept, counts, gain)
    rows = linearity_test(combined, counts, rate, intercept, significance=significance,
                          tolerance=tolerance)
    if rows is not None:
        evidence["groups"] = rows
    evidence["tested"] = rows is not None
    evidence["linear"] = None if rows is None else all(r["ok"] for r in rows)
    mode, why = dark_mode(evidence, bias_data is not None)
    _note(notes, why)
    offset = model_intercept = None
    if mode == "rate" and intercept is not None:
        offset, model_intercept = _zero_exposure_level(intercept, bias_data is not None,
                                                       evidence, notes)
    cards = _combine_cards(sigma, maxiters, cenfunc, True) + dark_cards(mode, evidence,
                                                                        offset is not None)
    common = dict(binning=binning, temperature=_median_or_none(temperatures), camera=camera,
                  filter=None, notes=tuple(notes), cards=cards)
    rate_master = None
    if rate is not None:
        rate_master = Master("dark", rate, len(frames), rate=True,
                             sources=_sources(names, frames),
                             extensions=() if offset is None else (("OFFSET", offset),),
                             **common)
    matched = {t: Master("dark", combined[t], counts[t], exptime=t,
                         sources=_sources(names, groups[t]), **common)
               for t in sorted(groups)}
    return DarkModel(mode, rate_master, matched, bias_data is None and mode == "matched",
                     evidence, tuple(notes), model_intercept, offset)


def _zero_exposure_level(intercept, has_bias: bool, evidence: dict,
                         notes: list[str]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(offset, intercept) of a rate model from the fitted level at zero exposure: with a bias,
    what the darks hold above it, smoothed (evidence gets 'offset_adu'); without one, the level
    itself stands in for the bias."""
    if not has_bias:
        _note(notes, "no bias frames: the darks' fitted level at zero exposure stands in "
                     "for the bias")
        return None, intercept
    low, high = evidence["intercept_block_range_adu"]
    evidence["offset_adu"] = evidence["intercept_median_adu"]
    _note(notes, f"at zero exposure the darks sit {evidence['offset_adu']:.2f} ADU above "
                 f"the master bias (blocks {low:.2f} to {high:.2f}): not dark current; "
                 f"the dark model keeps it, smoothed over 32-pixel blocks")
    return smooth(intercept), None


def _exposure_times(stack, exptimes, frames: list[int]) -> np.ndarray:
    """Each dark frame's exposure time, s: one per frame of `stack`, or of `frames`."""
    times = np.asarray(exptimes, dtype=np.float64).ravel()
    if times.size == stack.shape[0] and len(frames) != stack.shape[0]:
        times = times[frames]
    if times.size != len(frames):
        raise EngineValueError(f"{times.size} exposure times for {len(frames)} dark frames")
    if not np.all(np.isfinite(times)) or np.any(times <= 0):
        raise EngineValueError("dark exposure times must be finite and > 0")
    return times


def _frame_levels(stack, frames, *, trim, overscan, overscan_method, nonlinearity, bias, dark,
                  exptimes, threads, step: int = 8) -> np.ndarray:
    """Median of each calibrated frame over every `step`-th row and column (for normalising)."""
    ty0, ty1, tx0, tx1 = trim
    levels = []
    for i, k in enumerate(frames):
        # One read per frame: a Zarr cube stores a frame per chunk, so reading row by row would
        # decode the whole frame once per row.
        raw = np.asarray(stack[k])[ty0:ty1:step][None]
        sub = lambda a: None if a is None else a[::step]  # noqa: E731
        calibrated = calibrate_frames(
            raw, trim=(0, raw.shape[1], tx0, tx1), overscan=overscan, overscan_method=overscan_method,
            nonlinearity=nonlinearity, bias=sub(bias), dark=sub(dark),
            dark_scale=None if dark is None else exptimes[i], mask=False, threads=threads).data
        levels.append(float(np.nanmedian(calibrated[0, :, ::step])))
    return np.array(levels)


def master_flat(stack, *, frames=None, names=(), filter: str | None = None, exptimes=None,
                bias: Master | np.ndarray | None = None, dark: DarkModel | None = None,
                trim=None, overscan=None, overscan_method="median", nonlinearity=None,
                saturation: float | None = None, min_level: float = 100.0, sigma: float = 3.0,
                maxiters: int | None = 5, cenfunc: str = "median", binning=None,
                temperatures=None, camera=None, budget_bytes: int = _BUDGET,
                threads: int | None = None) -> Master:
    """The normalised flat of one filter.

    Each flat has the bias and dark (the model's dark for its exposure) removed and is divided
    by its own median; the frames are combined (sigma-clipped mean) and the result divided by its
    median, so the flat is ~1 with its structure (vignetting, dust) intact. Frames whose raw
    median reaches 90 % of `saturation`, or whose calibrated median is under `min_level` ADU,
    are left out and said so. Missing bias or dark: the flat is made without it, and said so.
    """
    notes: list[str] = []
    frames = _frames_of(stack, frames)
    trim, overscan = _geometry(stack, trim, overscan)
    names = list(names) if names else []
    if exptimes is not None:
        times = np.asarray(exptimes, dtype=np.float64).ravel()
        if times.size == stack.shape[0] and len(frames) != stack.shape[0]:
            times = times[frames]
    else:
        times = None
    bias_data = bias.data if isinstance(bias, Master) else bias
    if bias_data is None:
        _note(notes, "no master bias: the flat keeps the bias level in its normalisation")
    dark_data, dark_times = _flat_dark(dark, times, len(frames), bias_data is not None, notes)
    levels = _frame_levels(stack, frames, trim=trim, overscan=overscan,
                           overscan_method=overscan_method, nonlinearity=nonlinearity,
                           bias=bias_data, dark=dark_data, exptimes=dark_times, threads=threads)
    keep = _usable_flats(stack, frames, names, levels, saturation, min_level, notes)
    if not keep:
        raise EngineValueError("no usable flat frames: " + "; ".join(notes[-len(frames):]))
    used = [frames[i] for i in keep]
    data, _ = combine_stack(
        stack, frames=used, trim=trim, overscan=overscan, overscan_method=overscan_method,
        nonlinearity=nonlinearity, bias=bias_data, dark=dark_data,
        exptimes=None if dark_times is None else np.asarray(dark_times)[keep],
        divide_by=levels[keep], sigma=sigma, maxiters=maxiters, cenfunc=cenfunc,
        budget_bytes=budget_bytes, threads=threads, notes=notes)
    norm = float(np.nanmedian(data))
    if not norm > 0:
        raise EngineValueError(f"the combined flat has median {norm}: not a flat")
    data /= np.float32(norm)
    exptime = None if times is None else float(np.median(times[keep]))
    cards = _combine_cards(sigma, maxiters, cenfunc, len(used) >= MIN_FRAMES_TO_CLIP) + (
        ("FLATNORM", round(norm, 6), "median of the combined flat before normalising"),
        ("FLATLEV", round(float(np.median(levels[keep])), 3),
         "median level of the flats, ADU (calibrated)"))
    return Master("flat", data, len(used), exptime=exptime, filter=filter, binning=binning,
                  temperature=_median_or_none(temperatures), camera=camera, notes=tuple(notes),
                  cards=cards, sources=_sources(names, used))


def _flat_dark(dark: DarkModel | None, times, n_frames: int, has_bias: bool,
               notes: list[str]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(dark, per-frame dark scale) to take off the flats, or (None, None) without a dark: the
    rate scaled by each flat's exposure, or the dark for the longest exposure."""
    if dark is None:
        _note(notes, "no dark: the flats keep their dark current")
        return None, None
    if times is None:
        raise EngineValueError("a dark needs the flats' exposure times")
    unique = sorted(set(np.round(times, 3)))
    if len(unique) > 1 and dark.mode == "matched":
        _note(notes, "flats of several exposures with matched darks: each group's dark is "
                     "taken for the longest exposure's")
    dark_data, scale, text = dark.for_exposure(float(unique[-1]))
    if text:
        _note(notes, f"flat: {text}")
    dark_times = times if dark.mode == "rate" else np.full(n_frames, scale)
    if dark.includes_bias and not has_bias:
        _note(notes, "the flats' dark still holds the bias, which it removes with it")
    return dark_data, dark_times


def _usable_flats(stack, frames, names, levels, saturation, min_level,
                  notes: list[str]) -> list[int]:
    """Indices into `frames` of the flats neither near saturation (raw median) nor too faint
    (calibrated median under min_level); each one left out is noted."""
    keep = []
    for i, k in enumerate(frames):
        label = os.path.basename(str(names[k] if names else f"frame {k}"))
        if saturation is not None:
            raw_median = float(np.median(np.asarray(stack[k, ::8, ::8])))
            if raw_median >= 0.9 * saturation:
                _note(notes, f"{label}: left out, median {raw_median:.0f} ADU is near "
                             f"saturation ({saturation:.0f})")
                continue
        if not levels[i] >= min_level:
            _note(notes, f"{label}: left out, calibrated median {levels[i]:.1f} ADU is below "
                         f"{min_level:g}")
            continue
        keep.append(i)
    return keep


def bad_pixel_mask(*, dark: DarkModel | Master | None = None, flat: Master | None = None,
                   hot_sigma: float = 5.0, hot_factor: float = 10.0, low_response: float = 0.5,
                   high_response: float = 1.5) -> Master:
    """The bad-pixel mask (PixelFlag.BAD, uint8): hot pixels from the dark, dead ones from the flat.

    Hot: a dark rate more than `hot_sigma` robust standard deviations above the median rate and
    more than `hot_factor` times it (the rate of a DarkModel, or its longest matched dark over
    its exposure); warm pixels below that are calibrated by the dark like any other. Dead or
    low-response: a flat value not finite, or below `low_response` (or above `high_response`)
    times the local flat level (the median of its 32 x 32 block), so that vignetting is not
    taken for dead pixels.
    """
    if dark is None and flat is None:
        raise EngineValueError("a bad-pixel mask needs a dark or a flat")
    notes: list[str] = []
    shape = (dark.rate.data if isinstance(dark, DarkModel) and dark.rate is not None
             else (dark.data if isinstance(dark, Master) else None))
    hot = dead = None
    sources: tuple[str, ...] = ()
    if dark is not None:
        if isinstance(dark, DarkModel):
            if dark.rate is not None and not dark.includes_bias:
                rate, sources = dark.rate.data, dark.rate.sources
            else:
                t = max(dark.matched)
                rate, sources = dark.matched[t].data / np.float32(t), dark.matched[t].sources
        else:
            rate, sources = (dark.data if dark.rate else dark.data / np.float32(dark.exptime or 1)
                             ), dark.sources
        median = float(np.nanmedian(rate))
        spread = robust_sigma(rate)
        threshold = max(median + hot_sigma * spread, hot_factor * median)
        hot = ~(rate <= threshold)  # NaN counts as hot
        shape = rate
        _note(notes, f"hot: dark rate above {threshold:.4g} ADU/s (median {median:.4g}, robust "
                     f"sigma {spread:.4g}): {int(hot.sum())}")
    if flat is not None:
        level = local_level(flat.data)
        ratio = flat.data / level
        dead = ~((ratio >= low_response) & (ratio <= high_response))
        shape = flat.data
        sources = sources + flat.sources
        _note(notes, f"dead or low-response: flat outside {low_response:g}-{high_response:g} "
                     f"of its local level: {int(dead.sum())}")
    bad = np.zeros(shape.shape, bool)
    for part in (hot, dead):
        if part is not None:
            if part.shape != bad.shape:
                raise EngineValueError(f"the dark ({hot.shape}) and flat ({dead.shape}) differ "
                                       f"in shape")
            bad |= part
    data = np.where(bad, np.uint8(PixelFlag.BAD), np.uint8(0)).astype(np.uint8)
    cards = (("HOTPIX", int(hot.sum()) if hot is not None else -1, "hot pixels (-1: no dark)"),
             ("DEADPIX", int(dead.sum()) if dead is not None else -1,
              "dead or low-response pixels (-1: no flat)"),
             ("BADPIX", int(bad.sum()), "pixels flagged"),
             ("HOTSIG", float(hot_sigma), "hot: above median + HOTSIG robust sigma"),
             ("HOTFAC", float(hot_factor), "hot: and above HOTFAC times the median"))
    return Master("bad_pixels", data, 0, filter=None if flat is None else flat.filter,
                  notes=tuple(notes), cards=cards, sources=sources)


