"""Settings of the sky stage (engine.sky): the reference catalogue, target pixel positions per
run or site, and the tolerances of sky solutions and targets."""

from __future__ import annotations

import math
from dataclasses import dataclass

from engine.checks import number, positive
from engine.errors import EngineValueError

__all__ = ["SkyConfig"]


@dataclass(frozen=True)
class SkyConfig:
    """Settings of the sky stage (defaults in brackets)."""

    #: Reference catalogue (CSV or Parquet; RA/Dec in degrees, a magnitude, optionally a colour
    #: and an id) for sky solutions and standardisation, or "gaia": Gaia DR3 fetched for each
    #: run's field (the [gaia] extra and the network; kept under the output folder) [none].
    catalogue: str | None = None
    #: Faintest Gaia G magnitude fetched for "gaia" [18].
    gaia_mag_limit: float = 18.0
    #: The target's pixel position (x, y, 0-based) in the first light frame, per run id or per
    #: site name, for runs that cannot be put on the sky [none].
    target_xy: tuple[tuple[str, tuple[float, float]], ...] = ()
    #: Allowed error of the header pixel scale, as a fraction [0.1].
    scale_tolerance: float = 0.1
    #: The target must lie within this many FWHM of its predicted position [1.5] ...
    target_tolerance_fwhm: float = 1.5
    #: ... plus three times the sky solution's rms.
    #: Without a catalogue, two runs' header WCS agree when their stars lie within this of each
    #: other on the sky (at least 2 pixels of the coarser camera) [5 arcsec].
    header_agreement_arcsec: float = 5.0

    def __post_init__(self):
        object.__setattr__(self, "gaia_mag_limit", number("sky gaia_mag_limit",
                                                          self.gaia_mag_limit))
        for name in ("target_tolerance_fwhm", "header_agreement_arcsec"):
            object.__setattr__(self, name, positive(f"sky {name}", getattr(self, name)))
        object.__setattr__(self, "scale_tolerance", number(
            "sky scale_tolerance", self.scale_tolerance, above=0.0, high=0.9))
        if self.catalogue is not None and not isinstance(self.catalogue, str):
            object.__setattr__(self, "catalogue", str(self.catalogue))
        pairs = []
        for entry in self.target_xy:
            try:
                key, (x, y) = entry
                pair = (str(key), (float(x), float(y)))
            except (TypeError, ValueError):
                raise EngineValueError(f"sky target_xy entries are name = [x, y], got "
                                       f"{entry!r}") from None
            if not all(math.isfinite(v) for v in pair[1]):
                raise EngineValueError(f"sky target_xy for {pair[0]!r} is not finite: {pair[1]}")
            pairs.append(pair)
        object.__setattr__(self, "target_xy", tuple(pairs))

    def target_xy_for(self, run_id: str, site: str | None):
        given = dict(self.target_xy)
        return given.get(run_id, given.get(site) if site else None)
