"""The one home of argument and setting checks, and settings refused where they are read."""

import math

import numpy as np
import pytest

from engine.checks import (integer, non_negative, non_negative_array, number, one_of, positive,
                           positive_array)
from engine.errors import EngineValueError
from engine.settings import PhotometryConfig, SkyConfig
from engine.settings.file import parse_config


@pytest.mark.parametrize("check, value", [
    (positive, 0.0), (positive, -1.0), (positive, math.nan), (positive, math.inf),
    (positive, "2"), (positive, True), (positive, None), (non_negative, -1e-9),
    (integer, 2.5), (integer, True), (integer, "3"), (integer, None),
])
def test_bad_values_are_refused_by_name(check, value):
    with pytest.raises(EngineValueError, match="the_setting"):
        check("the_setting", value)


def test_good_values_come_back_typed():
    assert positive("x", 3) == 3.0 and isinstance(positive("x", 3), float)
    assert non_negative("x", 0) == 0.0
    assert integer("x", 4.0) == 4 and isinstance(integer("x", np.int64(4)), int)
    assert positive("x", None, allow_none=True) is None
    assert number("x", 0.5, above=0.0, high=0.9) == 0.5
    with pytest.raises(EngineValueError, match=r"<= 0.9"):
        number("x", 0.95, high=0.9)
    with pytest.raises(EngineValueError, match=r">= 2"):
        integer("x", 1, least=2)
    assert one_of("x", "a", ("a", "b")) == "a"
    with pytest.raises(EngineValueError, match="one of"):
        one_of("x", "c", ("a", "b"))


def test_arrays_are_checked_element_by_element():
    assert positive_array("x", [1.0, 2.0]).dtype == np.float64
    assert non_negative_array("x", [0.0, 2.0]).tolist() == [0.0, 2.0]
    for bad in ([1.0, 0.0], [1.0, math.nan], ["a"]):
        with pytest.raises(EngineValueError, match="x"):
            positive_array("x", bad)


@pytest.mark.parametrize("settings", [
    dict(block_frames=0), dict(max_stars=2), dict(aperture_fwhm=()),
    dict(aperture_fwhm=(1.0, -2.0)), dict(annulus_fwhm=(7.0, 4.0)), dict(annulus_fwhm=(4.0,)),
    dict(psf_model="airy"), dict(detection_threshold=math.nan), dict(tracking_min_stars=1.5),
    dict(psf_photometry="yes"), dict(aperture_diameter_m=0.0),
])
def test_photometry_settings_are_refused_where_they_are_read(settings):
    name = next(iter(settings))
    with pytest.raises(EngineValueError, match=name):
        PhotometryConfig(**settings)


def test_the_configuration_file_names_the_bad_setting():
    with pytest.raises(EngineValueError, match="block_frames"):
        parse_config("[photometry]\nblock_frames = 0\n")
    with pytest.raises(EngineValueError, match="temperature_tolerance"):
        parse_config("[calibration]\ntemperature_tolerance = 0\n")
    with pytest.raises(EngineValueError, match="chunk_bytes"):
        parse_config("[calibration]\nchunk_bytes = 0.5\n")
    assert parse_config("[calibration]\nuncertainty = true\n").calibration.uncertainty is True
    with pytest.raises(EngineValueError, match="scale_tolerance"):
        parse_config("[sky]\nscale_tolerance = 1.5\n")
    with pytest.raises(EngineValueError, match="target_xy"):
        parse_config('[sky.target_xy]\nflorida = ["a", 2]\n')
    config = parse_config('[sky]\ncatalogue = "gaia.csv"\n[sky.target_xy]\nflorida = [10.5, 3]\n')
    assert config.sky == SkyConfig(catalogue="gaia.csv", target_xy=(("florida", (10.5, 3.0)),))


def test_a_table_argument_names_what_it_lacks():
    import pyarrow as pa

    from engine.checks import table_columns

    table = pa.table({"frame": [1, 2], "flux": [3.0, 4.0]})
    table_columns("measure", table, ("frame", "flux"))  # holds them: nothing raised
    with pytest.raises(EngineValueError, match=r"measure: the table lacks column\(s\) \['star'\]"):
        table_columns("measure", table, ("frame", "star"))
    with pytest.raises(EngineValueError, match="expected a pyarrow.Table, got dict"):
        table_columns("measure", {"frame": [1]}, ("frame",))
    table_columns("measure", table.slice(0, 0), ("frame",))
    with pytest.raises(EngineValueError, match="the table is empty"):
        table_columns("measure", table.slice(0, 0), ("frame",), non_empty=True)
