"""The network night on the sky: runs without a WCS solved against a catalogue or from one site
that has one, the target found by RA/Dec in every run, one star identity, one merged and
standardised light curve."""

import dataclasses
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from engine.cli import main
from engine.demo import network_config
from engine.errors import EngineError
from engine.io.catalogue import gaia_cache_path, gaia_query
from engine.pipeline import reduce
from engine.simulation import PRESETS, simulate
from engine.settings import SkyConfig
from engine.sky import POINTING_MARGIN_DEG, catalogue_fields

PRESET = "tiny"


def _night(base, wcs_sites=()):
    """The tiny network night with a header WCS only at `wcs_sites`."""
    preset = PRESETS[PRESET]
    sites = tuple(dataclasses.replace(site, camera=dataclasses.replace(
        site.camera, wcs=site.name in wcs_sites)) for site in preset.sites)
    return simulate(base / "raw", preset=dataclasses.replace(preset, sites=sites), seed=3).truth


def _gaia_catalogue(truth, path, *, drop_target=False):
    """The simulator's stars as a Gaia DR3 extract (source ids large, like Gaia's)."""
    stars = [s for s in truth["stars"] if not (drop_target and s["is_target"])]
    table = pa.table({
        "source_id": pa.array([4_000_000_000_000 + s["id"] for s in stars], pa.int64()),
        "ra": [s["ra_deg"] for s in stars], "dec": [s["dec_deg"] for s in stars],
        "phot_g_mean_mag": [s["mag_g"] for s in stars], "bp_rp": [s["bp_rp"] for s in stars],
    })
    pacsv.write_csv(table, path)
    return path


def _angular_arcsec(ra1, dec1, ra2, dec2):
    ra1, dec1, ra2, dec2 = (np.radians(v) for v in (ra1, dec1, ra2, dec2))
    c = np.sin(dec1) * np.sin(dec2) + np.cos(dec1) * np.cos(dec2) * np.cos(ra1 - ra2)
    return np.degrees(np.arccos(np.clip(c, -1, 1))) * 3600.0


def _check_targets(out, truth, result):
    """Every run found the target, and its star sits on the target's true position."""
    lightcurves = result.lightcurves
    stars = pq.read_table(out / "stars.parquet").to_pylist()
    ra0, dec0 = truth["target"]["ra_deg"], truth["target"]["dec_deg"]
    for run_id in result.runs:
        assert "skipped" not in result.report["runs"][run_id], result.report["runs"][run_id]
        mine = pc.and_(pc.equal(lightcurves.column("run_id"), run_id),
                       pc.equal(lightcurves.column("role"), "target"))
        star = lightcurves.filter(mine).column("star")[0].as_py()
        row = next(s for s in stars if s["run_id"] == run_id and s["star"] == star)
        assert _angular_arcsec(row["ra"], row["dec"], ra0, dec0) < 1.5, run_id
    return stars


def test_catalogue_solves_every_run_without_a_wcs_and_the_runs_merge(tmp_path):
    truth = _night(tmp_path)
    catalogue = _gaia_catalogue(truth, tmp_path / "gaia.csv")
    target = (truth["target"]["ra_deg"], truth["target"]["dec_deg"])
    out = tmp_path / "out"
    result = reduce([tmp_path / "raw"], out, target=target, catalogue=catalogue,
                    config=network_config(truth))
    assert len(result.runs) == 3
    stars = _check_targets(out, truth, result)
    for run_id in result.runs:
        sky = result.report["runs"][run_id]["sky"]["solution"]
        assert sky["method"] == "catalogue", sky
        assert sky["rms_arcsec"] < 1.0
        # The solution as a FITS header astropy reads back.
        with warnings.catch_warnings():  # a header without data: NAXIS = 0
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(fits.getheader(out / "sky" / f"{run_id}.wcs.fits"))
        assert wcs.has_celestial
    # One identity: the target has the catalogue's id in every run.
    target_id = 4_000_000_000_000 + truth["target"]["id"]
    ids = pq.read_table(out / "lightcurves.parquet").filter(
        pc.equal(pc.field("role"), "target")).column("star_id").to_numpy()
    assert set(ids.tolist()) == {target_id}
    # Stars seen by several runs carry the catalogue's ids and magnitudes.
    matched = [s for s in stars if s["catalogue_id"] is not None]
    assert len(matched) > 0.5 * len(stars)
    # The merge ran against the catalogue: standardised magnitudes are filled.
    assert "skipped" not in result.report["merge"], result.report["merge"]
    mag_std = pq.read_table(out / "lightcurves.parquet", columns=["mag_std", "role"])
    target_std = mag_std.filter(pc.equal(mag_std.column("role"), "target")).column("mag_std")
    assert np.isfinite(target_std.to_numpy(zero_copy_only=False)).mean() > 0.8
    json.loads((out / "report.json").read_text())  # the report is plain JSON


