"""Header strings never become paths unsanitised: hostile TELESCOP / FILTER / OBJECT values."""

import os

import numpy as np
from astropy.io import fits

from engine.ingest import ingest

HOSTILE = {"TELESCOP": "../../../../tmp/evil", "FILTER": "/etc/passwd", "OBJECT": "..",
           "INSTRUME": "a/../../b"}


def _write_light(path, k):
    header = fits.Header()
    header["IMAGETYP"] = "LIGHT"
    header["EXPTIME"] = 10.0
    header["DATE-OBS"] = f"2024-12-15T01:{10 + k:02d}:00.000"
    header["SITELAT"] = 31.0
    header["SITELONG"] = 35.0
    for key, value in HOSTILE.items():
        header[key] = value
    data = np.random.default_rng(k).poisson(1000, (32, 32)).astype(np.uint16)
    fits.PrimaryHDU(data, header).writeto(path)


def test_hostile_header_strings_stay_inside_the_output_folder(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for k in range(3):
        _write_light(raw / f"light_{k}.fits", k)
    out = tmp_path / "out"
    before = set(os.listdir(tmp_path.parent))
    result = ingest([raw], out, target=(94.59, 24.78))
    assert result.n_ok == 3
    for run_id in result.frames.column("run_id").to_pylist():
        assert "/" not in run_id and "\\" not in run_id and not run_id.startswith(".")
    for path in result.cubes.values():
        assert out.resolve() in path.resolve().parents
    written = [p for p in out.rglob("*")]
    assert written and all(out.resolve() in p.resolve().parents for p in written)
    assert set(os.listdir(tmp_path.parent)) == before  # nothing was written beside the test folder
