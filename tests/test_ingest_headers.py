"""Header normalisation and frame-type classification, one convention at a time."""

import numpy as np
import pytest
from astropy.io import fits

from engine.errors import EngineValueError
from engine.io import bayer
from engine.io.frame_type import (FrameType, classify_frame, header_frame_type, name_exptime,
                                   name_frame_type)
from engine.io.headers import normalise_header, parse_dec, parse_ra, parse_section
from engine.settings.ingest import IngestConfig, Site

SHAPE = (100, 120)




# --------------------------------------------------------------------------- telescope


def test_aperture_diameter_from_focal_length_and_ratio_without_aptdia():
    h = fits.Header()
    h["FOCALLEN"], h["FOCRATIO"] = 1000.0, 5.0   # N.I.N.A.: no APTDIA
    record = normalise_header(h, SHAPE)
    assert record.aperture_diameter_m == pytest.approx(0.2)
    assert record.sources["aperture_diameter"] == "FOCALLEN/FOCRATIO"
    h["APTDIA"] = 280.0                           # APTDIA wins when both are there
    assert normalise_header(h, SHAPE).aperture_diameter_m == pytest.approx(0.28)
    del h["FOCRATIO"], h["APTDIA"]
    assert normalise_header(h, SHAPE).aperture_diameter_m is None


@pytest.mark.parametrize("key", ["READOUTM", "READMODE"])
def test_readout_mode_from_nina_or_maxim(key):
    h = fits.Header()
    h[key] = ("High Gain Mode 16BIT ", "Sensor readout mode")
    record = normalise_header(h, SHAPE)
    assert record.readout_mode == "High Gain Mode 16BIT" and record.sources["readout_mode"] == key
    assert normalise_header(fits.Header(), SHAPE).readout_mode is None


@pytest.mark.parametrize("value, expected", [(279.4, 0.2794), (600, 0.6), (0.4, 0.4)])
def test_aperture_diameter_from_aptdia_in_mm_or_metres(value, expected):
    h = fits.Header()
    h["APTDIA"] = (value, "Aperture diameter of telescope in mm")
    assert normalise_header(h, SHAPE).aperture_diameter_m == pytest.approx(expected)
    assert normalise_header(fits.Header(), SHAPE).aperture_diameter_m is None


def test_site_aperture_must_be_positive():
    assert Site("a", aperture_diameter_m=0.35).aperture_diameter_m == 0.35
    with pytest.raises(EngineValueError, match="aperture_diameter_m"):
        Site("a", aperture_diameter_m=0.0)
    with pytest.raises(EngineValueError, match="aperture_diameter_m"):
        Site("a", aperture_diameter_m="wide")


# --------------------------------------------------------------------------- gain


def test_egain_is_electrons_and_nina_gain_is_a_setting():
    h = fits.Header()
    h["SWCREATE"] = "N.I.N.A. 3.0.0.9001"
    h["GAIN"] = 139
    h["EGAIN"] = 0.78
    record = normalise_header(h, SHAPE)
    assert record.gain == pytest.approx(0.78)
    assert record.sources["gain"] == "EGAIN"
    assert record.gain_setting == 139


def test_nina_gain_without_egain_stays_unknown():
    h = fits.Header()
    h["SWCREATE"] = "N.I.N.A. 2.1"
    h["GAIN"] = 2  # a small setting: N.I.N.A.'s GAIN is never e-/ADU
    record = normalise_header(h, SHAPE)
    assert record.gain is None and record.gain_setting == 2


def test_observatory_gain_with_comment_is_electrons():
    h = fits.Header()
    h["GAIN"] = (1.9, "e-/ADU")
    record = normalise_header(h, SHAPE)
    assert record.gain == pytest.approx(1.9) and record.gain_setting is None


def test_large_integer_gain_without_evidence_is_a_setting():
    h = fits.Header()
    h["GAIN"] = 100
    record = normalise_header(h, SHAPE)
    assert record.gain is None and record.gain_setting == 100


def test_small_gain_without_evidence_is_assumed_electrons():
    h = fits.Header()
    h["GAIN"] = 1.4
    record = normalise_header(h, SHAPE)
    assert record.gain == pytest.approx(1.4)
    assert "assumed" in record.sources["gain"]


