"""Joint transit fits: recovery of injected transits and the coverage of the quoted errors."""

import numpy as np
import pyarrow as pa
import pyarrow.compute
import pytest

from engine.errors import EngineValueError
from engine.kernels.transit import transit_light_curve
from engine.limb_darkening import TEFF_RANGE_K, band_wavelength_nm, grey_atmosphere_coefficients
from engine.transit_fit import fit_transit, red_noise_beta, weak_shape_reason

PERIOD, TMID, RP, AR, INC = 3.2, 2460659.6105, 0.12, 9.5, 88.5
LD = {"V": (0.47, 0.24), "R": (0.38, 0.26), "I": (0.29, 0.27)}


def _network_night(rng, noise=0.002, clock_offset_s=0.0, tmid=TMID):
    """Three sites, each covering part of the transit, with their own baselines and filters."""
    runs = [("ingress-site", "V", -0.10, 0.02, 1.02, 0.03),
            ("middle-site", "R", -0.03, 0.07, 0.97, -0.02),
            ("egress-site", "I", 0.01, 0.11, 1.05, 0.01)]
    columns = {k: [] for k in ("run_id", "time_bjd_tdb", "rel_flux", "rel_flux_err", "airmass",
                               "filter", "exptime", "role", "flags")}
    for name, band, start, stop, offset, slope in runs:
        t = tmid + np.arange(start, stop, 90.0 / 86400.0)
        airmass = 1.0 + 0.5 * ((t - t[0]) / (t[-1] - t[0]) - 0.3) ** 2
        shift = clock_offset_s / 86400.0 if name == "middle-site" else 0.0
        model = transit_light_curve(t - shift, tmid, PERIOD, RP, AR, INC, *LD[band],
                                    exptime=60.0 / 86400.0)
        flux = model * offset * (1 + slope * (airmass - 1)) + rng.normal(0, noise, t.size)
        n = t.size
        columns["run_id"] += [name] * n
        columns["time_bjd_tdb"] += t.tolist()
        columns["rel_flux"] += flux.tolist()
        columns["rel_flux_err"] += [noise] * n
        columns["airmass"] += airmass.tolist()
        columns["filter"] += [band] * n
        columns["exptime"] += [60.0] * n
        columns["role"] += ["target"] * n
        columns["flags"] += [0] * n
    table = pa.table(columns)
    return table.set_column(table.column_names.index("flags"), "flags",
                            pa.array(columns["flags"], pa.uint32()))


def test_recovers_injected_transit_from_partial_runs():
    rng = np.random.default_rng(1)
    fit = fit_transit(_network_night(rng), period=PERIOD, t0=TMID + 0.01, limb_darkening=LD)
    assert abs(fit.tmid - TMID) < 3 * fit.tmid_err
    assert fit.tmid_err < 60 / 86400  # well under a minute with 2 mmag points
    assert fit.rp_rs == pytest.approx(RP, abs=4 * fit.rp_rs_err)
    assert fit.chi2_reduced == pytest.approx(1.0, abs=0.2)
    assert set(fit.runs) == {"ingress-site", "middle-site", "egress-site"}
    for run in fit.runs.values():
        assert run["residual_rms"] == pytest.approx(0.002, rel=0.2)
    assert fit.to_dict()["depth"] == pytest.approx(fit.rp_rs ** 2)


def test_clock_error_shows_in_the_run_timing_residuals():
    rng = np.random.default_rng(2)
    fit = fit_transit(_network_night(rng, noise=0.0005, clock_offset_s=120.0), period=PERIOD,
                      t0=TMID, limb_darkening=LD)
    middle = fit.runs["middle-site"]
    others = [fit.runs["ingress-site"], fit.runs["egress-site"]]
    # The middle site's clock is 120 s late: its own mid-time sits ~120 s after the others'.
    assert middle["tmid"] - np.mean([r["tmid"] for r in others]) == pytest.approx(
        120.0 / 86400.0, abs=4 * middle["tmid_err"] + 10 / 86400)


def test_error_bars_cover_the_truth_over_injections():
    rng = np.random.default_rng(3)
    pulls, errors, offsets = [], [], []
    for _ in range(24):
        tmid = TMID + rng.uniform(-0.004, 0.004)
        fit = fit_transit(_network_night(rng, noise=0.003, tmid=tmid), period=PERIOD, t0=TMID,
                          limb_darkening=LD)
        pulls.append((fit.tmid - tmid) / fit.tmid_err)
        errors.append(fit.tmid_err)
        offsets.append(fit.tmid - tmid)
    pulls = np.abs(pulls)
    assert 0.5 <= np.mean(pulls < 1.0) <= 0.9  # ~68% within 1 sigma
    assert np.mean(pulls < 2.5) >= 0.9
    # The quoted uncertainty is within a factor 1.5 of the scatter over injections.
    ratio = np.median(errors) / np.std(offsets)
    assert 1 / 1.5 <= ratio <= 1.5


