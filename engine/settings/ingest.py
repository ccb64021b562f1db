"""Settings of ingest: what the headers cannot say, per site and for the whole night.

`reduce --config FILE` fills them from TOML (engine/settings/file.py); in Python:

    IngestConfig(sites=(Site("ctio", longitude_deg=-70.815, latitude_deg=-30.165,
                             height_m=2207, clock_offset_s=1.2, match=("CTIO-0.4m",)),),
                 frame_types=(("*/twilight/*.fits", "flat"),),
                 bayer="green")

Everything is validated on construction (EngineValueError) and immutable, so one IngestConfig
can be shared by threads and hashed into the fingerprint that decides whether earlier products
are reused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from fnmatch import fnmatchcase

from engine.checks import number
from engine.errors import EngineValueError

FRAME_TYPES = ("bias", "dark", "flat", "light")
BAYER_MODES = ("green", "superpixel")
TIME_REFERENCES = ("start", "mid", "end")


def _finite_or_none(owner: str, name: str, value):
    return number(f"{owner}: {name}", value, allow_none=True)


def _frame_type_pairs(owner: str, items) -> tuple[tuple[str, str], ...]:
    """(pattern, type) pairs from pairs or a {pattern: type} table, types checked."""
    if isinstance(items, dict):
        items = tuple(items.items())
    pairs = []
    for item in items:
        try:
            pattern, frame_type = item
        except (TypeError, ValueError):
            raise EngineValueError(
                f"{owner}: frame_types holds (pattern, frame type) pairs, got {item!r}") from None
        frame_type = str(frame_type).strip().lower()
        if frame_type not in FRAME_TYPES:
            raise EngineValueError(f"{owner}: frame type {frame_type!r} for {pattern!r} is not "
                                   f"one of {FRAME_TYPES}")
        pairs.append((str(pattern), frame_type))
    return tuple(pairs)


@dataclass(frozen=True)
class Site:
    """One observing site (or one telescope: a site is whatever shares a location and a clock).

    Attributes
    ----------
    name
        the site's name; also the `site` column of the frames table and part of run ids.
    longitude_deg, latitude_deg, height_m
        east-positive geodetic longitude, latitude, and height above the ellipsoid.
        When given they override any location in the headers (a header that disagrees is logged).
    clock_offset_s
        how far the site's clock runs ahead of UTC, in seconds. Every time stamp of the
        site's frames is corrected by subtracting it: true UTC = stamped time - clock_offset_s.
    utc_offset_hours
        the site's local time minus UTC, used only for stamps that are local time
        with no offset written in them (e.g. TIMESYS = 'LOCAL', or DATE-LOC alone).
    clock_uncertainty_s
        how well the site's clock is known (1 sigma, s): an NTP-disciplined PC
        ~0.01-0.1, a GPS-timed camera ~0.001, an unsynchronised PC seconds. Added in quadrature
        to each stamp's resolution in the frames table's `time_err_s`, and so into the error of
        a transit mid-time.
    time_reference
        'start', 'mid' or 'end': what the site's software means by a time stamp whose
        keyword does not say. Without it, each run's stamps are compared with each other (a
        JD that sits EXPTIME/2 after DATE-OBS on every frame marks mid-exposure) and what they
        do not settle is assumed: DATE-OBS, JD, MJD-OBS mark the exposure start.
    pedestal_adu
        a constant the site's software added to every pixel, removed on ingest;
        overrides the header's PEDESTAL (MaxIm DL writes PEDESTAL = -100 for an added 100;
        either sign means "subtract its size").
    frame_types
        the site's own frame-type words: (header value, type) pairs, e.g.
        (("EXPOSE", "light"), ("Focus", "light")); matched against IMAGETYP, OBSTYPE, ...
        without case, blanks or punctuation, before the built-in vocabularies. (Path globs for
        single files are IngestConfig.frame_types.)
    match
        which frames belong to the site: each entry is compared with the header values
        TELESCOP, OBSERVAT, SITENAME, SITE and INSTRUME (without case and surrounding blanks; so
        'C14 f/11' works) and used as a glob on the frame's absolute path ('*/florida/*').
        Empty: frames whose TELESCOP, OBSERVAT, SITENAME, SITE or INSTRUME equals the site's name.
    aperture_diameter_m
        the telescope's aperture diameter in metres, for the scintillation
        noise term; overrides the header's APTDIA.
    gain_e_per_adu, read_noise_e, saturation_adu
        the camera's gain (e-/ADU), read noise (e-)
        and saturation level (ADU, as the camera stores its values), used when the headers do
        not give them; without either the engine measures them (engine.calibration.camera).
    """

    name: str
    longitude_deg: float | None = None
    latitude_deg: float | None = None
    height_m: float | None = None
    clock_offset_s: float = 0.0
    utc_offset_hours: float | None = None
    time_reference: str | None = None
    match: tuple[str, ...] = ()
    aperture_diameter_m: float | None = None
    clock_uncertainty_s: float = 0.0
    pedestal_adu: float | None = None
    frame_types: tuple[tuple[str, str], ...] = ()
    gain_e_per_adu: float | None = None
    read_noise_e: float | None = None
    saturation_adu: float | None = None

    def __post_init__(self):
        owner = f"site {self.name!r}"
        if not isinstance(self.name, str) or not self.name.strip():
            raise EngineValueError(f"a site needs a non-empty name, got {self.name!r}")
        self._check_camera_values(owner)
        self._check_clock(owner)
        self._check_location(owner)
        object.__setattr__(self, "frame_types", _frame_type_pairs(owner, self.frame_types))
        if isinstance(self.match, str):
            object.__setattr__(self, "match", (self.match,))
        object.__setattr__(self, "match", tuple(str(m) for m in self.match))

    def _check_camera_values(self, owner: str):
        """Every optional number finite (or None); the camera's values in their ranges."""
        for name in ("longitude_deg", "latitude_deg", "height_m", "utc_offset_hours",
                     "aperture_diameter_m", "pedestal_adu", "gain_e_per_adu", "read_noise_e",
                     "saturation_adu"):
            object.__setattr__(self, name, _finite_or_none(owner, name, getattr(self, name)))
        for name in ("aperture_diameter_m", "gain_e_per_adu", "saturation_adu"):
            if getattr(self, name) is not None and not getattr(self, name) > 0.0:
                raise EngineValueError(f"{owner}: {name} must be positive")
        if self.read_noise_e is not None and self.read_noise_e < 0.0:
            raise EngineValueError(f"{owner}: read_noise_e must not be negative")

    def _check_clock(self, owner: str):
        offset = _finite_or_none(owner, "clock_offset_s", self.clock_offset_s)
        object.__setattr__(self, "clock_offset_s", 0.0 if offset is None else offset)
        spread = _finite_or_none(owner, "clock_uncertainty_s", self.clock_uncertainty_s)
        if spread is not None and spread < 0.0:
            raise EngineValueError(f"{owner}: clock_uncertainty_s must not be negative")
        object.__setattr__(self, "clock_uncertainty_s", 0.0 if spread is None else spread)
        if self.time_reference is not None and self.time_reference not in TIME_REFERENCES:
            raise EngineValueError(f"{owner}: time_reference must be one of {TIME_REFERENCES}")

    def _check_location(self, owner: str):
        if (self.longitude_deg is None) != (self.latitude_deg is None):
            raise EngineValueError(f"{owner}: give both longitude_deg and latitude_deg, or neither")
        if self.latitude_deg is not None and not -90.0 <= self.latitude_deg <= 90.0:
            raise EngineValueError(f"{owner}: latitude_deg must lie in [-90, 90]")
        if self.longitude_deg is not None and not -360.0 <= self.longitude_deg <= 360.0:
            raise EngineValueError(f"{owner}: longitude_deg must lie in [-360, 360]")

    @property
    def has_location(self) -> bool:
        return self.latitude_deg is not None

    def matches(self, path: str, header_names: dict[str, str]) -> bool:
        """Whether a frame (its absolute path, its identifying header values) belongs here."""
        patterns = self.match or (self.name,)
        values = {v.strip().casefold() for v in header_names.values() if v and v.strip()}
        for pattern in patterns:
            if pattern.strip().casefold() in values or fnmatchcase(path, pattern):
                return True
        return False


@dataclass(frozen=True)
class IngestConfig:
    """Everything ingest (and later stages) take from the user rather than from the headers.

    Attributes
    ----------
    sites
        the known sites, first match wins (see Site.match).
    frame_types
        (path glob, frame type) overrides, first match wins; the glob is matched
        against the absolute path with fnmatch (so '*' also crosses '/').
    bayer
        how a colour (Bayer) sensor's frame becomes one monochrome frame: 'green' (mean of the
        two green pixels of each 2x2 cell) or 'superpixel' (sum of the four).
    target_ra_deg, target_dec_deg
        the target, used for BJD_TDB and airmass when the caller gives
        none (ICRS degrees).
    """

    sites: tuple[Site, ...] = ()
    frame_types: tuple[tuple[str, str], ...] = ()
    bayer: str = "green"
    target_ra_deg: float | None = None
    target_dec_deg: float | None = None

    def __post_init__(self):
        sites = tuple(self.sites)
        for site in sites:
            if not isinstance(site, Site):
                raise EngineValueError(
                    f"IngestConfig.sites holds Site records, got {type(site).__name__}")
        names = [s.name for s in sites]
        if len(set(names)) != len(names):
            raise EngineValueError(f"site names must be unique, got {names}")
        object.__setattr__(self, "sites", sites)
        object.__setattr__(self, "frame_types", _frame_type_pairs("config", self.frame_types))
        if self.bayer not in BAYER_MODES:
            raise EngineValueError(f"bayer must be one of {BAYER_MODES}, got {self.bayer!r}")
        ra = _finite_or_none("config", "target_ra_deg", self.target_ra_deg)
        dec = _finite_or_none("config", "target_dec_deg", self.target_dec_deg)
        if (ra is None) != (dec is None):
            raise EngineValueError("config: give both target_ra_deg and target_dec_deg, or neither")
        if ra is not None and not (0.0 <= ra < 360.0 and -90.0 <= dec <= 90.0):
            raise EngineValueError(f"config: target ({ra}, {dec}) deg is not a sky position")
        object.__setattr__(self, "target_ra_deg", ra)
        object.__setattr__(self, "target_dec_deg", dec)

    def frame_type_override(self, path: str) -> tuple[str, str] | None:
        """(frame type, glob) of the first override matching an absolute path, or None."""
        for pattern, frame_type in self.frame_types:
            if fnmatchcase(path, pattern):
                return frame_type, pattern
        return None

    def site_for(self, path: str, header_names: dict[str, str]) -> Site | None:
        """The first configured site that claims a frame, or None."""
        for site in self.sites:
            if site.matches(path, header_names):
                return site
        return None

    def fingerprint(self) -> str:
        """A short hash of everything that changes what ingest produces."""
        text = json.dumps(asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]