def test_egain_and_gain_disagreeing_is_noted():
    h = fits.Header()
    h["EGAIN"] = 2.0
    h["GAIN"] = (3.0, "e-/ADU")
    record = normalise_header(h, SHAPE)
    assert record.gain == 2.0
    assert any("GAIN = 3" in note for note in record.notes)


# ----------------------------------------------------------------- exposure, binning, temperature


def test_exposure_keywords_and_disagreement():
    h = fits.Header()
    h["EXPOSURE"] = 30.0
    assert normalise_header(h, SHAPE).exptime == 30.0
    h["EXPTIME"] = 60.0
    record = normalise_header(h, SHAPE)
    assert record.exptime == 60.0 and record.sources["exptime"] == "EXPTIME"
    assert any("EXPOSURE = 30" in note for note in record.notes)


def test_exposure_in_milliseconds_by_comment():
    h = fits.Header()
    h["EXPOSURE"] = (2500, "[ms] exposure")
    assert normalise_header(h, SHAPE).exptime == pytest.approx(2.5)


@pytest.mark.parametrize("cards, expected", [
    ({"XBINNING": 2, "YBINNING": 2}, (2, 2)),
    ({"CCDXBIN": 3, "CCDYBIN": 1}, (3, 1)),
    ({"CCDSUM": "2 2"}, (2, 2)),
    ({"BINNING": "4x4"}, (4, 4)),
    ({}, (1, 1)),
])
def test_binning(cards, expected):
    h = fits.Header()
    for key, value in cards.items():
        h[key] = value
    assert normalise_header(h, SHAPE).binning == expected


def test_temperatures_and_kelvin():
    h = fits.Header()
    h["CCD-TEMP"] = -10.2
    h["SET-TEMP"] = -10.0
    record = normalise_header(h, SHAPE)
    assert record.temperature == pytest.approx(-10.2) and record.set_temperature == -10.0
    h = fits.Header()
    h["CCD-TEMP"] = 180.2
    assert normalise_header(h, SHAPE).temperature == pytest.approx(180.2 - 273.15)


# --------------------------------------------------------------------------- pointing and angles


def test_angle_parsers():
    assert parse_ra("22:04:08") == pytest.approx((22 + 4 / 60 + 8 / 3600) * 15)
    assert parse_ra("22 04 08.5") == pytest.approx((22 + 4 / 60 + 8.5 / 3600) * 15)
    assert parse_ra("22h04m08s") == pytest.approx((22 + 4 / 60 + 8 / 3600) * 15)
    assert parse_ra(331.0334) == pytest.approx(331.0334)
    assert parse_ra("331.0334") == pytest.approx(331.0334)
    assert parse_ra(22.0689, hours=True) == pytest.approx(331.0335)
    assert parse_dec("-00:55:31") == pytest.approx(-(55 / 60 + 31 / 3600))
    assert parse_dec("+40 25 13") == pytest.approx(40 + 25 / 60 + 13 / 3600)
    assert parse_dec("\u221212:30:00") == pytest.approx(-12.5)
    for bad in ("25:00:00", "abc", "12:75:00"):
        with pytest.raises(ValueError):
            parse_ra(bad)
    with pytest.raises(ValueError):
        parse_dec("+95:00:00")


def test_pointing_conventions():
    h = fits.Header()
    h["OBJCTRA"] = "19 50 47.0"
    h["OBJCTDEC"] = "+08 52 06"
    h["RA"] = 1.0
    h["DEC"] = 2.0
    record = normalise_header(h, SHAPE)
    assert record.sources["pointing"] == "OBJCTRA/OBJCTDEC"
    assert record.ra_deg == pytest.approx((19 + 50 / 60 + 47 / 3600) * 15)
    assert record.dec_deg == pytest.approx(8 + 52 / 60 + 6 / 3600)
    h = fits.Header()
    h["RA"] = (297.69, "[deg]")
    h["DEC"] = 8.87
    assert normalise_header(h, SHAPE).ra_deg == pytest.approx(297.69)


