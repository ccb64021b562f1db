"""Benchmark family: calibration apply and the sigma-clipped combine of masters.

`calibrate`: (raw - bias - dark rate * t) / flat with the pixel-flag mask, on a cube of 16 raw
2048² uint16 frames (3 of 256² when quick), by `engine.kernels.calibrate.calibrate_frames`
(float32 out, uint8 mask), against `ccdproc.ccd_process` frame by frame with the same master bias,
dark (a 1 s dark scaled to the exposure) and flat, which is what a user would otherwise run. The
flat has mean 1 already, so ccdproc's own normalisation by the flat's mean changes nothing.

`calibrate-floor`: the same engine call against the memory-bandwidth floor: a plain
`np.copyto` of as many bytes as the call reads and writes (raw in, float32 and mask out; the
masters, read once per call, are not counted), that is a copy whose source and destination each
hold half of them. The speedup is floor time / engine time: 1 means at the floor, 0.67 means
1.5x the floor. The check holds the engine's first frame against NumPy.

`combine`: the sigma-clipped mean of 30 raw 2048² uint16 frames (256² when quick) against
`ccdproc.combine(..., method='average', sigma_clip=True)` with ccdproc's clipping (mean centre,
standard deviation, 3 sigma, one iteration); the engine runs the same settings.

`combine-astropy`: the same stack with astropy's sigma_clip defaults (median centre, standard
deviation, 3 sigma, 5 iterations) then the mean of what is kept, against
`astropy.stats.sigma_clip(stack, axis=0)` and `numpy.ma.mean`; equal to 1e-6.
"""

from __future__ import annotations

import numpy as np

from .harness import Benchmark, Case, max_abs_difference, register, require
from engine.kernels.calibrate import calibrate_frames
from engine.kernels.combine import sigma_clip_combine

_APPLY = {False: (16, 2048), True: (3, 256)}
_COMBINE = {False: (30, 2048), True: (30, 256)}
_EXPTIME = 30.0


def _apply_setup(quick: bool, rng: np.random.Generator) -> Case:
    n, size = _APPLY[quick]
    shape = (size, size)
    bias = rng.normal(1000.0, 5.0, shape).astype(np.float32)
    rate = rng.uniform(0.0, 0.5, shape).astype(np.float32)
    flat = rng.uniform(0.8, 1.2, shape)
    flat = (flat / flat.mean()).astype(np.float32)
    bad = (rng.random(shape) < 1e-3).astype(np.uint8)
    raw = rng.integers(1100, 40000, (n,) + shape).astype(np.uint16)
    raw[0, :4, :4] = 65535  # a few saturated pixels
    inputs = dict(raw=raw, bias=bias, rate=rate, flat=flat, bad=bad,
                  out=np.empty(raw.shape, np.float32), mask=np.empty(raw.shape, np.uint8))
    return Case(inputs=inputs, size=f"{n} x {size}² uint16", units=n, unit="frames")


def _engine_apply(inputs, threads: int):
    return calibrate_frames(inputs["raw"], bias=inputs["bias"], dark=inputs["rate"],
                            dark_scale=_EXPTIME, flat=inputs["flat"], bad_pixels=inputs["bad"],
                            out=inputs["out"], mask=inputs["mask"], threads=threads).data


def _ccdproc_apply(inputs):
    ccdproc = require("ccdproc")
    from astropy import units as u
    from astropy.nddata import CCDData

    bias = CCDData(inputs["bias"], unit="adu")
    dark = CCDData(inputs["rate"], unit="adu")
    flat = CCDData(inputs["flat"], unit="adu")
    mask = inputs["bad"].astype(bool)
    frames = []
    for raw in inputs["raw"]:
        result = ccdproc.ccd_process(
            CCDData(raw, unit="adu"), master_bias=bias, dark_frame=dark, master_flat=flat,
            bad_pixel_mask=mask, dark_exposure=1.0 * u.s, data_exposure=_EXPTIME * u.s,
            exposure_unit=u.s, dark_scale=True)
        frames.append(result.data)
    return np.stack(frames)


