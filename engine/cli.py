"""The command line: `python -m engine VERB ...` (also installed as the `engine` script).

The CLI is a thin layer: it parses arguments, calls the public API and prints; no stage logic
lives here. Verbs: demo, reduce, fit-transit, export, config, simulate, ingest, calibrate,
bench.

Every argument is checked (`_check`, with engine.checks) before any work: a refused
argument writes nothing and exits with code 2. A verb that writes a folder holds its lock
(engine.io.lock) while it runs. Ctrl-C exits with code 130; the atomic writes leave only whole
products, so the same command resumes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import re
import sys
from pathlib import Path

from engine.errors import EngineError

#: Exit code of a run stopped by Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse taking '-3', '-0.5', '-46:52:32', '-inf' as values rather than options (none of
    the engine's options starts with a digit), after a space as after '='."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-(\.?\d|inf\b|nan\b)", re.IGNORECASE)


def _verb(sub, name: str, help: str, func, *, writes_folder: bool = False):
    """A verb's parser with the options every verb has (-v, -q)."""
    p = sub.add_parser(name, help=help, description=help)
    noise = p.add_mutually_exclusive_group()
    noise.add_argument("-v", "--verbose", action="store_true", help="debug messages")
    noise.add_argument("-q", "--quiet", action="store_true",
                       help="warnings and errors only, no progress bars")
    p.set_defaults(func=func, writes_folder=writes_folder)
    return p


def _add_threads(p, what: str = "threads inside this process") -> None:
    p.add_argument("--threads", type=int, metavar="N", help=f"{what} (default: all cores)")


def _add_simulate(sub) -> None:
    p = _verb(sub, "simulate", "write raw FITS frames of a simulated night plus truth.json",
              _run_simulate, writes_folder=True)
    p.add_argument("--out", required=True, type=Path, help="output folder (created)")
    p.add_argument("--preset", default="demo",
                   help="tiny, demo, variable, large or a camera profile (default: demo)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")


def _run_simulate(args) -> int:
    from engine.simulation import simulate

    result = simulate(args.out, preset=args.preset, seed=args.seed)
    print(result.summary())
    return 0


def _add_demo(sub) -> None:
    p = _verb(sub, "demo", "simulate a multi-site transit night, reduce it, fit it", _run_demo,
              writes_folder=True)
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder (default: demo-out)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")


def _run_demo(args) -> int:
    from engine.demo import run_demo

    run_demo(args.out, seed=args.seed)
    return 0


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
    """(ra, dec) strings from --target-ra / --target-dec (checked), or None when not given."""
    return None if args.target_ra is None else (args.target_ra, args.target_dec)


def _add_reduce(sub) -> None:
    p = _verb(sub, "reduce", "raw frames to light curves: ingest, calibrate, photometry, "
                             "ensemble", _run_reduce, writes_folder=True)
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
    group.add_argument("--workers", type=int, metavar="N",
                       help="measure runs on a local Dask cluster of N worker processes")
    group.add_argument("--scheduler", metavar="ADDRESS",
                       help="measure runs on this Dask cluster (tls://HOST:PORT with the "
                            "--tls-* files off this machine)")
    for option, what in (("--tls-ca-file", "certificate authority"),
                         ("--tls-cert", "this client's certificate"),
                         ("--tls-key", "this client's private key")):
        p.add_argument(option, metavar="FILE", help=f"Dask TLS: the {what} (PEM)")
    _add_threads(p, "threads inside each process")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"),
                   help="measure photometry on the CPU, an NVIDIA GPU, or the GPU when one is "
                        "usable (default: the --config file's [photometry] device, else cpu)")
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="TOML settings (`python -m engine config` prints every option)")


