"""Which brain networks a decoded embedding comes from (WAVE-style attribution, by ablation).

Each network's voxels are *ablated* (set to a baseline, each voxel's mean response, so they
carry no deviation from the average unit) and every unit is decoded again:

- ``embedding_change``: the mean of ``1 - cos(decoded, decoded without the network)``, how
  much the decoded embedding relies on the network;
- ``similarity_drop``: the mean cosine of the decoded and the true caption embeddings minus
  the same without the network, how much the network helps read out what was seen (negative:
  the decoder does better without it).

The networks come from the caller (an atlas's network table mapped onto the voxels); voxels
outside every network form a network of their own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from fmrilm_bids.stimulus.decoding import unit_rows


def _row_cosine(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    return np.sum(unit_rows(first) * unit_rows(second), axis=1)


def network_ablation(decode: Callable[[np.ndarray], np.ndarray], responses: np.ndarray,
                     targets: np.ndarray, networks: Sequence[str],
                     baseline: np.ndarray | None = None,
                     kept: np.ndarray | None = None) -> pd.DataFrame:
    """Each network's contribution to the decoded embeddings (see the module docstring).

    Parameters
    ----------
    decode : callable
        ``decode(responses) -> decoded embeddings`` (a fitted decoder).
    responses : ndarray of shape (n_units, n_voxels)
    targets : ndarray of shape (n_units, n_dims)
        True caption embeddings.
    networks : sequence of str, length n_voxels
        Network of each voxel.
    baseline : ndarray of shape (n_voxels,), optional
        Value an ablated voxel takes (default: its mean over the units).
    kept : ndarray of bool, shape (n_voxels,), optional
        The voxels the decoder reads (their count per network is reported).

    Returns
    -------
    pandas.DataFrame
        ``network``, ``n_voxels``, ``n_kept``, ``embedding_change``, ``similarity_drop``,
        ``n_units``; one row per network, sorted by ``similarity_drop`` (largest first).
    """
    responses = np.asarray(responses, dtype=float)
    networks = np.asarray(networks).astype(str)
    baseline = responses.mean(axis=0) if baseline is None else np.asarray(baseline)
    kept = np.ones(responses.shape[1], dtype=bool) if kept is None else np.asarray(kept)
    decoded = decode(responses)
    similarity = _row_cosine(decoded, targets)
    rows = []
    for network in sorted(set(networks.tolist())):
        columns = networks == network
        ablated_responses = responses.copy()
        ablated_responses[:, columns] = baseline[columns]
        ablated = decode(ablated_responses)
        rows.append({"network": network, "n_voxels": int(columns.sum()),
                     "n_kept": int((columns & kept).sum()),
                     "embedding_change": float(np.mean(1.0 - _row_cosine(decoded, ablated))),
                     "similarity_drop": float(np.mean(similarity
                                                      - _row_cosine(ablated, targets))),
                     "n_units": len(responses)})
    return pd.DataFrame(rows).sort_values("similarity_drop", ascending=False,
                                          ignore_index=True)


def pool_attributions(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Several subjects' :func:`network_ablation` tables in one: measures averaged over all
    units (weighted by each subject's units), voxel counts from the first table."""
    stacked = pd.concat(tables, ignore_index=True)
    weights = stacked["n_units"].to_numpy(float)
    rows = []
    for network, group in stacked.groupby("network", sort=True):
        w = weights[group.index]
        rows.append({"network": network, "n_voxels": int(group["n_voxels"].iloc[0]),
                     "n_kept": int(group["n_kept"].iloc[0]),
                     **{column: float(np.average(group[column], weights=w))
                        for column in ("embedding_change", "similarity_drop")},
                     "n_units": int(w.sum())})
    return pd.DataFrame(rows).sort_values("similarity_drop", ascending=False,
                                          ignore_index=True)