def test_pointing_from_wcs_centre():
    h = fits.Header()
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CRVAL1"], h["CRVAL2"] = 250.0, 36.0
    h["CRPIX1"], h["CRPIX2"] = (SHAPE[1] + 1) / 2, (SHAPE[0] + 1) / 2
    h["CDELT1"], h["CDELT2"] = -0.0003, 0.0003
    record = normalise_header(h, SHAPE)
    assert record.wcs is not None and "RA---TAN" in record.wcs
    assert record.ra_deg == pytest.approx(250.0) and record.dec_deg == pytest.approx(36.0)
    assert record.sources["pointing"] == "WCS centre"


# --------------------------------------------------------------------------- site


def test_site_sitelong_east_positive_sexagesimal():
    h = fits.Header()
    h["SITELAT"] = "+31 40 51.4"
    h["SITELONG"] = "-110 52 39.0"
    h["SITEELEV"] = 2320.0
    record = normalise_header(h, SHAPE)
    assert record.site_latitude_deg == pytest.approx(31.68094, abs=1e-5)
    assert record.site_longitude_deg == pytest.approx(-110.87750, abs=1e-5)
    assert record.site_height_m == 2320.0


def test_site_longitude_west_by_comment_and_longitud_convention():
    h = fits.Header()
    h["SITELAT"] = 31.6809
    h["SITELONG"] = ("+110:52:39.0", "LONGITUDE, DEGREES WEST OF ZERO")
    assert normalise_header(h, SHAPE).site_longitude_deg == pytest.approx(-110.8775, abs=1e-4)
    h = fits.Header()  # ING: LONGITUD is west-positive
    h["LATITUDE"] = 28.762
    h["LONGITUD"] = 17.877639
    h["HEIGHT"] = 2348
    record = normalise_header(h, SHAPE)
    assert record.site_longitude_deg == pytest.approx(-17.877639)
    assert "west-positive" in record.sources["site"]
    h["LONGITUD"] = (-17.877639, "East longitude")
    assert normalise_header(h, SHAPE).site_longitude_deg == pytest.approx(-17.877639)


@pytest.mark.parametrize("key, comment, expected", [
    ("LONGITUD", "Site longitude (deg, E positive)", 34.763),
    ("LONGITUD", "[deg] longitude, west positive", -34.763),
    ("LONGITUD", "", -34.763),  # IRAF / ING default: west-positive
    ("SITELONG", "", 34.763),  # MaxIm DL / N.I.N.A. default: east-positive
    ("SITELONG", "LONGITUDE, DEGREES WEST OF ZERO", -34.763),
    ("SITELONG", "west is negative", 34.763),
])
def test_longitude_sign_from_the_comment(key, comment, expected):
    h = fits.Header()
    h["LATITUDE" if key == "LONGITUD" else "SITELAT"] = 30.596
    h[key] = (34.763, comment)
    assert normalise_header(h, SHAPE).site_longitude_deg == pytest.approx(expected)


def test_site_obsgeo_xyz():
    import astropy.units as u
    from astropy.coordinates import EarthLocation

    where = EarthLocation.from_geodetic(20.8108 * u.deg, -32.3783 * u.deg, 1798 * u.m)
    h = fits.Header()
    h["OBSGEO-X"], h["OBSGEO-Y"], h["OBSGEO-Z"] = (float(c.to_value(u.m)) for c in where.geocentric)
    record = normalise_header(h, SHAPE)
    assert record.site_longitude_deg == pytest.approx(20.8108, abs=1e-7)
    assert record.site_latitude_deg == pytest.approx(-32.3783, abs=1e-7)
    assert record.site_height_m == pytest.approx(1798, abs=1e-3)


# --------------------------------------------------------------------------- sections


def test_sections_are_iraf_one_based_inclusive():
    assert parse_section("[  17: 528,   1: 520]", (520, 536)) == (0, 520, 16, 528)
    assert parse_section("[4:13,1:520]", (520, 536)) == (0, 520, 3, 13)
    assert parse_section("[13:4,520:1]", (520, 536)) == (0, 520, 3, 13)  # reversed
    assert parse_section("[*,1:10]", (520, 536)) == (0, 10, 0, 536)
    with pytest.raises(ValueError):
        parse_section("[1:600,1:10]", (520, 536))
    with pytest.raises(ValueError):
        parse_section("1:10,1:10", (520, 536))


