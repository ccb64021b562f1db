"""Reference star catalogues: one reader for the CSV and Parquet files users pass as --catalogue.

`read_catalogue(path)` reads a file (never evaluates it) into a `ReferenceCatalogue`: ids,
RA/Dec in degrees, a primary magnitude, a colour and every recognised band. Column names are
recognised as the usual exports write them:

- Gaia DR3: source_id, ra, dec, phot_g_mean_mag, phot_bp_mean_mag, phot_rp_mean_mag, bp_rp
  (VizieR's Source, RA_ICRS, DE_ICRS, Gmag, BPmag, RPmag, BP-RP too).
- Gaia synthetic photometry: u_jkc_mag ... i_jkc_mag (Johnson-Kron-Cousins U B V R I),
  u_sdss_mag ... z_sdss_mag (Sloan u g r i z); their _error and _flux columns are ignored.
- Plain tables: id, ra, dec, mag, colour / color, B-V, and one-letter bands (V, R, g ...) or
  <band>mag / <band>_mag; mag_<band> as `ReferenceCatalogue.to_table` writes them.

Names are matched case-insensitively, except where case is the band: G (Gaia) and g (Sloan),
U/u, R/r, I/i. Bands are named G, BP, RP, U, B, V, R, I, u, g, r, i, z.

The primary magnitude is a column named `mag` when there is one, else G, else V, else the first
band found. The colour is BP-RP (a column, else BP minus RP), else B-V likewise, else a plain
colour column, else NaN.

`fetch_gaia(ra, dec, radius, cache_dir=...)` fetches Gaia DR3 for a field from the ESA archive
(astroquery, the `[gaia]` extra) with the synthetic Johnson-Cousins and SDSS magnitudes, keeps
it as a Parquet file in the cache folder (named by the query: the same query is never sent
twice) and reads it back with `read_catalogue`. It is the only function here that touches the
network, and only when the cache lacks the file.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from engine.checks import number
from engine.errors import (CatalogueError, CatalogueFetchError, EngineFileError,
                           InputNotFoundError, MissingToolError)

__all__ = ["BANDS", "ReferenceCatalogue", "combine_catalogues", "fetch_gaia", "filter_band",
           "gaia_cache_path", "gaia_query", "read_catalogue"]

log = logging.getLogger(__name__)

#: Band names, in the order the table lists them.
BANDS = ("G", "BP", "RP", "U", "B", "V", "R", "I", "u", "g", "r", "i", "z")

_RA_NAMES = ("ra", "ra_deg", "radeg", "ra_icrs", "raj2000", "_raj2000", "ra_j2000")
_DEC_NAMES = ("dec", "dec_deg", "decdeg", "de_icrs", "dec_icrs", "dej2000", "_dej2000",
              "dec_j2000", "de")
_ID_NAMES = ("source_id", "id", "star_id", "source", "name", "designation", "objid")
_PLAIN_MAG = "mag"
_COLOUR_NAMES = {"BP-RP": ("bp_rp", "bp-rp", "bprp"), "B-V": ("b-v", "b_v", "bv", "b_v_mag"),
                 "plain": ("colour", "color")}
# Names whose band does not depend on case.
_NAMED_BANDS = {"phot_g_mean_mag": "G", "phot_bp_mean_mag": "BP", "phot_rp_mean_mag": "RP",
                "gmag_gaia": "G", "bpmag": "BP", "rpmag": "RP", "bp_mag": "BP", "rp_mag": "RP"}
_SYNTHETIC = re.compile(r"^([ubvrigz])_(jkc|sdss)_mag$", re.IGNORECASE)
_LETTER = re.compile(r"^([UBVRIGugriz])(?:_?mag)?$")  # 'V', 'Vmag', 'r_mag': case is the band


#: Filter names as headers write them, squashed (lower case, no spaces, dashes or primes).
_FILTER_BANDS = {
    "rc": "R", "ic": "I", "cousinsr": "R",
    "cousinsi": "I", "johnsonu": "U", "johnsonb": "B", "johnsonv": "V", "johnsonr": "R",
    "johnsoni": "I", "bessellu": "U", "bessellb": "B", "bessellv": "V", "bessellr": "R",
    "besselli": "I", "jkcv": "V", "jkcr": "R", "jkci": "I", "jkcb": "B", "jkcu": "U",
    "sdssu": "u", "sdssg": "g", "sdssr": "r", "sdssi": "i", "sdssz": "z", "gp": "g", "rp": "r",
    "ip": "i", "zp": "z", "zs": "z", "up": "u", "sloanu": "u", "sloang": "g", "sloanr": "r",
    "sloani": "i", "sloanz": "z", "gaiag": "G", "gaiabp": "BP",
    "gaiarp": "RP",
}


def filter_band(name) -> str | None:
    """The catalogue band a filter name stands for ('Bessell R' -> 'R', "r'" or 'rp' -> 'r'),
    or None when it names no band ('Clear', 'L', a wheel number)."""
    if not name:
        return None
    text = str(name).strip()
    if text in ("g'", "r'", "i'", "z'", "u'"):
        return text[0]
    if len(text) == 1:  # case is the system: 'R' Johnson-Cousins, 'r' Sloan; 'G' is ambiguous
        return text if text in "UBVRIugriz" else None  # (Gaia G, or an RGB set's green)
    return _FILTER_BANDS.get(re.sub(r"[\s\-_'’]", "", text).lower())


def _band_of(name: str) -> str | None:
    """The band a column holds, or None."""
    if name.startswith("mag_") and name[4:] in BANDS:  # to_table's own columns
        return name[4:]
    lower = name.lower()
    if lower in _NAMED_BANDS:
        return _NAMED_BANDS[lower]
    synthetic = _SYNTHETIC.match(name)
    if synthetic:
        letter, system = synthetic.groups()
        band = letter.upper() if system.lower() == "jkc" else letter.lower()
        return band if band in BANDS else None
    letter = _LETTER.match(name)
    if letter:
        band = letter.group(1)
        # B and V have no Sloan twin; z no Johnson one.
        return {"b": "B", "v": "V", "Z": "z"}.get(band, band)
    return None


@dataclass(frozen=True)
class ReferenceCatalogue:
    """A reference star catalogue in the engine's units.

    ids: int64 per star (generated 0..n-1 when the file has none; string ids are numbered in
    order and kept in `names`). ra, dec: float64 degrees (ICRS as the catalogue gives it).
    mag: the primary magnitude; colour: BP-RP, else B-V, else NaN. bands: band name -> magnitudes.
    path: the file read (None in memory). notes: what was dropped or assumed.
    """

    ids: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    mag: np.ndarray
    colour: np.ndarray
    bands: dict = field(default_factory=dict)
    names: np.ndarray | None = None
    path: Path | None = None
    notes: tuple = ()

    def __len__(self) -> int:
        return len(self.ra)

    def to_table(self) -> pa.Table:
        """id, ra, dec, mag, colour, then mag_<band> for each band (and name for string ids)."""
        columns = {"id": pa.array(self.ids, pa.int64()), "ra": self.ra, "dec": self.dec,
                   "mag": self.mag, "colour": self.colour}
        if self.names is not None:
            columns["name"] = pa.array(self.names.tolist(), pa.string())
        for band in BANDS:
            if band in self.bands:
                columns[f"mag_{band}"] = self.bands[band]
        return pa.table(columns)

    def take(self, rows) -> "ReferenceCatalogue":
        """The catalogue restricted to some rows (indices or a boolean mask)."""
        rows = np.asarray(rows)
        return ReferenceCatalogue(
            ids=self.ids[rows], ra=self.ra[rows], dec=self.dec[rows], mag=self.mag[rows],
            colour=self.colour[rows], bands={k: v[rows] for k, v in self.bands.items()},
            names=None if self.names is None else self.names[rows], path=self.path,
            notes=self.notes)

    @classmethod
    def from_table(cls, table: pa.Table, *, path=None) -> "ReferenceCatalogue":
        """A catalogue from an in-memory Arrow table with recognisable columns (see the module
        docstring). Raises CatalogueError when a column is missing or a value is impossible."""
        if not isinstance(table, pa.Table):
            raise CatalogueError(f"expected a pyarrow.Table, got {type(table).__name__}")
        where = f"{path}: " if path is not None else ""
        by_lower = {}
        for name in table.column_names:
            by_lower.setdefault(name.lower(), name)
        ra_name = _first(by_lower, _RA_NAMES)
        dec_name = _first(by_lower, _DEC_NAMES)
        if ra_name is None or dec_name is None:
            which, names = ("ra", _RA_NAMES) if ra_name is None else ("dec", _DEC_NAMES)
            raise CatalogueError(f"{where}no {which} column (looked for {', '.join(names)}); "
                                 f"columns are {', '.join(table.column_names)}")
        ra, dec = _floats(table, ra_name, where), _floats(table, dec_name, where)
        notes = []
        finite = np.isfinite(ra) & np.isfinite(dec)
        if not finite.all():
            notes.append(f"{int((~finite).sum())} rows with NaN coordinates dropped")
            log.warning("%s%s", where, notes[-1])
        _check_range(ra[finite], dec[finite], where)
        bands = {}
        for name in table.column_names:
            band = _band_of(name)
            if band is not None and band not in bands:
                bands[band] = _floats(table, name, where)
        plain = by_lower.get(_PLAIN_MAG)
        if plain is not None:
            mag = _floats(table, plain, where)
        elif bands:
            mag = bands.get("G", bands.get("V", next(iter(bands.values()))))
        else:
            raise CatalogueError(f"{where}no magnitude column (mag, G / phot_g_mean_mag, V, "
                                 f"v_jkc_mag, ...); columns are {', '.join(table.column_names)}")
        colour = _colour(table, by_lower, bands, where)
        ids, names = _ids(table, by_lower, where)
        keep = np.flatnonzero(finite)
        if len(keep) == 0:
            raise CatalogueError(f"{where}the catalogue has no star with coordinates")
        return cls(ids=ids[keep], ra=ra[keep], dec=dec[keep], mag=mag[keep],
                   colour=colour[keep], bands={k: v[keep] for k, v in bands.items()},
                   names=None if names is None else names[keep],
                   path=None if path is None else Path(path), notes=tuple(notes))


def _first(by_lower: dict, names) -> str | None:
    for name in names:
        if name in by_lower:
            return by_lower[name]
    return None


def _floats(table: pa.Table, name: str, where: str) -> np.ndarray:
    column = table.column(name)
    try:
        values = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise CatalogueError(f"{where}column {name!r} is not numeric ({exc})") from None
    return np.array(values, dtype=np.float64)  # nulls are NaN


def _check_range(ra: np.ndarray, dec: np.ndarray, where: str) -> None:
    bad_ra = np.flatnonzero((ra < 0.0) | (ra > 360.0))
    if len(bad_ra):
        raise CatalogueError(f"{where}{len(bad_ra)} RA values outside 0-360 deg (first "
                             f"{ra[bad_ra[0]]!r}); the catalogue must give RA in degrees")
    bad_dec = np.flatnonzero(np.abs(dec) > 90.0)
    if len(bad_dec):
        raise CatalogueError(f"{where}{len(bad_dec)} Dec values outside -90..+90 deg (first "
                             f"{dec[bad_dec[0]]!r})")


def _colour(table, by_lower, bands, where) -> np.ndarray:
    for kind, first, second in (("BP-RP", "BP", "RP"), ("B-V", "B", "V")):
        name = _first(by_lower, _COLOUR_NAMES[kind])
        if name is not None:
            return _floats(table, name, where)
        if first in bands and second in bands:
            return bands[first] - bands[second]
    name = _first(by_lower, _COLOUR_NAMES["plain"])
    if name is not None:
        return _floats(table, name, where)
    return np.full(table.num_rows, np.nan)


def _ids(table, by_lower, where) -> tuple[np.ndarray, np.ndarray | None]:
    name = _first(by_lower, _ID_NAMES)
    if name is None:
        return np.arange(table.num_rows, dtype=np.int64), None
    column = table.column(name)
    if pa.types.is_integer(column.type) and column.null_count == 0:
        return column.to_numpy(zero_copy_only=False).astype(np.int64), None
    # String (or gappy) ids: numbered in order, the originals kept as names.
    names = np.array([str(v) if v is not None else "" for v in column.to_pylist()], dtype=object)
    return np.arange(table.num_rows, dtype=np.int64), names


def read_catalogue(path) -> ReferenceCatalogue:
    """Read a reference catalogue (CSV, or Parquet by its suffix or magic bytes).

    Raises InputNotFoundError when the file is missing, EngineFileError when it cannot be read
    as a table, CatalogueError when its columns or values are unusable (see the module
    docstring). Rows with NaN coordinates are dropped and counted in `notes`.
    """
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"{path}: reference catalogue not found")
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
        if magic == b"PAR1" or path.suffix.lower() in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        else:
            from pyarrow import csv

            table = csv.read_csv(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise EngineFileError(f"{path}: cannot read the reference catalogue: {exc}") from None
    if table.num_rows == 0:
        raise CatalogueError(f"{path}: the catalogue has no rows")
    return ReferenceCatalogue.from_table(table, path=path)


def combine_catalogues(catalogues) -> ReferenceCatalogue:
    """One catalogue from several (e.g. the fields of several runs): a star in more than one
    keeps its first row (stars are the same when their ids are)."""
    catalogues = list(catalogues)
    if len(catalogues) == 1:
        return catalogues[0]
    if not catalogues:
        raise CatalogueError("no catalogue to combine")
    table = pa.concat_tables([c.to_table() for c in catalogues], promote_options="default")
    combined = ReferenceCatalogue.from_table(table)
    _, first = np.unique(combined.ids, return_index=True)
    notes = tuple(note for c in catalogues for note in c.notes)
    return replace(combined.take(np.sort(first)), notes=notes)


# ------------------------------------------------------------------------------------------------
# Gaia DR3 from the ESA archive
# ------------------------------------------------------------------------------------------------

GAIA_SOURCE_TABLE = "gaiadr3.gaia_source"
GAIA_SYNTHETIC_TABLE = "gaiadr3.synthetic_photometry_gspc"
_GAIA_COLUMNS = ("source_id", "ra", "dec", "phot_g_mean_mag", "phot_bp_mean_mag",
                 "phot_rp_mean_mag", "bp_rp")
#: Johnson-Kron-Cousins U B V R I and SDSS u g r i z from the XP spectra (G < ~17.65 only).
_SYNTHETIC_COLUMNS = (tuple(f"{band}_jkc_mag" for band in "ubvri")
                      + tuple(f"{band}_sdss_mag" for band in "ugriz"))
#: The widest cone a query may ask for: wider fields are not a small telescope's, and the
#: answer would be millions of rows.
MAX_GAIA_RADIUS_DEG = 5.0


def gaia_query(ra_deg, dec_deg, radius_deg, *, mag_limit: float = 18.0,
               synthetic: bool = True) -> str:
    """The ADQL query for Gaia DR3 stars within `radius_deg` of (ra_deg, dec_deg), G <=
    mag_limit, brightest first; with `synthetic`, joined (left: stars without XP spectra keep
    their row) with the synthetic Johnson-Cousins and SDSS magnitudes. Positions are Gaia's
    (ICRS, epoch J2016.0)."""
    ra = number("ra_deg", ra_deg) % 360.0
    dec = number("dec_deg", dec_deg, low=-90.0, high=90.0)
    radius = number("radius_deg", radius_deg, above=0.0, high=MAX_GAIA_RADIUS_DEG)
    limit = number("mag_limit", mag_limit)
    columns = [f"g.{name}" for name in _GAIA_COLUMNS]
    join = ""
    if synthetic:
        columns += [f"s.{name}" for name in _SYNTHETIC_COLUMNS]
        join = f"LEFT OUTER JOIN {GAIA_SYNTHETIC_TABLE} AS s ON s.source_id = g.source_id\n"
    return (f"SELECT {', '.join(columns)}\n"
            f"FROM {GAIA_SOURCE_TABLE} AS g\n{join}"
            f"WHERE 1 = CONTAINS(POINT('ICRS', g.ra, g.dec), "
            f"CIRCLE('ICRS', {ra:.7f}, {dec:.7f}, {radius:.6f}))\n"
            f"AND g.phot_g_mean_mag <= {limit:.3f}\n"
            f"ORDER BY g.phot_g_mean_mag")


def gaia_cache_path(query: str, cache_dir) -> Path:
    """Where the answer to `query` is kept in `cache_dir`: a name made of the query's hash."""
    digest = hashlib.sha256(query.encode("utf-8")).hexdigest()[:20]
    return Path(cache_dir) / f"gaia_dr3_{digest}.parquet"


