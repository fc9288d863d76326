"""Is there stimulus information in the responses? Split-half identification, permutation p;
and the simplest classifier of held-out groups (nearest category mean, by correlation).

Each category's blocks (or events) are split into two halves (first and second
presentations); a category is identified when its first-half pattern correlates more with
its own second-half pattern than with any other category's. The test statistic is the mean
correlation of matching pairs minus that of non-matching pairs, compared with every
relabelling of the second half (exact for up to 8 categories, otherwise random ones).
Voxels are chosen without the labels (:func:`driven_voxels`), so the test is not circular.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Identification:
    """Split-half identification of categories.

    Attributes
    ----------
    accuracy : float
        Share of categories identified (chance: 1 / n_categories).
    statistic : float
        Mean matching minus mean non-matching correlation.
    p_value : float
        Permutation p (the observed labelling counts as one permutation).
    n_categories, n_permutations : int
    """

    accuracy: float
    statistic: float
    p_value: float
    n_categories: int
    n_permutations: int


def response_t(responses: np.ndarray) -> np.ndarray:
    """The t-statistic of each target's mean response over the samples against 0 (no labels)."""
    responses = np.asarray(responses, dtype=float)
    spread = responses.std(axis=0, ddof=1) / np.sqrt(len(responses))
    return responses.mean(axis=0) / np.where(spread > 0, spread, np.inf)


def top_fraction(scores: np.ndarray, fraction: float) -> np.ndarray:
    """Indices of the ``fraction`` (at least one) of the largest ``scores`` (NaN last)."""
    count = max(1, round(fraction * len(scores)))
    return np.argsort(-np.nan_to_num(scores, nan=-np.inf), kind="stable")[:count]


def driven_voxels(responses: np.ndarray, fraction: float = 0.1) -> np.ndarray:
    """Indices of the ``fraction`` of targets with the largest mean response t-statistic.

    Uses no labels: the t-statistic of the mean over all samples against 0
    (:func:`response_t`).
    """
    return top_fraction(response_t(responses), fraction)


def split_half_identification(patterns: np.ndarray, labels: np.ndarray,
                              max_permutations: int = 10_000,
                              seed: int = 0) -> Identification:
    """Split-half identification with a permutation p-value (see the module docstring).

    Parameters
    ----------
    patterns : ndarray of shape (n_samples, n_targets)
        In time order; each label needs at least two samples.
    labels : ndarray of shape (n_samples,)
    max_permutations : int, default=10000
    seed : int, default=0
    """
    labels = np.asarray(labels).astype(str)
    categories = sorted(set(labels))
    halves = [[], []]
    for category in categories:
        rows = np.flatnonzero(labels == category)
        if len(rows) < 2:
            raise ValueError(f"Category {category!r} has a single sample; two are needed")
        middle = len(rows) // 2
        halves[0].append(np.asarray(patterns)[rows[:middle]].mean(axis=0))
        halves[1].append(np.asarray(patterns)[rows[middle:]].mean(axis=0))
    first, second = np.asarray(halves[0]), np.asarray(halves[1])
    k = len(categories)
    corr = np.corrcoef(first, second)[:k, k:]
    accuracy = float(np.mean(np.argmax(corr, axis=1) == np.arange(k)))

    def statistic(order: np.ndarray) -> float:
        matched = corr[np.arange(k), order]
        return float(matched.mean() - (corr.sum() - matched.sum()) / (k * k - k))

    observed = statistic(np.arange(k))
    if math.factorial(k) <= max_permutations:
        orders = [np.array(p) for p in itertools.permutations(range(k))]
    else:
        rng = np.random.default_rng(seed)
        orders = [np.arange(k)] + [rng.permutation(k) for _ in range(max_permutations - 1)]
    null = np.array([statistic(order) for order in orders])
    p_value = float(np.mean(null >= observed - 1e-12))
    return Identification(accuracy=accuracy, statistic=observed, p_value=p_value,
                          n_categories=k, n_permutations=len(orders))


def nearest_mean_categories(patterns: np.ndarray, labels: np.ndarray, groups: np.ndarray,
                            fraction: float = 0.1) -> np.ndarray:
    """Each group's samples classified by the category mean they correlate with best, the
    means and the voxels (:func:`driven_voxels` of ``fraction``) taken from the other groups.

    The simplest decoder of a block design (leave one block out), the baseline beside
    the caption-embedding decoders.

    Parameters
    ----------
    patterns : ndarray of shape (n_samples, n_targets)
    labels : ndarray of shape (n_samples,)
    groups : ndarray of shape (n_samples,)
        Block or run of each sample; each is held out in turn.
    fraction : float, default=0.1

    Returns
    -------
    ndarray of shape (n_samples,)
        Predicted label of each sample (from the categories of the other groups).
    """
    patterns = np.asarray(patterns, dtype=float)
    labels, groups = np.asarray(labels).astype(str), np.asarray(groups)
    predicted = np.empty(len(labels), dtype=object)
    for group in np.unique(groups):
        test, train = groups == group, groups != group
        voxels = driven_voxels(patterns[train], fraction)
        kept = patterns[:, voxels] - patterns[train][:, voxels].mean(axis=0)
        names = sorted(set(labels[train]))
        means = np.stack([kept[train & (labels == name)].mean(axis=0) for name in names])
        correlation = np.corrcoef(kept[test], means)[:test.sum(), test.sum():]
        predicted[test] = np.asarray(names)[correlation.argmax(axis=1)]
    return predicted.astype(str)
