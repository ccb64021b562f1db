"""One writer per output folder: an exclusive lock held while a run writes there.

The lock is `fcntl.flock` on OUT/.engine.lock, so the kernel releases it when the holder exits
in any way (killed included): a stale lock file never blocks anyone. The file says who holds it
(pid, host, start time) so that a refused run can name the holder. Once the lock is held, what
dead runs left behind (temporaries of engine.io.atomic and of the cube writers, named
`.NAME.tmp-*` and `.NAME.old-*`) is removed: no other writer can own them.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import socket
import threading
import time
from pathlib import Path

from engine.errors import OutputLockedError, file_error

__all__ = ["LOCK_FILE", "output_lock", "remove_dead_temporaries"]

log = logging.getLogger("engine.io.lock")

LOCK_FILE = ".engine.lock"
#: Name parts of the temporaries that writers leave only when they are killed.
_TEMPORARY_MARKS = (".tmp-", ".old-")
#: Folders this process holds, with the holding thread and depth: the command line locks the
#: folder and then calls reduce, which locks it again; flock on a second file handle would
#: refuse the process its own lock.
_held: dict[Path, list] = {}
_held_guard = threading.Lock()


@contextlib.contextmanager
def output_lock(out_dir):
    """Creates `out_dir` if needed and holds its lock while the block runs. Raises
    OutputLockedError naming the holder when another process holds it, and an EngineFileError
    naming the path when the folder cannot be created or written."""
    out = Path(out_dir)
    key = out.resolve()
    with _held_guard:
        holder = _held.get(key)
        if holder is not None and holder[0] != threading.get_ident():
            raise OutputLockedError(f"output folder {str(out)!r} is in use by another thread of "
                                    f"this process; wait for it or choose another output folder")
        if holder is not None:
            holder[1] += 1
    if holder is not None:
        try:
            yield out
        finally:
            with _held_guard:
                holder[1] -= 1
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
        # Open for the whole block: closing the file is what releases the lock.
        handle = open(out / LOCK_FILE, "a+", encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        raise file_error(exc, out, "write into the output folder") from exc
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "a process that has not yet written its name"
            raise OutputLockedError(f"output folder {str(out)!r} is in use by another run "
                                    f"({holder}); wait for it or choose another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                     f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
        handle.flush()
        with _held_guard:
            _held[key] = [threading.get_ident(), 1]
        for path in remove_dead_temporaries(out):
            log.info("removed %s, left by a run that was stopped", path)
        yield out
    finally:
        with _held_guard:
            _held.pop(key, None)
        handle.close()  # releases the lock


def remove_dead_temporaries(out_dir) -> list[Path]:
    """Remove the temporaries (files and Zarr folders) that killed writers left anywhere under
    `out_dir`; returns them. Call it only while holding the folder's lock."""
    removed = []
    for root, dirs, files in os.walk(out_dir):
        for name in [*dirs, *files]:
            if name.startswith(".") and any(mark in name for mark in _TEMPORARY_MARKS):
                path = Path(root) / name
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                removed.append(path)
        dirs[:] = [d for d in dirs if not (Path(root) / d) in removed]
    return removed
