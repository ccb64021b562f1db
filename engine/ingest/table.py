"""Rows of the frames table (engine.io.schemas.FRAMES_SCHEMA): one per input file, with its
status, the reason it was skipped and the notes a user should read; and the previous ingest's
rows, which a rerun reuses for the runs whose cubes are still current."""

from __future__ import annotations

import collections
import logging
import re
from pathlib import Path

import pyarrow as pa

from engine.errors import EngineFileError
from engine.io.schemas import FRAMES_SCHEMA
from engine.io.tables import read_parquet

log = logging.getLogger(__name__)

#: Skip reasons found once a frame is in a run (its pixels read): the row keeps its run id.
LATER_CODES = {"all_nan", "shape_mismatch", "duplicate"}
_NOTE_SEPARATOR = " | "


def new_row(path: Path) -> dict:
    row = {name: None for name in FRAMES_SCHEMA.names}
    row["path"] = str(path)
    row["status"] = "ok"
    return row


def skip(row: dict, code: str, reason: str) -> dict:
    row["status"], row["reason_code"], row["reason"] = "skipped", code, reason
    row["cube_index"] = None
    return row


def note(row: dict, text: str) -> None:
    row["notes"] = text if not row["notes"] else f"{row['notes']}{_NOTE_SEPARATOR}{text}"


def log_notes(rows: list[dict], per_file_limit: int = 10) -> None:
    """Each note once per file; a note that more than `per_file_limit` files share (numbers
    aside) is logged once with their count: a 1,000-frame night must not bury the log."""
    by_kind: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
    numbers = re.compile(r"\d+(?:\.\d*)?(?:e[-+]?\d+)?")
    for row in rows:
        for text in (row["notes"] or "").split(_NOTE_SEPARATOR):
            if text:
                by_kind[numbers.sub("#", text)].append((row["path"], text))
    for items in by_kind.values():
        if len(items) <= per_file_limit:
            for path, text in items:
                log.warning("%s: %s", path, text)
        else:
            varies = " (numbers vary)" if len({text for _, text in items}) > 1 else ""
            log.warning("%d files (%s ... %s): %s%s", len(items), items[0][0], items[-1][0],
                        items[0][1], varies)


def previous_rows(frames_path: Path, settings: str) -> dict[str, dict]:
    """The rows of the frames table a previous ingest with the same settings wrote, by path."""
    if not frames_path.is_file():
        return {}
    try:
        table = read_parquet(frames_path)
    except EngineFileError as exc:
        log.warning("ignoring the previous frames table: %s", exc)
        return {}
    metadata = table.schema.metadata or {}
    if metadata.get(b"engine_ingest_settings", b"").decode() != settings:
        return {}
    if table.schema.names != FRAMES_SCHEMA.names:
        return {}
    return {row["path"]: row for row in table.to_pylist()}


def to_table(rows: list[dict]) -> pa.Table:
    rows = sorted(rows, key=lambda r: r["path"])
    return pa.Table.from_pylist(rows, schema=FRAMES_SCHEMA)
