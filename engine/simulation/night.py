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
import math
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
from engine.simulation.truth import CATALOGUE_NAME, night_truth, write_catalogue, write_truth

__all__ = ["SimulationResult", "resolve_config", "simulate"]

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
    truth = night_truth(config, stars, seed, reference.jd)
    files: list[Path] = []
    for index, site in enumerate(config.sites):
        run_truth, frames = _simulate_site(config, stars, site, index, seed, reference, out,
                                           files)
        truth["runs"].append(run_truth)
        truth["frames"].extend(frames)
    elapsed = time.perf_counter() - started
    truth["elapsed_s"] = elapsed
    truth["frames_per_second"] = len(files) / elapsed if elapsed > 0 else None
    write_truth(out / "truth.json", truth)
    write_catalogue(out / CATALOGUE_NAME, truth["stars"])
    return SimulationResult(out_dir=out, truth=truth, files=files, elapsed_s=elapsed)


def _header_pointing(ra: float, dec: float, error_arcsec) -> tuple[float, float]:
    """The pointing a mount reports: the true one moved (east, north) by `error_arcsec`."""
    east, north = (float(v) / 3600.0 for v in error_arcsec)
    return ((ra + east / math.cos(math.radians(dec))) % 360.0, dec + north)


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


@dataclass
class _Run:
    """One site's run while its frames are written: the plan, the detector, the first light
    frame's WCS and star positions (x0, y0), and the stars' brightness."""

    site: Site
    index: int
    run_id: str
    night: str
    plan: RunPlan
    detector: Detector
    wcs0: object
    x0: np.ndarray
    y0: np.ndarray
    rate0: np.ndarray            # e-/s above the atmosphere, per star
    relative: np.ndarray         # (frame, star): transit and variability
    pointing: tuple[float, float]


@dataclass
class _RunFiles:
    """What a run wrote: each frame's truth entry, the files by kind, the counts, and the
    target's peak electrons in each light frame."""

    frames: list = field(default_factory=list)
    light_files: list = field(default_factory=list)
    calibration_files: dict = field(default_factory=lambda: {"bias": [], "dark": [], "flat": []})
    frame_counts: dict = field(default_factory=lambda: {"light": 0, "bias": 0, "dark": 0,
                                                        "flat": 0})
    target_peaks: list = field(default_factory=list)


def _simulate_site(config: SimulationConfig, stars: StarField, site: Site, index: int, seed: int,
                   reference: _Reference, out: Path, files: list):
    """Write one site's run (calibration and light frames in time order); its truth and the
    truth of its frames."""
    run = _plan_site(config, stars, site, index, seed, reference)
    written = _write_frames(config, stars, run, seed, reference, out, files)
    return _run_truth(config, stars, run, written, reference), written.frames


def _plan_site(config, stars: StarField, site: Site, index: int, seed: int,
               reference: _Reference) -> _Run:
    """The run's schedule and atmosphere, its detector, where the stars fall in its first
    frame, and their brightness above the air (e-/s) and relative flux in each frame."""
    plan = plan_run(config, site, reference.jd, _rng(seed, 1, index), reference.fraction_s)
    detector = Detector(site, _rng(seed, 2, index), threads=config.threads)
    wcs0 = first_frame_wcs(config, site)
    x0, y0 = wcs0.wcs_world2pix(stars.ra_deg, stars.dec_deg, 0)
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
            exptime=site.exptime_s / 86400.0), dtype=np.float64)
        relative[:, 0] *= transit
    night = night_date(site, reference.at(plan.header_start_s[0]))
    pointing = _header_pointing(float(wcs0.wcs.crval[0]), float(wcs0.wcs.crval[1]),
                                site.header_pointing_error_arcsec)
    return _Run(site=site, index=index, run_id=f"{site.name}_{night}_{site.filter}",
                night=night, plan=plan, detector=detector, wcs0=wcs0, x0=x0, y0=y0,
                rate0=rate0, relative=relative, pointing=pointing)


