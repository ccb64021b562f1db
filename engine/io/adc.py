"""The camera's analogue-to-digital converter as a raw frame's stored values show it.

`saturation_level(frame)`: the level at which a raw frame's values stop growing. The storage
scale first: the low bits that are always zero (a 12-bit ADC stored x16 writes multiples of 16);
then a value on which pixels pile up near the top (a clip inside the camera) wins; else the full
scale (2^bits - 1) x scale of the smallest of 12, 14 or 16 bits that holds the highest value,
when the frame shows it (a pixel at that ceiling, a scaled storage, or 16 bits). A faint frame
that reaches no ceiling says nothing (None): its camera's level comes from its other frames.
Measured on the frame as stored, before any dtype promotion or Bayer extraction.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ADC_BITS", "saturation_level"]

#: ADC depths the measurement considers.
ADC_BITS = (12, 14, 16)


def saturation_level(frame: np.ndarray) -> tuple[float, str] | None:
    """(level, how it was found) of one raw frame as stored, or None when its values are not
    counts (a float frame that is not whole numbers) or it has no positive value."""
    data = np.asarray(frame)
    if data.dtype.kind == "f":
        finite = data[np.isfinite(data)]
        if finite.size == 0 or not np.array_equal(finite, np.round(finite)) \
                or finite.min() < -2.0 ** 31 or finite.max() > 2.0 ** 32:
            return None
        data = finite.astype(np.int64)
    elif data.dtype.kind not in "iu":
        return None
    highest = int(data.max())
    if highest <= 0:
        return None
    # The storage scale: the low bits every value leaves at zero (at most x16).
    # (OR over the stored dtype: the low bits of a negative value are its two's complement's,
    # as in int64, without a copy of the frame at 8 bytes a pixel.)
    bits_used = int(np.bitwise_or.reduce(data, axis=None)) & 0xF
    scale = 1
    while scale < 16 and bits_used % (2 * scale) == 0:
        scale *= 2
    depth = next((b for b in ADC_BITS if highest // scale <= 2 ** b - 1), None)
    stored = f" stored x{scale}" if scale > 1 else ""
    adc = f"{depth}-bit{stored}" if depth else "beyond a 16-bit ADC"
    piled = _pile_up(data, highest, scale)
    if piled is not None:
        level, count = piled
        return float(level), f"pile-up from {level} ADU ({count} pixels; ADC {adc})"
    if depth is None:
        return float(highest), f"highest value {highest} ({adc})"
    ceiling = (2 ** depth - 1) * scale
    # The depth shows when a pixel reaches the ceiling, when values are stored scaled (a 12-bit
    # ADC written x16), or at 16 bits; a faint frame of a 16-bit camera that stays below 4095
    # shows nothing, and its camera's level comes from its other frames.
    if highest == ceiling or scale > 1 or depth == ADC_BITS[-1]:
        return float(ceiling), f"ADC full scale, {adc} (highest value {highest})"
    return None


def _pile_up(data: np.ndarray, highest: int, scale: int,
             window: int = 64) -> tuple[int, int] | None:
    """(lowest level, pixels) of a bump of values at the top of the histogram, or None.

    The top `window` ADC steps, far above the frame's median, are compared with the density of
    the 256 steps below them: a
    clip (full well, ADC) piles pixels into a few steps, read noise spreads them by a step or
    two; the bump runs down from its peak while its steps hold a tenth of the peak's pixels."""
    top = highest // scale
    native = data // scale if scale > 1 else data
    low = top - window + 1
    if np.median(native.ravel()[::16]) >= low - 256:
        return None  # the bulk of the frame is up there: a bump at the top is no clip
    near = native[native >= low - 256].astype(np.int64)
    counts = np.bincount((near[near >= low] - low).astype(np.int64), minlength=window)
    density = np.count_nonzero(near < low) / 256.0
    peak = int(np.argmax(counts))
    if counts[peak] < 5 or counts[peak] < 10.0 * max(density, 0.5):
        return None
    start = peak
    while start > 0 and counts[start - 1] >= max(2, 0.1 * counts[peak]):
        start -= 1
    return int((low + start) * scale), int(counts[start:].sum())
