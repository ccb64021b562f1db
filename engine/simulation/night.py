"""`simulate`: write a simulated night's raw FITS files and its `truth.json`, frame by frame.

Each site is one run. For each light frame the stars' electrons are

    flux = 10^(-0.4 (m_band + colour_term * (BP-RP) - zero_point)) * t       (above the air)
           * 10^(-0.4 (k + k'' (BP-RP)) X) * transparency * relative_flux * (1 + sigma_scint N)

(relative_flux: the transit of `engine.kernels.transit` for the target, the variability of
variable stars, 1 otherwise), drawn as pixel-integrated Moffat profiles by
`engine.kernels.psf.add_stars` over the sky, multiplied by the flat-field response and exposed
by the site's `Detector`. Nothing is held beyond the frame being written.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from astropy.time import Time

from engine.errors import EngineValueError
from engine.kernels import psf
from engine.noise import aperture_noise
from engine.simulation.config import (Camera, Field, SimulationConfig, Site, filter_magnitude,
                                      validate)
from engine.simulation.detector import Detector
from engine.simulation.field import StarField, make_field, variability_flux
from engine.simulation.headers import build_header, file_name, night_date, write_fits, write_lco
from engine.simulation.observing import RunPlan, first_frame_wcs, frame_wcs, plan_run
from engine.simulation.presets import PRESETS

__all__ = ["SimulationResult", "resolve_config", "simulate"]

TRUTH_FORMAT = "engine-simulation-truth"
#: The field's reference catalogue, as a Gaia DR3 extract with Gaia synthetic photometry.
CATALOGUE_NAME = "catalogue.csv"
TRUTH_VERSION = 1
_PROGRAMS = {"nina": "N.I.N.A.", "maxim": "MaxIm DL", "observatory": "observatory",
             "lco": "Las Cumbres Observatory"}


@dataclass
class SimulationResult:
    """What `simulate` wrote. `truth` is the dict saved as truth.json; `files` the FITS paths."""

    out_dir: Path
    truth: dict
    files: list = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def truth_path(self) -> Path:
        return self.out_dir / "truth.json"

    @property
    def catalogue_path(self) -> Path:
        return self.out_dir / CATALOGUE_NAME

    @property
    def frames_per_second(self) -> float:
        return len(self.files) / self.elapsed_s if self.elapsed_s > 0 else float("nan")

    def summary(self) -> str:
        """A few lines for a person: what was simulated, where, when, and how fast."""
        t = self.truth
        lines = [f"Simulated night '{t['preset']}' (seed {t['seed']}) in {self.out_dir}"]
        if t.get("description"):
            lines.append(f"  {t['description']}")
        target = t["target"]
        lines.append(f"  target {target['name']}  RA {target['ra_hms']}  Dec {target['dec_dms']}"
                     f"  G = {target['mag_g']:.2f}")
        for run in t["runs"]:
            counts = run["frame_counts"]
            count_text = ", ".join(f"{counts[k]} {k}" for k in ("light", "bias", "dark", "flat")
                                   if counts.get(k))
            program = _PROGRAMS.get(run["software"], run["software"])
            lines.append(
                f"  {run['site']:<9} {program:<11} {run['camera_model']} "
                f"({run['shape'][1]}x{run['shape'][0]}, bin {run['binning']}), filter "
                f"{run['filter']}: {count_text}")
            lines.append(
                f"  {'':<9} lights {run['first_light_utc'][:19]} .. {run['last_light_utc'][11:19]}"
                f" UTC, BJD_TDB {run['bjd_range'][0]:.5f} .. {run['bjd_range'][1]:.5f}, airmass "
                f"{run['airmass_range'][0]:.2f}-{run['airmass_range'][1]:.2f}"
                + ("".join(f", {e['kind']} at frame {e['frame']}" for e in run["events"])))
        variability = target.get("variability")
        if variability:
            lines.append(f"  target is variable ({variability['kind']}): P = "
                         f"{variability['period_days']:.4f} d, amplitude "
                         f"{variability['amplitudes_mag'][0]:.3f} mag")
        for star in t["stars"]:
            if star["is_variable"]:
                v = star["variability"]
                lines.append(f"  variable comparison candidate: star {star['id']} (G = "
                             f"{star['mag_g']:.2f}), P = {v['period_days']:.3f} d, amplitude "
                             f"{v['amplitudes_mag'][0]:.3f} mag")
        if t.get("transit"):
            tr = t["transit"]
            lines.append(f"  true mid-transit BJD_TDB {tr['mid_bjd_tdb']:.6f} "
                         f"(depth ~{tr['depth_approx'] * 100:.2f}%, T14 {tr['duration_h']:.2f} h)")
        offsets = ", ".join(f"{k} {v:+.2f} s" for k, v in t["clock_offsets_s"].items())
        lines.append(f"  clock offsets (header - true): {offsets}")
        lines.append(f"  wrote {len(self.files)} frames + truth.json + {CATALOGUE_NAME} in "
                     f"{self.elapsed_s:.1f} s "
                     f"({self.frames_per_second:.1f} frames/s)")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------

def resolve_config(preset="demo", overrides: dict | None = None) -> SimulationConfig:
    """The configuration of a preset name (or a SimulationConfig) with overrides applied.

    An override names a field of SimulationConfig, else of Site (applied to every site), else
    of Camera (every camera), else of Field. Unknown names raise EngineValueError.
    """
    if isinstance(preset, SimulationConfig):
        config = preset
    elif isinstance(preset, str) and preset in PRESETS:
        config = PRESETS[preset]
    else:
        raise EngineValueError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    if not overrides:
        return config
    names = {k: {f.name for f in dataclasses.fields(cls)}
             for k, cls in (("config", SimulationConfig), ("site", Site), ("camera", Camera),
                            ("field", Field))}
    top, site, camera, fld = {}, {}, {}, {}
    for key, value in overrides.items():
        if key in names["config"]:
            top[key] = value
        elif key in names["site"]:
            site[key] = value
        elif key in names["camera"]:
            camera[key] = value
        elif key in names["field"]:
            fld[key] = value
        else:
            raise EngineValueError(
                f"unknown override {key!r}: not a field of SimulationConfig, Site, Camera or Field")
    config = dataclasses.replace(config, **top)
    if site:
        config = config.with_sites(**site)
    if camera:
        config = config.with_cameras(**camera)
    if fld:
        config = dataclasses.replace(config, field=dataclasses.replace(config.field, **fld))
    return config


def _rng(*key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(list(key))))


# ----------------------------------------------------------------------------------------------
# The driver
# ----------------------------------------------------------------------------------------------

def simulate(out_dir, preset="demo", seed: int = 0, **overrides) -> SimulationResult:
    """Simulate a night: raw FITS frames (lights and calibrations) plus truth.json in out_dir.

    preset: a name in PRESETS ('tiny', 'demo', 'variable', 'large') or a SimulationConfig.
    seed: the same seed and configuration give bit-identical files.
    overrides: fields to change (see `resolve_config`), e.g. n_lights=4 or n_stars=50.
    """
    config = resolve_config(preset, overrides)
    validate(config)
    seed = int(seed)
    if seed < 0:
        raise EngineValueError(f"seed must be >= 0, got {seed}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    stars = make_field(config, _rng(seed, 0))
    reference = _Reference(config.reference_utc)
    truth = _truth_header(config, stars, seed, reference.jd)
    files: list[Path] = []
    for index, site in enumerate(config.sites):
        run_truth, frames = _simulate_site(config, stars, site, index, seed, reference, out,
                                           files)
        truth["runs"].append(run_truth)
        truth["frames"].extend(frames)
    elapsed = time.perf_counter() - started
    truth["elapsed_s"] = elapsed
    truth["frames_per_second"] = len(files) / elapsed if elapsed > 0 else None
    _write_json(out / "truth.json", truth)
    _write_catalogue(out / CATALOGUE_NAME, truth["stars"])
    return SimulationResult(out_dir=out, truth=truth, files=files, elapsed_s=elapsed)


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + ".part")
    # Timing fields differ between runs; keep the file itself reproducible.
    stable = {k: v for k, v in payload.items() if k not in ("elapsed_s", "frames_per_second")}
    tmp.write_text(json.dumps(stable, indent=1, allow_nan=False) + "\n")
    os.replace(tmp, path)


def _header_pointing(ra: float, dec: float, error_arcsec) -> tuple[float, float]:
    """The pointing a mount reports: the true one moved (east, north) by `error_arcsec`."""
    east, north = (float(v) / 3600.0 for v in error_arcsec)
    return ((ra + east / math.cos(math.radians(dec))) % 360.0, dec + north)


def _write_catalogue(path: Path, stars: list[dict]) -> None:
    """The field's stars as a catalogue service would give them: Gaia DR3 columns (source_id,
    ra, dec, phot_g_mean_mag, bp_rp) and Gaia synthetic photometry in each simulated band."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    bands = sorted({band for star in stars for band in star["mags"]} & set("UBVRI"))
    columns = {
        "source_id": pa.array([1_000_000 + star["id"] for star in stars], pa.int64()),
        "ra": [star["ra_deg"] for star in stars], "dec": [star["dec_deg"] for star in stars],
        "phot_g_mean_mag": [star["mag_g"] for star in stars],
        "bp_rp": [star["bp_rp"] for star in stars],
        **{f"{band.lower()}_jkc_mag": [star["mags"].get(band) for star in stars]
           for band in bands},
    }
    tmp = path.with_name(path.name + ".part")
    pacsv.write_csv(pa.table(columns), tmp)
    os.replace(tmp, path)


