"""Frame type (bias, dark, flat, light) from every clue a frame offers, with the evidence.

Clues, strongest first:
1. a user override (a path glob from the configuration);
2. the site's own rules (configured header value -> type, for software with its own words);
3. the header's type keyword (IMAGETYP, IMAGETYPE, OBSTYPE, FRAMETYP, FRAMETYPE, FRAME, IMGTYPE,
   EXPTYPE) in the vocabularies of the programs that write it: MaxIm DL, ACP, TheSkyX and
   CCDSoft ('Bias Frame', 'Dark Frame', 'Flat Field', 'Light Frame'), N.I.N.A., SharpCap and
   ASIAIR ('LIGHT', 'DARK', 'FLAT', 'BIAS', 'DARKFLAT', 'Flat Dark'), IRAF ('zero', 'object',
   'comp'), Las Cumbres Observatory's OBSTYPE ('EXPOSE', 'STANDARD', 'BIAS', 'DARK', 'SKYFLAT',
   'LAMPFLAT', 'DOMEFLAT'; 'GUIDE', 'EXPERIMENTAL', 'ARC' are none of the four);
4. the file name, then its folder's name, as whole words (bias/zero/offset, dark/darkflat,
   flat/skyflat/domeflat/twiflat, light/object/science), only where the header is silent;
5. against a header that says 'light' (the default many programs write for every frame: CCDSoft
   labels flats 'Light Frame') a name counts only when the pixels agree: a flat's level above 20%
   of full scale (a sky-limited light sits far below), a bias's exposure time of 0. A name alone
   never turns a light into a dark: 'Dark Shark Nebula' is a target, and a light named '_FLAT'
   that was flat-fielded keeps a sky level;
6. with no type anywhere: exposure time 0 means bias; a level above 20% of full scale means flat;
   otherwise light.

A header type that names none of the four (FOCUS, ARC, GUIDE, TEST) leaves the frame unclassified
unless an override or a site rule classifies it. `classify_frame` returns the type, the evidence
(a short sentence for the frames table) and notes for the log. The exposure time written in a
file name ('darks-expos1-...', '..._60.00s_...') is compared with the header's, which always wins.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Callable

__all__ = ["FrameType", "TYPE_KEYWORDS", "classify_frame", "header_frame_type", "name_exptime",
           "name_frame_type"]

TYPE_KEYWORDS = ("IMAGETYP", "IMAGETYPE", "OBSTYPE", "FRAMETYP", "FRAMETYPE", "FRAME", "IMGTYPE",
                 "EXPTYPE")

_HEADER_WORDS = {
    "bias": "bias", "zero": "bias", "offset": "bias", "biasframe": "bias", "zeroframe": "bias",
    "dark": "dark", "darkframe": "dark", "darkflat": "dark", "flatdark": "dark",
    "darkforflat": "dark", "thermal": "dark", "darkcurrent": "dark",
    "flat": "flat", "flatframe": "flat", "flatfield": "flat", "skyflat": "flat",
    "domeflat": "flat", "twiflat": "flat", "twilightflat": "flat", "lampflat": "flat",
    "dflat": "flat", "sflat": "flat", "tflat": "flat", "flatfieldframe": "flat",
    "light": "light", "lightframe": "light", "object": "light", "science": "light",
    "sci": "light", "target": "light", "obj": "light", "tricolorimage": "light",
    "image": "light", "objectframe": "light",
    # Las Cumbres Observatory (OBSTYPE) and other observatory pipelines.
    "expose": "light", "standard": "light",
}
#: Header types that are deliberately none of the four (skipped unless configured).
_NOT_FRAME_TYPES = {"guide", "experimental", "arc", "comp", "comparison", "focus", "test",
                    "acquire", "acquisition", "spectrum", "lampcheck", "trailed", "engineering"}
#: A flat's median sits at this fraction of full scale or above; a sky-limited light far below.
FLAT_LEVEL = 0.2
_NAME_WORDS = {
    "bias": "bias", "biases": "bias", "zero": "bias", "zeros": "bias", "offset": "bias",
    "offsets": "bias",
    "dark": "dark", "darks": "dark", "darkflat": "dark", "darkflats": "dark", "flatdark": "dark",
    "flatdarks": "dark",
    "flat": "flat", "flats": "flat", "skyflat": "flat", "skyflats": "flat", "domeflat": "flat",
    "domeflats": "flat", "twiflat": "flat", "twiflats": "flat", "flatfield": "flat",
    "flatfields": "flat", "dflat": "flat", "sflat": "flat",
    "light": "light", "lights": "light", "object": "light", "science": "light", "sci": "light",
}
_TOKEN = re.compile(r"[a-z]+|\d+(?:\.\d+)?")
_EXPTIME_TOKEN = re.compile(
    r"exp(?:os(?:ure)?)?[-_ ]?(\d+(?:\.\d+)?)(ms|msec|sec|secs|s)?(?![a-z0-9.])"
    r"|(?<![a-z0-9.])(\d+(?:\.\d+)?)(ms|msec|sec|secs|s)(?![a-z0-9])", re.IGNORECASE)


@dataclass(frozen=True)
class FrameType:
    """A frame's type (None when nothing classifies it), the evidence, and notes for the log."""

    frame_type: str | None
    evidence: str
    notes: tuple[str, ...] = field(default=())


