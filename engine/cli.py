"""The command line: `python -m engine VERB ...` (also installed as the `engine` script).

The CLI is a thin layer: it parses arguments, calls the public API and prints; no stage logic
lives here. Verbs: demo, reduce, fit-transit, export, config, simulate, ingest, calibrate,
bench.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine.errors import EngineError


def _add_simulate(sub) -> None:
    p = sub.add_parser("simulate", help="write raw FITS frames of a simulated night plus truth.json")
    p.add_argument("--out", required=True, type=Path, help="output folder (created)")
    p.add_argument("--preset", default="demo", help="tiny, demo, variable or large (default: demo)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.set_defaults(func=_run_simulate)


def _run_simulate(args) -> int:
    from engine.simulation import simulate

    result = simulate(args.out, preset=args.preset, seed=args.seed)
    print(result.summary())
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="simulate a multi-site transit night, reduce it, fit it")
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder (default: demo-out)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.set_defaults(func=_run_demo)


def _run_demo(args) -> int:
    from engine.demo import run_demo

    _quiet_logging()
    run_demo(args.out, seed=args.seed)
    return 0


def _quiet_logging() -> None:
    import logging

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _add_inputs(p) -> None:
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                   help="FITS files or folders (searched recursively), lights and calibrations")
    p.add_argument("--out", required=True, type=Path,
                   help="output folder (created; a rerun resumes and skips finished work)")


def _add_target_coordinates(p) -> None:
    p.add_argument("--target-ra", metavar="HH:MM:SS", help="target right ascension (hours, or "
                                                          "degrees as a plain number)")
    p.add_argument("--target-dec", metavar="\u00b1DD:MM:SS", help="target declination")


def _target_coordinates(args):
    """(ra, dec) strings from --target-ra / --target-dec, or None when neither is given."""
    from engine.errors import EngineValueError

    if (args.target_ra is None) != (args.target_dec is None):
        raise EngineValueError("give both --target-ra and --target-dec, or neither")
    return None if args.target_ra is None else (args.target_ra, args.target_dec)


def _add_reduce(sub) -> None:
    p = sub.add_parser("reduce", help="raw frames to light curves: ingest, calibrate, "
                                      "photometry, ensemble")
    _add_inputs(p)
    _add_target_coordinates(p)
    p.add_argument("--target-xy", nargs=2, type=float, metavar=("X", "Y"),
                   help="target position (0-based column, row) in the first light frame of "
                        "the night's first run; the other runs find the target by matching "
                        "their stars to that run's (or give --target-ra/--target-dec, or "
                        "[sky] target_xy per run or site in the --config file)")
    p.add_argument("--catalogue", metavar="FILE|gaia",
                   help="reference catalogue (CSV or Parquet: ra, dec in degrees, magnitudes; "
                        "Gaia DR3 names understood) for sky solutions and standardisation; "
                        "'gaia' fetches Gaia DR3 for each run's field (needs the network and "
                        "pip install 'photometry-engine[gaia]'; kept in OUT/catalogues)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--workers", type=int, help="measure runs on a local Dask cluster of N workers")
    group.add_argument("--scheduler", metavar="ADDRESS", help="measure runs on this Dask cluster")
    p.add_argument("--threads", type=int, default=None, help="threads per process (default: all)")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"),
                   help="measure photometry on the CPU, an NVIDIA GPU, or the GPU when one is "
                        "usable (default: the --config file's [extraction] device, else cpu)")
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="TOML settings (`python -m engine config` prints every option)")
    p.set_defaults(func=_run_reduce)


def _run_reduce(args) -> int:
    from engine.device import resolve_device
    from engine.pipeline import reduce
    from engine.settings.file import load_config

    _quiet_logging()
    config = load_config(args.config) if args.config else None
    if args.device is not None or (config and config.extraction.device != "cpu"):
        print(resolve_device(args.device or config.extraction.device)[1])
    result = reduce(args.paths, args.out, target=_target_coordinates(args), config=config,
                    target_xy=tuple(args.target_xy) if args.target_xy else None,
                    catalogue=args.catalogue,
                    workers=args.workers, scheduler=args.scheduler, threads=args.threads,
                    device=args.device)
    print(result.summary())
    return 0


def _add_config(sub) -> None:
    p = sub.add_parser("config", help="print a configuration file with every option at its default")
    p.set_defaults(func=_run_config)


def _run_config(args) -> int:
    from engine.settings.file import default_config_toml

    print(default_config_toml())
    return 0


def _add_fit_transit(sub) -> None:
    p = sub.add_parser("fit-transit", help="joint transit fit over every run of a light-curve table")
    p.add_argument("lightcurves", type=Path, metavar="LIGHTCURVES", help="lightcurves.parquet")
    p.add_argument("--period", type=float, required=True, help="orbital period, days")
    p.add_argument("--t0", type=float, required=True, help="predicted mid-transit, BJD_TDB")
    p.add_argument("--rp-rs", type=float, default=0.1, help="starting Rp/Rs (default 0.1)")
    p.add_argument("--a-rs", type=float, default=10.0, help="starting a/Rs (default 10)")
    p.add_argument("--inc", type=float, default=89.0, help="starting inclination, deg (default 89)")
    p.add_argument("--baseline", choices=("airmass", "time", "offset"), default="airmass",
                   help="per-run baseline (default airmass)")
    p.add_argument("--ephemeris", nargs=2, type=float, metavar=("T0", "P"),
                   help="published ephemeris for O-C")
    p.add_argument("--prior", nargs=3, action="append", default=[],
                   metavar=("NAME", "MEAN", "SIGMA"),
                   help="Gaussian prior on rp_rs, a_rs or inc (deg); repeatable, e.g. "
                        "--prior a_rs 9.0 0.3 --prior inc 87.5 0.8")
    p.add_argument("--out", required=True, type=Path, help="FIT.json to write")
    p.set_defaults(func=_run_fit_transit)


def _run_fit_transit(args) -> int:
    from engine.io.atomic import write_text
    from engine.io.tables import read_parquet
    from engine.transit_fit import fit_transit

    fit = fit_transit(read_parquet(args.lightcurves), period=args.period, t0=args.t0,
                      rp_rs=args.rp_rs, a_rs=args.a_rs, inc=args.inc, baseline=args.baseline,
                      ephemeris=tuple(args.ephemeris) if args.ephemeris else None,
                      priors=_priors(args.prior))
    write_text(args.out, json.dumps(fit.to_dict(), indent=2) + "\n")
    print(f"mid-transit BJD_TDB {fit.tmid:.6f} +- {fit.tmid_err * 86400:.1f} s, Rp/Rs "
          f"{fit.rp_rs:.4f} +- {fit.rp_rs_err:.4f}; written to {args.out}")
    return 0


def _priors(items) -> dict:
    """--prior NAME MEAN SIGMA triples as fit_transit's priors (it validates them)."""
    from engine.errors import EngineValueError

    priors = {}
    for name, mean, sigma in items:
        try:
            priors[name] = (float(mean), float(sigma))
        except ValueError:
            raise EngineValueError(f"--prior {name}: MEAN and SIGMA must be numbers, got "
                                   f"{mean!r} {sigma!r}") from None
    return priors


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="a light-curve table as an AAVSO Extended File Format "
                                      "report or as CSV")
    p.add_argument("lightcurves", type=Path, metavar="LIGHTCURVES", help="lightcurves.parquet")
    p.add_argument("--aavso", type=Path, metavar="FILE", help="write the target's AAVSO report")
    p.add_argument("--observer", metavar="CODE", help="AAVSO observer code (with --aavso)")
    p.add_argument("--star-name", help="AAVSO name or AUID of the target (default: the OBJECT)")
    p.add_argument("--chart", default="na", help="AAVSO chart id of the sequence (default: na)")
    p.add_argument("--date", choices=("HJD", "JD"), default="HJD", help="date type (default HJD)")
    p.add_argument("--all-frames", action="store_true",
                   help="also write flagged frames, their flags named in NOTES")
    _add_target_coordinates(p)
    p.add_argument("--csv", type=Path, metavar="FILE", help="write every row as CSV")
    p.set_defaults(func=_run_export)


