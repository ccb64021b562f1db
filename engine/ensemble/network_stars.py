"""Which stars the runs of a network share: `NetworkStars`, every run's star summary with
global star numbers, and their matches in a reference catalogue.

Runs share stars through the star tables' star_id when every run has one, else through
positions (ra, dec) matched one-to-one within match_radius_arcsec, run after run. A reference
catalogue is matched by star_id or by position; matched stars take its magnitude, colour and
(when matched by position) its id. Each global star gets one colour: the catalogue's, else the
mean of the runs'.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from engine.errors import EngineValueError

__all__ = ["MAG_COLUMNS", "NetworkStars"]

MAG_COLUMNS = ("G", "g", "phot_g_mean_mag", "Gmag", "mag")
_COLOUR_COLUMNS = ("BP_RP", "bp_rp", "BP-RP", "bp-rp", "colour", "color")
_RA_COLUMNS = ("ra", "RA", "ra_deg", "RA_ICRS")
_DEC_COLUMNS = ("dec", "DEC", "dec_deg", "DE_ICRS")
_ID_COLUMNS = ("source_id", "star_id", "id", "Source")


def _pick(table: pa.Table, names, what, required=True):
    for name in names:
        if name in table.column_names:
            return np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)
    if required:
        raise EngineValueError(f"reference catalogue lacks a {what} column (one of {list(names)})")
    return None


def _unit_vectors(ra, dec):
    ra, dec = np.radians(ra), np.radians(dec)
    return np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])


def _greedy_match(tree_points, query_points, radius_rad):
    """One-to-one nearest matches within radius: (query index, tree index) pairs."""
    from scipy.spatial import cKDTree

    if len(tree_points) == 0 or len(query_points) == 0:
        return []
    chord = 2.0 * np.sin(radius_rad / 2.0)
    tree = cKDTree(tree_points)
    pairs = []
    for q, found in enumerate(tree.query_ball_point(query_points, chord)):
        for t in found:
            pairs.append((float(np.sum((query_points[q] - tree_points[t]) ** 2)), q, t))
    pairs.sort()
    used_q, used_t, out = set(), set(), []
    for _, q, t in pairs:
        if q not in used_q and t not in used_t:
            used_q.add(q)
            used_t.add(t)
            out.append((q, t))
    return out


class NetworkStars:
    """Every run's star summary in one place, with global star numbers."""

    def __init__(self, runs, catalogue, config):
        tables = [run.stars for run in runs]
        self.run = np.concatenate([np.full(t.num_rows, r) for r, t in enumerate(tables)])
        col = lambda name: np.concatenate(  # noqa: E731
            [np.asarray(t.column(name).to_numpy(zero_copy_only=False)) for t in tables])
        self.star = col("star").astype(np.int64)
        self.star_id = col("star_id").astype(np.int64)
        self.role = np.concatenate([np.asarray(t.column("role").to_pylist(), dtype=object)
                                    for t in tables])
        self.ra, self.dec = col("ra").astype(float), col("dec").astype(float)
        self.colour = col("colour").astype(float)
        self.mag, self.mag_err = col("mag").astype(float), col("mag_err").astype(float)
        self.frames = col("frames").astype(np.int64)
        self.excess = col("excess").astype(float)
        self.expected = col("expected").astype(float)
        self.notes = []
        self._identify(runs, catalogue, config)

    def _identify(self, runs, catalogue, config):
        by_id = all(run.diagnostics.get("star_id_source") == "star table" for run in runs)
        radius = np.radians(config.match_radius_arcsec / 3600.0)
        positions = self._global_stars(by_id, len(runs), radius, config)
        n_global = self.global_id.size
        self.catalogue_mag = np.full(n_global, np.nan)
        self.catalogue_colour = np.full(n_global, np.nan)
        self.catalogue_matches = 0
        if catalogue is not None:
            self._match_catalogue(catalogue, by_id, positions, radius)
        # One colour per global star: the catalogue's, else the mean of the runs'.
        sums = np.zeros(n_global)
        counts = np.zeros(n_global)
        finite = np.isfinite(self.colour)
        np.add.at(sums, self.global_index[finite], self.colour[finite])
        np.add.at(counts, self.global_index[finite], 1)
        with np.errstate(all="ignore"):
            fallback = sums / counts
        self.global_colour = np.where(np.isfinite(self.catalogue_colour), self.catalogue_colour,
                                      fallback)

    def _global_stars(self, by_id: bool, n_runs: int, radius: float, config):
        """Set global_index / global_id / how: by star_id, by one run's star numbers, or by
        positions matched run after run. Returns the global stars' unit vectors when matched
        by position (else None)."""
        if by_id or not (np.all(np.isfinite(self.ra)) and np.all(np.isfinite(self.dec))):
            if not by_id and n_runs != 1:
                raise EngineValueError(
                    "merge_runs needs a global star_id in every run's star table, or ra and "
                    "dec for every star, to tell which stars the runs share")
            self.how = "star_id of the star tables" if by_id else "one run: its star numbers"
            ids, self.global_index = np.unique(self.star_id, return_inverse=True)
            self.global_id = ids.astype(np.int64)
            return None
        self.how = f"positions matched within {config.match_radius_arcsec:g} arcsec"
        self.global_index = np.full(self.star.size, -1, dtype=np.int64)
        points = _unit_vectors(self.ra, self.dec)
        positions = []
        for r in np.unique(self.run):
            rows = np.flatnonzero(self.run == r)
            known = np.array(positions) if positions else np.zeros((0, 3))
            taken = set()
            for q, t in _greedy_match(known, points[rows], radius):
                self.global_index[rows[q]] = t
                taken.add(q)
            for q in range(rows.size):
                if q not in taken:
                    self.global_index[rows[q]] = len(positions)
                    positions.append(points[rows[q]])
        self.global_id = np.arange(len(positions), dtype=np.int64)
        return positions

    def _catalogue_pairs(self, catalogue, by_id, positions, radius, cat_ids) -> list:
        """(global star, catalogue row) pairs: by star_id, else by position."""
        cat_ra = _pick(catalogue, _RA_COLUMNS, "ra", required=False)
        cat_dec = _pick(catalogue, _DEC_COLUMNS, "dec", required=False)
        if by_id and cat_ids is not None and "star_id" in catalogue.column_names:
            lookup = {int(v): k for k, v in enumerate(cat_ids)}
            return [(gi, lookup[int(i)]) for gi, i in enumerate(self.global_id)
                    if int(i) in lookup]
        if cat_ra is None or cat_dec is None:
            raise EngineValueError("the reference catalogue needs ra and dec (or a star_id "
                                   "column matching the star tables' star_id)")
        if positions is not None:
            return _greedy_match(_unit_vectors(cat_ra, cat_dec), np.array(positions), radius)
        n_global = self.global_id.size
        ra = np.full(n_global, np.nan)
        dec = np.full(n_global, np.nan)
        ra[self.global_index] = self.ra
        dec[self.global_index] = self.dec
        have = np.flatnonzero(np.isfinite(ra) & np.isfinite(dec))
        query = _unit_vectors(ra[have], dec[have])
        return [(int(have[q]), t) for q, t in
                _greedy_match(_unit_vectors(cat_ra, cat_dec), query, radius)]

    def _match_catalogue(self, catalogue, by_id, positions, radius):
        g = _pick(catalogue, MAG_COLUMNS, "magnitude (G)")
        c = _pick(catalogue, _COLOUR_COLUMNS, "colour (BP-RP)")
        cat_ids = _pick(catalogue, _ID_COLUMNS, "id", required=False)
        pairs = self._catalogue_pairs(catalogue, by_id, positions, radius, cat_ids)
        for gi, t in pairs:
            self.catalogue_mag[gi] = g[t]
            self.catalogue_colour[gi] = c[t]
        self.catalogue_matches = len(pairs)
        if positions is not None and cat_ids is not None:
            # Catalogue stars keep the catalogue's id; the others get ids above them all.
            new_ids = np.full(self.global_id.size, -1, dtype=np.int64)
            for gi, t in pairs:
                new_ids[gi] = int(cat_ids[t])
            top = int(np.nanmax(cat_ids)) + 1 if cat_ids.size else 0
            free = np.flatnonzero(new_ids < 0)
            new_ids[free] = top + np.arange(free.size)
            self.global_id = new_ids