def test_one_site_with_a_wcs_anchors_the_others_without_a_catalogue(tmp_path):
    truth = _night(tmp_path, wcs_sites=("negev",))
    target = (truth["target"]["ra_deg"], truth["target"]["dec_deg"])
    out = tmp_path / "out"
    result = reduce([tmp_path / "raw"], out, target=target, config=network_config(truth))
    methods = {run_id: result.report["runs"][run_id]["sky"]["solution"]["method"]
               for run_id in result.runs}
    anchor = next(run_id for run_id in result.runs if "negev" in run_id)
    assert methods[anchor] == "header"
    assert all(m.startswith("run ") or m == "reference" for r, m in methods.items()
               if r != anchor), methods
    _check_targets(out, truth, result)
    # The runs share stars through their sky positions: the merge ties them.
    assert "skipped" not in result.report["merge"], result.report["merge"]


def _shift_header_wcs(raw, site, arcsec):
    """Move one site's header WCS north by `arcsec` (CRVAL2), as a bad plate solve would."""
    shifted = 0
    for path in sorted((raw / site).rglob("*")):
        if not path.is_file():
            continue
        with fits.open(path, mode="update") as hdul:
            for hdu in hdul:
                if "CRVAL2" in hdu.header:
                    hdu.header["CRVAL2"] += arcsec / 3600.0
                    shifted += 1
    assert shifted >= 5, shifted
    return shifted


def test_a_header_wcs_that_disagrees_with_the_other_runs_is_refused_and_solved_again(tmp_path):
    truth = _night(tmp_path, wcs_sites=("negev", "lapalma", "florida"))
    _shift_header_wcs(tmp_path / "raw", "florida", 30.0)
    target = (truth["target"]["ra_deg"], truth["target"]["dec_deg"])
    out = tmp_path / "out"
    result = reduce([tmp_path / "raw"], out, target=target, config=network_config(truth))
    frames = pq.read_table(out / "frames.parquet", columns=["run_id", "site"]).to_pylist()
    site_of = {row["run_id"]: row["site"] for row in frames if row["run_id"] in result.runs}
    assert sorted(site_of.values()) == ["florida", "lapalma", "negev"], site_of
    for run_id in result.runs:
        sky = result.report["runs"][run_id]["sky"]
        notes = " | ".join(sky["notes"])
        if site_of[run_id] == "florida":
            assert sky["solution"]["method"].startswith("run "), sky
            assert "header WCS refused" in notes, notes
        else:  # the two good headers agree with each other and are kept as they are
            assert sky["solution"]["method"] == "header", sky
            assert "header WCS agrees with run" in notes, notes
            assert "refused" not in notes, notes
    # The re-solved run finds the target on its true position (a 30 arcsec error would not).
    _check_targets(out, truth, result)
    assert "skipped" not in result.report["merge"], result.report["merge"]


def test_a_run_that_cannot_be_solved_is_skipped_and_the_others_go_on(tmp_path):
    truth = _night(tmp_path, wcs_sites=("negev",))
    target = (truth["target"]["ra_deg"], truth["target"]["dec_deg"])
    # Only negev's target pixel is known: without a catalogue, the other runs are anchored;
    # a catalogue far from the field makes every catalogue solve fail, and the header WCS
    # that does not match it is refused: nothing is solved, every run is reported.
    far = pa.table({"ra": [10.0, 10.1, 10.2], "dec": [-40.0, -40.1, -40.2],
                    "mag": [10.0, 11.0, 12.0]})
    pacsv.write_csv(far, tmp_path / "far.csv")
    with pytest.raises(EngineError, match="no run gave a light curve"):
        reduce([tmp_path / "raw"], tmp_path / "out", target=target,
               catalogue=tmp_path / "far.csv", config=network_config(truth))
    report = tmp_path / "out" / "reduce.log"
    assert "target not found" in report.read_text()
    # What was measured is kept for a look at the field: every run's stars and photometry.
    stars = pq.read_table(tmp_path / "out" / "stars.parquet")
    photometry = pq.read_table(tmp_path / "out" / "photometry.parquet")
    assert set(stars.column("run_id").to_pylist()) == set(photometry.column("run_id").to_pylist())
    assert len(set(stars.column("run_id").to_pylist())) == len(truth["runs"])