def target_positions(truth: dict, frames) -> dict[str, tuple[float, float]]:
    """Each ingested run's target position in its first light frame (run_id -> (x, y)), from
    the truth and the frames table (`reduce`'s `target_xy` for simulated nights)."""
    first_files = {}
    for row in frames.to_pylist():
        if row["frame_type"] == "light" and row["status"] == "ok" and row["cube_index"] == 0:
            first_files[Path(row["path"]).name] = row["run_id"]
    target_id = truth["target"]["id"]
    positions = {}
    for run in truth["runs"]:
        run_id = first_files.get(Path(run["light_files"][0]).name)
        star = next((s for s in run["star_positions"] if s["id"] == target_id), None)
        if run_id is not None and star is not None:
            positions[run_id] = (star["x"], star["y"])
    return positions


class _Reference:
    """The reference time: an exact UTC datetime, and its Julian date for astropy."""

    def __init__(self, text: str):
        time_ = Time(text, format="isot", scale="utc")
        self.jd = float(time_.jd)
        self.datetime = time_.to_datetime(timezone=timezone.utc)
        self.fraction_s = self.datetime.microsecond / 1e6

    def at(self, seconds: float) -> datetime:
        return self.datetime + timedelta(seconds=float(seconds))

    def iso(self, seconds: float) -> str:
        return self.at(seconds).strftime("%Y-%m-%dT%H:%M:%S.%f")

    def jd_of(self, seconds: float) -> float:
        return self.jd + float(seconds) / 86400.0