def _run_reduce(args) -> int:
    from engine.pipeline import reduce
    from engine.settings import PipelineConfig
    from engine.settings.file import load_config

    config = load_config(args.config) if args.config else PipelineConfig()
    tls = {name: getattr(args, name) for name in ("tls_ca_file", "tls_cert", "tls_key")
           if getattr(args, name) is not None}
    config = dataclasses.replace(config, cluster=dataclasses.replace(config.cluster, **tls))
    result = reduce(args.paths, args.out, target=_target_coordinates(args), config=config,
                    target_xy=tuple(args.target_xy) if args.target_xy else None,
                    catalogue=args.catalogue,
                    workers=args.workers, scheduler=args.scheduler, threads=args.threads,
                    device=args.device)
    print(result.summary())
    return 0


def _add_config(sub) -> None:
    _verb(sub, "config", "print a configuration file with every option at its default",
          _run_config)


def _run_config(args) -> int:
    from engine.settings.file import default_config_toml

    print(default_config_toml())
    return 0


def _add_fit_transit(sub) -> None:
    p = _verb(sub, "fit-transit", "joint transit fit over every run of a light-curve table",
              _run_fit_transit)
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
    p.add_argument("--teff", type=float, help="the star's effective temperature, K: limb "
                   "darkening per filter from it (default: coefficients for a Sun-like dwarf)")
    p.add_argument("--logg", type=float, help="the star's log g (cgs), recorded in FIT.json")
    p.add_argument("--feh", type=float, help="the star's [Fe/H], dex, recorded in FIT.json")
    p.add_argument("--out", required=True, type=Path, dest="fit_file", metavar="FIT.json",
                   help="FIT.json to write; its plot (same name, .png: FIT.png) is written beside it")


def _run_fit_transit(args) -> int:
    from engine.io.atomic import write_text
    from engine.io.tables import read_parquet
    from engine.plots import plot_transit_fit
    from engine.transit_fit import fit_transit

    lightcurves = read_parquet(args.lightcurves)
    fit = fit_transit(lightcurves, period=args.period, t0=args.t0, rp_rs=args.rp_rs,
                      a_rs=args.a_rs, inc=args.inc, baseline=args.baseline,
                      ephemeris=tuple(args.ephemeris) if args.ephemeris else None,
                      priors=_priors(args.prior), teff=args.teff, logg=args.logg, feh=args.feh)
    write_text(args.fit_file, json.dumps(fit.to_dict(), indent=2) + "\n")
    plot = plot_transit_fit(lightcurves, fit, Path(args.fit_file).with_suffix(".png"))
    print(f"mid-transit BJD_TDB {fit.tmid:.6f} +- {fit.tmid_err * 86400:.1f} s, Rp/Rs "
          f"{fit.rp_rs:.4f} +- {fit.rp_rs_err:.4f} (errors x{fit.error_scale:.2f}: chi2_red "
          f"{fit.chi2_reduced:.2f}, beta {fit.beta:.2f}); written to {args.fit_file} and {plot}")
    return 0


def _priors(items) -> dict:
    """--prior NAME MEAN SIGMA triples as fit_transit's priors, checked."""
    from engine.checks import number, one_of, positive

    priors = {}
    for name, mean, sigma in items:
        one_of("--prior NAME", name, ("rp_rs", "a_rs", "inc"))
        priors[name] = (number(f"--prior {name} MEAN", _float(mean)),
                        positive(f"--prior {name} SIGMA", _float(sigma)))
    return priors


def _float(text: str):
    """A number from a command-line word, or the word itself for the check to refuse."""
    try:
        return float(text)
    except ValueError:
        return text


def _add_export(sub) -> None:
    p = _verb(sub, "export", "a light-curve table as an AAVSO Extended File Format report or "
                             "as CSV", _run_export)
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
    p = _verb(sub, "bench", "benchmarks against the anchor tools, measured in one run",
              _run_bench)
    p.add_argument("--quick", action="store_true", help="small sizes and few rounds")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmarks")
    p.add_argument("--json", type=Path, metavar="FILE", help="write the records as JSON")
    _add_threads(p, "threads for the engine")


