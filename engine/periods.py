"""Period search on a light curve: astropy's Lomb-Scargle (variable stars) and Box Least Squares
(transits and eclipses), on the good rows of one star."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from engine.errors import EngineValueError

__all__ = ["PeriodSearch", "find_period"]


@dataclass
class PeriodSearch:
    """The best period and the periodogram it came from (period in days)."""

    method: str
    period: float
    power: float
    false_alarm_probability: float | None
    periods: np.ndarray
    powers: np.ndarray
    details: dict

    def to_dict(self) -> dict:
        return {"method": self.method, "period": self.period, "power": self.power,
                "false_alarm_probability": self.false_alarm_probability, **self.details}


def _series(lightcurve, star_id):
    if isinstance(lightcurve, pa.Table):
        table = lightcurve
        if star_id is not None:
            table = table.filter(pa.array(np.asarray(table.column("star_id").to_pylist()) == star_id))
        elif "role" in table.column_names:
            table = table.filter(pa.array(np.asarray(table.column("role").to_pylist()) == "target"))
        columns = {c: table.column(c).to_numpy(zero_copy_only=False)
                   for c in ("time_bjd_tdb", "rel_flux", "rel_flux_err")}
        good = np.ones(table.num_rows, dtype=bool)
        if "flags" in table.column_names:
            good = table.column("flags").to_numpy(zero_copy_only=False) == 0
        time, flux, error = (columns[c][good] for c in ("time_bjd_tdb", "rel_flux", "rel_flux_err"))
    else:
        time, flux, error = (np.asarray(a, dtype=np.float64) for a in lightcurve)
    keep = np.isfinite(time) & np.isfinite(flux) & np.isfinite(error) & (error > 0)
    if np.count_nonzero(keep) < 10:
        raise EngineValueError("a period search needs at least 10 good measurements")
    return time[keep], flux[keep], error[keep]


def find_period(lightcurve, *, method: str = "lombscargle", min_period: float | None = None,
                max_period: float | None = None, duration: float | None = None,
                star_id: int | None = None, samples_per_peak: int = 10) -> PeriodSearch:
    """Search a light curve for its period.

    Parameters
    ----------
    lightcurve
        a lightcurves.parquet table (the target's rows, or `star_id`'s; flagged rows
        left out) or a (time, flux, flux_err) triple.
    method
        'lombscargle' (sinusoid-like variability) or 'bls' (box-shaped dips).
    min_period, max_period
        the search range in days (defaults: twice the median cadence, and
        half the time span).
    duration
        the box duration for BLS in days (default: a grid from 0.5 to 6 hours, capped
        below min_period).
    """
    time, flux, error = _series(lightcurve, star_id)
    span = float(time.max() - time.min())
    cadence = float(np.median(np.diff(np.sort(time))))
    min_period = 2.0 * cadence if min_period is None else float(min_period)
    max_period = 0.5 * span if max_period is None else float(max_period)
    if not (0 < min_period < max_period):
        raise EngineValueError(f"need 0 < min_period < max_period, got {min_period}, {max_period}")
    if method == "lombscargle":
        from astropy.timeseries import LombScargle

        model = LombScargle(time, flux, error)
        frequency, power = model.autopower(minimum_frequency=1.0 / max_period,
                                           maximum_frequency=1.0 / min_period,
                                           samples_per_peak=samples_per_peak)
        best = int(np.argmax(power))
        # The grid's step is a fraction of the peak width; refine the peak on a fine local grid.
        step = frequency[1] - frequency[0] if frequency.size > 1 else 0.0
        fine = np.linspace(frequency[best] - step, frequency[best] + step, 201)
        fine = fine[fine > 0]
        fine_power = model.power(fine)
        peak = int(np.argmax(fine_power))
        return PeriodSearch("lombscargle", float(1.0 / fine[peak]), float(fine_power[peak]),
                            float(model.false_alarm_probability(fine_power[peak])),
                            1.0 / frequency, power, {})
    if method == "bls":
        from astropy.timeseries import BoxLeastSquares

        durations = (np.atleast_1d(duration) if duration is not None
                     else np.array([0.5, 1, 2, 3, 4, 6]) / 24.0)
        durations = durations[durations < min_period]
        if durations.size == 0:
            raise EngineValueError("every BLS duration is longer than the shortest period")
        model = BoxLeastSquares(time, flux, error)
        result = model.autopower(durations, minimum_period=min_period, maximum_period=max_period,
                                 frequency_factor=1.0 / samples_per_peak * 10)
        best = int(np.argmax(result.power))
        return PeriodSearch("bls", float(result.period[best]), float(result.power[best]), None,
                            np.asarray(result.period), np.asarray(result.power),
                            {"transit_time": float(result.transit_time[best]),
                             "duration": float(result.duration[best]),
                             "depth": float(result.depth[best])})
    raise EngineValueError(f"method must be 'lombscargle' or 'bls', got {method!r}")
