"""Progress bars: on stderr when asked for (or on a terminal), never inside quiet(), never
changing what they wrap."""

import threading

from engine.progress import progress, quiet


def test_bar_is_drawn_when_forced_and_yields_everything(monkeypatch, capsys):
    monkeypatch.setenv("ENGINE_PROGRESS", "1")
    assert list(progress(range(5), desc="calibrate run-1")) == list(range(5))
    with progress(total=4, desc="photometry run-1") as bar:
        bar.update(4)
        assert bar.n == bar.total == 4
    err = capsys.readouterr().err
    assert "calibrate run-1" in err and "photometry run-1" in err and "frame" in err


def test_no_bar_when_off_or_quiet_or_not_a_terminal(monkeypatch, capsys):
    monkeypatch.setenv("ENGINE_PROGRESS", "0")
    assert list(progress(range(3), desc="off")) == [0, 1, 2]
    monkeypatch.setenv("ENGINE_PROGRESS", "1")
    with quiet():
        assert list(progress(range(3), desc="quiet")) == [0, 1, 2]
    monkeypatch.delenv("ENGINE_PROGRESS")
    assert list(progress(range(3), desc="captured")) == [0, 1, 2]  # pytest's stderr: no tty
    assert capsys.readouterr().err == ""


def test_quiet_belongs_to_its_own_thread(monkeypatch, capsys):
    monkeypatch.setenv("ENGINE_PROGRESS", "1")
    drawn = []

    def elsewhere():
        drawn.append(not progress(total=1, desc="other thread").disable)

    with quiet():
        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join()
    assert drawn == [True]
