"""The TOML configuration of `reduce`: defaults round-trip, values arrive typed, mistakes are named."""

import pytest

from engine.errors import EngineFileError, EngineValueError
from engine.settings import PipelineConfig
from engine.settings.file import default_config_toml, load_config, parse_config
from engine.settings.ingest import Site


def test_the_printed_defaults_parse_back_to_the_defaults():
    assert parse_config(default_config_toml()) == PipelineConfig()
    assert parse_config("") == PipelineConfig()


def test_values_reach_each_stage(tmp_path):
    path = tmp_path / "night.toml"
    path.write_text('''
[ingest]
bayer = "superpixel"
[ingest.frame_types]
"*/twilight/*" = "flat"
[[ingest.sites]]
name = "florida"
match = ["*/florida/*"]
longitude_deg = -81.0
latitude_deg = 28.5
clock_offset_s = 2.5

[photometry]
aperture_fwhm = [1.0, 2.0]
psf_photometry = true
aperture_diameter_m = 0.28

[ensemble]
event_windows = [[2460659.55, 2460659.67]]
comparisons = [3, 4, 5]
''')
    config = load_config(path)
    assert config.ingest.bayer == "superpixel"
    assert config.ingest.frame_types == (("*/twilight/*", "flat"),)
    assert config.ingest.sites == (Site("florida", longitude_deg=-81.0, latitude_deg=28.5,
                                        clock_offset_s=2.5, match=("*/florida/*",)),)
    assert config.photometry.aperture_fwhm == (1.0, 2.0) and config.photometry.psf_photometry
    assert config.photometry.aperture_diameter_m == 0.28
    assert config.ensemble.event_windows == ((2460659.55, 2460659.67),)
    assert config.ensemble.comparisons == (3, 4, 5)


@pytest.mark.parametrize("text, message", [
    ("[photometry]\naperture_fwhm_typo = [1.0]\n", "aperture_fwhm_typo"),
    ("[reduction]\n", "reduction"),
    ("[ingest]\nbayer = \"rainbow\"\n", "bayer"),
    ("[[ingest.sites]]\nname = \"x\"\nlatitude_deg = 95.0\nlongitude_deg = 0.0\n", "latitude"),
    ("[photometry\n", "TOML"),
])
def test_mistakes_are_named(text, message):
    with pytest.raises(EngineValueError, match=message):
        parse_config(text)


def test_missing_file_is_a_file_error(tmp_path):
    with pytest.raises(EngineFileError):
        load_config(tmp_path / "absent.toml")


def test_command_line_prints_the_defaults(capsys):
    from engine.cli import main

    assert main(["config"]) == 0
    assert parse_config(capsys.readouterr().out) == PipelineConfig()


def test_old_option_names_are_read_with_a_warning(caplog):
    config = parse_config("[ensemble]\ntelescope_aperture_m = 0.4\nscintillation_c_y = 1.2\n")
    assert config.ensemble.aperture_diameter_m == 0.4
    assert config.ensemble.scintillation_cy == 1.2
    assert "[ensemble] telescope_aperture_m is deprecated: it is now called aperture_diameter_m" \
        in caplog.text
    assert "[ensemble] scintillation_c_y is deprecated: it is now called scintillation_cy" \
        in caplog.text
    with pytest.raises(EngineValueError, match="give scintillation_cy only"):
        parse_config("[ensemble]\nscintillation_cy = 1.0\nscintillation_c_y = 1.2\n")


def test_the_old_extraction_table_is_read_as_photometry_with_a_warning(caplog):
    old = parse_config("[extraction]\nmax_stars = 50\naperture_fwhm = [1.0, 2.5]\n")
    assert old == parse_config("[photometry]\nmax_stars = 50\naperture_fwhm = [1.0, 2.5]\n")
    assert old.photometry.max_stars == 50 and old.photometry.aperture_fwhm == (1.0, 2.5)
    assert "[extraction] is deprecated: it is now called [photometry]" in caplog.text
    # Its options are checked under the new name; both tables at once is a mistake.
    with pytest.raises(EngineValueError, match="photometry block_frames"):
        parse_config("[extraction]\nblock_frames = 0\n")
    with pytest.raises(EngineValueError, match=r"give \[photometry\] only"):
        parse_config("[extraction]\nmax_stars = 50\n[photometry]\nmax_stars = 60\n")


def test_the_old_public_names_still_import_with_a_deprecation_warning():
    import engine

    with pytest.warns(DeprecationWarning, match="engine.PhotometryConfig"):
        assert engine.ExtractionConfig is engine.PhotometryConfig
    with pytest.warns(DeprecationWarning, match="engine.measure_run"):
        assert engine.extract_run is engine.measure_run
    assert "ExtractionConfig" not in engine.__all__ and "extract_run" not in engine.__all__


def test_exclude_flags_by_name_or_bitmask():
    from engine.flags import MeasurementFlag
    from engine.settings.ensemble import DEFAULT_EXCLUDE_FLAGS

    by_name = parse_config('[ensemble]\nexclude_flags = ["SATURATED", "CLOUD"]\n').ensemble
    assert by_name.exclude_flags == MeasurementFlag.SATURATED | MeasurementFlag.CLOUD == 65537
    assert parse_config("[ensemble]\nexclude_flags = 3\n").ensemble.exclude_flags == 3
    assert parse_config("[ensemble]\nexclude_flags = []\n").ensemble.exclude_flags == 0
    # The printed defaults name the flags, and name exactly the default mask.
    line = next(line for line in default_config_toml().splitlines()
                if line.startswith("exclude_flags = "))
    assert '"SATURATED"' in line and "879" not in line
    named = parse_config(f"[ensemble]\n{line}\n").ensemble.exclude_flags
    assert named == DEFAULT_EXCLUDE_FLAGS == 879


@pytest.mark.parametrize("value, message", [
    ('["SATURATE"]', "exclude_flags: unknown flag 'SATURATE'"),
    ('"SATURATED"', "exclude_flags must be an integer"),
    ("-1", "exclude_flags must be an integer >= 0"),
    ("1073741824", "exclude_flags: bits 0x40000000 are no MeasurementFlag"),
    ("1.5", "exclude_flags must be an integer")])
def test_bad_exclude_flags_are_named(value, message):
    with pytest.raises(EngineValueError, match=message):
        parse_config(f"[ensemble]\nexclude_flags = {value}\n")
