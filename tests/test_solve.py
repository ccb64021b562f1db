"""Sky solutions on a real sky-survey image: astropy's DSS M13 field (300 x 300, 1 arcsec/px,
TAN WCS), turned, mirrored and mis-pointed, solved against a catalogue made from its own WCS with
catalogue-only stars and stars missing, as real catalogues and detections differ. The target's
predicted position is held against where the transformed image really puts it."""

import math
import warnings
from pathlib import Path

import astropy
import numpy as np
import pyarrow as pa
import pytest
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning
from scipy import ndimage

from engine.detection import detect_stars
from engine.errors import SolveError
from engine.io.catalogue import ReferenceCatalogue
from engine.io.headers import normalise_header
from engine.registration.solve import check_wcs, solve_field, solve_from_reference

DATA = Path(astropy.__file__).parent / "io/fits/hdu/compressed/tests/data"
SHAPE = (300, 300)
CENTRE = np.array([149.5, 149.5])


def _read(name):
    with fits.open(DATA / name) as hdus:
        hdu = next(h for h in hdus if h.data is not None and h.data.ndim == 2)
        return hdu.data.astype(np.float64), hdu.header.copy()


def _positions(image):
    stars = detect_stars(image, threshold=5.0)
    xy = np.column_stack([stars.column("x_win").to_numpy(), stars.column("y_win").to_numpy()])
    return xy, stars.column("flux").to_numpy()


@pytest.fixture(scope="module")
def m13():
    image, header = _read("m13.fits")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(header)
    xy, flux = _positions(image)
    ra, dec = wcs.all_pix2world(xy, 0).T
    # The target: a bright star well inside the field with no close neighbour.
    inner = np.flatnonzero((np.abs(xy - CENTRE) < 100).all(axis=1))
    gaps = np.array([np.sort(np.hypot(*(xy - xy[k]).T))[1] for k in inner])
    target = int(inner[np.argmax(flux[inner] * (gaps > 10))])
    rng = np.random.default_rng(13)
    # A catalogue as a survey would give it: 0.1 arcsec position errors, 10% of the detected
    # stars missing (not the target), and 400 catalogue-only stars over 30' x 30', mostly faint.
    keep = rng.random(len(xy)) > 0.1
    keep[target] = True
    mag = 25.0 - 2.5 * np.log10(np.clip(flux, 1.0, None))
    noise = rng.normal(0.0, 0.1 / 3600.0, (2, keep.sum()))
    n_extra = 400
    ra0, dec0 = wcs.wcs.crval
    extra_ra = ra0 + rng.uniform(-0.25, 0.25, n_extra) / math.cos(math.radians(dec0))
    extra_dec = dec0 + rng.uniform(-0.25, 0.25, n_extra)
    extra_mag = rng.uniform(mag.min() - 1.0, mag.max() + 3.0, n_extra)
    table = pa.table({"ra": np.r_[ra[keep] + noise[0] / math.cos(math.radians(dec0)), extra_ra],
                      "dec": np.r_[dec[keep] + noise[1], extra_dec],
                      "mag": np.r_[mag[keep], extra_mag]})
    return dict(image=image, header=header, wcs=wcs, xy=xy, flux=flux,
                catalogue=ReferenceCatalogue.from_table(table),
                target_radec=(ra[target], dec[target]), target_xy=xy[target])


def _offset_pointing(wcs, arcmin, angle_deg=30.0):
    """The field centre moved `arcmin` on the sky toward position angle `angle_deg`."""
    ra, dec = wcs.all_pix2world([CENTRE], 0)[0]
    a = math.radians(angle_deg)
    return (ra + arcmin / 60.0 * math.sin(a) / math.cos(math.radians(dec)),
            dec + arcmin / 60.0 * math.cos(a))


def _turned(image, angle_deg, mirror):
    """The image turned by angle_deg about its centre (and mirrored left-right first), with
    the map from original to new pixel positions."""
    a = math.radians(angle_deg)
    turn = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    flip = np.diag([-1.0, 1.0]) if mirror else np.eye(2)
    forward = turn @ flip                             # (x, y) original -> new, about the centre
    backward = np.linalg.inv(forward)
    # affine_transform maps output (row, col) to input (row, col): swap x and y.
    matrix = backward[::-1, ::-1]
    offset = CENTRE[::-1] - matrix @ CENTRE[::-1]
    turned = ndimage.affine_transform(image, matrix, offset, order=3, mode="constant",
                                      cval=float(np.median(image)))
    return turned, lambda xy: (np.asarray(xy) - CENTRE) @ forward.T + CENTRE


@pytest.mark.parametrize("angle_deg, mirror", [(90.0, False), (90.0, True), (33.0, True),
                                               (-141.0, False)])
