"""`python -m engine demo`: simulate a multi-site transit night, reduce it, fit it, and compare
the recovered mid-transit time with the truth.

The demo plays a network coordinator: the target's coordinates and a reference catalogue of the
field (Gaia DR3 with synthetic photometry, as the simulator writes it) are known, each observer
reports the diameter of their telescope (here read from the simulator's truth; clocks are not
corrected, so a site's clock error stays in its timing residual), and the ephemeris predicts the
transit a few minutes off (as published ephemerides drift). Every run is put on the sky against
the catalogue (only one site writes a WCS), the target is found by its RA/Dec, and the runs are
standardised, each in its filter's band.

The fit: a night of partial transits pins the mid-time and the depth but often not the shape
(a/Rs trades against the inclination and Rp/Rs). When the free fit says so (`weak_shape_reason`),
the demo does what observers do with a catalogue star: a/Rs from the period and the star's mean
density (Seager & Mallen-Ornelas 2003: rho = 3 pi (a/Rs)^3 / (G P^2)) as a Gaussian prior. The
simulated star's catalogue density is the one its true a/Rs implies, quoted with a 10% error as
catalogue densities typically are; the printout compares with the truth only what was fitted
freely.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from engine.io.atomic import write_text
from engine.pipeline import reduce
from engine.plots import plot_transit_fit
from engine.settings import IngestConfig, PipelineConfig, Site
from engine.simulation import simulate
from engine.transit_fit import TransitFit, fit_transit, weak_shape_reason
from engine.warmup import kernel_cache_is_warm, start_warmup

#: How far the demo's "published ephemeris" misses the true mid-time (days): 6 minutes.
EPHEMERIS_ERROR_DAYS = 6.0 / 1440.0

#: Relative error of the star's catalogue density (from Teff, log g and a distance).
DENSITY_RELATIVE_ERROR = 0.10

_G_CGS = 6.674e-8  # cm^3 g^-1 s^-2


def catalogue_density(planet: dict) -> float:
    """The simulated star's mean density (g cm^-3), the one its true a/Rs and period imply."""
    period_s = planet["period_days"] * 86400.0
    return 3.0 * math.pi * planet["a_rs"] ** 3 / (_G_CGS * period_s ** 2)


def a_rs_prior(period_days: float, density: float, density_error: float) -> tuple[float, float]:
    """(a/Rs, its error) from Kepler's third law for a planet of negligible mass: a/Rs =
    (G rho P^2 / 3 pi)^(1/3), so its relative error is a third of the density's."""
    a_rs = (_G_CGS * density * (period_days * 86400.0) ** 2 / (3.0 * math.pi)) ** (1.0 / 3.0)
    return a_rs, a_rs * density_error / (3.0 * density)


def network_config(truth: dict) -> PipelineConfig:
    """What the observers tell the coordinator: each site's telescope (matched by TELESCOP) and
    its aperture diameter, for the scintillation term of the noise model."""
    sites = tuple(Site(name, match=(site["telescope"],), aperture_diameter_m=site["aperture_m"])
                  for name, site in truth["sites"].items())
    return PipelineConfig(ingest=IngestConfig(sites=sites))


