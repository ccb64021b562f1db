"""Star detection: the real NTT image against SExtractor's catalogue, synthetic Gaussian stars of
known position, dtypes and byte orders, masks, and refusals of bad input."""

import math
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from scipy.spatial import cKDTree
from scipy.special import erf

import engine
from engine.detection import STAR_SCHEMA, detect_stars, star_positions
from engine.flags import MeasurementFlag

NTT = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "sep_ntt_emmi"
# image.cat columns (default.param): 1 NUMBER, 2-3 X/Y_IMAGE, 4-5 XWIN/YWIN_IMAGE, ...,
# 12 A_IMAGE, ..., 18-20 FLUX_RADIUS(0.1, 0.5, 0.6), 21 FLAGS.
X, Y, XWIN, YWIN, A, R50, FLAGS = 1, 2, 3, 4, 11, 18, 20


def render(shape, xy, flux, fwhm, background=0.0, noise=0.0, rng=None):
    """Pixel-integrated circular Gaussian stars (pixel (j, i) covers [i-.5, i+.5] x [j-.5, j+.5]).
    """
    ny, nx = shape
    image = np.full(shape, float(background))
    s = fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    half = int(math.ceil(6 * s)) + 1
    for (x, y), f in zip(xy, flux):
        i0, i1 = max(int(x) - half, 0), min(int(x) + half + 1, nx)
        j0, j1 = max(int(y) - half, 0), min(int(y) + half + 1, ny)
        px = 0.5 * np.diff(erf((np.arange(i0, i1 + 1) - 0.5 - x) / (s * math.sqrt(2))))
        py = 0.5 * np.diff(erf((np.arange(j0, j1 + 1) - 0.5 - y) / (s * math.sqrt(2))))
        image[j0:j1, i0:i1] += f * py[:, None] * px[None, :]
    if noise:
        image = image + rng.normal(0.0, noise, shape)
    return image


def columns(table):
    return {name: table.column(name).to_numpy(zero_copy_only=False)
            for name in table.column_names}


# ------------------------------------------------------------------------------------------------
# The real NTT/EMMI image against SExtractor
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ntt():
    if not (NTT / "image.fits").exists():
        pytest.skip(f"real data not found at {NTT}")
    from astropy.io import fits

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the ESO-LOG cards are not standard FITS
        image = fits.getdata(NTT / "image.fits")
    catalogue = np.loadtxt(NTT / "image.cat")
    return image, catalogue


def test_ntt_matches_sextractor(ntt):
    image, catalogue = ntt
    # SExtractor's settings of default.sex: DETECT_THRESH 1.5, BACK_SIZE 64, BACK_FILTERSIZE 3,
    # DETECT_MINAREA 5, the 3x3 pyramid filter; deblending off as in sep's own comparison.
    stars = detect_stars(image, 1.5, background_box=64, background_filter=3, min_area=5,
                         deblend_cont=1.0)
    assert stars.num_rows == len(catalogue) == 65
    found = columns(stars)
    # Pair each catalogue object with its nearest detection: one-to-one.
    expected_xy = catalogue[:, [X, Y]] - 1.0               # SExtractor is 1-based
    distance, index = cKDTree(np.c_[found["x"], found["y"]]).query(expected_xy)
    assert len(set(index.tolist())) == 65

    # Isophotal barycentres: the same to ~1e-4 px (measured: median 3.6e-5, max 5.8e-5).
    assert distance.max() < 1e-3
    assert np.median(distance) < 1e-4

    # Windowed centroids: median offset 6e-4 px, 90% within 4e-3 px. The few larger offsets
    # are galaxies of FWHM > 10 px, an object where SExtractor's own FLUX_RADIUS failed (0),
    # and one where the engine's iteration does not converge and falls back to the barycentre
    # (flagged CENTROID_FAILED).
    win = np.hypot(found["x_win"][index] - (catalogue[:, XWIN] - 1.0),
                   found["y_win"][index] - (catalogue[:, YWIN] - 1.0))
    assert np.median(win) < 2e-3
    assert np.mean(win < 0.01) >= 0.9
    assert np.all((win < 0.5) | ((found["flags"][index] & MeasurementFlag.CENTROID_FAILED) != 0)
                  | (catalogue[:, R50] == 0))

    # FWHM = 2 x FLUX_RADIUS(0.5), as SExtractor measures it (normalised by FLUX_AUTO).
    good = catalogue[:, R50] > 0
    ratio = found["fwhm"][index][good] / (2.0 * catalogue[good, R50])
    assert np.median(np.abs(ratio - 1.0)) < 2e-3

    # Brightest first, ids are row numbers, flags come from the registry.
    assert np.all(np.diff(found["flux"]) <= 0)
    assert found["star_id"].tolist() == list(range(65))
    truncated = (found["extraction_flags"] & 2) != 0
    assert np.all((found["flags"][truncated] & MeasurementFlag.NEAR_EDGE) != 0)


