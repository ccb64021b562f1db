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
from engine.detection import STAR_SCHEMA, cosmic_ray_mask, detect_stars, frame_fwhm, star_positions
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
    # SExtractor keeps every detection: reject_sharp=False does too.
    stars = detect_stars(image, 1.5, background_box=64, background_filter=3, min_area=5,
                         deblend_cont=1.0, reject_sharp=False)
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


def test_ntt_frame_fwhm_is_the_stars_and_its_two_sharp_hits_are_left_out(ntt):
    image, catalogue = ntt
    stars = detect_stars(image, 1.5, background_box=64, background_filter=3, min_area=5,
                         deblend_cont=1.0)
    # SExtractor's own half-light diameters: the stellar locus of this galaxy field is at
    # 2 x FLUX_RADIUS ~2.45 px (the bright unsaturated point sources); two objects are far
    # sharper than any star (0.82 and 1.02 px: cosmic-ray hits on the summed exposures).
    diameter = 2.0 * catalogue[:, R50]
    stellar = np.median(diameter[(diameter > 2.3) & (diameter < 2.6)])
    assert frame_fwhm(stars) == pytest.approx(stellar, rel=0.05)
    sharp = catalogue[(diameter > 0) & (diameter < 0.5 * stellar)]
    assert len(sharp) == 2 and stars.num_rows == 63
    found = np.c_[columns(stars)["x"], columns(stars)["y"]]
    assert cKDTree(found).query(sharp[:, [X, Y]] - 1.0)[0].min() > 5.0
    assert stars.schema.metadata[b"sharp_rejected"] == b"2"


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


# ------------------------------------------------------------------------------------------------
# Hot pixels and cosmic rays
# ------------------------------------------------------------------------------------------------

def _hits(rng, shape, count, frame_stars):
    """Cosmic-ray hits: single pixels and short tracks of 2-5 pixels, 300-5000 above the sky,
    away from the stars; returns (image of the hits, list of their pixels)."""
    ny, nx = shape
    image = np.zeros(shape)
    pixels = []
    while len(pixels) < count:
        x0, y0 = rng.uniform(5, nx - 10), rng.uniform(5, ny - 10)
        if np.min(np.hypot(frame_stars[:, 0] - x0, frame_stars[:, 1] - y0)) < 12:
            continue
        angle, length = rng.uniform(0, 2 * np.pi), rng.integers(0, 5)
        track = {(int(y0 + t * np.sin(angle)), int(x0 + t * np.cos(angle)))
                 for t in np.linspace(0, length, 2 * length + 1)}
        for j, i in track:
            image[j, i] += rng.uniform(300, 5000)
        pixels.append(sorted(track))
    return image, pixels


