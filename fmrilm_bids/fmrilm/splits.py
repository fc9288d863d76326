"""Held-out participants: the one subject split of Stage 1, Stages 2-3 and their evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def subject_split(subjects: Sequence[str], n_test: int | None = None,
                  test_fraction: float = 0.25, seed: int = 0) -> tuple[list[str], list[str]]:
    """Split participants into training and test subjects (seeded).

    Parameters
    ----------
    subjects : sequence of str
    n_test : int, optional
        Test subjects (default: ``test_fraction`` of them, at least one).
    test_fraction : float, default=0.25
    seed : int, default=0

    Returns
    -------
    train, test : list of str
        Sorted, disjoint.
    """
    unique = sorted(set(subjects))
    n_test = n_test if n_test is not None else max(1, round(test_fraction * len(unique)))
    if not 0 < n_test < len(unique):
        raise ValueError(f"Cannot hold out {n_test} of {len(unique)} subjects; at least one "
                         "must train and one must test.")
    order = np.random.default_rng(seed).permutation(len(unique))
    test = sorted(unique[i] for i in order[:n_test])
    return [s for s in unique if s not in test], test
