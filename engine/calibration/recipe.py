"""A light run's calibration recipe, and its raw frames calibrated in memory as they are read.

The calibrate stage builds the masters once; what each light frame then needs (which bias, which
dark and its scale for the frame's exposure, flat, bad pixels, saturation level, trim and
overscan, gain and read noise) is a `CalibrationRecipe`, written as RUN.recipe.npz (NumPy's
archive, read back without pickle). The photometry stage reads raw blocks and calibrates each one
with the same kernel (engine.kernels.calibrate) while it is in cache, through `CalibratedFrames`:
every raw pixel is read once and no calibrated cube need be written (`[calibration]
write_calibrated`). The numbers are those a calibrated cube would hold, bit for bit. On the GPU
(`CalibratedFrames.on_device`, the photometry stage's device 'cuda') each raw block is calibrated
on the device by engine.kernels.calibrate_cuda and stays there to be measured.
"""

from __future__ import annotations

import itertools
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.calibration.masters import DarkModel, Master, _note
from engine.errors import EngineFileError, EngineValueError
from engine.flags import PixelFlag
from engine.io.atomic import atomic_path
from engine.kernels.calibrate import calibrate_frames

__all__ = ["CalibratedFrames", "CalibrationRecipe", "DeviceCalibratedFrames", "load_recipe"]

_FORMAT = "recipe-1"


def _data(master):
    return master.data if isinstance(master, Master) else master


def _section(values) -> tuple[int, ...] | None:
    """A section (trim, overscan) as a tuple of ints; None stays None."""
    return None if values is None else tuple(int(v) for v in values)


def _bias_level(bias_data, dark: DarkModel | None, notes: list[str]):
    """The level to subtract before the dark: the bias master, or else the dark fit's intercept,
    plus the dark model's offset when it has one."""
    if bias_data is None and dark is not None and dark.intercept is not None:
        bias_data = dark.intercept
        _note(notes, "no bias: the dark fit's intercept stands in for it")
    if dark is not None and dark.offset is not None and bias_data is not None:
        bias_data = bias_data + dark.offset
    return bias_data


def _darks_by_exposure(dark: DarkModel | None, times: np.ndarray, notes: list[str]):
    """(distinct dark arrays, each frame's index into them or -1, each frame's dark scale): one
    dark and scale per distinct exposure time (to the ms); a dark rate is one array for all."""
    darks: list[np.ndarray] = []
    index = np.full(times.shape, -1, dtype=np.int64)
    scale = np.zeros(times.shape)
    if dark is None:
        return darks, index, scale
    rounded = np.round(times, 3)
    for t in sorted(set(rounded)):
        array, factor, text = dark.for_exposure(float(t))
        if text:
            _note(notes, text)
        known = next((k for k, d in enumerate(darks) if d is array), None)
        if known is None:
            darks.append(array)
            known = len(darks) - 1
        chosen = rounded == t
        index[chosen], scale[chosen] = known, factor
    return darks, index, scale


