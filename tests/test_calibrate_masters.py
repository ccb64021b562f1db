"""Masters from a real CCD calibration set (AST443, SBIG STL-1001E; ../shared/data/README.md).

Read in place, never written. The expected levels are the data README's: bias ~993 ADU (sigma
~8), darks 997 -> 1099 ADU from 10 to 300 s, flats ~19.6 kADU; EGAIN = 2.06 e-/ADU. The six
darks named 'expos1' are 60 s darks (the header says so, and the header is trusted).
"""

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

import reference
from engine.calibration import (bad_pixel_mask, load_master, master_bias, master_dark, master_flat,
                                write_master)
from engine.flags import PixelFlag

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "ast443_stl1001e"
EGAIN = 2.06

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"real data not found at {DATA}")


def _load(pattern):
    files = sorted(DATA.glob(pattern))
    headers = [fits.getheader(f) for f in files]
    return [f.name for f in files], np.stack([fits.getdata(f) for f in files]), headers


@pytest.fixture(scope="module")
def masters():
    bias_names, biases, bias_headers = _load("biases-*.FIT")
    dark_names, darks, dark_headers = _load("darks-*.FIT")
    flat_names, flats, flat_headers = _load("flat-*.FIT")
    bias = master_bias(biases, names=bias_names, binning=(1, 1), camera="SBIG STL-1001E",
                       temperatures=[h["CCD-TEMP"] for h in bias_headers])
    dark = master_dark(darks, [h["EXPTIME"] for h in dark_headers], names=dark_names, bias=bias,
                       gain=EGAIN)
    flat = master_flat(flats, names=flat_names, filter="Visible", bias=bias, dark=dark,
                       exptimes=[h["EXPTIME"] for h in flat_headers], saturation=65535)
    return dict(biases=biases, darks=darks, dark_headers=dark_headers, flats=flats, bias=bias,
                dark=dark, flat=flat)


def test_master_bias_is_the_sigma_clipped_mean(masters):
    bias, biases = masters["bias"], masters["biases"]
    assert bias.data.dtype == np.float32 and bias.data.shape == (1024, 1024)
    assert bias.ncombine == 8 and bias.notes == ()
    expected = reference.sigma_clipped_mean_numpy(biases)
    np.testing.assert_allclose(bias.data, expected, rtol=0, atol=1e-4)  # float32 of ~993
    assert 990.0 < float(np.median(bias.data)) < 996.0
    # Clipping mattered: a plain mean differs where single frames carry outliers.
    assert np.abs(biases.mean(axis=0) - expected).max() > 5.0


def test_dark_current_is_linear_in_exposure(masters):
    dark, bias = masters["dark"], masters["bias"]
    evidence = dark.evidence
    assert dark.mode == "rate" and evidence["tested"] and evidence["linear"]
    # The header's 60 s (not the file name's 1 s): six 'expos1' darks plus the 60 s one.
    assert evidence["exptimes"] == [10.0, 20.0, 30.0, 60.0, 150.0, 300.0]
    assert evidence["frames"] == [1, 1, 1, 7, 1, 1]
    for group in evidence["groups"]:
        assert group["worst_block_residual_adu"] <= group["allowed_adu"]
    # The slope, independently: frame medians above the master bias against exposure.
    times = np.array([h["EXPTIME"] for h in masters["dark_headers"]])
    levels = np.array([np.median(d - bias.data) for d in masters["darks"]])
    slope = np.polyfit(times, levels, 1)[0]
    rate = evidence["median_rate_adu_per_s"]
    assert rate == pytest.approx(slope, rel=0.03)
    assert 0.33 < rate < 0.37  # README: 997 -> 1099 ADU over 10 -> 300 s is 0.35 ADU/s
    assert evidence["median_rate_e_per_s"] == pytest.approx(rate * EGAIN)
    assert 0.68 < evidence["median_rate_e_per_s"] < 0.76
    assert dark.rate.rate and dark.rate.data.shape == (1024, 1024)
    # Scaled to 300 s, the rate model reproduces the 300 s dark pixel by pixel.
    model = dark.offset + dark.rate.data * 300.0
    residual = dark.matched[300.0].data - model
    assert abs(float(np.median(residual))) < 1.0
    assert np.percentile(np.abs(residual), 90) < 20.0  # one frame: read noise + shot noise