def _truth_header(config, stars: StarField, seed, reference_jd) -> dict:
    from engine.simulation.headers import sexagesimal

    f = config.field
    bands = sorted({s.filter for s in config.sites})
    star_list = []
    for i in range(stars.n):
        entry = {"id": i, "ra_deg": float(stars.ra_deg[i]), "dec_deg": float(stars.dec_deg[i]),
                 "mag_g": float(stars.mag_g[i]), "bp_rp": float(stars.bp_rp[i]),
                 "mags": {b: float(filter_magnitude(b, stars.mag_g[i], stars.bp_rp[i]))
                          for b in bands},
                 "is_target": bool(stars.is_target[i]), "is_variable": bool(stars.is_variable[i]),
                 "is_comparison_candidate": bool(stars.is_comparison[i]),
                 "is_saturating": bool(stars.is_saturating[i])}
        if i in stars.variability:
            entry["variability"] = dataclasses.asdict(stars.variability[i])
        star_list.append(entry)
    truth = {
        "format": TRUTH_FORMAT, "version": TRUTH_VERSION, "preset": config.name, "seed": seed,
        "description": config.description, "config": dataclasses.asdict(config),
        "reference_utc": config.reference_utc, "reference_jd_utc": reference_jd,
        "conventions": {
            "pixels": "0-based, x = column, y = row, in the stored pixel grid (overscan "
                      "columns included, binned pixels) of the run's first light frame",
            "transform": "x_k = cx + cos(r)(x0 - cx) - sin(r)(y0 - cy) + dx; "
                         "y_k = cy + sin(r)(x0 - cx) + cos(r)(y0 - cy) + dy; r = rotation_deg",
            "times": "true UTC; header times = true + the site's clock offset; "
                     "mid_bjd_tdb at mid-exposure",
            "clock_offset_s": "header time minus true time",
            "expected_target_noise": "relative 1-sigma of the target's flux in a circular "
                                     "aperture of radius noise_aperture_fwhm * FWHM with the "
                                     "background known exactly (engine.noise.aperture_noise)",
            "transparency": "1 = clear; grey (the same for every star of a frame)",
        },
        "target": {"id": 0, "name": f.target_name, "ra_deg": f.ra_deg, "dec_deg": f.dec_deg,
                   "ra_hms": sexagesimal(f.ra_deg / 15.0, sep=":", decimals=2),
                   "dec_dms": sexagesimal(f.dec_deg, sep=":", decimals=1, sign=True),
                   "mag_g": f.target_mag_g, "bp_rp": f.target_bp_rp,
                   "variability": (dataclasses.asdict(f.target_variability)
                                   if f.target_variability is not None else None)},
        "planet": None, "transit": None,
        "sites": {}, "clock_offsets_s": {s.name: s.clock_offset_s for s in config.sites},
        "stars": star_list, "runs": [], "frames": [],
    }
    if config.planet is not None:
        p = config.planet
        truth["planet"] = {
            "name": p.name, "t0_bjd_tdb": p.t0_bjd_tdb, "period_days": p.period_days,
            "rp_rs": p.rp_rs, "a_rs": p.a_rs, "inc_deg": p.inc_deg,
            "impact_parameter": p.impact_parameter,
            "limb_darkening": {b: list(p.limb_darkening_for(b)) for b in bands}}
        epoch = round((reference_jd - p.t0_bjd_tdb) / p.period_days)
        mid = p.t0_bjd_tdb + epoch * p.period_days
        truth["transit"] = {"epoch": int(epoch), "mid_bjd_tdb": mid,
                            "duration_h": p.duration_days * 24.0,
                            "t1_bjd_tdb": mid - 0.5 * p.duration_days,
                            "t4_bjd_tdb": mid + 0.5 * p.duration_days,
                            "depth_approx": p.rp_rs ** 2}
    for s in config.sites:
        truth["sites"][s.name] = {
            "longitude_deg": s.longitude_deg, "latitude_deg": s.latitude_deg,
            "elevation_m": s.elevation_m, "clock_offset_s": s.clock_offset_s,
            "telescope": s.telescope, "aperture_m": s.aperture_m, "camera": s.camera.model,
            "software": s.camera.software, "filter": s.filter,
            "pixel_scale_arcsec": s.pixel_scale_arcsec, "zero_point": s.zero_point,
            "extinction": s.extinction, "extinction_colour": s.extinction_colour,
            "colour_term": s.colour_term, "sky_mag": s.sky_mag,
            "gain_e_per_adu": s.camera.gain_e_per_adu, "read_noise_e": s.camera.read_noise_e,
            "adc_bits": s.camera.adc_bits, "full_well_e": s.camera.full_well_e}
    return truth


