"""Selectivity captions: what each region prefers, in words (BrainSCUBA, LaVCa).

Both read the fitted encoding model over a pool of candidate captions (the dataset's own
captions plus the shipped pool, :mod:`fmrilm_bids.resources.captions`):

- **BrainSCUBA** (Luo et al. 2024) projects a region's weights onto the captions: the
  candidates ranked by the response the model predicts for them (for a linear model on
  unit-length embeddings, the captions nearest in angle to the region's weight vector).
- **LaVCa** (Matsuyama et al. 2025) summarises the region's top captions into a short
  description; without a generative model here, that summary is the content words most
  common among the top captions, weighted by rank (``"dog, grass, brown"``).

Clusters of well-predicted voxels (:func:`voxel_clusters`) get captions the same way, from
their mean predicted response.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

#: Words left out of LaVCa summaries.
STOPWORDS = frozenset((
    "a", "an", "the", "of", "on", "in", "at", "by", "to", "with", "and", "or", "its", "it",
    "is", "are", "his", "her", "their", "from", "for", "over", "under", "into", "near", "next",
    "beside", "some", "two", "one", "full", "ready", "seen", "afar", "made", "someone",
    "person", "person's", "photo", "view", "close-up", "picture"))


def rank_candidates(predicted: np.ndarray, captions: Sequence[str], top: int = 10,
                    topics: Sequence[str] | None = None,
                    sources: Sequence[str] | None = None) -> pd.DataFrame:
    """BrainSCUBA: the ``top`` candidates with the highest predicted response per target.

    Parameters
    ----------
    predicted : ndarray of shape (n_candidates, n_targets)
        The encoding model's prediction for each candidate caption.
    captions : sequence of str
    top : int, default=10
    topics, sources : sequence of str, optional
        Per candidate (e.g. ``"food"``; ``"dataset"`` or ``"pool"``).

    Returns
    -------
    pandas.DataFrame
        ``target`` (column index), ``rank`` (1 = best), ``caption``, ``score`` (the
        prediction, z-scored over the candidates), ``topic``, ``source``.
    """
    predicted = np.asarray(predicted, dtype=float)
    spread = predicted.std(axis=0)
    z = (predicted - predicted.mean(axis=0)) / np.where(spread > 0, spread, 1.0)
    top = min(top, len(captions))
    best = np.argsort(-z, axis=0, kind="stable")[:top]
    topics = np.asarray(topics if topics is not None else ["n/a"] * len(captions))
    sources = np.asarray(sources if sources is not None else ["n/a"] * len(captions))
    captions = np.asarray(captions)
    rows = [{"target": target, "rank": rank + 1, "caption": captions[i],
             "score": round(float(z[i, target]), 4), "topic": topics[i], "source": sources[i]}
            for target in range(predicted.shape[1]) for rank, i in enumerate(best[:, target])]
    return pd.DataFrame(rows, columns=["target", "rank", "caption", "score", "topic",
                                       "source"])


def summarise_captions(captions: Sequence[str], n_words: int = 3) -> str:
    """LaVCa-style summary: the content words most common in ``captions`` (best first).

    Each caption's words count ``1 / rank`` (the first caption counts most).
    """
    weights: Counter[str] = Counter()
    for rank, caption in enumerate(captions, start=1):
        for word in dict.fromkeys(re.findall(r"[a-z][a-z'-]+", caption.lower())):
            if word not in STOPWORDS and len(word) > 2:
                weights[word] += 1.0 / rank
    return ", ".join(word for word, _ in weights.most_common(n_words))


def selectivity_captions(predicted: np.ndarray, captions: Sequence[str],
                         regions: Sequence[str], top: int = 10,
                         topics: Sequence[str] | None = None,
                         sources: Sequence[str] | None = None) -> pd.DataFrame:
    """BrainSCUBA's top captions and LaVCa's summary for every region.

    Returns
    -------
    pandas.DataFrame
        ``region``, ``method`` (``brainscuba`` rows ranked 1..top, then one ``lavca`` row),
        ``rank``, ``caption``, ``score``, ``topic`` (for LaVCa: the most common topic of the
        top captions), ``source``.
    """
    ranked = rank_candidates(predicted, captions, top, topics, sources)
    ranked.insert(0, "region", np.asarray(regions)[ranked.pop("target").to_numpy()])
    ranked.insert(1, "method", "brainscuba")
    summaries = []
    for region, group in ranked.groupby("region", sort=False):
        summaries.append({"region": region, "method": "lavca", "rank": 1,
                          "caption": summarise_captions(group["caption"].tolist()),
                          "score": round(float(group["score"].mean()), 4),
                          "topic": group["topic"].mode().iloc[0], "source": "summary"})
    return pd.concat([ranked, pd.DataFrame(summaries)], ignore_index=True)


def preferred_topic(table: pd.DataFrame, region: str, top: int = 10) -> str:
    """The most common topic among a region's ``top`` BrainSCUBA captions (rank breaks ties)."""
    rows = table[(table["region"] == region) & (table["method"] == "brainscuba")]
    rows = rows.sort_values("rank").head(top)
    counts = rows.groupby("topic")["rank"].agg(["size", "min"])
    return str(counts.sort_values(["size", "min"], ascending=[False, True]).index[0])


def voxel_clusters(score_map: np.ndarray, threshold: float, min_size: int = 10,
                   max_clusters: int = 20) -> np.ndarray:
    """Clusters of neighbouring voxels with held-out r above ``threshold``.

    Parameters
    ----------
    score_map : ndarray, 3-D
        Held-out r per voxel (NaN outside the mask).
    threshold : float
    min_size : int, default=10
        Smaller clusters are dropped.
    max_clusters : int, default=20
        Only the largest are kept.

    Returns
    -------
    ndarray of int, same shape
        0 outside clusters, clusters numbered 1.. from the largest.
    """
    above = np.nan_to_num(score_map, nan=-np.inf) > threshold
    labels, count = ndimage.label(above)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    keep = [k + 1 for k in np.argsort(-sizes, kind="stable") if sizes[k] >= min_size]
    out = np.zeros(score_map.shape, dtype=np.int32)
    for new, old in enumerate(keep[:max_clusters], start=1):
        out[labels == old] = new
    return out
