"""Atomic file writes: a product is either absent, the old version, or complete.

Every writer of a product writes a temporary file beside it and renames it into place once it is
whole and on disk, so a killed run never leaves a half-written file that a rerun would trust.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

__all__ = ["atomic_path", "write_text"]


@contextlib.contextmanager
def atomic_path(path, suffix: str = ""):
    """Yields a temporary path beside `path` (ending in `suffix`, for writers that choose the
    format by extension) for the caller to write the whole file to. When the block ends without
    an error the file is flushed to disk and renamed to `path`; the temporary never outlives
    the block."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")
    try:
        yield temporary
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text(path, text: str, encoding: str = "utf-8", errors: str = "strict") -> Path:
    """Write `text` to `path` atomically; returns the path."""
    with atomic_path(path) as temporary:
        with open(temporary, "w", encoding=encoding, errors=errors, newline="\n") as handle:
            handle.write(text)
    return Path(path)
