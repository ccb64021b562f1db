"""The simulator: raw FITS frames of a multi-site night plus the truth to test the pipeline on.

This module only re-exports. `simulate(out_dir, preset, seed, **overrides)` writes the files and
`truth.json` and `catalogue.csv` (see `engine.simulation.night`); `PRESETS` holds the named configurations, frozen
dataclasses from `engine.simulation.config` that `dataclasses.replace` copies with changes.
"""

from engine.simulation.config import (FILTERS, Camera, Cirrus, Field, Planet, SimulationConfig,
                                      Site, Variability)
from engine.simulation.night import SimulationResult, resolve_config, simulate
from engine.simulation.presets import PRESETS
from engine.simulation.truth import target_positions

__all__ = [
    "FILTERS",
    "PRESETS",
    "Camera",
    "Cirrus",
    "Field",
    "Planet",
    "SimulationConfig",
    "SimulationResult",
    "Site",
    "Variability",
    "resolve_config",
    "simulate",
    "target_positions",
]
