"""Exports of a light-curve table: the AAVSO Extended File Format (parsed back: header, rows,
values, dates, sanitised header strings) and CSV (read back with pyarrow.csv)."""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.time import Time
from pyarrow import csv

from engine.ensemble.schema import table_from_columns
from engine.errors import EngineValueError
from engine.flags import MeasurementFlag
from engine.io.exports import aavso_filter, write_aavso_extended, write_csv
from engine.io.schemas import LIGHTCURVES_SCHEMA
from engine.timing import site_location, utc_to_bjd_tdb

RA, DEC = 94.5933, 24.7867
SITE = site_location(34.76, 30.60, 875.0)
FRAMES = 12


def _night():
    """Two runs: 'A' (Rc, standardised), 'B' (g', ensemble magnitudes only). Per frame a target,
    two check stars and a comparison; a few flagged or missing target rows."""
    rng = np.random.default_rng(5)
    rows = {name: [] for name in ("run_id", "time_bjd_tdb", "star_id", "role", "flags", "filter",
                                  "frame", "star", "aperture", "airmass", "mag", "mag_err",
                                  "mag_std", "mag_std_err", "mag_std_system", "rel_flux",
                                  "rel_flux_err")}
    jd_utc = 2460659.55 + np.arange(FRAMES) * 0.002
    for run, band, start, standard in (("A", "Rc", 0.0, True), ("B", "g'", 0.01, False)):
        bjd = utc_to_bjd_tdb(jd_utc + start, RA, DEC, SITE)
        for k in range(FRAMES):
            for star_id, role in ((5, "target"), (1, "check"), (2, "check"), (7, "comparison")):
                mag = -9.0 - star_id * 0.3 + rng.normal(0, 0.01)
                flags = 0
                if role == "target" and k in (3, 8):
                    flags = int(MeasurementFlag.CLOUD)
                if role == "check" and star_id == 1 and k == 4:  # check missing on one frame
                    flags = int(MeasurementFlag.SATURATED)
                rows["run_id"].append(run)
                rows["time_bjd_tdb"].append(bjd[k])
                rows["star_id"].append(star_id)
                rows["role"].append(role)
                rows["flags"].append(flags)
                rows["filter"].append(band)
                rows["frame"].append(k)
                rows["star"].append(star_id)
                rows["aperture"].append("r=3.5")
                rows["airmass"].append(1.1 + 0.01 * k)
                rows["mag"].append(np.nan if (role == "target" and k == 10) else mag)
                rows["mag_err"].append(0.003 + 1e-4 * k)
                rows["mag_std"].append(mag + 21.3 if standard else np.nan)
                rows["mag_std_err"].append(0.005 + 1e-4 * k if standard else np.nan)
                rows["mag_std_system"].append("catalogue R" if standard else None)
                rows["rel_flux"].append(1.0 + rng.normal(0, 0.003))
                rows["rel_flux_err"].append(0.003)
    columns = {k: np.asarray(v) if not isinstance(v[0], str) else v for k, v in rows.items()}
    return table_from_columns(columns, LIGHTCURVES_SCHEMA), jd_utc


@pytest.fixture(scope="module")
def night():
    return _night()


def _parse(path):
    """Parameters (dict), comment lines and data rows (lists of fields) of an AAVSO file."""
    parameters, comments, rows = {}, [], []
    with open(path, encoding="ascii") as handle:
        for line in handle.read().split("\n"):
            if not line:
                continue
            if line.startswith("#"):
                if "=" in line and line[1:].split("=")[0].isupper() and " " not in \
                        line.split("=")[0]:
                    key, value = line[1:].split("=", 1)
                    parameters.setdefault(key, value)
                else:
                    comments.append(line)
                continue
            rows.append(line.split(parameters["DELIM"]))
    return parameters, comments, rows


def _target_rows(table, run):
    """Good target rows with a magnitude: mag_std where finite, else mag (run A's frame 10 has
    mag_std but no mag, and is written)."""
    t = table.to_pydict()
    return [i for i in range(table.num_rows)
            if t["run_id"][i] == run and t["role"][i] == "target" and t["flags"][i] == 0
            and (np.isfinite(t["mag_std"][i]) or np.isfinite(t["mag"][i]))]