@dataclass
class CalibrationRecipe:
    """How to calibrate each frame of one light run (masters already made).

    exptimes, saturation (NaN: the kernel's default), dark_index (-1: no dark) and dark_scale
    are per frame; darks holds the distinct dark arrays. raw_shape is (rows, columns) of a raw
    frame; trim, overscan, overscan_method, nonlinearity, gain and read_noise are as
    engine.kernels.calibrate.calibrate_frames takes them.
    """

    raw_shape: tuple[int, int]
    exptimes: np.ndarray
    saturation: np.ndarray
    dark_index: np.ndarray
    dark_scale: np.ndarray
    bias: np.ndarray | None = None
    darks: list[np.ndarray] = field(default_factory=list)
    flat: np.ndarray | None = None
    bad_pixels: np.ndarray | None = None
    trim: tuple | None = None
    overscan: tuple | None = None
    overscan_method: str = "median"
    nonlinearity: tuple | None = None
    gain: float | None = None
    read_noise: float | None = None
    notes: list[str] = field(default_factory=list)

    @classmethod
    def build(cls, raw_shape, exptimes, *, bias: Master | np.ndarray | None = None,
              dark: DarkModel | None = None, flat: Master | np.ndarray | None = None,
              bad_pixels: Master | np.ndarray | None = None, saturation=None, trim=None,
              overscan=None, overscan_method: str = "median", nonlinearity=None,
              gain: float | None = None, read_noise: float | None = None) -> CalibrationRecipe:
        """The recipe for frames of `raw_shape` with these exposure times (s) and masters (each
        may be None: skipped, and said in `notes`). saturation: one level or one per frame."""
        notes: list[str] = []
        times = np.asarray(exptimes, dtype=np.float64).ravel()
        if times.size == 0 or not np.all(np.isfinite(times)):
            raise EngineValueError(f"need finite exposure times, got {times.size}")
        levels = np.array(np.broadcast_to(np.asarray(
            np.nan if saturation is None else saturation, dtype=np.float64), times.shape))
        bias_data = _bias_level(_data(bias), dark, notes)
        flat_data = _data(flat)
        for label, present in (("bias", bias_data is not None or (dark is not None
                                                                    and dark.includes_bias)),
                               ("dark", dark is not None), ("flat", flat_data is not None)):
            if not present:
                _note(notes, f"no {label}: calibrated without it")
        darks, index, scale = _darks_by_exposure(dark, times, notes)
        return cls(raw_shape=tuple(int(v) for v in raw_shape), exptimes=times, saturation=levels,
                   dark_index=index, dark_scale=scale, bias=bias_data, darks=darks,
                   flat=flat_data, bad_pixels=_data(bad_pixels), trim=_section(trim),
                   overscan=_section(overscan), overscan_method=overscan_method,
                   nonlinearity=None if nonlinearity is None else tuple(nonlinearity),
                   gain=gain, read_noise=read_noise, notes=notes)

    @property
    def frames(self) -> int:
        return int(self.exptimes.size)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of a calibrated frame (the trimmed raw frame)."""
        if self.trim is None:
            return self.raw_shape
        return (self.trim[1] - self.trim[0], self.trim[3] - self.trim[2])

    def apply(self, raw: np.ndarray, first: int, out: np.ndarray, mask: np.ndarray,
              uncertainty: np.ndarray | bool = False, threads: int | None = None) -> None:
        """Calibrate raw frames first, first + 1, ... of the run into `out` (float32) and `mask`
        (uint8 PixelFlag bits), and `uncertainty` when given an array."""
        for a, b, arguments in self.kernel_calls(first, raw.shape[0]):
            calibrate_frames(
                raw[a:b], **arguments, out=out[a:b], mask=mask[a:b],
                uncertainty=uncertainty[a:b] if isinstance(uncertainty, np.ndarray) else False,
                threads=threads)

    def kernel_calls(self, first: int, count: int):
        """The calibration of frames first..first + count - 1 as kernel calls: (a, b, the
        masters and settings of calibrate_frames) for frames a..b - 1 of the block."""
        if first < 0 or first + count > self.frames:
            raise EngineValueError(f"frames {first}..{first + count - 1} are not in the run's "
                                   f"{self.frames}")
        span = slice(first, first + count)
        # Frames sharing a dark, its scale and a saturation level go to the kernel together:
        # the kernel folds bias + dark * scale once per call, so each frame's numbers are the
        # same however the run is cut into blocks.
        key = list(zip(self.dark_index[span], self.dark_scale[span],
                       np.nan_to_num(self.saturation[span], nan=-1.0)))
        edges = [0] + [i for i in range(1, count) if key[i] != key[i - 1]] + [count]
        calls = []
        for a, b in itertools.pairwise(edges):
            dark = self.dark_index[first + a]
            level = self.saturation[first + a]
            calls.append((a, b, {
                "bias": self.bias, "dark": self.darks[dark] if dark >= 0 else None,
                "dark_scale": self.dark_scale[first + a] if dark >= 0 else None,
                "flat": self.flat, "bad_pixels": self.bad_pixels,
                "saturation": None if np.isnan(level) else float(level), "trim": self.trim,
                "overscan": self.overscan, "overscan_method": self.overscan_method,
                "nonlinearity": self.nonlinearity, "gain": self.gain,
                "read_noise": self.read_noise}))
        return calls

    def flag_own_bad_pixels(self, own, mask: np.ndarray) -> None:
        """Flag BAD in `mask` the pixels that the raw frames' own masks `own` (raw shape,
        nonzero = bad; e.g. an observatory's BPM extension) mark."""
        r0, r1, c0, c1 = self.trim or (0, self.raw_shape[0], 0, self.raw_shape[1])
        mask[np.asarray(own)[:, r0:r1, c0:c1] != 0] |= np.uint8(PixelFlag.BAD)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the recipe to `path` (NAME.recipe.npz) atomically."""
        meta = {"format": _FORMAT, "raw_shape": self.raw_shape, "trim": self.trim,
                "overscan": self.overscan, "overscan_method": self.overscan_method,
                "nonlinearity": self.nonlinearity, "gain": self.gain,
                "read_noise": self.read_noise, "notes": self.notes, "darks": len(self.darks)}
        arrays = {"exptimes": self.exptimes, "saturation": self.saturation,
                  "dark_index": self.dark_index, "dark_scale": self.dark_scale,
                  "meta": np.array(json.dumps(meta))}
        for name in ("bias", "flat", "bad_pixels"):
            if getattr(self, name) is not None:
                arrays[name] = np.asarray(getattr(self, name))
        for k, dark in enumerate(self.darks):
            arrays[f"dark_{k}"] = np.asarray(dark)
        # Written member by member with a fixed time stamp (np.savez stamps the clock): the
        # same recipe gives the same bytes, so the manifest does not redo the photometry.
        with atomic_path(path, suffix=".npz") as temporary, \
                zipfile.ZipFile(temporary, "w", zipfile.ZIP_STORED) as archive:
            for name, array in arrays.items():
                member = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                with archive.open(member, "w", force_zip64=True) as handle:
                    np.lib.format.write_array(handle, np.asarray(array), allow_pickle=False)
        return Path(path)


def load_recipe(path: str | os.PathLike) -> CalibrationRecipe:
    """A recipe written by `CalibrationRecipe.save`; EngineFileError naming the file when it is
    missing, damaged or of another format."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(str(archive["meta"]))
            if meta.get("format") != _FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, not {_FORMAT!r}")
            arrays = {name: archive[name] for name in archive.files}
            return CalibrationRecipe(
                raw_shape=tuple(meta["raw_shape"]), exptimes=arrays["exptimes"],
                saturation=arrays["saturation"], dark_index=arrays["dark_index"],
                dark_scale=arrays["dark_scale"], bias=arrays.get("bias"),
                darks=[arrays[f"dark_{k}"] for k in range(meta["darks"])],
                flat=arrays.get("flat"), bad_pixels=arrays.get("bad_pixels"),
                trim=None if meta["trim"] is None else tuple(meta["trim"]),
                overscan=None if meta["overscan"] is None else tuple(meta["overscan"]),
                overscan_method=meta["overscan_method"],
                nonlinearity=None if meta["nonlinearity"] is None else tuple(meta["nonlinearity"]),
                gain=meta["gain"], read_noise=meta["read_noise"], notes=list(meta["notes"]))
    except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
        # Missing, truncated, damaged or foreign alike: the file cannot be trusted.
        raise EngineFileError(f"{path}: not a readable calibration recipe "
                              f"({type(exc).__name__}: {exc})") from None