def test_o_minus_c_against_an_ephemeris():
    rng = np.random.default_rng(4)
    fit = fit_transit(_network_night(rng), period=PERIOD, t0=TMID, limb_darkening=LD,
                      ephemeris=(TMID - 10 * PERIOD - 0.001, PERIOD))
    assert fit.o_minus_c == pytest.approx(0.001, abs=3 * fit.tmid_err)


def test_priors_pin_the_shape_of_partial_transits():
    rng = np.random.default_rng(6)
    table = _network_night(rng, noise=0.004)
    free = fit_transit(table, period=PERIOD, t0=TMID, limb_darkening=LD)
    pinned = fit_transit(table, period=PERIOD, t0=TMID, limb_darkening=LD,
                         priors={"a_rs": (AR, 0.05), "inc": (INC, 0.1)})
    assert pinned.a_rs == pytest.approx(AR, abs=0.2) and pinned.inc == pytest.approx(INC, abs=0.3)
    assert pinned.a_rs_err < 0.06 and pinned.a_rs_err < free.a_rs_err
    assert pinned.rp_rs_err < free.rp_rs_err  # the depth no longer trades against the shape
    assert abs(pinned.rp_rs - RP) < 4 * pinned.rp_rs_err
    for bad in ({"period": (3.0, 0.1)}, {"a_rs": (9.0, 0.0)}, {"inc": "88"}):
        with pytest.raises(EngineValueError):
            fit_transit(table, period=PERIOD, t0=TMID, priors=bad)


def test_bad_inputs_raise():
    rng = np.random.default_rng(5)
    table = _network_night(rng)
    with pytest.raises(EngineValueError):
        fit_transit(table, period=-1.0, t0=TMID)
    with pytest.raises(EngineValueError):
        fit_transit(table, period=PERIOD, t0=TMID, baseline="quadratic")
    with pytest.raises(EngineValueError):
        fit_transit(table.drop_columns(["rel_flux"]), period=PERIOD, t0=TMID)
    with pytest.raises(EngineValueError):
        fit_transit(table.slice(0, 3), period=PERIOD, t0=TMID)


# ------------------------------------------------------------------------------------------------
# Honest errors: red noise, chi-square, bounds; limb darkening; FIT.json
# ------------------------------------------------------------------------------------------------

def _two_minute_series(n=240):
    """Eight hours of 2-minute cadence (days)."""
    return TMID + np.arange(n) * 120.0 / 86400.0


def test_beta_is_one_for_white_noise_and_above_one_for_correlated_noise():
    rng = np.random.default_rng(11)
    time = _two_minute_series()
    white = [red_noise_beta(time, rng.normal(0, 1e-3, time.size)) for _ in range(40)]
    # beta >= 1 by construction; white noise leaves it at ~1 (the median ratio scatters ~10%).
    assert min(white) >= 1.0 and np.median(white) < 1.08 and max(white) < 1.35
    # Add an AR(1) process with a 30-minute correlation time, as strong as the white noise: binned
    # over N points its variance stays ~ (1 + 2 tau / dt) / N larger than white noise predicts.
    phi = np.exp(-2.0 / 30.0)
    red = np.zeros(time.size)
    for k in range(1, time.size):
        red[k] = phi * red[k - 1] + rng.normal(0, 1e-3 * np.sqrt(1 - phi ** 2))
    beta = red_noise_beta(time, rng.normal(0, 1e-3, time.size) + red)
    assert beta > 2.0
    # Too short a series to bin over 10-30 minutes: no claim, beta = 1.
    assert red_noise_beta(time[:5], rng.normal(0, 1e-3, 5)) == 1.0


