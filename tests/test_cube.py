"""Frame cubes: the writer's chunk files are the bytes Zarr writes, the direct reader returns what
Zarr reads (for every key it takes), cubes Zarr wrote read back, other layouts fall back to Zarr,
and a damaged chunk is named."""

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec

from engine.errors import EngineFileError
from engine.io.cube import CubeWriter, open_cube
from tests.cubes import write_cube

KEYS = [slice(None), 2, -1, np.int64(3), slice(1, 4), slice(None, None, 2), slice(3, 3),
        [0, 4, 2], [-1, 0], Ellipsis, (), (1, slice(3, 9), 4), (slice(1, 4), 5),
        (slice(None), slice(None), -3), (np.array([1, 3]), slice(2, 5)), (Ellipsis, 3)]
FRAME_MASK = np.array([True, False, True, False, True])  # Zarr refuses it; the direct path reads it


def frames_of(dtype, n=5, shape=(40, 36), seed=0):
    values = np.random.default_rng(seed).normal(1000.0, 30.0, (n,) + shape)
    return values.astype(dtype)


def chunk(cube, frame):
    return cube / "c" / str(frame) / "0" / "0"


def zarr_written(path, frames, compressor):
    """`frames` written frame by frame through Zarr itself, as cubes were before the engine
    wrote its chunk files directly."""
    array = zarr.create_array(store=str(path), shape=frames.shape,
                              chunks=(1,) + frames.shape[1:], dtype=frames.dtype,
                              compressors=[compressor] if compressor else None, fill_value=0,
                              zarr_format=3)
    for k, frame in enumerate(frames):
        array[k] = frame
    return path


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.float32, np.uint8])
@pytest.mark.parametrize("threads", [1, 2])
def test_every_key_reads_what_numpy_and_zarr_read(tmp_path, dtype, threads):
    frames = frames_of(dtype)
    write_cube(tmp_path / "run.zarr", frames)
    cube = open_cube(tmp_path / "run.zarr", threads=threads)
    plain = zarr.open_array(str(tmp_path / "run.zarr"), mode="r")
    for key in KEYS:
        expected = frames[np.array(key)] if isinstance(key, list) else frames[key]
        got = cube[key]
        assert got.dtype == frames.dtype and got.shape == expected.shape, key
        np.testing.assert_array_equal(got, expected, err_msg=repr(key))
        np.testing.assert_array_equal(plain[key], expected)
    np.testing.assert_array_equal(cube[FRAME_MASK], frames[FRAME_MASK])
    np.testing.assert_array_equal(np.asarray(cube), frames)
    with pytest.raises(IndexError):
        cube[5]
    with pytest.raises(IndexError):
        cube[[0, -6]]


@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.uint8])
def test_chunk_files_are_the_bytes_zarr_writes(tmp_path, dtype):
    """So Zarr (and anything else that reads Zarr v3) reads the engine's cubes, cubes written
    before are the same files, and their content hashes in the manifest do not change."""
    frames = frames_of(dtype)
    write_cube(tmp_path / "engine.zarr", frames)
    codec = zarr.open_array(str(tmp_path / "engine.zarr"), mode="r").metadata.codecs[-1]
    zarr_written(tmp_path / "zarr.zarr", frames, codec)
    for k in range(len(frames)):
        assert chunk(tmp_path / "engine.zarr", k).read_bytes() == \
            chunk(tmp_path / "zarr.zarr", k).read_bytes()


@pytest.mark.parametrize("compressor", [
    BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle"),  # as cubes were written before
    BloscCodec(cname="zstd", clevel=1, shuffle="shuffle"),
    "zarr default (zstd, no Blosc)",
    None,  # uncompressed
])
def test_cubes_zarr_wrote_read_back(tmp_path, compressor):
    frames = frames_of(np.uint16)
    chosen = None if isinstance(compressor, str) else compressor
    if isinstance(compressor, str):
        path = tmp_path / "run.zarr"
        zarr.create_array(store=str(path), shape=frames.shape, chunks=(1, 40, 36),
                          dtype=frames.dtype, zarr_format=3)[:] = frames
    else:
        path = zarr_written(tmp_path / "run.zarr", frames, chosen)
    cube = open_cube(path, threads=2)
    for key in KEYS:
        expected = frames[np.array(key)] if isinstance(key, list) else frames[key]
        np.testing.assert_array_equal(cube[key], expected, err_msg=repr(key))


def test_a_cube_of_several_frames_per_chunk_reads_through_zarr(tmp_path):
    frames = frames_of(np.float32, n=6)
    path = tmp_path / "blocks.zarr"
    zarr.create_array(store=str(path), shape=frames.shape, chunks=(2, 20, 36),
                      dtype=frames.dtype, zarr_format=3,
                      compressors=[BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")]
                      )[:] = frames
    np.testing.assert_array_equal(open_cube(path)[1:5], frames[1:5])


@pytest.fixture
def committed(tmp_path):
    frames = frames_of(np.uint16)
    write_cube(tmp_path / "run.zarr", frames)
    return tmp_path / "run.zarr", frames


def test_a_truncated_chunk_is_named_not_decoded(committed):
    path, _ = committed
    data = chunk(path, 2).read_bytes()
    chunk(path, 2).write_bytes(data[:-100])
    cube = open_cube(path, threads=2)
    np.testing.assert_array_equal(cube[1], committed[1][1])  # the others still read
    for key in (2, slice(None), [3, 2]):
        with pytest.raises(EngineFileError, match=r"c/2/0/0: frame 2 .* is damaged"):
            cube[key]


def test_a_chunk_whose_header_lies_about_its_frame_is_named(committed):
    path, _ = committed
    data = bytearray(chunk(path, 1).read_bytes())
    data[4:8] = (int.from_bytes(data[4:8], "little") // 2).to_bytes(4, "little")
    chunk(path, 1).write_bytes(bytes(data))
    with pytest.raises(EngineFileError, match="decodes to .* bytes"):
        open_cube(path)[1]


def test_a_chunk_that_is_not_blosc_is_named(committed):
    path, _ = committed
    chunk(path, 0).write_bytes(b"\0" * 4000)
    with pytest.raises(EngineFileError, match=r"c/0/0/0: frame 0 .* damaged"):
        open_cube(path)[0]


def test_a_deleted_chunk_is_named_not_read_as_zeros(committed):
    path, _ = committed
    chunk(path, 4).unlink()
    with pytest.raises(EngineFileError, match="frame 4 .* missing"):
        open_cube(path)[:]


def test_a_writer_refuses_values_its_dtype_cannot_hold_and_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="do not fit"):
        with CubeWriter(tmp_path / "run.zarr", (4, 4), np.uint16, 2) as writer:
            writer.append(np.full((4, 4), 7.0))
            writer.append(np.full((4, 4), -1.0))
    assert list(tmp_path.iterdir()) == []
