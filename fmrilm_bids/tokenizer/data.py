"""From a run's parcel time series to tokenizer inputs: resampled, normalised, patched.

1. **Common TR.** :func:`resample_to_tr` puts every run on the grid ``k * target_tr``
   (``k = 0 .. floor(n * tr / target_tr) - 1``): zero-phase low-pass (Butterworth, order 4,
   at 0.9 x the new Nyquist) when the TR grows, then cubic-spline interpolation; times past
   the last sample hold its value.
2. **Robust normalisation.** :func:`robust_normalise`: per parcel, subtract the median and
   divide by ``IQR / 1.349`` (the standard deviation of a Gaussian with that IQR), then clip
   to ``[-clip, clip]``. Spikes left by denoising do not set the scale, and the scale does
   not depend on the unit of the input (% signal change or raw).
3. **Patches.** :func:`cut_patches`: consecutive, non-overlapping windows of
   ``patch_length`` samples; an incomplete last window is dropped. Patch ``i`` covers
   ``[i, i + 1) * patch_length * target_tr`` seconds, the same windows as
   :func:`fmrilm_bids.descriptors.window_bounds` with ``window_length = patch_length *
   target_tr``, so descriptor window ``i`` is the text of patch ``i``.
4. **Parcel identity.** The model never sees parcel indices (any atlas, any parcel count).
   A parcel is known by :func:`parcel_identity`: a one-hot of its canonical network
   (:data:`~fmrilm_bids.descriptors.networks.NETWORKS`) and its correlation, over the run,
   with the mean signal of each canonical network (0 for networks the atlas lacks).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.interpolate import CubicSpline
from scipy.signal import butter, sosfiltfilt

from fmrilm_bids.descriptors.networks import NETWORKS

#: Width of a parcel identity vector.
IDENTITY_DIM = 2 * len(NETWORKS)


@dataclass
class ParcelRun:
    """A run, as the tokenizer takes it.

    Attributes
    ----------
    timeseries : ndarray of shape (n_timepoints, n_parcels)
        Denoised parcel signals.
    tr : float
        Repetition time (s).
    networks : sequence of str
        Canonical network of each parcel (from the atlas's network table).
    subject : str
        Participant label (held-out validation is by subject).
    window_texts : sequence of str, optional
        Descriptor text of each patch window (for the alignment loss).
    """

    timeseries: np.ndarray = field(repr=False)
    tr: float
    networks: Sequence[str] = field(repr=False)
    subject: str = ""
    window_texts: Sequence[str] | None = field(default=None, repr=False)


@dataclass
class PreparedRun:
    """Model-ready arrays of one run.

    Attributes
    ----------
    patches : ndarray of shape (n_windows, n_parcels, patch_length), float32
    identity : ndarray of shape (n_parcels, IDENTITY_DIM), float32
    onsets : ndarray of shape (n_windows,)
        Window onsets (s).
    window_duration : float
        Seconds per window.
    subject : str
    window_texts : list of str or None
    """

    patches: np.ndarray = field(repr=False)
    identity: np.ndarray = field(repr=False)
    onsets: np.ndarray = field(repr=False)
    window_duration: float
    subject: str = ""
    window_texts: list[str] | None = field(default=None, repr=False)

    @property
    def n_windows(self) -> int:
        return self.patches.shape[0]


def resample_to_tr(timeseries: np.ndarray, tr: float, target_tr: float) -> np.ndarray:
    """Resample columns from ``tr`` to ``target_tr`` (see the module docstring).

    At the same TR the first samples are returned as they are (no copy of a float input).
    """
    n = timeseries.shape[0]
    n_target = int(np.floor(n * tr / target_tr + 1e-9))
    if np.isclose(tr, target_tr):
        return np.asarray(timeseries[:n_target], dtype=float)
    signal = timeseries.astype(float)
    if target_tr > tr and n > 27:
        sos = butter(4, 0.9 * tr / target_tr, output="sos")
        signal = sosfiltfilt(sos, signal, axis=0)
    times = np.minimum(np.arange(n_target) * target_tr, (n - 1) * tr)
    return CubicSpline(np.arange(n) * tr, signal, axis=0)(times)


def sorted_quantiles(ordered: np.ndarray, quantiles: Sequence[float]) -> np.ndarray:
    """Quantiles of each row of a row-sorted array (linear interpolation, as numpy's).

    Returns
    -------
    ndarray of shape (len(quantiles), n_rows)
    """
    positions = np.asarray(quantiles, dtype=float) * (ordered.shape[1] - 1)
    below = np.floor(positions).astype(int)
    above = np.minimum(below + 1, ordered.shape[1] - 1)
    fraction = (positions - below)[:, None]
    low, high = ordered[:, below].T, ordered[:, above].T
    return low + fraction * (high - low)


def parcel_major(timeseries: np.ndarray, block: int = 256) -> np.ndarray:
    """``timeseries.T`` as a C-contiguous float32 array, transposed by blocks of rows.

    A block of ``block`` time points stays in cache while it is written out, which makes
    the copy several times faster than numpy's element-wise transpose of a long run.
    """
    columns = np.empty(timeseries.shape[::-1], dtype=np.float32)
    for start in range(0, timeseries.shape[0], block):
        columns[:, start:start + block] = timeseries[start:start + block].T
    return columns


def robust_normalise(timeseries: np.ndarray, clip: float = 5.0) -> np.ndarray:
    """Per-column median/IQR scaling, clipped (see the module docstring).

    Returns
    -------
    ndarray, float32, the shape of ``timeseries``
        A transposed view of a parcel-major array: each column is contiguous, as sorting,
        patching and :func:`parcel_identity` read them.
    """
    columns = parcel_major(np.asarray(timeseries))
    # A full sort is several times faster than numpy's multi-rank partition (vectorised
    # sorting), and these are exact order statistics either way.
    q25, median, q75 = sorted_quantiles(np.sort(columns, axis=1), (0.25, 0.5, 0.75))
    scale = (q75 - q25) / np.float32(1.349)
    scale[~(scale > 1e-12)] = 1.0
    columns -= median[:, None]
    columns /= scale[:, None]
    np.clip(columns, -clip, clip, out=columns)
    return columns.T


def cut_patches(timeseries: np.ndarray, patch_length: int) -> np.ndarray:
    """Non-overlapping patches, shape ``(n_windows, n_parcels, patch_length)`` (a view)."""
    n_windows = timeseries.shape[0] // patch_length
    used = timeseries[: n_windows * patch_length]
    return used.reshape(n_windows, patch_length, -1).transpose(0, 2, 1)


def parcel_identity(timeseries: np.ndarray, networks: Sequence[str]) -> np.ndarray:
    """Network one-hot and network-signal correlations of each parcel (module docstring).

    Parcels that do not vary correlate with nothing (0). Computed with two matrix products:
    the network signals are ``standardised parcels @ membership / size``.
    """
    labels = np.asarray(networks)
    unknown = sorted(set(labels) - set(NETWORKS))
    if unknown:
        raise ValueError(f"Parcel networks {unknown} are not canonical networks "
                         f"({', '.join(NETWORKS)}); use an atlas network table.")
    columns = np.asarray(timeseries).T
    n_samples = columns.shape[1]
    # Pairwise sums along the time axis keep float32 statistics accurate.
    mean = columns.mean(axis=1).astype(np.float64)
    sd = columns.std(axis=1).astype(np.float64)
    varying = sd > 1e-12
    inverse_sd = np.divide(1.0, sd, out=np.zeros_like(sd), where=varying)
    one_hot = (labels[:, None] == np.asarray(NETWORKS)[None, :]).astype(float)
    weights = one_hot * inverse_sd[:, None] / np.maximum(one_hot.sum(axis=0), 1.0)
    signals = (weights.T.astype(columns.dtype) @ columns).astype(np.float64)
    signals -= (weights.T @ mean)[:, None]
    signals -= signals.mean(axis=1, keepdims=True)
    signals /= np.maximum(signals.std(axis=1, keepdims=True), 1e-12)
    products = (columns @ signals.T.astype(columns.dtype)).astype(np.float64)
    correlation = (products - np.outer(mean, signals.sum(axis=1))) * inverse_sd[:, None]
    return np.concatenate([one_hot, correlation / n_samples], axis=1)


def prepare_run(run: ParcelRun, target_tr: float, patch_length: int,
                clip: float) -> PreparedRun:
    """Resample, normalise, patch and identify one run.

    Raises
    ------
    ValueError
        When the run is shorter than one patch, or its window texts do not match its
        patches one to one.
    """
    timeseries = np.asarray(run.timeseries, dtype=float)
    if timeseries.ndim != 2 or len(run.networks) != timeseries.shape[1]:
        raise ValueError(f"Run of subject {run.subject!r}: expected (time x parcels) with one "
                         f"network per parcel, got {timeseries.shape} and "
                         f"{len(run.networks)} networks.")
    normalised = robust_normalise(resample_to_tr(timeseries, run.tr, target_tr), clip)
    patches = cut_patches(normalised, patch_length)
    if patches.shape[0] == 0:
        raise ValueError(f"Run of subject {run.subject!r} lasts {len(timeseries) * run.tr:.0f}"
                         f" s, shorter than one {patch_length * target_tr:.0f} s patch.")
    texts = None if run.window_texts is None else list(run.window_texts)
    if texts is not None and len(texts) != patches.shape[0]:
        raise ValueError(f"Run of subject {run.subject!r}: {len(texts)} window texts for "
                         f"{patches.shape[0]} patches; describe the run with "
                         f"window_length={patch_length * target_tr:g} s.")
    duration = patch_length * target_tr
    return PreparedRun(patches=np.ascontiguousarray(patches, dtype=np.float32),
                       identity=parcel_identity(normalised, run.networks).astype(np.float32),
                       onsets=np.arange(patches.shape[0]) * duration,
                       window_duration=duration, subject=run.subject, window_texts=texts)


@dataclass
class TokenizedRun:
    """Tokens of one run: one token per window.

    Attributes
    ----------
    token_ids : ndarray of shape (n_windows,), int64
    onsets : ndarray of shape (n_windows,)
        Window onsets (s).
    window_duration : float
        Seconds per window.
    embeddings : ndarray of shape (n_windows, dim), float32
        Pre-quantisation features (the continuous representation the token was read from).
    """

    token_ids: np.ndarray
    onsets: np.ndarray
    window_duration: float
    embeddings: np.ndarray = field(repr=False)

    def to_frame(self) -> pd.DataFrame:
        """``onset``, ``duration``, ``token`` rows (a ``_desc-fmrilm_tokens.tsv`` table)."""
        return pd.DataFrame({"onset": self.onsets,
                             "duration": np.full(len(self.onsets), self.window_duration),
                             "token": self.token_ids.astype(np.int64)})
