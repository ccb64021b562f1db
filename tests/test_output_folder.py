"""The output folder: one writer at a time (a lock that dies with its holder), dead runs'
temporaries removed, system errors named, Ctrl-C stops a reduction cleanly and a rerun
resumes, a symlink loop among the inputs is skipped, and the Dask scheduler's security."""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from engine.cli import INTERRUPTED, main
from engine.errors import (
    EngineFileError,
    InputNotFoundError,
    OutputLockedError,
    file_error,
)
from engine.io.atomic import atomic_path
from engine.io.fits import find_fits_files
from engine.io.lock import LOCK_FILE, output_lock, remove_dead_temporaries
from engine.settings import ClusterConfig
from engine.settings.file import parse_config

HOLD = ("import sys, time\n"
        "from engine.io.lock import output_lock\n"
        "with output_lock(sys.argv[1]):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(600)\n")


@pytest.fixture
def holder(tmp_path):
    """A separate process holding the lock of tmp_path/out."""
    out = tmp_path / "out"
    # Outside the checkout: the child imports the installed engine, as a user's process would.
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], cwd=tmp_path,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    yield out, process
    process.kill()
    process.wait()


def test_second_writer_is_refused_naming_the_holder(holder, tmp_path, capsys):
    out, process = holder
    raw = tmp_path / "raw"
    raw.mkdir()
    before = sorted(p.name for p in out.iterdir())
    for argv in (["reduce", str(raw), "--out", str(out)], ["ingest", str(raw), "--out", str(out)],
                 ["calibrate", str(raw), "--out", str(out)],
                 ["simulate", "--preset", "tiny", "--out", str(out)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"output folder {str(out)!r} is in use by another run" in err
        assert f"pid {process.pid} on " in err and " since 20" in err
    assert sorted(p.name for p in out.iterdir()) == before == [LOCK_FILE]


def test_the_lock_dies_with_a_killed_holder(holder):
    out, process = holder
    with pytest.raises(OutputLockedError), output_lock(out):
        pass
    process.send_signal(signal.SIGKILL)
    process.wait()
    with output_lock(out):  # the kernel released it: no stale lock
        assert f"pid {os.getpid()} " in (out / LOCK_FILE).read_text()


def test_the_holding_thread_may_lock_again_and_another_thread_may_not(tmp_path):
    """The command line holds the lock and then calls reduce(), which takes it too; another
    thread of the same process is a second writer."""
    import threading

    out = tmp_path / "out"
    refused = []

    def other_writer():
        try:
            with output_lock(out):
                refused.append(False)
        except OutputLockedError as exc:
            refused.append("another thread of this process" in str(exc))

    with output_lock(out):
        with output_lock(out):
            assert (out / LOCK_FILE).exists()
        worker = threading.Thread(target=other_writer)
        worker.start()
        worker.join()
    assert refused == [True]
    with output_lock(out):  # released by the outer block: taken again
        pass


def test_the_reduce_api_is_refused_by_another_processs_lock(holder, tmp_path):
    from engine.pipeline import reduce

    out, process = holder
    raw = tmp_path / "raw"
    raw.mkdir()
    with pytest.raises(OutputLockedError, match=f"pid {process.pid} on "):
        reduce([raw], out)
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]


def test_dead_runs_temporaries_are_removed_once_the_lock_is_held(tmp_path):
    out = tmp_path / "out"
    # What a killed writer leaves: an atomic file's temporary, a Zarr temporary, a retired cube.
    with pytest.raises(KeyboardInterrupt), atomic_path(out / "frames.parquet") as temporary:
        temporary.write_bytes(b"half")
        leftover = temporary.with_name(temporary.name.replace("tmp-", "tmp-99999-"))
        leftover.write_bytes(b"half")
        raise KeyboardInterrupt
    zarr_temporary = out / "calibrated" / ".RUN.zarr.tmp-1234-abcd"
    (zarr_temporary / "data").mkdir(parents=True)
    (zarr_temporary / "data" / "0.0.0").write_bytes(b"x")
    retired = out / "cubes" / ".RUN.zarr.old-1234"
    retired.mkdir(parents=True)
    kept = [out / "calibrated" / "RUN.zarr", out / "cubes" / ".keep", out / "notes.tmp.txt"]
    kept[0].mkdir()
    kept[1].write_text("")
    kept[2].write_text("")
    with output_lock(out):
        pass
    assert not leftover.exists() and not zarr_temporary.exists() and not retired.exists()
    assert all(path.exists() for path in kept)
    assert remove_dead_temporaries(out) == []


# ----------------------------------------------------------------------------------------------
# System errors become typed errors naming the path

def test_disk_full_is_named():
    try:
        with open("/dev/full", "w") as handle:  # a real ENOSPC from the system
            handle.write("x")
            handle.flush()
    except OSError as exc:
        real = exc
    else:
        pytest.skip("/dev/full is not a full device here")
    assert real.errno == errno.ENOSPC
    error = file_error(real, "/data/out/frames.parquet", "write")
    assert isinstance(error, EngineFileError) and isinstance(error, OSError)
    assert str(error) == "cannot write '/data/out/frames.parquet': the disk is full"


@pytest.mark.parametrize("code, reason", [(errno.EACCES, "permission denied"),
                                          (errno.EROFS, "the file system is read-only"),
                                          (errno.ENOTDIR, "is a file, not a folder")])
def test_permission_and_read_only_errors_are_named(code, reason):
    error = file_error(OSError(code, os.strerror(code)), "/x/out", "write into")
    assert str(error).startswith("cannot write into '/x/out': ") and reason in str(error)


def test_an_out_folder_the_system_refuses_is_named(tmp_path, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    out = Path("/proc/engine-out")  # /proc looks writable to root, but refuses new folders
    assert main(["reduce", str(raw), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write into the output folder {str(out)!r}: ")
    assert "Traceback" not in err


def test_out_that_is_not_writable(tmp_path, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    out = Path("/proc/self/engine-out")  # a folder no one may write into, root included
    assert main(["reduce", str(raw), "--out", str(out)]) == 2
    assert (f"--out: {str(out)!r} cannot be created: '/proc/self' is not writable"
            in capsys.readouterr().err)


def test_a_fits_symlink_loop_is_skipped_with_a_warning(tmp_path, caplog):
    folder = tmp_path / "raw"
    folder.mkdir()
    (folder / "good.fits").write_bytes(b"")
    os.symlink(folder / "loop.fits", folder / "loop.fits")
    os.symlink(folder / "b.fits", folder / "a.fits")
    os.symlink(folder / "a.fits", folder / "b.fits")
    with caplog.at_level(logging.WARNING, logger="engine"):
        found = find_fits_files([folder])
    assert found == [(folder / "good.fits").resolve()]
    warned = " ".join(record.getMessage() for record in caplog.records)
    assert all(f"skipped {folder / name}" in warned for name in ("loop.fits", "a.fits",
                                                                  "b.fits"))


# ----------------------------------------------------------------------------------------------
# Ctrl-C during reduce

def _engine(*args, cwd, **kwargs):
    """`python -m engine ARGS` in a child run outside the checkout (the installed engine)."""
    env = {**os.environ, "ENGINE_PROGRESS": "0"}
    return subprocess.Popen([sys.executable, "-m", "engine", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.mark.slow
def test_ctrl_c_during_reduce_then_the_same_command_resumes(tmp_path):
    simulation = _engine("simulate", "--preset", "tiny", "--out", str(tmp_path / "raw"), "-q",
                         cwd=tmp_path)
    assert simulation.wait(timeout=300) == 0, simulation.stderr.read()
    import json

    target = json.loads((tmp_path / "raw" / "truth.json").read_text())["target"]
    out = tmp_path / "out"
    command = ["reduce", str(tmp_path / "raw"), "--out", str(out), "--catalogue",
               str(tmp_path / "raw" / "catalogue.csv"), "--target-ra", target["ra_hms"],
               "--target-dec", target["dec_dms"], "--threads", "2"]
    run = _engine(*command, cwd=tmp_path)
    deadline = time.monotonic() + 300
    while not (out / "frames.parquet").exists() and run.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert run.poll() is None, run.stderr.read()
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=120)
    assert run.returncode == INTERRUPTED
    assert err.strip().splitlines()[-1] == "interrupted; rerun the same command to resume"
    assert "Traceback" not in err
    assert pq.read_table(out / "frames.parquet").num_rows > 0  # whole, or not there
    assert not list(out.glob(".*.tmp-*"))  # the atomic writers cleaned up after themselves

    rerun = _engine(*command, cwd=tmp_path)
    printed, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err
    assert "reduced 3 run(s)" in printed
    assert pq.read_table(out / "lightcurves.parquet").num_rows > 0
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


# ----------------------------------------------------------------------------------------------
# The Dask scheduler: TLS on the command line and in [pipeline]

@pytest.mark.parametrize("address, warned", [
    ("tcp://10.1.2.3:8786", True), ("cluster.example.org:8786", True),
    ("tls://cluster.example.org:8786", False), ("tcp://127.0.0.1:8786", False),
    ("localhost:8786", False), ("tcp://[::1]:8786", False), (None, False)])
def test_plain_connection_to_another_machine_is_flagged(address, warned):
    assert ClusterConfig(scheduler=address).plain_remote_scheduler() is warned


def test_tls_files_become_dask_security(tmp_path):
    pytest.importorskip("distributed")
    config = parse_config(f'[pipeline]\nscheduler = "tls://cluster.example.org:8786"\n'
                          f'tls_ca_file = "{tmp_path}/ca.pem"\ntls_cert = "{tmp_path}/me.pem"\n'
                          f'tls_key = "{tmp_path}/me.key"\n').cluster
    security = config.security()
    assert security.require_encryption
    assert security.tls_ca_file == f"{tmp_path}/ca.pem"
    assert security.tls_client_cert == f"{tmp_path}/me.pem"
    assert security.tls_client_key == f"{tmp_path}/me.key"
    assert ClusterConfig().security() is None


def test_pipeline_table_refuses_unknown_and_empty_options():
    with pytest.raises(ValueError, match=r"\[pipeline\]: unknown option\(s\) tls_certificate"):
        parse_config('[pipeline]\ntls_certificate = "x"\n')
    with pytest.raises(ValueError, match="pipeline scheduler must be a non-empty string"):
        parse_config('[pipeline]\nscheduler = ""\n')


def test_reduce_warns_about_a_plain_remote_scheduler(tmp_path, caplog):
    from engine.pipeline import reduce

    with caplog.at_level(logging.WARNING, logger="engine"), pytest.raises(InputNotFoundError):
        reduce([tmp_path / "missing"], tmp_path / "out", scheduler="tcp://10.255.0.1:8786")
    assert "is on another machine and the connection is not encrypted" in caplog.text


@pytest.mark.parametrize("keyword", ["workers", "threads"])
def test_reduce_refuses_zero_workers_or_threads_before_writing(tmp_path, keyword):
    from engine.pipeline import reduce

    raw = tmp_path / "raw"
    raw.mkdir()
    with pytest.raises(ValueError, match=f"{keyword} must be an integer >= 1, got 0"):
        reduce([raw], tmp_path / "out", **{keyword: 0})
    assert not (tmp_path / "out").exists()


def test_reduce_takes_workers_or_a_scheduler_not_both(tmp_path):
    from engine.pipeline import reduce

    with pytest.raises(ValueError, match="give workers .* or a scheduler, not both"):
        reduce([tmp_path], tmp_path / "out", workers=2, scheduler="tls://cluster:8786")
    assert not (tmp_path / "out").exists()


def test_a_ctrl_c_that_a_library_swallows_still_ends_the_command_as_interrupted():
    from engine.cli import _remembered_interrupts

    with _remembered_interrupts() as received:
        try:  # as a library catching BaseException, or a finaliser, would
            signal.raise_signal(signal.SIGINT)
        except BaseException:
            pass
    assert received == [signal.SIGINT]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt):  # outside a command, Ctrl-C is Python's again
        signal.raise_signal(signal.SIGINT)