def test_catalogue_gaia_on_the_command_line_reads_each_runs_field_from_the_cache(
        tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "astroquery", None)  # no query may be sent
    simulation = simulate(tmp_path / "raw", preset=PRESET, seed=3)
    truth = simulation.truth
    ra0, dec0 = truth["target"]["ra_deg"], truth["target"]["dec_deg"]
    out = tmp_path / "out"
    args = ["reduce", str(tmp_path / "raw"), "--out", str(out), "--catalogue", "gaia",
            "--target-ra", str(ra0), "--target-dec", str(dec0)]
    # Nothing cached: the fetch needs astroquery. It stops after ingest, before calibration.
    assert main(args) == 2
    assert "photometry-engine[gaia]" in capsys.readouterr().err
    assert (out / "frames.parquet").is_file() and not (out / "calibrated").exists()
    # Each run's field, from its header pointing and field size: the archive's answer for it
    # (the simulator's Gaia extract) is put where the fetch keeps it.
    fields = catalogue_fields(pq.read_table(out / "frames.parquet"))
    assert len(fields) == 3
    gaia = pacsv.read_csv(simulation.catalogue_path)
    for ra, dec, radius in fields.values():
        assert _angular_arcsec(ra, dec, ra0, dec0) / 3600.0 < radius - POINTING_MARGIN_DEG
        path = gaia_cache_path(gaia_query(ra, dec, radius,
                                          mag_limit=SkyConfig().gaia_mag_limit),
                               out / "catalogues")
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(gaia, path)
    assert main(args) == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert len(report["runs"]) == 3
    for run in report["runs"].values():
        assert "skipped" not in run, run
        # Solved against the fetched catalogue, or a header WCS checked against it (negev).
        solution = run["sky"]["solution"]
        assert solution["method"] in ("catalogue", "header") and solution["n_matched"] >= 6, \
            run["sky"]
    # The target carries the catalogue's id in every run.
    target_ids = pq.read_table(out / "lightcurves.parquet").filter(
        pc.equal(pc.field("role"), "target")).column("star_id").to_numpy()
    assert set(target_ids.tolist()) == {1_000_000 + truth["target"]["id"]}


def test_a_bad_catalogue_stops_before_any_work(tmp_path):
    (tmp_path / "raw").mkdir()
    bad = tmp_path / "bad.csv"
    bad.write_text("name,flux\nA,1\n")
    with pytest.raises(EngineError, match="bad.csv"):
        reduce([tmp_path / "raw"], tmp_path / "out", catalogue=bad)
    assert not (tmp_path / "out").exists()


