"""Block statistics of an image: medians over square blocks of pixels, their noise, and maps
made from them. The dark linearity test compares block medians (a block's median is robust to
hot pixels and cosmic rays and still sees amp glow), the dark model's zero-exposure offset is a
smoothed block map, and the bad-pixel mask judges the flat against its block level.
"""

from __future__ import annotations

import numpy as np

__all__ = ["BLOCK", "block_medians", "block_noise", "local_level", "robust_sigma", "smooth"]

BLOCK = 32  # pixels a side of the blocks


def block_medians(image: np.ndarray, size: int = BLOCK) -> np.ndarray:
    """The median of each whole size x size block (one block for an image smaller than that)."""
    ny, nx = image.shape
    by, bx = ny // size, nx // size
    if by == 0 or bx == 0:
        return np.array([[np.nanmedian(image)]])
    blocks = image[:by * size, :bx * size].reshape(by, size, bx, size)
    return np.nanmedian(blocks.transpose(0, 2, 1, 3).reshape(by, bx, size * size), axis=2)


def smooth(image: np.ndarray, size: int = BLOCK) -> np.ndarray:
    """Block medians of `image`, interpolated bilinearly between block centres (float32)."""
    ny, nx = image.shape
    blocks = block_medians(image, size)
    by, bx = blocks.shape
    cy = (np.arange(by) + 0.5) * (ny / by)
    cx = (np.arange(bx) + 0.5) * (nx / bx)
    rows = np.array([np.interp(np.arange(nx), cx, row) for row in blocks])
    full = np.array([np.interp(np.arange(ny), cy, column) for column in rows.T]).T
    return full.astype(np.float32)


def block_noise(image: np.ndarray, size: int = BLOCK) -> float:
    """The noise of a block median of `image`, measured: half the robust spread, over blocks,
    of the difference between the medians of a block's even and odd rows. Smooth structure
    (glow, gradients) cancels in the difference; row-to-row noise (banding) does not."""
    ny, nx = image.shape
    by, bx = ny // size, nx // size
    if by == 0 or bx == 0 or size < 2:
        return robust_sigma(image) * 1.2533 / max(1, size)
    blocks = image[:by * size, :bx * size].reshape(by, size, bx, size).transpose(0, 2, 1, 3)
    even = np.nanmedian(blocks[:, :, 0::2, :].reshape(by, bx, -1), axis=2)
    odd = np.nanmedian(blocks[:, :, 1::2, :].reshape(by, bx, -1), axis=2)
    return robust_sigma((even - odd).ravel()) / 2.0


def robust_sigma(values: np.ndarray) -> float:
    """1.4826 times the median absolute deviation of the finite values (NaN when none)."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan")
    return float(1.482602218505602 * np.median(np.abs(values - np.median(values))))


def local_level(image: np.ndarray, size: int = BLOCK) -> np.ndarray:
    """Block medians of `image`, expanded back to its shape (edge blocks repeat)."""
    ny, nx = image.shape
    blocks = block_medians(image, size)
    rows = np.minimum(np.arange(ny) // size, blocks.shape[0] - 1)
    cols = np.minimum(np.arange(nx) // size, blocks.shape[1] - 1)
    return blocks[rows][:, cols]
