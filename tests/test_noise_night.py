"""The noise model against the simulator's truth: on a multi-site night, the errors the engine
stores (the photometry's noise terms, then the ensemble's zero-point error on top) predict the
scatter that constant stars really show, run by run, within 10%."""

import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy.spatial import cKDTree

from engine.config import Config, Site
from engine.demo import _target_positions
from engine.ingest import ingest
from engine.pipeline import PipelineConfig, reduce
from engine.simulation import simulate


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    base = tmp_path_factory.mktemp("noise_night")
    truth = simulate(base / "raw", preset="demo", seed=4).truth
    # What an observer tells the engine: each site's telescope, for the scintillation term.
    sites = tuple(Site(name, match=(site["telescope"],), aperture_diameter_m=site["aperture_m"])
                  for name, site in truth["sites"].items())
    config = PipelineConfig(ingest=Config(sites=sites))
    target = (truth["target"]["ra_deg"], truth["target"]["dec_deg"])
    frames = ingest([base / "raw"], base / "out", target=target, config=config.ingest).frames
    positions = _target_positions(truth, frames)
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
