"""Writing a test's frames into a real Zarr cube through the engine's own writer."""

from engine.io.cube import CubeWriter, open_cube


def write_cube(path, frames):
    """`frames` (n, y, x) written to a cube at `path`; returns the opened cube."""
    with CubeWriter(path, frames.shape[1:], frames.dtype, len(frames)) as writer:
        for frame in frames:
            writer.append(frame)
        writer.commit()
    return open_cube(path)