def _run_bench(args) -> int:
    try:
        from engine.bench.harness import run_benchmarks
    except ImportError as exc:  # bench/ ships as engine.bench; this means a broken install
        print(f"error: the benchmark suite cannot be imported: {exc}", file=sys.stderr)
        return 2
    records = run_benchmarks(quick=args.quick, only=args.only, threads=args.threads)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(records, indent=2) + "\n")
    return 0


def _add_ingest(sub) -> None:
    p = _verb(sub, "ingest", "FITS files into run cubes and frames.parquet (reduce's first "
                             "stage)", _run_ingest, writes_folder=True)
    _add_inputs(p)
    _add_target_coordinates(p)
    _add_threads(p, "reading threads")
    p.add_argument("--workers", type=int, dest="ingest_workers", metavar="N",
                   help="deprecated: the old name of --threads")


def _run_ingest(args) -> int:
    from engine.ingest import ingest

    result = ingest(args.paths, args.out, target=_target_coordinates(args), workers=args.threads)
    print(result.summary())
    print(f"frames table: {result.frames_path}")
    return 0


def _add_calibrate(sub) -> None:
    p = _verb(sub, "calibrate", "ingest, build the masters and calibrate the light runs "
                                "(masters alone without lights)", _run_calibrate,
              writes_folder=True)
    _add_inputs(p)
    _add_threads(p, "threads for reading and the kernels")
    p.add_argument("--uncertainty", action="store_true",
                   help="also write per-pixel uncertainty cubes (RUN_ID_sigma.zarr)")


