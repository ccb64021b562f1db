"""Runs of different sites and filters on one system: offsets and colour terms fitted jointly,
standardisation against a reference catalogue, and stars matched across runs."""

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import synthetic_photometry as synthetic

from engine.ensemble import (EnsembleConfig, build_run_lightcurve, merge_runs,
                             read_reference_catalogue, write_lightcurves)
from engine.errors import EngineValueError, InputNotFoundError


@pytest.fixture(scope="module")
def night():
    return synthetic.network_night(seed=6)


@pytest.fixture(scope="module")
def results(night):
    return [build_run_lightcurve(r["photometry"], r["frames"], r["stars"],
                                 config=EnsembleConfig(include_field_stars=True))
            for r in night.runs]


def _run_means(table, night):
    """{(run_id, true star id): mean mag_std over good frames} for constant stars."""
    d = table.to_pydict()
    run_of = {spec.run_id: k for k, spec in enumerate(night.specs)}
    means = {}
    keys = list(zip(d["run_id"], d["star"]))
    values = np.array(d["mag_std"])
    good = np.array(d["flags"]) == 0
    order = {}
    for i, key in enumerate(keys):
        if good[i] and np.isfinite(values[i]):
            order.setdefault(key, []).append(values[i])
    variables = {0, night.field.variable, *night.field.field_variables.tolist()}
    for (run_id, star), v in order.items():
        true_id = int(night.runs[run_of[run_id]]["truth"]["ids"][star])
        if true_id not in variables and len(v) > 20:
            means[(run_id, true_id)] = float(np.mean(v))
    return means


def _spreads(means, field, brightest=15.0):
    by_star = {}
    for (run_id, star), value in means.items():
        if field.g[star] < brightest:
            by_star.setdefault(star, []).append(value)
    return {s: np.ptp(v) for s, v in by_star.items() if len(v) >= 2}


def test_standardised_constant_stars_agree_across_sites_and_with_the_catalogue(night, results):
    catalogue = synthetic.reference_catalogue(night.field)
    table, report = merge_runs(results, catalogue)
    assert report["system"] == "reference catalogue (G)"
    assert report["catalogue_matches"] > 50 and report["solved"]
    means = _run_means(table, night)
    spreads = _spreads(means, night.field)
    assert len(spreads) >= 20
    assert max(spreads.values()) < 0.01, max(spreads.values())
    # On the catalogue's G system, to the catalogue's accuracy.
    errors = np.array([m - night.field.g[star] for (run, star), m in means.items()
                       if night.field.g[star] < 14.5])
    assert np.median(np.abs(errors)) < 0.004 and np.max(np.abs(errors)) < 0.015
    agreement = report["agreement"]
    assert agreement["p95_spread_mag"] < 0.01
    for run in report["runs"]:
        assert run["colour_degree"] == 3 and run["residual_rms_mag"] < 0.01
        assert run["residual_chi2_per_star"] < 3.0


def test_target_and_variable_curves_line_up_across_telescopes(night, results):
    table, _ = merge_runs(results, synthetic.reference_catalogue(night.field))
    d = table.to_pydict()
    star_id = np.array(d["star_id"])
    time = np.array(d["time_bjd_tdb"])
    mag = np.array(d["mag_std"])
    good = np.array(d["flags"]) == 0
    run = np.array(d["run_id"])
    target_id = 10 ** 9 + 0                  # the catalogue's id of the target
    variable_id = 10 ** 9 + night.field.variable
    # Out of transit, the target's standardised magnitude is its G in every run that sees it.
    for run_id in ("negev_20241214_R", "florida_20241214_I"):
        rows = (star_id == target_id) & (run == run_id) & good & (
            np.abs(time - synthetic.T0) > 0.07)
        assert abs(np.mean(mag[rows]) - night.field.g[0]) < 0.01
    # The variable comparison's curves from two telescopes agree where they overlap in time.
    rows = (star_id == variable_id) & good
    a = rows & (run == "negev_20241214_R") & (time > synthetic.T0 - 0.05)
    b = rows & (run == "lapalma_20241214_V") & (time < synthetic.T0 - 0.008)
    assert a.sum() > 10 and b.sum() > 10
    assert abs(np.mean(mag[a]) - np.mean(mag[b])) < 0.01
    truth = night.field.g[night.field.variable] + night.field.variable_amplitude * np.cos(
        2 * np.pi * (time[rows] - synthetic.T0 + 0.03) / night.field.variable_period)
    assert np.sqrt(np.mean((mag[rows] - truth) ** 2)) < 0.01


def test_without_catalogue_runs_share_the_reference_runs_system(night, results):
    table, report = merge_runs(results)
    reference = [r for r in report["runs"] if r["reference"]]
    assert len(reference) == 1 and reference[0]["offset_mag"] == 0.0
    spreads = _spreads(_run_means(table, night), night.field)
    assert len(spreads) >= 20 and max(spreads.values()) < 0.01


def test_stars_matched_by_star_id_or_position_alike():
    night = synthetic.network_night(seed=6, n_frames=40, star_ids=True)
    by_id = [build_run_lightcurve(r["photometry"], r["frames"], r["stars"]) for r in night.runs]
    assert all(r.diagnostics["star_id_source"] == "star table" for r in by_id)
    table, report = merge_runs(by_id)
    assert report["star_matching"] == "star_id of the star tables"
    # The global id is the star table's: the target is star 0 in every run.
    d = table.to_pydict()
    targets = {i for i, role in zip(d["star_id"], d["role"]) if role == "target"}
    assert targets == {0}
    stripped = [build_run_lightcurve(r["photometry"], r["frames"],
                                     r["stars"].drop_columns(["star_id"])) for r in night.runs]
    table2, report2 = merge_runs(stripped)
    assert report2["star_matching"].startswith("positions matched")
    assert report2["stars"] == report["stars"]
    np.testing.assert_allclose(table2.column("mag_std").to_numpy(),
                               table.column("mag_std").to_numpy(), atol=1e-9)


def test_reference_catalogue_files_and_bad_inputs(tmp_path, night, results):
    catalogue = synthetic.reference_catalogue(night.field)
    pacsv.write_csv(catalogue, tmp_path / "gaia.csv")
    pq.write_table(catalogue, tmp_path / "gaia.parquet")
    for name in ("gaia.csv", "gaia.parquet"):
        read = read_reference_catalogue(tmp_path / name)
        np.testing.assert_allclose(read.column("mag").to_numpy(), catalogue.column("G").to_numpy())
    with pytest.raises(InputNotFoundError):
        read_reference_catalogue(tmp_path / "missing.csv")
    with pytest.raises(EngineValueError, match="colour"):
        merge_runs(results, catalogue.drop_columns(["BP_RP"]))
    with pytest.raises(EngineValueError, match="unique"):
        merge_runs([results[0], results[0]])
    with pytest.raises(EngineValueError, match="RunLightCurve"):
        merge_runs([results[0].table])
    table, report = merge_runs(results, catalogue)
    path = write_lightcurves(table, tmp_path / "lightcurves.parquet")
    back = pq.read_table(path)
    assert back.num_rows == sum(r.table.num_rows for r in results)
    assert set(back.column("run_id").to_pylist()) == {s.run_id for s in night.specs}
    assert pa.types.is_uint32(back.schema.field("flags").type)
