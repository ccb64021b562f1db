"""The night's truth: what `simulate` writes beside the frames, and how tests read it back.

`night_truth` starts truth.json's document (conventions, target, planet and transit, sites,
stars); `simulate` adds each run's truth and frames (`engine.simulation.night`). `write_truth`
and `write_catalogue` write truth.json and the field's Gaia-like catalogue.csv;
`target_positions` maps a reduced night's runs to the target's position in their first frame.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from engine.simulation.config import Planet, SimulationConfig, Site, filter_magnitude
from engine.simulation.field import StarField
from engine.simulation.headers import sexagesimal

__all__ = ["CATALOGUE_NAME", "TRUTH_FORMAT", "TRUTH_VERSION", "night_truth", "target_positions",
           "write_catalogue", "write_truth"]

TRUTH_FORMAT = "engine-simulation-truth"
#: The field's reference catalogue, as a Gaia DR3 extract with Gaia synthetic photometry.
CATALOGUE_NAME = "catalogue.csv"
TRUTH_VERSION = 1

_CONVENTIONS = {
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
}


def night_truth(config: SimulationConfig, stars: StarField, seed, reference_jd) -> dict:
    """truth.json without its runs and frames (their lists are left empty to fill)."""
    f = config.field
    bands = sorted({s.filter for s in config.sites})
    truth = {
        "format": TRUTH_FORMAT, "version": TRUTH_VERSION, "preset": config.name, "seed": seed,
        "description": config.description, "config": dataclasses.asdict(config),
        "reference_utc": config.reference_utc, "reference_jd_utc": reference_jd,
        "conventions": dict(_CONVENTIONS),
        "target": {"id": 0, "name": f.target_name, "ra_deg": f.ra_deg, "dec_deg": f.dec_deg,
                   "ra_hms": sexagesimal(f.ra_deg / 15.0, sep=":", decimals=2),
                   "dec_dms": sexagesimal(f.dec_deg, sep=":", decimals=1, sign=True),
                   "mag_g": f.target_mag_g, "bp_rp": f.target_bp_rp,
                   "variability": (dataclasses.asdict(f.target_variability)
                                   if f.target_variability is not None else None)},
        "planet": None, "transit": None,
        "sites": {}, "clock_offsets_s": {s.name: s.clock_offset_s for s in config.sites},
        "stars": _stars_truth(stars, bands), "runs": [], "frames": [],
    }
    if config.planet is not None:
        truth["planet"], truth["transit"] = _planet_truth(config.planet, bands, reference_jd)
    for s in config.sites:
        truth["sites"][s.name] = _site_truth(s)
    return truth


def _stars_truth(stars: StarField, bands) -> list[dict]:
    """Every star: position, G and BP-RP, magnitude in each band observed, role, variability."""
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
    return star_list


def _planet_truth(p: Planet, bands, reference_jd) -> tuple[dict, dict]:
    """The planet, and its transit nearest the reference time (contact times BJD_TDB)."""
    planet = {
        "name": p.name, "t0_bjd_tdb": p.t0_bjd_tdb, "period_days": p.period_days,
        "rp_rs": p.rp_rs, "a_rs": p.a_rs, "inc_deg": p.inc_deg,
        "impact_parameter": p.impact_parameter,
        "limb_darkening": {b: list(p.limb_darkening_for(b)) for b in bands}}
    epoch = round((reference_jd - p.t0_bjd_tdb) / p.period_days)
    mid = p.t0_bjd_tdb + epoch * p.period_days
    transit = {"epoch": int(epoch), "mid_bjd_tdb": mid,
               "duration_h": p.duration_days * 24.0,
               "t1_bjd_tdb": mid - 0.5 * p.duration_days,
               "t4_bjd_tdb": mid + 0.5 * p.duration_days,
               "depth_approx": p.rp_rs ** 2}
    return planet, transit


def _site_truth(s: Site) -> dict:
    """A site's place, telescope, camera and photometric constants."""
    return {
        "longitude_deg": s.longitude_deg, "latitude_deg": s.latitude_deg,
        "elevation_m": s.elevation_m, "clock_offset_s": s.clock_offset_s,
        "telescope": s.telescope, "aperture_m": s.aperture_m, "camera": s.camera.model,
        "software": s.camera.software, "filter": s.filter,
        "pixel_scale_arcsec": s.pixel_scale_arcsec, "zero_point": s.zero_point,
        "extinction": s.extinction, "extinction_colour": s.extinction_colour,
        "colour_term": s.colour_term, "sky_mag": s.sky_mag,
        "gain_e_per_adu": s.camera.gain_e_per_adu, "read_noise_e": s.camera.read_noise_e,
        "adc_bits": s.camera.adc_bits, "full_well_e": s.camera.full_well_e}


def write_truth(path: Path, payload: dict) -> None:
    """Write truth.json atomically, without the run's timing."""
    tmp = path.with_name(path.name + ".part")
    # Timing fields differ between runs; keep the file itself reproducible.
    stable = {k: v for k, v in payload.items() if k not in ("elapsed_s", "frames_per_second")}
    tmp.write_text(json.dumps(stable, indent=1, allow_nan=False) + "\n")
    os.replace(tmp, path)


def write_catalogue(path: Path, stars: list[dict]) -> None:
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