def test_ntt_big_endian_and_integer_copies_agree(ntt):
    image, _ = ntt
    native = detect_stars(image.astype(np.float64), 3.0)
    swapped = detect_stars(image.astype(">f8"), 3.0)
    fortran = detect_stars(np.asfortranarray(image.astype(np.float64)), 3.0)
    assert native.equals(swapped) and native.equals(fortran)
    # Integer data (the raw int16 values) gives the same detections as their float copy.
    raw = np.rint(image).astype(">i2")
    as_int = detect_stars(raw, 3.0)
    as_float = detect_stars(raw.astype(np.float64), 3.0)
    assert as_int.equals(as_float)


# ------------------------------------------------------------------------------------------------
# Synthetic Gaussian stars of known position
# ------------------------------------------------------------------------------------------------

def synthetic_field(seed=0, n=40, shape=(200, 220), fwhm=3.5, noise=5.0):
    rng = np.random.default_rng(seed)
    xy = np.empty((0, 2))
    while len(xy) < n:  # isolated stars, away from the edges
        p = rng.uniform(12, np.array(shape[::-1]) - 12, 2)
        if len(xy) == 0 or np.hypot(*(xy - p).T).min() > 15:
            xy = np.vstack([xy, p])
    flux = 10 ** rng.uniform(4.0, 5.5, n)
    image = render(shape, xy, flux, fwhm, background=300.0, noise=noise, rng=rng)
    return image, xy, flux


def test_synthetic_stars_are_found_where_they_are():
    image, xy, flux = synthetic_field()
    stars = detect_stars(image, 5.0)
    assert stars.schema == STAR_SCHEMA
    found = columns(stars)
    assert stars.num_rows == len(xy)
    distance, index = cKDTree(xy).query(np.c_[found["x_win"], found["y_win"]])
    assert sorted(index.tolist()) == list(range(len(xy)))
    # Windowed centroids: ~FWHM / SNR; these stars have SNR 100-1000, so a few 0.01 px at most.
    assert distance.max() < 0.03
    assert np.median(distance) < 0.01
    # The barycentre of thresholded pixels is noisier, the windowed centroid is the one to use.
    bary = np.hypot(found["x"] - xy[index, 0], found["y"] - xy[index, 1])
    assert np.median(bary) >= np.median(distance)
    # 2 x FLUX_RADIUS spreads each pixel's flux over its area, as SExtractor does: a few per
    # cent above the true FWHM for stars this small (3.62 for 3.5 noise-free).
    np.testing.assert_allclose(found["fwhm"], 3.5 * 1.035, rtol=0.03)
    np.testing.assert_allclose(found["background"], 300.0, atol=2.0)
    # Brightest first: the order of the true fluxes.
    assert index.tolist() == np.argsort(-flux).tolist()
    assert (found["flags"] == 0).all()
    np.testing.assert_array_equal(star_positions(stars), np.c_[found["x_win"], found["y_win"]])


def test_input_is_not_modified_and_nonfinite_pixels_are_masked():
    image, xy, _ = synthetic_field(1)
    image[50:53, 60:63] = np.nan
    image[0, 0] = np.inf
    before = image.copy()
    stars = detect_stars(image, 5.0)
    np.testing.assert_array_equal(image, before)
    assert stars.num_rows == len(xy) or stars.num_rows == len(xy) - 1  # a star may sit there
    assert np.isfinite(columns(stars)["x_win"]).all()


