"""Report figures: matplotlib / nilearn figures as PNG data URIs (embedded in the HTML).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
from matplotlib.figure import Figure
from nilearn import plotting
from skimage import filters


def figure_uri(figure: Figure) -> str:
    """A matplotlib figure as a PNG data URI (the figure is closed)."""

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def overlay_figure(background: str, contours: Sequence[tuple[str, str]], title: str) -> str:
    """``background`` with the outlines of masks ``[(path, colour), ...]`` (registration
    and mask checks)."""

    values = np.asarray(nib.load(background).dataobj, dtype=np.float64)
    values = values[np.isfinite(values) & (values != 0)]
    vmin, vmax = np.percentile(values, [2, 99.5]) if values.size else (0.0, 1.0)
    figure = plt.figure(figsize=(10, 3))
    display = plotting.plot_anat(background, display_mode="ortho", figure=figure,
                                 title=title, dim=0, vmin=vmin, vmax=max(vmax, vmin + 1e-6),
                                 draw_cross=False, colorbar=False)
    for path, colour in contours:
        display.add_contours(path, levels=[0.5], colors=colour, linewidths=1.0)
    return figure_uri(figure)


def unwarp_figure(before: str, after: str, anatomy: str, title: str) -> str:
    """Susceptibility distortion correction, as SDCflows' reportlet: the BOLD reference
    before (top) and after (bottom) unwarping, in T1w space, under the edges of the T1w's
    white matter (its intensity at the Otsu threshold within the brain)."""

    t1w = np.asarray(nib.load(anatomy).dataobj, dtype=np.float64)
    level = float(filters.threshold_otsu(t1w[t1w > 0])) if (t1w > 0).any() else 0.5
    cuts = plotting.find_cut_slices(nib.load(after), direction="z", n_cuts=6)
    figure = plt.figure(figsize=(10, 5.6))
    for row, (image, label) in enumerate(((before, "before"), (after, "after"))):
        values = np.asarray(nib.load(image).dataobj, dtype=np.float64)
        values = values[np.isfinite(values) & (values > 0)]
        vmin, vmax = np.percentile(values, [2, 99.5]) if values.size else (0.0, 1.0)
        axes = figure.add_axes((0.0, 0.5 * (1 - row), 1.0, 0.48))
        display = plotting.plot_anat(image, display_mode="z", cut_coords=cuts, axes=axes,
                                     title=f"{title}: {label} distortion correction", dim=0,
                                     vmin=vmin, vmax=max(vmax, vmin + 1e-6),
                                     draw_cross=False, colorbar=False)
        display.add_contours(anatomy, levels=[level], colors="tab:orange", linewidths=0.8)
    return figure_uri(figure)


def parcellation_figure(atlas: str, background: str, title: str) -> str:
    """The atlas labels over the mean BOLD image."""

    figure = plt.figure(figsize=(10, 3))
    plotting.plot_roi(atlas, bg_img=background, display_mode="z", cut_coords=6,
                      figure=figure, title=title, cmap="tab20", alpha=0.6, draw_cross=False)
    return figure_uri(figure)


def carpet_figure(series: np.ndarray, confounds: dict[str, np.ndarray], n_dummy: int,
                  title: str, max_voxels: int = 4000) -> str:
    """Traces of ``confounds`` above a carpet plot of voxel series (Power 2017).

    Parameters
    ----------
    series : array of shape (V, T)
        Brain voxel series (a regular subsample of at most ``max_voxels`` is drawn,
        each z-scored).
    confounds : dict
        Name -> series of length T (e.g. FD, std DVARS).
    """

    step = max(1, len(series) // max_voxels)
    carpet = np.asarray(series[::step], dtype=np.float64)
    carpet = carpet - carpet.mean(axis=1, keepdims=True)
    sd = carpet.std(axis=1, keepdims=True)
    carpet = np.divide(carpet, sd, out=np.zeros_like(carpet), where=sd > 0)
    n_rows = len(confounds) + 1
    figure, axes = plt.subplots(n_rows, 1, figsize=(10, 1.2 * n_rows + 2.5), sharex=True,
                                gridspec_kw={"height_ratios": [1] * len(confounds) + [3]})
    axes = np.atleast_1d(axes)
    for axis, (name, values) in zip(axes, confounds.items(), strict=False):
        axis.plot(values, lw=0.8)
        axis.set_ylabel(name, rotation=0, ha="right", fontsize=8)
        axis.tick_params(labelsize=7)
    axes[0].set_title(title, fontsize=9)
    axes[-1].imshow(carpet, aspect="auto", cmap="gray", vmin=-2, vmax=2,
                    interpolation="nearest")
    if n_dummy:
        for axis in axes:
            axis.axvspan(-0.5, n_dummy - 0.5, color="tab:red", alpha=0.2)
    axes[-1].set_xlabel("volume", fontsize=8)
    axes[-1].set_ylabel("voxels", fontsize=8)
    axes[-1].set_yticks([])
    return figure_uri(figure)


def statmap_figure(stat_map: str, background: str, title: str, threshold: float = 0.1) -> str:
    """A statistical map (e.g. held-out encoding accuracy r) over the template."""

    figure = plt.figure(figsize=(10, 3))
    plotting.plot_stat_map(stat_map, bg_img=background, display_mode="z", cut_coords=6,
                           figure=figure, title=title, threshold=threshold, cmap="hot",
                           draw_cross=False, colorbar=True)
    return figure_uri(figure)


def token_figure(onsets: np.ndarray, durations: np.ndarray, tokens: np.ndarray,
                 codebook_size: int, events: Sequence[tuple[float, float, str]],
                 title: str) -> str:
    """A run's token sequence over time (steps), with its events as shaded spans.

    Parameters
    ----------
    onsets, durations, tokens : arrays of shape (P,)
        One row per time patch (seconds, token index).
    events : sequence of (onset, duration, trial_type)
    """
    figure, axis = plt.subplots(figsize=(10, 2.6))
    kinds = sorted({kind for _, _, kind in events})
    colours = {kind: plt.get_cmap("tab10")(i % 10) for i, kind in enumerate(kinds)}
    for onset, duration, kind in events:
        axis.axvspan(onset, onset + max(duration, 0.5), color=colours[kind], alpha=0.25,
                     lw=0)
    for kind in kinds:
        axis.plot([], [], color=colours[kind], alpha=0.5, lw=6, label=kind)
    edges = np.append(onsets, onsets[-1] + durations[-1]) if len(onsets) else np.array([0.0])
    axis.stairs(tokens, edges, color="k", lw=1.2, baseline=None)
    axis.scatter(onsets + durations / 2, tokens, s=10, color="k", zorder=3)
    axis.set(xlabel="time (s)", ylabel="token", ylim=(-0.5, codebook_size - 0.5),
             title=title, xlim=(edges[0], edges[-1]))
    if kinds:
        axis.legend(loc="upper right", fontsize=7, ncol=min(len(kinds), 4), frameon=False)
    return figure_uri(figure)


def metrics_figure(values: dict[str, dict[str, float]], metric: str) -> str:
    """Grouped bars: per question (``values`` keys), the metric of each system."""
    systems = list(dict.fromkeys(s for by_system in values.values() for s in by_system))
    figure, axis = plt.subplots(figsize=(max(4.0, 1.3 * len(values) + 2), 3))
    width = 0.8 / max(len(systems), 1)
    positions = np.arange(len(values))
    for index, system in enumerate(systems):
        heights = [by_system.get(system, np.nan) for by_system in values.values()]
        axis.bar(positions + (index - (len(systems) - 1) / 2) * width, heights, width,
                 label=system.replace("_", " "))
    axis.set_xticks(positions, list(values), rotation=20, ha="right", fontsize=8)
    axis.set_ylabel(metric.replace("_", " "))
    axis.legend(fontsize=7, frameon=False)
    return figure_uri(figure)