def _run_export(args) -> int:
    from engine.errors import EngineValueError
    from engine.ingest import parse_target
    from engine.io.exports import write_aavso_extended, write_csv
    from engine.io.tables import read_parquet

    if args.aavso is None and args.csv is None:
        raise EngineValueError("say what to write: --aavso FILE and/or --csv FILE")
    lightcurves = read_parquet(args.lightcurves)
    if args.csv is not None:
        print(f"CSV written to {write_csv(lightcurves, args.csv)}")
    if args.aavso is not None:
        if not args.observer:
            raise EngineValueError("--aavso needs --observer CODE (your AAVSO observer code)")
        frames = _light_frames(args.lightcurves.with_name("frames.parquet"))
        target = parse_target(_target_coordinates(args))
        if target is None:
            target = next(((r["target_ra_deg"], r["target_dec_deg"]) for r in frames
                           if r["target_ra_deg"] is not None and r["target_dec_deg"] is not None),
                          None)
        if target is None:
            raise EngineValueError("no target coordinates in the reduction's frames.parquet: "
                                   "give --target-ra and --target-dec")
        names = {r["object"] for r in frames if r["object"]}
        star_name = args.star_name or (names.pop() if len(names) == 1 else None)
        if star_name is None:
            raise EngineValueError("give --star-name (the frames name "
                                   f"{len(names)} objects: {sorted(names)[:3]})" if names else
                                   "give --star-name: the frames name no object")
        path = write_aavso_extended(lightcurves, args.aavso, observer_code=args.observer,
                                    target=target, star_name=star_name, chart=args.chart,
                                    date=args.date, good_only=not args.all_frames)
        print(f"AAVSO report written to {path}")
    return 0