def fetch_gaia(ra_deg, dec_deg, radius_deg, *, cache_dir, mag_limit: float = 18.0,
               synthetic: bool = True) -> ReferenceCatalogue:
    """Gaia DR3 around (ra_deg, dec_deg) as a ReferenceCatalogue (see `gaia_query`), from the
    cache folder when it holds this query's answer, else from the ESA archive (then kept there).

    Raises MissingToolError when astroquery is needed and not installed, CatalogueFetchError
    when the archive cannot be reached, CatalogueError when the field has no star.
    """
    query = gaia_query(ra_deg, dec_deg, radius_deg, mag_limit=mag_limit, synthetic=synthetic)
    path = gaia_cache_path(query, cache_dir)
    if not path.is_file():
        table = _run_gaia_query(query)
        if table.num_rows == 0:
            raise CatalogueError(f"Gaia DR3 has no star of G <= {mag_limit:g} within "
                                 f"{radius_deg:g} deg of RA {ra_deg:.5f}, Dec {dec_deg:+.5f}")
        from engine.io.tables import write_parquet

        write_parquet(table, path, metadata={"query": query, "source": "Gaia DR3 (ESA archive)"})
        log.info("Gaia DR3: %d stars within %.3f deg of (%.5f, %+.5f) kept in %s",
                 table.num_rows, radius_deg, ra_deg, dec_deg, path)
    return read_catalogue(path)


