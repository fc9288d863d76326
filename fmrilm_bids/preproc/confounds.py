"""Nuisance signals of a BOLD run, with fMRIPrep's column names and sidecar.

Pure functions on arrays (voxels x time): motion expansions (24P), framewise displacement
(:func:`fmrilm_bids.preproc.motion.framewise_displacement`), DVARS, tissue signals, anatomical
CompCor and non-steady-state volumes; :func:`confounds_table` assembles them into the
``desc-confounds_timeseries.tsv`` table and its JSON sidecar.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from fmrilm_bids.preproc.motion import MOTION_COLUMNS, framewise_displacement

#: Fraction of variance the retained aCompCor components explain (fMRIPrep's default).
COMPCOR_VARIANCE = 0.5


def detect_non_steady_state(global_signal: np.ndarray, max_volumes: int = 50) -> int:
    """Number of leading non-steady-state (dummy) volumes.

    Before the longitudinal magnetisation reaches steady state, the first volumes are
    brighter. Like nipype's ``NonSteadyStateDetector`` (used by fMRIPrep), volumes are
    outliers of the global signal of the first ``max_volumes`` volumes; only the leading run
    of bright outliers counts.

    Parameters
    ----------
    global_signal : array of shape (T,)
        Mean brain intensity per volume.
    """
    signal = np.asarray(global_signal, dtype=float)[:max_volumes]
    median = np.median(signal)
    spread = 1.4826 * np.median(np.abs(signal - median))
    threshold = median + max(5.0 * spread, 0.01 * abs(median))
    count = 0
    for value in signal:
        if value <= threshold:
            break
        count += 1
    return count


def cosine_basis(n_volumes: int, repetition_time: float, high_pass: float) -> np.ndarray:
    """Discrete cosine drift regressors removing frequencies below ``high_pass`` (Hz).

    The SPM/nilearn basis: ``sqrt(2/n) cos(pi k (2t+1) / 2n)`` for ``k = 1 .. K-1`` with
    ``K = floor(2 n TR high_pass) + 1``; empty (``n x 0``) when the run is too short.
    """
    order = int(np.floor(2 * n_volumes * repetition_time * high_pass)) + 1
    t = np.arange(n_volumes)
    basis = [np.sqrt(2.0 / n_volumes) * np.cos(np.pi * k * (2 * t + 1) / (2 * n_volumes))
             for k in range(1, order)]
    return np.column_stack(basis) if basis else np.zeros((n_volumes, 0))


def dvars(series: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DVARS and standardised DVARS (Nichols 2013; nipype's ``ComputeDVARS``).

    Parameters
    ----------
    series : array of shape (V, T)
        Brain voxels' time series.

    Returns
    -------
    dvars, std_dvars : arrays of shape (T,)
        RMS of the temporal difference (intensities scaled to a median of 1000), and the
        same divided by its expected value under stationarity (robust AR(1) estimate).
        The first value of each is NaN.
    """
    series = np.asarray(series, dtype=np.float64)
    means = series.mean(axis=1)
    keep = series.std(axis=1) > 0
    series, means = series[keep], means[keep]
    scale = 1000.0 / np.median(means)
    series = series * scale
    means = means * scale
    centered = series - means[:, None]
    robust_sd = (np.percentile(series, 75, axis=1) - np.percentile(series, 25, axis=1)) / 1.349
    lag0 = (centered ** 2).sum(axis=1)
    lag1 = (centered[:, 1:] * centered[:, :-1]).sum(axis=1)
    ar1 = np.median(np.divide(lag1, lag0, out=np.zeros_like(lag1), where=lag0 > 0))
    expected = np.mean(np.sqrt(2 * (1 - ar1)) * robust_sd)
    raw = np.sqrt(np.mean(np.diff(series, axis=1) ** 2, axis=0))
    standardised = raw / expected if expected > 0 else np.full_like(raw, np.nan)
    return np.concatenate([[np.nan], raw]), np.concatenate([[np.nan], standardised])


