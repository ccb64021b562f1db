"""Benchmark family: the GPU path (numba.cuda) against the engine's CPU path, in the same run.

`gpu-calibrate`: `calibrate_frames_cuda` on 16 raw 2048² uint16 frames (3 of 256² when quick),
raw to the device and float32 + mask back, against `calibrate_frames` on every core.
`gpu-aperture`: `aperture_sums_cuda` on 1,000 stars x 16 frames of 2048² float32 (the photometry
family's workload: 3 radii, clipped annulus, neighbours masked), frames streamed from the host,
against the C++ `aperture_sums` on every core.
`gpu-night`: `reduce` of the simulator's `large` night (`tiny` when quick) with device 'cuda'
against device 'cpu', each into a fresh folder; the check compares the photometry tables' fluxes.
On 'cuda' each raw block goes to the device once, is calibrated there (masters uploaded once per
run) and measured there; the calibrated block comes back once for registration and cosmic rays.
Its float32 pixels differ from the CPU calibration's in the last bit, so fluxes agree to 1e-5.

Bandwidth: the calibrate and aperture rows count their work in bytes (`unit` 'bytes': what the
device reads and writes of the frames), so `engine_units_per_s` is the achieved bandwidth; the
size column names the device and its peak (memory clock x bus width from numba.cuda, else the
table below). `python -m bench.bench_gpu [--quick]` prints each row's fraction of that peak.

Without a usable GPU every row is skipped (the harness's MissingToolError), and nothing here
imports numba.cuda until a row runs: the suite's CPU rows never pay for it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from .bench_calibrate import _apply_setup, _engine_apply
from .bench_photometry import _ANNULUS, _RADII, _frames
from .harness import Benchmark, Case, max_abs_difference, register
from engine.errors import MissingToolError

#: Peak memory bandwidth (bytes/s) of devices whose clock numba cannot read.
KNOWN_PEAKS = {"NVIDIA H100 80GB HBM3": 3.35e12, "NVIDIA H200": 4.8e12,
               "NVIDIA A100-SXM4-80GB": 2.04e12}


def device_peak() -> tuple[str, float]:
    """(device name, peak memory bandwidth in bytes/s): double data rate x memory clock x bus
    width as the driver reports them, else KNOWN_PEAKS. MissingToolError without a GPU."""
    from engine.device import cuda_device_name

    name = cuda_device_name()
    if name is None or name == "simulator":
        raise MissingToolError("no usable CUDA device: the GPU rows are skipped")
    from numba import cuda

    device = cuda.get_current_device()
    try:
        peak = 2.0 * device.MEMORY_CLOCK_RATE * 1e3 * device.GLOBAL_MEMORY_BUS_WIDTH / 8.0
    except (AttributeError, cuda.CudaSupportError):
        peak = KNOWN_PEAKS.get(name, float("nan"))
    return name, peak


def _on(size: str) -> str:
    name, peak = device_peak()
    return f"{size}; {name}, peak {peak / 1e12:.2f} TB/s"


def _calibrate_setup(quick: bool, rng: np.random.Generator) -> Case:
    case = _apply_setup(quick, rng)
    inputs = case.inputs
    moved = inputs["raw"].nbytes + inputs["out"].nbytes + inputs["mask"].nbytes
    return Case(inputs=inputs, size=_on(case.size), units=moved, unit="bytes")


def _gpu_calibrate(inputs, threads: int):
    from engine.kernels.calibrate_cuda import calibrate_frames_cuda

    return calibrate_frames_cuda(inputs["raw"], bias=inputs["bias"], dark=inputs["rate"],
                                 dark_scale=30.0, flat=inputs["flat"], bad_pixels=inputs["bad"],
                                 out=inputs["out"], mask=inputs["mask"]).data.copy()


def _cpu_calibrate(inputs):
    return _engine_apply(dict(inputs, out=np.empty_like(inputs["out"]),
                              mask=np.empty_like(inputs["mask"])), threads=None)


def _aperture_setup(quick: bool, rng: np.random.Generator) -> Case:
    n_frames, n_stars, size = (4, 200, 512) if quick else (16, 1000, 2048)
    frames, x, y = _frames(rng, n_frames, n_stars, size)
    return Case(inputs=dict(frames=frames, x=x, y=y),
                size=_on(f"{n_stars} stars x {n_frames} frames of {size}²"),
                units=frames.nbytes, unit="bytes")


def _aperture(measure, inputs, **kwargs):
    return measure(inputs["frames"], inputs["x"], inputs["y"], _RADII, annulus=_ANNULUS,
                   mask_radius=float(_RADII[-1]), blend_radius=float(_RADII[-1]), **kwargs)


def _gpu_aperture(inputs, threads: int):
    from engine.kernels.photometry_cuda import aperture_sums_cuda

    return _aperture(aperture_sums_cuda, inputs)


def _cpu_aperture(inputs):
    from engine.cext import aperture_sums

    return _aperture(aperture_sums, inputs, threads=None)


def _sums_difference(gpu, cpu) -> float:
    """Largest relative difference of sums and backgrounds; inf when a flag differs."""
    if not np.array_equal(gpu["flags"], cpu["flags"]):
        return float("inf")
    with np.errstate(divide="ignore", invalid="ignore"):
        return max(max_abs_difference(gpu[name] / np.abs(cpu[name]), np.sign(cpu[name]))
                   for name in ("sum", "background"))


def _night_setup(quick: bool, rng: np.random.Generator) -> Case:
    import json

    from engine.simulation import simulate

    preset = "tiny" if quick else "large"
    size = _on(f"the simulator's {preset} night")
    folder = Path(tempfile.mkdtemp(prefix="bench-gpu-night-"))
    simulate(folder / "raw", preset=preset, seed=int(rng.integers(1 << 30)))
    truth = json.loads((folder / "raw" / "truth.json").read_text())
    target = truth["target"]
    first = next(s for s in truth["runs"][0]["star_positions"] if s["id"] == target["id"])
    raw_bytes = sum(p.stat().st_size for p in (folder / "raw").rglob("*.fits"))
    return Case(inputs=dict(folder=folder, target=(target["ra_hms"], target["dec_dms"]),
                            target_xy=(first["x"], first["y"])),
                size=size, units=raw_bytes, unit="bytes")


def _reduce_on(device: str, inputs):
    import pyarrow.parquet as pq

    from engine.pipeline import reduce

    out = Path(tempfile.mkdtemp(prefix=f"{device}-", dir=inputs["folder"]))
    reduce([inputs["folder"] / "raw"], out, target=inputs["target"],
           target_xy=inputs["target_xy"], device=device)
    table = pq.read_table(out / "photometry.parquet").sort_by(
        [("run_id", "ascending"), ("frame", "ascending"), ("star", "ascending"),
         ("radius", "ascending"), ("method", "ascending")])
    return table.column("flux").to_numpy()


def _flux_difference(gpu, cpu) -> float:
    if gpu.shape != cpu.shape:
        return float("inf")
    with np.errstate(divide="ignore", invalid="ignore"):
        return max_abs_difference(gpu / np.abs(cpu), np.sign(cpu))


register(Benchmark(
    name="gpu-calibrate", anchor="engine cpu", requires=("numba",), setup=_calibrate_setup,
    run_engine=_gpu_calibrate, run_anchor=_cpu_calibrate, discrepancy=max_abs_difference,
    tolerance=1e-3, rounds=5, quick_rounds=2,
    notes="GPU calibrate_frames_cuda (host to device and back) vs calibrate_frames on every "
          "core; units are bytes read and written"))

register(Benchmark(
    name="gpu-aperture", anchor="engine cpu", requires=("numba",), setup=_aperture_setup,
    run_engine=_gpu_aperture, run_anchor=_cpu_aperture, discrepancy=_sums_difference,
    tolerance=1e-9, rounds=3, quick_rounds=2,
    notes="GPU aperture_sums_cuda (frames streamed from the host) vs the C++ aperture_sums on "
          "every core; units are frame bytes"))

register(Benchmark(
    name="gpu-night", anchor="engine cpu", requires=("numba",), setup=_night_setup,
    run_engine=lambda inputs, threads: _reduce_on("cuda", inputs),
    run_anchor=lambda inputs: _reduce_on("cpu", inputs), discrepancy=_flux_difference,
    tolerance=1e-5, rounds=1, quick_rounds=1,
    notes="reduce --device cuda (raw blocks calibrated and measured on the GPU) vs --device cpu "
          "on a simulated night; units are raw FITS bytes"))


def main(argv=None) -> int:
    """Runs the GPU rows and prints each one's achieved bandwidth as a fraction of the peak."""
    import argparse

    from .harness import run_benchmarks

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    records = run_benchmarks(quick=args.quick, only=["gpu-calibrate", "gpu-aperture", "gpu-night"])
    for record in records:
        if record["skipped"] or record["name"] == "gpu-night":
            continue
        _, peak = device_peak()
        achieved = record["engine_units_per_s"]
        print(f"{record['name']}: {achieved / 1e9:.1f} GB/s, {achieved / peak:.1%} of the "
              f"device's {peak / 1e12:.2f} TB/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
