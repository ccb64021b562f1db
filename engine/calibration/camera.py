"""What a camera's numbers are when its headers do not say: gain, read noise, saturation level.

Each value comes, in this order, from the header (engine.io.headers), the site's configuration
(engine.settings.Site), or a measurement here; its source is kept beside it, in words, so that no
value is ever assumed silently.

- the saturation level is measured on each raw frame at ingest (`engine.io.adc`).
- `photon_transfer(flats, biases)`: Janesick's method on pairs of flats and of biases,
  gain = ((F1 + F2) - (B1 + B2)) / (var(F1 - F2) - var(B1 - B2)) e-/ADU and read noise =
  gain x std(B1 - B2) / sqrt(2) e-, on the frames' central region, with sigma-clipped statistics
  (hot pixels and cosmic rays do not count). Two flats of different levels are matched first
  (F2 scaled to F1's level above the bias), so a fading twilight does not bias the variance.
- `read_noise_from_bias(bias)`: one bias frame alone: the scatter of differences of neighbouring
  rows (a fixed column pattern cancels), divided by sqrt(2); in ADU.
- `gain_from_lights(lights, bias_level, read_noise_adu)`: the same idea on the sky of
  consecutive light frames: in tiles of the central region, sky-limited pixels have
  var = (sky - bias) / gain + read_noise^2; the difference of two frames cancels the flat field
  and the fixed patterns, clipping removes the stars, and the tiles with the fewest clipped pixels
  (the flattest background) give the answer (the median over tiles and pairs).
- `measure_noise(lights, biases, flats, gain=..., read_noise=...)`: the decision for one run:
  given values kept, the others measured by the first method the frames allow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from engine.errors import EngineValueError

__all__ = ["CameraNoise", "PhotonTransfer", "central_region", "gain_from_lights",
           "measure_noise", "photon_transfer", "read_noise_from_bias"]

#: Largest central region used, pixels on a side: enough for a variance good to ~0.5 %.
_REGION = 512
_TILE = 48
#: Most light pairs the sky estimate looks at (each gives hundreds of tiles).
_LIGHT_PAIRS = 4
_CLIP_SIGMA = 4.0


# ----------------------------------------------------------------------------------------------
# Robust statistics on central regions

def central_region(shape: tuple[int, int], size: int = _REGION) -> tuple[slice, slice]:
    """The central (at most size x size, at least half of each axis) region of a frame."""
    rows, columns = shape
    h, w = min(size, max(rows // 2, 1)), min(size, max(columns // 2, 1))
    r0, c0 = (rows - h) // 2, (columns - w) // 2
    return slice(r0, r0 + h), slice(c0, c0 + w)


def _clipped(values: np.ndarray) -> tuple[float, float, float]:
    """Sigma-clipped (mean, variance, fraction clipped) of finite values: astropy sigma_clip's
    rule (median centre, standard deviation, 4 sigma, at most 5 passes), written out because
    it runs on thousands of small tiles."""
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    total = values.size
    kept = values
    for _ in range(5):
        if kept.size < 16:
            return math.nan, math.nan, 1.0
        centre, spread = np.median(kept), kept.std()
        inside = kept[np.abs(kept - centre) <= _CLIP_SIGMA * spread]
        if inside.size == kept.size:
            break
        kept = inside
    if kept.size < 16:
        return math.nan, math.nan, 1.0
    return float(kept.mean()), float(kept.var(ddof=1)), 1.0 - kept.size / total


# ----------------------------------------------------------------------------------------------
# Photon transfer

@dataclass
class PhotonTransfer:
    """Janesick's photon transfer: gain (e-/ADU) and read noise (e-), the medians over pairs,
    with the pairs' own values and what was used."""

    gain: float
    read_noise: float
    flat_pairs: int
    bias_pairs: int
    gains: list[float] = field(default_factory=list)
    read_noise_adu: float = math.nan

    def describe(self) -> str:
        return (f"photon transfer from {self.flat_pairs} flat pair(s) and {self.bias_pairs} "
                f"bias pair(s)")


def _pairs(frames: list) -> list[tuple]:
    return [(frames[k], frames[k + 1]) for k in range(0, len(frames) - 1, 2)]


