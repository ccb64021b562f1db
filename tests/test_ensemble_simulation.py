"""The ensemble on the simulator's network night (engine.simulation 'demo': three sites, V / R /
I, a variable comparison, cirrus, airmass, scintillation), measured without images by
tests/synthetic_photometry.py::from_simulation. The issue's 'done when' figures, checked."""

import numpy as np
import pytest
import synthetic_photometry as synthetic

from engine.ensemble import EnsembleConfig, build_run_lightcurve, merge_runs
from engine.flags import MeasurementFlag


@pytest.fixture(scope="module")
def simulated():
    try:
        night = synthetic.from_simulation("demo", seed=0)
    except (ImportError, AttributeError, TypeError) as exc:   # the simulator's API moved
        pytest.skip(f"engine.simulation unavailable as expected: {exc}")
    planet = night["config"].planet
    half = 0.5 * planet.duration_days + 0.004
    config = EnsembleConfig(event_windows=((planet.t0_bjd_tdb - half, planet.t0_bjd_tdb + half),))
    night["results"] = [build_run_lightcurve(r["photometry"], r["frames"], r["stars"])
                        for r in night["runs"]]
    night["windowed"] = [build_run_lightcurve(r["photometry"], r["frames"], r["stars"],
                                              config=config) for r in night["runs"]]
    return night


def test_variable_comparison_weight_share(simulated):
    seen = 0
    for run, result in zip(simulated["runs"], simulated["results"]):
        weights = result.diagnostics["weights"]["comparisons"]
        shares = {c["star"]: c["weight_share"] for c in weights}
        variable = run["truth"]["variable"]
        if variable in shares:
            seen += 1
            assert shares[variable] <= 0.05, (run["site"].name, shares[variable])
            assert variable in result.diagnostics["weights"]["suspected_variables"]
    assert seen >= 2


def test_cirrus_recall_and_clear_frames(simulated):
    cirrus_hit = cirrus_all = clear_hit = clear_all = 0
    for run, result in zip(simulated["runs"], simulated["results"]):
        flags = np.array([f["flags"] for f in result.diagnostics["zero_points"]["frames"]])
        cloud = (flags & int(MeasurementFlag.CLOUD)) != 0
        loss = 1.0 - run["truth"]["transparency"]
        cirrus, clear = loss > 0.02, loss < 0.005
        cirrus_hit += int(cloud[cirrus].sum())
        cirrus_all += int(cirrus.sum())
        clear_hit += int(cloud[clear].sum())
        clear_all += int(clear.sum())
    assert cirrus_all >= 15
    assert cirrus_hit / cirrus_all >= 0.9
    assert clear_hit / clear_all <= 0.05


def test_noise_ratio_every_run(simulated):
    for result in simulated["results"] + simulated["windowed"]:
        noise = result.diagnostics["noise"]
        assert noise["ratio"] <= 1.2, (result.run_id, noise["ratio_basis"], noise["ratio"])
        assert noise["target"]["terms"]["scintillation"] > 0


def test_standardised_constant_stars_agree_across_sites(simulated):
    table, report = merge_runs(simulated["results"], simulated["catalogue"])
    assert report["agreement"]["stars"] >= 3
    assert report["agreement"]["max_spread_mag"] < 0.01
    # Against the truth: constant, well-measured stars land on their G magnitude.
    field = simulated["stars"]
    d = table.to_pydict()
    star_id = np.array(d["star_id"])
    mag = np.array(d["mag_std"])
    good = (np.array(d["flags"]) == 0) & np.isfinite(mag)
    run = np.array(d["run_id"])
    for sid in np.unique(star_id[np.array(d["role"]) == "comparison"]):
        if field.is_variable[sid]:
            continue
        for run_id in np.unique(run):
            rows = good & (star_id == sid) & (run == run_id)
            if rows.sum() > 20:
                assert abs(np.mean(mag[rows]) - field.mag_g[sid]) < 0.01, (sid, run_id)
