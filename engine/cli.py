"""The command line: `python -m engine VERB ...` (also installed as the `engine` script).

The CLI is a thin layer: it parses arguments, calls the public API and prints; no stage logic
lives here. Verbs that exist today: demo, simulate, bench.
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
    p = sub.add_parser("demo", help="simulate the demo network night and summarise it")
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder (default: demo-out)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.set_defaults(func=_run_demo)


def _run_demo(args) -> int:
    from engine.simulation import simulate

    result = simulate(args.out / "raw", preset="demo", seed=args.seed)
    print(result.summary())
    print()
    print("Not done yet: this engine cannot yet ingest, calibrate, register, measure or fit these")
    print("frames, so the demo stops at the simulated night and its truth. The reduction stages")
    print("(ingest, calibrate, photometry, ensemble, transit fit) are the next pieces of work.")
    return 0


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
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                   help="FITS files or folders (searched recursively)")
    p.add_argument("--out", required=True, type=Path, help="output folder (created)")
    p.add_argument("--target-ra", metavar="HH:MM:SS", help="target right ascension (hours, or "
                                                          "degrees as a plain number)")
    p.add_argument("--target-dec", metavar="\u00b1DD:MM:SS", help="target declination")
    p.add_argument("--workers", type=int, default=None, help="reading threads (default: all cores)")
    p.set_defaults(func=_run_ingest)


def _run_ingest(args) -> int:
    import logging

    from engine.errors import EngineValueError
    from engine.ingest import ingest

    if (args.target_ra is None) != (args.target_dec is None):
        raise EngineValueError("give both --target-ra and --target-dec, or neither")
    target = None if args.target_ra is None else (args.target_ra, args.target_dec)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    result = ingest(args.paths, args.out, target=target, workers=args.workers)
    print(result.summary())
    print(f"frames table: {result.frames_path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="engine", description="Photometry engine: raw frames to calibrated light curves.")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    _add_demo(sub)
    _add_simulate(sub)
    _add_bench(sub)
    _add_ingest(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