def test_turned_mirrored_mispointed_field_puts_the_target_within_0_3_px(m13, angle_deg, mirror):
    image, to_new = _turned(m13["image"], angle_deg, mirror)
    xy, flux = _positions(image)
    pointing = _offset_pointing(m13["wcs"], 10.0)
    solution = solve_field(xy, flux, m13["catalogue"], pointing=pointing, pixel_scale=1.08,
                           shape=image.shape)
    predicted = solution.wcs.all_world2pix([m13["target_radec"]], 0)[0]
    truth = to_new(m13["target_xy"])
    assert np.hypot(*(predicted - truth)) < 0.3
    assert solution.method == "catalogue"
    assert solution.mirrored == mirror
    assert solution.pixel_scale_arcsec == pytest.approx(0.99972, rel=2e-3)
    # North (up in the original) turns with the image; mirroring left-right leaves it up.
    assert (solution.rotation_deg - angle_deg + 180) % 360 - 180 == pytest.approx(0.0, abs=0.2)
    assert solution.n_matched > 100 and solution.rms_arcsec < 0.5
    matched = solution.catalogue_index >= 0
    assert matched.sum() == solution.n_matched
    # The pairs are real: each matched star lies where the WCS puts its catalogue star.
    cat = m13["catalogue"]
    rows = solution.catalogue_index[matched]
    back = solution.wcs.all_world2pix(np.column_stack([cat.ra[rows], cat.dec[rows]]), 0)
    assert np.median(np.hypot(*(back - xy[matched]).T)) < 0.3


@pytest.mark.parametrize("name", ["m13_rice.fits", "m13_gzip.fits", "m13_hcomp.fits"])
def test_scale_search_on_tile_compressed_copies(m13, name):
    image, header = _read(name)
    assert "CTYPE1" in header  # the compressed copies carry the WCS too: it is not used
    image = np.fliplr(image)
    xy, flux = _positions(image)
    pointing = _offset_pointing(m13["wcs"], 2.0, angle_deg=200.0)
    solution = solve_field(xy, flux, m13["catalogue"], pointing=pointing, pixel_scale=None,
                           shape=image.shape)
    truth = np.array([SHAPE[1] - 1 - m13["target_xy"][0], m13["target_xy"][1]])
    predicted = solution.wcs.all_world2pix([m13["target_radec"]], 0)[0]
    assert np.hypot(*(predicted - truth)) < 0.3
    assert solution.pixel_scale_arcsec == pytest.approx(0.99972, rel=2e-3)
    assert solution.mirrored


def test_solution_header_reads_back_and_report(m13):
    solution = solve_field(m13["xy"], m13["flux"], m13["catalogue"],
                           pointing=_offset_pointing(m13["wcs"], 5.0), pixel_scale=1.0,
                           shape=SHAPE)
    header = solution.to_header()
    again = WCS(header)
    grid = np.array([[0.0, 0.0], [299.0, 0.0], [150.0, 150.0], [0.0, 299.0]])
    np.testing.assert_allclose(again.all_pix2world(grid, 0), solution.wcs.all_pix2world(grid, 0),
                               rtol=0, atol=1e-10)
    # The image's own WCS, recovered.
    np.testing.assert_allclose(solution.wcs.all_pix2world(grid, 0),
                               m13["wcs"].all_pix2world(grid, 0), rtol=0, atol=0.2 / 3600)
    report = solution.report()
    assert report["method"] == "catalogue" and report["mirrored"] is False
    assert report["n_matched"] == solution.n_matched and report["sip_order"] == 0


def test_distortion_gets_sip_terms(m13):
    """Positions bent by a barrel distortion (2.7 px at the corners) need SIP terms; the
    solution finds them and keeps the target within 0.1 px."""
    cat = m13["catalogue"]
    ra, dec = cat.ra, cat.dec
    clean = m13["wcs"].all_world2pix(np.column_stack([ra, dec]), 0)
    inside = ((clean >= 0) & (clean <= 299)).all(axis=1)
    r2 = np.sum((clean[inside] - CENTRE) ** 2, axis=1)
    bent = CENTRE + (clean[inside] - CENTRE) * (1.0 + 3e-7 * r2)[:, None]
    flux = 10 ** (-0.4 * cat.mag[inside])
    tan_only = solve_field(bent, flux, cat, pointing=_offset_pointing(m13["wcs"], 3.0),
                           pixel_scale=1.0, shape=SHAPE, sip_order=0)
    solution = solve_field(bent, flux, cat, pointing=_offset_pointing(m13["wcs"], 3.0),
                           pixel_scale=1.0, shape=SHAPE)
    assert solution.wcs.sip is not None and tan_only.wcs.sip is None
    assert solution.rms_arcsec < 0.3 * tan_only.rms_arcsec
    # The target: the star nearest a corner, where the distortion is largest.
    corner = int(np.argmax(r2))
    row = np.flatnonzero(inside)[corner]
    predicted = solution.wcs.all_world2pix([[ra[row], dec[row]]], 0)[0]
    assert np.hypot(*(predicted - bent[corner])) < 0.1
    assert np.hypot(*(tan_only.wcs.all_world2pix([[ra[row], dec[row]]], 0)[0]
                      - bent[corner])) > 0.5
    assert WCS(solution.to_header()).sip is not None


