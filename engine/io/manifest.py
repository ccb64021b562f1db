"""The output folder's manifest: the one rule that decides whether a product is reused on a rerun.

OUT/manifest.json lists each resumable product (path relative to OUT) with

    hash    blake2b of its bytes (a Zarr cube: of each of its files, in name order), taken when
            the product was written;
    inputs  the fingerprint of what it was made from (its stage's settings and the hashes of
            the products it was made from).

A product is reused only when it is listed, was made from the same inputs, and its bytes still
hash to what was written. Anything else (an input or setting changed, a file deleted, truncated
or overwritten, a chunk of a cube gone) rebuilds it. A stage fingerprints its inputs by their
content hashes, so a rebuilt product that comes out different rebuilds what depends on it in turn
(ingest cube -> calibrated cube -> photometry -> stars and light curves). A product found changed
is logged and listed in `rebuilt`, for the reduction's report.

Hashing reads every byte of the products, once per rerun: blake2b runs at ~1 GB/s per core,
about what decompressing the cubes costs, so a rerun stays a small multiple of one read.
The manifest is written atomically after every product is recorded; a corrupt or missing manifest
means nothing is trusted and everything is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from engine.io.atomic import write_text
from engine.io.layout import MANIFEST

__all__ = ["Manifest", "content_hash", "fingerprint"]

log = logging.getLogger("engine.io.manifest")

_FORMAT = 1
_BLOCK = 1 << 20


def fingerprint(*parts) -> str:
    """A short digest of JSON-able parts (settings, input hashes): a product's `inputs`."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _file_digest(path: Path) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
    return digest.digest()


def content_hash(path: str | os.PathLike) -> str | None:
    """blake2b of a file's bytes, or of a folder's files (names and bytes, in name order, so a
    deleted or added chunk changes it); None when nothing is at `path`."""
    path = Path(path)
    try:
        if path.is_file():
            return _file_digest(path).hex()
        if not path.is_dir():
            return None
        digest = hashlib.blake2b(digest_size=16)
        for member in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(member.relative_to(path).as_posix().encode() + b"\0")
            digest.update(_file_digest(member))
        return digest.hexdigest()
    except OSError:  # unreadable: as good as missing
        return None


class Manifest:
    """The manifest of the output folder `out_dir` (read now; see the module docstring)."""

    def __init__(self, out_dir: str | os.PathLike):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / MANIFEST
        #: Products found missing or changed since they were written (relative paths).
        self.rebuilt: list[str] = []
        self._entries: dict[str, dict] = {}
        if self.path.is_file():
            try:
                loaded = json.loads(self.path.read_text(encoding="utf-8"))
                if loaded.get("format") == _FORMAT:
                    self._entries = dict(loaded["products"])
            except (OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
                log.warning("%s cannot be read (%s): every product is rebuilt", self.path, exc)

    def _key(self, product) -> str:
        path = Path(product)
        try:
            return path.resolve().relative_to(self.out_dir.resolve()).as_posix()
        except ValueError:  # outside the output folder: listed by its full path
            return str(path.resolve())

    def lists(self, product) -> bool:
        return self._key(product) in self._entries

    def is_current(self, products, inputs: str) -> bool:
        """Whether every one of `products` is listed with these `inputs` and still holds the
        bytes it was written with. A product found changed is logged and remembered."""
        for product in products:
            key = self._key(product)
            entry = self._entries.get(key)
            if entry is None or entry.get("inputs") != inputs:
                return False
            if content_hash(product) != entry.get("hash"):
                what = "missing" if not Path(product).exists() else "changed"
                log.warning("%s is %s since it was written: rebuilt", key, what)
                self.rebuilt.append(key)
                del self._entries[key]
                self.save()
                return False
        return True

    def record(self, products, inputs: str) -> None:
        """List `products` (just written) as made from `inputs`, and save the manifest."""
        for product in products:
            self._entries[self._key(product)] = {"hash": content_hash(product),
                                                 "inputs": inputs}
        self.save()

    def hash_of(self, product) -> str | None:
        """A product's content hash: as recorded (verified by `is_current` or just written by
        `record` in this process), else computed now."""
        entry = self._entries.get(self._key(product))
        return entry["hash"] if entry is not None else content_hash(product)

    def save(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_text(self.path, json.dumps({"format": _FORMAT, "products": self._entries},
                                         indent=1, sort_keys=True) + "\n")
