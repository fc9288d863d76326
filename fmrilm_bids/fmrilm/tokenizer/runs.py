"""From a run's parcel time series to tokenizer inputs: resampled, normalised, patched.

1. **Common TR.** :func:`resample_to_tr` puts every run on the grid ``k * target_tr``
   (``k = 0 .. floor(n * tr / target_tr) - 1``): zero-phase low-pass (Butterworth, order 4,
   at 0.9 x the new Nyquist) when the TR grows, then cubic-spline interpolation; times past
   the last sample hold its value.
2. **Robust normalisation.** :func:`robust_normalise`: per parcel, subtract the median and
   divide by ``IQR / 1.349`` (the standard deviation of a Gaussian with that IQR), then clip
   to ``[-clip, clip]``. Spikes left by denoising do not set the scale, and the scale does
   not depend on the unit of the input (% signal change or raw). From here on the signals
   are float32, parcel-major (each parcel's samples contiguous); the quartiles are exact
   order statistics (:func:`quartiles`). :func:`prepare_runs` normalises, patches and
   identifies the runs of the same length and atlas together, in one vectorised pass.
3. **Patches.** :func:`cut_patches`: consecutive, non-overlapping windows of
   ``patch_length`` samples; an incomplete last window is dropped. Patch ``i`` covers
   ``[i, i + 1) * patch_length * target_tr`` seconds, the same windows as
   :func:`fmrilm_bids.fmrilm.descriptors.window_bounds` with ``window_length = patch_length *
   target_tr``, so descriptor window ``i`` is the text of patch ``i``.
4. **Parcel identity.** The model never sees parcel indices (any atlas, any parcel count).
   A parcel is known by :func:`parcel_identity`: a one-hot of its canonical network
   (:data:`~fmrilm_bids.fmrilm.descriptors.networks.NETWORKS`), its correlation, over the run,
   with the mean signal of each canonical network (0 for networks the atlas lacks), and its
   position: the MNI coordinates of its centre and their sines and cosines at three spatial
   frequencies (:func:`coordinate_features`; zeros when the position is unknown). With
   data-driven networks (:func:`~fmrilm_bids.fmrilm.descriptors.networks.cluster_networks`),
   ``cluster k`` takes the k-th of those slots (:func:`network_slots`): a model trained on
   clusters reads clusters, one trained on canonical networks reads those.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.interpolate import CubicSpline
from scipy.signal import butter, sosfiltfilt

from fmrilm_bids.fmrilm.descriptors.networks import NETWORKS

#: Spatial frequencies (radians per 100 mm) of a parcel's position features.
POSITION_FREQUENCIES = (math.pi, 2 * math.pi, 4 * math.pi)
#: Width of a parcel's position features (:func:`coordinate_features`).
POSITION_DIM = 3 * (1 + 2 * len(POSITION_FREQUENCIES))
#: Width of a parcel identity vector.
IDENTITY_DIM = 2 * len(NETWORKS) + POSITION_DIM


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
    coordinates : ndarray of shape (n_parcels, 3), optional
        MNI coordinates (mm) of each parcel's centre (unknown: position features are 0).
    window_events : sequence of str or None, optional
        What was shown in each patch window (None: nothing), for the event alignment loss.
    """

    timeseries: np.ndarray = field(repr=False)
    tr: float
    networks: Sequence[str] = field(repr=False)
    subject: str = ""
    window_texts: Sequence[str] | None = field(default=None, repr=False)
    coordinates: np.ndarray | None = field(default=None, repr=False)
    window_events: Sequence[str | None] | None = field(default=None, repr=False)