def test_bad_section_is_noted_not_fatal():
    h = fits.Header()
    h["BIASSEC"] = "[1:999,1:10]"
    h["DATASEC"] = "[11:120,1:100]"
    record = normalise_header(h, SHAPE)
    assert record.overscan_section is None and any("BIASSEC" in n for n in record.notes)
    assert record.trim_section == (0, 100, 10, 120)


# --------------------------------------------------------------------------- Bayer


@pytest.mark.parametrize("cards, rows, expected", [
    ({"BAYERPAT": "RGGB"}, 100, "RGGB"),
    ({"BAYERPAT": "RGGB", "XBAYROFF": 1}, 100, "GRBG"),
    ({"BAYERPAT": "RGGB", "YBAYROFF": 1}, 100, "GBRG"),
    ({"BAYERPAT": "RGGB", "ROWORDER": "BOTTOM-UP"}, 100, "GBRG"),
    ({"BAYERPAT": "RGGB", "ROWORDER": "BOTTOM-UP"}, 101, "RGGB"),
    ({"BAYERPAT": "RGGB", "ROWORDER": "TOP-DOWN"}, 100, "RGGB"),
    ({"COLORTYP": "BGGR"}, 100, "BGGR"),
])
def test_bayer_pattern_moves_with_offsets_and_row_order(cards, rows, expected):
    h = fits.Header()
    for key, value in cards.items():
        h[key] = value
    assert normalise_header(h, (rows, 120)).bayer_pattern == expected


def test_bayer_extraction_green_and_superpixel():
    raw = np.array([[10, 20, 11, 21],
                    [30, 44, 31, 45],
                    [12, 22, 13, 23]], dtype=np.uint16)  # odd last row is dropped
    green = bayer.extract(raw, "RGGB", "green")
    np.testing.assert_array_equal(green, [[25.0, 26.0]])
    green_gbrg = bayer.extract(raw, "GBRG", "green")
    np.testing.assert_array_equal(green_gbrg, [[27.0, 28.0]])
    superpixel = bayer.extract(raw, "BGGR", "superpixel")
    np.testing.assert_array_equal(superpixel, [[104.0, 108.0]])
    assert green.dtype == np.float32
    with pytest.raises(EngineValueError):
        bayer.extract(raw, "RGBG", "green")
    assert bayer.extracted_section((0, 3, 2, 4), raw.shape) == (0, 1, 1, 2)


# --------------------------------------------------------------------------- frame types


@pytest.mark.parametrize("value, expected", [
    ("Bias Frame", "bias"), ("BIAS", "bias"), ("zero", "bias"), ("Zero", "bias"),
    ("Dark Frame", "dark"), ("DARK", "dark"), ("DARKFLAT", "dark"), ("Flat Dark", "dark"),
    ("Flat Frame", "flat"), ("FLAT", "flat"), ("Flat Field", "flat"), ("SKYFLAT", "flat"),
    ("dome flat", "flat"), ("Light Frame", "light"), ("LIGHT", "light"), ("object", "light"),
    ("OBJECT", "light"), ("science", "light"), ("FOCUS", None), ("Master Dark", None),
])
def test_header_type_spellings(value, expected):
    h = fits.Header()
    h["IMAGETYP"] = value
    assert header_frame_type(h)[0] == expected


def test_obstype_is_read_when_imagetyp_is_absent():
    h = fits.Header()
    h["OBSTYPE"] = "ZERO"
    assert header_frame_type(h)[:2] == ("bias", "OBSTYPE")


@pytest.mark.parametrize("name, expected", [
    ("flat-expos23s-Neg5-Vis.00000000", "flat"), ("biases-Neg5-Vis.00000000.BIAS", "bias"),
    ("darks-expos1-Neg5-Vis.00000000.DARK", "dark"), ("M42_Light_001", "light"),
    ("skyflat_V_003", "flat"), ("dark_flat_001", "dark"), ("WASP-12_0001", None),
    ("flatiron_0001", None),
])
def test_name_types(name, expected):
    assert name_frame_type(name) == expected


