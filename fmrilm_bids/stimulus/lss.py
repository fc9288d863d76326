"""Single-trial responses: least-squares-separate (LSS) beta series, vectorised.

LSS (Mumford et al. 2012) fits one GLM per event ``i`` with two task regressors, the event
itself and the sum of every other event, plus the nuisance regressors (confounds, cosine
drifts, constant); the event's beta is its response. Done naively that is one GLM per event.
Here the nuisance space is projected out once (``M = I - N N^+``), after which each event's
model has only two columns, whose 2 x 2 normal equations need only

- ``R'^T Y`` (events x voxels: one matrix product for all events),
- ``s'^T Y`` with ``s' = sum_i r'_i`` (one more row),
- the event-wise inner products of ``r'_i`` and ``s'``.

Since ``M`` is symmetric and idempotent, ``r'^T (M Y) = r'^T Y``: the data are never
projected. The result is exactly the ordinary least-squares fit of every per-event model
(tested against nilearn's :class:`~nilearn.glm.first_level.FirstLevelModel`).

Block designs (several pictures of one category in a row) are modelled per block: events
that follow each other within ``max_gap`` seconds with the same ``trial_type`` are merged
into one block event (:func:`group_blocks`, :func:`block_events`).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from nilearn.glm.first_level import compute_regressor, make_first_level_design_matrix

LOGGER = logging.getLogger(__name__)

#: Longest blank (s) between two same-category events that still counts as one block.
DEFAULT_BLOCK_GAP = 4.0
#: Joins the captions of a block's events.
CAPTION_SEPARATOR = " | "
#: Units of the beta series: one beta per event, per block, or decided from the design.
UNITS = ("auto", "event", "block")


def frame_times(n_volumes: int, repetition_time: float, slice_time_ref: float = 0.0) -> np.ndarray:
    """Acquisition time (s) of each volume, at ``slice_time_ref`` (fraction of a TR)."""
    return (np.arange(n_volumes) + slice_time_ref) * repetition_time


def event_regressors(onsets: np.ndarray, durations: np.ndarray, times: np.ndarray,
                     hrf_model: str = "spm", oversampling: int = 50) -> np.ndarray:
    """One HRF-convolved boxcar per event, sampled at ``times``.

    Parameters
    ----------
    onsets, durations : ndarray of shape (n_events,)
        Seconds.
    times : ndarray of shape (n_volumes,)
        Frame times (s), see :func:`frame_times`.
    hrf_model : str, default="spm"
        Any single-regressor HRF of nilearn (``"spm"``, ``"glover"``).
    oversampling : int, default=50

    Returns
    -------
    ndarray of shape (n_volumes, n_events)
    """
    columns = []
    for onset, duration in zip(np.asarray(onsets, float), np.asarray(durations, float),
                               strict=True):
        regressor, _ = compute_regressor(np.array([[onset], [duration], [1.0]]), hrf_model,
                                         times, oversampling=oversampling)
        columns.append(regressor[:, 0])
    return np.column_stack(columns) if columns else np.zeros((len(times), 0))


def nuisance_design(times: np.ndarray, confounds: np.ndarray | None = None,
                    high_pass: float = 0.01) -> np.ndarray:
    """Cosine drifts (nilearn's, up to ``high_pass`` Hz), the confounds and a constant."""
    confounds = None if confounds is None or np.size(confounds) == 0 else np.asarray(confounds)
    names = None if confounds is None else [f"confound{i}" for i in range(confounds.shape[1])]
    design = make_first_level_design_matrix(times, events=None, drift_model="cosine",
                                            high_pass=high_pass, add_regs=confounds,
                                            add_reg_names=names)
    return design.to_numpy(dtype=float)


def lss_betas(data: np.ndarray, regressors: np.ndarray, nuisance: np.ndarray,
              chunk_size: int = 50_000) -> np.ndarray:
    """LSS betas of every event at every voxel, without one GLM per event.

    Parameters
    ----------
    data : ndarray of shape (n_volumes, n_voxels)
    regressors : ndarray of shape (n_volumes, n_events)
        One regressor per event (:func:`event_regressors`).
    nuisance : ndarray of shape (n_volumes, n_nuisance)
        Regressors of no interest, shared by every per-event model (:func:`nuisance_design`).
    chunk_size : int, default=50000
        Voxels per matrix product (bounds the memory to ``n_events x chunk_size``).

    Returns
    -------
    ndarray of shape (n_events, n_voxels), float32
        Beta of the event's own regressor in its model ``[r_i, sum_{j != i} r_j, nuisance]``.
        With a single event the model is ``[r_0, nuisance]``.
    """
    regressors = np.asarray(regressors, dtype=float)
    nuisance = np.asarray(nuisance, dtype=float)
    n_volumes, n_events = regressors.shape
    if data.shape[0] != n_volumes or nuisance.shape[0] != n_volumes:
        raise ValueError(f"data ({data.shape[0]}), regressors ({n_volumes}) and nuisance "
                         f"({nuisance.shape[0]}) must have one row per volume")
    residual = regressors - nuisance @ (np.linalg.pinv(nuisance) @ regressors)
    total = residual.sum(axis=1)
    own = np.einsum("te,te->e", residual, residual)           # r_i' . r_i'
    cross_total = residual.T @ total                           # r_i' . s'
    total_total = float(total @ total)                         # s' . s'
    cross = cross_total - own                                  # r_i' . o_i'
    other = total_total - 2 * cross_total + own                # o_i' . o_i'
    det = own * other - cross ** 2
    # Without other events (or with the others collinear to this one) the model is [r_i, N].
    separate = det > 1e-10 * np.maximum(own * other, 1e-300)
    betas = np.empty((n_events, data.shape[1]), dtype=np.float32)
    weights_all = np.column_stack([residual, total])
    for start in range(0, data.shape[1], chunk_size):
        block = np.asarray(data[:, start:start + chunk_size], dtype=float)
        products = weights_all.T @ block                       # (n_events + 1, chunk)
        mine, summed = products[:-1], products[-1]
        others = summed[None, :] - mine
        with np.errstate(divide="ignore", invalid="ignore"):
            joint = (other[:, None] * mine - cross[:, None] * others) / det[:, None]
            alone = mine / own[:, None]
        betas[:, start:start + chunk_size] = np.where(separate[:, None], joint, alone)
    return betas


def group_blocks(events: pd.DataFrame, max_gap: float = DEFAULT_BLOCK_GAP) -> np.ndarray:
    """Block number of each event (events in onset order).

    An event joins the previous one's block when it has the same ``trial_type`` (when the
    table has one) and starts at most ``max_gap`` seconds after the previous one ends.

    Returns
    -------
    ndarray of int, shape (n_events,)
        Block index per row of ``events`` (in the table's row order), numbered from 0 in
        time order.
    """
    order = np.argsort(events["onset"].to_numpy(float), kind="stable")
    onsets = events["onset"].to_numpy(float)[order]
    ends = onsets + events["duration"].to_numpy(float)[order]
    kinds = (events["trial_type"].astype(str).to_numpy()[order] if "trial_type" in events
             else np.full(len(order), ""))
    blocks_sorted = np.zeros(len(order), dtype=int)
    for k in range(1, len(order)):
        same = kinds[k] == kinds[k - 1] and onsets[k] - ends[k - 1] <= max_gap
        blocks_sorted[k] = blocks_sorted[k - 1] + (0 if same else 1)
    blocks = np.empty_like(blocks_sorted)
    blocks[order] = blocks_sorted
    return blocks


def is_block_design(blocks: np.ndarray) -> bool:
    """Whether most events share their block with others (median block size above one)."""
    if len(blocks) == 0:
        return False
    return float(np.median(np.bincount(blocks))) > 1


def block_events(events: pd.DataFrame, blocks: np.ndarray,
                 separator: str = CAPTION_SEPARATOR) -> pd.DataFrame:
    """One row per block: its first onset, span, ``trial_type`` and the events' captions.

    Columns: ``onset``, ``duration``, ``block``, ``n_events``, then ``trial_type`` and
    ``caption`` when the events have them (the block's captions joined by ``separator``).
    """
    table = events.assign(block=blocks, end=events["onset"] + events["duration"])
    rows = []
    for block, group in table.sort_values("onset").groupby("block", sort=True):
        row = {"onset": float(group["onset"].min()),
               "duration": float(group["end"].max() - group["onset"].min()),
               "block": int(block), "n_events": len(group)}
        if "trial_type" in group:
            row["trial_type"] = str(group["trial_type"].iloc[0])
        if "caption" in group:
            row["caption"] = separator.join(str(c) for c in group["caption"])
        rows.append(row)
    return pd.DataFrame(rows)


def resolve_unit(unit: str, blocks: np.ndarray) -> str:
    """``"event"`` or ``"block"``: ``unit`` itself, or for ``"auto"`` what the design is."""
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {', '.join(UNITS)}, not {unit!r}")
    if unit == "auto":
        return "block" if is_block_design(blocks) else "event"
    return unit