def test_errors_widen_by_sqrt_chi2_and_by_beta():
    rng = np.random.default_rng(12)
    table = _network_night(rng, noise=0.002)
    honest = fit_transit(table, period=PERIOD, t0=TMID, limb_darkening=LD)
    # The same points with error bars claimed three times too small: chi2_red ~ 9, and the
    # quoted errors must come out as large as with the honest bars, not three times smaller.
    errors = table.column("rel_flux_err").to_numpy() / 3.0
    claimed = fit_transit(table.set_column(table.column_names.index("rel_flux_err"),
                                           "rel_flux_err", pa.array(errors)),
                          period=PERIOD, t0=TMID, limb_darkening=LD)
    assert claimed.chi2_reduced == pytest.approx(9 * honest.chi2_reduced, rel=1e-3)
    assert claimed.error_scale == pytest.approx(np.sqrt(claimed.chi2_reduced) * claimed.beta)
    # Covariance errors a third as large, times sqrt(9 chi2_honest): the honest errors again
    # (times sqrt(chi2_honest) where the honest fit, below 1, was not widened).
    widening = np.sqrt(honest.chi2_reduced) / max(1.0, np.sqrt(honest.chi2_reduced))
    for name in ("rp_rs_err", "a_rs_err", "inc_err", "tmid_err_fit"):
        assert getattr(claimed, name) == pytest.approx(getattr(honest, name) * widening
                                                       * claimed.beta / honest.beta, rel=0.02)

    # A slow wave in the flux that no baseline removes: beta > 1 and every error widened by it.
    time = table.column("time_bjd_tdb").to_numpy()
    wavy = table.column("rel_flux").to_numpy() + 0.002 * np.sin(2 * np.pi * time / (50 / 1440))
    red = fit_transit(table.set_column(table.column_names.index("rel_flux"), "rel_flux",
                                       pa.array(wavy)), period=PERIOD, t0=TMID, limb_darkening=LD)
    assert red.beta > 1.3
    assert red.error_scale == pytest.approx(np.sqrt(max(1.0, red.chi2_reduced)) * red.beta)
    assert all(run["beta"] >= 1.0 for run in red.runs.values())


def test_inclination_at_its_bound_is_reported_as_a_limit():
    rng = np.random.default_rng(13)
    # A central transit (inclination 90): the fit ends on its upper bound.
    columns = {"run_id": [], "time_bjd_tdb": [], "rel_flux": [], "rel_flux_err": [],
               "filter": []}
    t = TMID + np.arange(-0.12, 0.12, 90.0 / 86400.0)
    model = transit_light_curve(t, TMID, PERIOD, RP, AR, 90.0, *LD["R"])
    columns["run_id"] = ["full-site"] * t.size
    columns["time_bjd_tdb"] = t.tolist()
    columns["rel_flux"] = (model + rng.normal(0, 2e-4, t.size)).tolist()
    columns["rel_flux_err"] = [2e-4] * t.size
    columns["filter"] = ["R"] * t.size
    fit = fit_transit(pa.table(columns), period=PERIOD, t0=TMID, inc=89.9, limb_darkening=LD,
                      baseline="offset")
    assert fit.at_bound["inc"] == "upper" and np.isnan(fit.inc_err)
    report = fit.to_dict()
    inc = report["parameters"]["inc"]
    assert inc["at_bound"] == "upper" and inc["error"] is None
    assert inc["value"] == pytest.approx(90.0) and "upper bound (90)" in inc["error_note"]
    assert report["inc_err"] is None
    # The others keep finite errors, and none of them is at a bound.
    assert report["parameters"]["rp_rs"]["at_bound"] is None
    assert report["rp_rs_err"] > 0 and report["tmid_err"] > 0


def test_limb_darkening_from_teff_is_in_range_and_monotone():
    temperatures = np.linspace(*TEFF_RANGE_K, 14)
    for band in ("U", "B", "V", "R", "I", "g", "r", "i", "z", "TESS", "Clear"):
        wavelength = band_wavelength_nm(band)
        coefficients = np.array([grey_atmosphere_coefficients(t, wavelength)
                                 for t in temperatures])
        u1, u2 = coefficients.T
        # A physical quadratic law: positive at the limb, falling from centre to limb.
        assert np.all(u1 + u2 < 1.0) and np.all(u1 > 0) and np.all(u1 + 2 * u2 > 0)
        # Hotter stars are less darkened: the limb contrast u1 + u2 falls with Teff.
        assert np.all(np.diff(u1 + u2) < 0)
    # Redder bands are less darkened at a given Teff.
    contrast = [sum(grey_atmosphere_coefficients(5800.0, band_wavelength_nm(b)))
                for b in "UBVRI"]
    assert np.all(np.diff(contrast) < 0)
    # The Sun in V: u1 + u2 within 0.1 of model-atmosphere tables' ~0.70.
    assert sum(grey_atmosphere_coefficients(5772.0, band_wavelength_nm("V"))) == pytest.approx(
        0.70, abs=0.1)
    with pytest.raises(EngineValueError, match="Teff"):
        grey_atmosphere_coefficients(2000.0, 550.0)


