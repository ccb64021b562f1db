"""The output folder's manifest (engine.io.manifest) and what reading a damaged cube says."""

import hashlib
import json
import logging
import shutil

import numpy as np
import pytest

from engine.errors import EngineFileError
from engine.io.cube import CubeWriter, open_cube
from engine.io.layout import MANIFEST
from engine.io.manifest import Manifest, content_hash, fingerprint


def write_cube(path, frames=3, shape=(20, 30)):
    rng = np.random.default_rng(len(str(path)))
    with CubeWriter(path, shape, np.uint16, frames) as writer:
        for _ in range(frames):
            writer.append(rng.integers(0, 4000, shape).astype(np.uint16))
        writer.commit({"run_id": "r"})
    return path


def chunk(cube, frame):
    return cube / "c" / str(frame) / "0" / "0"


@pytest.fixture
def products(tmp_path):
    out = tmp_path / "out"
    cube = write_cube(out / "cubes" / "run.zarr")
    table = out / "photometry" / "run.parquet"
    table.parent.mkdir(parents=True)
    table.write_bytes(b"PAR1" + bytes(range(256)) * 40 + b"PAR1")
    return out, cube, table


def test_content_hash_is_blake2b_of_the_bytes_and_sees_every_chunk(products):
    _, cube, table = products
    assert content_hash(table) == hashlib.blake2b(table.read_bytes(), digest_size=16).hexdigest()
    before = content_hash(cube)
    copy = shutil.copytree(cube, cube.with_name("copy.zarr"))
    assert content_hash(copy) == before  # names inside the cube, not where it lies
    data = bytearray(chunk(copy, 1).read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, same size, same name
    chunk(copy, 1).write_bytes(bytes(data))
    assert content_hash(copy) != before
    chunk(copy, 2).unlink()
    assert content_hash(copy) not in (before, None)
    assert content_hash(cube.with_name("absent.zarr")) is None


def test_a_recorded_product_is_current_until_its_inputs_or_bytes_change(products, caplog):
    out, cube, table = products
    inputs = fingerprint("settings", 1)
    manifest = Manifest(out)
    assert not manifest.is_current([cube, table], inputs)  # never recorded
    manifest.record([cube, table], inputs)
    again = Manifest(out)  # read back from disk
    assert again.is_current([cube, table], inputs)
    assert not again.is_current([cube, table], fingerprint("settings", 2))
    assert again.rebuilt == []  # other inputs are no damage
    assert again.hash_of(cube) == content_hash(cube)

    table.write_bytes(table.read_bytes()[:100])  # truncated
    with caplog.at_level(logging.WARNING, logger="engine.io.manifest"):
        assert not again.is_current([cube, table], inputs)
    assert again.rebuilt == ["photometry/run.parquet"]
    assert "photometry/run.parquet is changed since it was written: rebuilt" in caplog.text
    # Forgotten on disk too: the next reader does not trust it either, and says nothing more.
    assert not Manifest(out).lists(table) and Manifest(out).lists(cube)


def test_a_deleted_product_is_missing(products, caplog):
    out, cube, _ = products
    Manifest(out).record([cube], "x")
    shutil.rmtree(cube)
    manifest = Manifest(out)
    with caplog.at_level(logging.WARNING, logger="engine.io.manifest"):
        assert not manifest.is_current([cube], "x")
    assert "cubes/run.zarr is missing since it was written" in caplog.text


@pytest.mark.parametrize("text", ["", "{", "[1, 2]", '{"format": 1}',
                                  '{"format": 99, "products": {}}', "\x00\xff garbage"])
def test_a_damaged_manifest_trusts_nothing(products, text, caplog):
    out, cube, table = products
    Manifest(out).record([cube, table], "x")
    (out / MANIFEST).write_text(text, encoding="utf-8", errors="surrogateescape")
    manifest = Manifest(out)
    assert not manifest.is_current([cube], "x")
    manifest.record([cube], "x")  # and it is replaced whole
    assert json.loads((out / MANIFEST).read_text())["products"]["cubes/run.zarr"]["inputs"] == "x"
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # atomic


def test_fingerprint_depends_on_every_part():
    assert fingerprint("a", {"b": 1}) == fingerprint("a", {"b": 1})
    variants = {fingerprint("a", 1), fingerprint("a", 2), fingerprint("b", 1), fingerprint("a")}
    assert len(variants) == 4


def test_a_truncated_chunk_raises_an_engine_error_naming_the_chunk(tmp_path):
    """Checked against the Blosc header's length before decompressing: Blosc itself trusts the
    header and may return garbage from a truncated chunk without an error."""
    cube = write_cube(tmp_path / "run.zarr")
    good = open_cube(cube)[0]
    data = chunk(cube, 1).read_bytes()
    chunk(cube, 1).write_bytes(data[: len(data) // 2])
    opened = open_cube(cube)
    np.testing.assert_array_equal(opened[0], good)  # the intact frames still read
    for key in (1, slice(None), [0, 1], (1, slice(0, 5))):
        with pytest.raises(EngineFileError, match=f"{chunk(cube, 1)}: frame 1 of the cube {cube} "
                                                  "is damaged .the chunk holds"):
            opened[key]


def test_a_deleted_chunk_raises_instead_of_reading_zeros(tmp_path):
    cube = write_cube(tmp_path / "run.zarr")
    chunk(cube, 2).unlink()
    opened = open_cube(cube)
    assert opened[:2].shape == (2, 20, 30) and opened.shape == (3, 20, 30)
    for key in (2, -1, slice(1, None), np.array([True, False, True]), ...):
        with pytest.raises(EngineFileError, match=f"{chunk(cube, 2)}: frame 2 of the cube "
                                                  f"{cube} is missing"):
            opened[key]
    with pytest.raises(IndexError):  # a wrong index is the caller's, not the file's
        opened[5]