def acompcor(
    series: np.ndarray,
    repetition_time: float,
    high_pass: float,
    skip: int = 0,
    variance: float = COMPCOR_VARIANCE,
) -> tuple[np.ndarray, list[dict[str, object]]]:
    """Anatomical CompCor (Behzadi 2007) components of noise-ROI voxels, as fMRIPrep.

    Voxel series are high-pass filtered (cosine basis), centred and variance-normalised,
    then decomposed by SVD; the leading components explaining ``variance`` of the signal
    are retained.

    Parameters
    ----------
    series : array of shape (V, T)
        Noise-ROI (white matter + CSF) voxel series.
    skip : int
        Leading non-steady-state volumes left out of the decomposition (zeros there).

    Returns
    -------
    components : array of shape (T, K)
    metadata : list of dict
        Per component: ``SingularValue``, ``VarianceExplained``,
        ``CumulativeVarianceExplained``, ``Retained`` (all True).
    """
    n_volumes = series.shape[1]
    data = np.asarray(series, dtype=np.float64)[:, skip:].T
    if data.shape[0] < 3 or data.shape[1] < 2:
        return np.zeros((n_volumes, 0)), []
    drift = np.column_stack([np.ones(data.shape[0]),
                             cosine_basis(data.shape[0], repetition_time, high_pass)])
    data = data - drift @ np.linalg.lstsq(drift, data, rcond=None)[0]
    sd = data.std(axis=0)
    data = data[:, sd > 0] / sd[sd > 0]
    u, s, _ = np.linalg.svd(data, full_matrices=False)
    explained = s ** 2 / np.sum(s ** 2)
    cumulative = np.cumsum(explained)
    n_keep = int(np.searchsorted(cumulative, variance) + 1)
    components = np.zeros((n_volumes, n_keep))
    components[skip:] = u[:, :n_keep]
    metadata = [
        {"Method": "aCompCor", "Mask": "combined", "SingularValue": float(s[k]),
         "VarianceExplained": float(explained[k]),
         "CumulativeVarianceExplained": float(cumulative[k]), "Retained": True}
        for k in range(n_keep)
    ]
    return components, metadata


def expand(table: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Add fMRIPrep's ``_derivative1``, ``_power2`` and ``_derivative1_power2`` columns."""
    out = {}
    for name in columns:
        values = table[name].to_numpy(dtype=float)
        derivative = np.concatenate([[np.nan], np.diff(values)])
        out[name] = values
        out[f"{name}_derivative1"] = derivative
        out[f"{name}_power2"] = values ** 2
        out[f"{name}_derivative1_power2"] = derivative ** 2
    return pd.DataFrame(out, index=table.index)


def confounds_table(
    motion_params: np.ndarray,
    brain: np.ndarray,
    tissues: Mapping[str, np.ndarray],
    noise: np.ndarray,
    repetition_time: float,
    high_pass: float,
    n_dummy: int,
) -> tuple[pd.DataFrame, dict[str, dict[str, object]]]:
    """Assemble the confounds table and its sidecar.

    Parameters
    ----------
    motion_params : array of shape (T, 6)
        :data:`fmrilm_bids.preproc.motion.MOTION_COLUMNS` per volume.
    brain : array of shape (V, T)
        Brain-mask voxel series (global signal, DVARS).
    tissues : mapping
        ``{"white_matter": (V_wm, T), "csf": (V_csf, T)}`` voxel series.
    noise : array of shape (V_noise, T)
        Voxel series of the aCompCor mask (white matter + CSF).
    n_dummy : int
        Leading non-steady-state volumes (one ``non_steady_state_outlier_XX`` column each).

    Returns
    -------
    table : pandas.DataFrame
        One row per volume; ``n/a`` where a value is undefined (first derivative row).
    metadata : dict
        Sidecar: per-column descriptions, and per-component CompCor metadata.
    """
    n_volumes = brain.shape[1]
    base = pd.DataFrame(np.asarray(motion_params, dtype=float), columns=list(MOTION_COLUMNS))
    base["global_signal"] = brain.mean(axis=0)
    for name, series in tissues.items():
        base[name] = series.mean(axis=0) if len(series) else np.nan
    table = expand(base, [*base.columns])
    table["framewise_displacement"] = framewise_displacement(motion_params)
    table["dvars"], table["std_dvars"] = dvars(brain)
    components, compcor_meta = acompcor(noise, repetition_time, high_pass, skip=n_dummy)
    metadata: dict[str, dict[str, object]] = {
        "global_signal": {"Description": "Mean BOLD signal within the brain mask."},
        "white_matter": {"Description": "Mean BOLD signal within the white-matter mask."},
        "csf": {"Description": "Mean BOLD signal within the CSF mask."},
        "framewise_displacement": {
            "Description": "Framewise displacement (Power et al. 2012), 50 mm head radius.",
            "Units": "mm",
        },
        "dvars": {"Description": "DVARS, intensities scaled to a median of 1000."},
        "std_dvars": {"Description": "Standardised DVARS (Nichols 2013)."},
    }
    for column in MOTION_COLUMNS:
        metadata[column] = {
            "Description": "Head motion relative to the BOLD reference, rotation about the "
            "reference volume's centre.",
            "Units": "mm" if column.startswith("trans") else "rad",
        }
    for k, meta in enumerate(compcor_meta):
        table[f"a_comp_cor_{k:02d}"] = components[:, k]
        metadata[f"a_comp_cor_{k:02d}"] = meta
    for k in range(n_dummy):
        spike = np.zeros(n_volumes)
        spike[k] = 1.0
        table[f"non_steady_state_outlier_{k:02d}"] = spike
        metadata[f"non_steady_state_outlier_{k:02d}"] = {
            "Description": "Non-steady-state (dummy) volume indicator."}
    return table, metadata
