"""Comparison and check stars: the automatic choice and the user's override."""

import numpy as np
import pyarrow as pa
import pytest
import synthetic_photometry as synthetic

from engine.ensemble import EnsembleConfig, build_run_lightcurve
from engine.ensemble.inputs import prepare_run
from engine.ensemble.selection import select_stars
from engine.errors import EngineValueError


@pytest.fixture(scope="module")
def run():
    return synthetic.network_night(seed=1, n_frames=60).runs[1]


def _select(run, config=EnsembleConfig(), photometry=None):
    data = prepare_run(photometry or run["photometry"], run["frames"], run["stars"])
    return data, select_stars(data, data.aperture_index(4.5), config)


def test_automatic_choice_follows_the_rules(run):
    data, selection = _select(run)
    comparisons = set(selection.comparisons.tolist())
    checks = set(selection.checks.tolist())
    truth = run["truth"]
    assert truth["target"] not in comparisons | checks
    assert not comparisons & checks and len(checks) == 3
    assert not comparisons & set(truth["saturated_stars"].tolist())
    assert not comparisons & set(truth["blended_stars"].tolist())
    for star in truth["saturated_stars"]:
        assert "saturated" in selection.rejected[int(star)]
    # Within the brightness window, closest to the target first.
    delta = selection.magnitude[selection.comparisons] - selection.magnitude[truth["target"]]
    assert np.all((delta >= -2.5) & (delta <= 1.5))
    assert np.all(np.diff(np.abs(delta)) >= 0)
    # The variable candidate looks ideal from its brightness: it is chosen, weighting fixes it.
    assert truth["variable"] in comparisons


def test_poorly_measured_and_crowded_stars_are_rejected(run):
    _, first = _select(run)
    victim = int(first.comparisons[0])
    phot = run["photometry"]
    star = np.asarray(phot.column("star").to_numpy())
    frame = np.asarray(phot.column("frame").to_numpy())
    flux = np.asarray(phot.column("flux").to_numpy()).copy()
    flux[(star == victim) & (frame % 5 == 0)] = np.nan          # lost on 20% of frames
    changed = phot.set_column(phot.column_names.index("flux"), "flux", pa.array(flux))
    _, selection = _select(run, photometry=changed)
    assert victim not in selection.comparisons
    assert "measured on 80%" in selection.rejected[victim]

    # A bright neighbour within the isolation radius rejects a candidate.
    stars = run["stars"]
    x = np.asarray(stars.column("x").to_numpy()).copy()
    y = np.asarray(stars.column("y").to_numpy()).copy()
    other = int(first.comparisons[1])
    x[other], y[other] = x[victim] + 3.0, y[victim]
    moved = stars.set_column(stars.column_names.index("x"), "x", pa.array(x))
    moved = moved.set_column(moved.column_names.index("y"), "y", pa.array(y))
    data = prepare_run(run["photometry"], run["frames"], moved)
    selection = select_stars(data, data.aperture_index(4.5), EnsembleConfig())
    assert victim not in selection.comparisons and other not in selection.comparisons
    assert "not isolated" in selection.rejected[victim]


def test_user_override_and_exclusions(run):
    _, auto = _select(run)
    chosen = tuple(int(j) for j in auto.comparisons[:3])
    config = EnsembleConfig(comparisons=chosen, check_stars=(int(auto.comparisons[3]),),
                            exclude_stars=(int(auto.comparisons[4]),))
    _, selection = _select(run, config)
    assert tuple(selection.comparisons.tolist()) == chosen and not selection.automatic
    assert selection.checks.tolist() == [int(auto.comparisons[3])]
    _, excluded = _select(run, EnsembleConfig(exclude_stars=chosen))
    assert not set(chosen) & set(excluded.comparisons.tolist())
    assert excluded.rejected[chosen[0]] == "excluded by the user"
    result = build_run_lightcurve(run["photometry"], run["frames"], run["stars"], config=config)
    assert result.diagnostics["selection"]["comparisons"] == list(chosen)
    table = result.table
    roles = dict(zip(table.column("star").to_pylist(), table.column("role").to_pylist()))
    assert {roles[c] for c in chosen} == {"comparison"}
    assert roles[int(auto.comparisons[3])] == "check"


def test_bad_overrides_raise(run):
    target = run["truth"]["target"]
    with pytest.raises(EngineValueError, match="target cannot be"):
        _select(run, EnsembleConfig(comparisons=(target, 1)))
    with pytest.raises(EngineValueError, match="not in the star table"):
        _select(run, EnsembleConfig(comparisons=(10 ** 6, 1)))
    with pytest.raises(EngineValueError, match="both comparison and check"):
        _select(run, EnsembleConfig(comparisons=(1, 2), check_stars=(2,)))
    with pytest.raises(EngineValueError, match="at least 3"):
        _select(run, EnsembleConfig(comparisons=(1, 2), min_comparisons=3, max_comparisons=5))
    with pytest.raises(EngineValueError, match="twice"):
        EnsembleConfig(comparisons=(1, 1))


def test_narrow_window_falls_back_with_a_note(run):
    config = EnsembleConfig(comparison_brighter_mag=0.0, comparison_fainter_mag=0.0)
    _, selection = _select(run, config)
    assert selection.comparisons.size >= 2
    assert selection.comparisons.size + selection.checks.size >= 8
    assert any("window was widened" in note for note in selection.notes)