def photon_transfer(flats: list[np.ndarray], biases: list[np.ndarray], *,
                    read_noise_adu: float | None = None) -> PhotonTransfer:
    """Gain and read noise from pairs of flats and pairs of biases (frames as stored, same
    shape; consecutive frames pair up). With fewer than two biases, `read_noise_adu` (e.g. from
    `read_noise_from_bias`) stands in for var(B1 - B2) / 2, and one bias for the level.

    Raises EngineValueError without a flat pair, without any bias, or when no pair gives a
    positive variance excess."""
    if len(flats) < 2:
        raise EngineValueError(f"photon transfer needs a pair of flats, got {len(flats)}")
    if not biases:
        raise EngineValueError("photon transfer needs bias frames for the zero level")
    rows, columns = central_region(np.shape(flats[0]))
    region = lambda frame: np.asarray(frame, dtype=np.float64)[rows, columns]  # noqa: E731
    bias_frames = [region(b) for b in biases]
    bias_pairs = _pairs(bias_frames)
    if bias_pairs:
        variances = [_clipped(b1 - b2)[1] for b1, b2 in bias_pairs]
        read_noise_adu = math.sqrt(float(np.median(variances)) / 2.0)
    elif read_noise_adu is None:
        raise EngineValueError("photon transfer needs a pair of biases, or the read noise")
    bias = np.mean(bias_frames, axis=0)
    gains = []
    for f1, f2 in _pairs([region(f) for f in flats]):
        s1 = _clipped(f1 - bias)[0]
        s2 = _clipped(f2 - bias)[0]
        if not (s1 > 0 and s2 > 0) or not 0.8 < s1 / s2 < 1.25:
            continue  # levels too far apart to match, or no signal
        ratio = s1 / s2
        variance = _clipped((f1 - bias) - ratio * (f2 - bias))[1]
        excess = variance - read_noise_adu ** 2 * (1.0 + ratio ** 2)
        if excess > 0:
            gains.append(s1 * (1.0 + ratio) / excess)
    if not gains:
        raise EngineValueError("no flat pair gave a photon-noise excess over the read noise")
    gain = float(np.median(gains))
    return PhotonTransfer(gain=gain, read_noise=gain * read_noise_adu, flat_pairs=len(gains),
                          bias_pairs=len(bias_pairs), gains=gains,
                          read_noise_adu=read_noise_adu)


def read_noise_from_bias(bias: np.ndarray) -> float:
    """Read noise (ADU) of one bias frame: the clipped scatter of neighbouring rows' differences
    over sqrt(2), on the central region (a fixed column pattern cancels in the difference)."""
    rows, columns = central_region(np.shape(bias))
    data = np.asarray(bias, dtype=np.float64)[rows, columns]
    if data.shape[0] < 2:
        raise EngineValueError("a bias frame needs at least two rows")
    return math.sqrt(_clipped(data[1:] - data[:-1])[1] / 2.0)


# ----------------------------------------------------------------------------------------------
# From the lights' sky

