"""The engine: raw frames from many small telescopes to calibrated, science-ready light curves.

This module is the public API; it only re-exports. `python -m engine` is the command line.
"""

from engine.calibration import CalibrationResult, calibrate
from engine.cext import circle_overlap_grid, disk_rectangle_area
from engine.detection import detect_stars
from engine.ensemble import (EnsembleConfig, RunLightCurve, build_run_lightcurve, merge_runs,
                             read_reference_catalogue, write_lightcurves, write_report)
from engine.errors import (EngineError, EngineFileError, EngineValueError, MissingToolError,
                           RegistrationError)
from engine.extraction import ExtractionConfig, RunPhotometry, extract_run
from engine.ingest import IngestResult, ingest
from engine.io.exports import write_aavso_extended, write_csv
from engine.periods import PeriodSearch, find_period
from engine.photometry import aperture_photometry, aperture_photometry_frames
from engine.pipeline import PipelineConfig, ReduceResult, reduce
from engine.plots import (plot_comparison_weights, plot_noise_budget, plot_transit_fit,
                          plot_transparency)
from engine.psf import (PSFModel, fit_psf_model, fit_psf_models, psf_photometry,
                        psf_photometry_frames)
from engine.registration import (Registration, Transform, identify_target, match_catalogue,
                                 match_transform, recentre, register_frames, register_images,
                                 registrations_table, sky_to_pixels, stack_reference)
from engine.transit_fit import TransitFit, fit_transit

__version__ = "0.1.0"

__all__ = [
    "CalibrationResult",
    "EngineError",
    "EngineFileError",
    "EngineValueError",
    "EnsembleConfig",
    "ExtractionConfig",
    "IngestResult",
    "MissingToolError",
    "PSFModel",
    "PeriodSearch",
    "PipelineConfig",
    "ReduceResult",
    "Registration",
    "RegistrationError",
    "RunLightCurve",
    "RunPhotometry",
    "Transform",
    "TransitFit",
    "aperture_photometry",
    "aperture_photometry_frames",
    "build_run_lightcurve",
    "calibrate",
    "circle_overlap_grid",
    "detect_stars",
    "disk_rectangle_area",
    "extract_run",
    "find_period",
    "fit_psf_model",
    "fit_psf_models",
    "fit_transit",
    "identify_target",
    "ingest",
    "match_catalogue",
    "match_transform",
    "merge_runs",
    "plot_comparison_weights",
    "plot_noise_budget",
    "plot_transit_fit",
    "plot_transparency",
    "psf_photometry",
    "psf_photometry_frames",
    "read_reference_catalogue",
    "recentre",
    "reduce",
    "register_frames",
    "register_images",
    "registrations_table",
    "sky_to_pixels",
    "stack_reference",
    "write_aavso_extended",
    "write_csv",
    "write_lightcurves",
    "write_report",
]
