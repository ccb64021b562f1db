"""Settings of the calibration stage (engine.calibration.calibrate)."""

from __future__ import annotations

from dataclasses import dataclass

from engine.checks import integer, positive
from engine.errors import EngineValueError

__all__ = ["CalibrationConfig"]


@dataclass(frozen=True)
class CalibrationConfig:
    """Settings of the calibration stage (defaults in brackets)."""

    #: Calibration frames whose sensor temperature differs from the lights' by more than this
    #: many degrees are not used with them [2].
    temperature_tolerance: float = 2.0
    #: Also write each calibrated run's uncertainty (RUN_sigma.zarr), from its gain and read
    #: noise [false].
    uncertainty: bool = False
    #: Bytes of frames calibrated at a time [none: the stage's own budget].
    chunk_bytes: int | None = None
    #: Also write the calibrated cubes (calibrated/RUN.zarr and RUN_mask.zarr) in `reduce`;
    #: the photometry stage calibrates the raw frames as it reads them either way [false].
    #: The `calibrate` verb always writes them.
    write_calibrated: bool = False

    def __post_init__(self):
        object.__setattr__(self, "temperature_tolerance", positive(
            "calibration temperature_tolerance", self.temperature_tolerance))
        object.__setattr__(self, "chunk_bytes", integer(
            "calibration chunk_bytes", self.chunk_bytes, least=1, allow_none=True))
        if not isinstance(self.write_calibrated, bool):
            raise EngineValueError(f"calibration write_calibrated must be true or false, got "
                                   f"{self.write_calibrated!r}")
        if not isinstance(self.uncertainty, bool):
            raise EngineValueError(f"calibration uncertainty must be true or false, got "
                                   f"{self.uncertainty!r}")
