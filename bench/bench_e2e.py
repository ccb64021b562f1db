"""Benchmark family: a small night end to end, `python -m engine reduce` against a plain
astropy + photutils reduction of the same frames.

- `e2e`: the simulator's `variable` night on a 650 x 500 CCD in a field of ~400 stars above
  the detection threshold (150 light frames of 30 s, 10 biases, 5 darks, 7 flats, a re-centring
  jump half way). Quick: 40 light frames.
- `e2e-real`: the real SARA WASP-19 frames in ../shared/data/real/sara_raw_calibration (10 raw
  1024 x 1024 lights with a bias, a dark and a flat: the one real set here that is a single
  run with its calibration; the longer SAAO bulge series spans 22 nights, i.e. 22 runs).
  Skipped when the folder is absent.

What is timed is a whole process each: the engine's `reduce` (every star it detects measured at
several radii, registration, ensemble, light curves, plots) in a child process writing into a
fresh folder, against a child process running `_anchor_script` below — the 3-star reduction a
user would otherwise write: read FITS with astropy, subtract the master bias and dark, divide by
the flat, centroid the target and two comparison stars (photutils `centroid_sources`) and
measure them with an aperture and a sky annulus (photutils). The anchor is told where the
stars are on every frame (the simulator's pointing; for the real night fixed positions, found
once outside the timing): it does no registration of its own.

The check before timing: the target's flux relative to the comparisons, each normalised by its
median, from the engine's lightcurves.parquet and from the anchor, frame by frame. Their median
absolute difference must be below the tolerance (a wrong star or a wrong frame order is off by
the target's ~13% variability; the two comparison ensembles differ by well under 1%).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from engine.errors import EngineError, MissingToolError

from .harness import Benchmark, Case, register


def _real_night() -> Path:
    """The real SARA night in ../shared/data beside the checkout: found from the working folder
    (the suite installed as engine.bench, run from the checkout) or from this file (bench/ in
    the checkout); the first candidate when neither holds it."""
    tail = Path("shared") / "data" / "real" / "sara_raw_calibration"
    candidates = [Path.cwd().parent / tail, Path(__file__).resolve().parents[2] / tail]
    return next((path for path in candidates if path.is_dir()), candidates[0])


_REAL_NIGHT = _real_night()
#: Follow every detected star (the default follows the brightest 400).
_SETTINGS = "[photometry]\nmax_stars = 2000\n"

_workspace: Path | None = None


def _scratch() -> Path:
    global _workspace
    if _workspace is None:
        _workspace = Path(tempfile.mkdtemp(prefix="engine-bench-e2e-"))
        atexit.register(shutil.rmtree, _workspace, True)
    return _workspace


# The anchor, run as its own process so that its imports count as the engine's do. It reads a
# JSON job: light files, calibration files by type, each light's star positions (3 stars).
_anchor_script = r'''
import json, sys
import numpy as np
from astropy.io import fits
from photutils.aperture import ApertureStats, CircularAnnulus, CircularAperture, aperture_photometry
from photutils.centroids import centroid_com, centroid_sources

job = json.load(open(sys.argv[1]))

def read(path):
    with fits.open(path) as hdul:
        return hdul[0].data.astype(np.float64), float(hdul[0].header["EXPTIME"])

bias = np.median([read(p)[0] for p in job["bias"]], axis=0) if job["bias"] else 0.0
dark_rate = (np.median([(d - bias) / t for d, t in map(read, job["dark"])], axis=0)
             if job["dark"] else 0.0)
if job["flat"]:
    flats = [d - bias - dark_rate * t for d, t in map(read, job["flat"])]
    flat = np.median([f / np.median(f) for f in flats], axis=0)
else:
    flat = 1.0
relative = []
for path, xy in zip(job["lights"], job["positions"]):
    data, exptime = read(path)
    data = (data - bias - dark_rate * exptime) / flat / exptime
    x, y = centroid_sources(data, [p[0] for p in xy], [p[1] for p in xy], box_size=9,
                            centroid_func=centroid_com)
    xy = np.column_stack([x, y])
    aperture = CircularAperture(xy, r=job["radius"])
    annulus = CircularAnnulus(xy, r_in=job["annulus"][0], r_out=job["annulus"][1])
    sky = ApertureStats(data, annulus).median
    flux = aperture_photometry(data, aperture)["aperture_sum"].value - sky * aperture.area
    relative.append(flux[0] / (flux[1] + flux[2]))
json.dump(relative, open(sys.argv[2], "w"))
'''


def _run(command: list[str], cwd: Path) -> None:
    """Run one child process; its failure, with the end of its output, is an EngineError."""
    environment = dict(os.environ, ENGINE_PROGRESS="0")
    result = subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise EngineError(f"{' '.join(command[:4])} failed ({result.returncode}):\n"
                           f"{result.stdout[-2000:]}{result.stderr[-2000:]}")


def _reduce(night: dict, out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)  # a fresh folder: nothing resumed
    out.mkdir(parents=True)
    target = [] if night["target_xy"] is None else ["--target-xy", *map(str, night["target_xy"])]
    _run([sys.executable, "-m", "engine", "reduce", str(night["raw"]), "--out", str(out),
          *target, "--config", str(night["settings"])], cwd=out)


def _run_engine(night: dict, threads: int) -> np.ndarray:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    out = night["work"] / "engine"
    _reduce(night, out)
    table = pq.read_table(out / "lightcurves.parquet",
                          columns=["role", "time_bjd_tdb", "rel_flux"])
    table = table.filter(pc.equal(table.column("role"), "target")).sort_by("time_bjd_tdb")
    return table.column("rel_flux").to_numpy()


def _run_anchor(night: dict) -> np.ndarray:
    out = night["work"] / "anchor.json"
    _run([sys.executable, str(night["work"] / "anchor.py"), str(night["job"]), str(out)],
         cwd=night["work"])
    return np.asarray(json.loads(out.read_text()))


def _discrepancy(engine: np.ndarray, anchor: np.ndarray) -> float:
    if engine.shape != anchor.shape or not np.isfinite(anchor).all():
        return float("inf")
    return float(np.nanmedian(np.abs(engine / np.nanmedian(engine)
                                     - anchor / np.median(anchor))))


def _prepared(work: Path, raw: Path, job: dict, target_xy) -> dict:
    (work / "anchor.py").write_text(_anchor_script)
    (work / "job.json").write_text(json.dumps(job))
    (work / "reduce.toml").write_text(_SETTINGS)
    return {"raw": raw, "work": work, "job": work / "job.json", "settings": work / "reduce.toml",
            "target_xy": None if target_xy is None else tuple(float(v) for v in target_xy)}


def _comparisons(truth: dict, run: dict, lights: list[dict], count: int = 2) -> list[dict]:
    """Non-variable, unsaturated stars nearest the target in brightness that stay 20 px inside
    the frame all night."""
    ny, nx = run["shape"]
    target = next(s for s in run["star_positions"] if s["id"] == truth["target"]["id"])
    variable = {int(k) for frame in lights for k in frame.get("variable_rel_flux", {})}
    dx = np.array([f["dx"] for f in lights])
    dy = np.array([f["dy"] for f in lights])

    def inside(star):
        x, y = star["x"] + dx, star["y"] + dy
        return bool((x > 20).all() and (x < nx - 21).all() and (y > 20).all()
                    and (y < ny - 21).all())

    candidates = [s for s in run["star_positions"] if s["id"] != target["id"]
                  and s["id"] not in variable and not s["saturated"] and inside(s)]
    candidates.sort(key=lambda s: abs(np.log(s["flux_e_per_s"] / target["flux_e_per_s"])))
    return [target] + candidates[:count]


def _setup_simulated(quick: bool, rng: np.random.Generator) -> Case:
    from engine.simulation import simulate

    work = _scratch() / ("simulated-quick" if quick else "simulated")
    raw = work / "raw"
    # The small night: the variable preset's site on a 650 x 500 frame of a field
    # dense enough for ~400 stars above the detection threshold.
    simulate(raw, preset="variable", seed=int(rng.integers(1 << 16)),
             n_lights=40 if quick else 150, width=650, height=500, n_stars=5500, mag_faint=17.5)
    truth = json.loads((raw / "truth.json").read_text())
    run = truth["runs"][0]
    frames = {f["file"]: f for f in truth["frames"]}
    lights = [frames[path] for path in sorted(run["light_files"])]
    stars = _comparisons(truth, run, lights)
    calibration = {kind: [] for kind in ("bias", "dark", "flat")}
    for f in truth["frames"]:
        if f["frame_type"] in calibration:
            calibration[f["frame_type"]].append(str(raw / f["file"]))
    # The simulated field only drifts (no rotation): each star at its first-frame position
    # plus the frame's pointing offset from the first light's.
    first = lights[0]
    positions = [[[s["x"] + f["dx"] - first["dx"], s["y"] + f["dy"] - first["dy"]] for s in stars]
                 for f in lights]
    job = {"lights": [str(raw / f["file"]) for f in lights], "positions": positions,
           "radius": 6.0, "annulus": [10.0, 15.0], **calibration}
    night = _prepared(work, raw, job, (stars[0]["x"], stars[0]["y"]))
    return Case(inputs=night, size=f"{len(lights)} frames 650x500, all stars",
                units=len(lights), unit="frames")


def _setup_real(quick: bool, rng: np.random.Generator) -> Case:
    import pyarrow.parquet as pq

    from engine.registration import Transform

    if not _REAL_NIGHT.is_dir():
        raise MissingToolError(f"the real frames are absent ({_REAL_NIGHT})")
    work = _scratch() / "real"
    work.mkdir(parents=True, exist_ok=True)
    lights = sorted(str(p) for p in (_REAL_NIGHT / "raw").glob("*.fits"))
    calibration = {kind: [str(_REAL_NIGHT / "calib" / f"{kind}.fits")]
                   for kind in ("bias", "dark", "flat")}
    # WASP-19 and two comparison stars: the engine's brightest unsaturated reference stars,
    # found by one reduction outside the timing and placed on the first frame; the anchor
    # keeps those fixed positions all night (the field moves by under a pixel in 5 minutes).
    night = _prepared(work, _REAL_NIGHT, {}, None)
    probe = work / "probe"
    _reduce_any_target(night, probe)
    stars = pq.read_table(probe / "stars.parquet", columns=["x", "y", "flux", "peak"])
    brightest = np.argsort(-stars.column("flux").to_numpy())
    peak = stars.column("peak").to_numpy()
    xy = np.column_stack([stars.column("x").to_numpy(), stars.column("y").to_numpy()])
    inside = ((xy > 100) & (xy < 1024 - 100)).all(axis=1)
    chosen = [k for k in brightest if inside[k] and peak[k] < 0.5 * np.max(peak)][:3]
    xy = xy[chosen]
    registration = pq.read_table(next((probe / "photometry").glob("*.registration.parquet")))
    first = registration.slice(0, 1).to_pylist()[0]
    xy = Transform(first["a"], first["b"], first["tx"], first["ty"], first["parity"]).apply(xy)
    job = {"lights": lights, "positions": [xy.tolist()] * len(lights), "radius": 6.0,
           "annulus": [10.0, 15.0], **calibration}
    (work / "job.json").write_text(json.dumps(job))
    night["target_xy"] = tuple(xy[0].tolist())
    return Case(inputs=night, size=f"{len(lights)} real frames 1024x1024, all stars",
                units=len(lights), unit="frames")


def _reduce_any_target(night: dict, out: Path) -> None:
    """A reduction without a target: no light curve, but the star table is written first."""
    try:
        _reduce(night, out)
    except EngineError:
        if not (out / "stars.parquet").is_file():
            raise


E2E = register(Benchmark(
    name="e2e", anchor="astropy+photutils (3 stars)", requires=("photutils",),
    setup=_setup_simulated, run_engine=_run_engine, run_anchor=_run_anchor,
    discrepancy=_discrepancy, tolerance=0.01, rounds=3, quick_rounds=1,
    notes="whole processes: engine reduce (every star) vs a 3-star astropy+photutils script"))

E2E_REAL = register(Benchmark(
    name="e2e-real", anchor="astropy+photutils (3 stars)", requires=("photutils",),
    setup=_setup_real, run_engine=_run_engine, run_anchor=_run_anchor,
    discrepancy=_discrepancy, tolerance=0.03, rounds=3, quick_rounds=1,
    notes="real SARA frames of WASP-19; whole processes as in e2e"))