@pytest.mark.parametrize("name, seconds", [
    ("darks-expos1-Neg5-Vis.00000000.DARK", 1.0), ("darks-expos10s-Neg5-Vis.00000000.DARK", 10.0),
    ("2024-01-01_LIGHT_60.00s_0001", 60.0), ("img_exp10ms", 0.01), ("biases-Neg5-Vis.0000", None),
])
def test_name_exposure_times(name, seconds):
    assert name_exptime(name) == seconds


def test_flat_labelled_light_trusts_the_file_name_when_the_level_agrees_and_says_so():
    h = fits.Header()
    h["IMAGETYP"] = "Light Frame"
    kind = classify_frame(h, "/data/flat-expos23s-Neg5-Vis.00000000.FIT", exptime=23.0,
                          level=lambda: 0.30)
    assert kind.frame_type == "flat"
    assert "file name" in kind.evidence and "level 30%" in kind.evidence
    assert any("Light Frame" in n for n in kind.notes)
    # The same name on a sky-limited light (a flat-fielded light named '..._FLAT') stays light.
    kind = classify_frame(h, "/data/M51_0001_FLAT.fits", exptime=60.0, level=lambda: 0.02)
    assert kind.frame_type == "light" and any("kept as light" in n for n in kind.notes)


@pytest.mark.parametrize("header_type, path, exptime, expected", [
    ("Light Frame", "/n/WASP-12_zero_point_0001.fits", 60.0, "light"),   # 'zero' in a light's name
    ("Light Frame", "/data/Dark Shark Nebula/LDN1235_0001.fits", 120.0, "light"),
    ("LIGHT", "/data/DarkShark/LDN1235_0001.fits", 120.0, "light"),  # not a whole word
    ("Light Frame", "/n/zero_0001.fits", 0.0, "bias"),                  # the exposure agrees
    ("object", "/n/skyflat_0001.fits", 5.0, "light"),                   # IRAF's object is specific
])
def test_names_do_not_outrank_a_header_light(header_type, path, exptime, expected):
    h = fits.Header()
    h["IMAGETYP"] = header_type
    kind = classify_frame(h, path, exptime=exptime, level=lambda: 0.03)
    assert kind.frame_type == expected, kind


@pytest.mark.parametrize("keyword, value, expected", [
    ("OBSTYPE", "EXPOSE", "light"), ("OBSTYPE", "STANDARD", "light"), ("OBSTYPE", "BIAS", "bias"),
    ("OBSTYPE", "DARK", "dark"), ("OBSTYPE", "SKYFLAT", "flat"), ("OBSTYPE", "LAMPFLAT", "flat"),
    ("OBSTYPE", "DOMEFLAT", "flat"), ("OBSTYPE", "GUIDE", None), ("OBSTYPE", "EXPERIMENTAL", None),
    ("OBSTYPE", "ARC", None), ("IMAGETYP", "comp", None), ("IMAGETYP", "Flat Dark", "dark"),
    ("IMAGETYP", "Tricolor Image", "light"), ("IMAGETYP", "DARKFLAT", "dark"),
])
def test_observatory_and_program_vocabularies(keyword, value, expected):
    h = fits.Header()
    h[keyword] = value
    kind = classify_frame(h, "/n/flat_dark_bias/a.fits", exptime=10.0)
    assert kind.frame_type == expected, kind


def test_site_rule_gives_a_program_word_its_type():
    h = fits.Header()
    h["OBSTYPE"] = "GUIDE"
    kind = classify_frame(h, "/n/a.fits", exptime=10.0, rules=(("guide", "light"),))
    assert kind.frame_type == "light" and "site rule" in kind.evidence


def test_header_calibration_type_beats_the_name_and_exposure_disagreement_is_noted():
    h = fits.Header()
    h["IMAGETYP"] = "Dark Frame"
    kind = classify_frame(h, "/data/flat_darks-expos1.fits", exptime=60.0)
    assert kind.frame_type == "dark"
    assert any("1 s" in n and "60 s" in n for n in kind.notes)