def test_flat_is_normalised_with_its_structure(masters):
    flat, bias = masters["flat"], masters["bias"]
    assert flat.ncombine == 8 and flat.filter == "Visible"
    assert float(np.median(flat.data)) == pytest.approx(1.0, abs=1e-6)
    # The structure of the flats themselves (bias removed, each normalised), block by block.
    raw = masters["flats"].astype(np.float64) - bias.data
    raw /= np.median(raw, axis=(1, 2), keepdims=True)
    mean = raw.mean(axis=0)

    def blocks(image):
        return image.reshape(32, 32, 32, 32).mean(axis=(1, 3))

    ours, theirs = blocks(flat.data), blocks(mean / np.median(mean))
    assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.99
    np.testing.assert_allclose(ours, theirs, atol=0.01)
    assert np.ptp(ours) > 0.05  # vignetting and dust: real structure, several per cent


def test_bad_pixel_mask_finds_hot_and_dead_pixels(masters):
    bpm = bad_pixel_mask(dark=masters["dark"], flat=masters["flat"])
    assert bpm.data.dtype == np.uint8
    assert set(np.unique(bpm.data)) <= {0, int(PixelFlag.BAD)}
    cards = dict((k, v) for k, v, _ in bpm.cards)
    assert 100 < cards["HOTPIX"] < 0.02 * bpm.data.size
    rate = masters["dark"].rate.data
    hot = bpm.data.astype(bool) & (rate > 10 * np.median(rate))
    assert hot.sum() == cards["HOTPIX"]
    assert cards["BADPIX"] == int(bpm.data.astype(bool).sum())


def test_masters_are_fits_files_with_provenance(masters, tmp_path):
    paths = {}
    for master in [masters["bias"], masters["dark"].rate, masters["flat"]]:
        paths[master.kind] = write_master(master, tmp_path / "masters")
    assert sorted(p.name for p in (tmp_path / "masters").iterdir()) == [
        "master_bias.fits", "master_dark_rate.fits", "master_flat_Visible.fits"]
    header = fits.getheader(paths["flat"])
    assert header["IMAGETYP"] == "MASTER FLAT" and header["FILTER"] == "Visible"
    assert header["NCOMBINE"] == 8 and header["NSOURCE"] == 8
    history = "\n".join(str(v) for v in header["HISTORY"])
    assert "source: flat-expos23s-Neg5-Vis.00000000.FIT" in history
    dark_header = fits.getheader(paths["dark"])
    assert dark_header["IMAGETYP"] == "MASTER DARK" and dark_header["BUNIT"] == "adu/s"
    assert dark_header["DARKMODE"] == "RATE" and dark_header["LINTEST"] == "PASS"
    assert dark_header["DCRATEE"] == pytest.approx(masters["dark"].evidence["median_rate_e_per_s"],
                                                   rel=1e-5)
    bias = load_master(paths["bias"])
    assert bias.kind == "bias" and bias.ncombine == 8 and bias.binning == (1, 1)
    np.testing.assert_array_equal(bias.data, masters["bias"].data)
    assert fits.getheader(paths["bias"])["IMAGETYP"] == "MASTER BIAS"


def test_implausible_levels_reject_empty_saturated_and_stray_frames_only():
    from engine.calibration.masters import implausible_levels

    def record(kind, level, exptime=0.0, dtype="uint16"):
        return {"frame_type": kind, "median_adu": level, "exptime": exptime, "dtype": dtype,
                "saturation": 65535.0}

    records = ([record("bias", v) for v in (805.0, 806.0, 804.0, 805.5)]
               + [record("bias", 0.0), record("bias", 1400.0)]
               + [record("dark", v, 60.0) for v in (900.0, 902.0, 901.0)]
               + [record("dark", 2500.0, 300.0)]
               + [record("flat", v, 5.0) for v in (9000.0, 21000.0, 40000.0)]
               + [record("flat", 65000.0, 5.0), record("bias", 0.0, dtype="float32")])
    found = implausible_levels(records)
    # Flats of any level below saturation stay; float data at 0 are no empty readout, but
    # that bias is still far from its siblings.
    assert sorted(found) == [4, 5, 13, 14]
    assert "empty" in found[4] and "siblings" in found[5] and "saturation" in found[13]
    assert "siblings" in found[14]
