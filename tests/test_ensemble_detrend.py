"""Detrending never fits away the event: the safe default, out-of-event fits, SysRem, and the
differential extinction's colour term learnt from the field."""

import dataclasses

import numpy as np
import pyarrow as pa
import pytest
import synthetic_photometry as synthetic

from engine.ensemble import EnsembleConfig, build_run_lightcurve

EVENT = ((synthetic.T0 - 0.062, synthetic.T0 + 0.062),)


def _target(result):
    d = result.table.to_pydict()
    rows = np.array(d["role"]) == "target"
    return {k: np.array(v)[rows] for k, v in d.items()}


def _depth_scale(curve, truth_flux):
    """Measured over true transit depth (1: the depth is kept; from the mean out-of-transit
    minus the mean in-transit relative flux over good frames), its error, and the rms of
    measured / true relative flux."""
    good = (curve["flags"] == 0) & np.isfinite(curve["rel_flux"])
    inside, outside = good & (truth_flux < 0.99), good & (truth_flux == 1.0)
    ratio = curve["rel_flux"] / truth_flux
    measured = np.mean(curve["rel_flux"][outside]) - np.mean(curve["rel_flux"][inside])
    true = np.mean(truth_flux[outside]) - np.mean(truth_flux[inside])
    error = np.sqrt(np.var(ratio[outside]) / outside.sum() + np.var(ratio[inside]) / inside.sum())
    return measured / true, error / true, np.std(ratio[good])


@pytest.fixture(scope="module")
def systematic_night():
    specs = [dataclasses.replace(s, shared_systematic=0.006, cirrus=())
             for s in synthetic.network_specs(120)]
    return synthetic.network_night(seed=5, specs=specs)


def test_default_never_fits_the_target_and_keeps_the_transit():
    night = synthetic.network_night(seed=2)
    for run in night.runs:
        result = build_run_lightcurve(run["photometry"], run["frames"], run["stars"])
        fit = result.diagnostics["detrending"]["target_fit"]
        assert fit["applied"] is False and "safe default" in fit["reason"]
        curve = _target(result)
        # The only trend removed from the target is the colour term learnt from the field.
        colour = result.diagnostics["detrending"]["colour_extinction"]
        coefficient = colour["coefficient"] if colour["reason"] is None else 0.0   # applied?
        airmass = curve["airmass"]
        expected = 10 ** (-0.4 * coefficient * result.diagnostics["target"]["colour"]
                          * (airmass - airmass.mean()))
        model = curve["detrend_model"]
        np.testing.assert_allclose(model / model.mean(), expected / expected.mean(), rtol=1e-9)
        truth = run["truth"]["target_flux"]
        if (truth == 1.0).sum() >= 20 and (truth < 0.99).sum() >= 20:   # runs with both
            scale, error, _ = _depth_scale(curve, truth)
            assert abs(scale - 1.0) < 4 * error + 0.02, (run["spec"].site, scale, error)


def test_out_of_event_fit_removes_systematics_and_keeps_the_transit(systematic_night):
    config = EnsembleConfig(event_windows=EVENT)
    for run in (systematic_night.runs[0], systematic_night.runs[2]):   # runs with a baseline
        raw = build_run_lightcurve(run["photometry"], run["frames"], run["stars"])
        fitted = build_run_lightcurve(run["photometry"], run["frames"], run["stars"],
                                      config=config)
        detrending = fitted.diagnostics["detrending"]
        assert detrending["sysrem"]["components"] >= 1
        assert detrending["target_fit"]["applied"]
        truth = run["truth"]["target_flux"]
        _, _, rms_raw = _depth_scale(_target(raw), truth)
        scale, error, rms_fit = _depth_scale(_target(fitted), truth)
        assert rms_fit < 0.8 * rms_raw, (run["spec"].site, rms_raw, rms_fit)
        assert abs(scale - 1.0) < 4 * error + 0.02, (run["spec"].site, scale, error)
        noise = fitted.diagnostics["noise"]
        assert noise["ratio_basis"] == "rms_ratio" and noise["ratio"] <= 1.2


