"""A run as Stages 2 and 3 take it, and the windows its prompts show.

A run (:class:`LMRun`) is its fMRI tokens, ``n_groups`` per window (one per Stage-1 parcel
group), their continuous Stage-1 features, and what is known about the run: descriptor
texts, events, its subject. A prompt shows the model an fMRI **segment**
``<fmri> t_a,1 ... t_a,G ... t_b,G </fmri>``: for a window ``i``, the window and the
``window_context`` windows before it (the question is about the *last* window of the
segment, :func:`window_segment`); for a whole run, up to ``run_segment_windows`` consecutive
windows (long runs give several segments, :func:`run_segments`). At the fMRI positions the
model reads each token's features (:meth:`LMRun.segment_features`: the Stage-1 latent, the
group's time course in the window, with ``connectivity`` the group's correlations with
every other group over the segment, and the group's one-hot), or, in the discrete
ablation, the token's own embedding.

The **connectivity** rows (:func:`group_connectivity`) carry what no single token can: a
token's features are first-order (its window's latent and time course), and a linear read-
out of them, summed over a run's tokens, reads the held-out patients of the benchmark
cohort at chance (AUROC 0.50), while a logistic regression on the Fisher-z correlations
between the groups' time courses over each 8-window run segment reads them at 0.79, as
the parcel-connectivity baseline does (0.77). They are computed over the prompt's own
windows, as the connectivity baseline is, so a prompt reads nothing outside its segment.

Events are assigned to windows by their haemodynamic response: an event belongs to the
window holding its midpoint shifted by
:data:`~fmrilm_bids.fmrilm.descriptors.windows.HRF_DELAY` (the event nearest the window
centre when several do; :func:`window_events`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from fmrilm_bids.fmrilm.descriptors.windows import HRF_DELAY

if TYPE_CHECKING:
    from fmrilm_bids.fmrilm.tokenizer import TokenizedRun


@dataclass
class LMRun:
    """One run as Stages 2 and 3 take it.

    Attributes
    ----------
    subject : str
        Participant label (``"01"``; a ``sub-`` prefix is dropped). Splits are by subject.
    task : str
        BIDS task label (``rest`` in the name makes it a resting run).
    token_ids : ndarray of shape (n_windows, n_groups)
        Stage-1 tokens of each window (a 1-D array is one token per window).
    onsets, durations : ndarray of shape (n_windows,)
        Window onsets and durations (s).
    session, run : str, optional
        BIDS entities (numbers are turned into text).
    window_texts : list of str, optional
        Descriptor sentence of each window (Stage 2 targets).
    run_text : str, optional
        Run-level descriptor paragraph.
    events : DataFrame, optional
        BIDS events (``onset``, ``duration``, ``trial_type``, optional ``caption``).
    token_features : ndarray of shape (n_windows, n_groups, dim), optional
        Continuous Stage-1 features of each token (``TokenizedRun.embeddings``): what the
        language model reads at the fMRI positions, and the tokens baseline.
    timeseries : ndarray of shape (n_timepoints, n_parcels), optional
        Parcel signals, for the connectivity baseline.
    tr : float, optional
        Sampling interval of ``timeseries`` (s).
    timecourse_length : int, default=0
        The last ``timecourse_length`` features of each token are its group's signal at
        each sample of the window (``TokenizedRun.timecourse_length``); 0: none, and no
        connectivity rows.
    """

    subject: str
    task: str
    token_ids: np.ndarray = field(repr=False)
    onsets: np.ndarray = field(repr=False)
    durations: np.ndarray = field(repr=False)
    session: str | None = None
    run: str | None = None
    window_texts: list[str] | None = field(default=None, repr=False)
    run_text: str | None = field(default=None, repr=False)
    events: pd.DataFrame | None = field(default=None, repr=False)
    token_features: np.ndarray | None = field(default=None, repr=False)
    timeseries: np.ndarray | None = field(default=None, repr=False)
    tr: float | None = None
    timecourse_length: int = 0

    def __post_init__(self) -> None:
        self.subject = str(self.subject).removeprefix("sub-")
        self.session = None if self.session is None else str(self.session)
        self.run = None if self.run is None else str(self.run)
        self.token_ids = np.asarray(self.token_ids, dtype=np.int64)
        if self.token_ids.ndim == 1:
            self.token_ids = self.token_ids[:, None]
        self.onsets = np.asarray(self.onsets, dtype=float).reshape(-1)
        self.durations = np.broadcast_to(np.asarray(self.durations, dtype=float),
                                         self.onsets.shape).copy()
        n = len(self.token_ids)
        problems = [f"{name} has {len(value)} rows" for name, value in
                    (("onsets", self.onsets), ("window_texts", self.window_texts),
                     ("token_features", self.token_features)) if value is not None
                    and len(value) != n]
        if n == 0:
            problems.append("there are no windows")
        if self.token_ids.ndim != 2:
            problems.append(f"token_ids has shape {self.token_ids.shape}, not (windows, "
                            "groups)")
        if self.token_features is not None:
            self.token_features = np.asarray(self.token_features, dtype=np.float32)
            if self.token_features.ndim == 2:
                self.token_features = self.token_features[:, None]
            if self.token_features.shape[:2] != self.token_ids.shape:
                problems.append(f"token_features has shape {self.token_features.shape}, "
                                f"tokens {self.token_ids.shape}")
        width = 0 if self.token_features is None else self.token_features.shape[-1]
        if not 0 <= self.timecourse_length <= width:
            problems.append(f"timecourse_length is {self.timecourse_length}, but tokens carry "
                            f"{width} features")
        if self.timeseries is not None and not self.tr:
            problems.append("timeseries is given without its tr")
        if problems:
            raise ValueError(f"Run {self.key}: {n} tokens, but " + "; ".join(problems) + ".")

    @classmethod
    def from_tokenized(cls, tokenized: TokenizedRun, subject: str, task: str,
                       **attributes: object) -> LMRun:
        """A run from a Stage-1 :class:`~fmrilm_bids.fmrilm.tokenizer.TokenizedRun`."""
        return cls(subject=subject, task=task, token_ids=tokenized.token_ids,
                   onsets=tokenized.onsets, durations=tokenized.window_duration,
                   token_features=tokenized.embeddings,
                   timecourse_length=tokenized.timecourse_length, **attributes)

    @property
    def key(self) -> str:
        """BIDS stem, e.g. ``sub-01_ses-1_task-rest_run-2``."""
        parts = [f"sub-{self.subject}"] + ([f"ses-{self.session}"] if self.session else [])
        parts.append(f"task-{self.task}")
        return "_".join(parts + ([f"run-{self.run}"] if self.run else []))

    @property
    def n_windows(self) -> int:
        return len(self.token_ids)

    @property
    def tokens_per_window(self) -> int:
        return self.token_ids.shape[1]

    def segment_features(self, start: int, stop: int,
                         connectivity: bool = False) -> np.ndarray | None:
        """Features of the tokens of windows ``[start, stop)``, in token order (window by
        window, group by group): each token's Stage-1 features, with ``connectivity`` (and
        a ``timecourse_length``) its group's row of :func:`group_connectivity` over the
        segment, then the one-hot of its group; ``(n_tokens, width)`` float32, None without
        features."""
        if self.token_features is None:
            return None
        features = self.token_features[start:stop]
        n, groups = len(features), self.tokens_per_window
        parts = [features]
        if connectivity and self.timecourse_length:
            rows = group_connectivity(features[..., -self.timecourse_length:])
            parts.append(np.broadcast_to(rows, (n, groups, groups)))
        parts.append(np.broadcast_to(np.eye(groups, dtype=np.float32), (n, groups, groups)))
        combined = np.concatenate(parts, axis=-1)
        return combined.reshape(n * groups, combined.shape[-1])

    @property
    def is_rest(self) -> bool:
        return "rest" in self.task.lower()


def group_connectivity(timecourses: np.ndarray) -> np.ndarray:
    """Fisher-z correlations between the groups' signals over a segment.

    Parameters
    ----------
    timecourses : ndarray of shape (n_windows, n_groups, samples)
        Each group's signal at each sample of each window.

    Returns
    -------
    ndarray of shape (n_groups, n_groups), float32
        ``arctanh`` of the correlation of each pair of groups over the segment's samples
        (clipped at |r| = 0.999); 0 on the diagonal and for a constant signal.
    """
    series = np.asarray(timecourses, dtype=np.float64)
    series = series.transpose(1, 0, 2).reshape(series.shape[1], -1)
    centred = series - series.mean(axis=1, keepdims=True)
    norms = np.sqrt(np.square(centred).sum(axis=1))
    scaled = np.divide(centred, norms[:, None], out=np.zeros_like(centred),
                       where=norms[:, None] > 1e-12)
    correlation = np.clip(scaled @ scaled.T, -0.999, 0.999)
    np.fill_diagonal(correlation, 0.0)
    return np.arctanh(correlation).astype(np.float32)


def feature_moments(runs: Sequence[LMRun], connectivity: bool = False,
                    segment_windows: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each feature (:meth:`LMRun.segment_features`) over
    every token of ``runs`` (each once), accumulated in consecutive segments of
    ``segment_windows`` windows; float32 ``(dim,)`` each. The connectivity rows are those
    of each segment, as a run-level prompt of that length shows them.

    Raises
    ------
    ValueError
        When no run carries features.
    """
    count, total, squares = 0, 0.0, 0.0
    for run in runs:
        for start in range(0, run.n_windows, segment_windows):
            features = run.segment_features(start, min(start + segment_windows,
                                                       run.n_windows), connectivity)
            if features is None:
                continue
            features = features.astype(np.float64)
            count += len(features)
            total = total + features.sum(axis=0)
            squares = squares + np.square(features).sum(axis=0)
    if count == 0:
        raise ValueError("No run carries Stage-1 features (LMRun.token_features).")
    mean = total / count
    variance = np.maximum(squares / count - np.square(mean), 0.0)
    return mean.astype(np.float32), np.sqrt(variance).astype(np.float32)


