"""Evaluation protocol of Stages 2 and 3, with simple baselines on the same splits.

* **Splits by subject** (:func:`subject_split`): no participant is in both the training and
  the test runs.
* **Tuned tasks**: questions the model was instruction-tuned on, asked about test runs.
* **Zero-shot**: tasks held out of tuning, asked the same way (the answer options are in
  the question; the model never saw the question).
* **Few-shot**: the question preceded by ``k`` answered examples per class (class-balanced,
  from training subjects; ``k`` examples in all for free-text and number tasks), as earlier
  conversation turns.
* **Baselines**: scikit-learn on the same items: logistic regression (classes), ridge
  regression (numbers), or ridge regression to the MiniLM embedding of the caption and the
  nearest training caption (text), on two feature sets: functional connectivity of the
  parcel signals over the prompt's time span (Fisher-z correlations) and the Stage-1 token
  features of the prompt's windows (concatenated for a window question, averaged for a run
  question; one-hot tokens when the runs carry no features).

Metrics: accuracy, AUROC from answer probabilities and the chance accuracy (classes); mean
absolute error (numbers); MiniLM cosine, BLEU and ROUGE-L to the true texts (captions and
window descriptions). :func:`evaluate_fmrilm` returns them as a JSON-ready dict.
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
