"""Device selection: the `device` setting ('cpu', 'cuda', 'auto') from the API, the TOML file and
`reduce --device`, and the CPU path's promise never to import numba.cuda."""

import os
import subprocess
import sys
import tempfile
import textwrap

import pytest

from engine.cli import main
from engine.device import resolve_device
from engine.errors import DeviceUnavailableError, EngineValueError
from engine.settings import PhotometryConfig
from engine.settings.file import parse_config


def _python(code: str, **env) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                            env=dict(os.environ, **env), cwd=tempfile.gettempdir(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _has_gpu() -> bool:
    return "cuda" in _python("""
        from engine.device import resolve_device
        print(resolve_device("auto")[0])
    """, NUMBA_ENABLE_CUDASIM="0")


def test_the_setting_is_checked_and_read_from_the_toml_file():
    assert PhotometryConfig().device == "cpu"
    assert parse_config('[photometry]\ndevice = "cuda"\n').photometry.device == "cuda"
    assert parse_config('[photometry]\ndevice = "auto"\n').photometry.device == "auto"
    with pytest.raises(EngineValueError, match="photometry device"):
        PhotometryConfig(device="gpu")
    with pytest.raises(EngineValueError, match="device must be one of"):
        resolve_device("opencl")
    assert resolve_device("cpu") == ("cpu", "device: cpu")


def test_the_cpu_path_never_imports_numba_cuda():
    out = _python("""
        import sys
        import engine, engine.photometry_stage, engine.pipeline, engine.photometry
        from engine.device import resolve_device
        assert resolve_device("cpu")[0] == "cpu"
        print("numba.cuda" in sys.modules)
    """)
    assert out.strip() == "False"


def test_auto_never_picks_the_simulator_and_cuda_accepts_it():
    out = _python("""
        from engine.device import resolve_device
        print(resolve_device("auto"))
        print(resolve_device("cuda"))
    """, NUMBA_ENABLE_CUDASIM="1")
    assert "('cpu', 'device: cpu (no usable CUDA device)')" in out
    assert "('cuda', 'device: cuda (simulator)')" in out


def test_cuda_without_a_device_stops_before_any_work(tmp_path, capsys):
    if _has_gpu():
        pytest.skip("this machine has a usable GPU")
    with pytest.raises(DeviceUnavailableError, match="no usable CUDA device"):
        resolve_device("cuda")
    from engine.pipeline import reduce

    with pytest.raises(DeviceUnavailableError):
        reduce([tmp_path / "nothing"], tmp_path / "api", device="cuda")
    assert not (tmp_path / "api").exists()
    config = tmp_path / "gpu.toml"
    config.write_text('[photometry]\ndevice = "cuda"\n')
    empty = tmp_path / "empty"
    empty.mkdir()
    for argv in (["--device", "cuda"], ["--config", str(config)]):
        code = main(["reduce", str(empty), "--out", str(tmp_path / "cli"), *argv])
        assert code == 2 and not (tmp_path / "cli").exists()
        assert "no usable CUDA device" in capsys.readouterr().err
    # auto says which in one line, then goes on (here to an input folder without frames).
    assert main(["reduce", str(empty), "--out", str(tmp_path / "auto"),
                 "--device", "auto"]) == 2
    assert capsys.readouterr().out.splitlines()[0] == "device: cpu (no usable CUDA device)"
