"""Gain, read noise and saturation, with their sources, for every file of three real sets.

- ast443_stl1001e (SBIG STL-1001E CCD, EGAIN = 2.06, no RDNOISE, no SATURATE; 8 biases, 8
  flats): the gain is the header's; photon transfer on the flats and biases must land near it;
  the read noise is measured on the bias pairs; the saturation level is the 16-bit ADC's top.
- sara_raw_calibration (no GAIN, no RDNOISE; one bias, one flat, one dark, ten lights):
  photon transfer needs pairs, so the gain is estimated from the lights' sky above the one
  bias's level, the read noise from that bias's row-to-row differences, and both say so.
- saao_microlensing_bulge (GAIN 1.9, RDNOISE 5.0): the header's values; the frames' saturated
  stars pile up near 65300 ADU (the observatory's pipeline clipped them), which is measured.
"""

from pathlib import Path

import numpy as np
import pytest

from engine.calibration import calibrate
from engine.calibration.camera import measure_noise, photon_transfer
from engine.ingest import ingest
from engine.io.cube import open_cube

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
AST443 = DATA / "ast443_stl1001e"
SARA = DATA / "sara_raw_calibration"
BULGE = DATA / "saao_microlensing_bulge"

needs_data = pytest.mark.skipif(not AST443.is_dir(), reason="../shared/data is not present")


def _frames(result, frame_type):
    rows = [r for r in result.frames.to_pylist() if r["frame_type"] == frame_type]
    cube = open_cube(result.cubes[rows[0]["run_id"]])
    return rows, [np.asarray(cube[r["cube_index"]]) for r in rows]


@pytest.fixture(scope="module")
def ast443(tmp_path_factory):
    return ingest([AST443], tmp_path_factory.mktemp("ast443"), workers=2)


@needs_data
def test_ast443_every_file(ast443):
    rows = ast443.frames.to_pylist()
    assert len(rows) == 28
    for row in rows:
        assert row["gain"] == pytest.approx(2.06) and row["gain_source"] == "header EGAIN"
        assert row["read_noise"] is None and row["read_noise_source"] is None
        assert row["saturation"] == 65535, row["path"]
        assert row["saturation_source"].startswith("measured") and "16-bit" in \
            row["saturation_source"]


@needs_data
def test_ast443_photon_transfer_lands_near_egain(ast443):
    _, flats = _frames(ast443, "flat")
    _, biases = _frames(ast443, "bias")
    result = photon_transfer(flats, biases)
    assert result.flat_pairs == 4 and result.bias_pairs == 4
    assert result.gain == pytest.approx(2.06, rel=0.10)  # 1.95 measured
    assert np.std(result.gains) < 0.01 * result.gain  # the four pairs agree
    noise = measure_noise(flats[:2], biases, gain=2.06, gain_source="header EGAIN")
    assert noise.gain_source == "header EGAIN"
    assert 10.0 < noise.read_noise < 18.0 and "4 bias pair(s)" in noise.read_noise_source


@pytest.fixture(scope="module")
def sara(tmp_path_factory):
    out = tmp_path_factory.mktemp("sara")
    ingested = ingest([SARA], out, workers=2)
    return ingested, calibrate(ingested, out)


@needs_data
def test_sara_every_file_has_no_gain_and_a_measured_saturation(sara):
    ingested, _ = sara
    rows = ingested.frames.to_pylist()
    assert len(rows) == 13 and all(r["status"] == "ok" for r in rows)
    for row in rows:
        assert row["gain"] is None and row["gain_source"] is None
        assert row["read_noise"] is None
        # Saturated pixels sit at 65535 in every frame, the bias included.
        assert row["saturation"] == 65535 and "16-bit" in row["saturation_source"]


@needs_data
def test_sara_gain_from_the_lights_sky_with_one_bias_and_one_flat(sara):
    _, calibrated = sara
    (run_id,) = calibrated.camera
    camera = calibrated.camera[run_id]
    assert "lights' sky" in camera["gain_source"]
    assert 1.2 < camera["gain"] < 2.5  # 1.69 e-/ADU measured
    assert camera["read_noise_source"] == "measured: one bias frame's row differences"
    assert 2.0 < camera["read_noise"] < 8.0
    assert any("1 flat(s) and 1 bias frame(s)" in n for n in calibrated.notes[run_id])


@needs_data
def test_saao_bulge_header_gain_and_measured_pile_up(tmp_path):
    result = ingest([BULGE], tmp_path, workers=2)
    rows = result.frames.to_pylist()
    assert len(rows) == 57
    piled = 0
    for row in rows:
        assert row["gain"] == pytest.approx(1.9) and row["gain_source"].startswith("header GAIN")
        assert row["read_noise"] == pytest.approx(5.0) and row["read_noise_source"] == \
            "header RDNOISE"
        assert 64000 < row["saturation"] <= 65535 and "pile-up" in row["saturation_source"]
        piled += row["saturation_source"].startswith("measured: pile-up")
    assert piled > 10  # most frames show their own clip
