"""Colour (Bayer) sensors: one monochrome frame from a raw colour-filter-array frame.

Two ways, both on 2x2 cells (so the result has half the rows and columns; an odd last row or
column is dropped):
- 'green': the mean of the cell's two green pixels. Green is the channel closest to V and has
  twice the pixels; this is what AAVSO's DSLR photometry uses.
- 'superpixel': the sum of the cell's four pixels (R + 2G + B), the most signal per cell.

`pattern` is the colour of the pixels at [0, 0], [0, 1], [1, 0], [1, 1] of the array as read
(e.g. 'RGGB'); `engine.io.headers` moves the header's pattern there (offsets, row order).
Results are float32: exact for sums of four 16-bit values, and halves for the green mean.

Saturation is a property of the raw pixels: averaging two greens (or summing a red that
saturated with three that did not) gives a value below the level and hides it. So `extract`
takes the raw saturation level and raises every cell holding a saturated raw pixel to the
extracted frame's level (`extracted_saturation`), where calibration's check flags it.
The extracted frame's gain and read noise differ from the raw pixels': the green mean holds
the electrons of two pixels in one value (gain x 2, read noise x sqrt 2), the superpixel sum
those of four at the raw gain (read noise x 2) (`extracted_gain`, `extracted_read_noise`).
"""

from __future__ import annotations

import numpy as np

from engine.errors import EngineValueError

__all__ = ["BAYER_MODES", "extract", "extracted_gain", "extracted_read_noise",
           "extracted_saturation", "extracted_section"]

BAYER_MODES = ("green", "superpixel")
_PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")


def extract(data: np.ndarray, pattern: str, mode: str, saturation: float | None = None
            ) -> np.ndarray:
    """The monochrome (rows // 2, columns // 2) float32 frame of a raw Bayer frame; with a raw
    `saturation` level, a cell with any raw pixel at or above it is set to at least
    `extracted_saturation(saturation, mode)`."""
    out = _combine(data, pattern, mode)
    if saturation is not None:
        rows, columns = out.shape[0] * 2, out.shape[1] * 2
        hit = np.asarray(data[:rows, :columns]) >= saturation
        cells = hit[0::2, 0::2] | hit[0::2, 1::2] | hit[1::2, 0::2] | hit[1::2, 1::2]
        level = np.float32(extracted_saturation(saturation, mode))
        out[cells] = np.maximum(out[cells], level)
    return out


def extracted_saturation(level: float, mode: str) -> float:
    """The extracted frame's saturation level for a raw one."""
    return float(level) * (4.0 if mode == "superpixel" else 1.0)


def extracted_gain(gain: float, mode: str) -> float:
    """e- per extracted ADU for a raw gain (e-/ADU): x2 for the green mean."""
    return float(gain) * (1.0 if mode == "superpixel" else 2.0)


def extracted_read_noise(read_noise: float, mode: str) -> float:
    """Read noise (e-) of one extracted pixel: the raw pixels' added in quadrature."""
    return float(read_noise) * (2.0 if mode == "superpixel" else np.sqrt(2.0))


def _combine(data: np.ndarray, pattern: str, mode: str) -> np.ndarray:
    if pattern not in _PATTERNS:
        raise EngineValueError(f"Bayer pattern must be one of {_PATTERNS}, got {pattern!r}")
    if mode not in BAYER_MODES:
        raise EngineValueError(f"Bayer mode must be one of {BAYER_MODES}, got {mode!r}")
    if data.ndim != 2 or data.shape[0] < 2 or data.shape[1] < 2:
        raise EngineValueError(f"a Bayer frame must be 2-D and at least 2 x 2, got {data.shape}")
    rows, columns = data.shape[0] // 2 * 2, data.shape[1] // 2 * 2
    cells = [(0, 0), (0, 1), (1, 0), (1, 1)]
    planes = [data[r:rows:2, c:columns:2] for r, c in cells]
    if mode == "green":
        greens = [planes[k] for k, colour in enumerate(pattern) if colour == "G"]
        out = greens[0].astype(np.float32)
        out += greens[1]
        out *= np.float32(0.5)
        return out
    out = planes[0].astype(np.float32)
    for plane in planes[1:]:
        out += plane
    return out


def extracted_section(section: tuple[int, int, int, int] | None, raw_shape: tuple[int, int]
                      ) -> tuple[int, int, int, int] | None:
    """A raw-frame section (row_start, row_stop, column_start, column_stop) in the extracted
    frame's pixels: the cells it touches, within the extracted frame."""
    if section is None:
        return None
    rows, columns = raw_shape[0] // 2, raw_shape[1] // 2
    r0, r1, c0, c1 = section
    r0, r1 = min(r0 // 2, rows), min((r1 + 1) // 2, rows)
    c0, c1 = min(c0 // 2, columns), min((c1 + 1) // 2, columns)
    if r1 <= r0 or c1 <= c0:
        return None
    return r0, r1, c0, c1