def run_demo(out_dir: Path, seed: int = 0, preset: str = "demo", workers: int | None = None,
             echo=print, warm_kernels: bool = True) -> dict:
    """Simulate, reduce and fit the night; print the comparison with the truth. warm_kernels:
    on a cold Numba cache, compile the reduction's kernels in a second process while simulating
    (`engine.warmup`, which runs this with False)."""
    out_dir = Path(out_dir)
    started = time.perf_counter()
    warming = start_warmup() if warm_kernels and not kernel_cache_is_warm() else None
    simulation = _simulate_while_warming(out_dir / "raw", preset, seed, warming)
    echo(simulation.summary())
    truth = simulation.truth
    target = (truth["target"]["ra_deg"], truth["target"]["dec_deg"])
    config = network_config(truth)
    result = reduce([out_dir / "raw"], out_dir, target=target, config=config,
                    catalogue=simulation.catalogue_path, workers=workers)
    echo("")
    echo(result.summary())
    planet = truth["planet"]
    limb_darkening = {k: tuple(v) for k, v in planet["limb_darkening"].items()}
    fit = _fit_night(result.lightcurves, planet, limb_darkening, echo)
    fit_path = out_dir / "FIT.json"
    write_text(fit_path, json.dumps(fit.to_dict(), indent=2) + "\n")
    plot_path = plot_transit_fit(result.lightcurves, fit, out_dir / "transit.png",
                                 limb_darkening=limb_darkening)
    error_s = (fit.tmid - planet["t0_bjd_tdb"]) * 86400.0
    echo("")
    echo(f"true mid-transit      BJD_TDB {planet['t0_bjd_tdb']:.6f}")
    echo(f"recovered mid-transit BJD_TDB {fit.tmid:.6f} +- {fit.tmid_err * 86400:.1f} s "
         f"(off by {error_s:+.1f} s = {error_s / (fit.tmid_err * 86400):+.2f} sigma; "
         f"the ephemeris guess was off by {EPHEMERIS_ERROR_DAYS * 86400:.0f} s)")
    echo(_shape_line(fit, planet))
    echo(f"errors widened x{fit.error_scale:.2f} (chi2_red {fit.chi2_reduced:.2f}, red-noise "
         f"beta {fit.beta:.2f})")
    for run_id, run in fit.runs.items():
        echo(f"  {run_id}: residual rms {run['residual_rms'] * 1e3:.2f} ppt, own mid-time "
             f"{run['timing_residual_s']:+.0f} +- {run['timing_residual_err_s']:.0f} s")
    views = ", ".join(result.report.get("products", []))
    echo(f"products in {out_dir}: frames.parquet, photometry.parquet, stars.parquet, "
         f"lightcurves.parquet, report.json, FIT.json, {plot_path.name}, {views}, masters/, "
         "calibrated/ (each run's calibration recipe)")
    echo(f"demo finished in {time.perf_counter() - started:.1f} s")
    return {"fit": fit.to_dict(), "truth_tmid": planet["t0_bjd_tdb"], "error_s": error_s}


def _simulate_while_warming(raw_dir: Path, preset: str, seed: int, warming):
    """Simulate the night while the warm-up process (or None) compiles the reduction's kernels;
    wait for it, so that the reduction loads them from the cache."""
    try:
        simulation = simulate(raw_dir, preset=preset, seed=seed)
        if warming is not None:
            warming.wait()   # a failed warm-up only means the reduction compiles for itself
    finally:
        if warming is not None and warming.poll() is None:
            warming.kill()
            warming.wait()
    return simulation


def _fit_night(lightcurves, planet: dict, limb_darkening: dict, echo) -> TransitFit:
    """The joint fit, free first; if the night leaves the shape weakly constrained, again with
    a/Rs from the period and the star's catalogue density (said in one line)."""
    settings = {"period": planet["period_days"],
                "t0": planet["t0_bjd_tdb"] + EPHEMERIS_ERROR_DAYS, "limb_darkening": limb_darkening}
    fit = fit_transit(lightcurves, **settings)
    reason = weak_shape_reason(fit)
    if reason is None:
        return fit
    density = catalogue_density(planet)
    prior = a_rs_prior(planet["period_days"], density, DENSITY_RELATIVE_ERROR * density)
    echo(f"the night constrains the transit's shape weakly ({reason}): a/Rs from the period "
         f"and the star's catalogue density {density:.2f} +- "
         f"{DENSITY_RELATIVE_ERROR * density:.2f} g/cm3 (prior {prior[0]:.2f} +- {prior[1]:.2f})")
    return fit_transit(lightcurves, **settings, priors={"a_rs": prior})


def _shape_line(fit: TransitFit, planet: dict) -> str:
    """Rp/Rs, a/Rs and inclination, with the truth beside only what was fitted freely."""
    parts = []
    for name, label, unit, truth in (("rp_rs", "Rp/Rs", "", planet["rp_rs"]),
                                     ("a_rs", "a/Rs", "", planet["a_rs"]),
                                     ("inc", "inclination", " deg", planet["inc_deg"])):
        value, error = getattr(fit, name), getattr(fit, f"{name}_err")
        text = f"{label} {value:.4g}"
        if fit.at_bound.get(name):
            text += f" (at its {fit.at_bound[name]} bound: a limit){unit}"
        else:
            text += f" +- {error:.2g}{unit}"
        if name in fit.priors:
            text += " (from the prior, not compared)"
        elif not fit.at_bound.get(name):
            text += f" (true {truth})"
        parts.append(text)
    return ", ".join(parts)