@dataclass
class PreparedRun:
    """Model-ready arrays of one run.

    Attributes
    ----------
    patches : ndarray of shape (n_windows, n_parcels, patch_length), float32
        From :func:`prepare_runs`, a view of the parcel-major normalised signals (each
        parcel's samples contiguous, as the encoder's pooling reads them).
    identity : ndarray of shape (n_parcels, IDENTITY_DIM), float32
    onsets : ndarray of shape (n_windows,)
        Window onsets (s).
    window_duration : float
        Seconds per window.
    subject : str
    window_texts : list of str or None
    window_events : list of (str or None) or None
    """

    patches: np.ndarray = field(repr=False)
    identity: np.ndarray = field(repr=False)
    onsets: np.ndarray = field(repr=False)
    window_duration: float
    subject: str = ""
    window_texts: list[str] | None = field(default=None, repr=False)
    window_events: list[str | None] | None = field(default=None, repr=False)

    @property
    def n_windows(self) -> int:
        return self.patches.shape[0]


def resample_to_tr(timeseries: np.ndarray, tr: float, target_tr: float) -> np.ndarray:
    """Resample columns from ``tr`` to ``target_tr`` (see the module docstring).

    At the same TR the first samples are returned as they are (no copy of a float input).
    """
    n = timeseries.shape[0]
    n_target = int(np.floor(n * tr / target_tr + 1e-9))
    if abs(tr - target_tr) <= 1e-8 + 1e-5 * abs(target_tr):  # np.isclose, without its cost
        return np.asarray(timeseries[:n_target], dtype=float)
    signal = timeseries.astype(float)
    if target_tr > tr and n > 27:
        sos = butter(4, 0.9 * tr / target_tr, output="sos")
        signal = sosfiltfilt(sos, signal, axis=0)
    times = np.minimum(np.arange(n_target) * target_tr, (n - 1) * tr)
    return CubicSpline(np.arange(n) * tr, signal, axis=0)(times)


#: Samples per row from which :func:`quartiles` selects instead of sorting.
SELECT_FROM = 2048


def quartiles(rows: np.ndarray) -> np.ndarray:
    """25th, 50th and 75th percentiles along the last axis (linear interpolation, as numpy's).

    Exact order statistics either way: rows shorter than :data:`SELECT_FROM` samples are
    sorted (the vectorised sort of many short rows is the fastest); longer rows are
    partitioned at the median, then each half at its quartile (a single-rank partition is
    vectorised, a multi-rank one is not), and the order statistic just under a rank is the
    maximum of the values below it.

    Returns
    -------
    ndarray of shape (3, *rows.shape[:-1]), float64
    """
    n = rows.shape[-1]
    positions = np.array([0.25, 0.5, 0.75]) * (n - 1)
    below = np.floor(positions).astype(int)
    if n < SELECT_FROM:
        ordered = np.sort(rows, axis=-1)
        low = np.moveaxis(ordered[..., below], -1, 0)
        high = np.moveaxis(ordered[..., np.minimum(below + 1, n - 1)], -1, 0)
    else:
        r25, r50, r75 = ranks = below + 1
        scratch = rows.copy()
        scratch.partition(r50, axis=-1)
        scratch[..., :r50].partition(r25, axis=-1)
        scratch[..., r50 + 1:].partition(r75 - r50 - 1, axis=-1)
        high = np.moveaxis(scratch[..., ranks], -1, 0)
        low = np.stack([scratch[..., :r25].max(axis=-1), scratch[..., r25:r50].max(axis=-1),
                        scratch[..., r50:r75].max(axis=-1)])
    fraction = (positions - below).reshape(3, *[1] * (rows.ndim - 1))
    return low + fraction * (high - low)


