"""One run's light curves end to end on synthetic photometry with a known truth: the variable
comparison's weight, cirrus flags, noise ratios, the aperture choice, the product's schema."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import synthetic_photometry as synthetic

from engine.ensemble import (LIGHTCURVES_SCHEMA, EnsembleConfig, build_run_lightcurve,
                             write_lightcurves, write_report)
from engine.errors import EngineValueError
from engine.flags import MeasurementFlag

# The transit's first to fourth contact, with a margin (BJD_TDB).
EVENT = ((synthetic.T0 - 0.062, synthetic.T0 + 0.062),)


@pytest.fixture(scope="module")
def night():
    return synthetic.network_night(seed=3)


@pytest.fixture(scope="module")
def results(night):
    return [build_run_lightcurve(run["photometry"], run["frames"], run["stars"])
            for run in night.runs]


@pytest.fixture(scope="module")
def windowed(night):
    config = EnsembleConfig(event_windows=EVENT)
    return [build_run_lightcurve(run["photometry"], run["frames"], run["stars"], config=config)
            for run in night.runs]


def _frame_flags(result):
    return np.array([f["flags"] for f in result.diagnostics["zero_points"]["frames"]],
                    dtype=np.uint32)


def test_variable_comparison_gets_almost_no_weight(night, results):
    for run, result in zip(night.runs, results):
        weights = result.diagnostics["weights"]
        shares = {c["star"]: c["weight_share"] for c in weights["comparisons"]}
        assert sum(shares.values()) == pytest.approx(1.0)
        variable = run["truth"]["variable"]
        assert variable in shares, "the variable candidate should be chosen (it looks ideal)"
        assert shares[variable] <= 0.05, (run["spec"].site, shares[variable])
        assert variable in weights["suspected_variables"]
        # The constant comparisons share the rest; none is mistaken for a variable.
        assert len(weights["suspected_variables"]) <= 1


def test_cirrus_frames_flagged_clear_frames_not(night, results):
    for run, result in zip(night.runs, results):
        cloud = (_frame_flags(result) & np.uint32(MeasurementFlag.CLOUD)) != 0
        loss = run["truth"]["cirrus_loss"]
        cirrus, clear = loss > 0.02, loss < 0.005
        assert cirrus.sum() >= 3
        assert cloud[cirrus].mean() >= 0.9, (run["spec"].site, cloud[cirrus].mean())
        assert cloud[clear].mean() <= 0.05, (run["spec"].site, cloud[clear].mean())
        # Every flagged frame has its reason, in words, in the report; the rows carry the flag.
        flagged = {f["frame"]: f for f in result.diagnostics["flagged_frames"]}
        for k in np.flatnonzero(cloud):
            assert "transparency" in flagged[k]["reason"] and "CLOUD" in flagged[k]["flags"]
        rows = result.table.to_pydict()
        for frame, flags in zip(rows["frame"], rows["flags"]):
            assert bool(flags & MeasurementFlag.CLOUD) == bool(cloud[frame])
        # Nothing is dropped: every frame has its rows.
        assert len(set(rows["frame"])) == run["spec"].n_frames
        # The transparency follows the truth on the cloudy frames.
        transparency = np.array(result.table.column("transparency").to_numpy())
        frames = np.array(rows["frame"])
        truth = run["truth"]["transparency"][frames]
        assert np.max(np.abs(transparency[cloud[frames]] - truth[cloud[frames]])) < 0.01


def test_patchy_scatter_is_flagged_as_noise_model_exceeded(night):
    run = night.runs[0]
    photometry = run["photometry"]
    frame = np.asarray(photometry.column("frame").to_numpy())
    flux = np.asarray(photometry.column("flux").to_numpy()).copy()
    rng = np.random.default_rng(0)
    hit = frame == 40                      # one frame whose stars scatter by 5% (patchy cloud)
    flux[hit] *= 1.0 + 0.05 * rng.standard_normal(hit.sum())
    photometry = photometry.set_column(photometry.column_names.index("flux"), "flux",
                                       pa.array(flux))
    result = build_run_lightcurve(photometry, run["frames"], run["stars"])
    flags = _frame_flags(result)
    assert flags[40] & MeasurementFlag.NOISE_MODEL_EXCEEDED
    assert (flags & np.uint32(MeasurementFlag.NOISE_MODEL_EXCEEDED)).astype(bool).sum() == 1
    reason = [f for f in result.diagnostics["flagged_frames"] if f["frame"] == 40][0]["reason"]
    assert "comparison scatter" in reason


def test_achieved_over_expected_scatter_within_1_2(results, windowed):
    for result in results + windowed:
        noise = result.diagnostics["noise"]
        assert noise["scintillation_source"] == "photometry (var_scintillation)"
        assert noise["ratio"] is not None and 0.7 < noise["ratio"] <= 1.2, noise["ratio"]
        assert noise["target"]["terms"]["scintillation"] > 0
        for check in noise["check_stars"]:
            assert 0.7 < check["rms_ratio"] <= 1.2, check
    # With the event windows, runs with out-of-event frames quote the rms ratio.
    quoted = [r.diagnostics["noise"]["ratio_basis"] for r in windowed]
    assert quoted == ["rms_ratio", "point_to_point_ratio", "rms_ratio"]


def test_noise_ratio_exposes_errors_that_are_too_small(night):
    run = night.runs[2]
    photometry = run["photometry"]
    for name in ("var_poisson", "var_sky", "var_read", "var_scintillation"):
        values = np.asarray(photometry.column(name).to_numpy()) * 0.25   # errors halved
        photometry = photometry.set_column(photometry.column_names.index(name), name,
                                           pa.array(values))
    result = build_run_lightcurve(photometry, run["frames"], run["stars"],
                                  config=EnsembleConfig(event_windows=EVENT))
    assert result.diagnostics["noise"]["ratio"] > 1.4


def test_aperture_choice_and_forced_aperture(night, results):
    run = night.runs[1]
    report = results[1].diagnostics["aperture"]
    scatter = report["scatter_mag"]
    assert set(scatter) == {"r=2", "r=3", "r=4.5", "r=6"}
    assert report["chosen"] == min(scatter, key=scatter.get)
    assert report["chosen"] != "r=2"     # the smallest aperture loses to seeing changes
    forced = build_run_lightcurve(run["photometry"], run["frames"], run["stars"],
                                  config=EnsembleConfig(aperture=6.0))
    assert forced.diagnostics["aperture"]["chosen"] == "r=6"
    assert set(forced.table.column("aperture").to_pylist()) == {"r=6"}
    with pytest.raises(EngineValueError, match="no photometry for aperture"):
        build_run_lightcurve(run["photometry"], run["frames"], run["stars"],
                             config=EnsembleConfig(aperture=5.0))


def test_psf_fluxes_are_an_alternative_aperture(night):
    run = night.runs[1]
    phot = run["photometry"]
    radius = np.asarray(phot.column("radius").to_numpy())
    psf = phot.filter(pa.array(radius == 4.5)).drop_columns(["radius"])
    result = build_run_lightcurve(phot.filter(pa.array(radius == 2.0)), run["frames"],
                                  run["stars"], psf=psf)
    assert set(result.diagnostics["aperture"]["scatter_mag"]) == {"r=2", "psf"}
    assert result.diagnostics["aperture"]["chosen"] == "psf"


def test_table_schema_roles_and_values(night, results):
    for run, result in zip(night.runs, results):
        table = result.table
        assert table.schema.equals(LIGHTCURVES_SCHEMA, check_metadata=False)
        d = table.to_pydict()
        roles = np.array(d["role"])
        assert (roles == "target").sum() == run["spec"].n_frames
        assert set(roles) == {"target", "comparison", "check"}
        assert set(d["run_id"]) == {run["spec"].run_id}
        assert set(d["site"]) == {run["spec"].site} and set(d["filter"]) == {run["spec"].filter}
        target = roles == "target"
        assert set(np.array(d["star"])[target]) == {run["truth"]["target"]}
        rel = np.array(d["rel_flux"])
        good = np.array(d["flags"]) == 0
        assert np.all(np.isfinite(rel[good])) and abs(np.median(rel[good & ~target]) - 1) < 0.01
        assert np.all(np.array(d["rel_flux_err"])[good] > 0)
        time = np.array(d["time_bjd_tdb"])[target]
        assert np.all(np.diff(time) > 0)
        # mag and rel_flux tell the same story.
        mag = np.array(d["mag"])[target]
        rel_t = rel[target]
        ok = np.isfinite(mag)
        slope = np.polyfit(-2.5 * np.log10(rel_t[ok]), mag[ok], 1)[0]
        assert slope == pytest.approx(1.0, abs=1e-6)


def test_report_is_json_and_products_are_written_atomically(tmp_path, results):
    result = results[0]
    path = write_report({"runs": {result.run_id: result.diagnostics}}, tmp_path / "report.json")
    report = json.loads(path.read_text())
    run = report["runs"][result.run_id]
    for key in ("weights", "zero_points", "flagged_frames", "aperture", "noise", "selection",
                "detrending"):
        assert key in run
    out = write_lightcurves(result.table, tmp_path / "lightcurves.parquet")
    back = pq.read_table(out)
    assert back.schema.equals(result.table.schema, check_metadata=False)
    for name in back.column_names:
        ours, theirs = back.column(name).to_pylist(), result.table.column(name).to_pylist()
        assert [v if v == v else "nan" for v in ours] == [v if v == v else "nan" for v in theirs]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lightcurves.parquet", "report.json"]
    with pytest.raises(EngineValueError, match="lack"):
        write_lightcurves(result.table.drop_columns(["role"]), tmp_path / "x.parquet")


def test_inputs_are_checked(night):
    run = night.runs[0]
    with pytest.raises(EngineValueError, match="lacks column"):
        build_run_lightcurve(run["photometry"].drop_columns(["flux"]), run["frames"],
                             run["stars"])
    with pytest.raises(EngineValueError, match="frames missing"):
        build_run_lightcurve(run["photometry"], run["frames"].slice(0, 10), run["stars"])
    stars = run["stars"].drop_columns(["is_target"])
    with pytest.raises(EngineValueError, match="no target"):
        build_run_lightcurve(run["photometry"], run["frames"], stars)
    target = run["truth"]["target"]
    result = build_run_lightcurve(run["photometry"], run["frames"], stars, target=target,
                                  config=EnsembleConfig(aperture=4.5))
    assert result.diagnostics["target"]["star"] == target
    with pytest.raises(EngineValueError, match="not in the star table"):
        build_run_lightcurve(run["photometry"], run["frames"], stars, target=10 ** 6)
    with pytest.raises(EngineValueError):
        EnsembleConfig(event_windows=((2.0, 1.0),))
    with pytest.raises(EngineValueError):
        EnsembleConfig(regressors=("moon",))


def test_frames_without_comparisons_get_no_ensemble(night):
    run = night.runs[0]
    phot = run["photometry"]
    frame = np.asarray(phot.column("frame").to_numpy())
    star = np.asarray(phot.column("star").to_numpy())
    target = run["truth"]["target"]
    keep = (frame != 7) | (star == target)          # frame 7: only the target was measured
    result = build_run_lightcurve(phot.filter(pa.array(keep)), run["frames"], run["stars"])
    flags = _frame_flags(result)
    assert flags[7] & MeasurementFlag.NO_ENSEMBLE
    d = result.table.to_pydict()
    rows = [i for i, f in enumerate(d["frame"]) if f == 7 and d["role"][i] == "target"]
    assert np.isnan(d["rel_flux"][rows[0]])
    assert d["flags"][rows[0]] & MeasurementFlag.NO_ENSEMBLE
