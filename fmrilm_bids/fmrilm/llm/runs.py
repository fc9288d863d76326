"""A run as Stages 2 and 3 take it, and the windows its prompts show.

A run (:class:`LMRun`) is its fMRI tokens, ``n_groups`` per window (one per Stage-1 parcel
group), their continuous Stage-1 features, and what is known about the run: descriptor
texts, events, its subject. A prompt shows the model an fMRI **segment**
``<fmri> t_a,1 ... t_a,G ... t_b,G </fmri>``: for a window ``i``, the window and the
``window_context`` windows before it (the question is about the *last* window of the
segment, :func:`window_segment`); for a whole run, up to ``run_segment_windows`` consecutive
windows (long runs give several segments, :func:`run_segments`). At the fMRI positions the
model reads each token's features (:meth:`LMRun.segment_features`: the Stage-1 latent, the
group's time course in the window and the group's one-hot), or, in the discrete ablation,
the token's own embedding.

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
                   token_features=tokenized.embeddings, **attributes)

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

    def segment_features(self, start: int, stop: int) -> np.ndarray | None:
        """Features of the tokens of windows ``[start, stop)``, in token order (window by
        window, group by group): each token's Stage-1 features, then the one-hot of its
        group; ``(n_tokens, dim + n_groups)`` float32, None without features."""
        if self.token_features is None:
            return None
        features = self.token_features[start:stop]
        groups = np.broadcast_to(np.eye(self.tokens_per_window, dtype=np.float32),
                                 (len(features), self.tokens_per_window,
                                  self.tokens_per_window))
        return np.concatenate([features, groups], axis=-1).reshape(
            -1, features.shape[-1] + self.tokens_per_window)

    @property
    def is_rest(self) -> bool:
        return "rest" in self.task.lower()


def feature_moments(runs: Sequence[LMRun]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each feature (:meth:`LMRun.segment_features`) over
    every token of ``runs``, accumulated run by run; float32 ``(dim,)`` each.

    Raises
    ------
    ValueError
        When no run carries features.
    """
    count, total, squares = 0, 0.0, 0.0
    for run in runs:
        features = run.segment_features(0, run.n_windows)
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


def shown_texts(run: LMRun, hrf_delay: float = HRF_DELAY) -> dict[int, str]:
    """What each window showed, in words (:func:`window_events`): its event's trial type
    and caption, where present; windows without either are absent."""
    texts = {}
    for window, event in window_events(run, hrf_delay).items():
        parts = [str(event[column]).strip() for column in ("trial_type", "caption")
                 if column in event and is_present(event[column])]
        if parts:
            texts[window] = ": ".join(parts)
    return texts


def is_present(value: object) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return str(value).strip() not in ("", "n/a", "nan")