def test_injected_hot_pixels_and_cosmic_rays_leave_the_stars_and_their_fwhm():
    rng = np.random.default_rng(11)
    shape, fwhm = (200, 240), 6.0
    xy = rng.uniform(15, [225, 185], (25, 2))
    image = render(shape, xy, rng.uniform(2e4, 2e5, 25), fwhm, background=100.0, noise=5.0,
                   rng=rng)  # peaks 500-5000
    # 0.4 % hot pixels, 30-1000 above the sky (6-200 sigma): as bright as the stars' peaks.
    hot = np.c_[rng.integers(0, 240, 200), rng.integers(0, 200, 200)]
    image[hot[:, 1], hot[:, 0]] += 10.0 ** rng.uniform(1.5, 3.0, 200)
    cosmics, tracks = _hits(rng, shape, 30, xy)
    image += cosmics
    everything = detect_stars(image, 5.0, reject_sharp=False)
    assert np.median(columns(everything)["fwhm"]) < 2.0  # the spikes outnumber the stars
    stars = detect_stars(image, 5.0)
    assert frame_fwhm(stars) == pytest.approx(fwhm, rel=0.1)
    found = np.c_[columns(stars)["x"], columns(stars)["y"]]
    distance, _ = cKDTree(xy).query(found)
    assert np.all(distance < 3.0)                         # every detection kept is a star
    assert np.mean(cKDTree(found).query(xy)[0] < 1.0) > 0.8  # and most stars are kept

    mask = cosmic_ray_mask(image, frame_fwhm(stars))
    assert all(any(mask[j, i] for j, i in track) for track in tracks)
    assert mask[hot[:, 1], hot[:, 0]].mean() > 0.8       # hot pixels are as sharp
    ny, nx = np.mgrid[0:200, 0:240]
    near_star = np.min(np.hypot(nx[..., None] - xy[:, 0], ny[..., None] - xy[:, 1]), axis=-1) < 2
    clean = np.ones(shape, bool)
    clean[hot[:, 1], hot[:, 0]] = False
    assert not (mask & near_star & clean).any()          # no star core is flagged
    assert not cosmic_ray_mask(render(shape, xy, rng.uniform(2e4, 2e5, 25), 2.0, 100.0, 5.0,
                                      rng), 2.0).any()   # undersampled: nothing can be told
    # A frame of 256 px or more takes its background from every 4th pixel: the same scene
    # tiled 2 x 2 gives the same verdicts in each quadrant.
    tiled = cosmic_ray_mask(np.tile(image, (2, 2)), frame_fwhm(stars))
    for quadrant in (tiled[:200, :240], tiled[200:, :240], tiled[:200, 240:], tiled[200:, 240:]):
        assert all(any(quadrant[j, i] for j, i in track) for track in tracks)
        assert quadrant[hot[:, 1], hot[:, 0]].mean() > 0.8
        assert not (quadrant & near_star & clean).any()


SARA = NTT.parent / "sara_raw_calibration"


@pytest.mark.skipif(not (SARA / "raw").is_dir(), reason=f"real data not found at {SARA}")
def test_raw_sara_frames_fwhm_is_the_stars_and_what_is_left_out_is_transient():
    from astropy.io import fits

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # padding after the last HDU
        frames = [fits.getdata(SARA / "raw" / f"wasp19-00{k}.fits") for k in range(3)]
        calib = {name: fits.getdata(SARA / "calib" / f"{name}.fits").astype(np.float64)
                 for name in ("bias", "dark", "flat")}
    raw = frames[1]
    kept = detect_stars(raw, 5.0)
    everything = detect_stars(raw, 5.0, reject_sharp=False)
    # The same frame calibrated (bias, dark scaled to 25 s, flat): the stars' FWHM is the same.
    dark_rate = (calib["dark"] - calib["bias"]) / 200.0
    response = calib["flat"] - calib["bias"]
    response = np.where(response > 0, response / np.median(response), np.nan)
    calibrated = (raw - calib["bias"] - 25.0 * dark_rate) / response  # NaN: masked
    reference = frame_fwhm(detect_stars(calibrated, 5.0))
    assert 2.0 < frame_fwhm(kept) < 4.0
    assert frame_fwhm(kept) == pytest.approx(reference, rel=0.05)
    assert np.min(columns(kept)["fwhm"]) > 0.5 * frame_fwhm(kept)
    assert np.sum(columns(everything)["fwhm"] < 0.5 * frame_fwhm(kept)) >= 5
    # What was left out is not on the neighbouring frames (stars drift < 0.2 px): cosmic rays.
    left_out = np.c_[columns(everything)["x"], columns(everything)["y"]]
    left_out = left_out[cKDTree(np.c_[columns(kept)["x"], columns(kept)["y"]]).query(left_out)[0]
                        > 0.01]
    assert len(left_out) >= 5
    for other in (frames[0], frames[2]):
        others = detect_stars(other, 5.0, reject_sharp=False)
        distance, _ = cKDTree(np.c_[columns(others)["x"], columns(others)["y"]]).query(left_out)
        assert np.mean(distance > 2.0) >= 0.8
