"""Plots a person wants to look at (matplotlib, written to files; no screen needed).

Each function takes the products `reduce` writes (Arrow tables, the report dict), draws with
matplotlib's Agg backend, writes the PNG atomically (temporary name, then rename) and returns
its path. This module only re-exports; one module per plot:

- plot_transit_fit(lightcurves, fit, path) (transit): the joint transit fit and its residuals.
- plot_comparison_weights(report or star summary, path) (weights): each run's comparison
  stars' share of the ensemble weight, and their scatter against the noise model.
- plot_transparency(lightcurves, path) (transparency): each run's frame transparency and zero
  point against time, flagged frames marked.
- plot_noise_budget(photometry, path, lightcurves=...) (noise_budget): the noise model's terms
  for one star per run (the target by default) against time or, for every star, against
  magnitude, with the total and the scatter measured.

What they share (figure, margins, the atomic write, table columns) is in `canvas`.
"""

from engine.plots.noise_budget import plot_noise_budget
from engine.plots.transit import plot_transit_fit
from engine.plots.transparency import plot_transparency
from engine.plots.weights import plot_comparison_weights

__all__ = ["plot_comparison_weights", "plot_noise_budget", "plot_transit_fit",
           "plot_transparency"]