def gain_from_lights(lights: list[np.ndarray], bias_level: float, read_noise_adu: float = 0.0,
                     *, tile: int = _TILE) -> tuple[float, int]:
    """(gain e-/ADU, number of light pairs used) from the sky of consecutive light frames.

    bias_level: the zero level (ADU, pedestal included) under the sky; read_noise_adu: the read
    noise in ADU. Tiles of `tile` pixels over the central region; in each, the two frames'
    clipped sky levels s1, s2 above the bias and the clipped variance of
    (L1 - bias) - (s1 / s2) (L2 - bias), whose photon part is s1 (1 + s1 / s2) / gain. The
    half of the tiles with the fewest clipped pixels (the flattest background) count.
    Raises EngineValueError when no tile is sky-limited.
    """
    if len(lights) < 2:
        raise EngineValueError(f"the gain from the sky needs two light frames, got {len(lights)}")
    rows, columns = central_region(np.shape(lights[0]))
    estimates, pairs = [], 0
    for k in range(min(len(lights) - 1, _LIGHT_PAIRS)):
        first = np.asarray(lights[k], dtype=np.float64)[rows, columns] - bias_level
        second = np.asarray(lights[k + 1], dtype=np.float64)[rows, columns] - bias_level
        tiles = []
        for r in range(0, first.shape[0] - tile + 1, tile):
            for c in range(0, first.shape[1] - tile + 1, tile):
                a, b = first[r:r + tile, c:c + tile], second[r:r + tile, c:c + tile]
                s1, _, clipped1 = _clipped(a)
                s2, _, clipped2 = _clipped(b)
                if not (s1 > 0 and s2 > 0) or not 0.8 < s1 / s2 < 1.25:
                    continue
                ratio = s1 / s2
                _, variance, clipped = _clipped(a - ratio * b)
                excess = variance - read_noise_adu ** 2 * (1.0 + ratio ** 2)
                if excess > 0:
                    tiles.append((clipped + clipped1 + clipped2, s1 * (1.0 + ratio) / excess))
        if not tiles:
            continue
        tiles.sort()
        flattest = tiles[:max(1, len(tiles) // 2)]
        estimates.extend(g for _, g in flattest)
        pairs += 1
    if not estimates:
        raise EngineValueError("no sky-limited background in the lights to measure the gain on")
    return float(np.median(estimates)), pairs


# ----------------------------------------------------------------------------------------------
# The decision for one light run

@dataclass
class CameraNoise:
    """A run's gain (e-/ADU) and read noise (e-), each with where it came from, and notes."""

    gain: float
    gain_source: str
    read_noise: float
    read_noise_source: str
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"gain": self.gain, "gain_source": self.gain_source,
                "read_noise": self.read_noise, "read_noise_source": self.read_noise_source}


def measure_noise(lights: list, biases: list = (), flats: list = (), *,
                  gain: float | None = None, gain_source: str | None = None,
                  read_noise: float | None = None,
                  read_noise_source: str | None = None) -> CameraNoise:
    """Gain and read noise of a run: the given ones (header or configuration) kept, the others
    measured: photon transfer when there are two flats and a bias, else the lights' sky above
    the bias level; the read noise from bias pairs, else from one bias. Frames are raw, as
    stored (lists of 2-D arrays). Without anything to measure on, 1.0 e-/ADU and 0 e- are
    assumed, and said in the source and the notes."""
    notes: list[str] = []
    rn_adu, rn_how = None, None
    if len(biases) >= 2:
        rows, columns = central_region(np.shape(biases[0]))
        pairs = _pairs([np.asarray(b, dtype=np.float64)[rows, columns] for b in biases])
        rn_adu = math.sqrt(float(np.median([_clipped(a - b)[1] for a, b in pairs])) / 2.0)
        rn_how = f"{len(pairs)} bias pair(s)"
    elif biases:
        rn_adu, rn_how = read_noise_from_bias(biases[0]), "one bias frame's row differences"
    if gain is None:
        gain, gain_source = _measured_gain(lights, biases, flats, rn_adu, notes)
    if read_noise is None:
        if rn_adu is not None:
            read_noise, read_noise_source = gain * rn_adu, f"measured: {rn_how}"
        else:
            read_noise, read_noise_source = 0.0, "assumed 0 e-: no bias frames to measure it on"
            notes.append("read noise unknown (no header value, no configuration, no bias "
                         "frames): 0 e- assumed")
    return CameraNoise(gain, gain_source, read_noise, read_noise_source, notes)


def _measured_gain(lights, biases, flats, rn_adu, notes) -> tuple[float, str]:
    if len(flats) >= 2 and biases:
        try:
            result = photon_transfer(flats, biases, read_noise_adu=rn_adu)
            bias_text = (f"{result.bias_pairs} bias pair(s)" if result.bias_pairs
                         else "one bias frame")
            return result.gain, (f"measured: photon transfer from {result.flat_pairs} flat "
                                 f"pair(s) and {bias_text}")
        except EngineValueError as exc:
            notes.append(f"photon transfer failed ({exc})")
    else:
        notes.append(f"photon transfer needs two flats and a bias; this camera has "
                     f"{len(flats)} flat(s) and {len(biases)} bias frame(s)")
    if biases and len(lights) >= 2:
        bias_level = float(np.median([_clipped(np.asarray(b)[central_region(np.shape(b))])[0]
                                      for b in biases]))
        try:
            gain, pairs = gain_from_lights(lights, bias_level, rn_adu or 0.0)
            return gain, (f"measured: estimated from the lights' sky ({pairs} pair(s) of "
                          f"consecutive lights, bias level {bias_level:.1f} ADU)")
        except EngineValueError as exc:
            notes.append(f"gain from the lights' sky failed ({exc})")
    else:
        notes.append("the gain from the lights' sky needs a bias level and two lights")
    notes.append("gain unknown (no header value, no configuration, nothing to measure it on): "
                 "1.0 e-/ADU assumed; set gain_e_per_adu for the site")
    return 1.0, "assumed 1.0 e-/ADU: could not be measured"