def _run_gaia_query(query: str) -> pa.Table:
    """The query's answer from the ESA Gaia archive, as an Arrow table of numeric columns."""
    try:
        from astroquery.gaia import Gaia
    except ImportError as exc:
        raise MissingToolError(
            f"fetching Gaia DR3 needs astroquery ({exc}): pip install 'photometry-engine[gaia]', "
            "or give a catalogue file with --catalogue FILE") from None
    from http.client import HTTPException

    try:
        result = Gaia.launch_job_async(query, verbose=False).get_results()
    except (OSError, HTTPException) as exc:  # requests' errors are OSErrors
        raise CatalogueFetchError(
            f"cannot fetch Gaia DR3 from the ESA archive ({type(exc).__name__}: {exc}); check "
            "the network connection, or give a catalogue file with --catalogue FILE") from None
    columns = {}
    for name in result.colnames:
        column = result[name]
        mask = np.ma.getmaskarray(column)
        if column.dtype.kind in "iu":
            columns[name.lower()] = pa.array(np.ma.getdata(column).astype(np.int64),
                                             pa.int64(), mask=mask)
        elif column.dtype.kind == "f":
            columns[name.lower()] = np.ma.filled(np.ma.asarray(column, dtype=np.float64), np.nan)
    return pa.table(columns)