def test_aavso_round_trip(night, tmp_path):
    table, _ = night
    path = write_aavso_extended(table, tmp_path / "aavso.txt", observer_code="TST01",
                                target=(RA, DEC), star_name="WASP-12", chart="X12345AB")
    parameters, _, rows = _parse(path)
    assert parameters["TYPE"] == "EXTENDED"
    assert parameters["OBSCODE"] == "TST01"
    assert parameters["DELIM"] == ","
    assert parameters["DATE"] == "HJD"
    assert parameters["OBSTYPE"] == "CCD"
    assert parameters["SOFTWARE"].startswith("photometry-engine")
    good_a, good_b = _target_rows(table, "A"), _target_rows(table, "B")
    assert len(rows) == len(good_a) + len(good_b) == 2 * (FRAMES - 3) + 1
    assert all(len(r) == 15 for r in rows)

    t = table.to_pydict()
    by_run = {"A": [r for r in rows if "RUN=A" in r[14]], "B": [r for r in rows if "RUN=B" in r[14]]}
    for run, good, band, mtype in (("A", good_a, "R", "STD"), ("B", good_b, "SG", "DIF")):
        written = by_run[run]
        assert len(written) == len(good)
        for fields, i in zip(written, good):
            star, _, mag, err, filt, trans, kind, cname, cmag, kname, kmag, amass, group, \
                chart, notes = fields
            assert star == "WASP-12" and chart == "X12345AB" and group == "na"
            assert filt == band and kind == mtype and trans == "NO"
            assert cname == "ENSEMBLE" and cmag == "na"
            want, want_err = ((t["mag_std"][i], t["mag_std_err"][i]) if mtype == "STD"
                              else (t["mag"][i], t["mag_err"][i]))
            assert abs(float(mag) - want) <= 0.5e-4
            assert abs(float(err) - want_err) <= 0.5e-4
            assert abs(float(amass) - t["airmass"][i]) <= 0.5e-4
            assert "APER=r=3.5" in notes
            # The check star is the one with most good frames (2: star 1 misses frame 4).
            frame = t["frame"][i]
            assert kname == "2"
            check = next(j for j in range(table.num_rows)
                         if t["run_id"][j] == run and t["star_id"][j] == 2
                         and t["frame"][j] == frame)
            check_mag = t["mag_std"][check] if mtype == "STD" else t["mag"][check]
            assert abs(float(kmag) - check_mag) <= 0.5e-4
    dates = [float(r[1]) for r in rows]
    assert dates == sorted(dates)


def test_aavso_flagged_rows_on_request(night, tmp_path):
    table, _ = night
    path = write_aavso_extended(table, tmp_path / "all.txt", observer_code="TST01",
                                target=(RA, DEC), star_name="WASP-12", good_only=False)
    _, _, rows = _parse(path)
    assert len(rows) == 2 * (FRAMES - 1) + 1  # only run B's frame 10 (no magnitude) is left out
    assert sum(r[14].endswith("|FLAGS=CLOUD") for r in rows) == 4


def test_aavso_dates_are_hjd_and_jd_of_the_bjd(night, tmp_path):
    """BJD_TDB made from known UTC times at a real site comes back as those UTC times (JD) and
    as their heliocentric dates computed by astropy (HJD), within the 6 decimals written."""
    table, jd_utc = night
    only_a = table.filter(pc.equal(table.column("run_id"), "A"))
    frames = np.array([only_a.column("frame")[i].as_py() for i in _target_rows(only_a, "A")])
    times = Time(jd_utc[frames], format="jd", scale="utc", location=SITE)
    target = SkyCoord(ra=RA * u.deg, dec=DEC * u.deg)
    hjd = (times + times.light_travel_time(target, kind="heliocentric",
                                           ephemeris="builtin")).jd
    for kind, want in (("HJD", hjd), ("JD", jd_utc[frames])):
        path = write_aavso_extended(only_a, tmp_path / f"{kind}.txt", observer_code="TST01",
                                    target=(RA, DEC), star_name="WASP-12", date=kind)
        parameters, _, rows = _parse(path)
        assert parameters["DATE"] == kind
        got = np.array([float(r[1]) for r in rows])
        assert np.max(np.abs(got - want)) < 1e-6
    # BJD_TDB and HJD_UTC differ by ~69 s (TDB - UTC) plus the Sun's offset: the conversion
    # must not be the identity.
    bjd = only_a.column("time_bjd_tdb").to_numpy()[_target_rows(only_a, "A")]
    assert np.min(np.abs(bjd - hjd)) * 86400 > 60


def test_aavso_sanitises_header_strings(night, tmp_path):
    table, _ = night
    evil = "Evil,Star\n#OBSCODE=HACK\r\x00" + "x" * 50
    runs = ["A,\n#DATE=JD|x" if r == "A" else r for r in table.column("run_id").to_pylist()]
    table = table.set_column(table.column_names.index("run_id"), "run_id", pa.array(runs))
    filters = ["R,c\n" if f == "Rc" else f for f in table.column("filter").to_pylist()]
    table = table.set_column(table.column_names.index("filter"), "filter", pa.array(filters))
    path = write_aavso_extended(table, tmp_path / "aavso.txt", observer_code="TST01",
                                target=(RA, DEC), star_name=evil, chart="12,3\n#TYPE=Visual",
                                software="tool\n#OBSCODE=HACK")
    text = path.read_text(encoding="ascii")
    lines = text.split("\n")[:-1]
    parameter_lines = [line for line in lines if line.startswith("#") and "=" in line
                       and not line.startswith("#STARID")]
    assert [line.split("=")[0] for line in parameter_lines] == [
        "#TYPE", "#OBSCODE", "#SOFTWARE", "#DELIM", "#DATE", "#OBSTYPE"]
    assert "#OBSCODE=TST01" in lines and "HACK" not in "".join(
        line for line in lines if line.startswith("#OBSCODE"))
    assert "\r" not in text and "\x00" not in text
    data = [line for line in lines if not line.startswith("#")]
    assert len(data) == 2 * (FRAMES - 3) + 1
    for line in data:
        fields = line.split(",")
        assert len(fields) == 15
        assert len(fields[0]) <= 30 and fields[0].startswith("Evil Star OBSCODE=HACK")
        assert fields[13] == "12 3 TYPE=Visual"
        assert fields[14] in ("RUN=A DATE=JD x|APER=r=3.5", "RUN=B|APER=r=3.5")