def test_in_event_frames_never_enter_the_fit(systematic_night):
    run = systematic_night.runs[0]
    config = EnsembleConfig(event_windows=EVENT)
    first = build_run_lightcurve(run["photometry"], run["frames"], run["stars"], config=config)
    # Change the target's flux inside the event window beyond recognition.
    phot = run["photometry"]
    time = np.asarray(run["frames"].column("time_bjd_tdb").to_numpy())
    frame = np.asarray(phot.column("frame").to_numpy())
    star = np.asarray(phot.column("star").to_numpy())
    inside = (time[frame] > EVENT[0][0]) & (time[frame] < EVENT[0][1])
    hit = inside & (star == run["truth"]["target"])
    flux = np.asarray(phot.column("flux").to_numpy()).copy()
    flux[hit] *= np.linspace(0.5, 1.3, hit.sum())
    changed = phot.set_column(phot.column_names.index("flux"), "flux", pa.array(flux))
    second = build_run_lightcurve(changed, run["frames"], run["stars"], config=config)
    a = first.diagnostics["detrending"]["target_fit"]
    b = second.diagnostics["detrending"]["target_fit"]
    assert a["coefficients"].keys() == b["coefficients"].keys()
    for key, value in a["coefficients"].items():
        if key != "notes":
            assert b["coefficients"][key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    np.testing.assert_allclose(_target(first)["detrend_model"], _target(second)["detrend_model"],
                               rtol=1e-9)


def test_baseline_windows_select_the_same_frames(systematic_night):
    run = systematic_night.runs[0]
    time = np.asarray(run["frames"].column("time_bjd_tdb").to_numpy())
    by_event = build_run_lightcurve(run["photometry"], run["frames"], run["stars"],
                                    config=EnsembleConfig(event_windows=EVENT))
    by_baseline = build_run_lightcurve(
        run["photometry"], run["frames"], run["stars"],
        config=EnsembleConfig(baseline_windows=((time[0] - 1, EVENT[0][0] - 1e-6),)))
    np.testing.assert_allclose(_target(by_event)["rel_flux"], _target(by_baseline)["rel_flux"],
                               rtol=1e-9)


def test_sysrem_keeps_only_significant_components():
    clean = synthetic.network_night(seed=4).runs[0]
    result = build_run_lightcurve(clean["photometry"], clean["frames"], clean["stars"])
    sysrem = result.diagnostics["detrending"]["sysrem"]
    assert sysrem["components"] == 0 and sysrem["reason"]
    assert all(g <= sysrem["chi2_threshold"] for g in sysrem["chi2_gain"])


def test_colour_extinction_learnt_from_the_field():
    spec = dataclasses.replace(synthetic.network_specs(150)[1], extinction_colour=-0.06,
                               hour_angle_start_h=1.5, start_h=0.0, end_h=4.0, cirrus=())
    night = synthetic.network_night(seed=7, specs=[spec])
    run = night.runs[0]
    result = build_run_lightcurve(run["photometry"], run["frames"], run["stars"])
    colour = result.diagnostics["detrending"]["colour_extinction"]
    assert colour["reason"] is None and colour["stars"] > 50
    assert colour["coefficient"] == pytest.approx(-0.06, abs=max(3 * colour["error"], 0.01))
    # Turned off, the red target keeps an airmass trend it does not have.
    off = build_run_lightcurve(run["photometry"], run["frames"], run["stars"],
                               config=EnsembleConfig(colour_extinction=False))
    truth = run["truth"]["target_flux"]
    airmass = run["truth"]["airmass"]
    for res, small in ((result, True), (off, False)):
        curve = _target(res)
        good = curve["flags"] == 0
        slope = np.polyfit(airmass[good], curve["rel_flux"][good] / truth[good], 1)[0]
        expected = 0.4 * np.log(10) * 0.06 * (0.85 - 1.0)   # ~ -k'' (c_t - c_ens) in flux
        if small:
            assert abs(slope) < 0.004, slope
        else:
            assert abs(slope) > 0.5 * abs(expected)


def test_regressors_fitted_out_of_event(systematic_night):
    run = systematic_night.runs[2]
    config = EnsembleConfig(event_windows=EVENT, regressors=("fwhm", "x", "y", "sky"),
                            sysrem_components=0, airmass_term=False)
    result = build_run_lightcurve(run["photometry"], run["frames"], run["stars"], config=config)
    fit = result.diagnostics["detrending"]["target_fit"]
    assert fit["applied"] and "fwhm" in fit["coefficients"]
    # The target's response to the seeing is what the truth says (mag per unit of the
    # standardised seeing vector; fwhm is in pixels, so compare signs and significance).
    response = run["truth"]["response"][run["truth"]["target"]]
    assert np.sign(fit["coefficients"]["fwhm"]) == np.sign(response)
