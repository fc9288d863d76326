"""Slice-timing correction: shift every slice's time series to one reference time.

Each slice of an EPI volume is acquired at its own time within the repetition (BIDS
``SliceTiming``, seconds from the start of the volume, one value per slice along
``SliceEncodingDirection``). Like AFNI's ``3dTshift`` (which fMRIPrep runs), every voxel's
series is interpolated in time -- here with a cubic spline -- to the reference time, by
default the middle of the acquisition window (fMRIPrep's ``--slice-time-ref 0.5``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.interpolate import CubicSpline

_AXES = {"i": 0, "j": 1, "k": 2}


def slice_axis(slice_encoding_direction: str | None) -> tuple[int, bool]:
    """Array axis and reversal of a BIDS ``SliceEncodingDirection`` (``i``, ``j-``, ...).

    Returns
    -------
    tuple of (int, bool)
        The axis of the stored array the slices are stacked along, and whether
        ``SliceTiming`` lists them from the last index to the first (a ``-`` direction).
    """
    direction = (slice_encoding_direction or "k").strip()
    if direction.rstrip("-") not in _AXES:
        raise ValueError(
            f"SliceEncodingDirection {direction!r} is not one of i, j, k, i-, j-, k-."
        )
    return _AXES[direction.rstrip("-")], direction.endswith("-")


def slice_time_reference(slice_times: Sequence[float]) -> float:
    """The time (s, within the TR) series are shifted to: the middle of the slice times."""
    times = np.asarray(slice_times, dtype=float)
    return float(times.min() + times.max()) / 2.0


def slice_time_correct(
    data: np.ndarray,
    slice_times: Sequence[float],
    repetition_time: float,
    slice_encoding_direction: str | None = "k",
    reference_time: float | None = None,
) -> np.ndarray:
    """Interpolate each slice's series to ``reference_time`` (cubic spline in time).

    Parameters
    ----------
    data : array of shape (X, Y, Z, T)
        BOLD series, in the stored voxel order of the NIfTI file.
    slice_times : sequence of float
        BIDS ``SliceTiming`` (s), one per slice along the slice-encoding axis.
    repetition_time : float
        TR (s).
    slice_encoding_direction : str, optional
        BIDS ``SliceEncodingDirection`` (default ``k``).
    reference_time : float, optional
        Time (s, within the TR) the series are shifted to; default: the middle of the
        slice times, ``(min + max) / 2``.

    Returns
    -------
    numpy.ndarray
        float32 array of the shape of ``data``. Values at the first and last volume are
        held (no extrapolation beyond the sampled times).
    """
    axis, reverse = slice_axis(slice_encoding_direction)
    times = np.asarray(slice_times, dtype=float)
    if times.size != data.shape[axis]:
        raise ValueError(
            f"SliceTiming has {times.size} values but the BOLD series has {data.shape[axis]} "
            f"slices along axis {axis} (SliceEncodingDirection {slice_encoding_direction!r})."
        )
    if times.min() < 0 or times.max() >= repetition_time:
        raise ValueError(
            f"SliceTiming must lie within [0, RepetitionTime={repetition_time}) s; got "
            f"[{times.min()}, {times.max()}]."
        )
    if reverse:
        times = times[::-1]
    if reference_time is None:
        reference_time = slice_time_reference(times)
    n_volumes = data.shape[-1]
    out = np.empty(data.shape, dtype=np.float32)
    volume_starts = np.arange(n_volumes) * repetition_time
    for index, slice_time in enumerate(times):
        where = [slice(None)] * 3
        where[axis] = index
        series = np.asarray(data[tuple(where)], dtype=np.float64)
        if n_volumes < 4 or np.isclose(slice_time, reference_time):
            out[tuple(where)] = series
            continue
        spline = CubicSpline(volume_starts + slice_time, series, axis=-1)
        wanted = np.clip(volume_starts + reference_time, volume_starts[0] + slice_time,
                         volume_starts[-1] + slice_time)
        out[tuple(where)] = spline(wanted)
    return out