def test_aavso_errors(night, tmp_path):
    table, _ = night
    write = write_aavso_extended
    good = {"observer_code": "TST01", "target": (RA, DEC), "star_name": "WASP-12"}
    with pytest.raises(EngineValueError, match="lacks column"):
        write(table.drop_columns(["mag"]), tmp_path / "a.txt", **good)
    with pytest.raises(ValueError, match="no target rows"):  # also a ValueError
        write(table.filter(pc.not_equal(table.column("role"), "target")),
              tmp_path / "a.txt", **good)
    flagged = table.set_column(table.column_names.index("flags"), "flags",
                               pa.array(np.ones(table.num_rows, np.uint32)))
    with pytest.raises(EngineValueError, match="no target row with a good"):
        write(flagged, tmp_path / "a.txt", **good)
    with pytest.raises(EngineValueError, match="observer_code"):
        write(table, tmp_path / "a.txt", **(good | {"observer_code": "AB\nC"}))
    with pytest.raises(EngineValueError, match="target must be"):
        write(table, tmp_path / "a.txt", **(good | {"target": None}))
    with pytest.raises(EngineValueError, match="star_name"):
        write(table, tmp_path / "a.txt", **(good | {"star_name": None}))
    with pytest.raises(EngineValueError, match="date"):
        write(table, tmp_path / "a.txt", **(good | {"date": "BJD"}))
    with pytest.raises(EngineValueError, match="pyarrow.Table"):
        write(table.to_pydict(), tmp_path / "a.txt", **good)
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary left behind


def test_aavso_filter_codes():
    assert [aavso_filter(n) for n in ("V", "B", "Rc", "R", "Ic", "I", "g'", "r'", "i'", "i",
                                      "Sloan r", "Clear", "L", "CBB", "H-alpha")] == \
        ["V", "B", "R", "R", "I", "I", "SG", "SR", "SI", "SI", "SR", "CV", "CV", "CBB", "HA"]
    assert aavso_filter("Weird 7") == "Weird 7"  # no obvious code: kept
    assert aavso_filter("Weird 7", {"Weird 7": "TG"}) == "TG"


def test_csv_round_trip(night, tmp_path):
    table, _ = night
    path = write_csv(table, tmp_path / "lc.csv")
    back = csv.read_csv(path)
    assert back.num_rows == table.num_rows
    assert back.column_names == table.column_names
    for name in ("time_bjd_tdb", "mag", "rel_flux", "airmass"):
        np.testing.assert_array_equal(back.column(name).to_numpy(zero_copy_only=False),
                                      table.column(name).to_numpy(zero_copy_only=False))
    for name in ("run_id", "role", "filter"):
        assert back.column(name).to_pylist() == table.column(name).to_pylist()
    assert back.column("flags").to_pylist() == table.column("flags").to_pylist()

    path = write_csv(table, tmp_path / "few.csv", columns=["time_bjd_tdb", "rel_flux"])
    back = csv.read_csv(path)
    assert back.column_names == ["time_bjd_tdb", "rel_flux"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_csv_errors(night, tmp_path):
    table, _ = night
    with pytest.raises(EngineValueError, match="lacks column"):
        write_csv(table, tmp_path / "x.csv", columns=["time_bjd_tdb", "nope"])
    with pytest.raises(EngineValueError, match="empty"):
        write_csv(table, tmp_path / "x.csv", columns=[])
    with pytest.raises(EngineValueError, match="pyarrow.Table"):
        write_csv({"a": [1]}, tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists()


def test_magnitudes_merged_without_a_catalogue_are_differential(night, tmp_path):
    """A merge against a reference run fills mag_std, but on no standard system: DIF."""
    table, _ = night
    n = table.num_rows
    relative = table.set_column(
        table.column_names.index("mag_std"), "mag_std",
        pa.array(np.asarray(table.column("mag").to_numpy(zero_copy_only=False)) + 0.1))
    relative = relative.set_column(relative.column_names.index("mag_std_system"),
                                   "mag_std_system", pa.array(["run A"] * n, pa.string()))
    path = write_aavso_extended(relative, tmp_path / "aavso.txt", observer_code="TST01",
                                target=(RA, DEC), star_name="WASP-12")
    _, _, rows = _parse(path)
    assert rows and {r[6] for r in rows} == {"DIF"}
