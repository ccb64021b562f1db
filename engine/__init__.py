"""The engine: raw frames from many small telescopes to calibrated, science-ready light curves.

This module is the public API; it only re-exports. `python -m engine` is the command line.
"""

from engine.cext import circle_overlap_grid, disk_rectangle_area
from engine.photometry import aperture_photometry, aperture_photometry_frames
from engine.errors import EngineError, EngineFileError, EngineValueError, MissingToolError
from engine.ingest import IngestResult, ingest

__version__ = "0.1.0"

__all__ = [
    "EngineError",
    "EngineFileError",
    "EngineValueError",
    "IngestResult",
    "MissingToolError",
    "aperture_photometry",
    "aperture_photometry_frames",
    "circle_overlap_grid",
    "disk_rectangle_area",
    "ingest",
]
