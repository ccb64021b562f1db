"""`reduce --config FILE`: one TOML file for every setting of the main job.

The file has three tables, each mapping onto one typed settings class, whose docstring is the
documentation of every option and its default:

    [ingest]       engine.settings.IngestConfig (sites, frame-type overrides, Bayer mode, target)
    [calibration]  engine.settings.CalibrationConfig (temperature tolerance, uncertainty cubes,
                   write_calibrated)
    [photometry]   engine.settings.PhotometryConfig (detection, apertures, registration, PSF)
    [ensemble]     engine.settings.EnsembleConfig (comparisons, weights, clouds, detrending)
    [sky]          engine.settings.SkyConfig (reference catalogue, target pixel positions per run or
                   site, sky-solution tolerances)
    [pipeline]     engine.settings.ClusterConfig (Dask scheduler address and TLS files)

`python -m engine config` prints a file holding every option at its default (options whose
default is "none" are shown commented out, as TOML has no null). Sites are an array of tables:

    [[ingest.sites]]
    name = "florida"
    match = ["*/florida/*"]
    clock_offset_s = 2.5
    frame_types = {"EXPOSE" = "light"}

frame-type overrides a table of path glob = type: `[ingest.frame_types]` `"*/twilight/*" = "flat"`,
and target pixel positions a table of run id or site name = [x, y]: `[sky.target_xy]`
`florida = [512.3, 380.1]`.
An unknown option or a value of the wrong kind is an EngineValueError naming it. Tables and
options renamed since (see `_RENAMED_TABLES`, `_RENAMED`) are still read under their old name,
with a warning. `[ensemble] exclude_flags` is a list of flag names (engine.flags.MeasurementFlag)
or their bitmask.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path

from engine.errors import EngineFileError, EngineValueError
from engine.flags import describe
from engine.settings import (CalibrationConfig, ClusterConfig, EnsembleConfig, IngestConfig,
                             PhotometryConfig, PipelineConfig, Site, SkyConfig)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["default_config_toml", "load_config", "parse_config"]

_SECTIONS = {"ingest": IngestConfig, "calibration": CalibrationConfig,
             "photometry": PhotometryConfig, "ensemble": EnsembleConfig,
             "sky": SkyConfig, "pipeline": ClusterConfig}

#: Old table names, still read: old name -> new name.
_RENAMED_TABLES = {"extraction": "photometry"}

#: Old option names, still read: (table, old name) -> new name.
_RENAMED = {("ensemble", "telescope_aperture_m"): "aperture_diameter_m",
            ("ensemble", "scintillation_c_y"): "scintillation_cy"}

log = logging.getLogger("engine.settings")


def _tuples(value):
    """TOML arrays become the tuples the frozen settings classes hold."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def _build(cls, values: dict, where: str):
    if not isinstance(values, dict):
        raise EngineValueError(f"[{where}] must be a table")
    values = _renamed(values, where)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise EngineValueError(f"[{where}]: unknown option(s) {', '.join(unknown)}; known: "
                               + ", ".join(sorted(known)))
    try:
        return cls(**{k: _tuples(v) for k, v in values.items()})
    except TypeError as exc:
        raise EngineValueError(f"[{where}]: {exc}") from None


def _renamed(values: dict, where: str) -> dict:
    """`values` with old option names replaced by the new ones (each warned about)."""
    values = dict(values)
    for (table, old), new in _RENAMED.items():
        if table == where and old in values:
            if new in values:
                raise EngineValueError(f"[{where}]: give {new} only ({old} is its old name)")
            log.warning("[%s] %s is deprecated: it is now called %s", where, old, new)
            values[new] = values.pop(old)
    return values


def _renamed_tables(document: dict) -> dict:
    """`document` with old table names replaced by the new ones (each warned about)."""
    document = dict(document)
    for old, new in _RENAMED_TABLES.items():
        if old in document:
            if new in document:
                raise EngineValueError(f"give [{new}] only ([{old}] is its old name)")
            log.warning("[%s] is deprecated: it is now called [%s]", old, new)
            document[new] = document.pop(old)
    return document