def _render_radius(flux, fwhm, beta, ellipticity, config):
    """Box half-width per star: out to where the profile drops below render_floor_e per pixel
    and where at most max(1e-4 of the flux, 2 e-) falls outside (at most 1e-2); capped."""
    alpha = float(psf.moffat_alpha(fwhm, beta))
    a = alpha / math.sqrt(1.0 - ellipticity)
    norm = (beta - 1.0) / (math.pi * alpha * alpha)
    flux = np.abs(flux)
    ratio = np.maximum(flux * norm / config.render_floor_e, 1.0)
    r_floor = a * np.sqrt(np.maximum(ratio ** (1.0 / beta) - 1.0, 0.0))
    lost = np.clip(2.0 / np.maximum(flux, 1e-30), 1e-4, 1e-2)
    r_lost = a * np.sqrt(lost ** (1.0 / (1.0 - beta)) - 1.0)
    return np.clip(np.maximum(r_floor, r_lost), 3.0, config.max_render_radius_px)


def _simulate_site(config: SimulationConfig, stars: StarField, site: Site, index: int, seed: int,
                   reference: _Reference, out: Path, files: list):
    cam = site.camera
    plan: RunPlan = plan_run(config, site, reference.jd, _rng(seed, 1, index),
                             reference.fraction_s)
    detector = Detector(site, _rng(seed, 2, index), threads=config.threads)
    wcs0 = first_frame_wcs(config, site)
    x0, y0 = wcs0.wcs_world2pix(stars.ra_deg, stars.dec_deg, 0)
    cx, cy = plan.rotation_center
    ny, nx = cam.height, cam.width
    scale = site.pixel_scale_arcsec
    beta = site.moffat_beta
    exptime = site.exptime_s

    # Brightness above the atmosphere (e-/s) and per-frame factors.
    mag_band = filter_magnitude(site.filter, stars.mag_g, stars.bp_rp)
    rate0 = 10.0 ** (-0.4 * (mag_band + site.colour_term * stars.bp_rp - site.zero_point))
    relative = np.ones((plan.n, stars.n))
    for star_id, v in stars.variability.items():
        relative[:, star_id] *= variability_flux(v, plan.mid_bjd_tdb)
    if config.planet is not None:
        from engine.kernels.transit import transit_light_curve

        p = config.planet
        u1, u2 = p.limb_darkening_for(site.filter)
        transit = np.asarray(transit_light_curve(
            plan.mid_bjd_tdb, p.t0_bjd_tdb, p.period_days, p.rp_rs, p.a_rs, p.inc_deg, u1, u2,
            exptime=exptime / 86400.0), dtype=np.float64)
        relative[:, 0] *= transit
    night = night_date(site, reference.at(plan.header_start_s[0]))
    run_id = f"{site.name}_{night}_{site.filter}"

    # The run's frames in time order: calibrations and lights.
    records = [("light", k, plan.start_s[k]) for k in range(plan.n)]
    records += [("cal", k, c.start_s) for k, c in enumerate(plan.calibrations)]
    records.sort(key=lambda r: r[2])
    offset = site.clock_offset_s
    pointing = _header_pointing(float(wcs0.wcs.crval[0]), float(wcs0.wcs.crval[1]),
                                site.header_pointing_error_arcsec)
    counters: dict = {}
    frames_truth = []
    light_files = []
    calibration_files = {"bias": [], "dark": [], "flat": []}
    frame_counts = {"light": 0, "bias": 0, "dark": 0, "flat": 0}
    target_peaks = []
    for kind, k, start_s in records:
        frame_rng = _rng(seed, 3, index, 0 if kind == "light" else 1, k)
        ccd_temp = round(cam.set_temp_c + frame_rng.normal(0.0, 0.1), 1)
        if kind == "light":
            data, info, extra = _render_light(config, stars, site, plan, detector, k, x0, y0,
                                              rate0, relative[k], frame_rng)
            extra["mid_utc"] = reference.iso(start_s + 0.5 * exptime)
            target_peaks.append(extra.pop("_target_peak_e"))
            meta = {"frame_type": "light", "filter": site.filter, "exptime_s": exptime,
                    "header_start": reference.at(start_s + offset),
                    "airmass_start": plan.airmass_start[k], "pointing": pointing,
                    "pier_side": plan.pier_side[k], "ccd_temp": ccd_temp,
                    "object": config.field.target_name,
                    "wcs": frame_wcs(wcs0, plan.rotation_deg[k], plan.dx[k], plan.dy[k],
                                     (cx, cy)) if cam.wcs else None}
        else:
            cal = plan.calibrations[k]
            data, info = _render_calibration(site, detector, cal, frame_rng)
            extra = {}
            meta = {"frame_type": cal.frame_type, "filter": cal.filter or site.filter,
                    "exptime_s": cal.exptime_s, "header_start": reference.at(start_s + offset),
                    "airmass_start": float("nan"), "pointing": pointing, "pier_side": "West",
                    "ccd_temp": ccd_temp, "object": config.field.target_name,
                    "purpose": cal.purpose, "wcs": None}
        if kind == "light" and k in cam.float_light_frames:
            data = data.astype(np.float32)  # as a program that rewrote the frame stores it
        rel = file_name(site, meta, counters)
        path = out / rel
        if cam.software == "lco":
            data, bad = _lco_product(data, detector, site, info) if cam.processed else (data, None)
            write_lco(path, data, build_header(site, meta), bad_pixels=bad)
        else:
            write_fits(path, data, build_header(site, meta), compress=cam.compress)
        files.append(path)
        ftype = meta["frame_type"]
        frame_counts[ftype] += 1
        entry = {"file": rel, "frame_type": ftype, "run_id": run_id, "site": site.name,
                 "filter": meta["filter"], "exptime_s": float(meta["exptime_s"]),
                 "start_utc": reference.iso(start_s), "start_jd_utc": reference.jd_of(start_s),
                 "header_start_utc": reference.iso(start_s + offset),
                 "cosmic_rays": len(info["cosmic_rays"]),
                 "bias_level_adu": info["bias_level_adu"]}
        if kind == "light":
            light_files.append(rel)
            entry["index"] = k
            entry["cosmic_ray_positions"] = info["cosmic_rays"]
            entry.update(extra)
        else:
            calibration_files[ftype].append(rel)
            if meta.get("purpose"):
                entry["purpose"] = meta["purpose"]
            entry["level_e"] = info.get("level_e")
        frames_truth.append(entry)

    # Star positions in the run's first light frame (stored grid).
    inside = (x0 >= cam.data_x0 - 0.5) & (x0 <= cam.data_x0 + nx - 0.5) & (y0 >= -0.5) & (
        y0 <= ny - 0.5)
    fwhm0 = plan.seeing_arcsec[0] / scale
    alpha0 = float(psf.moffat_alpha(fwhm0, beta))
    peak_fraction = (beta - 1.0) / (math.pi * alpha0 * alpha0)
    ext0 = 10.0 ** (-0.4 * (site.extinction + site.extinction_colour * stars.bp_rp)
                    * plan.airmass[0])
    positions = []
    for i in np.flatnonzero(inside):
        peak = rate0[i] * exptime * ext0[i] * peak_fraction
        positions.append({"id": int(i), "x": float(x0[i]), "y": float(y0[i]),
                          "flux_e_per_s": float(rate0[i]),
                          "mag_instrumental": float(-2.5 * math.log10(rate0[i])),
                          "peak_e_first_frame": float(peak),
                          "saturated": bool(peak + plan.sky_e_per_px[0]
                                            > 0.9 * _saturation_e(cam))})
    events = []
    if plan.flip_index is not None:
        events.append({"kind": "meridian_flip", "frame": int(plan.flip_index),
                       "rotation_deg": 180.0})
    if plan.recentre_index is not None:
        events.append({"kind": "recentre", "frame": int(plan.recentre_index)})
    run_truth = {
        "run_id": run_id, "site": site.name, "night": night, "filter": site.filter,
        "software": cam.software, "camera": cam.name, "camera_model": cam.model,
        "processed": cam.processed, "jd_reference": cam.jd_reference,
        "telescope": site.telescope, "binning": cam.binning,
        "shape": list(cam.stored_shape), "data_x0": cam.data_x0,
        "overscan_columns": cam.overscan_columns, "overscan_side": cam.overscan_side,
        "gain_e_per_adu": cam.gain_e_per_adu, "read_noise_e": cam.read_noise_e,
        "adc_bits": cam.adc_bits, "adc_scale": cam.adc_scale,
        "saturation_e": _saturation_e(cam), "full_well_e": cam.full_well_e,
        "pixel_scale_arcsec": scale, "exptime_s": exptime, "clock_offset_s": site.clock_offset_s,
        "zero_point": site.zero_point, "rotation_center": [cx, cy],
        "noise_aperture_fwhm": config.noise_aperture_fwhm,
        "light_files": light_files, "calibration_files": calibration_files,
        "frame_counts": frame_counts, "events": events,
        "first_light_utc": reference.iso(plan.start_s[0]),
        "last_light_utc": reference.iso(plan.start_s[-1] + exptime),
        "bjd_range": [float(plan.mid_bjd_tdb[0]), float(plan.mid_bjd_tdb[-1])],
        "airmass_range": [float(np.min(plan.airmass)), float(np.max(plan.airmass))],
        "sun_altitude_max_deg": float(np.max(plan.sun_altitude_deg)),
        "target_peak_e_max": float(max(target_peaks)) if target_peaks else None,
        "hot_pixels": len(detector.hot_pixels), "hot_columns": detector.hot_columns,
        "wcs_first_frame": {k: (float(v) if isinstance(v, (float, np.floating)) else v)
                            for k, v in wcs0.to_header().items()} if cam.wcs else None,
        "star_positions": positions,
    }
    return run_truth, frames_truth