def _squash(text: str) -> str:
    return re.sub(r"[^a-z]", "", text.lower())


def header_frame_type(header) -> tuple[str | None, str | None, str | None]:
    """(type or None, keyword, raw value) from the header's type keyword; type None with a
    keyword means the keyword names something that is none of the four types."""
    for key in TYPE_KEYWORDS:
        if key not in header:
            continue
        raw = header.get(key)
        if raw is None or isinstance(raw, bool):
            continue
        text = str(raw).strip()
        if not text or text.replace(".", "").isdigit():
            continue
        return _header_word_type(text), key, text
    return None, None, None


def _header_word_type(text: str) -> str | None:
    """The type a header's type value names, or None (a master, FOCUS, ARC, an unknown word)."""
    squashed = _squash(text)
    if squashed.startswith("master") or squashed in _NOT_FRAME_TYPES:
        return None
    kind = _HEADER_WORDS.get(squashed)
    if kind is None:
        # 'Flat Field Frame', 'Sky Flat V': look at the words one by one.
        words = {_HEADER_WORDS.get(w) for w in re.findall(r"[a-z]+", text.lower())} - {None}
        if len(words) == 1:
            kind = words.pop()
        elif words == {"dark", "flat"}:
            kind = "dark"  # a dark for flats
    return kind


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def name_frame_type(name: str) -> str | None:
    """The type a file or folder name states ('flat-expos23s-...' -> flat), or None."""
    kinds = {_NAME_WORDS[t] for t in _tokens(name) if t in _NAME_WORDS}
    if kinds == {"dark", "flat"}:
        return "dark"  # flat darks ('dark_flat_001')
    return kinds.pop() if len(kinds) == 1 else None


