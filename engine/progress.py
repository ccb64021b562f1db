"""Progress bars for the long stages (tqdm, on stderr).

A bar shows only where a person is watching: stderr is a terminal, the environment does not say
ENGINE_PROGRESS=0, and the code running is not inside `quiet()` (the pipeline's Dask workers
are, so that parallel runs do not draw over each other). ENGINE_PROGRESS=1 forces bars on.
Bars never change what a stage computes; logs still say what happened.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys

from tqdm import tqdm

__all__ = ["progress", "quiet"]

_quiet = contextvars.ContextVar("engine_progress_quiet", default=False)


def _disabled() -> bool | None:
    """tqdm's `disable`: True (off), False (on) or None (on for a terminal only)."""
    if _quiet.get():
        return True
    setting = os.environ.get("ENGINE_PROGRESS", "").strip().lower()
    if setting in ("0", "off", "no", "false"):
        return True
    if setting in ("1", "on", "yes", "true"):
        return False
    return None


def progress(iterable=None, *, total: int | None = None, desc: str = "", unit: str = "frame"):
    """A tqdm bar over `iterable` (or one to `update()` by hand up to `total`); a no-op object
    with the same methods when bars are off. Use it as a context manager when updating by hand."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True,
                file=sys.stderr, disable=_disabled())


@contextlib.contextmanager
def quiet():
    """No bars from code run inside this block (in this thread or task)."""
    token = _quiet.set(True)
    try:
        yield
    finally:
        _quiet.reset(token)
