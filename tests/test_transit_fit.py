"""Joint transit fits: recovery of injected transits and the coverage of the quoted errors."""

import numpy as np
import pyarrow as pa
import pytest

from engine.errors import EngineValueError
from engine.kernels.transit import transit_light_curve
from engine.transit_fit import fit_transit

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
