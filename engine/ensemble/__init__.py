"""The ensemble stage: photometry tables of a run to calibrated relative light curves, and the
light curves of many runs to one standard system.

This module only re-exports. `build_run_lightcurve` reduces one run (comparison choice,
weighted ensemble, zero points and cloud flags, aperture choice, detrending, noise);
`merge_runs` ties runs together (per-run offsets and colour terms, standardisation against a
reference catalogue); `write_lightcurves` / `write_report` write the products.
"""

from engine.ensemble.io import read_reference_catalogue, write_lightcurves, write_report
from engine.ensemble.lightcurve import RunLightCurve, build_run_lightcurve
from engine.ensemble.standardise import merge_runs
from engine.io.schemas import LIGHTCURVES_SCHEMA, STAR_SUMMARY_SCHEMA
from engine.settings.ensemble import EnsembleConfig

__all__ = [
    "EnsembleConfig",
    "LIGHTCURVES_SCHEMA",
    "RunLightCurve",
    "STAR_SUMMARY_SCHEMA",
    "build_run_lightcurve",
    "merge_runs",
    "read_reference_catalogue",
    "write_lightcurves",
    "write_report",
]
