"""The command line refuses a bad argument before any work: exit code 2, the argument named,
nothing written; values starting with '-' are taken after a space; --version, -v and -q."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from engine import __version__
from engine.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
AST443 = REPO.parent / "shared" / "data" / "real" / "ast443_stl1001e"


@pytest.fixture
def inputs(tmp_path):
    """An input folder that exists (its content is never read: every case is refused first)."""
    folder = tmp_path / "raw"
    folder.mkdir()
    (folder / "a.fits").write_bytes(b"")
    return folder


@pytest.fixture
def lightcurves(tmp_path):
    path = tmp_path / "lightcurves.parquet"
    path.write_bytes(b"")
    return path


# (arguments after the verb's input, the text the error must hold)
REDUCE_CASES = [
    (["--threads", "0"], "--threads must be an integer >= 1, got 0"),
    (["--threads", "-2"], "--threads must be an integer >= 1, got -2"),
    (["--workers", "0"], "--workers must be an integer >= 1, got 0"),
    (["--workers", "-1"], "--workers must be an integer >= 1"),
    (["--target-xy", "nan", "nan"], "--target-xy X must be finite, got nan"),
    (["--target-xy", "inf", "5"], "--target-xy X must be finite, got inf"),
    (["--target-xy", "5", "-inf"], "--target-xy Y must be finite, got -inf"),
    (["--target-xy", "-3", "5"], "--target-xy X must be finite and >= 0, got -3.0"),
    (["--target-xy", "3", "-0.5"], "--target-xy Y must be finite and >= 0, got -0.5"),
    (["--target-ra", "25:00:00", "--target-dec", "10"], "--target-ra: right ascension"),
    (["--target-ra", "-10", "--target-dec", "10"], "--target-ra: right ascension"),
    (["--target-ra", "400", "--target-dec", "10"], "--target-ra: right ascension"),
    (["--target-ra", "10", "--target-dec", "-91"], "--target-dec: declination"),
    (["--target-ra", "10", "--target-dec", "+95:00:00"], "--target-dec: declination"),
    (["--target-ra", "10", "--target-dec", "north"], "--target-dec:"),
    (["--target-ra", "10"], "give both --target-ra and --target-dec"),
    (["--target-dec", "-46:52:32"], "give both --target-ra and --target-dec"),
    (["--config", "missing.toml"], "--config: 'missing.toml' does not exist"),
    (["--tls-ca-file", "missing-ca.pem"], "--tls-ca-file: 'missing-ca.pem' does not exist"),
    (["--tls-cert", "missing.pem"], "--tls-cert: 'missing.pem' does not exist"),
    (["--tls-key", "missing.key"], "--tls-key: 'missing.key' does not exist"),
]


def _refused(argv, capsys, expected: str, out: Path) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err, err
    assert not out.exists()  # nothing written, not even the output folder


@pytest.mark.parametrize("extra, expected", REDUCE_CASES)
def test_reduce_refuses_before_any_work(inputs, tmp_path, capsys, monkeypatch, extra, expected):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    _refused(["reduce", str(inputs), "--out", str(out), *extra], capsys, expected, out)


@pytest.mark.parametrize("verb", ["reduce", "ingest", "calibrate"])
def test_missing_input_path_is_named(tmp_path, capsys, verb):
    out = tmp_path / "out"
    missing = tmp_path / "nowhere"
    _refused([verb, str(missing), "--out", str(out)], capsys,
             f"PATH: {str(missing)!r} does not exist", out)


@pytest.mark.parametrize("verb", ["reduce", "ingest", "calibrate", "simulate"])
def test_out_that_is_a_file(inputs, tmp_path, capsys, verb):
    out = tmp_path / "taken.txt"
    out.write_text("mine\n")
    argv = [verb, "--out", str(out)] if verb == "simulate" else [verb, str(inputs), "--out",
                                                                    str(out)]
    assert main(argv) == 2
    assert f"--out: {str(out)!r} is a file, not a folder" in capsys.readouterr().err
    assert out.read_text() == "mine\n"


def test_out_below_a_file(inputs, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["reduce", str(inputs), "--out", str(blocker / "out")]) == 2
    assert f"--out: {str(blocker)!r}" in capsys.readouterr().err


def test_ingest_threads_and_calibrate_threads(inputs, tmp_path, capsys):
    for verb in ("ingest", "calibrate"):
        _refused([verb, str(inputs), "--out", str(tmp_path / "out"), "--threads", "0"], capsys,
                 "--threads must be an integer >= 1, got 0", tmp_path / "out")
    _refused(["ingest", str(inputs), "--out", str(tmp_path / "out"), "--workers", "0"], capsys,
             "--workers must be an integer >= 1, got 0", tmp_path / "out")


def test_ingest_workers_is_a_deprecated_alias_of_threads(inputs, tmp_path, capsys):
    _refused(["ingest", str(inputs), "--out", str(tmp_path / "out"), "--workers", "2",
              "--threads", "2"], capsys, "give --threads only", tmp_path / "out")
    args = build_parser().parse_args(["ingest", str(inputs), "--out", "o", "--workers", "3"])
    assert args.ingest_workers == 3 and args.threads is None


FIT_CASES = [
    (["--period", "nan", "--t0", "1"], "--period must be finite, got nan"),
    (["--period", "inf", "--t0", "1"], "--period must be finite, got inf"),
    (["--period", "0", "--t0", "1"], "--period must be finite and > 0, got 0.0"),
    (["--period", "-1.5", "--t0", "1"], "--period must be finite and > 0, got -1.5"),
    (["--period", "1", "--t0", "nan"], "--t0 must be finite, got nan"),
    (["--period", "1", "--t0", "-inf"], "--t0 must be finite, got -inf"),
    (["--period", "1", "--t0", "1", "--rp-rs", "-0.1"], "--rp-rs must be finite and > 0"),
    (["--period", "1", "--t0", "1", "--a-rs", "0"], "--a-rs must be finite and > 0"),
    (["--period", "1", "--t0", "1", "--inc", "91"], "--inc must be <= 90"),
    (["--period", "1", "--t0", "1", "--inc", "-1"], "--inc must be finite and >= 0"),
    (["--period", "1", "--t0", "1", "--ephemeris", "nan", "1"], "--ephemeris T0 must be finite"),
    (["--period", "1", "--t0", "1", "--ephemeris", "1", "-2"], "--ephemeris P must be finite and > 0"),
    (["--period", "1", "--t0", "1", "--prior", "depth", "1", "1"], "--prior NAME must be one of"),
    (["--period", "1", "--t0", "1", "--prior", "inc", "x", "1"], "--prior inc MEAN must be a number"),
    (["--period", "1", "--t0", "1", "--prior", "inc", "88", "-1"], "--prior inc SIGMA must be finite and > 0"),
]


@pytest.mark.parametrize("extra, expected", FIT_CASES)
def test_fit_transit_refuses_before_reading(lightcurves, tmp_path, capsys, extra, expected):
    out = tmp_path / "FIT.json"
    _refused(["fit-transit", str(lightcurves), *extra, "--out", str(out)], capsys, expected, out)


def test_fit_transit_names_a_missing_table_and_a_folder_as_out(tmp_path, lightcurves, capsys):
    missing = tmp_path / "none.parquet"
    _refused(["fit-transit", str(missing), "--period", "1", "--t0", "1", "--out",
              str(tmp_path / "FIT.json")], capsys, f"LIGHTCURVES: {str(missing)!r} does not exist",
             tmp_path / "FIT.json")
    assert main(["fit-transit", str(lightcurves), "--period", "1", "--t0", "1", "--out",
                 str(tmp_path)]) == 2
    assert f"--out: {str(tmp_path)!r} is a folder, not a file" in capsys.readouterr().err


def test_export_refuses_bad_coordinates_and_a_folder_as_file(lightcurves, tmp_path, capsys):
    _refused(["export", str(lightcurves), "--csv", str(tmp_path / "x.csv"), "--target-ra", "10",
              "--target-dec", "-100"], capsys, "--target-dec: declination", tmp_path / "x.csv")
    assert main(["export", str(lightcurves), "--csv", str(tmp_path)]) == 2
    assert "--csv:" in capsys.readouterr().err


def test_simulate_refuses_unknown_preset_and_negative_seed(tmp_path, capsys):
    _refused(["simulate", "--out", str(tmp_path / "sim"), "--preset", "huge"], capsys,
             "--preset must be one of", tmp_path / "sim")
    _refused(["simulate", "--out", str(tmp_path / "sim"), "--seed", "-1"], capsys,
             "--seed must be an integer >= 0", tmp_path / "sim")


# ----------------------------------------------------------------------------------------------
# Values that begin with '-' after a space

def test_negative_values_after_a_space_on_every_verb_that_takes_numbers(tmp_path):
    parse = build_parser().parse_args
    args = parse(["reduce", "raw", "--out", "o", "--target-ra", "10:00:00", "--target-dec",
                  "-46:52:32", "--target-xy", "-3", "5"])
    assert args.target_dec == "-46:52:32" and args.target_xy == [-3.0, 5.0]
    args = parse(["ingest", "raw", "--out", "o", "--target-ra", "0.5", "--target-dec", "-0.5"])
    assert args.target_dec == "-0.5"
    args = parse(["export", "lc.parquet", "--csv", "x", "--target-ra", "1",
                  "--target-dec", "-5"])
    assert args.target_dec == "-5"
    args = parse(["fit-transit", "lc.parquet", "--period", "1", "--t0", "-0.5", "--ephemeris",
                  "-1.25", "2", "--prior", "inc", "-1", "2", "--out", "f.json"])
    assert args.t0 == -0.5 and args.ephemeris == [-1.25, 2.0]
    assert args.prior == [["inc", "-1", "2"]]
    args = parse(["reduce", "raw", "--out", "o", "--target-xy", "-inf", "5"])
    assert args.target_xy[0] == float("-inf")


def test_negative_declination_reaches_the_check(inputs, tmp_path, capsys):
    # Parsed as a value, it is checked as one (and a good one passes to the next check).
    _refused(["reduce", str(inputs), "--out", str(tmp_path / "out"), "--target-ra", "10",
              "--target-dec", "-46:52:32", "--threads", "0"], capsys, "--threads", tmp_path / "out")


def test_options_are_still_options():
    args = build_parser().parse_args(["reduce", "raw", "-q", "--out", "o"])
    assert args.quiet and args.paths == [Path("raw")]
    with pytest.raises(SystemExit):  # an option where a value belongs is still refused
        build_parser().parse_args(["reduce", "raw", "--out", "--threads", "2"])


# ----------------------------------------------------------------------------------------------
# --version, -v, -q

def test_version_from_package_metadata(tmp_path):
    result = subprocess.run([sys.executable, "-m", "engine", "--version"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0
    assert result.stdout.strip() == f"engine {__version__}"


#: Each verb with its required arguments.
VERBS = {"demo": [], "reduce": ["raw", "--out", "o"], "export": ["lc.parquet"], "config": [],
         "fit-transit": ["lc.parquet", "--period", "1", "--t0", "0", "--out", "f.json"],
         "simulate": ["--out", "o"], "bench": [], "ingest": ["raw", "--out", "o"],
         "calibrate": ["raw", "--out", "o"]}


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_verb_takes_verbose_and_quiet(verb, capsys):
    parser = build_parser()
    for flag, field in (("-v", "verbose"), ("--verbose", "verbose"), ("-q", "quiet"),
                        ("--quiet", "quiet")):
        args = parser.parse_args([verb, *VERBS[verb], flag])
        assert getattr(args, field)
    with pytest.raises(SystemExit):
        parser.parse_args([verb, *VERBS[verb], "-v", "-q"])


def test_quiet_and_verbose_set_the_engine_log_level(monkeypatch):
    from engine import cli

    engine_log = logging.getLogger("engine")
    monkeypatch.setattr(engine_log, "level", engine_log.level)  # restored after the test
    seen = {}
    for flags in ([], ["-q"], ["-v"]):
        args = build_parser().parse_args(["config", *flags])
        cli._set_logging(args)
        seen[tuple(flags)] = engine_log.getEffectiveLevel()
    assert seen == {(): logging.INFO, ("-q",): logging.WARNING, ("-v",): logging.DEBUG}


@pytest.mark.skipif(not AST443.is_dir(), reason="../shared/data is not present")
def test_ingest_quiet_prints_no_info(tmp_path):
    raw = sorted(AST443.glob("biases-*"))[:2]
    result = subprocess.run([sys.executable, "-m", "engine", "ingest", *map(str, raw), "--out",
                             str(tmp_path / "out"), "-q", "--threads", "1"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert "INFO" not in result.stderr and "frames table" in result.stdout
