"""Aperture photometry on a real frame against SExtractor's catalogue of it (sep's NTT/EMMI test
image, with SExtractor's own background map subtracted as SExtractor does)."""

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

import engine

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real" / "sep_ntt_emmi"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is not present")


def _catalogue():
    rows = [line.split() for line in (DATA / "image.cat").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    table = np.array(rows, dtype=float)
    # Columns: 2-3 X/Y_IMAGE (1-based), 13 FLUX_APER (10 px diameter), 14 its error, 21 FLAGS.
    return table[:, 1] - 1.0, table[:, 2] - 1.0, table[:, 12], table[:, 13], table[:, -1]


def test_ten_pixel_apertures_agree_with_sextractor():
    image = fits.getdata(DATA / "image.fits").astype(np.float64)
    background = fits.getdata(DATA / "back.fits").astype(np.float64)
    x, y, flux_aper, error_aper, flags = _catalogue()
    table = engine.aperture_photometry(image - background, x, y, [5.0]).to_pydict()
    flux = np.array(table["flux"])
    clean = (flags == 0) & (np.array(table["flags"]) == 0)
    assert clean.sum() >= 30
    relative = np.abs(flux[clean] - flux_aper[clean]) / flux_aper[clean]
    # SExtractor samples each pixel on a 5x5 grid; the engine's overlap is exact, so they differ
    # by SExtractor's sampling error: far below the photometric error of these stars.
    assert np.median(relative) < 2e-3
    assert np.all(np.abs(flux[clean] - flux_aper[clean]) < 0.25 * error_aper[clean])
