"""The engine: raw frames from many small telescopes to calibrated, science-ready light curves.

This module is the public API; it only re-exports, lazily: `import engine` loads no stage, no
kernel and none of numba, astropy, scipy or zarr, and each name is imported from its home on
first use (PEP 562). `python -m engine` is the command line.
"""

from __future__ import annotations

import importlib
import sys
import types
import warnings
from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("photometry-engine")
except _metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

#: Where each public name lives.
_HOMES = {
    "engine.calibration": ("CalibrationResult", "calibrate"),
    "engine.cext": ("circle_overlap_grid", "disk_rectangle_area"),
    "engine.detection": ("detect_stars",),
    "engine.ensemble": ("RunLightCurve", "build_run_lightcurve", "merge_runs",
                        "read_reference_catalogue", "write_lightcurves", "write_report"),
    "engine.errors": ("EngineError", "EngineFileError", "EngineValueError", "MissingToolError",
                      "RegistrationError"),
    "engine.ingest": ("IngestResult", "ingest"),
    "engine.io.exports": ("write_aavso_extended", "write_csv"),
    "engine.periods": ("PeriodSearch", "find_period"),
    "engine.photometry": ("aperture_photometry", "aperture_photometry_frames"),
    "engine.photometry_stage": ("RunPhotometry", "measure_run"),
    "engine.pipeline": ("ReduceResult", "reduce"),
    "engine.plots": ("plot_comparison_weights", "plot_noise_budget", "plot_transit_fit",
                     "plot_transparency"),
    "engine.psf": ("PSFModel", "fit_psf_model", "fit_psf_models", "psf_photometry",
                   "psf_photometry_frames"),
    "engine.registration": ("FrameTracker", "Registration", "Transform", "identify_target",
                            "match_catalogue", "match_transform", "recentre", "register_frames",
                            "register_images", "registrations_table", "sky_to_pixels",
                            "stack_reference"),
    "engine.settings": ("CalibrationConfig", "EnsembleConfig", "IngestConfig", "PhotometryConfig",
                        "PipelineConfig", "Site", "SkyConfig"),
    "engine.transit_fit": ("TransitFit", "fit_transit"),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}

#: Old public names, still importable with a DeprecationWarning: old name -> new name.
_RENAMED = {"ExtractionConfig": "PhotometryConfig", "extract_run": "measure_run"}

__all__ = [
    "CalibrationConfig",
    "CalibrationResult",
    "EngineError",
    "EngineFileError",
    "EngineValueError",
    "EnsembleConfig",
    "FrameTracker",
    "IngestConfig",
    "IngestResult",
    "MissingToolError",
    "PSFModel",
    "PeriodSearch",
    "PhotometryConfig",
    "PipelineConfig",
    "ReduceResult",
    "Registration",
    "RegistrationError",
    "RunLightCurve",
    "RunPhotometry",
    "Site",
    "SkyConfig",
    "Transform",
    "TransitFit",
    "aperture_photometry",
    "aperture_photometry_frames",
    "build_run_lightcurve",
    "calibrate",
    "circle_overlap_grid",
    "detect_stars",
    "disk_rectangle_area",
    "find_period",
    "fit_psf_model",
    "fit_psf_models",
    "fit_transit",
    "identify_target",
    "ingest",
    "match_catalogue",
    "match_transform",
    "measure_run",
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
    "__version__",
]


def __getattr__(name: str):
    if name in _RENAMED:
        warnings.warn(f"engine.{name} is deprecated: it is now engine.{_RENAMED[name]}",
                      DeprecationWarning, stacklevel=2)
        return __getattr__(_RENAMED[name])
    module = _HOME_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


class _PublicAPI(types.ModuleType):
    """Importing a submodule binds it on its package; where a public function shares the
    submodule's name (`engine.ingest`), the function keeps the name, as before it was lazy."""

    def __setattr__(self, name, value):
        if isinstance(value, types.ModuleType) and name in _HOME_OF:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _PublicAPI
