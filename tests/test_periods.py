"""Period search: a pulsation by Lomb-Scargle, a transit by BLS, against known injections."""

import numpy as np
import pyarrow as pa
import pytest

from engine.errors import EngineValueError
from engine.kernels.transit import transit_light_curve
from engine.periods import find_period


def test_lomb_scargle_finds_a_delta_scuti_period():
    rng = np.random.default_rng(1)
    time = 2460000.3 + np.sort(rng.uniform(0, 0.3, 400))  # one 7-hour night
    flux = 1 + 0.05 * np.sin(2 * np.pi * time / 0.0893) + rng.normal(0, 0.005, time.size)
    table = pa.table({"time_bjd_tdb": time, "rel_flux": flux,
                      "rel_flux_err": np.full(time.size, 0.005), "role": ["target"] * time.size,
                      "flags": pa.array(np.zeros(time.size, np.uint32))})
    search = find_period(table, max_period=0.25)
    assert search.period == pytest.approx(0.0893, rel=0.01)
    assert search.false_alarm_probability < 1e-10


def test_bls_finds_a_transiting_planet():
    rng = np.random.default_rng(2)
    time = np.arange(0.0, 20.0, 10 / 1440)
    time = time[(time % 1.0) < 0.35]  # nights only
    flux = transit_light_curve(time, 1.3, 2.7, 0.12, 9.0, 88.0, 0.4, 0.25)
    flux = flux + rng.normal(0, 0.003, time.size)
    search = find_period((time, flux, np.full(time.size, 0.003)), method="bls", min_period=1.0,
                         max_period=5.0)
    assert search.period == pytest.approx(2.7, rel=0.01)
    assert search.details["depth"] == pytest.approx(0.0144, rel=0.35)


def test_bad_requests_are_refused():
    time = np.linspace(0, 1, 50)
    with pytest.raises(EngineValueError):
        find_period((time, np.ones(50), np.full(50, 0.01)), method="fourier")
    with pytest.raises(EngineValueError):
        find_period((time[:5], np.ones(5), np.full(5, 0.01)))
    with pytest.raises(EngineValueError):
        find_period((time, np.ones(50), np.full(50, 0.01)), min_period=2.0, max_period=1.0)
