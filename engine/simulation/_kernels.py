"""Compiled loops of the simulator's detector: photon noise, charge bleeding, digitisation.

They live here rather than in `engine.kernels` because only the simulator draws noise; no
reduction stage uses them. Each is made by the engine's one JIT factory.

Random numbers: every draw comes from NumPy's generator of the frame (uniforms for the
Poisson counts, ziggurat normals for the large counts and the read noise), drawn before the
kernels run, so the kernels are pure functions of their inputs and a frame is the same bit for bit
whatever the thread count. The drivers trust their inputs (C-contiguous arrays of matching
shapes, as `Detector.expose` passes them).
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from engine.kernels._jit import jit

__all__ = ["NORMAL_FROM_MEAN", "bleed_columns", "digitise_rows", "photon_count", "photon_counts"]


#: From this mean on, a photon count is drawn from the normal approximation with the Poisson
#: skewness kept (Cornish-Fisher): its mean, variance and third moment are the Poisson ones, and
#: the distribution's remaining error is O(1/mean). Below it, exact inversion of the Poisson CDF,
#: whose cost grows with the mean.
NORMAL_FROM_MEAN = 50.0

# 1 / k for the inversion's recurrence (a multiplication is several times cheaper than a
# division in its dependent chain); the search never passes k = 1000.
_RECIPROCALS = 1.0 / np.arange(1.0, 1001.0)


@jit
def photon_count(mean, uniform, normal):
    """One Poisson(mean) count from a uniform in [0, 1) and a standard normal draw.

    mean < NORMAL_FROM_MEAN: the smallest k with CDF(k) > uniform (exact inversion);
    otherwise round(mean + sqrt(mean) z + (z^2 - 1) / 6), at least 0. A mean <= 0 gives 0.
    """
    if mean <= 0.0:
        return 0.0
    if mean >= NORMAL_FROM_MEAN:
        count = math.floor(mean + math.sqrt(mean) * normal + (normal * normal - 1.0) / 6.0 + 0.5)
        return max(count, 0.0)
    k = 0
    term = math.exp(-mean)
    cdf = term
    # The cap only guards against a CDF that rounding stops short of `uniform`.
    while cdf <= uniform and k < 1000:
        term *= mean * _RECIPROCALS[k]
        cdf += term
        k += 1
    return float(k)


@jit(parallel=True)
def photon_counts(light_e, dark_e, uniforms, normals, out):
    """out = Poisson(light_e + dark_e) as float32, one `photon_count` per pixel.

    light_e, dark_e: float64 (rows, columns); uniforms, normals, out: float32, same shape.
    """
    ny, nx = light_e.shape
    for j in prange(ny):
        for i in range(nx):
            out[j, i] = photon_count(light_e[j, i] + dark_e[j, i], uniforms[j, i], normals[j, i])
    return out


@jit(parallel=True)
def digitise_rows(electrons, normals, read_noise_e, full_well, inv_gain, bias_structure,
                  bias_level, max_native, adc_scale, out):
    """out = clip(round((min(e, full_well) + read_noise * n) / gain + bias), 0, max) * scale.

    electrons: (rows, columns) int64 or float32 collected charge; normals: float32 standard
    normal draws of the same shape; bias_structure: float32 (native ADU); out: uint16.
    """
    ny, nx = electrons.shape
    for j in prange(ny):
        for i in range(nx):
            e = float(electrons[j, i])
            if e > full_well:
                e = full_well
            v = (e + read_noise_e * normals[j, i]) * inv_gain + bias_structure[j, i] + bias_level
            v = math.floor(v + 0.5)
            if v < 0.0:
                v = 0.0
            elif v > max_native:
                v = max_native
            out[j, i] = np.uint16(np.uint32(v) * np.uint32(adc_scale))
    return out


@jit
def bleed_columns(electrons, full_well):
    """Clip at `full_well`, moving the excess charge up and down its column (in place).

    Half of a pixel's excess goes each way; a pixel that fills passes the rest on; charge
    that reaches the edge of the chip is lost. electrons: 2-D float32 or float64 array.
    """
    ny, nx = electrons.shape
    excess = np.zeros(ny)
    for i in range(nx):
        any_full = False
        for j in range(ny):
            v = electrons[j, i]
            if v > full_well:
                excess[j] = 0.5 * (v - full_well)
                electrons[j, i] = full_well
                any_full = True
            else:
                excess[j] = 0.0
        if not any_full:
            continue
        carry = 0.0
        for j in range(ny):            # upwards
            v = electrons[j, i] + carry
            carry = 0.0
            if v > full_well:
                carry = v - full_well
                v = full_well
            electrons[j, i] = v
            carry += excess[j]
        carry = 0.0
        for j in range(ny - 1, -1, -1):  # downwards
            v = electrons[j, i] + carry
            carry = 0.0
            if v > full_well:
                carry = v - full_well
                v = full_well
            electrons[j, i] = v
            carry += excess[j]
    return electrons
