"""A whole night end to end: `python -m engine reduce` on the simulator's `large` preset.

    python -m bench.night --lights 100 1000 --work /scratch/night [--json night.json]

For each light-frame count N the `large` night (one La Palma CMOS, 2048² frames, over 500
stars detected and followed) is simulated with n_lights=N into WORK/N/raw (kept and reused
when its truth.json is there), then reduced by the command-line `reduce` in a child process
into a fresh WORK/N/out. Reported per N: wall time of the reduce, its CPU time (user + system:
the figure to compare on a machine shared with other work), frames per second, and the child's
peak resident memory (its own maximum RSS, from wait4). The time is a fixed cost
(start-up, masters, reference frame) plus a constant cost per frame, which the printed
straight-line fit separates; with the fixed part small, ten times the frames take about ten
times as long.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq


#: Follow every star detected (the default follows the brightest 400).
MAX_STARS = 2000


def _simulated(raw: Path, lights: int, seed: int) -> dict:
    truth_path = raw / "truth.json"
    if not truth_path.is_file():
        from engine.simulation import simulate

        started = time.perf_counter()
        simulate(raw, preset="large", seed=seed, n_lights=lights)
        print(f"  simulated {lights} lights in {time.perf_counter() - started:.0f} s", flush=True)
    return json.loads(truth_path.read_text())


def _reduce(raw: Path, out: Path, truth: dict) -> dict:
    """Runs the CLI reduce in a child; returns its wall time and peak RSS."""
    target = truth["target"]
    run = truth["runs"][0]
    xy = next(s for s in run["star_positions"] if s["id"] == target["id"])
    settings = out.parent / "reduce.toml"
    settings.write_text(f"[photometry]\nmax_stars = {MAX_STARS}\n")
    command = [sys.executable, "-m", "engine", "reduce", str(raw), "--out", str(out),
               "--target-ra", target["ra_hms"], "--target-dec", target["dec_dms"],
               "--target-xy", str(xy["x"]), str(xy["y"]), "--config", str(settings)]
    environment = dict(os.environ, ENGINE_PROGRESS="0")
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=out.parent, env=environment, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"reduce failed ({child.returncode}):\n{output}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_rss_gb": usage.ru_maxrss / 1024 ** 2, "log": output}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lights", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--work", type=Path, required=True,
                        help="folder for raw frames and products")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the records here")
    args = parser.parse_args(argv)
    records = []
    for lights in args.lights:
        base = args.work / str(lights)
        print(f"{lights} lights:", flush=True)
        truth = _simulated(base / "raw", lights, args.seed)
        out = base / "out"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        result = _reduce(base / "raw", out, truth)
        stage_line = next((line.strip() for line in result["log"].splitlines()
                           if "stage times" in line), "")
        stars = pq.read_metadata(out / "stars.parquet").num_rows
        record = {"lights": lights, "stars": stars, "wall_s": round(result["wall_s"], 1),
                  "cpu_s": round(result["cpu_s"], 1),
                  "frames_per_s": round(lights / result["wall_s"], 2),
                  "peak_rss_gb": round(result["peak_rss_gb"], 2), "stages": stage_line}
        records.append(record)
        print(f"  reduce ({stars} stars): {record['wall_s']} s ({record['cpu_s']} s of CPU), "
              f"{record['frames_per_s']} frames/s, peak RSS {record['peak_rss_gb']} GB; "
              f"{stage_line}", flush=True)
    if len(records) > 1:
        first, last = records[0], records[-1]
        print(f"{last['lights'] / first['lights']:.0f}x the frames took "
              f"{last['wall_s'] / first['wall_s']:.1f}x the time")
        # Time = fixed cost + cost per frame: the line through the points separates them.
        per_frame, fixed = np.polyfit([r["lights"] for r in records],
                                      [r["wall_s"] for r in records], 1)
        print(f"fit: {fixed:.1f} s fixed (start-up, masters, reference) + "
              f"{per_frame * 1e3:.0f} ms per frame")
    if args.json:
        args.json.write_text(json.dumps(records, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
