"""The user guide cannot rot: the tutorial's Python blocks run, as written, on the real night they
describe (../shared/data), and every public name has its place on the API page.

The tutorial runs in a fresh interpreter in which dask cannot be imported: the library and a
plain `reduce` must work without the optional dask extra.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from astropy.io import fits

import engine

DOCS = Path(__file__).resolve().parents[1] / "docs"
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
BULGE = SHARED / "data" / "real" / "saao_microlensing_bulge"

# Run first in the tutorial's interpreter: dask and distributed are not found on the path, exactly
# as when they are not installed (astropy, too, then sees no dask).
WITHOUT_DASK = '''
import importlib.machinery, sys
class _PathWithoutDask(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] in ("dask", "distributed"):
            return None
        return super().find_spec(name, path, target)
sys.meta_path[:] = [_PathWithoutDask if finder is importlib.machinery.PathFinder else finder
                    for finder in sys.meta_path]
'''


def code_blocks(page: Path, language: str) -> list[str]:
    """The page's `.. code-block:: LANGUAGE` bodies, dedented, in order."""
    pattern = rf"^\.\. code-block:: {language}\n\n((?:   .*\n|\n)+)"
    return ["\n".join(line[3:] for line in match.group(1).splitlines())
            for match in re.finditer(pattern, page.read_text(), flags=re.MULTILINE)]


def python_blocks(page: Path) -> list[str]:
    return code_blocks(page, "python")


def shown_output(page: Path) -> list[str]:
    """The lines of the page's output blocks that a rerun must print again: all but the stage
    times, which vary, and the lines with a folder elided (...)."""
    return [line.strip() for block in code_blocks(page, "text") for line in block.splitlines()
            if line.strip() and "stage times" not in line and "..." not in line]


def test_tutorial_blocks_are_found():
    blocks = python_blocks(DOCS / "tutorial.rst")
    assert len(blocks) >= 6
    assert "engine.ingest(" in blocks[1] and "engine.reduce(" in blocks[4]


@pytest.mark.skipif(not BULGE.is_dir(), reason="../shared/data is not present")
def test_tutorial_reduces_the_real_night_without_dask(tmp_path):
    # The tutorial reads ../shared/data from the repository root: give it the same layout.
    work = tmp_path / "repo"
    work.mkdir()
    (tmp_path / "shared").symlink_to(SHARED, target_is_directory=True)
    script = tmp_path / "tutorial.py"
    script.write_text(WITHOUT_DASK + "\n\n".join(python_blocks(DOCS / "tutorial.rst")))
    done = subprocess.run([sys.executable, str(script)], cwd=work, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    printed = {line.strip() for line in done.stdout.splitlines()}
    missing = [line for line in shown_output(DOCS / "tutorial.rst") if line not in printed]
    assert not missing, f"the tutorial shows output its code no longer prints: {missing}"

    out = work / "bulge-night"
    frames = pq.read_table(out / "frames.parquet")
    assert frames.num_rows == 17 and set(frames["status"].to_pylist()) == {"ok"}
    # The observatory's own mid-exposure time (HJD, UTC) against the engine's BJD_TDB: TT - UTC
    # was 67.184 s in 2013, and the Sun and the barycentre differ by a few seconds at most.
    for row in frames.to_pylist():
        hjd_utc = fits.getheader(row["path"])["PHJDMID"]
        assert abs((row["time_bjd_tdb"] - hjd_utc) * 86400 - 67.184) < 8.0, row["path"]

    lightcurves = pq.read_table(out / "lightcurves.parquet")
    assert set(lightcurves["run_id"].to_pylist()) == {"SAAO_SAAO-1.0m_2013-08-02_58"}
    target = lightcurves.filter(pc.equal(lightcurves["role"], "target"))
    assert target.num_rows == 17 and len(set(target["star_id"].to_pylist())) == 1
    assert np.all(np.diff(target["time_bjd_tdb"].to_numpy()) > 0)
    rel_flux = target["rel_flux"].to_numpy()
    assert np.all(np.isfinite(rel_flux)) and np.all(np.abs(rel_flux - 1) < 0.5)
    report = json.loads((out / "report.json").read_text())
    assert "skipped" not in report["runs"]["SAAO_SAAO-1.0m_2013-08-02_58"]
    assert (out / "target.png").stat().st_size > 10_000


def test_reduce_on_a_cluster_without_dask_names_the_extra(tmp_path):
    (tmp_path / "in").mkdir()
    code = WITHOUT_DASK + (
        "from engine.cli import main\n"
        f"sys.exit(main(['reduce', {str(tmp_path / 'in')!r}, '--out', "
        f"{str(tmp_path / 'out')!r}, '--workers', '2']))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr
    assert "pip install 'photometry-engine[dask]'" in done.stderr
    assert not (tmp_path / "out").exists()  # refused before any work


def test_the_public_api_loads_without_dask(tmp_path):
    code = WITHOUT_DASK + (
        "import engine, engine.cli\n"
        "for name in engine.__all__: getattr(engine, name)\n"
        "engine.cli.build_parser()\n"
        "assert not any(m.split('.')[0] in ('dask', 'distributed') for m in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]


def test_every_public_name_is_on_the_api_page():
    page = (DOCS / "api.rst").read_text()
    documented = set(re.findall(r"^\.\. auto(?:function|class|data):: engine\.(\w+)", page,
                                flags=re.MULTILINE))
    assert documented == set(engine.__all__) - {"__version__"}


def test_every_products_table_names_a_schema_the_engine_writes():
    """Each ``schema-columns`` directive resolves to a pyarrow schema whose every column is
    described; a schema moved or renamed fails here, not only in the docs build."""
    import importlib

    import pyarrow as pa

    targets = re.findall(r"^\.\. schema-columns:: (\S+)$", (DOCS / "products.rst").read_text(),
                         flags=re.MULTILINE)
    assert len(targets) >= 4
    for target in targets:
        module, _, name = target.rpartition(".")
        schema = getattr(importlib.import_module(module), name)
        assert isinstance(schema, pa.Schema), target
        undescribed = [f.name for f in schema if not (f.metadata or {}).get(b"description")]
        assert not undescribed, (target, undescribed)
