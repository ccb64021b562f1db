"""The measuring functions take what astropy users hold: NumPy masked arrays, NDData and CCDData
(mask, uncertainty, unit, WCS), Quantities for radii and gain, and (N, 2) positions. Checked
against photutils on the same masked image and radii, and against analytic answers."""

from __future__ import annotations

import math

import astropy.units as u
import numpy as np
import pytest
from astropy.nddata import CCDData, NDData, StdDevUncertainty, VarianceUncertainty
from astropy.wcs import WCS

import engine
from engine.errors import EngineValueError, EngineWarning
from engine.flags import MeasurementFlag, PixelFlag

photutils_aperture = pytest.importorskip("photutils.aperture")

BAD = int(MeasurementFlag.BAD_PIXEL)


def _star_field(seed: int = 3):
    """A 60 x 70 image: sky 100 plus three Gaussian stars and noise; and their centres."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:60, :70]
    x = np.array([20.3, 45.7, 33.1])
    y = np.array([18.6, 40.2, 29.9])
    image = np.full((60, 70), 100.0)
    for xc, yc, flux in zip(x, y, (5e4, 2e4, 8e3)):
        image += flux / (2 * np.pi * 2.0 ** 2) * np.exp(-((xx - xc) ** 2 + (yy - yc) ** 2) / 8.0)
    image += rng.normal(0.0, 3.0, image.shape)
    mask = np.zeros(image.shape, bool)
    mask[18, 19:22] = True   # inside the first star's apertures
    mask[41, 46] = True      # inside the second's
    return image, x, y, mask


def _photutils_sums(data, x, y, radius, mask=None, error=None):
    aperture = photutils_aperture.CircularAperture(np.column_stack([x, y]), r=radius)
    table = photutils_aperture.aperture_photometry(data, aperture, mask=mask, error=error,
                                                   method="exact")
    sums = np.asarray(table["aperture_sum"], dtype=float)
    errors = None if error is None else np.asarray(table["aperture_sum_err"], dtype=float)
    return sums, errors


def test_masked_array_equals_photutils_with_the_same_mask_and_is_flagged():
    image, x, y, mask = _star_field()
    table = engine.aperture_photometry(np.ma.MaskedArray(image, mask), x, y, [4.0]).to_pydict()
    expected, _ = _photutils_sums(image, x, y, 4.0, mask=mask)
    np.testing.assert_allclose(table["flux"], expected, rtol=1e-12)
    assert [f & BAD for f in table["flags"]] == [BAD, BAD, 0]
    plain = engine.aperture_photometry(image, x, y, [4.0]).to_pydict()
    assert plain["flux"][0] > table["flux"][0] and plain["flags"][0] & BAD == 0


def test_masked_pixels_leave_the_area_of_a_flat_image():
    # A flat image of 10 per pixel: flux = 10 x (pi r^2 - masked pixels wholly inside).
    image = np.full((40, 40), 10.0)
    mask = np.zeros(image.shape, bool)
    mask[20, 20] = mask[21, 19] = True
    row = engine.aperture_photometry(np.ma.MaskedArray(image, mask), [20.0], [20.0],
                                     [5.0]).to_pydict()
    assert row["area"][0] == pytest.approx(math.pi * 25 - 2, rel=1e-12)
    assert row["flux"][0] == pytest.approx(10 * (math.pi * 25 - 2), rel=1e-12)


def test_nddata_uncertainty_gives_photutils_errors_and_its_mask_is_honoured():
    image, x, y, mask = _star_field()
    sigma = np.sqrt(np.maximum(image, 0) + 9.0)
    data = CCDData(image, unit=u.electron, mask=mask, uncertainty=StdDevUncertainty(sigma))
    table = engine.aperture_photometry(data, x, y, [3.0, 5.0]).to_pydict()
    for k, radius in enumerate((3.0, 5.0)):
        sums, errors = _photutils_sums(image, x, y, radius, mask=mask, error=sigma)
        np.testing.assert_allclose(table["flux"][k::2], sums, rtol=1e-12)
        np.testing.assert_allclose(table["flux_err"][k::2], errors, rtol=1e-10)
    # A variance uncertainty is the same noise said otherwise.
    variance = NDData(image, unit=u.electron, mask=mask,
                      uncertainty=VarianceUncertainty(sigma ** 2))
    np.testing.assert_allclose(
        engine.aperture_photometry(variance, x, y, [3.0, 5.0]).column("flux_err").to_numpy(),
        table["flux_err"], rtol=1e-12)


def test_image_unit_decides_the_gain():
    image, x, y, _ = _star_field()
    in_electrons = engine.aperture_photometry(image * 2.0, x, y, [4.0]).column("flux")
    adu = CCDData(image, unit=u.adu)
    for gain in (2.0, 2.0 * u.electron / u.adu):
        np.testing.assert_allclose(
            engine.aperture_photometry(adu, x, y, [4.0], gain=gain).column("flux").to_numpy(),
            in_electrons.to_numpy(), rtol=1e-12)
    with pytest.raises(EngineValueError, match="gain must be 1"):
        engine.aperture_photometry(CCDData(image, unit=u.electron), x, y, [4.0], gain=2.0)
    with pytest.raises(EngineValueError, match="electron or adu"):
        engine.aperture_photometry(CCDData(image, unit=u.adu / u.s), x, y, [4.0])
    with pytest.raises(EngineValueError, match="electron / adu"):
        engine.aperture_photometry(image, x, y, [4.0], gain=2.0 * u.s)


def _wcs(arcsec_per_pixel: float) -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [35.0, 30.0]
    wcs.wcs.cdelt = [-arcsec_per_pixel / 3600.0, arcsec_per_pixel / 3600.0]
    return wcs


def test_radii_as_quantities_in_pixels_or_angles_with_a_wcs():
    image, x, y, _ = _star_field()
    in_pixels = engine.aperture_photometry(image, x, y, [5.0], annulus=(8, 12)).to_pydict()
    for kwargs in ({"radii": 5 * u.pix, "annulus": (8, 12) * u.pix},
                   {"radii": [10.0] * u.arcsec, "annulus": (16, 24) * u.arcsec,
                    "wcs": _wcs(2.0)}):
        got = engine.aperture_photometry(image, x, y, **kwargs).to_pydict()
        np.testing.assert_allclose(got["radius"], in_pixels["radius"], rtol=1e-12)
        np.testing.assert_allclose(got["flux"], in_pixels["flux"], rtol=1e-12)
    # The NDData's own WCS serves too.
    got = engine.aperture_photometry(NDData(image, wcs=_wcs(0.5)), x, y, 2.5 * u.arcsec)
    assert got.column("radius").to_pylist() == pytest.approx([5.0] * 3)
    with pytest.raises(EngineValueError, match="WCS"):
        engine.aperture_photometry(image, x, y, 20 * u.arcsec)
    with pytest.raises(EngineValueError, match="pixels or an angle"):
        engine.aperture_photometry(image, x, y, 20 * u.kg)


def test_positions_as_one_n_by_2_array():
    image, x, y, _ = _star_field()
    apart = engine.aperture_photometry(image, x, y, [4.0]).to_pydict()
    together = engine.aperture_photometry(image, np.column_stack([x, y]), radii=[4.0]).to_pydict()
    assert together == apart
    with pytest.raises(EngineValueError, match=r"\(N, 2\)"):
        engine.aperture_photometry(image, np.zeros((3, 3)), radii=[4.0])
    with pytest.raises(EngineValueError, match="pixel coordinates"):
        engine.aperture_photometry(image, x * u.deg, y * u.deg, [4.0])
    with pytest.raises(EngineValueError, match="radii must be given"):
        engine.aperture_photometry(image, np.column_stack([x, y]))


def test_psf_photometry_takes_the_same_inputs():
    image, x, y, mask = _star_field()
    psf = engine.PSFModel.from_parameters("gaussian", fwhm=2.0 * 2.3548)
    flags = np.where(mask, np.uint8(PixelFlag.BAD), np.uint8(0))
    by_flags = engine.psf_photometry(image, x, y, psf=psf, pixel_flags=flags, gain=2.0)
    data = CCDData(image, unit=u.adu, mask=mask)
    by_mask = engine.psf_photometry(data, np.column_stack([x, y]), psf=psf,
                                    gain=2 * u.electron / u.adu)
    assert by_mask.to_pydict() == by_flags.to_pydict()
    # Gaussian stars of known flux (x 2 e-/ADU) are recovered, masked pixels and all.
    np.testing.assert_allclose(by_mask.column("flux").to_numpy(), [1e5, 4e4, 1.6e4], rtol=0.02)
    with pytest.warns(EngineWarning, match="uncertainty is not used"):
        engine.psf_photometry(NDData(image, uncertainty=StdDevUncertainty(np.ones_like(image))),
                              x, y, psf=psf)


def test_psf_photometry_on_one_star_says_why_it_failed():
    image, x, y, _ = _star_field()
    with pytest.warns(EngineWarning, match="at least 3 are needed"):
        table = engine.psf_photometry(image, x[:1], y[:1])
    assert table.column("flags").to_pylist()[0] & int(MeasurementFlag.FIT_FAILED)
    assert math.isnan(table.column("flux").to_pylist()[0])


def test_detect_stars_honours_the_mask_and_the_wcs_of_nddata():
    image, x, y, _ = _star_field()
    found = engine.detect_stars(image, noise=3.0)
    assert found.num_rows == 3
    hidden = np.zeros(image.shape, bool)
    hidden[10:28, 12:30] = True  # the first star, wholly
    masked = engine.detect_stars(NDData(image, mask=hidden, wcs=_wcs(2.0)), noise=3.0)
    assert masked.num_rows == 2 and "ra" in masked.column_names
    assert np.min(np.hypot(masked.column("x").to_numpy() - x[0],
                           masked.column("y").to_numpy() - y[0])) > 10
    same = engine.detect_stars(np.ma.MaskedArray(image, hidden), noise=3.0)
    assert same.column("x").to_pylist() == masked.column("x").to_pylist()
