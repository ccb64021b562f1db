"""Compiled loops of the simulator's detector: photon noise, charge bleeding, digitisation.

They live here rather than in `engine.kernels` because only the simulator draws noise; no
reduction stage uses them. Each is made by the engine's one JIT factory.

Random numbers: Poisson counts come from Numba's generator re-seeded at the start of every row
(seed + row), so a frame is the same bit for bit whatever the thread count; the read noise comes
from NumPy's ziggurat normals, drawn before `digitise_rows` runs (faster than Numba's). The
drivers trust their inputs (C-contiguous arrays of matching shapes, as `Detector.expose` passes
them).
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from engine.kernels._jit import jit

__all__ = ["bleed_columns", "digitise_rows", "poisson_rows"]


@jit(parallel=True)
def poisson_rows(light_e, dark_e, seed, out):
    """out = Poisson(light_e + dark_e) as float32, each row from Numba's generator seeded with
    seed + row (the same numbers whatever the thread count).

    light_e, dark_e: float64 (rows, columns) expected electrons; out: float32, same shape.
    """
    ny, nx = light_e.shape
    for j in prange(ny):
        np.random.seed(seed + j)
        for i in range(nx):
            lam = light_e[j, i] + dark_e[j, i]
            out[j, i] = np.random.poisson(lam) if lam > 0.0 else 0.0
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
