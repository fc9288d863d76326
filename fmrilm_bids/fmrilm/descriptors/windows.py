"""Windowed descriptors: what each network does in each stretch of a run.

A run is cut into consecutive windows of ``window_length`` seconds starting at 0 (a last,
incomplete window is dropped; :func:`window_bounds`). A sample at ``k * tr`` belongs to the
window holding that time. Per window:

- **level** of each network: the network signal (mean of its parcels' z-scored signals),
  z-scored over the run, averaged over the window; a network is above (below) baseline when
  its level is at least ``threshold`` (at most ``-threshold``).
- **synchrony**: mean correlation between the network signals within the window (windows of
  at least 3 samples), graded against the run's other windows (z below -0.5: low, above
  0.5: high).
- **events** (task runs): captions (or trial types) of the events whose response, i.e. the
  event shifted by ``hrf_delay`` seconds, overlaps the window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from fmrilm_bids.fmrilm.descriptors.features import as_array, correlation_matrix, network_order
from fmrilm_bids.fmrilm.descriptors.text import window_text

#: Haemodynamic delay (s) by which events are shifted before matching them to windows.
HRF_DELAY = 5.0


@dataclass(frozen=True)
class WindowFacts:
    """The facts of one window (JSON-ready with :func:`dataclasses.asdict`)."""

    onset: float
    duration: float
    levels: dict[str, float]
    synchrony: float | None
    synchrony_grade: str | None
    events: list[str]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def window_bounds(n_timepoints: int, tr: float, window_length: float) -> np.ndarray:
    """Onsets (s) of the complete windows of a run of ``n_timepoints * tr`` seconds."""
    if window_length <= 0:
        raise ValueError(f"window_length must be positive, not {window_length}.")
    n_windows = int(np.floor(n_timepoints * tr / window_length + 1e-9))
    return np.arange(n_windows) * window_length


def network_signals(timeseries: np.ndarray, networks: Sequence[str]) -> pd.DataFrame:
    """Network signals: mean of the z-scored parcels of each network, z-scored over time."""
    standard = (timeseries - timeseries.mean(axis=0)) / timeseries.std(axis=0)
    labels = np.asarray(networks)
    order = network_order(networks)
    signals = np.stack([standard[:, labels == n].mean(axis=1) for n in order], axis=1)
    signals = (signals - signals.mean(axis=0)) / np.clip(signals.std(axis=0), 1e-12, None)
    return pd.DataFrame(signals, columns=order)


def event_labels(events: pd.DataFrame) -> list[str]:
    """Caption of each event, or its trial type when it has none."""
    labels = []
    for _, event in events.iterrows():
        caption = event.get("caption")
        if isinstance(caption, str) and caption.strip() and caption != "n/a":
            labels.append(caption.strip())
        else:
            labels.append(f"a {event.get('trial_type', 'stimulus')} trial")
    return labels


def events_in_window(events: pd.DataFrame | None, onset: float, duration: float,
                     hrf_delay: float) -> list[str]:
    """Labels of the events whose delayed response overlaps ``[onset, onset + duration)``.

    An event of zero (or ``n/a``) duration counts at its delayed onset.
    """
    if events is None or events.empty:
        return []
    start = pd.to_numeric(events["onset"], errors="coerce").to_numpy(float) + hrf_delay
    lengths = pd.to_numeric(events["duration"], errors="coerce").to_numpy(float)
    stop = start + np.nan_to_num(lengths)
    overlap = (start < onset + duration) & (np.maximum(stop, start + 1e-6) > onset)
    return [label for label, hit in zip(event_labels(events), overlap, strict=True) if hit]


def window_facts(timeseries: pd.DataFrame | np.ndarray, tr: float, networks: Sequence[str],
                 window_length: float, events: pd.DataFrame | None = None,
                 hrf_delay: float = HRF_DELAY) -> list[WindowFacts]:
    """Compute the facts of every window of a run (see the module docstring).

    Parameters
    ----------
    timeseries : DataFrame or ndarray of shape (n_timepoints, n_parcels)
    tr : float
        Repetition time (s).
    networks : sequence of str
        Network of each parcel.
    window_length : float
        Window length (s).
    events : DataFrame, optional
        BIDS events (``onset``, ``duration``, ``trial_type``, optional ``caption``).
    hrf_delay : float
        Seconds by which events are shifted.
    """
    signals = network_signals(as_array(timeseries), networks)
    times = np.arange(len(signals)) * tr
    raw = []
    for onset in window_bounds(len(signals), tr, window_length):
        inside = (times >= onset - 1e-9) & (times < onset + window_length - 1e-9)
        chunk = signals.to_numpy()[inside]
        levels = {n: round(float(v), 3) for n, v in zip(signals.columns, chunk.mean(axis=0),
                                                        strict=True)}
        synchrony = None
        if chunk.shape[0] >= 3 and chunk.shape[1] >= 2:
            with np.errstate(invalid="ignore", divide="ignore"):
                pairs = correlation_matrix(chunk)[np.triu_indices(chunk.shape[1], k=1)]
            if np.isfinite(pairs).any():
                synchrony = float(np.nanmean(pairs))
        raw.append((float(onset), levels, synchrony,
                    events_in_window(events, onset, window_length, hrf_delay)))
    measured = np.array([s for _, _, s, _ in raw if s is not None])
    centre, spread = (measured.mean(), measured.std()) if measured.size > 1 else (0.0, 0.0)
    facts = []
    for onset, levels, synchrony, labels in raw:
        grade = None
        if synchrony is not None and spread > 1e-12:
            z = (synchrony - centre) / spread
            grade = "low" if z < -0.5 else "high" if z > 0.5 else "typical"
        facts.append(WindowFacts(onset=onset, duration=float(window_length), levels=levels,
                                 synchrony=synchrony, synchrony_grade=grade, events=labels))
    return facts


def render_windows(facts: Sequence[WindowFacts], threshold: float = 0.5,
                   seed: int = 0) -> list[str]:
    """Text of each window; window ``i`` uses the paraphrase seed ``[seed, i]``."""
    return [window_text(f.levels, f.synchrony, f.synchrony_grade, f.events, threshold,
                        seed=[seed, i]) for i, f in enumerate(facts)]