def _in_parallel(function: Callable[[range], object], n_items: int, threads: int) -> None:
    """Call ``function`` on up to ``threads`` contiguous ranges that cover ``range(n_items)``.

    The ranges run in threads of their own when there are several (numpy releases the GIL
    while it works on arrays); exceptions propagate.
    """
    bounds = [n_items * part // threads for part in range(threads + 1)]
    parts = [range(a, b) for a, b in itertools.pairwise(bounds) if b > a]
    if len(parts) <= 1:
        for part in parts:
            function(part)
        return
    with ThreadPoolExecutor(len(parts)) as pool:
        list(pool.map(function, parts))


def parcel_major(timeseries: np.ndarray, out: np.ndarray | None = None, block: int = 256,
                 threads: int = 1) -> np.ndarray:
    """``timeseries.T`` as a C-contiguous float32 array, by blocks of ``block`` time points.

    Each block is cast to float32 as it lies (a vectorised cast), then transposed while it
    is in cache: several times faster than numpy's element-wise transposing cast.
    ``out``, when given, is the ``(n_parcels, n_samples)`` float32 array written to; the
    blocks are shared out between ``threads`` threads.
    """
    n_samples = len(timeseries)
    columns = np.empty(timeseries.shape[::-1], dtype=np.float32) if out is None else out

    def fill(blocks: range) -> None:
        buffer = np.empty((min(block, n_samples), timeseries.shape[1]), dtype=np.float32)
        for start in range(blocks.start * block, min(blocks.stop * block, n_samples), block):
            part = buffer[:n_samples - start]
            part[...] = timeseries[start:start + block]
            columns[:, start:start + len(part)] = part.T

    _in_parallel(fill, -(-n_samples // block), threads)
    return columns


#: Values :func:`normalise_rows` and :func:`prepare_runs` work on at a time (the rows stay
#: in cache while they are sorted, scaled and summed).
CHUNK_VALUES = 1 << 19


def normalise_rows(rows: np.ndarray, clip: float, threads: int = 1) -> None:
    """Robust-normalise C-contiguous float32 rows in place, along the last axis (module
    docstring), :data:`CHUNK_VALUES` values at a time, shared out between ``threads``
    threads.

    The arithmetic is float64, rounded once to float32: the median of the result is
    exactly 0.

    Raises
    ------
    ValueError
        For rows that are not C-contiguous float32 (they could not be written in place).
    """
    if rows.dtype != np.float32 or not rows.flags.c_contiguous:
        raise ValueError("normalise_rows works in place on C-contiguous float32 rows.")
    flat = rows.reshape(-1, rows.shape[-1])
    step = max(1, CHUNK_VALUES // rows.shape[-1])

    def normalise(chunks: range) -> None:
        buffer = np.empty((min(step, len(flat)), rows.shape[-1]))
        for start in range(chunks.start * step, min(chunks.stop * step, len(flat)), step):
            chunk = flat[start:start + step]
            q25, median, q75 = quartiles(chunk)
            scale = (q75 - q25) / 1.349
            scale[~(scale > 1e-12)] = 1.0
            values = buffer[:len(chunk)]
            values[...] = chunk
            values -= median[:, None]
            values *= 1.0 / scale[:, None]
            np.clip(values, -clip, clip, out=chunk)

    _in_parallel(normalise, -(-len(flat) // step), threads)


def robust_normalise(timeseries: np.ndarray, clip: float = 5.0) -> np.ndarray:
    """Per-column median/IQR scaling, clipped (see the module docstring).

    Returns
    -------
    ndarray, float32, the shape of ``timeseries``
        A transposed view of a parcel-major array: each column is contiguous, as
        :func:`cut_patches` and :func:`parcel_identity` read them.
    """
    columns = parcel_major(np.asarray(timeseries))
    normalise_rows(columns, clip)
    return columns.T


def cut_patches(timeseries: np.ndarray, patch_length: int) -> np.ndarray:
    """Non-overlapping patches, shape ``(n_windows, n_parcels, patch_length)`` (a view)."""
    n_windows = timeseries.shape[0] // patch_length
    used = timeseries[: n_windows * patch_length]
    return used.reshape(n_windows, patch_length, -1).transpose(0, 2, 1)


def network_slots(networks: Sequence[str]) -> np.ndarray:
    """Identity slot of each parcel's network (module docstring): the index of a canonical
    network in :data:`NETWORKS`, ``k - 1`` for data-driven ``cluster k``.

    Raises
    ------
    ValueError
        For a network that is neither canonical nor ``cluster 1`` .. ``cluster 10``, or for
        canonical and data-driven networks mixed.
    """
    clusters = [f"cluster {k}" for k in range(1, len(NETWORKS) + 1)]
    names = set(networks)
    for vocabulary in (NETWORKS, clusters):
        if names <= set(vocabulary):
            slot = {name: index for index, name in enumerate(vocabulary)}
            return np.array([slot[name] for name in networks], dtype=int)
    raise ValueError(f"Parcel networks {sorted(names)[:5]} are neither canonical networks "
                     f"({', '.join(NETWORKS)}) nor data-driven ones (cluster 1 .. cluster "
                     f"{len(NETWORKS)}); use an atlas network table.")


def network_membership(networks: Sequence[str]) -> np.ndarray:
    """One-hot ``(n_parcels, len(NETWORKS))`` of each parcel's identity slot
    (:func:`network_slots`)."""
    return np.eye(len(NETWORKS))[network_slots(networks)]


def coordinate_features(coordinates: np.ndarray | None, n_parcels: int) -> np.ndarray:
    """Position features ``(n_parcels, POSITION_DIM)`` of parcels centred at ``coordinates``
    (MNI mm): the coordinates over 100 mm, then their sines and cosines at
    :data:`POSITION_FREQUENCIES`. Zeros (position unknown) when ``coordinates`` is None, and
    for the parcels whose coordinates are not finite.

    Raises
    ------
    ValueError
        When ``coordinates`` is not ``(n_parcels, 3)``.
    """
    if coordinates is None:
        return np.zeros((n_parcels, POSITION_DIM))
    scaled = np.asarray(coordinates, dtype=float) / 100.0
    if scaled.shape != (n_parcels, 3):
        raise ValueError(f"Parcel coordinates must be one (x, y, z) per parcel "
                         f"({n_parcels}); got shape {scaled.shape}.")
    phases = scaled[:, :, None] * np.asarray(POSITION_FREQUENCIES)
    features = np.concatenate([scaled, np.sin(phases).reshape(n_parcels, -1),
                               np.cos(phases).reshape(n_parcels, -1)], axis=1)
    features[~np.isfinite(scaled).all(axis=1)] = 0.0
    return features


def identities(rows: np.ndarray, one_hot: np.ndarray) -> np.ndarray:
    """Network identities of ``(..., n_parcels, n_samples)`` signals (module docstring): the
    network one-hot and connectivity fingerprint, without the position.

    The leading axes are runs of the same parcels (``one_hot``, from
    :func:`network_membership`); each run is identified on its own. Parcels that do not vary
    correlate with nothing (0). Computed with two matrix products: the network signals are
    ``standardised parcels @ membership / size`` (one sparse product for all the runs: a
    parcel is in one network), then the parcels times the standardised network signals;
    the parcel moments come from one pass each (mean, sum of squares).

    Returns
    -------
    ndarray of shape (..., n_parcels, 2 * len(NETWORKS)), float64
    """
    *leading, n_parcels, n_samples = rows.shape
    n_runs, n_networks = math.prod(leading), one_hot.shape[1]
    # Pairwise sums along the time axis keep float32 statistics accurate.
    mean = rows.mean(axis=-1).astype(np.float64)
    variance = np.vecdot(rows, rows).astype(np.float64) / n_samples - mean**2
    sd = np.sqrt(np.maximum(variance, 0.0))
    varying = sd > 1e-12
    inverse_sd = np.divide(1.0, sd, out=np.zeros_like(sd), where=varying)
    network = one_hot.argmax(axis=1)
    weights = inverse_sd / np.maximum(one_hot.sum(axis=0), 1.0)[network]
    membership = sparse.csr_array(
        (weights.reshape(-1).astype(rows.dtype),
         (np.add.outer(np.arange(n_runs) * n_networks, network).reshape(-1),
          np.arange(n_runs * n_parcels))), shape=(n_runs * n_networks, n_runs * n_parcels))
    signals = (membership @ rows.reshape(-1, n_samples)).astype(np.float64).reshape(
        *leading, n_networks, n_samples)
    signals -= signals.mean(axis=-1, keepdims=True)
    signals /= np.maximum(signals.std(axis=-1, keepdims=True), 1e-12)
    products = (rows @ np.swapaxes(signals, -1, -2).astype(rows.dtype)).astype(np.float64)
    correlation = ((products - mean[..., None] * signals.sum(axis=-1)[..., None, :])
                   * inverse_sd[..., None])
    return np.concatenate([np.broadcast_to(one_hot, correlation.shape),
                           correlation / n_samples], axis=-1)


def parcel_identity(timeseries: np.ndarray, networks: Sequence[str],
                    coordinates: np.ndarray | None = None) -> np.ndarray:
    """Network one-hot, network-signal correlations and position of each parcel (module
    docstring).

    Returns
    -------
    ndarray of shape (n_parcels, IDENTITY_DIM)
        :func:`identities`, then :func:`coordinate_features`.
    """
    timeseries = np.asarray(timeseries)
    return np.concatenate([identities(timeseries.T, network_membership(networks)),
                           coordinate_features(coordinates, timeseries.shape[1])], axis=1)


def _resampled(run: ParcelRun, target_tr: float, patch_length: int) -> np.ndarray:
    """The run's signals at ``target_tr``, checked (see :func:`prepare_runs`)."""
    timeseries = np.asarray(run.timeseries)
    if timeseries.ndim != 2 or len(run.networks) != timeseries.shape[1]:
        raise ValueError(f"Run of subject {run.subject!r}: expected (time x parcels) with one "
                         f"network per parcel, got {timeseries.shape} and "
                         f"{len(run.networks)} networks.")
    resampled = resample_to_tr(timeseries, run.tr, target_tr)
    n_windows = resampled.shape[0] // patch_length
    if n_windows == 0:
        raise ValueError(f"Run of subject {run.subject!r} lasts {len(timeseries) * run.tr:.0f}"
                         f" s, shorter than one {patch_length * target_tr:.0f} s patch.")
    for name in ("window_texts", "window_events"):
        values = getattr(run, name)
        if values is not None and len(values) != n_windows:
            raise ValueError(f"Run of subject {run.subject!r}: {len(values)} {name} for "
                             f"{n_windows} patches; describe the run with "
                             f"window_length={patch_length * target_tr:g} s.")
    return resampled


def _normalise_and_identify(signals: list[np.ndarray], one_hot: np.ndarray,
                            position: np.ndarray, clip: float,
                            threads: int) -> tuple[np.ndarray, np.ndarray]:
    """Parcel-major normalised signals ``(runs, parcels, samples)`` and identities of runs
    of one length and atlas (:func:`prepare_runs`); ``position`` holds the parcels'
    :func:`coordinate_features`."""
    rows = np.empty((len(signals), *signals[0].shape[::-1]), dtype=np.float32)
    identity = np.empty((*rows.shape[:2], IDENTITY_DIM), dtype=np.float32)
    identity[..., one_hot.shape[1] * 2:] = position
    # A few runs at a time, while they are in cache; a lone chunk shares out its rows.
    per_chunk = max(1, CHUNK_VALUES // rows[0].size)
    n_chunks = -(-len(signals) // per_chunk)
    inner = 1 if n_chunks >= threads else threads

    def prepare(chunks: range) -> None:
        for first in range(chunks.start * per_chunk, chunks.stop * per_chunk, per_chunk):
            chunk = rows[first:first + per_chunk]
            for slot, timeseries in enumerate(signals[first:first + per_chunk]):
                parcel_major(timeseries, out=chunk[slot], threads=inner)
            normalise_rows(chunk, clip, threads=inner)
            identity[first:first + per_chunk, :, :one_hot.shape[1] * 2] = identities(chunk,
                                                                                     one_hot)

    _in_parallel(prepare, n_chunks, 1 if inner > 1 else threads)
    return rows, identity


def prepare_runs(runs: Sequence[ParcelRun], target_tr: float, patch_length: int,
                 clip: float, threads: int = 1) -> list[PreparedRun]:
    """Resample, normalise, patch and identify runs (see the module docstring).

    Runs of the same length (at ``target_tr``) and parcel networks are normalised and
    identified together, in one vectorised pass over a ``(runs, parcels, samples)`` float32
    array; their patches are views of it. Many short runs cost about as much as one long
    run of the same length. The work is shared out between ``threads`` threads: a few runs
    each, or the blocks of samples and rows of parcels of a long run.

    Returns
    -------
    list of PreparedRun
        In the order of ``runs``.

    Raises
    ------
    ValueError
        When a run is shorter than one patch, or its window texts do not match its patches
        one to one.
    """
    resampled = [_resampled(run, target_tr, patch_length) for run in runs]
    positions = [coordinate_features(run.coordinates, len(run.networks)) for run in runs]
    groups: dict[tuple[int, tuple[str, ...], bytes], list[int]] = {}
    for index, (run, signals) in enumerate(zip(runs, resampled, strict=True)):
        key = (len(signals), tuple(run.networks), positions[index].tobytes())
        groups.setdefault(key, []).append(index)
    duration = patch_length * target_tr
    prepared: dict[int, PreparedRun] = {}
    for (_, networks, _), members in groups.items():
        rows, identity = _normalise_and_identify([resampled[index] for index in members],
                                                 network_membership(networks),
                                                 positions[members[0]], clip, threads)
        for slot, index in enumerate(members):
            patches = cut_patches(rows[slot].T, patch_length)
            texts, events = runs[index].window_texts, runs[index].window_events
            prepared[index] = PreparedRun(
                patches=patches, identity=identity[slot],
                onsets=np.arange(patches.shape[0]) * duration, window_duration=duration,
                subject=runs[index].subject, window_texts=None if texts is None else list(texts),
                window_events=None if events is None else list(events))
    return [prepared[index] for index in range(len(runs))]


def prepare_run(run: ParcelRun, target_tr: float, patch_length: int,
                clip: float) -> PreparedRun:
    """Resample, normalise, patch and identify one run (:func:`prepare_runs`)."""
    return prepare_runs([run], target_tr, patch_length, clip)[0]


@dataclass
class TokenizedRun:
    """Tokens of one run: ``n_groups`` tokens per window, one per parcel group.

    Attributes
    ----------
    token_ids : ndarray of shape (n_windows, n_groups), int64
    onsets : ndarray of shape (n_windows,)
        Window onsets (s).
    window_duration : float
        Seconds per window.
    embeddings : ndarray of shape (n_windows, n_groups, dim), float32
        Continuous features of each token (the representation it was read from; the
        neural tokenizer's: its pre-quantisation latent, then its group's pooled time
        courses).
    timecourse_length : int, default=0
        The last ``timecourse_length`` features of each token are its group's signal at
        each sample of the window (the neural tokenizer's last pooled time course of the
        group; 0: none).
    """

    token_ids: np.ndarray
    onsets: np.ndarray
    window_duration: float
    embeddings: np.ndarray = field(repr=False)
    timecourse_length: int = 0

    def to_frame(self) -> pd.DataFrame:
        """``onset``, ``duration``, ``token_1`` .. ``token_<n_groups>`` rows (a
        ``_desc-fmrilm_tokens.tsv`` table: one row per window, one column per group)."""
        frame = pd.DataFrame({"onset": self.onsets,
                              "duration": np.full(len(self.onsets), self.window_duration)})
        for group, column in enumerate(np.asarray(self.token_ids, dtype=np.int64).T, start=1):
            frame[f"token_{group}"] = column
        return frame
