"""Calibration: master frames from calibration stacks, and calibrated cubes from light runs.

This package only re-exports: masters.py builds the masters, files.py writes and reads them as
FITS, recipe.py holds a light run's calibration recipe (and calibrates raw blocks with it as they
are read), runs.py calibrates run cubes, stage.py runs the stage over an ingest's output.

Masters (each a `Master`: the image, what made it, and notes a user should read):
- `master_bias`: the sigma-clipped mean of the bias frames (after overscan and trim when given).
- `master_dark`: the darks grouped by exposure time, each group combined with the bias removed;
  then a linearity test over the exposure times decides between a dark-current rate (ADU/s,
  scaled by each light's exposure) and exposure-matched darks (CMOS amp glow often does not
  scale). The evidence is kept (`DarkModel.evidence`) and written into the headers.
- `master_flat`: per filter, each flat with bias and dark removed and divided by its own median,
  combined, then normalised to a median of 1.
- `bad_pixel_mask`: hot pixels from the dark rate, dead and low-response pixels from the flat.
Every master is written as FITS (`write_master`) with IMAGETYP 'MASTER BIAS' / 'MASTER DARK' /
'MASTER FLAT' / 'BAD PIXEL MASK', FILTER, NCOMBINE and provenance, atomically.

Streaming: stacks are NumPy arrays or Zarr arrays (frame, y, x) and are read in blocks of rows,
sized by a memory budget (`budget_bytes`), so a large stack is never held whole; `calibrate_cube`
calibrates a run chunk by chunk of frames into Zarr cubes (data float32, PixelFlag mask uint8).

Bad input: a missing calibration type is skipped and said (`notes`); frames of the wrong shape,
binning or temperature are rejected with reasons (`check_frames`); stacks too small to clip are
averaged plainly, and said.

The combine defaults are astropy's sigma_clip defaults (sigma 3, maxiters 5, cenfunc median,
stdfunc std), then the mean of what is kept (engine.kernels.combine). The CPU kernels are used
here; nothing in this package imports numba.cuda.
"""

from engine.calibration.files import load_master, master_filename, write_master
from engine.calibration.masters import (MIN_FRAMES_TO_CLIP, DarkModel, Master, bad_pixel_mask,
                                        check_frames, combine_stack, master_bias, master_dark,
                                        master_flat)
from engine.calibration.recipe import CalibratedFrames, CalibrationRecipe, load_recipe
from engine.calibration.runs import CalibratedRun, calibrate_cube
from engine.calibration.stage import CalibrationResult, calibrate

__all__ = [
    "CalibratedFrames", "CalibratedRun", "CalibrationRecipe", "CalibrationResult", "DarkModel",
    "MIN_FRAMES_TO_CLIP", "Master", "bad_pixel_mask",
    "calibrate", "calibrate_cube", "check_frames", "combine_stack", "load_master", "load_recipe",
    "master_bias", "master_dark", "master_filename", "master_flat", "write_master",
]