def _lco_product(data, detector: Detector, site: Site, info: dict):
    """A raw frame as the observatory pipeline delivers it: bias removed, divided by the flat,
    float32; and its bad-pixel mask (the detector's hot pixels)."""
    cam = site.camera
    x0 = cam.data_x0
    image = data[:, x0:x0 + cam.width].astype(np.float32) - np.float32(info["bias_level_adu"])
    image /= detector.flat(site.filter).astype(np.float32)
    bad = np.zeros(image.shape, np.uint8)
    hot = detector.hot_pixels
    bad[hot[:, 1], hot[:, 0]] = 1
    return image, bad


def _saturation_e(cam: Camera) -> float:
    """Electrons at which a pixel stops responding: full well or the ADC's top, whichever first."""
    adc_top = (2 ** cam.adc_bits - 1) * cam.adc_step_e - cam.bias_level_adu * cam.gain_e_per_adu
    return float(min(cam.full_well_e, adc_top))


def _render_light(config, stars, site, plan, detector, k, x0, y0, rate0, relative, rng):
    cam = site.camera
    ny, nx = cam.height, cam.width
    cx, cy = plan.rotation_center
    theta = math.radians(plan.rotation_deg[k])
    c, s = math.cos(theta), math.sin(theta)
    xs = cx + c * (x0 - cx) - s * (y0 - cy) + plan.dx[k]
    ys = cy + s * (x0 - cx) + c * (y0 - cy) + plan.dy[k]
    xi = xs - cam.data_x0                       # imaging-area coordinates
    exptime = site.exptime_s
    airmass = plan.airmass[k]
    extinction = 10.0 ** (-0.4 * (site.extinction + site.extinction_colour * stars.bp_rp) * airmass)
    expected = rate0 * exptime * extinction * plan.transparency[k] * relative
    scint = plan.scintillation[k]
    scint_factor = np.maximum(1.0 + scint * rng.standard_normal(stars.n), 0.0)
    flux = expected * scint_factor
    fwhm = plan.seeing_arcsec[k] / site.pixel_scale_arcsec
    ell = float(plan.ellipticity[k])
    radius = _render_radius(flux, fwhm, site.moffat_beta, ell, config)
    visible = (xi > -radius) & (xi < nx - 1 + radius) & (ys > -radius) & (ys < ny - 1 + radius)
    image = plan.sky_e_per_px[k] * detector.sky_pattern
    # The rotation of the camera turns the PSF's position angle with it.
    angle = float(plan.ellipticity_angle[k]) + theta
    psf.add_stars(image, xi[visible], ys[visible], flux[visible], fwhm, profile="moffat",
                  beta=site.moffat_beta, ellipticity=ell, angle=angle, radius=radius[visible],
                  accuracy=1e-5, threads=config.threads)
    flat = detector.flat(site.filter)
    image *= flat
    data, info = detector.expose(image, exptime, rng)

    # Truth: the target's expected noise in an aperture of noise_aperture_fwhm * FWHM.
    tx = int(np.clip(round(xi[0]), 0, nx - 1))
    ty = int(np.clip(round(ys[0]), 0, ny - 1))
    r_ap = config.noise_aperture_fwhm * fwhm
    ee = float(psf.moffat_encircled_energy(r_ap, fwhm, site.moffat_beta))
    flat_t = float(flat[ty, tx])
    sky_px = float(plan.sky_e_per_px[k] * detector.sky_pattern[ty, tx] * flat_t)
    dark_px = cam.dark_e_per_s * exptime
    if detector.glow_pattern is not None:
        dark_px += float(detector.glow_pattern[ty, tx]) * detector.glow_e(exptime)
    budget = aperture_noise(max(expected[0] * flat_t * ee, 1e-9), math.pi * r_ap * r_ap, sky_px,
                            dark_px, cam.read_noise_e, scint, adc_step_e=cam.adc_step_e)
    alpha = float(psf.moffat_alpha(fwhm, site.moffat_beta))
    peak = float(flux[0] * flat_t * (site.moffat_beta - 1.0) / (math.pi * alpha * alpha))
    variable_ids = [int(i) for i in np.flatnonzero(stars.is_variable)]
    extra = {
        "mid_jd_utc": float(plan.mid_jd_utc[k]),
        "mid_bjd_tdb": float(plan.mid_bjd_tdb[k]), "airmass": float(airmass),
        "airmass_start": float(plan.airmass_start[k]), "hour_angle_h": float(plan.hour_angle_h[k]),
        "sun_altitude_deg": float(plan.sun_altitude_deg[k]),
        "transparency": float(plan.transparency[k]),
        "seeing_fwhm_arcsec": float(plan.seeing_arcsec[k]), "seeing_fwhm_px": float(fwhm),
        "moffat_beta": site.moffat_beta, "ellipticity": ell,
        "sky_e_per_px": float(plan.sky_e_per_px[k]),
        "dx": float(plan.dx[k]), "dy": float(plan.dy[k]),
        "rotation_deg": float(plan.rotation_deg[k]), "pier_side": plan.pier_side[k],
        "target_rel_flux": float(relative[0]),
        "variable_rel_flux": {str(i): float(relative[i]) for i in variable_ids},
        "target_expected_e": float(expected[0]),
        "target_scintillation_factor": float(scint_factor[0]),
        "scintillation_sigma": float(scint),
        "target_x": float(xs[0]), "target_y": float(ys[0]),
        "expected_target_noise": budget.as_dict(),
        "noise_aperture_radius_px": float(r_ap),
        "_target_peak_e": peak,
    }
    return data, info, extra


def _render_calibration(site, detector, cal, rng):
    cam = site.camera
    ny, nx = cam.height, cam.width
    if cal.frame_type == "flat":
        full_scale_e = (2 ** cam.adc_bits - 1) * cam.adc_step_e
        level = site.flat_level * full_scale_e * rng.uniform(0.85, 1.1)
        tilt = rng.normal(0.0, 0.003, 2)
        xx = np.arange(nx) / nx - 0.5
        yy = np.arange(ny) / ny - 0.5
        twilight = 1.0 + tilt[0] * xx[None, :] + tilt[1] * yy[:, None]
        expected = level * detector.flat(cal.filter) * twilight
        data, info = detector.expose(expected, cal.exptime_s, rng)
        info["level_e"] = float(level)
        return data, info
    return detector.expose(np.zeros((ny, nx)), cal.exptime_s, rng)
