"""Calibrating a run cube chunk by chunk of frames into calibrated Zarr cubes.

Peak memory is one chunk of raw frames and its outputs (float32 data, uint8 PixelFlag mask,
optional float32 uncertainty), whatever the run's length; the cubes are written through
engine.io.cube (temporary name, then renamed), so a killed run leaves nothing a rerun trusts.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.calibration.masters import _BUDGET, DarkModel, Master, _note
from engine.errors import EngineValueError
from engine.flags import PixelFlag
from engine.io.layout import mask_cube_path, sigma_cube_path
from engine.kernels.calibrate import calibrate_frames
from engine.progress import progress

__all__ = ["CalibratedRun", "calibrate_cube"]

log = logging.getLogger("engine.calibration")

@dataclass
class CalibratedRun:
    """What `calibrate_cube` produced: paths of the Zarr cubes (data float32, mask uint8 of
    PixelFlag bits, uncertainty float32 when asked), or the arrays themselves when no path was
    given; and the notes."""

    data: object
    mask: object
    uncertainty: object = None
    notes: list[str] = field(default_factory=list)
    frames: int = 0


def calibrate_cube(cube, exptimes, *, bias: Master | np.ndarray | None = None,
                   dark: DarkModel | None = None, flat: Master | np.ndarray | None = None,
                   bad_pixels: Master | np.ndarray | None = None, saturation: float | None = None,
                   trim=None, overscan=None, overscan_method: str = "median", nonlinearity=None,
                   gain: float | None = None, read_noise: float | None = None,
                   uncertainty: bool = False, out: str | os.PathLike | None = None,
                   attributes: dict | None = None, chunk_bytes: int = _BUDGET,
                   threads: int | None = None, frame_bad_pixels=None) -> CalibratedRun:
    """Calibrate a run cube (frames, rows, columns) chunk by chunk of frames.

    exptimes: each frame's exposure time, s. saturation: the raw level at or above which a
    pixel is flagged SATURATED, one for the run or one per frame (None or NaN: the kernel's
    default for that frame). The masters may each be None (then skipped, and said in the
    notes). out: the calibrated cube's path (NAME.zarr); the mask goes beside it as
    NAME_mask.zarr (and the uncertainty as NAME_sigma.zarr), written through engine.io.cube
    (temporary name, then renamed). Without `out` the results are returned as arrays (small
    cubes only). Peak memory: about `chunk_bytes` of raw frames plus their outputs (float32 and
    uint8), whatever the run's length. frame_bad_pixels: a (frames, rows, columns) cube of the
    raw frames' own bad-pixel masks (nonzero = bad; e.g. an observatory's BPM extension), flagged
    BAD in the mask frame by frame.
    """
    notes: list[str] = []
    times, levels = _check_run(cube, exptimes, saturation, frame_bad_pixels)
    nframes, ny, nx = cube.shape
    trim_box = (0, ny, 0, nx) if trim is None else tuple(int(v) for v in trim)
    shape = (trim_box[1] - trim_box[0], trim_box[3] - trim_box[2])
    bias_data, flat_data, bad_data = _master_arrays(bias, dark, flat, bad_pixels, notes)
    darks = _darks_by_exposure(dark, times, notes)
    item = np.dtype(cube.dtype).itemsize + 4 + 1 + (4 if uncertainty else 0)
    per_chunk = max(1, min(nframes, chunk_bytes // max(1, ny * nx * item)))
    writers, arrays = _destinations(out, shape, nframes, uncertainty, attributes, notes)
    settings = dict(bias=bias_data, flat=flat_data, bad_pixels=bad_data, trim=trim,
                    overscan=overscan, overscan_method=overscan_method,
                    nonlinearity=nonlinearity, gain=gain, read_noise=read_noise, threads=threads)
    label = f"calibrate {(attributes or {}).get('run_id', '')}".rstrip()
    try:
        with ThreadPoolExecutor(max_workers=2) as pool, progress(total=nframes, desc=label) as bar:
            pending = []
            for f0 in range(0, nframes, per_chunk):
                f1 = min(nframes, f0 + per_chunk)
                raw = np.asarray(cube[f0:f1])
                chunk_t = np.round(times[f0:f1], 3)
                results = [np.empty((f1 - f0,) + shape, np.float32),
                           np.empty((f1 - f0,) + shape, np.uint8)]
                if uncertainty:
                    results.append(np.empty((f1 - f0,) + shape, np.float32))
                _calibrate_chunk(raw, chunk_t, levels[f0:f1], darks, results, settings)
                if frame_bad_pixels is not None:
                    r0, r1, c0, c1 = trim_box
                    own = np.asarray(frame_bad_pixels[f0:f1])[:, r0:r1, c0:c1] != 0
                    results[1][own] |= np.uint8(PixelFlag.BAD)
                bar.update(f1 - f0)
                if arrays is not None:
                    for target, result in zip(arrays, results):
                        target[f0:f1] = result
                    continue
                for writer, result in zip(writers, results):
                    for i in range(f1 - f0):
                        pending.append(pool.submit(writer.write, writer.reserve(), result[i]))
                # Bound the memory: wait for this chunk's writes before reading the next one.
                for future in pending:
                    future.result()
                pending = []
        if writers:
            paths = [writer.commit() for writer in writers]
            return CalibratedRun(paths[0], paths[1], paths[2] if uncertainty else None, notes,
                                 nframes)
        return CalibratedRun(arrays[0], arrays[1], arrays[2] if uncertainty else None, notes,
                             nframes)
    except BaseException:
        for writer in writers:
            writer.abort()
        raise


def _check_run(cube, exptimes, saturation, frame_bad_pixels) -> tuple[np.ndarray, np.ndarray]:
    """(exposure times, saturation level per frame, NaN for the kernel's default), checked
    against the cube's shape."""
    if cube.ndim != 3 or 0 in cube.shape:
        raise EngineValueError(f"a run cube must be (frames, rows, columns), got {cube.shape}")
    nframes = cube.shape[0]
    if frame_bad_pixels is not None and tuple(frame_bad_pixels.shape) != tuple(cube.shape):
        raise EngineValueError(f"the frames' bad-pixel masks {tuple(frame_bad_pixels.shape)} do "
                               f"not match the cube {tuple(cube.shape)}")
    times = np.asarray(exptimes, dtype=np.float64).ravel()
    if times.shape != (nframes,) or not np.all(np.isfinite(times)):
        raise EngineValueError(f"need {nframes} finite exposure times, got {times.size}")
    levels = np.array(np.broadcast_to(np.asarray(
        np.nan if saturation is None else saturation, dtype=np.float64), (nframes,)))
    return times, levels


def _master_arrays(bias, dark, flat, bad_pixels, notes: list[str]) -> tuple:
    """(bias, flat, bad pixels) as arrays or None. The bias takes the dark model's zero-exposure
    level: its intercept when there is no bias, its offset when there is. Missing masters are
    noted."""
    bias_data = bias.data if isinstance(bias, Master) else bias
    if bias_data is None and dark is not None and dark.intercept is not None:
        bias_data = dark.intercept
        _note(notes, "no bias: the dark fit's intercept stands in for it")
    if dark is not None and dark.offset is not None and bias_data is not None:
        bias_data = bias_data + dark.offset
    flat_data = flat.data if isinstance(flat, Master) else flat
    bad_data = bad_pixels.data if isinstance(bad_pixels, Master) else bad_pixels
    for label, present in (("bias", bias_data is not None or (dark is not None
                                                                and dark.includes_bias)),
                           ("dark", dark is not None), ("flat", flat_data is not None)):
        if not present:
            _note(notes, f"no {label}: calibrated without it")
    return bias_data, flat_data, bad_data


def _darks_by_exposure(dark, times, notes: list[str]) -> dict[float, tuple[np.ndarray, float]]:
    """The dark and its scale for each distinct exposure time (1 ms), noting any stand-in."""
    darks: dict[float, tuple[np.ndarray, float]] = {}
    if dark is not None:
        for t in sorted(set(np.round(times, 3))):
            array, scale, text = dark.for_exposure(float(t))
            darks[float(t)] = (array, scale)
            if text:
                _note(notes, text)
    return darks


def _destinations(out, shape, nframes: int, uncertainty: bool, attributes,
                  notes: list[str]) -> tuple[list, list | None]:
    """(cube writers for data, mask and uncertainty under `out`, None) or, without `out`,
    ([], the arrays to fill)."""
    from engine.io.cube import CubeWriter

    if out is None:
        arrays = [np.empty((nframes,) + shape, np.float32), np.empty((nframes,) + shape, np.uint8)]
        if uncertainty:
            arrays.append(np.empty((nframes,) + shape, np.float32))
        return [], arrays
    out = Path(out)
    attrs = dict(attributes or {})
    attrs["calibration_notes"] = list(notes)
    writers = [CubeWriter(out, shape, np.float32, nframes, attrs),
               CubeWriter(mask_cube_path(out), shape, np.uint8, nframes,
                          {"flags": "engine.flags.PixelFlag"})]
    if uncertainty:
        writers.append(CubeWriter(sigma_cube_path(out), shape, np.float32,
                                  nframes, {"unit": "adu, 1 sigma"}))
    return writers, None


def _calibrate_chunk(raw, chunk_t, chunk_levels, darks, results, settings: dict) -> None:
    """Calibrate a chunk of raw frames into results (data, mask[, uncertainty]): frames of one
    exposure time and saturation level share a dark, its scale and the level."""
    n = raw.shape[0]
    key = list(zip(chunk_t, np.nan_to_num(chunk_levels, nan=-1.0)))
    edges = [0] + [i for i in range(1, n) if key[i] != key[i - 1]]
    for a, b in zip(edges, edges[1:] + [n]):
        dark_array, scale = darks.get(float(chunk_t[a]), (None, None))
        level = chunk_levels[a]
        calibrate_frames(raw[a:b], dark=dark_array, dark_scale=scale,
                         saturation=None if np.isnan(level) else float(level),
                         out=results[0][a:b], mask=results[1][a:b],
                         uncertainty=results[2][a:b] if len(results) > 2 else False,
                         **settings)
