"""A camera's fixed patterns and the way it turns light into stored ADU.

`Detector` holds what stays the same all night (bias structure, dark-current map with hot
pixels and columns, amp-glow pattern, flat-field response with vignetting and dust donuts,
sky gradient) and `expose` draws one frame:

    electrons = Poisson(flat * (sky + stars) + dark_rate * t + glow(t)) + cosmic rays
    electrons -> full-well clip (charge bleeds along columns on CCDs without anti-blooming)
    native ADU = (electrons + read noise) / (gain * adc_scale) + bias level + bias structure
    stored ADU = clip(round(native ADU), 0, 2^bits - 1) * adc_scale      (uint16)

An overscan strip (if any) holds the frame's bias level plus read noise only. The CMOS amp
glow grows as glow(t) = A (0.05 + (t / 60 s)^index): not linear in t, so only darks of the
same exposure remove it.
"""

from __future__ import annotations

import math

import numpy as np

from engine.kernels._jit import set_threads
from engine.simulation._kernels import bleed_columns, digitise_rows, photon_counts
from engine.simulation.config import Site

__all__ = ["Detector"]


class Detector:
    """The fixed patterns of one site's camera and optics (imaging area, stored binning)."""

    def __init__(self, site: Site, rng: np.random.Generator, threads: int | None = None):
        cam = site.camera
        self.threads = threads
        self.site = site
        self.camera = cam
        ny, nx = cam.height, cam.width
        self.shape = (ny, nx)
        yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float64)
        scale = cam.adc_scale
        self.gain_native = cam.gain_e_per_adu * scale      # e- per ADC step
        self.max_native = 2 ** cam.adc_bits - 1

        # Bias structure (native ADU, mean ~0): fixed column pattern, a ramp near the readout
        # side, a faint large-scale gradient.
        columns = rng.normal(0.0, cam.bias_column_rms_adu / scale, nx)
        ramp = (cam.bias_ramp_adu / scale) * np.exp(-xx / 25.0)
        gradient = (0.5 / scale) * ((xx / nx - 0.5) + 0.6 * (yy / ny - 0.5))
        self.bias_structure = (columns[None, :] + ramp + gradient).astype(np.float32)
        self.bias_level_native = cam.bias_level_adu / scale

        # Dark current: uniform rate with 5% texture, hot pixels (log-uniform in the camera's
        # hot_pixel_e_per_s), hot columns.
        dark = cam.dark_e_per_s * (1.0 + 0.05 * rng.standard_normal((ny, nx)))
        n_hot = int(round(cam.hot_pixel_fraction * ny * nx))
        hot_y = rng.integers(0, ny, n_hot)
        hot_x = rng.integers(0, nx, n_hot)
        low, high = cam.hot_pixel_e_per_s
        dark[hot_y, hot_x] += 10.0 ** rng.uniform(math.log10(low), math.log10(high), n_hot)
        self.hot_pixels = np.stack([hot_x, hot_y], axis=1)
        hot_columns = rng.choice(nx, size=min(cam.hot_columns, nx), replace=False) \
            if cam.hot_columns else np.zeros(0, dtype=int)
        for col in hot_columns:
            start = int(rng.integers(0, ny // 2))
            dark[start:, col] += rng.uniform(0.5, 2.0)
        self.hot_columns = [int(c) for c in hot_columns]
        self.dark_rate = np.maximum(dark, 0.0)
        self._dark_cache: dict[float, np.ndarray] = {}

        # Amp glow (CMOS): two hot spots at the right-hand edge, normalised to peak 1.
        if cam.amp_glow_e > 0:
            L = cam.amp_glow_scale_px / cam.binning
            g = np.exp(-np.hypot(xx - (nx - 1), yy - 0.15 * ny) / L)
            g += 0.6 * np.exp(-np.hypot(xx - (nx - 1), yy - 0.85 * ny) / L)
            self.glow_pattern = g / g.max()
        else:
            self.glow_pattern = None

        # Flat-field response: vignetting (cos^4-like, centred off-axis), dust donuts on the
        # sensor window, pixel response non-uniformity. Filter dust is added per filter.
        cx = 0.5 * (nx - 1) + rng.uniform(-0.04, 0.04) * nx
        cy = 0.5 * (ny - 1) + rng.uniform(-0.04, 0.04) * ny
        corner = math.hypot(max(cx, nx - 1 - cx), max(cy, ny - 1 - cy))
        r0 = corner / math.sqrt((1.0 - cam.vignetting) ** -0.5 - 1.0) if cam.vignetting > 0 \
            else float("inf")
        r2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / (r0 * r0)
        vignet = (1.0 + r2) ** -2.0
        self._flat_common = vignet * self._donuts(rng, cam.dust_donuts) * (
            1.0 + cam.prnu * rng.standard_normal((ny, nx)))
        self._flat_by_filter: dict[str, np.ndarray] = {}
        self._filter_seed = int(rng.integers(0, 2 ** 31))

        # Sky gradient (light pollution / moon), unit mean.
        angle = rng.uniform(0.0, 2.0 * math.pi)
        self.sky_pattern = 1.0 + site.sky_gradient * (
            math.cos(angle) * (xx / nx - 0.5) + math.sin(angle) * (yy / ny - 0.5))

    def _donuts(self, rng, count):
        ny, nx = self.shape
        out = np.ones(self.shape)
        scale = min(ny, nx)
        for _ in range(count):
            x0, y0 = rng.uniform(0, nx), rng.uniform(0, ny)
            r_out = rng.uniform(0.04, 0.12) * scale + 3.0
            r_in = r_out * rng.uniform(0.3, 0.45)   # shadow of the central obstruction
            depth = rng.uniform(0.01, 0.05)
            # Only touch the donut's box.
            j0, j1 = max(0, int(y0 - r_out - 4)), min(ny, int(y0 + r_out + 5))
            i0, i1 = max(0, int(x0 - r_out - 4)), min(nx, int(x0 + r_out + 5))
            if j0 >= j1 or i0 >= i1:
                continue
            r = np.hypot(np.arange(i0, i1)[None, :] - x0, np.arange(j0, j1)[:, None] - y0)
            ring = (1.0 / (1.0 + np.exp((r - r_out) / 1.2))) / (1.0 + np.exp((r_in - r) / 1.2))
            out[j0:j1, i0:i1] *= 1.0 - depth * ring
        return out

    def flat(self, band: str) -> np.ndarray:
        """The response (mean ~1 at the optical centre) of this camera with filter `band`; on a
        colour sensor, times each pixel's colour response."""
        if band not in self._flat_by_filter:
            seed = self._filter_seed + sum(ord(c) * 131 ** k for k, c in enumerate(band))
            rng = np.random.default_rng(seed)
            self._flat_by_filter[band] = self._flat_common * self._donuts(rng, 2) * self._cfa()
        return self._flat_by_filter[band]

    def _cfa(self):
        """Each pixel's colour-filter response (1 on a mono sensor)."""
        pattern = self.camera.bayer_pattern
        if pattern is None:
            return 1.0
        response = dict(zip("RGB", self.camera.bayer_response))
        cell = np.array([[response[pattern[0]], response[pattern[1]]],
                         [response[pattern[2]], response[pattern[3]]]])
        ny, nx = self.shape
        return np.tile(cell, (ny // 2 + 1, nx // 2 + 1))[:ny, :nx]

    def glow_e(self, exptime_s: float) -> float:
        """Amp-glow electrons at the pattern's peak for an exposure (0 without glow)."""
        cam = self.camera
        if self.glow_pattern is None:
            return 0.0
        return cam.amp_glow_e * (0.05 + (max(exptime_s, 0.0) / 60.0) ** cam.amp_glow_index)

    def dark_electrons(self, exptime_s: float) -> np.ndarray:
        """Expected dark electrons per pixel (dark current, hot pixels, glow); cached per
        exposure time (a night has only a few)."""
        key = float(exptime_s)
        if key not in self._dark_cache:
            out = self.dark_rate * key
            if self.glow_pattern is not None:
                out += self.glow_pattern * self.glow_e(key)
            if len(self._dark_cache) >= 4:
                self._dark_cache.pop(next(iter(self._dark_cache)))
            self._dark_cache[key] = out
        return self._dark_cache[key]

    def cosmic_rays(self, rng, seconds):
        """Random cosmic-ray hits (list of (x, y, electrons) deposits and a hit count)."""
        cam = self.camera
        ny, nx = self.shape
        area_cm2 = (nx * cam.binning * cam.pixel_size_um * 1e-4) * (
            ny * cam.binning * cam.pixel_size_um * 1e-4)
        n_hits = int(rng.poisson(cam.cosmic_ray_rate * area_cm2 * max(seconds, 0.0)))
        xs, ys, es, centres = [], [], [], []
        for _ in range(n_hits):
            x0, y0 = rng.uniform(0, nx), rng.uniform(0, ny)
            length = rng.exponential(2.5)
            angle = rng.uniform(0.0, 2.0 * math.pi)
            energy = rng.lognormal(math.log(1500.0), 0.7) * (1.0 + length)
            steps = max(1, int(math.ceil(length)) + 1)
            for s in range(steps):
                f = s / max(steps - 1, 1)
                xs.append(int(np.clip(x0 + f * length * math.cos(angle), 0, nx - 1)))
                ys.append(int(np.clip(y0 + f * length * math.sin(angle), 0, ny - 1)))
                es.append(energy / steps)
            centres.append((x0, y0))
        return np.array(xs, dtype=np.int64), np.array(ys, dtype=np.int64), np.array(es), centres

    def expose(self, expected_e: np.ndarray, exptime_s: float, rng: np.random.Generator, *,
               readout_s: float | None = None):
        """One stored frame from the expected electrons of light (after the flat) per pixel.

        expected_e: (rows, columns) of the imaging area, float64, light only (the dark current,
        glow and bias are added here); exptime_s: for the dark current and cosmic rays.
        Returns (uint16 frame with overscan, info dict with the cosmic rays and bias level).
        """
        cam = self.camera
        ny, nx = self.shape
        # Small frames are cheaper on the calling thread than on a woken thread pool.
        set_threads(1 if ny * nx < 250_000 else self.threads)
        electrons = np.empty(self.shape, dtype=np.float32)
        photon_counts(np.ascontiguousarray(expected_e, dtype=np.float64),
                      self.dark_electrons(exptime_s), rng.random(self.shape, dtype=np.float32),
                      rng.standard_normal(self.shape, dtype=np.float32), electrons)
        xs, ys, es, centres = self.cosmic_rays(
            rng, exptime_s + (cam.readout_s if readout_s is None else readout_s))
        if xs.size:
            np.add.at(electrons, (ys, xs), np.rint(es).astype(np.float32))
        if cam.bloom:
            bleed_columns(electrons, np.float32(cam.full_well_e))
        level = self.bias_level_native + rng.normal(0.0, cam.bias_jitter_adu / cam.adc_scale)
        normals = rng.standard_normal(self.shape, dtype=np.float32)
        image = np.empty(self.shape, dtype=np.uint16)
        digitise_rows(electrons, normals, float(cam.read_noise_e), float(cam.full_well_e),
                      1.0 / self.gain_native, self.bias_structure, float(level),
                      float(self.max_native), cam.adc_scale, image)
        data = image
        if cam.overscan_columns:
            over = level + (cam.read_noise_e / self.gain_native) * rng.standard_normal(
                (ny, cam.overscan_columns))
            over = (np.clip(np.rint(over), 0, self.max_native).astype(np.uint16)
                    * np.uint16(cam.adc_scale))
            if cam.overscan_side == "left":
                data = np.concatenate([over, image], axis=1)
            else:
                data = np.concatenate([image, over], axis=1)
        info = {"cosmic_rays": [[float(x) + cam.data_x0, float(y)] for x, y in centres],
                "bias_level_adu": float(level * cam.adc_scale)}
        return np.ascontiguousarray(data), info
