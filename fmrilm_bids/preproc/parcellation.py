"""Parcel time series: the mean BOLD signal of each labelled region.

A parcel none of whose voxels lies inside the BOLD brain mask (outside a partial field of
view, or absent from the atlas at this resolution) is *missing*: it has no column, and is
listed by the caller in the sidecar, never filled with zeros or NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse


@dataclass(frozen=True)
class ParcelSignals:
    """Mean signal per present parcel, and which listed parcels are missing."""

    signals: np.ndarray  # (T, n_present)
    present: list[int]  # label values with a column, in the atlas table's order
    missing: list[int]  # label values without voxels in the mask
    voxels: list[int]  # voxels averaged per present parcel


def parcel_signals(values: np.ndarray, labels: np.ndarray,
                   label_values: Sequence[int]) -> ParcelSignals:
    """Average ``values`` over the voxels of each label.

    Parameters
    ----------
    values : array of shape (V, T)
        Voxel series (the brain-mask voxels).
    labels : int array of shape (V,)
        Atlas label of each of those voxels (0: none).
    label_values : sequence of int
        The atlas's labels, in its table's order; defines the column order.
    """
    label_values = [int(v) for v in label_values]
    position = {value: k for k, value in enumerate(label_values)}
    columns = np.array([position.get(int(v), -1) for v in labels], dtype=np.int64)
    keep = columns >= 0
    counts = np.bincount(columns[keep], minlength=len(label_values))
    one_hot = sparse.csr_matrix(
        (np.ones(int(keep.sum())), (columns[keep], np.flatnonzero(keep))),
        shape=(len(label_values), len(labels)),
    )
    sums = one_hot @ np.asarray(values, dtype=np.float64)
    present = counts > 0
    means = sums[present] / counts[present, None]
    return ParcelSignals(
        signals=means.T,
        present=[v for v, p in zip(label_values, present, strict=True) if p],
        missing=[v for v, p in zip(label_values, present, strict=True) if not p],
        voxels=[int(c) for c in counts[present]],
    )
