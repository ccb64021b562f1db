"""Check one run's photometry, frames and star tables and hold them as dense arrays.

`RunData` turns the long photometry table (one row per frame x star x radius) into
(frames, stars) matrices per aperture on demand, with frames in time order and stars in the
star table's order. Nothing here is fitted; every later step reads its arrays from it.

Accepted columns (extra columns are ignored):
- photometry: frame, star, radius, flux, flux_err, flags; optional x, y, background,
  var_* (the noise terms: var_poisson, var_sky, var_read, var_dark, var_scintillation, ...;
  when present their sum is the flux variance, else flux_err^2).
- psf photometry (optional, a second table): frame, star, flux, flux_err; optional flags,
  x, y, var_*.
- frames: frame, time_bjd_tdb, airmass, exptime; optional time_err_s (timing error, s), fwhm,
  sky, scintillation (relative sigma per frame), run_id, site, telescope, filter.
- stars: star (else the row number), x, y; optional ra, dec, star_id (a global id), colour
  (BP-RP; also read from bp_rp, BP_RP or bp-rp), mag_instrumental, is_target.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from engine.checks import table_columns
from engine.errors import EngineValueError
from engine.flags import MeasurementFlag

__all__ = ["Aperture", "RunData", "prepare_run"]

_COLOUR_COLUMNS = ("colour", "color", "bp_rp", "BP_RP", "bp-rp", "BP-RP")


@dataclass(frozen=True)
class Aperture:
    """One photometry variant: a circular aperture of `radius` pixels, or PSF fluxes."""

    label: str          # 'r=4' style, or 'psf'
    radius: float       # pixels; NaN for PSF


@dataclass
class _Block:
    """Rows of one aperture: where each goes in the dense (frames, stars) matrices."""

    frame_pos: np.ndarray
    star_pos: np.ndarray
    columns: dict


@dataclass
class RunData:
    """One run's inputs as arrays. Frames (k) are in time order, stars (j) in table order."""

    frame: np.ndarray            # frame numbers (int64)
    time: np.ndarray             # BJD_TDB, mid-exposure
    airmass: np.ndarray
    exptime: np.ndarray
    fwhm: np.ndarray | None
    sky: np.ndarray | None
    scintillation: np.ndarray | None
    star: np.ndarray             # star numbers (int64)
    star_id: np.ndarray          # global ids (int64): star_id column, else the star number
    star_x: np.ndarray
    star_y: np.ndarray
    ra: np.ndarray | None
    dec: np.ndarray | None
    colour: np.ndarray           # BP-RP, NaN where unknown
    target: int                  # position of the target among the stars
    run_id: str
    site: str
    telescope: str
    filter: str
    apertures: list
    star_id_source: str = "star number"   # 'star table' when star_id came from the star table
    time_err: np.ndarray | None = None    # timing error of each frame's time (s, 1 sigma)
    notes: list = field(default_factory=list)
    _blocks: dict = field(default_factory=dict, repr=False)
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def n_frames(self) -> int:
        return self.frame.shape[0]

    @property
    def n_stars(self) -> int:
        return self.star.shape[0]

    def aperture_index(self, wanted) -> int:
        """Index of the aperture matching a radius (nearest, within 1e-6 px) or 'psf'."""
        for a, ap in enumerate(self.apertures):
            if wanted == "psf" and ap.label == "psf":
                return a
            if (not isinstance(wanted, str) and np.isfinite(ap.radius)
                    and abs(ap.radius - float(wanted)) <= 1e-6):
                return a
        raise EngineValueError(
            f"run {self.run_id!r}: no photometry for aperture {wanted!r}; have "
            + ", ".join(ap.label for ap in self.apertures))

    def matrix(self, a: int, column: str, fill=np.nan, dtype=np.float64) -> np.ndarray:
        """(frames, stars) matrix of one column at aperture a; `fill` where no row exists."""
        key = (a, column)
        if key in self._cache:
            return self._cache[key]
        block = self._blocks[a]
        out = np.full((self.n_frames, self.n_stars), fill, dtype=dtype)
        values = block.columns.get(column)
        if values is not None:
            out[block.frame_pos, block.star_pos] = values
        self._cache[key] = out
        return out

    def has_column(self, a: int, column: str) -> bool:
        return column in self._blocks[a].columns

    def variance_terms(self, a: int) -> list[str]:
        """Names of the var_* noise terms the photometry has at aperture a."""
        return sorted(c for c in self._blocks[a].columns if c.startswith("var_"))

    def flux_variance(self, a: int) -> np.ndarray:
        """Variance of the flux (e-^2): the sum of the var_* terms, else flux_err^2."""
        key = (a, "__variance")
        if key not in self._cache:
            terms = self.variance_terms(a)
            if terms:
                total = sum(self.matrix(a, t) for t in terms)
            else:
                total = self.matrix(a, "flux_err") ** 2
            self._cache[key] = total
        return self._cache[key]

    def drop_cache(self, keep: int | None = None) -> None:
        """Forget the matrices of every aperture except `keep`."""
        self._cache = {k: v for k, v in self._cache.items() if k[0] == keep}