def test_limb_darkening_sources_in_fit_json():
    rng = np.random.default_rng(14)
    table = _network_night(rng)
    given = {"V": (0.47, 0.24)}
    fit = fit_transit(table, period=PERIOD, t0=TMID, limb_darkening=given, teff=4500.0,
                      logg=4.6, feh=-0.2)
    used = fit.to_dict()["limb_darkening"]
    assert set(used) == {"V", "R", "I"}
    assert used["V"]["source"] == "given by the caller" and used["V"]["u1"] == 0.47
    assert "Teff 4500 K" in used["R"]["source"] and used["R"]["law"] == "quadratic"
    assert (used["R"]["u1"], used["R"]["u2"]) == pytest.approx(
        grey_atmosphere_coefficients(4500.0, band_wavelength_nm("R")))
    assert fit.to_dict()["star"] == {"teff": 4500.0, "logg": 4.6, "feh": -0.2}
    default = fit_transit(table, period=PERIOD, t0=TMID).to_dict()["limb_darkening"]
    assert all("no Teff given" in entry["source"] for entry in default.values())


def test_fit_json_carries_units_time_scale_and_version():
    import engine

    rng = np.random.default_rng(15)
    report = fit_transit(_network_night(rng), period=PERIOD, t0=TMID, limb_darkening=LD,
                         priors={"a_rs": (AR, 0.3)}).to_dict()
    for key in ("tmid", "tmid_err", "rp_rs", "rp_rs_err", "depth", "a_rs", "inc"):
        assert isinstance(report[key], float) and key in report["units"]
    assert report["time_scale"] == "BJD_TDB" and report["units"]["tmid"] == "d (BJD_TDB)"
    assert report["units"]["inc"] == "deg"
    assert report["software_version"] == engine.__version__
    assert set(report["residual_rms"]) == {"ingress-site", "middle-site", "egress-site"}
    assert all(isinstance(v, float) for v in report["residual_rms"].values())
    assert report["beta"] >= 1.0 and report["chi2_reduced"] > 0
    assert report["parameters"]["a_rs"]["prior"] == {"mean": AR, "sigma": 0.3}
    assert set(report["parameters"]) == {"tmid", "rp_rs", "a_rs", "inc"}
    assert all(p["unit"] for p in report["parameters"].values())
    assert -1.0 <= report["correlations"]["rp_rs~a_rs"] <= 1.0


def test_command_line_writes_fit_json_and_its_plot(tmp_path, capsys):
    import json

    import pyarrow.parquet as pq

    from engine.cli import main

    rng = np.random.default_rng(16)
    pq.write_table(_network_night(rng), tmp_path / "lightcurves.parquet")
    code = main(["fit-transit", str(tmp_path / "lightcurves.parquet"), "--period", str(PERIOD),
                 "--t0", str(TMID + 0.005), "--teff", "6200", "--logg", "4.3",
                 "--out", str(tmp_path / "FIT.json")])
    assert code == 0
    report = json.loads((tmp_path / "FIT.json").read_text())
    assert report["star"] == {"teff": 6200.0, "logg": 4.3}
    assert all("Teff 6200 K" in entry["source"] for entry in report["limb_darkening"].values())
    assert (tmp_path / "FIT.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "FIT.png" in capsys.readouterr().out
    assert main(["fit-transit", str(tmp_path / "lightcurves.parquet"), "--period", str(PERIOD),
                 "--t0", str(TMID), "--teff", "1500", "--out", str(tmp_path / "bad.json")]) == 2
    assert not (tmp_path / "bad.json").exists()


def test_weak_shape_is_named_and_a_density_prior_gives_a_rs():
    from engine.demo import a_rs_prior

    # Kepler's third law: the Sun's mean density (1.408 g/cm3) and a year give a/Rs = 215.03
    # (1 au / R_sun), and a 10% density error a third of that on a/Rs.
    a_rs, error = a_rs_prior(365.25636, 1.408, 0.1408)
    assert a_rs == pytest.approx(215.03, rel=2e-3) and error == pytest.approx(a_rs * 0.1 / 3)

    rng = np.random.default_rng(17)
    table = _network_night(rng, noise=0.003)
    free = fit_transit(table, period=PERIOD, t0=TMID, limb_darkening=LD)
    assert "a_rs~inc" in weak_shape_reason(free)  # partial transits: only b and T14 measured
    pinned = fit_transit(table, period=PERIOD, t0=TMID, limb_darkening=LD,
                         priors={"a_rs": (AR, 0.05)})
    assert weak_shape_reason(pinned) is None
    # A run inside the flat bottom (contacts 2 and 3 at ~ -+0.046 d) cannot show the shape.
    middle = table.filter(pa.compute.equal(table.column("run_id"), "middle-site"))
    inside = middle.filter(pa.compute.less(middle.column("time_bjd_tdb"), TMID + 0.035))
    lone = fit_transit(inside, period=PERIOD, t0=TMID, limb_darkening=LD, baseline="offset",
                       t0_window=0.003, priors={"rp_rs": (RP, 0.001), "a_rs": (AR, 0.01),
                                                "inc": (INC, 0.01)})
    assert not lone.runs["middle-site"]["covers_contact"]
    assert "no run covers ingress or egress" in weak_shape_reason(lone)
