"""Parcel time courses: HRF, band-limited network fluctuations, evoked responses, drift.

Every function here is pure (randomness comes in through a ``numpy.random.Generator``) and
works on a regular time grid of spacing ``dt`` that starts at 0 s, the onset of the first
volume. The simulator uses ``dt = TR / n_slices``, so every slice's acquisition time lies on
the grid.
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def spm_hrf(dt: float, length: float = 32.0) -> np.ndarray:
    """SPM's canonical haemodynamic response (double gamma), sampled every ``dt`` s.

    ``h(t) = g(t; 6) - g(t; 16) / 6`` with ``g(t; k)`` the gamma density of shape ``k`` and
    unit scale (peak near 5 s, undershoot near 15 s), as ``spm_hrf`` with its default
    parameters.

    Parameters
    ----------
    dt : float
        Sampling interval (s).
    length : float, default=32
        Kernel length (s).

    Returns
    -------
    ndarray
        The kernel, scaled to sum to 1.
    """
    times = np.arange(0.0, length, dt)
    kernel = stats.gamma.pdf(times, 6.0) - stats.gamma.pdf(times, 16.0) / 6.0
    return kernel / kernel.sum()


def bandlimited_noise(n_samples: int, dt: float, n_signals: int, rng: np.random.Generator,
                      band: tuple[float, float] = (0.01, 0.1), order: int = 4) -> np.ndarray:
    """Independent Gaussian signals whose power lies in ``band`` (Hz), unit variance.

    White noise is filtered in the frequency domain by the magnitude response of a
    Butterworth band-pass of the given order (zero phase). The signals are drawn over twice
    the needed length and cropped, so they are not periodic.

    Returns
    -------
    ndarray of shape (n_samples, n_signals)
        Each column has mean 0 and standard deviation 1.
    """
    n_long = 2 * n_samples
    white = rng.standard_normal((n_long, n_signals))
    freqs = np.fft.rfftfreq(n_long, dt)
    low, high = band
    with np.errstate(divide="ignore"):
        high_pass = 1.0 / np.sqrt(1.0 + (low / np.where(freqs > 0, freqs, np.inf)) ** (2 * order))
    low_pass = 1.0 / np.sqrt(1.0 + (freqs / high) ** (2 * order))
    spectrum = np.fft.rfft(white, axis=0) * (high_pass * low_pass)[:, None]
    noise = np.fft.irfft(spectrum, n=n_long, axis=0)[:n_samples]
    noise -= noise.mean(axis=0)
    return noise / noise.std(axis=0)


def network_time_courses(n_samples: int, dt: float, correlation: np.ndarray,
                         rng: np.random.Generator,
                         band: tuple[float, float] = (0.01, 0.1)) -> np.ndarray:
    """Latent network signals with a given expected correlation, band-limited.

    Parameters
    ----------
    correlation : ndarray of shape (n_networks, n_networks)
        Positive definite correlation matrix between networks.

    Returns
    -------
    ndarray of shape (n_samples, n_networks)
        Unit-variance signals; ``z = u @ L.T`` with ``L`` the Cholesky factor of
        ``correlation`` and ``u`` independent band-limited signals.
    """
    chol = np.linalg.cholesky(np.asarray(correlation, dtype=float))
    return bandlimited_noise(n_samples, dt, len(chol), rng, band) @ chol.T


def parcel_fluctuations(networks: np.ndarray, assignment: np.ndarray, shared_fraction: np.ndarray,
                        amplitude: np.ndarray, unique: np.ndarray) -> np.ndarray:
    """Mix latent network signals and parcel-specific signals into parcel fluctuations.

    ``x_p = amplitude_p * (sqrt(w_p) * z_{n(p)} + sqrt(1 - w_p) * u_p)``, so with unit-variance,
    independent ``u`` two parcels of one network correlate by ``sqrt(w_p * w_q)`` (times the
    network correlation for parcels of different networks).

    Parameters
    ----------
    networks : ndarray of shape (n_samples, n_networks)
        Latent network signals (unit variance).
    assignment : ndarray of int, shape (n_parcels,)
        Column of ``networks`` each parcel belongs to.
    shared_fraction : ndarray of shape (n_parcels,)
        ``w_p`` in [0, 1], the share of a parcel's variance that its network drives.
    amplitude : ndarray of shape (n_parcels,)
        Standard deviation of each parcel's fluctuation (e.g. in % signal change).
    unique : ndarray of shape (n_samples, n_parcels)
        Parcel-specific signals (unit variance).

    Returns
    -------
    ndarray of shape (n_samples, n_parcels)
    """
    weight = np.asarray(shared_fraction, dtype=float)
    mixed = np.sqrt(weight) * networks[:, assignment] + np.sqrt(1.0 - weight) * unique
    return mixed * np.asarray(amplitude, dtype=float)


def boxcars(onsets: np.ndarray, durations: np.ndarray, n_samples: int, dt: float) -> np.ndarray:
    """Stimulus indicator of each event on the grid, with exact fractional edges.

    Sample ``j`` stands for the interval ``[j dt, (j + 1) dt)``; its value is the fraction of
    that interval the event covers.

    Returns
    -------
    ndarray of shape (n_samples, n_events)
    """
    starts = np.arange(n_samples)[:, None] * dt
    onsets = np.asarray(onsets, dtype=float)[None, :]
    ends = onsets + np.asarray(durations, dtype=float)[None, :]
    overlap = np.minimum(starts + dt, ends) - np.maximum(starts, onsets)
    return np.clip(overlap / dt, 0.0, 1.0)


def event_responses(onsets: np.ndarray, durations: np.ndarray, n_samples: int,
                    dt: float) -> np.ndarray:
    """Each event's predicted BOLD response (boxcar * SPM HRF), scaled to a peak of 1.

    Returns
    -------
    ndarray of shape (n_samples, n_events)
        Column ``e`` is the response to event ``e`` alone; an event with amplitude ``a``
        contributes ``a * column`` (so ``a`` is its peak signal change).
    """
    stimulus = boxcars(onsets, durations, n_samples, dt)
    kernel = spm_hrf(dt)
    # Scale by the peak of the whole response, then crop: an event near the end of the run
    # keeps its amplitude even though its peak falls after the last sample.
    full = np.stack([np.convolve(column, kernel) for column in stimulus.T], axis=1)
    full = full.reshape(n_samples + len(kernel) - 1, stimulus.shape[1])
    peaks = full.max(axis=0)
    return full[:n_samples] / np.where(peaks > 0, peaks, 1.0)


def legendre_drift(n_samples: int, coefficients: np.ndarray) -> np.ndarray:
    """Slow drift as a sum of Legendre polynomials over the run.

    Parameters
    ----------
    coefficients : array-like of shape (n_orders,)
        Weight of ``P_1, P_2, ...`` (no constant term), evaluated on ``[-1, 1]``.

    Returns
    -------
    ndarray of shape (n_samples,)
    """
    x = np.linspace(-1.0, 1.0, n_samples)
    return np.polynomial.legendre.legval(x, np.concatenate([[0.0], coefficients]))


def interleaved_slice_order(n_slices: int) -> np.ndarray:
    """Acquisition position of each slice for an ascending interleaved acquisition.

    Slices ``0, 2, 4, ...`` are acquired first, then ``1, 3, 5, ...`` (0-based slice indices
    along the slice axis).

    Returns
    -------
    ndarray of int, shape (n_slices,)
        ``position[k]`` is how many slices were acquired before slice ``k``.
    """
    order = np.concatenate([np.arange(0, n_slices, 2), np.arange(1, n_slices, 2)])
    position = np.empty(n_slices, dtype=int)
    position[order] = np.arange(n_slices)
    return position