def test_no_catalogue_overlap_is_a_solve_error(m13):
    rng = np.random.default_rng(5)
    elsewhere = ReferenceCatalogue.from_table(pa.table({
        "ra": 253.0 + rng.uniform(-0.3, 0.3, 800), "dec": 34.0 + rng.uniform(-0.3, 0.3, 800),
        "mag": rng.uniform(10, 18, 800)}))
    with pytest.raises(SolveError, match="no part of the catalogue"):
        solve_field(m13["xy"], m13["flux"], elsewhere, pointing=_offset_pointing(m13["wcs"], 0),
                    pixel_scale=1.0, shape=SHAPE)
    # Pointed at it, the catalogue's random stars do not match the image's either.
    with pytest.raises(SolveError, match="no match between"):
        solve_field(m13["xy"], m13["flux"], elsewhere, pointing=(253.0, 34.0),
                    pixel_scale=1.0, shape=SHAPE)


def test_check_wcs_accepts_the_true_wcs_and_refuses_a_shifted_one(m13):
    solution = check_wcs(m13["wcs"], m13["xy"], m13["flux"], m13["catalogue"], shape=SHAPE)
    assert solution is not None and solution.method == "header"
    assert solution.n_matched > 100 and solution.rms_arcsec < 0.5
    shifted = m13["wcs"].deepcopy()
    shifted.wcs.crpix = shifted.wcs.crpix + [25.0, -18.0]
    reasons = []
    assert check_wcs(shifted, m13["xy"], m13["flux"], m13["catalogue"], shape=SHAPE,
                     reasons=reasons) is None
    assert "expected by chance" in reasons[0]


def test_header_with_wcserr_is_never_trusted(m13):
    header = m13["header"].copy()
    record = normalise_header(header, SHAPE)
    assert record.wcs is not None
    assert record.pixel_scale_arcsec == pytest.approx(0.99972, rel=1e-4)
    assert record.sources["pixel_scale"] == "CDELT"
    header["WCSERR"] = (4, "Error status of WCS fit. 0 for no error")
    record = normalise_header(header, SHAPE)
    assert record.wcs is None and record.pixel_scale_arcsec is None
    assert any("WCSERR = 4" in note for note in record.notes)


def test_header_with_zero_cd_matrix_is_never_trusted(m13):
    header = m13["header"].copy()
    for key in ("CDELT1", "CDELT2", "CROTA1"):
        del header[key]
    for key in ("CD1_1", "CD1_2", "CD2_1", "CD2_2"):
        header[key] = 0.0
    record = normalise_header(header, SHAPE)
    assert record.wcs is None
    assert any("zero or singular" in note for note in record.notes)


@pytest.mark.parametrize("cards, scale, source", [
    ({"PIXSCALE": 0.39}, 0.39, "PIXSCALE"),
    ({"SECPIX": -1.2}, 1.2, "SECPIX"),
    ({"XPIXSZ": 9.0, "FOCALLEN": 1000.0, "XBINNING": 2}, 206.265 * 9 / 1000, "XPIXSZ/FOCALLEN"),
    ({"XPIXSZ": (4.5, "pixel size, unbinned"), "FOCALLEN": 1000.0, "XBINNING": 2},
     206.265 * 9 / 1000, "XPIXSZ/FOCALLEN x binning"),
    ({"PIXSCALE": 500.0}, None, None),
])
def test_pixel_scale_keywords(cards, scale, source):
    header = fits.Header()
    for key, value in cards.items():
        header[key] = value
    record = normalise_header(header, SHAPE)
    if scale is None:
        assert record.pixel_scale_arcsec is None and record.notes
    else:
        assert record.pixel_scale_arcsec == pytest.approx(scale, rel=1e-12)
        assert record.sources["pixel_scale"] == source


def test_solve_from_an_already_solved_run(m13):
    image, to_new = _turned(m13["image"], 117.0, mirror=True)
    xy, flux = _positions(image)
    solution = solve_from_reference(xy, flux, m13["xy"], m13["flux"], m13["wcs"],
                                    scale_ratio=1.0, shape=image.shape, reference_run="r1")
    assert solution.method == "run r1" and solution.mirrored
    predicted = solution.wcs.all_world2pix([m13["target_radec"]], 0)[0]
    assert np.hypot(*(predicted - to_new(m13["target_xy"]))) < 0.3
    # catalogue_index points into the reference run's stars.
    matched = solution.catalogue_index >= 0
    back = to_new(m13["xy"][solution.catalogue_index[matched]])
    assert np.median(np.hypot(*(back - xy[matched]).T)) < 0.3
