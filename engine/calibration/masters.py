"""Master frames from calibration stacks: bias, dark (rate or exposure-matched), flat, bad pixels.

- `master_bias`: the sigma-clipped mean of the bias frames (after overscan and trim when given).
- `master_dark`: the darks grouped by exposure time, each group combined with the bias removed;
  then a linearity test over the exposure times decides between a dark-current rate (ADU/s,
  scaled by each light's exposure) and exposure-matched darks (CMOS amp glow often does not
  scale). The evidence is kept (`DarkModel.evidence`) and goes into the FITS headers.
- `master_flat`: per filter, each flat with bias and dark removed and divided by its own median,
  combined, then normalised to a median of 1.
- `bad_pixel_mask`: hot pixels from the dark rate, dead and low-response pixels from the flat.
- `check_frames`: which calibration frames fit the lights (shape, binning, temperature).

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
from typing import Mapping, Sequence

import numpy as np

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
_BLOCK = 32  # pixels a side of the blocks whose medians the dark linearity test compares


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


@dataclass(frozen=True)
class DarkModel:
    """How to remove dark current: a rate scaled by exposure, or darks matched in exposure.

    mode: 'rate' or 'matched'. rate: the dark-current master (ADU/s, bias removed), present in
    'rate' mode and whenever two or more exposure times allow a fit. matched: exposure time ->
    combined dark (bias removed; with the bias level in it when no bias was given).
    includes_bias: the matched darks still hold the bias (no bias frames were given).
    intercept: without bias frames but with two or more exposure times, the fitted dark at
    zero exposure, per pixel: it stands in for the bias.
    offset: in 'rate' mode with a bias, what the darks hold at zero exposure beyond the master
    bias (a bias level that drifted between the bias frames and the darks, or glow that grows
    from a floor), smoothed over 32 x 32-pixel blocks so that it adds no pixel noise (float32
    map, or None); the dark to subtract from a light of exposure t is offset + rate * t.
    evidence: the linearity test, exposure by exposure (see `master_dark`). notes: what a user
    should know.
    """

    mode: str
    rate: Master | None
    matched: Mapping[float, Master]
    includes_bias: bool
    evidence: Mapping[str, object]
    notes: tuple[str, ...] = ()
    intercept: np.ndarray | None = None
    offset: np.ndarray | None = None

    def for_exposure(self, exptime: float) -> tuple[np.ndarray, float, str | None]:
        """(dark, scale, note) to subtract from a light of `exptime` s: dark * scale."""
        if self.mode == "rate":
            return self.rate.data, float(exptime), None
        for t, master in self.matched.items():
            if abs(t - exptime) <= 1e-3 * max(t, 1.0):
                return master.data, 1.0, None
        if self.rate is not None and not self.includes_bias:
            return (self.rate.data, float(exptime),
                    f"no dark of {exptime:g} s: the dark rate is scaled although the darks "
                    f"failed the linearity test")
        nearest = min(self.matched, key=lambda t: abs(t - exptime))
        master = self.matched[nearest]
        if self.includes_bias:
            return (master.data, 1.0,
                    f"no dark of {exptime:g} s and no bias to scale one: the {nearest:g} s dark "
                    f"is subtracted as it is")
        return (master.data, exptime / nearest,
                f"no dark of {exptime:g} s: the {nearest:g} s dark is scaled by "
                f"{exptime / nearest:.4g}")

    def masters(self) -> list[Master]:
        if self.mode == "rate":
            return [self.rate]
        return [self.matched[t] for t in sorted(self.matched)]


def _note(notes: list[str], text: str) -> None:
    notes.append(text)
    log.info(text)


# ---------------------------------------------------------------------------------------------
# Checking frames against the lights (or each other)
# ---------------------------------------------------------------------------------------------


def _binning(record: Mapping) -> tuple[int, int]:
    bx, by = record.get("binning_x"), record.get("binning_y")
    return (int(bx) if bx else 1, int(by) if by else 1)


def _temperature(record: Mapping) -> float | None:
    for key in ("set_temperature", "temperature"):
        value = record.get(key)
        if value is not None and math.isfinite(float(value)):
            return float(value)
    return None


def check_frames(records: Sequence[Mapping], reference: Mapping | None = None, *,
                 temperature_tolerance: float = 2.0, saturation: float | None = None,
                 level_tolerance: float = 0.1) -> tuple[list[int], list[tuple[str, str]]]:
    """Which calibration frames may calibrate frames like `reference`.

    records: one mapping per frame with 'path', 'shape' (rows, columns), 'binning_x',
    'binning_y', 'temperature' and/or 'set_temperature' (C) - the frames table's columns.
    reference: the same fields for the lights (default: the first record). A frame is rejected
    when its shape or binning differs, or when its sensor temperature (the set point when both
    have one, else the measured one) is more than `temperature_tolerance` C away; a frame or
    reference without a temperature is not judged on it. Records with a 'median_adu' (the
    frames table's) are also judged on their level (`implausible_levels`), against
    `saturation` (raw ADU; default: each record's 'saturation').
    Returns (accepted indices, [(path, reason), ...] for the rejected).
    """
    if not records:
        return [], []
    reference = reference if reference is not None else records[0]
    ref_shape = tuple(reference.get("shape") or ())
    ref_binning = _binning(reference)
    ref_temperature = _temperature(reference)
    accepted, rejected = [], []
    levels = implausible_levels(records, saturation=saturation, tolerance=level_tolerance)
    for index, record in enumerate(records):
        path = str(record.get("path", f"frame {index}"))
        shape = tuple(record.get("shape") or ())
        reasons = [levels[index]] if index in levels else []
        if ref_shape and shape and shape != ref_shape:
            reasons.append(f"shape {shape[0]}x{shape[1]} differs from {ref_shape[0]}x"
                           f"{ref_shape[1]}")
        if _binning(record) != ref_binning:
            b = _binning(record)
            reasons.append(f"binning {b[0]}x{b[1]} differs from {ref_binning[0]}x"
                           f"{ref_binning[1]}")
        temperature = _temperature(record)
        if (temperature is not None and ref_temperature is not None
                and abs(temperature - ref_temperature) > temperature_tolerance):
            gap = abs(temperature - ref_temperature)
            reasons.append(f"sensor at {temperature:.1f} C, {gap:.1f} C from "
                           f"{ref_temperature:.1f} C (tolerance {temperature_tolerance:g} C)")
        if reasons:
            rejected.append((path, "; ".join(reasons)))
        else:
            accepted.append(index)
    return accepted, rejected


def _level(record: Mapping) -> float | None:
    value = record.get("median_adu")
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def implausible_levels(records: Sequence[Mapping], *, saturation: float | None = None,
                       tolerance: float = 0.1) -> dict[int, str]:
    """Calibration frames whose level says they are broken: index -> reason.

    records carry 'median_adu' (the stored frame's median; frames without one are not judged),
    'frame_type', 'exptime', 'dtype' and 'saturation'. A frame is implausible when
    - its median reaches 90 % of the saturation level (`saturation`, else the record's): a
      saturated flat or a light-struck bias;
    - integer data have a median of 0: an empty readout (cameras add an offset so that the
      read noise is never clipped at zero);
    - a bias or dark lies further from the median of its siblings (the same type and, for
      darks, exposure; 3 or more of them) than 5 robust sigmas (1.4826 MAD) and than
      `tolerance` of that median. Flats are normalised one by one and their level follows the
      twilight, so they are judged on the first two tests only.
    """
    found: dict[int, str] = {}
    groups: dict[tuple, list[int]] = {}
    for index, record in enumerate(records):
        level = _level(record)
        if level is None:
            continue
        limit = saturation if saturation is not None else record.get("saturation")
        dtype = str(record.get("dtype") or "")
        if limit is not None and math.isfinite(float(limit)) and level >= 0.9 * float(limit):
            found[index] = f"median {level:.0f} ADU is at saturation ({float(limit):.0f})"
        elif level <= 0 and dtype.startswith(("uint", "int")):
            found[index] = f"median {level:.0f} ADU: an empty (all-zero) readout"
        elif record.get("frame_type") in ("bias", "dark"):
            key = (record["frame_type"], round(float(record.get("exptime") or 0.0), 3))
            groups.setdefault(key, []).append(index)
    for (frame_type, _), members in groups.items():
        if len(members) < 3:
            continue
        values = np.array([_level(records[i]) for i in members])
        centre = float(np.median(values))
        spread = 1.4826 * float(np.median(np.abs(values - centre)))
        allowed = max(5.0 * spread, tolerance * abs(centre))
        for i, value in zip(members, values):
            if abs(value - centre) > allowed:
                found[i] = (f"median {value:.0f} ADU is far from its {frame_type} siblings' "
                            f"{centre:.0f} (allowed +-{allowed:.0f})")
    return found


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


def _block_medians(image: np.ndarray, size: int = _BLOCK) -> np.ndarray:
    ny, nx = image.shape
    by, bx = ny // size, nx // size
    if by == 0 or bx == 0:
        return np.array([[np.nanmedian(image)]])
    blocks = image[:by * size, :bx * size].reshape(by, size, bx, size)
    return np.nanmedian(blocks.transpose(0, 2, 1, 3).reshape(by, bx, size * size), axis=2)


def _smooth(image: np.ndarray, size: int = _BLOCK) -> np.ndarray:
    """Block medians of `image`, interpolated bilinearly between block centres (float32)."""
    ny, nx = image.shape
    blocks = _block_medians(image, size)
    by, bx = blocks.shape
    cy = (np.arange(by) + 0.5) * (ny / by)
    cx = (np.arange(bx) + 0.5) * (nx / bx)
    rows = np.array([np.interp(np.arange(nx), cx, row) for row in blocks])
    full = np.array([np.interp(np.arange(ny), cy, column) for column in rows.T]).T
    return full.astype(np.float32)


def _block_noise(image: np.ndarray, size: int = _BLOCK) -> float:
    """The noise of a block median of `image`, measured: half the robust spread, over blocks,
    of the difference between the medians of a block's even and odd rows. Smooth structure
    (glow, gradients) cancels in the difference; row-to-row noise (banding) does not."""
    ny, nx = image.shape
    by, bx = ny // size, nx // size
    if by == 0 or bx == 0 or size < 2:
        return _robust_sigma(image) * 1.2533 / max(1, size)
    blocks = image[:by * size, :bx * size].reshape(by, size, bx, size).transpose(0, 2, 1, 3)
    even = np.nanmedian(blocks[:, :, 0::2, :].reshape(by, bx, -1), axis=2)
    odd = np.nanmedian(blocks[:, :, 1::2, :].reshape(by, bx, -1), axis=2)
    return _robust_sigma((even - odd).ravel()) / 2.0


def _robust_sigma(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan")
    return float(1.482602218505602 * np.median(np.abs(values - np.median(values))))


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
    times = np.asarray(exptimes, dtype=np.float64).ravel()
    if times.size == stack.shape[0] and len(frames) != stack.shape[0]:
        times = times[frames]
    if times.size != len(frames):
        raise EngineValueError(f"{times.size} exposure times for {len(frames)} dark frames")
    if not np.all(np.isfinite(times)) or np.any(times <= 0):
        raise EngineValueError("dark exposure times must be finite and > 0")
    bias_data = bias.data if isinstance(bias, Master) else bias
    if bias_data is None:
        _note(notes, "no bias frames: the darks keep the bias level")
    groups: dict[float, list[int]] = {}
    for frame, t in zip(frames, np.round(times, 3)):
        groups.setdefault(float(t), []).append(frame)
    exposures = sorted(groups)
    combined: dict[float, np.ndarray] = {}
    for t in exposures:
        group_notes: list[str] = []
        combined[t], _ = combine_stack(
            stack, frames=groups[t], trim=trim, overscan=overscan,
            overscan_method=overscan_method, nonlinearity=nonlinearity, bias=bias_data,
            sigma=sigma, maxiters=maxiters, cenfunc=cenfunc, budget_bytes=budget_bytes,
            threads=threads, notes=group_notes)
        notes.extend(f"{t:g} s darks: {text}" for text in group_notes)
    common = dict(binning=binning, temperature=_median_or_none(temperatures), camera=camera,
                  filter=None)
    weights = np.array([len(groups[t]) for t in exposures], dtype=np.float64)
    t_arr = np.array(exposures)
    rate = intercept = None
    if len(exposures) >= 2:
        # Per pixel, the weighted least-squares line dark(t) = intercept + rate * t.
        sw, st, stt = weights.sum(), np.sum(weights * t_arr), np.sum(weights * t_arr ** 2)
        sy = sum(w * combined[t].astype(np.float64) for w, t in zip(weights, t_arr))
        sty = sum(w * t * combined[t].astype(np.float64) for w, t in zip(weights, t_arr))
        det = sw * stt - st * st
        rate = ((sw * sty - st * sy) / det).astype(np.float32)
        intercept = ((stt * sy - st * sty) / det).astype(np.float32)
    elif bias_data is not None:
        t = exposures[0]
        rate = (combined[t] / np.float32(t)).astype(np.float32)
    offset = None
    evidence: dict[str, object] = {"exptimes": exposures,
                                   "frames": [len(groups[t]) for t in exposures]}
    if rate is not None:
        median_rate = float(np.nanmedian(rate))
        evidence["median_rate_adu_per_s"] = median_rate
        if gain:
            evidence["median_rate_e_per_s"] = median_rate * float(gain)
    if intercept is not None:
        blocks = _block_medians(intercept)
        evidence["intercept_median_adu"] = float(np.nanmedian(intercept))
        evidence["intercept_block_range_adu"] = [float(np.nanmin(blocks)),
                                                 float(np.nanmax(blocks))]
    testable = len(exposures) >= 3
    passed = None
    if testable:
        rows = []
        passed = True
        for t in exposures:
            # The line's residuals, in blocks. Each exposure's frame-wide level (which jitters
            # with the bias level from frame to frame) is taken out: what must scale is the
            # pattern, pixel by pixel, as amp glow often does not.
            residual = combined[t] - (intercept + rate.astype(np.float64) * t)
            blocks = _block_medians(residual)
            level = float(np.nanmedian(blocks))
            spread = _block_noise(residual)
            signal = float(np.nanmedian(combined[t] - intercept))
            allowed = max(significance * spread, tolerance * abs(signal), 1.0)
            worst = float(np.nanmax(np.abs(blocks - level)))
            ok = worst <= allowed
            passed = passed and ok
            rows.append({"exptime": t, "frames": len(groups[t]), "signal_adu": signal,
                         "level_adu": level, "worst_block_residual_adu": worst,
                         "allowed_adu": allowed, "ok": ok})
        evidence["groups"] = rows
    evidence["tested"] = testable
    evidence["linear"] = passed
    slope_text = ""
    if "median_rate_adu_per_s" in evidence:
        slope_text = f"; median dark current {evidence['median_rate_adu_per_s']:.4g} ADU/s"
        if "median_rate_e_per_s" in evidence:
            slope_text += f" = {evidence['median_rate_e_per_s']:.4g} e-/s/pixel"
    if testable and passed:
        mode = "rate"
        _note(notes, f"darks scale linearly with exposure over {exposures[0]:g}-{exposures[-1]:g}"
                     f" s (block residuals within allowance): dark-current rate used{slope_text}")
    elif testable:
        mode = "matched"
        bad = [r for r in evidence["groups"] if not r["ok"]]
        _note(notes, "darks do not scale with exposure ("
              + ", ".join(f"{r['exptime']:g} s off by {r['worst_block_residual_adu']:.3g} ADU "
                          f"> {r['allowed_adu']:.3g}" for r in bad)
              + "): exposure-matched darks used")
    elif bias_data is not None:
        mode = "rate"
        _note(notes, f"darks of {len(exposures)} exposure time{'s' if len(exposures) > 1 else ''}"
                     f" ({', '.join(f'{t:g}' for t in exposures)} s): linearity untested (that "
                     f"needs three), the dark is scaled as a rate{slope_text}")
    else:
        mode = "matched"
        _note(notes, "darks without bias frames and fewer than three exposure times: used as "
                     "exposure-matched darks that still hold the bias")
    model_intercept = None
    if mode == "rate" and intercept is not None:
        if bias_data is not None:
            offset = _smooth(intercept)
            low, high = evidence["intercept_block_range_adu"]
            evidence["offset_adu"] = evidence["intercept_median_adu"]
            _note(notes, f"at zero exposure the darks sit {evidence['offset_adu']:.2f} ADU above "
                         f"the master bias (blocks {low:.2f} to {high:.2f}): not dark current; "
                         f"the dark model keeps it, smoothed over 32-pixel blocks")
        else:
            model_intercept = intercept
            _note(notes, "no bias frames: the darks' fitted level at zero exposure stands in "
                         "for the bias")
    cards = _combine_cards(sigma, maxiters, cenfunc, True) + (
        ("DARKMODE", mode.upper(), "RATE: ADU/s scaled by exposure; MATCHED: per exposure"),
        ("LINTEST", "PASS" if passed else ("FAIL" if passed is False else "UNTESTED"),
         "dark linearity over exposure times"))
    if "median_rate_adu_per_s" in evidence:
        cards += (("DCRATE", round(evidence["median_rate_adu_per_s"], 6),
                   "median dark current, ADU/s/pixel"),)
    if "median_rate_e_per_s" in evidence:
        cards += (("DCRATEE", round(evidence["median_rate_e_per_s"], 6),
                   "median dark current, e-/s/pixel"),)
    if offset is not None:
        cards += (("DCOFFSET", round(evidence["offset_adu"], 4),
                   "median of the model's 0 s level (extension OFFSET), ADU"),)
    history = tuple(("HISTORY", f"{r['exptime']:g} s x{r['frames']}: signal "
                     f"{r['signal_adu']:.2f} ADU, worst block residual "
                     f"{r['worst_block_residual_adu']:.2f} <= {r['allowed_adu']:.2f}: "
                     f"{'ok' if r['ok'] else 'FAIL'}", "")
                    for r in evidence.get("groups", ()))
    rate_master = None
    if rate is not None:
        rate_master = Master("dark", rate, len(frames), rate=True, notes=tuple(notes),
                             cards=cards + history, sources=_sources(names, frames),
                             extensions=() if offset is None else (("OFFSET", offset),),
                             **common)
    matched = {t: Master("dark", combined[t], len(groups[t]), exptime=t, notes=tuple(notes),
                         cards=cards + history, sources=_sources(names, groups[t]), **common)
               for t in exposures}
    return DarkModel(mode, rate_master, matched, bias_data is None and mode == "matched",
                     evidence, tuple(notes), model_intercept, offset)


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
    dark_data = None
    if dark is not None:
        if times is None:
            raise EngineValueError("a dark needs the flats' exposure times")
        unique = sorted(set(np.round(times, 3)))
        if len(unique) > 1 and dark.mode == "matched":
            _note(notes, "flats of several exposures with matched darks: each group's dark is "
                         "taken for the longest exposure's")
        dark_data, scale, text = dark.for_exposure(float(unique[-1]))
        if text:
            _note(notes, f"flat: {text}")
        if dark.mode == "rate":
            dark_times = times
        else:
            dark_times = np.full(len(frames), scale)
        if dark.includes_bias and bias_data is None:
            _note(notes, "the flats' dark still holds the bias, which it removes with it")
    else:
        dark_times = None
        _note(notes, "no dark: the flats keep their dark current")
    levels = _frame_levels(stack, frames, trim=trim, overscan=overscan,
                           overscan_method=overscan_method, nonlinearity=nonlinearity,
                           bias=bias_data, dark=dark_data, exptimes=dark_times, threads=threads)
    keep = []
    for i, k in enumerate(frames):
        label = names[k] if names else f"frame {k}"
        if saturation is not None:
            raw_median = float(np.median(np.asarray(stack[k, ::8, ::8])))
            if raw_median >= 0.9 * saturation:
                _note(notes, f"{os.path.basename(str(label))}: left out, median {raw_median:.0f} "
                             f"ADU is near saturation ({saturation:.0f})")
                continue
        if not levels[i] >= min_level:
            _note(notes, f"{os.path.basename(str(label))}: left out, calibrated median "
                         f"{levels[i]:.1f} ADU is below {min_level:g}")
            continue
        keep.append(i)
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


def _local_level(image: np.ndarray, size: int = _BLOCK) -> np.ndarray:
    """Block medians of `image`, expanded back to its shape (edge blocks repeat)."""
    ny, nx = image.shape
    blocks = _block_medians(image, size)
    rows = np.minimum(np.arange(ny) // size, blocks.shape[0] - 1)
    cols = np.minimum(np.arange(nx) // size, blocks.shape[1] - 1)
    return blocks[rows][:, cols]


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
        spread = _robust_sigma(rate)
        threshold = max(median + hot_sigma * spread, hot_factor * median)
        hot = ~(rate <= threshold)  # NaN counts as hot
        shape = rate
        _note(notes, f"hot: dark rate above {threshold:.4g} ADU/s (median {median:.4g}, robust "
                     f"sigma {spread:.4g}): {int(hot.sum())}")
    if flat is not None:
        level = _local_level(flat.data)
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