class CalibratedFrames:
    """A raw run cube seen through its recipe: indexed like the calibrated cube (frames[k],
    frames[a:b], float32), each block calibrated when read; `.mask` is the matching PixelFlag
    cube. The last block is kept, so reading the data and then the mask of a block calibrates
    it once. frame_bad_pixels: the raw frames' own bad-pixel masks (nonzero = bad), flagged BAD.
    """

    ndim = 3
    dtype = np.dtype(np.float32)

    def __init__(self, raw, recipe: CalibrationRecipe, frame_bad_pixels=None,
                 threads: int | None = None):
        if raw.ndim != 3 or tuple(raw.shape[1:]) != recipe.raw_shape \
                or raw.shape[0] != recipe.frames:
            raise EngineValueError(f"the recipe is for {recipe.frames} frames of "
                                   f"{recipe.raw_shape}, the cube is {tuple(raw.shape)}")
        if frame_bad_pixels is not None and tuple(frame_bad_pixels.shape) != tuple(raw.shape):
            raise EngineValueError(f"the frames' bad-pixel masks {tuple(frame_bad_pixels.shape)}"
                                   f" do not match the cube {tuple(raw.shape)}")
        self.raw = raw
        self.recipe = recipe
        self.frame_bad_pixels = frame_bad_pixels
        self.threads = threads
        self.shape = (recipe.frames,) + recipe.shape
        self.mask = _MaskView(self)
        self._last: tuple[tuple[int, int], np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.shape[0]

    def _span(self, key) -> tuple[int, int, bool]:
        if isinstance(key, slice) and key.step in (None, 1):
            start, stop, _ = key.indices(self.shape[0])
            return start, max(start, stop), False
        if isinstance(key, (int, np.integer)):
            index = int(key) + (self.shape[0] if key < 0 else 0)
            if not 0 <= index < self.shape[0]:
                raise IndexError(f"frame {key} of {self.shape[0]}")
            return index, index + 1, True
        raise EngineValueError(f"calibrated frames are read by frame or by a run of frames, "
                               f"not {key!r}")

    def block(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(data float32, mask uint8) of frames start..stop-1, calibrated now or kept."""
        if self._last is None or self._last[0] != (start, stop):
            raw = np.asarray(self.raw[start:stop])
            data = np.empty((stop - start,) + self.recipe.shape, np.float32)
            mask = np.empty(data.shape, np.uint8)
            if stop > start:
                self.recipe.apply(raw, start, data, mask, threads=self.threads)
                if self.frame_bad_pixels is not None:
                    self.recipe.flag_own_bad_pixels(self.frame_bad_pixels[start:stop], mask)
            self._last = ((start, stop), data, mask)
        return self._last[1], self._last[2]

    def __getitem__(self, key):
        start, stop, single = self._span(key)
        data = self.block(start, stop)[0]
        return data[0] if single else data

    def __array__(self, dtype=None, copy=None):
        data = self.block(0, self.shape[0])[0]
        return data if dtype is None else data.astype(dtype)

    def on_device(self) -> DeviceCalibratedFrames:
        """The same frames calibrated on the GPU (numba.cuda must find one)."""
        return DeviceCalibratedFrames(self.raw, self.recipe, self.frame_bad_pixels, self.threads)


class DeviceCalibratedFrames(CalibratedFrames):
    """CalibratedFrames calibrated on the GPU (engine.kernels.calibrate_cuda): each raw block
    goes to the device once and is calibrated there, with the recipe's masters uploaded on the
    first block and kept for the run. The calibrated block and its flags stay on the device for
    the photometry kernel (`device_block`); the host gets one copy of them per block, because
    registration, cosmic-ray detection and PSF fits read the pixels on the CPU. Pixels equal
    CalibratedFrames' to float32 rounding (the GPU neither folds the masters nor multiplies by
    1 / flat), flags exactly.
    """

    def __init__(self, raw, recipe: CalibrationRecipe, frame_bad_pixels=None,
                 threads: int | None = None):
        super().__init__(raw, recipe, frame_bad_pixels, threads)
        self._masters: dict[int, dict] = {}  # by dark index: the masters on the device
        # The last block on the device: (start, stop), data, mask, and the mask as it is there.
        self._device: tuple | None = None

    def block(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        if self._last is None or self._last[0] != (start, stop):
            self._last = ((start, stop),) + self._calibrate_on_device(start, stop)
        return self._last[1], self._last[2]

    def _calibrate_on_device(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        from numba import cuda

        from engine.kernels.calibrate_args import prepare
        from engine.kernels.calibrate_cuda import calibrate_streamed, upload_masters

        raw = np.asarray(self.raw[start:stop])
        shape = (stop - start,) + self.recipe.shape
        data, mask = cuda.device_array(shape, np.float32), cuda.device_array(shape, np.uint8)
        for a, b, arguments in self.recipe.kernel_calls(start, stop - start):
            # prepare's host outputs are never written (nor their pages touched).
            job = prepare(raw[a:b], **arguments, out=None, mask=True, uncertainty=False,
                          dtype=np.float32)
            dark = int(self.recipe.dark_index[start + a])
            if dark not in self._masters:
                self._masters[dark] = upload_masters(job, next(iter(self._masters.values()),
                                                               None))
            calibrate_streamed(job, self._masters[dark], data[a:b], mask[a:b])
        host_data, as_on_device = data.copy_to_host(), mask.copy_to_host()
        host_mask = as_on_device.copy()
        if self.frame_bad_pixels is not None:
            self.recipe.flag_own_bad_pixels(self.frame_bad_pixels[start:stop], host_mask)
        self._device = ((start, stop), data, mask, as_on_device)
        return host_data, host_mask

    def device_block(self, start: int, stop: int, flags: np.ndarray):
        """(data, mask) of frames start..stop - 1 on the device, the mask made equal to the
        host's `flags` (uint8, the block's shape: the calibration's flags plus what the host
        added) by sending only the pixels that differ."""
        from engine.kernels.calibrate_cuda import set_pixel_flags

        self.block(start, stop)
        _, data, mask, as_on_device = self._device
        changed = np.flatnonzero(flags != as_on_device)
        set_pixel_flags(mask, changed, flags.ravel()[changed])
        as_on_device.ravel()[changed] = flags.ravel()[changed]
        return data, mask


class _MaskView:
    """The PixelFlag cube of a CalibratedFrames, indexed the same way."""

    ndim = 3
    dtype = np.dtype(np.uint8)

    def __init__(self, frames: CalibratedFrames):
        self._frames = frames
        self.shape = frames.shape

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        start, stop, single = self._frames._span(key)
        mask = self._frames.block(start, stop)[1]
        return mask[0] if single else mask