def _write_frames(config, stars: StarField, run: _Run, seed: int, reference: _Reference,
                  out: Path, files: list) -> _RunFiles:
    """Render and write the run's frames in time order, each from its own random stream."""
    site, plan = run.site, run.plan
    cam = site.camera
    records = [("light", k, plan.start_s[k]) for k in range(plan.n)]
    records += [("cal", k, c.start_s) for k, c in enumerate(plan.calibrations)]
    records.sort(key=lambda r: r[2])
    counters: dict = {}
    written = _RunFiles()
    for kind, k, start_s in records:
        frame_rng = _rng(seed, 3, run.index, 0 if kind == "light" else 1, k)
        ccd_temp = round(cam.set_temp_c + frame_rng.normal(0.0, 0.1), 1)
        if kind == "light":
            data, info, extra, meta = _light_frame(config, stars, run, reference, k, start_s,
                                                   ccd_temp, frame_rng)
            written.target_peaks.append(extra.pop("_target_peak_e"))
        else:
            data, info, meta = _calibration_frame(config, run, reference, plan.calibrations[k],
                                                  start_s, ccd_temp, frame_rng)
            extra = {}
        rel = file_name(site, meta, counters)
        path = out / rel
        if cam.software == "lco":
            data, bad = (_lco_product(data, run.detector, site, info) if cam.processed
                         else (data, None))
            write_lco(path, data, build_header(site, meta), bad_pixels=bad)
        else:
            write_fits(path, data, build_header(site, meta), compress=cam.compress)
        files.append(path)
        ftype = meta["frame_type"]
        written.frame_counts[ftype] += 1
        entry = {"file": rel, "frame_type": ftype, "run_id": run.run_id, "site": site.name,
                 "filter": meta["filter"], "exptime_s": float(meta["exptime_s"]),
                 "start_utc": reference.iso(start_s), "start_jd_utc": reference.jd_of(start_s),
                 "header_start_utc": reference.iso(start_s + site.clock_offset_s),
                 "cosmic_rays": len(info["cosmic_rays"]),
                 "bias_level_adu": info["bias_level_adu"]}
        if kind == "light":
            written.light_files.append(rel)
            entry["index"] = k
            entry["cosmic_ray_positions"] = info["cosmic_rays"]
            entry.update(extra)
        else:
            written.calibration_files[ftype].append(rel)
            if meta.get("purpose"):
                entry["purpose"] = meta["purpose"]
            entry["level_e"] = info.get("level_e")
        written.frames.append(entry)
    return written


def _light_frame(config, stars: StarField, run: _Run, reference: _Reference, k: int, start_s,
                 ccd_temp, rng):
    """Light frame k: its pixels, the detector's record, its truth and its header values."""
    site, plan = run.site, run.plan
    cam = site.camera
    exptime = site.exptime_s
    data, info, extra = _render_light(config, stars, site, plan, run.detector, k, run.x0,
                                      run.y0, run.rate0, run.relative[k], rng)
    extra["mid_utc"] = reference.iso(start_s + 0.5 * exptime)
    meta = {"frame_type": "light", "filter": site.filter, "exptime_s": exptime,
            "header_start": reference.at(start_s + site.clock_offset_s),
            "airmass_start": plan.airmass_start[k], "pointing": run.pointing,
            "pier_side": plan.pier_side[k], "ccd_temp": ccd_temp,
            "object": config.field.target_name,
            "wcs": frame_wcs(run.wcs0, plan.rotation_deg[k], plan.dx[k], plan.dy[k],
                             plan.rotation_center) if cam.wcs else None}
    if k in cam.float_light_frames:
        data = data.astype(np.float32)  # as a program that rewrote the frame stores it
    return data, info, extra, meta


def _calibration_frame(config, run: _Run, reference: _Reference, cal, start_s, ccd_temp, rng):
    """A bias, dark or flat: its pixels, the detector's record and its header values."""
    site = run.site
    data, info = _render_calibration(site, run.detector, cal, rng)
    meta = {"frame_type": cal.frame_type, "filter": cal.filter or site.filter,
            "exptime_s": cal.exptime_s,
            "header_start": reference.at(start_s + site.clock_offset_s),
            "airmass_start": float("nan"), "pointing": run.pointing, "pier_side": "West",
            "ccd_temp": ccd_temp, "object": config.field.target_name,
            "purpose": cal.purpose, "wcs": None}
    return data, info, meta


