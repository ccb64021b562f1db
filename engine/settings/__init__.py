"""Every setting of the engine, in one home: one frozen, validated class per stage, and
`PipelineConfig`, what `reduce` can be told. A bad value is refused where it is read, with the
setting's name (engine.checks).

- `ingest.IngestConfig` and `ingest.Site`: sites (location, clock, camera values, frame-type
  words), frame-type overrides, Bayer mode, the target;
- `calibration.CalibrationConfig`: temperature tolerance, uncertainty cubes, chunk size, whether
  reduce writes calibrated cubes;
- `photometry.PhotometryConfig`: detection, apertures, registration, scintillation, PSF;
- `sky.SkyConfig`: reference catalogue, target pixel positions, solution tolerances;
- `ensemble.EnsembleConfig`: comparisons, weights, clouds, detrending, the merge;
- `cluster.ClusterConfig`: the Dask scheduler and its TLS files (the file's `[pipeline]` table);
- `file`: the TOML file that holds them all (`python -m engine config` prints one).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.settings.calibration import CalibrationConfig
from engine.settings.cluster import ClusterConfig
from engine.settings.ensemble import EnsembleConfig
from engine.settings.ingest import IngestConfig, Site
from engine.settings.photometry import PhotometryConfig
from engine.settings.sky import SkyConfig

__all__ = ["CalibrationConfig", "ClusterConfig", "EnsembleConfig", "IngestConfig",
           "PhotometryConfig", "PipelineConfig", "Site", "SkyConfig"]


@dataclass(frozen=True)
class PipelineConfig:
    """Everything `reduce` can be told; each part documents its own defaults."""

    ingest: IngestConfig = field(default_factory=IngestConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    photometry: PhotometryConfig = field(default_factory=PhotometryConfig)
    sky: SkyConfig = field(default_factory=SkyConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
