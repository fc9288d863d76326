"""Confound regression of parcel time series: the strategies and the cleaning.

Denoising is linear, so it is applied to parcel means rather than to every voxel (the
result is the same, and much cheaper): nilearn's :func:`nilearn.signal.clean` regresses the
selected confounds and a discrete-cosine high-pass basis in one model, drops the censored
volumes, and z-scores each parcel. The cosine basis is passed explicitly: nilearn's own
``filter="cosine"`` silently skips the high-pass when a confound correlates with a cosine
(as slow head drifts do).

Strategies (``config.workflow.denoise_strategy``), after Ciric et al. (2017) and
Parkes et al. (2018):

========================  =============================================================
``24P+aCompCor`` default  6 motion parameters, their derivatives and squares (24P), and
                          the first 5 anatomical CompCor components (WM + CSF)
``24P``                   the 24 motion regressors only
``24P+aCompCor+GSR``      the default plus global signal (with derivative and squares)
``36P``                   24P plus white matter, CSF and global signal, each with its
                          derivative and squares
``6P``                    the 6 motion parameters only
========================  =============================================================

In every strategy: a cosine high-pass at ``high_pass`` Hz (0 to disable), non-steady-state
volumes discarded, and with ``scrub`` the volumes whose framewise displacement exceeds
``fd_threshold`` mm censored (with kept segments shorter than 5 volumes, as in Power et al.
2014).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from nilearn.signal import clean

from fmrilm_bids.preproc.confounds import cosine_basis
from fmrilm_bids.preproc.motion import MOTION_COLUMNS

#: Minimum length of an uncensored segment kept when scrubbing (Power et al. 2014).
MIN_SEGMENT = 5
N_COMPCOR = 5


@dataclass(frozen=True)
class Strategy:
    """Which confound columns a strategy regresses."""

    name: str
    motion_expansion: bool
    compcor: int
    tissue: tuple[str, ...]
    description: str


STRATEGIES = {
    s.name: s
    for s in (
        Strategy("24P+aCompCor", True, N_COMPCOR, (),
                 "24 head-motion regressors (6 rigid-body parameters, their temporal "
                 "derivatives and the squares of both) and the first 5 anatomical CompCor "
                 "components of white matter and CSF"),
        Strategy("24P", True, 0, (), "24 head-motion regressors (6 rigid-body parameters, "
                 "their temporal derivatives and the squares of both)"),
        Strategy("24P+aCompCor+GSR", True, N_COMPCOR, ("global_signal",),
                 "24 head-motion regressors, the first 5 anatomical CompCor components and "
                 "the global signal with its derivative and squares"),
        Strategy("36P", True, 0, ("white_matter", "csf", "global_signal"),
                 "24 head-motion regressors and the mean white-matter, CSF and global "
                 "signals, each with its derivative and the squares of both"),
        Strategy("6P", False, 0, (), "the 6 rigid-body head-motion parameters"),
    )
}


def get_strategy(name: str) -> Strategy:
    """The strategy called ``name`` (one of :data:`STRATEGIES`)."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(
            f"Unknown denoising strategy {name!r}; choose one of {', '.join(STRATEGIES)}."
        ) from None


def _expanded(names: tuple[str, ...] | list[str]) -> list[str]:
    return [f"{n}{s}" for n in names
            for s in ("", "_derivative1", "_power2", "_derivative1_power2")]


def select_confounds(table: pd.DataFrame, strategy: Strategy,
                     metadata: dict | None = None) -> pd.DataFrame:
    """The regressors of ``strategy`` from an fMRIPrep-style confounds table.

    aCompCor components of the combined WM+CSF mask are preferred when the sidecar says
    which are which (fMRIPrep also writes separate WM and CSF components); missing values
    (first derivative row) become 0.
    """
    wanted = _expanded(MOTION_COLUMNS) if strategy.motion_expansion else list(MOTION_COLUMNS)
    wanted += _expanded(strategy.tissue)
    if strategy.compcor:
        compcor = sorted(c for c in table.columns if c.startswith("a_comp_cor_"))
        if metadata:
            combined = [c for c in compcor if metadata.get(c, {}).get("Mask") == "combined"]
            compcor = combined or compcor
        wanted += compcor[: strategy.compcor]
    absent = [c for c in wanted if c not in table.columns]
    if absent:
        raise ValueError(
            f"The confounds table lacks the column(s) {', '.join(absent)} needed by the "
            f"{strategy.name!r} denoising strategy."
        )
    return table[wanted].astype(float).fillna(0.0)


def non_steady_state_count(table: pd.DataFrame, dummy_scans: int | None = None) -> int:
    """Leading volumes to discard: ``dummy_scans`` if given, else the table's outliers."""
    if dummy_scans is not None:
        return int(dummy_scans)
    columns = [c for c in table.columns if c.startswith("non_steady_state_outlier")]
    if not columns:
        return 0
    flagged = table[columns].to_numpy().sum(axis=1) > 0
    return int(np.flatnonzero(flagged).max() + 1) if flagged.any() else 0


def censored_volumes(fd: np.ndarray, threshold: float, start: int = 0) -> list[int]:
    """Volumes (0-based) censored by FD scrubbing, counted from ``start`` on.

    Volumes with FD above ``threshold`` are censored, then so are the uncensored segments
    shorter than :data:`MIN_SEGMENT`.
    """
    fd = np.nan_to_num(np.asarray(fd, dtype=float))
    bad = fd > threshold
    bad[:start] = False
    keep = ~bad
    keep[:start] = False
    segments = np.split(np.arange(len(fd)), np.flatnonzero(np.diff(keep.astype(int))) + 1)
    for segment in segments:
        if keep[segment[0]] and len(segment) < MIN_SEGMENT:
            bad[segment] = True
    return [int(i) for i in np.flatnonzero(bad)]


def clean_signals(
    signals: np.ndarray,
    confounds: pd.DataFrame,
    repetition_time: float,
    high_pass: float | None,
    keep: np.ndarray,
) -> np.ndarray:
    """Regress ``confounds`` and a cosine high-pass, keep the ``keep`` volumes, z-score.

    Parameters
    ----------
    signals : array of shape (T, P)
    confounds : DataFrame with T rows
    keep : int array
        Indices of the volumes kept (censoring drops the others before the fit).

    Returns
    -------
    numpy.ndarray of shape (len(keep), P)
    """

    if len(keep) < 2:
        raise ValueError(
            f"Only {len(keep)} volume(s) left after discarding non-steady-state and censored "
            "volumes; lower --fd-threshold or disable scrubbing."
        )
    regressors = np.column_stack([
        confounds.to_numpy(dtype=float),
        cosine_basis(len(confounds), repetition_time, high_pass or 0.0),
    ])
    return clean(
        np.asarray(signals, dtype=np.float64),
        confounds=regressors if regressors.shape[1] else None,
        t_r=repetition_time,
        filter=False,
        detrend=False,
        standardize="zscore_sample",
        standardize_confounds=True,
        sample_mask=np.asarray(keep),
    )