def _column(table: pa.Table, name: str, dtype=np.float64):
    if name not in table.column_names:
        return None
    col = table.column(name)
    if dtype is str:
        return [None if v is None else str(v) for v in col.to_pylist()]
    if pa.types.is_boolean(col.type):
        return np.asarray(col.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)
    if col.null_count and np.issubdtype(np.dtype(dtype), np.integer):
        raise EngineValueError(f"column {name!r} has nulls")
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=dtype)


def _one_value(values, name, notes, default=""):
    if values is None:
        return default
    seen = [v for v in dict.fromkeys(values) if v is not None and v != ""]
    if not seen:
        return default
    if len(seen) > 1:
        notes.append(f"frames table has several {name} values {seen[:4]}; used {seen[0]!r}")
    return str(seen[0])


def _positions(numbers: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Position of each value in `numbers` (unique), -1 where absent."""
    order = np.argsort(numbers, kind="stable")
    ordered = numbers[order]
    pos = np.searchsorted(ordered, values)
    pos = np.minimum(pos, max(ordered.size - 1, 0))
    found = ordered.size > 0
    hit = (ordered[pos] == values) if found else np.zeros(values.shape, dtype=bool)
    return np.where(hit, order[pos] if found else -1, -1)


def _rows(table: pa.Table, frame: np.ndarray, star: np.ndarray, what: str):
    frames = _column(table, "frame", np.int64)
    stars = _column(table, "star", np.int64)
    fp = _positions(frame, frames)
    sp = _positions(star, stars)
    if np.any(fp < 0):
        raise EngineValueError(f"{what} has frames missing from the frames table: "
                               f"{np.unique(frames[fp < 0])[:10].tolist()}")
    if np.any(sp < 0):
        raise EngineValueError(f"{what} has stars missing from the star table: "
                               f"{np.unique(stars[sp < 0])[:10].tolist()}")
    return fp, sp


def _table_columns(table: pa.Table, row_sets) -> list[dict]:
    """The numeric columns the ensemble reads, as NumPy arrays (flags as uint32), split into
    one dict per set of rows. One column is converted at a time: a long run's table has
    millions of rows, and holding all its columns twice would double the memory."""
    names = [name for name in table.column_names
             if name in ("flux", "flux_err", "x", "y", "background") or name.startswith("var_")]
    parts: list[dict] = [{} for _ in row_sets]
    for name in names + ["flags"]:
        if name == "flags":
            flags = _column(table, "flags", np.int64)
            values = (np.zeros(table.num_rows, dtype=np.uint32) if flags is None
                      else flags.astype(np.uint32))
        else:
            values = _column(table, name)
        for part, rows in zip(parts, row_sets):
            part[name] = values[rows]
    return parts


def _block(columns: dict, rows, fp, sp, n_frames: int, n_stars: int, what: str) -> _Block:
    """The rows of one aperture; `columns` holds their values already (see _table_columns)."""
    f, s = fp[rows], sp[rows]
    key = f * n_stars + s
    if key.size and np.bincount(key, minlength=n_frames * n_stars).max() > 1:
        raise EngineValueError(f"{what} has more than one row for some (frame, star)")
    return _Block(frame_pos=f, star_pos=s, columns=columns)


def _measured_frames(frames: pa.Table, photometry: pa.Table, psf, notes: list):
    """(positions in the frames table in time order, frame numbers) of the frames with
    photometry; the others are left out with a note."""
    frame = _column(frames, "frame", np.int64)
    if np.unique(frame).size != frame.size:
        raise EngineValueError("frames table lists a frame twice")
    order = np.argsort(_column(frames, "time_bjd_tdb"), kind="stable")
    frame = frame[order]
    keep = np.isin(frame, np.unique(_column(photometry, "frame", np.int64)))
    if psf is not None:
        keep |= np.isin(frame, np.unique(_column(psf, "frame", np.int64)))
    if not keep.all():
        notes.append(f"{int((~keep).sum())} frame(s) of the frames table have no photometry "
                     f"and are left out: {frame[~keep][:10].tolist()}")
    if not keep.any():
        raise EngineValueError("no frame of the frames table has photometry")
    return order[keep], frame[keep]


def _star_columns(stars: pa.Table):
    """(star numbers, star_id, where the ids came from, colour, x, y) of the star table."""
    star = _column(stars, "star", np.int64)
    if star is None:
        star = np.arange(stars.num_rows, dtype=np.int64)
    if np.unique(star).size != star.size:
        raise EngineValueError("star table lists a star twice")
    star_id = _column(stars, "star_id", np.int64)
    star_id_source = "star table"
    if star_id is None:
        star_id = star.copy()
        star_id_source = "star number"
    colour = None
    for name in _COLOUR_COLUMNS:
        colour = _column(stars, name)
        if colour is not None:
            break
    if colour is None:
        colour = np.full(star.shape, np.nan)
    star_x = _column(stars, "x")
    star_y = _column(stars, "y")
    star_x = star_x if star_x is not None else np.full(star.shape, np.nan)
    star_y = star_y if star_y is not None else np.full(star.shape, np.nan)
    return star, star_id, star_id_source, colour, star_x, star_y


def _target_position(stars: pa.Table, star: np.ndarray, target) -> int:
    """Position of the target: the star numbered `target`, else the one marked is_target."""
    if target is not None:
        matches = np.flatnonzero(star == int(target))
        if matches.size != 1:
            raise EngineValueError(f"target {target!r} is not in the star table")
        return int(matches[0])
    is_target = _column(stars, "is_target", bool)
    if is_target is None:
        raise EngineValueError("no target given and the star table has no is_target column")
    if int(is_target.sum()) != 1:
        raise EngineValueError(f"the star table marks {int(is_target.sum())} targets; "
                               "exactly one is needed (or pass target=)")
    return int(np.flatnonzero(is_target)[0])


def _aperture_blocks(photometry: pa.Table, psf, frame, star):
    """(apertures, their blocks): one per finite radius of the photometry, then the PSF's."""
    fp, sp = _rows(photometry, frame, star, "photometry")
    radius = _column(photometry, "radius")
    apertures, blocks = [], {}
    radii = np.unique(radius[np.isfinite(radius)])
    row_sets = [np.flatnonzero(radius == r) for r in radii]
    for r, rows, columns in zip(radii, row_sets, _table_columns(photometry, row_sets)):
        blocks[len(apertures)] = _block(columns, rows, fp, sp, frame.size, star.size,
                                        f"photometry at radius {r:g}")
        apertures.append(Aperture(label=f"r={r:g}", radius=float(r)))
    if psf is not None:
        pfp, psp = _rows(psf, frame, star, "psf photometry")
        everything = slice(None)
        blocks[len(apertures)] = _block(_table_columns(psf, [everything])[0], everything, pfp,
                                        psp, frame.size, star.size, "psf photometry")
        apertures.append(Aperture(label="psf", radius=float("nan")))
    if not apertures:
        raise EngineValueError("the photometry has no finite radius and no psf table was given")
    return apertures, blocks


def prepare_run(photometry: pa.Table, frames: pa.Table, stars: pa.Table, target=None,
                psf: pa.Table | None = None, run_id: str | None = None) -> RunData:
    """Validate one run's tables and index them (see the module docstring for the columns).

    target: the target's star number; None reads the star table's `is_target` column, which
    must mark exactly one star.
    """
    table_columns("photometry", photometry, ("frame", "star", "radius", "flux", "flux_err"))
    table_columns("frames table", frames, ("frame", "time_bjd_tdb", "airmass", "exptime"))
    table_columns("star table", stars, ())
    if psf is not None:
        table_columns("psf photometry", psf, ("frame", "star", "flux", "flux_err"))
    notes: list = []
    order, frame = _measured_frames(frames, photometry, psf, notes)

    def per_frame(name):
        values = _column(frames, name)
        return None if values is None else values[order]

    time = per_frame("time_bjd_tdb")
    if not np.all(np.isfinite(time)):
        raise EngineValueError("frames table: time_bjd_tdb must be finite for every frame")
    exptime = per_frame("exptime")
    if not np.all(np.isfinite(exptime) & (exptime > 0)):
        raise EngineValueError("frames table: exptime must be finite and > 0 for every frame")
    star, star_id, star_id_source, colour, star_x, star_y = _star_columns(stars)
    target_pos = _target_position(stars, star, target)
    apertures, blocks = _aperture_blocks(photometry, psf, frame, star)
    return RunData(
        frame=frame, time=time, airmass=per_frame("airmass"), exptime=exptime,
        time_err=per_frame("time_err_s"), fwhm=per_frame("fwhm"), sky=per_frame("sky"),
        scintillation=per_frame("scintillation"), star=star, star_id=star_id,
        star_x=star_x, star_y=star_y,
        ra=_column(stars, "ra"), dec=_column(stars, "dec"), colour=colour, target=target_pos,
        run_id=run_id or _one_value(_column(frames, "run_id", str), "run_id", notes, "run"),
        site=_one_value(_column(frames, "site", str), "site", notes),
        telescope=_one_value(_column(frames, "telescope", str), "telescope", notes),
        filter=_one_value(_column(frames, "filter", str), "filter", notes),
        apertures=apertures, star_id_source=star_id_source, notes=notes, _blocks=blocks)


def usable(data: RunData, a: int, exclude_flags: int) -> np.ndarray:
    """(frames, stars) mask of measurements fit for the ensemble: finite positive flux and
    variance, none of exclude_flags."""
    flux = data.matrix(a, "flux")
    variance = data.flux_variance(a)
    flags = data.matrix(a, "flags", fill=int(MeasurementFlag.NO_FLUX), dtype=np.uint32)
    return (np.isfinite(flux) & (flux > 0) & np.isfinite(variance) & (variance > 0)
            & ((flags & np.uint32(exclude_flags)) == 0))
