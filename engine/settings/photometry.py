"""Settings of the photometry stage (engine.photometry_stage): detection, apertures, registration,
scintillation, PSF photometry."""

from __future__ import annotations

from dataclasses import dataclass

from engine.checks import integer, one_of, positive
from engine.device import DEVICES
from engine.errors import EngineValueError

__all__ = ["PhotometryConfig"]


@dataclass(frozen=True)
class PhotometryConfig:
    """Settings of the photometry stage (defaults in brackets are what a user gets)."""

    #: Detection threshold on the reference frame, in background sigma [5].
    detection_threshold: float = 5.0
    #: At most this many stars (brightest first) are followed through the run [400].
    max_stars: int = 400
    #: Aperture radii in units of the reference frame's median FWHM [1, 1.5, 2, 3].
    aperture_fwhm: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0)
    #: Background annulus (inner, outer) in units of the FWHM [4, 7].
    annulus_fwhm: tuple[float, float] = (4.0, 7.0)
    #: Re-centring may move a star at most this many FWHM from its transformed position [0.5].
    recentre_max_shift_fwhm: float = 0.5
    #: Bright isolated stars used to track the field from frame to frame [40].
    tracking_stars: int = 40
    #: A tracked frame is accepted when this many tracking stars re-centre [6] ...
    tracking_min_stars: int = 6
    #: ... with an rms residual below this many pixels [0.5].
    tracking_max_rms: float = 0.5
    #: Frames read and measured per block [16].
    block_frames: int = 16
    #: Telescope aperture diameter in metres, for scintillation, for every run [None: each
    #: frame's `aperture_diameter_m` (site configuration or APTDIA), else 0.3, said in the notes].
    aperture_diameter_m: float | None = None
    #: Osborn et al. (2015) site factor C_Y for scintillation [1.5].
    scintillation_cy: float = 1.5
    #: Also fit every star with a per-frame PSF model (positions fixed from registration); the
    #: rows join the aperture rows with method 'psf' [False].
    psf_photometry: bool = False
    #: PSF model when psf_photometry is on: 'auto' (the reference frame's stars choose between a
    #: Gaussian and a Moffat, constant or linear across the field, and an empirical grid),
    #: 'moffat', 'gaussian' or 'empirical' ['auto'].
    psf_model: str = "auto"
    #: Where each block of frames is measured: 'cpu', 'cuda' (an NVIDIA GPU; an error before any
    #: work without one) or 'auto' (the GPU when one is usable, else the CPU) ['cpu'].
    device: str = "cpu"

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        for name in ("detection_threshold", "recentre_max_shift_fwhm", "tracking_max_rms",
                     "scintillation_cy"):
            set_(name, positive(f"photometry {name}", getattr(self, name)))
        for name, least in (("max_stars", 3), ("tracking_stars", 3), ("tracking_min_stars", 2),
                            ("block_frames", 1)):
            set_(name, integer(f"photometry {name}", getattr(self, name), least=least))
        set_("aperture_diameter_m", positive("photometry aperture_diameter_m",
                                             self.aperture_diameter_m, allow_none=True))
        radii = tuple(positive("photometry aperture_fwhm", r) for r in _sequence(
            "photometry aperture_fwhm", self.aperture_fwhm))
        if not radii:
            raise EngineValueError("photometry aperture_fwhm must hold at least one radius")
        set_("aperture_fwhm", radii)
        annulus = tuple(positive("photometry annulus_fwhm", r) for r in _sequence(
            "photometry annulus_fwhm", self.annulus_fwhm))
        if len(annulus) != 2 or not annulus[0] < annulus[1]:
            raise EngineValueError(f"photometry annulus_fwhm must be (inner, outer) with inner "
                                   f"< outer, got {self.annulus_fwhm!r}")
        set_("annulus_fwhm", annulus)
        one_of("photometry psf_model", self.psf_model, ("auto", "moffat", "gaussian", "empirical"))
        one_of("photometry device", self.device, DEVICES)
        if not isinstance(self.psf_photometry, bool):
            raise EngineValueError(f"photometry psf_photometry must be true or false, got "
                                   f"{self.psf_photometry!r}")


def _sequence(name: str, value) -> tuple:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise EngineValueError(f"{name} must be a list of numbers, got {value!r}")
    return tuple(value)