def _light_frames(frames_path: Path) -> list[dict]:
    """Target coordinates and OBJECT of the light frames of the reduction beside the light
    curves (none when there is no frames table)."""
    from engine.io.tables import read_parquet

    if not frames_path.is_file():
        return []
    table = read_parquet(frames_path).select(["frame_type", "object", "target_ra_deg",
                                              "target_dec_deg"])
    return [row for row in table.to_pylist() if row["frame_type"] == "light"]


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks against the anchor tools, measured in one run")
    p.add_argument("--quick", action="store_true", help="small sizes and few rounds")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmarks")
    p.add_argument("--json", type=Path, metavar="FILE", help="write the records as JSON")
    p.add_argument("--threads", type=int, default=None, help="threads for the engine (default: all)")
    p.set_defaults(func=_run_bench)


def _run_bench(args) -> int:
    try:
        from bench.harness import run_benchmarks
    except ImportError as exc:  # bench/ ships with the package; this means a broken install
        print(f"error: the benchmark suite cannot be imported: {exc}", file=sys.stderr)
        return 2
    records = run_benchmarks(quick=args.quick, only=args.only, threads=args.threads)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(records, indent=2) + "\n")
    return 0


def _add_ingest(sub) -> None:
    p = sub.add_parser("ingest", help="FITS files into run cubes and frames.parquet (reduce's "
                                      "first stage)")
    _add_inputs(p)
    _add_target_coordinates(p)
    p.add_argument("--workers", type=int, default=None, help="reading threads (default: all cores)")
    p.set_defaults(func=_run_ingest)


def _run_ingest(args) -> int:
    from engine.ingest import ingest

    _quiet_logging()
    result = ingest(args.paths, args.out, target=_target_coordinates(args), workers=args.workers)
    print(result.summary())
    print(f"frames table: {result.frames_path}")
    return 0


def _add_calibrate(sub) -> None:
    p = sub.add_parser("calibrate", help="ingest, build the masters and calibrate the light runs "
                                         "(masters alone without lights)")
    _add_inputs(p)
    p.add_argument("--threads", type=int, default=None,
                   help="threads for reading and the kernels (default: all cores)")
    p.add_argument("--uncertainty", action="store_true",
                   help="also write per-pixel uncertainty cubes (RUN_ID_sigma.zarr)")
    p.set_defaults(func=_run_calibrate)


def _run_calibrate(args) -> int:
    from engine.calibration import calibrate
    from engine.ingest import ingest

    _quiet_logging()
    ingested = ingest(args.paths, args.out, workers=args.threads)
    print(ingested.summary())
    result = calibrate(ingested, args.out, threads=args.threads, uncertainty=args.uncertainty)
    print(result.summary())
    print(f"report: {result.report_path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="engine", description="Photometry engine: raw frames to calibrated light curves.")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    _add_demo(sub)
    _add_reduce(sub)
    _add_fit_transit(sub)
    _add_export(sub)
    _add_config(sub)
    _add_simulate(sub)
    _add_bench(sub)
    _add_ingest(sub)
    _add_calibrate(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