def test_folder_name_and_fallbacks():
    h = fits.Header()
    assert classify_frame(h, "/night/FLAT/img_0001.fits", exptime=3.0).frame_type == "flat"
    assert classify_frame(h, "/night/img_0001.fits", exptime=0.0).frame_type == "bias"
    kind = classify_frame(h, "/night/img_0001.fits", exptime=3.0, level=lambda: 0.45)
    assert kind.frame_type == "flat" and "level" in kind.evidence
    kind = classify_frame(h, "/night/img_0001.fits", exptime=3.0, level=lambda: 0.02)
    assert kind.frame_type == "light"


def test_level_is_read_only_when_needed():
    h = fits.Header()
    h["IMAGETYP"] = "Light Frame"

    def level():
        raise AssertionError("the level must not be read when the header decides")

    assert classify_frame(h, "/n/a.fits", exptime=3.0, level=level).frame_type == "light"


def test_override_wins_and_unknown_type_stays_unknown():
    h = fits.Header()
    h["IMAGETYP"] = "FOCUS"
    assert classify_frame(h, "/n/a.fits", exptime=3.0).frame_type is None
    kind = classify_frame(h, "/n/a.fits", exptime=3.0, override=("light", "/n/*"))
    assert kind.frame_type == "light" and kind.evidence == "override (/n/*)"


def test_names_never_type_a_frame_whose_keyword_names_another_kind():
    h = fits.Header()
    h["IMAGETYP"] = "FOCUS"
    kind = classify_frame(h, "/n/flats/flat_0001.fits", exptime=3.0, level=lambda: 0.5)
    assert kind.frame_type is None and "FOCUS" in kind.evidence
    assert [n for n in kind.notes if "is not a frame type" in n] == [
        "IMAGETYP = 'FOCUS' is not a frame type; the file name says flat",
        "IMAGETYP = 'FOCUS' is not a frame type; the folder name says flat"]


def test_a_file_name_agreeing_with_a_header_light_ends_the_search():
    # The folder says flat and the level would back it, but the file name already agrees.
    h = fits.Header()
    h["IMAGETYP"] = "LIGHT"
    kind = classify_frame(h, "/n/flats/M42_Light_0001.fits", exptime=3.0, level=lambda: 0.5)
    assert kind == FrameType("light", "IMAGETYP = 'LIGHT'", ())


# --------------------------------------------------------------------------- configuration


def test_config_validation_and_matching():
    site = Site("Sutherland", longitude_deg=20.81, latitude_deg=-32.38, height_m=1798,
                clock_offset_s=0.5, match=("SAAO 1.0m", "*/saao/*"))
    config = IngestConfig(sites=(site,), frame_types=(("*/twilight/*", "flat"),))
    assert config.site_for("/x/saao/a.fits", {}) is site
    assert config.site_for("/x/a.fits", {"TELESCOP": " saao 1.0M "}) is site
    assert config.site_for("/x/a.fits", {"TELESCOP": "other"}) is None
    slashed = Site("lapalma", match=("0.2-m f/5 Newtonian",))
    assert slashed.matches("/raw/a.fits", {"TELESCOP": "0.2-m f/5 Newtonian"})
    assert Site("negev").matches("/raw/a.fits", {"OBSERVAT": "NEGEV"})
    assert config.frame_type_override("/d/twilight/a.fits") == ("flat", "*/twilight/*")
    assert config.fingerprint() == IngestConfig(sites=(site,),
                                          frame_types=(("*/twilight/*", "flat"),)).fingerprint()
    assert config.fingerprint() != IngestConfig().fingerprint()
    for bad in (dict(bayer="blue"), dict(frame_types=(("*", "science"),)),
                dict(target_ra_deg=10.0), dict(sites=(site, site))):
        with pytest.raises(EngineValueError):
            IngestConfig(**bad)
    with pytest.raises(ValueError):
        Site("x", longitude_deg=10.0)
    with pytest.raises(ValueError):
        Site("x", time_reference="middle")