def window_segment(window: int, context: int) -> tuple[int, int]:
    """Windows ``[start, stop)`` of the prompt about ``window`` (it comes last)."""
    return max(0, window - context), window + 1


def run_segments(n_windows: int, length: int) -> list[tuple[int, int]]:
    """Consecutive segments of at most ``length`` windows covering a run (half overlap)."""
    if n_windows <= length:
        return [(0, n_windows)]
    starts = list(range(0, n_windows - length + 1, max(1, length // 2)))
    if starts[-1] != n_windows - length:
        starts.append(n_windows - length)
    return [(start, start + length) for start in starts]


def _responses(events: pd.DataFrame, hrf_delay: float) -> np.ndarray:
    """Midpoint of each event's haemodynamic response (s)."""
    onsets = pd.to_numeric(events["onset"], errors="coerce").to_numpy(float)
    lengths = pd.to_numeric(events["duration"], errors="coerce").to_numpy(float)
    return onsets + hrf_delay + np.nan_to_num(lengths) / 2


def event_windows(run: LMRun, hrf_delay: float = HRF_DELAY) -> np.ndarray:
    """Window of each event of ``run`` (the module docstring's rule); -1 outside the run."""
    if run.events is None or run.events.empty:
        return np.zeros(0, dtype=np.int64)
    response = _responses(run.events, hrf_delay)
    index = np.searchsorted(run.onsets, response, side="right") - 1
    inside = (index >= 0) & np.isfinite(response)
    inside[inside] = response[inside] < (run.onsets + run.durations)[index[inside]]
    return np.where(inside, index, -1)


def window_events(run: LMRun, hrf_delay: float = HRF_DELAY) -> dict[int, pd.Series]:
    """The event of each window (see the module docstring); windows without one are absent."""
    windows = event_windows(run, hrf_delay)
    if not len(windows):
        return {}
    distance = np.abs(_responses(run.events, hrf_delay)
                      - (run.onsets + run.durations / 2)[np.maximum(windows, 0)])
    chosen: dict[int, int] = {}
    for row in np.argsort(distance, kind="stable"):
        if windows[row] >= 0:
            chosen.setdefault(int(windows[row]), int(row))
    return {window: run.events.iloc[row] for window, row in sorted(chosen.items())}


def is_present(value: object) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return str(value).strip() not in ("", "n/a", "nan")