def _floor_setup(quick: bool, rng: np.random.Generator) -> Case:
    case = _apply_setup(quick, rng)
    inputs = case.inputs
    moved = inputs["raw"].nbytes + inputs["out"].nbytes + inputs["mask"].nbytes
    inputs["source"] = np.ones(moved // 2, np.uint8)
    inputs["target"] = np.empty(moved // 2, np.uint8)
    first = (inputs["raw"][0] - (inputs["bias"].astype(np.float64) + _EXPTIME * inputs["rate"])
             ) / inputs["flat"]
    inputs["first_frame"] = first
    return Case(inputs=inputs, size=case.size + f", {moved / 1e6:.0f} MB moved",
                units=case.units, unit=case.unit)


def _copy_floor(inputs):
    np.copyto(inputs["target"], inputs["source"])
    return inputs["first_frame"]


def _first_frame_difference(engine_result, first_frame) -> float:
    return max_abs_difference(engine_result[0], first_frame)


def _combine_setup(quick: bool, rng: np.random.Generator) -> Case:
    n, size = _COMBINE[quick]
    stack = rng.normal(1000.0, 8.0, (n, size, size))
    hits = rng.random(stack.shape) < 2e-3  # cosmic rays and hot pixels
    stack[hits] += rng.uniform(200.0, 20000.0, int(hits.sum()))
    stack = np.clip(np.rint(stack), 0, 65535).astype(np.uint16)
    return Case(inputs=dict(stack=stack), size=f"{n} x {size}² uint16", units=n, unit="frames")


def _engine_combine_ccdproc(inputs, threads: int):
    return sigma_clip_combine(inputs["stack"], cenfunc="mean", maxiters=1, dtype=np.float64,
                              threads=threads).data


def _ccdproc_combine(inputs):
    ccdproc = require("ccdproc")
    from astropy.nddata import CCDData

    frames = [CCDData(frame, unit="adu") for frame in inputs["stack"]]
    return np.asarray(ccdproc.combine(frames, method="average", sigma_clip=True).data)


def _engine_combine(inputs, threads: int):
    return sigma_clip_combine(inputs["stack"], dtype=np.float64, threads=threads).data


def _astropy_combine(inputs):
    stats = require("astropy.stats", "astropy")
    return np.ma.mean(stats.sigma_clip(inputs["stack"], axis=0), axis=0).filled(np.nan)


CALIBRATE = register(Benchmark(
    name="calibrate",
    anchor="ccdproc.ccd_process",
    requires=("ccdproc",),
    setup=_apply_setup,
    run_engine=_engine_apply,
    run_anchor=_ccdproc_apply,
    discrepancy=max_abs_difference,  # ADU, on values up to ~50k in float32
    tolerance=1e-2,
    threaded=True,
    rounds=5,
    notes="bias, dark rate x 30 s, flat, bad pixels and saturation flags; float32 + uint8 out",
))

CALIBRATE_FLOOR = register(Benchmark(
    name="calibrate-floor",
    anchor="np.copyto (memory floor)",
    requires=(),
    setup=_floor_setup,
    run_engine=_engine_apply,
    run_anchor=_copy_floor,
    discrepancy=_first_frame_difference,
    tolerance=1e-2,
    threaded=True,
    rounds=9,
    notes="speedup = floor time / engine time: >= 0.67 is within 1.5x of the floor",
))

COMBINE = register(Benchmark(
    name="combine",
    anchor="ccdproc.combine",
    requires=("ccdproc",),
    setup=_combine_setup,
    run_engine=_engine_combine_ccdproc,
    run_anchor=_ccdproc_combine,
    discrepancy=max_abs_difference,
    tolerance=1e-6,
    threaded=True,
    rounds=3,  # ccdproc takes ~10 s a round at full size
    quick_rounds=3,
    notes="method='average', sigma_clip=True: mean centre, std, 3 sigma, one iteration",
))

COMBINE_ASTROPY = register(Benchmark(
    name="combine-astropy",
    anchor="astropy sigma_clip + ma.mean",
    requires=("astropy.stats",),
    setup=_combine_setup,
    run_engine=_engine_combine,
    run_anchor=_astropy_combine,
    discrepancy=max_abs_difference,
    tolerance=1e-6,
    threaded=True,
    rounds=3,
    notes="astropy's defaults: median centre, std, 3 sigma, 5 iterations; then the mean",
))