def name_exptime(name: str) -> float | None:
    """The exposure time a file name states ('darks-expos1-', '_60.00s_', 'exp10s') in seconds,
    or None."""
    stem = name
    for suffix in (".fz", ".gz", ".fits", ".fit", ".fts"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    for suffix in (".fits", ".fit", ".fts"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    match = _EXPTIME_TOKEN.search(stem)
    if not match:
        return None
    value, unit = (match.group(1), match.group(2)) if match.group(1) else (match.group(3),
                                                                          match.group(4))
    seconds = float(value)
    if unit and unit.lower().startswith("ms"):
        seconds /= 1000.0
    return seconds


def _file_stem(path: PurePath) -> str:
    name = path.name
    lower = name.lower()
    for suffix in (".fz", ".gz"):
        if lower.endswith(suffix):
            name, lower = name[: -len(suffix)], lower[: -len(suffix)]
    for suffix in (".fits", ".fit", ".fts"):
        if lower.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def _site_rule(header, rules) -> tuple[str, str] | None:
    """(type, evidence) of the first configured (header value, type) rule the header matches."""
    if not rules:
        return None
    for key in TYPE_KEYWORDS:
        value = header.get(key) if key in header else None
        if value is None or isinstance(value, bool) or not str(value).strip():
            continue
        for word, kind in rules:
            if _squash(str(value)) == _squash(word):
                return kind, f"{key} = {str(value).strip()!r} (site rule)"
    return None


def _name_agrees(clue_kind: str, exptime: float | None,
                 level: Callable[[], float | None] | None) -> tuple[bool, str]:
    """Whether the pixels back a name that contradicts a header 'light', and the evidence."""
    if clue_kind == "flat":
        fraction = level() if level is not None else None
        if fraction is None:
            return False, "no level to confirm it"
        words = f"level {100 * fraction:.0f}% of full scale"
        return fraction > FLAT_LEVEL, words
    if clue_kind == "bias":
        return exptime is not None and exptime <= 0.0, f"exposure time {exptime} s"
    return False, "a name alone does not make a light a dark"


def classify_frame(header, path, *, override: tuple[str, str] | None = None,
                   exptime: float | None = None,
                   level: Callable[[], float | None] | None = None,
                   rules: tuple[tuple[str, str], ...] = ()) -> FrameType:
    """Classify a frame (see the module docstring).

    header: the frame's header. path: its path (only the name and folder name are used).
    override: (frame type, glob) when a configured override matched. exptime: the header's
    exposure time. level: called only when a name or nothing else decides; returns the frame's
    median as a fraction of full scale, or None. rules: the site's (header value, type) pairs.
    """
    path = PurePath(path)
    header_kind, key, raw = header_frame_type(header)
    stem = _file_stem(path)
    name_kind = name_frame_type(stem)
    folder_kind = name_frame_type(path.parent.name) if path.parent.name else None
    notes = _exptime_notes(stem, exptime)

    if override is not None:
        kind, pattern = override
        if header_kind and header_kind != kind:
            notes.append(f"{key} = {raw!r} overridden: configured as {kind}")
        return FrameType(kind, f"override ({pattern})", tuple(notes))
    ruled = _site_rule(header, rules)
    if ruled is not None:
        return FrameType(ruled[0], ruled[1], tuple(notes))

    if header_kind in ("bias", "dark", "flat"):
        if name_kind and name_kind != header_kind:
            notes.append(f"the file name says {name_kind} but {key} = {raw!r}; "
                         f"trusting the header")
        return FrameType(header_kind, f"{key} = {raw!r}", tuple(notes))

    for clue_kind, clue in ((name_kind, "file name"), (folder_kind, "folder name")):
        if clue_kind is None:
            continue
        if header_kind == "light" and clue_kind != "light":
            named = _name_over_light(clue_kind, clue, key, raw, exptime, level, notes)
            if named is not None:
                return named
        elif header_kind is None:
            if key is None:
                return FrameType(clue_kind, clue, tuple(notes))
            notes.append(f"{key} = {raw!r} is not a frame type; the {clue} says {clue_kind}")
        else:
            break  # the header and a name agree on light
    return _without_name(header_kind, key, raw, exptime, level, notes)


def _exptime_notes(stem: str, exptime: float | None) -> list[str]:
    """A note when the exposure time in the file name disagrees with the header's."""
    named = name_exptime(stem)
    if named is not None and exptime is not None and (
            abs(named - exptime) > max(0.01 * exptime, 0.0011)):
        return [(f"the file name says {named:g} s but the header says EXPTIME = {exptime:g} s; "
                 "trusting the header")]
    return []


def _name_over_light(clue_kind: str, clue: str, key: str, raw, exptime: float | None,
                     level: Callable[[], float | None] | None, notes: list[str]) -> FrameType | None:
    """The name's type when the pixels back it against a header 'light'; else None, noted."""
    agrees, why = _name_agrees(clue_kind, exptime, level)
    if not agrees:
        notes.append(f"the {clue} says {clue_kind} but {key} = {raw!r} and {why}; "
                     "kept as light (a path override can say otherwise)")
        return None
    notes.append(f"{key} = {raw!r} but the {clue} says {clue_kind} and {why}; trusting "
                 f"the {clue} ({key} = 'Light' is many programs' default)")
    return FrameType(clue_kind, f"{clue} and {why} (over {key} = {raw!r})", tuple(notes))


def _without_name(header_kind: str | None, key: str | None, raw, exptime: float | None,
                  level: Callable[[], float | None] | None, notes: list[str]) -> FrameType:
    """The type when no name decides: the header's light, none of the four, or with no type
    keyword at all the exposure time and the level."""
    if header_kind == "light":
        return FrameType("light", f"{key} = {raw!r}", tuple(notes))
    if key is not None:
        return FrameType(None, f"{key} = {raw!r} is none of bias, dark, flat, light", tuple(notes))
    if exptime is not None and exptime <= 0.0:
        return FrameType("bias", "no type keyword or name; exposure time 0", tuple(notes))
    fraction = level() if level is not None else None
    if fraction is not None and fraction > FLAT_LEVEL:
        return FrameType("flat", f"no type keyword or name; level {100 * fraction:.0f}% of "
                                 "full scale", tuple(notes))
    return FrameType("light", "no type keyword or name; assumed light", tuple(notes))
