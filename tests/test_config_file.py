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

[extraction]
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
    assert config.extraction.aperture_fwhm == (1.0, 2.0) and config.extraction.psf_photometry
    assert config.extraction.aperture_diameter_m == 0.28
    assert config.ensemble.event_windows == ((2460659.55, 2460659.67),)
    assert config.ensemble.comparisons == (3, 4, 5)


@pytest.mark.parametrize("text, message", [
    ("[extraction]\naperture_fwhm_typo = [1.0]\n", "aperture_fwhm_typo"),
    ("[reduction]\n", "reduction"),
    ("[ingest]\nbayer = \"rainbow\"\n", "bayer"),
    ("[[ingest.sites]]\nname = \"x\"\nlatitude_deg = 95.0\nlongitude_deg = 0.0\n", "latitude"),
    ("[extraction\n", "TOML"),
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