def _run_calibrate(args) -> int:
    from engine.calibration import calibrate
    from engine.ingest import ingest

    ingested = ingest(args.paths, args.out, workers=args.threads)
    print(ingested.summary())
    result = calibrate(ingested, args.out, threads=args.threads, uncertainty=args.uncertainty)
    print(result.summary())
    print(f"report: {result.report_path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from engine import __version__

    parser = _Parser(prog="engine",
                     description="Photometry engine: raw frames to calibrated light curves.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for add in (_add_demo, _add_reduce, _add_fit_transit, _add_export, _add_config,
                _add_simulate, _add_bench, _add_ingest, _add_calibrate):
        add(sub)
    return parser


@contextlib.contextmanager
def _remembered_interrupts():
    """Ctrl-C raises KeyboardInterrupt as usual, and is remembered: a library that swallows the
    exception (one landing in a finaliser, or caught as BaseException) cannot make an interrupted
    command end as a success. Yields the list of signals received."""
    import signal
    import threading

    received: list[int] = []
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield received  # a caller's own handler, or no signals here: leave them alone
        return

    def interrupted(signum, frame):
        received.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupted)
    try:
        yield received
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv: list[str] | None = None) -> int:
    from engine.progress import quiet

    args = build_parser().parse_args(argv)
    engine_log = logging.getLogger("engine")
    saved_level = engine_log.level
    try:
        _set_logging(args)
        _check(args)
        with contextlib.ExitStack() as stack:
            if args.quiet:
                stack.enter_context(quiet())
            if args.writes_folder:
                from engine.io.lock import output_lock

                stack.enter_context(output_lock(args.out))
            interrupts = stack.enter_context(_remembered_interrupts())
            code = args.func(args)
            if interrupts:  # the KeyboardInterrupt was swallowed on the way: still interrupted
                raise KeyboardInterrupt
            return code
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the system's, met while working: name the path
        from engine.errors import file_error

        where = exc.filename if exc.filename is not None else "a file"
        print(f"error: {file_error(exc, where, 'use')}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return INTERRUPTED
    finally:
        engine_log.setLevel(saved_level)


def _set_logging(args) -> None:
    """-v: debug, -q: warnings and errors, else info; on stderr unless the caller has set up
    logging already."""
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.getLogger("engine").setLevel(level)


def _check(args) -> None:
    """Every argument given, checked before any work (engine.checks names the argument)."""
    from engine import checks

    def count(name):
        return lambda value: checks.integer(name, value, least=1)

    def existing(name):
        return lambda value: checks.existing_paths(name, [value])

    table = {
        "paths": lambda value: checks.existing_paths("PATH", value),
        "lightcurves": existing("LIGHTCURVES"), "config": existing("--config"),
        "tls_ca_file": existing("--tls-ca-file"), "tls_cert": existing("--tls-cert"),
        "tls_key": existing("--tls-key"),
        "threads": count("--threads"), "workers": count("--workers"),
        "ingest_workers": count("--workers"),
        "seed": lambda value: checks.integer("--seed", value, least=0),
        "preset": _check_preset,
        "target_xy": lambda value: [checks.non_negative(f"--target-xy {axis}", v)
                                    for axis, v in zip("XY", value)],
        "period": lambda value: checks.positive("--period", value),
        "t0": lambda value: checks.number("--t0", value),
        "rp_rs": lambda value: checks.positive("--rp-rs", value),
        "a_rs": lambda value: checks.positive("--a-rs", value),
        "inc": lambda value: checks.number("--inc", value, low=0.0, high=90.0),
        "ephemeris": lambda value: (checks.number("--ephemeris T0", value[0]),
                                    checks.positive("--ephemeris P", value[1])),
        "prior": _priors,
        "teff": lambda value: checks.positive("--teff", value),
        "logg": lambda value: checks.number("--logg", value, low=-1.0, high=9.0),
        "feh": lambda value: checks.number("--feh", value, low=-5.0, high=2.0),
        "fit_file": lambda value: checks.output_file("--out", value),
        "aavso": lambda value: checks.output_file("--aavso", value),
        "csv": lambda value: checks.output_file("--csv", value),
        "json": lambda value: checks.output_file("--json", value),
    }
    for name, check in table.items():
        if getattr(args, name, None) is not None:
            check(getattr(args, name))
    if args.writes_folder:
        checks.output_folder("--out", args.out)
    if hasattr(args, "target_ra"):
        _check_target(args)
    if hasattr(args, "device"):
        _check_device(args)
    if getattr(args, "workers", None) is not None or getattr(args, "scheduler", None):
        checks.require_dask()
    if getattr(args, "ingest_workers", None) is not None:
        _deprecated_ingest_workers(args)


def _check_preset(name: str) -> None:
    from engine import checks
    from engine.simulation import PRESETS  # here: the simulator's import takes seconds

    checks.one_of("--preset", name, sorted(PRESETS))


def _check_device(args) -> None:
    """The device from --device or the --config file's [photometry] device: 'cuda' without a
    GPU is refused before the output folder is made, and the line saying which is printed."""
    from engine.device import resolve_device
    from engine.settings.file import load_config

    asked = args.device
    if asked is None and args.config is not None:
        asked = load_config(args.config).photometry.device
    if asked not in (None, "cpu"):
        args.device, said = resolve_device(asked)
        print(said)


def _check_target(args) -> None:
    from engine.errors import EngineValueError
    from engine.io.headers import parse_dec, parse_ra

    if (args.target_ra is None) != (args.target_dec is None):
        raise EngineValueError("give both --target-ra and --target-dec, or neither")
    for name, parse, value in (("--target-ra", parse_ra, args.target_ra),
                               ("--target-dec", parse_dec, args.target_dec)):
        try:
            if value is not None:
                parse(value)
        except ValueError as exc:
            raise EngineValueError(f"{name}: {exc}") from None


def _deprecated_ingest_workers(args) -> None:
    """ingest --workers was its thread count: still taken, with a warning."""
    from engine.errors import EngineValueError

    if args.threads is not None:
        raise EngineValueError("ingest: give --threads only (--workers is its old name)")
    logging.getLogger("engine.cli").warning(
        "ingest --workers is deprecated: it means reading threads, say --threads N "
        "(--workers N is the number of Dask processes of reduce)")
    args.threads = args.ingest_workers