def test_mask_hides_a_star():
    image, xy, _ = synthetic_field(2)
    mask = np.zeros(image.shape, dtype=bool)
    x, y = np.rint(xy[0]).astype(int)
    mask[y - 8:y + 9, x - 8:x + 9] = True
    stars = detect_stars(image, 5.0, mask=mask)
    found = star_positions(stars)
    assert stars.num_rows == len(xy) - 1
    assert np.hypot(*(found - xy[0]).T).min() > 5


def test_max_stars_saturation_and_wcs():
    from astropy.wcs import WCS

    image, xy, flux = synthetic_field(3)
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crpix = [101.0, 51.0]                      # 1-based: pixel (100, 50) 0-based
    wcs.wcs.crval = [10.0, 20.0]
    wcs.wcs.cdelt = [-0.5 / 3600, 0.5 / 3600]
    stars = detect_stars(image, 5.0, max_stars=10, saturation=image.max() - 1.0, wcs=wcs)
    assert stars.num_rows == 10
    found = columns(stars)
    assert found["flags"][0] & MeasurementFlag.SATURATED
    assert not (found["flags"][1:] & MeasurementFlag.SATURATED).any()
    ra, dec = wcs.all_pix2world(found["x_win"], found["y_win"], 0)
    np.testing.assert_allclose(found["ra"], ra, rtol=0, atol=1e-12)
    np.testing.assert_allclose(found["dec"], dec, rtol=0, atol=1e-12)
    centre = wcs.all_pix2world([[100.0, 50.0]], 0)[0]
    np.testing.assert_allclose(centre, [10.0, 20.0], atol=1e-12)


def test_nothing_to_detect_gives_an_empty_table():
    rng = np.random.default_rng(4)
    stars = detect_stars(rng.normal(100.0, 3.0, (64, 64)), 50.0)
    assert stars.num_rows == 0 and stars.schema == STAR_SCHEMA
    assert star_positions(stars).shape == (0, 2)


def test_noise_free_image_with_given_noise():
    assert detect_stars(np.full((60, 60), 7.0), 5.0).num_rows == 0
    image = render((60, 60), [[30.2, 29.7]], [1e4], 3.0)
    (star,) = detect_stars(image, 5.0, noise=1.0).to_pylist()
    assert star["x_win"] == pytest.approx(30.2, abs=1e-3)
    assert star["y_win"] == pytest.approx(29.7, abs=1e-3)


@pytest.mark.parametrize("image, kwargs", [
    (np.zeros(100), {}),
    (np.zeros((4, 4, 4)), {}),
    (np.zeros((32, 32), dtype=complex), {}),
    (np.array([["a"] * 8] * 8), {}),
    (np.zeros((2, 50)), {}),
    (np.full((32, 32), np.nan), {}),
    (np.ones((32, 32)), dict(threshold=0.0)),
    (np.ones((32, 32)), dict(threshold=math.nan)),
    (np.ones((32, 32)), dict(threshold="high")),
    (np.ones((32, 32)), dict(mask=np.zeros((31, 32), dtype=bool))),
    (np.ones((32, 32)), dict(min_area=0)),
    (np.ones((32, 32)), dict(deblend_cont=2.0)),
    (np.ones((32, 32)), dict(filter_kernel="gauss")),
    (np.ones((32, 32)), dict(noise=-1.0)),
    (np.ones((32, 32)), dict(max_stars=1.5)),
])
def test_bad_input_raises_value_errors(image, kwargs):
    with pytest.raises(engine.EngineValueError):
        detect_stars(image, **kwargs)


def test_star_positions_refuses_what_is_not_positions():
    with pytest.raises(engine.EngineValueError):
        star_positions(np.zeros((4, 3)))
    with pytest.raises(engine.EngineValueError):
        star_positions(pa.table({"ra": [1.0]}))