def test_each_run_is_standardised_to_its_filters_band_and_a_clear_filter_is_detected(tmp_path):
    truth = _night(tmp_path)
    # The La Palma observer wrote 'Clear' although a V filter was in: the band is detected.
    for path in (tmp_path / "raw").rglob("*.fits"):
        if "lapalma" in str(path) and "LIGHT" in str(path):
            with fits.open(path, mode="update") as hdul:
                hdul[0].header["FILTER"] = "Clear"
    stars = truth["stars"]
    table = pa.table({
        "source_id": pa.array([s["id"] for s in stars], pa.int64()),
        "ra": [s["ra_deg"] for s in stars], "dec": [s["dec_deg"] for s in stars],
        "phot_g_mean_mag": [s["mag_g"] for s in stars], "bp_rp": [s["bp_rp"] for s in stars],
        **{f"{band.lower()}_jkc_mag": [s["mags"][band] for s in stars] for band in "VRI"},
    })
    pq.write_table(table, tmp_path / "gaia_synthetic.parquet")
    target = (truth["target"]["ra_deg"], truth["target"]["dec_deg"])
    out = tmp_path / "out"
    result = reduce([tmp_path / "raw"], out, target=target,
                    catalogue=tmp_path / "gaia_synthetic.parquet", config=network_config(truth))
    bands = {row["run_id"]: (row["band"], row["band_source"])
             for row in result.report["merge"]["runs"]}
    expected = {"negev": "R", "lapalma": "V", "florida": "I"}
    for run_id, (band, how) in bands.items():
        site = next(name for name in expected if name in run_id)
        assert band == expected[site], (run_id, band, how)
        assert how.startswith("detected") == (site == "lapalma"), how
    # Constant stars land on the catalogue's magnitudes in each run's band.
    lightcurves = pq.read_table(out / "lightcurves.parquet").to_pylist()
    truth_mag = {s["id"]: s["mags"] for s in stars if not s["is_variable"]}
    errors = []
    for run_id, (band, _) in bands.items():
        rows = [r for r in lightcurves if r["run_id"] == run_id and r["role"] == "comparison"
                and r["flags"] == 0 and r["star_id"] in truth_mag]
        assert rows and all(r["mag_std_system"] == f"catalogue {band}" for r in rows)
        for star_id in {r["star_id"] for r in rows}:
            values = [r["mag_std"] for r in rows if r["star_id"] == star_id]
            errors.append(np.median(values) - truth_mag[star_id][band])
    # 14 constant stars: the median of their errors itself scatters by ~0.01 mag between nights.
    assert np.median(np.abs(errors)) < 0.04, errors


def test_runs_whose_only_sky_information_is_a_pointing_ten_arcmin_off(tmp_path):
    """The demo's three cameras (one mirrored, one turned by 88 deg), no WCS anywhere, each
    mount reporting a pointing 10' off in its own direction: the catalogue puts every run on
    the sky and the target is found by RA/Dec."""
    preset = PRESETS["demo"]
    errors = {"negev": (600.0, 0.0), "lapalma": (-420.0, 430.0), "florida": (0.0, -600.0)}
    sites = tuple(dataclasses.replace(
        site, n_lights=4, n_bias=3, n_dark=3, n_flat=3,
        camera=dataclasses.replace(site.camera, wcs=False),
        header_pointing_error_arcsec=errors[site.name]) for site in preset.sites)
    simulation = simulate(tmp_path / "raw", preset=dataclasses.replace(preset, sites=sites),
                          seed=5)
    truth = simulation.truth
    target = (truth["target"]["ra_deg"], truth["target"]["dec_deg"])
    out = tmp_path / "out"
    result = reduce([tmp_path / "raw"], out, target=target, config=network_config(truth),
                    catalogue=simulation.catalogue_path)
    assert len(result.runs) == 3
    _check_targets(out, truth, result)
    for run_id in result.runs:
        solution = result.report["runs"][run_id]["sky"]["solution"]
        assert solution["method"] == "catalogue" and solution["rms_arcsec"] < 0.5, solution
        assert solution["mirrored"] == ("lapalma" in run_id)


BULGE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real" / \
    "saao_microlensing_bulge"


@pytest.mark.skipif(not BULGE.is_dir(), reason="../shared/data is not present")
def test_one_target_pixel_finds_the_target_on_every_night_of_a_crowded_series(tmp_path):
    """The real SAAO bulge series: 21 nights, no WCS, no catalogue, a pointing that moves by
    tens of pixels between nights in a crowded field. One --target-xy (in the first night's
    first frame) is matched star to star into every other night; the same pixel on another
    night would land on other stars."""
    result = reduce([BULGE], tmp_path / "out", target=("18:15:29", "-25:17:06"),
                    target_xy=(257.0, 243.5))
    assert len(result.runs) == 21
    first = min(result.runs)  # run ids carry the night: the first is the earliest
    for run_id in result.runs:
        notes = result.report["runs"][run_id]["sky"]["notes"]
        assert "skipped" not in result.report["runs"][run_id], notes
        if run_id == first:
            assert notes[-1].startswith("target found from pixel (257.0, 243.5)")
        else:
            assert f"matching the stars of run {first}" in notes[-1], notes
            assert float(notes[-1].split(", ")[-1].split(" px")[0]) < 1.0
