"""The reduced multi-site night against the simulator's truth.

- Noise: the errors the engine stores (the photometry's noise terms, then the ensemble's
  zero-point error on top) predict the scatter that constant stars really show, run by run,
  within 10%.
- Transit: the joint fit finds the mid-time within 2 sigma, and over transits injected into the
  night's own light curve (its noise and systematics kept) the quoted error is within a factor
  1.5 of the scatter of the recovered mid-times.
"""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from scipy.spatial import cKDTree

from engine.demo import EPHEMERIS_ERROR_DAYS, network_config
from engine.ingest import ingest
from engine.kernels.transit import transit_light_curve
from engine.pipeline import reduce
from engine.simulation import simulate, target_positions
from engine.transit_fit import fit_transit


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    base = tmp_path_factory.mktemp("noise_night")
    truth = simulate(base / "raw", preset="demo", seed=0).truth  # the demo command's night
    config = network_config(truth)  # each site's telescope, as the demo configures it
    target = (truth["target"]["ra_deg"], truth["target"]["dec_deg"])
    frames = ingest([base / "raw"], base / "out", target=target, config=config.ingest).frames
    positions = target_positions(truth, frames)
    result = reduce([base / "raw"], base / "out", target=target, target_xy=positions,
                    config=config)
    return base / "out", result, truth, frames


def _truth_ids(out, run_id, truth_run, target_star, target_id):
    """Run star number -> truth star id, by position on the first frame (the target fixes the
    offset between the calibrated grid and the simulator's)."""
    photometry = pq.read_table(out / "photometry" / f"{run_id}.parquet",
                               columns=["frame", "star", "x", "y", "radius"])
    column = {name: photometry.column(name).to_numpy() for name in photometry.column_names}
    first = (column["frame"] == 0) & (column["radius"] == column["radius"].min())
    stars, xy = column["star"][first], np.c_[column["x"][first], column["y"][first]]
    true_xy = {s["id"]: (s["x"], s["y"]) for s in truth_run["star_positions"]}
    offset = np.subtract(true_xy[target_id], xy[stars == target_star][0])
    ids = list(true_xy)
    distance, nearest = cKDTree([true_xy[i] for i in ids]).query(xy + offset)
    return {int(s): ids[j] for s, d, j in zip(stars, distance, nearest) if d < 1.5}


def test_stored_errors_predict_the_scatter_of_constant_stars(night):
    out, result, truth, frames = night
    lightcurves = pq.read_table(out / "lightcurves.parquet")
    column = {name: np.asarray(lightcurves.column(name).to_pylist())
              for name in ("run_id", "star", "role", "rel_flux", "rel_flux_err", "flags")}
    constant = {s["id"] for s in truth["stars"] if not s["is_variable"] and not s["is_target"]}
    runs_by_file = {r["light_files"][0].rsplit("/", 1)[-1]: r for r in truth["runs"]}
    first_file = {row["run_id"]: row["path"].rsplit("/", 1)[-1] for row in frames.to_pylist()
                  if row["frame_type"] == "light" and row["cube_index"] == 0}
    ratios = {}
    for run_id in result.runs:
        mine = column["run_id"] == run_id
        target_star = int(column["star"][mine & (column["role"] == "target")][0])
        ids = _truth_ids(out, run_id, runs_by_file[first_file[run_id]], target_star,
                         truth["target"]["id"])
        chi2, dof, used = 0.0, 0, 0
        for star in set(column["star"][mine & (column["role"] != "target")].tolist()):
            if ids.get(star) not in constant:
                continue
            good = (mine & (column["star"] == star) & (column["flags"] == 0)
                    & np.isfinite(column["rel_flux"]) & (column["rel_flux_err"] > 0))
            flux = column["rel_flux"][good].astype(float)
            error = column["rel_flux_err"][good].astype(float)
            if flux.size < 20:
                continue
            weights = 1.0 / error ** 2
            mean = np.sum(weights * flux) / np.sum(weights)
            chi2 += float(np.sum(((flux - mean) / error) ** 2))
            dof += flux.size - 1
            used += 1
        assert used >= 5, (run_id, used)
        ratios[run_id] = np.sqrt(chi2 / dof)  # achieved / predicted scatter, pooled
    assert all(0.9 <= r <= 1.1 for r in ratios.values()), ratios


def _planet_model(table, planet, tmid):
    """The planet's transit (per-row limb darkening from the filter) at mid-time tmid."""
    time = table.column("time_bjd_tdb").to_numpy()
    bands = np.asarray(table.column("filter").to_pylist())
    model = np.ones_like(time)
    for band in set(bands.tolist()):
        rows = bands == band
        model[rows] = transit_light_curve(time[rows], tmid, planet["period_days"], planet["rp_rs"],
                                          planet["a_rs"], planet["inc_deg"],
                                          *planet["limb_darkening"][band])
    return model


def test_joint_fit_finds_the_mid_time_and_its_error_is_honest(night):
    out, result, truth, _ = night
    planet = truth["planet"]
    limb_darkening = {band: tuple(v) for band, v in planet["limb_darkening"].items()}
    period, true_tmid = planet["period_days"], planet["t0_bjd_tdb"]
    guess = true_tmid + EPHEMERIS_ERROR_DAYS  # a published ephemeris a few minutes off
    fit = fit_transit(result.lightcurves, period=period, t0=guess, limb_darkening=limb_darkening)
    assert abs(fit.tmid - true_tmid) < 2.0 * fit.tmid_err, (fit.tmid - true_tmid, fit.tmid_err)

    # Injections: the target's light curve with the true transit divided out leaves the night's
    # noise and systematics; each injection cyclically shifts every run's residuals by a random
    # lag (the "prayer bead": a new noise draw with the same red noise) and puts the planet
    # back at a random mid-time. The fits' quoted errors must match their actual scatter.
    target = result.lightcurves.filter(pc.equal(result.lightcurves.column("role"), "target"))
    target = target.sort_by([("run_id", "ascending"), ("time_bjd_tdb", "ascending")])
    flux = target.column("rel_flux").to_numpy(zero_copy_only=False)
    residual = flux / _planet_model(target, planet, true_tmid)
    runs = np.asarray(target.column("run_id").to_pylist())
    good = (target.column("flags").to_numpy(zero_copy_only=False) == 0) & np.isfinite(flux)
    rng = np.random.default_rng(11)
    offsets, errors = [], []
    for _ in range(30):
        shuffled = residual.copy()
        for run in set(runs.tolist()):
            rows = np.flatnonzero((runs == run) & good)
            shuffled[rows] = np.roll(residual[rows], rng.integers(rows.size))
        tmid = true_tmid + rng.uniform(-10.0, 10.0) / 1440.0
        injected = shuffled * _planet_model(target, planet, tmid)
        table = target.set_column(target.column_names.index("rel_flux"), "rel_flux",
                                  pa.array(injected))
        fit = fit_transit(table, period=period, t0=tmid + EPHEMERIS_ERROR_DAYS,
                          limb_darkening=limb_darkening)
        offsets.append(fit.tmid - tmid)
        errors.append(fit.tmid_err)
    ratio = np.median(errors) / np.std(offsets)
    assert 1 / 1.5 <= ratio <= 1.5, (ratio, np.median(errors) * 86400, np.std(offsets) * 86400)