def parse_config(text: str) -> PipelineConfig:
    """The PipelineConfig a TOML text describes (missing options keep their defaults)."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise EngineValueError(f"configuration is not valid TOML: {exc}") from None
    document = _renamed_tables(document)
    unknown = sorted(set(document) - set(_SECTIONS))
    if unknown:
        raise EngineValueError(f"unknown configuration table(s) {', '.join(unknown)}; known: "
                               + ", ".join(_SECTIONS))
    ingest = dict(document.get("ingest", {}))
    sites = ingest.pop("sites", [])
    if not isinstance(sites, list):
        raise EngineValueError("[ingest] sites must be an array of tables ([[ingest.sites]])")
    ingest["sites"] = tuple(_build(Site, site, "ingest.sites") for site in sites)
    frame_types = ingest.pop("frame_types", {})
    if not isinstance(frame_types, dict):
        raise EngineValueError('[ingest.frame_types] must map path globs to types: "*/x/*" = "flat"')
    ingest["frame_types"] = tuple(frame_types.items())
    sky = dict(document.get("sky", {}))
    target_xy = sky.pop("target_xy", {})
    if not isinstance(target_xy, dict):
        raise EngineValueError("[sky.target_xy] must map run ids or site names to [x, y]")
    sky["target_xy"] = tuple((name, tuple(xy) if isinstance(xy, list) else xy)
                             for name, xy in target_xy.items())
    return PipelineConfig(
        ingest=_build(IngestConfig, ingest, "ingest"),
        calibration=_build(CalibrationConfig, document.get("calibration", {}), "calibration"),
        photometry=_build(PhotometryConfig, document.get("photometry", {}), "photometry"),
        ensemble=_build(EnsembleConfig, document.get("ensemble", {}), "ensemble"),
        sky=_build(SkyConfig, sky, "sky"),
        cluster=_build(ClusterConfig, document.get("pipeline", {}), "pipeline"))


def load_config(path) -> PipelineConfig:
    """Read a TOML configuration file (see the module docstring)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise EngineFileError(f"{path}: cannot read the configuration ({exc.strerror})") from None
    try:
        return parse_config(text)
    except EngineValueError as exc:
        raise EngineValueError(f"{path}: {exc}") from None


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def default_config_toml() -> str:
    """A configuration file holding every option at its default value."""
    lines = ["# The engine's configuration for `python -m engine reduce --config FILE`.",
             "# Every option is shown at its default; the classes of engine.settings (one per",
             "# table: IngestConfig and Site, CalibrationConfig, PhotometryConfig, SkyConfig,",
             "# EnsembleConfig) say what each one does.", ""]
    for section, cls in _SECTIONS.items():
        lines.append(f"[{section}]")
        defaults = cls()
        for field in dataclasses.fields(cls):
            if (section, field.name) in (("ingest", "sites"), ("ingest", "frame_types"),
                                         ("sky", "target_xy")):
                continue
            value = getattr(defaults, field.name)
            if (section, field.name) == ("ensemble", "exclude_flags"):
                value = describe(value)
            if value is None:
                lines.append(f"# {field.name} =   (none by default)")
            else:
                lines.append(f"{field.name} = {_toml_value(value)}")
        if section == "ingest":
            lines += ["", "# [ingest.frame_types]", '# "*/twilight/*" = "flat"', "",
                      "# [[ingest.sites]]", '# name = "florida"', '# match = ["*/florida/*"]',
                      "# longitude_deg = -81.0", "# latitude_deg = 28.5", "# height_m = 20.0",
                      "# clock_offset_s = 0.0", "# clock_uncertainty_s = 0.0",
                      "# utc_offset_hours = -5.0",
                      '# time_reference = "start"   # or "mid", "end"; default: inferred per run',
                      "# pedestal_adu = 100.0      # default: the header's PEDESTAL",
                      '# frame_types = {"EXPOSE" = "light", "Focus" = "light"}',
                      "# aperture_diameter_m = 0.28", "# gain_e_per_adu = 1.6",
                      "# read_noise_e = 9.0", "# saturation_adu = 4095"]
        if section == "sky":
            lines += ["", "# [sky.target_xy]", "# florida = [512.3, 380.1]"]
        lines.append("")
    return "\n".join(lines)
