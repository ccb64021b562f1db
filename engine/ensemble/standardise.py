"""Runs of different telescopes and filters on one magnitude system: `merge_runs`.

Each run's light curves are on its own ensemble system: a star's magnitude there is its
instrumental magnitude at the run's mean zero point. Over the stars the runs share, the
run-mean magnitudes obey (Honeycutt 1992's inhomogeneous ensemble, with colour terms)

    m[r, g] = S[g] + O[r] + sum_d K[r, d] P_d(c[g]) + noise,     P_d(c) = ((c - c0) / cs)^d

with S the stars' standard magnitudes, O each run's offset, K its colour terms (d = 1..D_r,
D_r = colour_degree, lowered for runs with few stars of known colour) and c the BP-RP colour.
With a reference catalogue (G and BP-RP), rows S[g] = G[g] +- catalogue_error_mag tie the
system to the catalogue's G; without one, the run with most stars is the reference (its O and
K are 0). All unknowns are fitted jointly by sparse weighted least squares (normal equations,
scipy.sparse; every observation is one row with 2 + D_r non-zeros); stars whose run means
disagree beyond their errors (variables) get an extra variance estimated from their scatter,
and observations beyond merge_clip_sigma are left out, until nothing changes.

Every light-curve row then gets mag_std = mag - O[r] - sum_d K[r, d] P_d(c) and an error that
includes the transformation's covariance. Stars of unknown colour are transformed at the median
colour c0 (noted in the report). Runs share stars through a global star id: the star tables'
star_id when every run has one, else positions (ra, dec) matched within match_radius_arcsec
(engine.ensemble.network_stars).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine.ensemble.io import jsonable
from engine.ensemble.lightcurve import RunLightCurve
from engine.ensemble.network_stars import MAG_COLUMNS, NetworkStars
from engine.errors import EngineValueError
from engine.io.catalogue import BANDS, filter_band
from engine.io.schemas import LIGHTCURVES_SCHEMA
from engine.settings.ensemble import EnsembleConfig

__all__ = ["merge_runs"]


def _basis(colour, degree, c0, cs):
    """(n, degree) matrix of P_d(c) = ((c - c0) / cs)^d, d = 1..degree."""
    x = (np.asarray(colour, dtype=np.float64) - c0) / cs
    return np.column_stack([x ** d for d in range(1, degree + 1)]) if degree else \
        np.zeros((x.shape[0], 0))


def merge_runs(runs, reference_catalogue: pa.Table | None = None,
               config: EnsembleConfig | None = None) -> tuple[pa.Table, dict]:
    """Put the light curves of several runs on one magnitude system (see the module docstring).

    Parameters
    ----------
    runs : sequence of RunLightCurve (build_run_lightcurve's results).
    reference_catalogue : optional pyarrow.Table with ra / dec in degrees (or a star_id matching
        the star tables'), a magnitude (G, phot_g_mean_mag, mag, ...), a BP-RP colour, and
        optionally one `mag_<band>` column per band (`ReferenceCatalogue.to_table()`, from
        `engine.io.catalogue.read_catalogue`). With bands, each run is standardised to the
        band of its filter (matched by name), or, when the filter names none ('Clear', a wheel
        number), to the band whose zero point and colour term fit best (the detected filter).
    config : EnsembleConfig (match_radius_arcsec, colour_degree, merge_floor_mag,
        catalogue_error_mag, merge_clip_sigma).

    Returns
    -------
    (table, diagnostics): every run's rows in LIGHTCURVES_SCHEMA with star_id made global,
    mag_std / mag_std_err filled and mag_std_system saying on which system; diagnostics for
    report.json (per-run offsets, colour terms and band, how stars were matched, the agreement
    of constant stars across runs).
    """
    config = EnsembleConfig() if config is None else config
    runs = list(runs)
    _check_runs(runs, reference_catalogue)
    bands = _catalogue_bands(reference_catalogue)
    if not bands:
        return _merge(runs, reference_catalogue, config, "G" if reference_catalogue else None)
    return _merge_by_band(runs, reference_catalogue, bands, config)


def _check_runs(runs: list, reference_catalogue) -> None:
    if not runs:
        raise EngineValueError("merge_runs needs at least one run")
    for run in runs:
        if not isinstance(run, RunLightCurve):
            raise EngineValueError(f"merge_runs takes RunLightCurve results, got "
                                   f"{type(run).__name__}")
    ids = [run.run_id for run in runs]
    if len(set(ids)) != len(ids):
        raise EngineValueError(f"run ids must be unique, got {ids}")
    if reference_catalogue is not None and not isinstance(reference_catalogue, pa.Table):
        raise EngineValueError("reference_catalogue must be a pyarrow.Table "
                               "(engine.io.catalogue.read_catalogue reads a file)")


def _merge_by_band(runs: list, catalogue: pa.Table, bands: dict, config: EnsembleConfig):
    """Each run standardised to its band (`_run_band`): one merge per band, the rows back in
    the runs' order, and the diagnostics of every band."""
    chosen = {run.run_id: _run_band(run, catalogue, bands, config) for run in runs}
    tables, groups = {}, {}
    for band in sorted({band for band, _ in chosen.values()}):
        members = [run for run in runs if chosen[run.run_id][0] == band]
        table, diagnostics = _merge(members, _band_catalogue(catalogue, bands[band]),
                                    config, band)
        groups[band] = diagnostics
        for run in members:
            tables[run.run_id] = table.filter(pc.equal(table.column("run_id"), run.run_id))
    first = groups[min(groups)]
    diagnostics = dict(first)
    diagnostics["system"] = "reference catalogue, each run in its filter's band"
    diagnostics["runs"] = [row for group in groups.values() for row in group["runs"]]
    for row in diagnostics["runs"]:
        band, how = chosen[row["run_id"]]
        row["band"], row["band_source"] = band, how
    diagnostics["bands"] = groups
    return pa.concat_tables([tables[run.run_id] for run in runs]), jsonable(diagnostics)


def _catalogue_bands(catalogue: pa.Table | None) -> dict[str, str]:
    """Band -> column of the catalogue's per-band magnitudes (`mag_<band>`)."""
    if catalogue is None:
        return {}
    return {name[4:]: name for name in catalogue.column_names
            if name.startswith("mag_") and name[4:] in BANDS}


def _band_catalogue(catalogue: pa.Table, column: str) -> pa.Table:
    """The catalogue with one band's magnitudes as its magnitude column."""
    keep = [name for name in catalogue.column_names
            if not name.startswith("mag_") and name not in MAG_COLUMNS]
    return catalogue.select(keep).append_column("mag", catalogue.column(column))


def _run_band(run, catalogue: pa.Table, bands: dict[str, str], config: EnsembleConfig):
    """(band, how) for a run: its filter's band when the catalogue has it, else the detected
    band: the one its stars' instrumental magnitudes follow most closely.

    A camera's colour term against its own band is small (a few hundredths of a magnitude per
    magnitude of colour); against a neighbouring band it is the bands' difference, several
    tenths. So the detection scores each band by the robust scatter of (instrumental - catalogue)
    over the run's stars after one offset, with no colour term to absorb a wrong band (a fitted,
    clipped transformation would flatter every band alike)."""
    named = filter_band(run.diagnostics.get("filter"))
    if named in bands:
        return named, "filter name"
    if len(bands) == 1:
        return next(iter(bands)), "the catalogue's only band"
    scores = {}
    for band, column in bands.items():
        score = _band_scatter(run, _band_catalogue(catalogue, column), config)
        if score is not None:
            scores[band] = score
    if not scores:
        raise EngineValueError(f"run {run.run_id!r}: too few stars with catalogue magnitudes "
                               "to tell its band")
    best = min(scores, key=scores.get)
    return best, (f"detected (filter {run.diagnostics.get('filter')!r}; scatter of "
                  "instrumental - catalogue by band: "
                  + ", ".join(f"{b} {v:.3f}" for b, v in sorted(scores.items(),
                                                                key=lambda kv: kv[1])) + " mag)")


def _band_scatter(run, catalogue: pa.Table, config: EnsembleConfig) -> float | None:
    """1.4826 x the median absolute deviation of (run mean - catalogue) over the run's
    well-measured stars in one band, or None with fewer than 5 of them."""
    stars = NetworkStars([run], catalogue, config)
    reference = stars.catalogue_mag[stars.global_index]
    use = ((stars.role != "target") & np.isfinite(stars.mag) & np.isfinite(reference)
           & (stars.frames >= 3))
    if np.count_nonzero(use) < 5:
        return None
    difference = stars.mag[use] - reference[use]
    return float(1.4826 * np.median(np.abs(difference - np.median(difference))))


def _merge(runs, catalogue: pa.Table | None, config: EnsembleConfig, band: str | None):
    """merge_runs for runs that share one standard band (catalogue's `mag`), or none."""
    stars = NetworkStars(runs, catalogue, config)
    solution = _solve(stars, len(runs), catalogue is not None, config)
    system = (f"catalogue {band}" if catalogue is not None
              else f"run {runs[solution['reference']].run_id}")
    table = _standardised_table(runs, stars, solution, system)
    diagnostics = _merge_diagnostics(runs, stars, solution, catalogue is not None, band)
    return table, jsonable(diagnostics)


def _colour_scale(colour) -> tuple[float, float]:
    """(c0, cs): the median and spread of the known colours, the P_d basis' centre and scale."""
    known = np.isfinite(colour)
    c0 = float(np.median(colour[known])) if known.any() else 0.0
    cs = float(np.std(colour[known])) if known.sum() > 1 else 1.0
    return c0, (cs if cs > 0 else 1.0)


def _colour_degrees(colour, g_obs, r_obs, n_runs: int, config: EnsembleConfig) -> np.ndarray:
    """Each run's colour-term degree: colour_degree, lowered to one per 8 stars of known
    colour, and 0 when their colours span less than 0.1 mag."""
    degree = np.zeros(n_runs, dtype=np.int64)
    for r in range(n_runs):
        mine = g_obs[r_obs == r]
        coloured = np.isfinite(colour[mine])
        n_col = int(coloured.sum())
        spread = float(np.std(colour[mine][coloured])) if n_col > 1 else 0.0
        degree[r] = min(config.colour_degree, n_col // 8) if spread >= 0.1 else 0
    return degree


def _run_columns(degree, reference) -> tuple[list, int]:
    """Each run's parameter columns (offset, then colour terms) and their total; the
    reference run has none (it fixes the gauge when there is no catalogue)."""
    run_columns = []
    column = 0
    for r, d in enumerate(degree):
        if r == reference:
            run_columns.append(np.zeros(0, dtype=np.int64))
        else:
            run_columns.append(np.arange(column, column + 1 + d))
            column += 1 + d
    return run_columns, column


def _design_matrix(r_obs, star_column, obs_colour, cat_rows, run_columns, degree, c0, cs,
                   n_run_params: int, n_unknowns: int):
    """Sparse rows: each observation (its star, its run's offset and colour terms), then each
    catalogue magnitude (its star alone). Observations whose star has no usable colour cannot
    take colour terms: they fit offsets."""
    from scipy import sparse

    rows, cols, vals = [], [], []
    for n_row, (r, sc, c) in enumerate(zip(r_obs, star_column, obs_colour)):
        rows.append(n_row)
        cols.append(n_run_params + sc)
        vals.append(1.0)
        if run_columns[r].size:
            rows.append(n_row)
            cols.append(run_columns[r][0])
            vals.append(1.0)
            if degree[r] and np.isfinite(c):
                basis = _basis([c], degree[r], c0, cs)[0]
                for d in range(degree[r]):
                    rows.append(n_row)
                    cols.append(run_columns[r][1 + d])
                    vals.append(basis[d])
    n_obs = r_obs.size
    for k, sc in enumerate(cat_rows):
        rows.append(n_obs + k)
        cols.append(n_run_params + sc)
        vals.append(1.0)
    return sparse.csr_matrix((vals, (rows, cols)), shape=(n_obs + cat_rows.size, n_unknowns))


def _star_extra_variance(residual, sigma2, keep, extra, star_column, n_stars: int):
    """Per-star variance beyond the errors (a moment step), from stars seen in several runs."""
    u = np.where(keep, 1.0 / (sigma2 + extra[star_column]) ** 2, 0.0)
    num = np.bincount(star_column, u * (residual ** 2 - sigma2), minlength=n_stars)
    den = np.bincount(star_column, u, minlength=n_stars)
    runs_per_star = np.bincount(star_column, keep, minlength=n_stars)
    with np.errstate(all="ignore"):
        return np.where((runs_per_star >= 2) & (den > 0), np.maximum(num / den, 0.0), 0.0)


def _iterate(design, y, sigma2, star_column, n_stars: int, config: EnsembleConfig):
    """Weighted least squares by the normal equations, re-estimating the stars' extra variance
    and clipping beyond merge_clip_sigma until nothing changes (at most 15 times).
    Returns (solution, LU factor or None, keep, extra, ok)."""
    from scipy import sparse
    from scipy.sparse.linalg import splu

    n_obs = star_column.size
    n_cat = y.size - n_obs
    n_unknowns = design.shape[1]
    keep = np.ones(y.size, dtype=bool)
    extra = np.zeros(n_stars)
    solution = np.zeros(n_unknowns)
    factor = None
    for _ in range(15):
        star_extra = np.concatenate([extra[star_column], np.zeros(n_cat)])
        w = np.where(keep, 1.0 / (sigma2 + star_extra), 0.0)
        normal = (design.T @ sparse.diags(w) @ design).tocsc()
        normal = normal + sparse.identity(n_unknowns, format="csc") * 1e-12
        try:
            factor = splu(normal)
        except RuntimeError:
            return solution, factor, keep, extra, False
        solution = factor.solve(design.T @ (w * y))
        residual = y - design @ solution
        new_extra = _star_extra_variance(residual[:n_obs], sigma2[:n_obs], keep[:n_obs], extra,
                                         star_column, n_stars)
        total = sigma2 + np.concatenate([new_extra[star_column], np.zeros(n_cat)])
        new_keep = residual ** 2 <= config.merge_clip_sigma ** 2 * total
        changed = not np.array_equal(new_keep, keep) or (
            new_extra.size > 0 and np.max(np.abs(new_extra - extra)) > 1e-10)
        keep, extra = new_keep, new_extra
        if not changed:
            break
    return solution, factor, keep, extra, True


def _run_covariances(factor, run_columns, n_unknowns: int) -> list:
    """Each run's block of the inverse normal matrix (its parameters' covariance)."""
    covariance = []
    for idx in run_columns:
        if idx.size == 0 or factor is None:
            covariance.append(np.zeros((idx.size, idx.size)))
            continue
        unit = np.zeros((n_unknowns, idx.size))
        unit[idx, np.arange(idx.size)] = 1.0
        covariance.append(factor.solve(unit)[idx])
    return covariance


def _solve(stars: NetworkStars, n_runs: int, with_catalogue: bool, config: EnsembleConfig) -> dict:
    colour = stars.global_colour
    c0, cs = _colour_scale(colour)
    obs = np.flatnonzero((stars.role != "target") & np.isfinite(stars.mag)
                         & np.isfinite(stars.mag_err) & (stars.frames >= 3))
    g_obs = stars.global_index[obs]
    r_obs = stars.run[obs]
    degree = _colour_degrees(colour, g_obs, r_obs, n_runs, config)
    counts = np.bincount(r_obs, minlength=n_runs)
    reference = None if with_catalogue else int(np.argmax(counts))
    run_columns, n_run_params = _run_columns(degree, reference)
    used_stars, star_column = np.unique(g_obs, return_inverse=True)
    n_unknowns = n_run_params + used_stars.size
    cat_rows = np.flatnonzero(np.isfinite(stars.catalogue_mag[used_stars])) if with_catalogue \
        else np.zeros(0, dtype=np.int64)
    design = _design_matrix(r_obs, star_column, colour[g_obs], cat_rows, run_columns, degree,
                            c0, cs, n_run_params, n_unknowns)
    y = np.concatenate([stars.mag[obs], stars.catalogue_mag[used_stars][cat_rows]])
    sigma2 = np.concatenate([stars.mag_err[obs] ** 2 + config.merge_floor_mag ** 2,
                             np.full(cat_rows.size, config.catalogue_error_mag ** 2)])
    solution, factor, keep, extra, ok = _iterate(design, y, sigma2, star_column,
                                                 used_stars.size, config)
    covariance = _run_covariances(factor, run_columns, n_unknowns)
    residual = y - design @ solution
    n_obs = obs.size
    return {"solution": solution, "sigma2": sigma2[:n_obs] + extra[star_column],
            "run_columns": run_columns, "degree": degree, "c0": c0, "cs": cs,
            "covariance": covariance, "reference": reference, "ok": ok, "obs": obs,
            "g_obs": g_obs, "r_obs": r_obs, "keep": keep[:n_obs], "residual": residual[:n_obs],
            "used_stars": used_stars, "extra": extra, "n_run_params": n_run_params,
            "cat_rows": cat_rows, "cat_keep": keep[n_obs:], "cat_residual": residual[n_obs:]}


def _transform(solution: dict, r: int, colour):
    """(offset + colour terms, its variance) of run r at each colour (NaN -> c0)."""
    colour = np.asarray(colour, dtype=np.float64)
    colour = np.where(np.isfinite(colour), colour, solution["c0"])
    idx = solution["run_columns"][r]
    if idx.size == 0:
        return np.zeros(colour.shape), np.zeros(colour.shape)
    degree = solution["degree"][r]
    g = np.column_stack([np.ones(colour.shape[0]),
                         _basis(colour, degree, solution["c0"], solution["cs"])])
    params = solution["solution"][idx]
    cov = solution["covariance"][r]
    return g @ params, np.einsum("ij,jk,ik->i", g, cov, g)


def _standardised_table(runs, stars: NetworkStars, solution: dict, system: str) -> pa.Table:
    tables = []
    for r, run in enumerate(runs):
        t = run.table
        mine = np.flatnonzero(stars.run == r)
        lookup = {int(s): int(stars.global_index[i]) for s, i in zip(stars.star[mine], mine)}
        local = np.asarray(t.column("star").to_numpy(), dtype=np.int64)
        gidx = np.array([lookup.get(int(s), -1) for s in local], dtype=np.int64)
        if np.any(gidx < 0):
            raise EngineValueError(f"run {run.run_id!r}: light-curve stars missing from its "
                                   "star summary")
        colour = stars.global_colour[gidx]
        offset, variance = _transform(solution, r, colour)
        mag = np.asarray(t.column("mag").to_numpy(zero_copy_only=False), dtype=np.float64)
        err = np.asarray(t.column("mag_err").to_numpy(zero_copy_only=False), dtype=np.float64)
        if not solution["ok"]:
            offset = np.full(offset.shape, np.nan)
        t = t.set_column(t.column_names.index("star_id"), LIGHTCURVES_SCHEMA.field("star_id"),
                         pa.array(stars.global_id[gidx], pa.int64()))
        t = t.set_column(t.column_names.index("mag_std"), LIGHTCURVES_SCHEMA.field("mag_std"),
                         pa.array(mag - offset, pa.float64()))
        t = t.set_column(t.column_names.index("mag_std_err"),
                         LIGHTCURVES_SCHEMA.field("mag_std_err"),
                         pa.array(np.sqrt(err ** 2 + variance), pa.float64()))
        t = t.set_column(t.column_names.index("mag_std_system"),
                         LIGHTCURVES_SCHEMA.field("mag_std_system"),
                         pa.array([system] * t.num_rows, pa.string()))
        tables.append(t)
    return pa.concat_tables(tables)


def _rms(values):
    return float(np.sqrt(np.mean(values ** 2))) if values.size else None


def _merge_diagnostics(runs, stars: NetworkStars, solution: dict, with_catalogue: bool,
                      band: str | None) -> dict:
    per_run = []
    std_mean = np.full(stars.mag.size, np.nan)
    for r, run in enumerate(runs):
        mine = np.flatnonzero(stars.run == r)
        offset, variance = _transform(solution, r, stars.global_colour[stars.global_index[mine]])
        std_mean[mine] = stars.mag[mine] - offset
        idx = solution["run_columns"][r]
        params = solution["solution"][idx] if idx.size else np.zeros(0)
        errors = np.sqrt(np.diag(solution["covariance"][r])) if idx.size else np.zeros(0)
        in_fit = solution["r_obs"] == r
        used = in_fit & solution["keep"]
        precise = stars.mag_err[solution["obs"]] < 0.005
        per_run.append({
            "run_id": run.run_id, "filter": run.diagnostics.get("filter"),
            "site": run.diagnostics.get("site"),
            "reference": solution["reference"] == r,
            "offset_mag": float(params[0]) if params.size else 0.0,
            "offset_err_mag": float(errors[0]) if errors.size else 0.0,
            "colour_degree": int(solution["degree"][r]),
            "colour_terms_mag": [float(p) for p in params[1:]],
            "colour_terms_err_mag": [float(e) for e in errors[1:]],
            "stars_fitted": int(used.sum()),
            "stars_clipped": int((in_fit & ~solution["keep"]).sum()),
            "residual_rms_mag": _rms(solution["residual"][used & precise]),
            "residual_chi2_per_star": (float(np.mean(solution["residual"][used] ** 2
                                                     / solution["sigma2"][used]))
                                       if used.any() else None),
        })
    # Agreement: run means of the same constant star, standardised, across runs.
    # Stars constant within every run (excess scatter at most twice the expected error) are
    # the judges; stars whose run means disagree beyond their errors are listed apart.
    spreads = []
    variables = [int(stars.global_id[g]) for g, e in zip(solution["used_stars"],
                                                         solution["extra"]) if e > 0.0]
    within = (stars.excess <= 2.0 * stars.expected) | ~np.isfinite(stars.excess)
    for gi in np.unique(stars.global_index):
        rows = np.flatnonzero((stars.global_index == gi) & np.isfinite(std_mean)
                              & (stars.role != "target") & (stars.mag_err < 0.002))
        if np.unique(stars.run[rows]).size < 2 or not within[rows].all():
            continue
        spreads.append(float(np.ptp(std_mean[rows])))
    spreads = np.array(spreads)
    agreement = {"stars": int(spreads.size),
                 "median_spread_mag": float(np.median(spreads)) if spreads.size else None,
                 "p95_spread_mag": float(np.quantile(spreads, 0.95)) if spreads.size else None,
                 "max_spread_mag": float(spreads.max()) if spreads.size else None,
                 "basis": "max - min of the standardised run means of stars seen by >= 2 runs, "
                          "mean error < 2 mmag, excess scatter within each run at most twice "
                          "the expected error"}
    unknown_colour = int(np.sum(~np.isfinite(stars.global_colour)))
    return {
        "system": (f"reference catalogue ({band})" if with_catalogue else
                   f"run {runs[solution['reference']].run_id} (reference)"),
        "star_matching": stars.how, "stars": int(stars.global_id.size),
        "catalogue_matches": int(stars.catalogue_matches),
        "catalogue_rows_clipped": int((~solution["cat_keep"]).sum()),
        "colour_basis": {"c0": solution["c0"], "scale": solution["cs"],
                         "form": "P_d(c) = ((BP-RP - c0) / scale)^d"},
        "solved": bool(solution["ok"]),
        "runs": per_run, "agreement": agreement,
        "stars_inconsistent_across_runs": variables[:100],
        "stars_without_colour": unknown_colour,
    }
