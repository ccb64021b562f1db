"""The one registry of bit flags in the engine.

Two families, each a `enum.IntFlag`:

- `PixelFlag` (uint8 masks beside image data): what is wrong with a pixel. Calibration writes
  them from the raw values; photometry reads them.
- `MeasurementFlag` (uint32 in photometry and light-curve tables; 0 = good): why a measurement
  should not be trusted. The compiled core sets the low bits; their values are fixed in
  engine/cext/include/engine/flags.hpp and a test holds the two equal.

Add a flag here (and in flags.hpp if C++ sets it); never reuse a retired bit.
"""

from __future__ import annotations

import enum


class PixelFlag(enum.IntFlag):
    BAD = 1          # hot, dead or otherwise unusable (bad-pixel mask)
    SATURATED = 2    # raw value at or above the saturation level
    NONFINITE = 4    # NaN or inf in the data
    COSMIC_RAY = 8   # cosmic-ray hit


class MeasurementFlag(enum.IntFlag):
    SATURATED = 1 << 0          # a saturated pixel inside the aperture
    BAD_PIXEL = 1 << 1          # a bad or non-finite pixel inside the aperture (left out of the sum)
    NEAR_EDGE = 1 << 2          # the aperture reaches past the image edge
    OFF_FRAME = 1 << 3          # centre off the image, or no aperture pixel on it
    BLENDED = 1 << 4            # another star's centre lies within the blend radius
    BACKGROUND_FAILED = 1 << 5  # too few usable annulus pixels for a background
    FIT_FAILED = 1 << 6         # PSF fit without a solution (singular, too few usable pixels)
    FIT_NOT_CONVERGED = 1 << 7  # PSF fit stopped at its iteration limit (values kept)
    NOT_REGISTERED = 1 << 8     # the frame could not be registered to the reference
    CENTROID_FAILED = 1 << 9    # re-centring (or a PSF position fit) failed or reached its bound
    CLOUD = 1 << 16             # transparency or ensemble scatter beyond the noise model
    NOISE_MODEL_EXCEEDED = 1 << 17  # scatter far beyond the predicted noise
    # Set by the ensemble stage (engine/ensemble) on light-curve rows:
    NO_ENSEMBLE = 1 << 18       # too few comparison stars on the frame for a zero point
    NO_FLUX = 1 << 19           # the star's flux is missing or non-finite on this frame
    ENSEMBLE_OUTLIER = 1 << 20  # comparison measurement left out of the zero point (clipped)


def describe(flags: int, family: type[enum.IntFlag] = MeasurementFlag) -> list[str]:
    """Names of the bits set in `flags`, lowest first (unknown bits as 'bit N')."""
    names = []
    for bit in range(32):
        value = 1 << bit
        if flags & value:
            try:
                names.append(family(value).name)
            except ValueError:
                names.append(f"bit {bit}")
    return names