def _star_positions(stars: StarField, run: _Run) -> list[dict]:
    """The stars inside the run's first light frame (stored grid): position, brightness and
    whether their peak saturates there."""
    site, plan = run.site, run.plan
    cam = site.camera
    x0, y0, rate0 = run.x0, run.y0, run.rate0
    beta = site.moffat_beta
    inside = (x0 >= cam.data_x0 - 0.5) & (x0 <= cam.data_x0 + cam.width - 0.5) & (
        y0 >= -0.5) & (y0 <= cam.height - 0.5)
    fwhm0 = plan.seeing_arcsec[0] / site.pixel_scale_arcsec
    alpha0 = float(psf.moffat_alpha(fwhm0, beta))
    peak_fraction = (beta - 1.0) / (math.pi * alpha0 * alpha0)
    ext0 = 10.0 ** (-0.4 * (site.extinction + site.extinction_colour * stars.bp_rp)
                    * plan.airmass[0])
    positions = []
    for i in np.flatnonzero(inside):
        peak = rate0[i] * site.exptime_s * ext0[i] * peak_fraction
        positions.append({"id": int(i), "x": float(x0[i]), "y": float(y0[i]),
                          "flux_e_per_s": float(rate0[i]),
                          "mag_instrumental": float(-2.5 * math.log10(rate0[i])),
                          "peak_e_first_frame": float(peak),
                          "saturated": bool(peak + plan.sky_e_per_px[0]
                                            > 0.9 * _saturation_e(cam))})
    return positions


def _run_truth(config, stars: StarField, run: _Run, written: _RunFiles,
               reference: _Reference) -> dict:
    """The run's entry in truth.json: camera and site constants, files, events, ranges of
    time, airmass and sun altitude, and the stars' positions in its first frame."""
    site, plan, cam = run.site, run.plan, run.site.camera
    exptime = site.exptime_s
    events = []
    if plan.flip_index is not None:
        events.append({"kind": "meridian_flip", "frame": int(plan.flip_index),
                       "rotation_deg": 180.0})
    if plan.recentre_index is not None:
        events.append({"kind": "recentre", "frame": int(plan.recentre_index)})
    cx, cy = plan.rotation_center
    return {
        "run_id": run.run_id, "site": site.name, "night": run.night, "filter": site.filter,
        "software": cam.software, "camera": cam.name, "camera_model": cam.model,
        "processed": cam.processed, "jd_reference": cam.jd_reference,
        "telescope": site.telescope, "binning": cam.binning,
        "shape": list(cam.stored_shape), "data_x0": cam.data_x0,
        "overscan_columns": cam.overscan_columns, "overscan_side": cam.overscan_side,
        "gain_e_per_adu": cam.gain_e_per_adu, "read_noise_e": cam.read_noise_e,
        "adc_bits": cam.adc_bits, "adc_scale": cam.adc_scale,
        "saturation_e": _saturation_e(cam), "full_well_e": cam.full_well_e,
        "pixel_scale_arcsec": site.pixel_scale_arcsec, "exptime_s": exptime,
        "clock_offset_s": site.clock_offset_s,
        "zero_point": site.zero_point, "rotation_center": [cx, cy],
        "noise_aperture_fwhm": config.noise_aperture_fwhm,
        "light_files": written.light_files, "calibration_files": written.calibration_files,
        "frame_counts": written.frame_counts, "events": events,
        "first_light_utc": reference.iso(plan.start_s[0]),
        "last_light_utc": reference.iso(plan.start_s[-1] + exptime),
        "bjd_range": [float(plan.mid_bjd_tdb[0]), float(plan.mid_bjd_tdb[-1])],
        "airmass_range": [float(np.min(plan.airmass)), float(np.max(plan.airmass))],
        "sun_altitude_max_deg": float(np.max(plan.sun_altitude_deg)),
        "target_peak_e_max": (float(max(written.target_peaks)) if written.target_peaks
                              else None),
        "hot_pixels": len(run.detector.hot_pixels), "hot_columns": run.detector.hot_columns,
        "wcs_first_frame": {k: (float(v) if isinstance(v, (float, np.floating)) else v)
                            for k, v in run.wcs0.to_header().items()} if cam.wcs else None,
        "star_positions": _star_positions(stars, run),
    }


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
