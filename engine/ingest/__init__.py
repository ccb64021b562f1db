"""The ingest stage: FITS files from any camera into run cubes and a frames table, with exact times.

`ingest(paths, out_dir, target=None, config=None)` finds the FITS files under `paths`, reads
each header into one normalised frame record (engine.io.headers, .timestamps, .frame_type),
groups the frames into runs (lights: site x telescope x night x filter x binning) and calibration
sets (bias; dark; flat per filter), and writes

- `out_dir/cubes/RUN_ID.zarr`: each run's (and calibration set's) frames, in time order, as a Zarr
  v3 cube (frame, y, x), one frame per chunk (engine.io.cube says why LZ4 + bit-shuffle);
- `out_dir/frames.parquet`: one row per input file (engine.io.schemas.FRAMES_SCHEMA), skipped
  files included with their reason.

Times: mid-exposure UTC from the header's best time stamp, corrected by the site's configured
clock offset, then BJD_TDB (engine.timing, offline) for the target: `target` if given, else the
configuration's, else the median of the run's header pointing (logged as a warning: half a degree
of pointing error moves BJD_TDB by ~4 s). Without a site location BJD_TDB is geocentric (up to
21 ms off; the provenance says so) and the airmass is the header's, if any.

Bad input never stops the night: unreadable, truncated or non-FITS files, empty or all-NaN
data, unexpected NAXIS, missing or unparseable times, EXPTIME <= 0 (0 is fine for a bias),
unknown frame types, frames whose shape differs from their run's, and duplicates (identical
pixels, whatever the container) are skipped, each with a reason in the table and a warning in the
log ("engine.ingest"). What stops the run is typed: InputNotFoundError (a missing input path or a
folder without FITS files), EngineValueError (a bad target or configuration), EngineFileError
(an output folder that cannot be used).

Camera values: gain, read noise and saturation level come from the header, else the site's
configuration, each with its source in the table; a saturation level neither gives is measured
on each frame's raw pixels (engine.io.adc.saturation_level: the ADC's depth or a
pile-up) before any dtype promotion or Bayer extraction, and shared across the camera's frames
where one frame cannot tell. Gain and read noise that neither gives are measured later, by
calibration (photon transfer, else the lights' sky).

Reruns: a cube is rebuilt only when its frames (path, size, modification time), the
configuration or the target changed, or the output folder's manifest finds its bytes changed
(engine.io.manifest); the table is rewritten only when its content changed. So
ingesting the same files again writes nothing, and a killed ingest leaves only temporary names
that the next run clears and never trusts. Inputs are opened read-only.

This package only re-exports; each part has one home:
- `scan`: pass 1, one file's headers into one frames-table row (frame type, exposure, camera
  values, site);
- `times`: mid-exposure under the run's time convention, the night, target, BJD_TDB, airmass;
- `runs`: grouping frames into runs and calibration sets, run ids, checks over a whole run;
- `pixels`: pass 2, a run's pixels checked, hashed and written into its cube;
- `table`: frames-table rows, skip reasons and notes;
- `stage`: the driver, `ingest()`, and `IngestResult`.
"""

from engine.ingest.scan import MAX_EXPTIME_S
from engine.ingest.stage import IngestResult, ingest, parse_target
from engine.ingest.times import night as _night  # noqa: F401 (imported by name in tests)

__all__ = ["MAX_EXPTIME_S", "IngestResult", "ingest", "parse_target"]
