"""What was seen, read out of decoded embeddings, and how well: retrieval, categories, captions.

- **Retrieval** (MindEye, BrainCLIP's fMRI-text matching): a unit's decoded embedding ranks
  candidate captions by cosine similarity. Evaluated among the held-out units themselves:
  the rank of the unit's own caption among the distinct captions of all units (top-1 and
  top-5 accuracy; chance ``1 / n`` and ``5 / n``).
- **Categories** (BrainCLIP's zero-shot classification): category names are embedded as
  sentences (``"A picture of faces."``) and a unit's probabilities are the softmax of its
  cosine similarities to them, scaled by the decoder's ``1 / temperature``. Accuracy is
  reported for decoders that saw the category in training and, zero-shot, for decoders
  trained without it (classified among the categories left out together).
- **Captions**: a language model writes one sentence from the captions retrieved for a unit
  (:func:`caption_prompt`); its similarity to the true caption (the same sentence encoder)
  is compared with the top retrieved caption's and with chance (shuffled pairs).

Every accuracy or similarity has a permutation p-value (:func:`permutation_p`): the pairing
of decoded and true is shuffled, the statistic recomputed, and ``p = (1 + #null >= observed)
/ (1 + n_permutations)``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from fmrilm_bids.stimulus.decoding import HeldOut, caption_ids, unit_rows

#: Default number of permutations of the p-values.
N_PERMUTATIONS = 1000


def cosine_matrix(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Cosine similarity of every row of ``first`` with every row of ``second``."""
    return unit_rows(first) @ unit_rows(second).T


def permutation_p(statistic: Callable[[np.ndarray], float], n: int,
                  n_permutations: int = N_PERMUTATIONS, seed: int = 0,
                  strata: np.ndarray | None = None) -> tuple[float, float]:
    """Observed statistic and its permutation p-value.

    Parameters
    ----------
    statistic : callable
        ``statistic(order)``: the statistic with the true values reordered by ``order``
        (``np.arange(n)`` is the observed pairing).
    n : int
    n_permutations : int
    seed : int
    strata : ndarray of shape (n,), optional
        Shuffle only within each stratum (e.g. a subject).

    Returns
    -------
    (observed, p_value)
    """
    rng = np.random.default_rng(seed)
    observed = statistic(np.arange(n))
    exceed = 0
    for _ in range(n_permutations):
        if strata is None:
            order = rng.permutation(n)
        else:
            order = np.arange(n)
            for value in np.unique(strata):
                members = np.flatnonzero(strata == value)
                order[members] = rng.permutation(members)
        exceed += statistic(order) >= observed - 1e-12
    return observed, (1 + exceed) / (1 + n_permutations)


def retrieval_ranks(decoded: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Rank (1 = first) of each unit's own caption among the units' distinct captions."""
    ids = caption_ids(targets)
    distinct = np.zeros((ids.max() + 1, targets.shape[1]))
    distinct[ids] = targets
    similarity = cosine_matrix(decoded, distinct)
    mine = similarity[np.arange(len(ids)), ids]
    return 1 + (similarity > mine[:, None]).sum(axis=1)


def retrieval_accuracy(decoded: np.ndarray, targets: np.ndarray, k: int = 1,
                       n_permutations: int = N_PERMUTATIONS, seed: int = 0,
                       strata: np.ndarray | None = None) -> dict[str, float]:
    """Top-``k`` retrieval among the units (own caption among the ``k`` most similar).

    With ``strata`` (e.g. subjects), retrieval is within each stratum.

    Returns
    -------
    dict
        ``value``, ``chance`` (``min(k, m) / m`` averaged over units, ``m`` the distinct
        captions of the unit's stratum), ``p_value``, ``n``.
    """
    strata = np.zeros(len(targets), dtype=int) if strata is None else np.asarray(strata)
    parts = [np.flatnonzero(strata == value) for value in np.unique(strata)]
    similarity, ids = {}, {}
    for index, rows in enumerate(parts):
        ids[index] = caption_ids(targets[rows])
        distinct = np.zeros((ids[index].max() + 1, targets.shape[1]))
        distinct[ids[index]] = targets[rows]
        similarity[index] = cosine_matrix(decoded[rows], distinct)

    def statistic(order: np.ndarray) -> float:
        hits = 0
        for index, rows in enumerate(parts):
            local = np.searchsorted(rows, order[rows])  # order stays within the stratum
            own = ids[index][local]
            mine = similarity[index][np.arange(len(rows)), own]
            hits += int(((similarity[index] > mine[:, None]).sum(axis=1) < k).sum())
        return hits / len(targets)

    value, p_value = permutation_p(statistic, len(targets), n_permutations, seed, strata)
    chance = float(sum(len(rows) * min(k, ids[i].max() + 1) / (ids[i].max() + 1)
                       for i, rows in enumerate(parts)) / len(targets))
    return {"value": value, "chance": chance, "p_value": p_value, "n": len(targets)}


def category_probabilities(decoded: np.ndarray, category_embeddings: np.ndarray,
                           logit_scale: float | np.ndarray) -> np.ndarray:
    """Softmax over categories of ``logit_scale`` (per unit, or one) times the cosines.

    Returns
    -------
    ndarray of shape (n_units, n_categories)
    """
    scale = np.reshape(np.asarray(logit_scale, dtype=float), (-1, 1))
    logits = scale * cosine_matrix(decoded, category_embeddings)
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(axis=1, keepdims=True)


def classification_accuracy(predicted: Sequence[str], truth: Sequence[str],
                            n_choices: np.ndarray | Sequence[int],
                            n_permutations: int = N_PERMUTATIONS, seed: int = 0,
                            strata: np.ndarray | None = None) -> dict[str, float]:
    """Accuracy of predicted labels with its permutation p (true labels shuffled).

    Parameters
    ----------
    predicted, truth : sequence of str
    n_choices : array of int
        Number of labels each unit was classified among (chance is the mean of
        ``1 / n_choices``).
    strata : ndarray, optional
        Shuffle within each stratum (e.g. the held-out category group, or a subject).

    Returns
    -------
    dict
        ``value``, ``chance``, ``p_value``, ``n``.
    """
    predicted = np.asarray(predicted).astype(str)
    truth = np.asarray(truth).astype(str)

    def statistic(order: np.ndarray) -> float:
        return float(np.mean(predicted == truth[order]))

    value, p_value = permutation_p(statistic, len(truth), n_permutations, seed, strata)
    return {"value": value, "chance": float(np.mean(1.0 / np.asarray(n_choices, dtype=float))),
            "p_value": p_value, "n": len(truth)}


def paired_similarity(first: np.ndarray, second: np.ndarray,
                      n_permutations: int = N_PERMUTATIONS, seed: int = 0,
                      strata: np.ndarray | None = None) -> dict[str, float]:
    """Mean cosine of matching rows beside chance (every non-matching pair) and its p.

    Returns
    -------
    dict
        ``value``, ``chance`` (mean cosine of the pairs ``i != j``, within strata),
        ``p_value`` (pairing shuffled), ``n``.
    """
    similarity = cosine_matrix(first, second)
    n = len(similarity)
    strata = np.zeros(n, dtype=int) if strata is None else np.asarray(strata)
    same = strata[:, None] == strata[None, :]
    off = same & ~np.eye(n, dtype=bool)
    chance = float(similarity[off].mean()) if off.any() else float("nan")

    def statistic(order: np.ndarray) -> float:
        return float(similarity[np.arange(n), order].mean())

    value, p_value = permutation_p(statistic, n, n_permutations, seed, strata)
    return {"value": value, "chance": chance, "p_value": p_value, "n": n}


def top_candidates(decoded: np.ndarray, candidates: np.ndarray,
                   k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most similar candidates of each unit.

    Returns
    -------
    indices : ndarray of int, shape (n_units, k)
    scores : ndarray of shape (n_units, k)
        Cosine similarities, best first.
    """
    similarity = cosine_matrix(decoded, candidates)
    k = min(k, similarity.shape[1])
    best = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    return best, np.take_along_axis(similarity, best, axis=1)


def caption_prompt(retrieved: Sequence[str]) -> str:
    """The request a language model answers with one caption (greedy, one sentence)."""
    listed = "\n".join(f"- {text}" for text in retrieved)
    return ("These sentences describe pictures similar to the one a person was looking at:\n"
            f"{listed}\nIn one short sentence, describe the picture the person saw.")


def clean_caption(text: str) -> str:
    """A generated answer cut to its first sentence, without quotes or list marks."""
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    if not lines:
        return ""
    first = re.sub(r"^[-*\d.)\s]+", "", lines[0]).strip()
    match = re.match(r"(.+?[.!?])[\"']?(\s|$)", first)
    return (match.group(1) if match else first).strip().strip("\"'").strip()


def zero_shot_categories(decoded: np.ndarray, folds: np.ndarray, categories: Sequence[str],
                         names: Sequence[str], category_embeddings: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Each unit's category among those left out of training with it (its zero-shot fold).

    Returns
    -------
    predicted : ndarray of str
        ``"n/a"`` for units without a zero-shot fold (``folds == -1``).
    n_choices : ndarray of int
        How many categories each unit was classified among (0 without a fold).
    """
    categories = np.asarray(categories).astype(str)
    names = list(names)
    predicted = np.full(len(categories), "n/a", dtype=object)
    n_choices = np.zeros(len(categories), dtype=int)
    for fold in np.unique(folds[folds >= 0]):
        rows = np.flatnonzero(folds == fold)
        held = sorted(set(categories[rows].tolist()))
        columns = [names.index(c) for c in held]
        similarity = cosine_matrix(decoded[rows], category_embeddings[columns])
        predicted[rows] = np.asarray(held, dtype=object)[similarity.argmax(axis=1)]
        n_choices[rows] = len(held)
    return predicted, n_choices


def retrieve_captions(decoded: np.ndarray, folds: np.ndarray,
                      unit_sentences: Sequence[Sequence[str]],
                      sentence_embeddings: Mapping[str, np.ndarray], pool: Sequence[str],
                      pool_embeddings: np.ndarray, k: int = 5) -> pd.DataFrame:
    """The ``k`` candidates most similar to each unit's decoded embedding.

    A unit's candidates are the shipped pool and the captions of the units of the other
    folds (the units its decoder learnt from): never its own fold's captions, unless they
    were also shown in another fold.

    Parameters
    ----------
    decoded : ndarray of shape (n_units, n_dims)
    folds : ndarray of int, shape (n_units,)
    unit_sentences : sequence of sequence of str
        The caption(s) of each unit (a block's several).
    sentence_embeddings : mapping of str to ndarray
        Embedding of every dataset sentence.
    pool : sequence of str
    pool_embeddings : ndarray of shape (len(pool), n_dims)
    k : int, default=5

    Returns
    -------
    pandas.DataFrame
        ``unit`` (row index), ``rank`` (1 = best), ``caption``, ``score`` (cosine),
        ``source`` (``dataset`` or ``pool``).
    """
    pool = list(pool)
    in_pool = set(pool)
    rows = []
    for fold in np.unique(folds):
        test = np.flatnonzero(folds == fold)
        trained = list(dict.fromkeys(
            s for unit in np.flatnonzero(folds != fold) for s in unit_sentences[unit]
            if s not in in_pool))
        texts = pool + trained
        vectors = np.vstack([pool_embeddings, *[sentence_embeddings[s][None] for s in trained]])
        best, scores = top_candidates(decoded[test], vectors, k)
        for unit, picks, values in zip(test, best, scores, strict=True):
            rows += [{"unit": int(unit), "rank": rank + 1, "caption": texts[i],
                      "score": round(float(v), 4),
                      "source": "pool" if i < len(pool) else "dataset"}
                     for rank, (i, v) in enumerate(zip(picks, values, strict=True))]
    return pd.DataFrame(rows).sort_values(["unit", "rank"], ignore_index=True)


def evaluation_table(held: HeldOut, targets: np.ndarray,
                     categories: Sequence[str] | None = None,
                     category_names: Sequence[str] = (),
                     category_embeddings: np.ndarray | None = None,
                     decoded_captions: np.ndarray | None = None,
                     retrieved_captions: np.ndarray | None = None,
                     strata: np.ndarray | None = None,
                     n_permutations: int = N_PERMUTATIONS, seed: int = 0) -> pd.DataFrame:
    """Every held-out figure beside chance, with its permutation p.

    Parameters
    ----------
    held : HeldOut
        Predictions of one subject, or of several stacked (with ``strata``).
    targets : ndarray of shape (n_units, n_dims)
        Caption embeddings of the units.
    categories : sequence of str, optional
        Category of each unit; with ``category_names`` and their embeddings, the category
        accuracy (decoders that saw every category) and the zero-shot accuracy are added.
    decoded_captions, retrieved_captions : ndarray of shape (n_units, n_dims), optional
        Embeddings of the generated caption and of the top retrieved caption of each unit
        (NaN rows: none); their similarity to the true caption is added.
    strata : ndarray, optional
        Subject of each unit (retrieval within subjects; pairs shuffled within them).
    n_permutations : int
    seed : int

    Returns
    -------
    pandas.DataFrame
        ``metric`` (``retrieval_top1``, ``retrieval_top5``, ``category_accuracy``,
        ``zero_shot_accuracy``, ``caption_similarity``), ``decoder`` (the keys of
        ``held.predicted``, e.g. ``contrastive`` and ``ridge``; for captions ``generated`` or
        ``retrieved``), ``value``, ``chance``, ``p_value``, ``n``.
    """
    strata = np.zeros(len(targets), dtype=int) if strata is None else np.asarray(strata)
    rows = []
    for k in (1, 5):
        for method, decoded in held.predicted.items():
            rows.append({"metric": f"retrieval_top{k}", "decoder": method,
                         **retrieval_accuracy(decoded, targets, k, n_permutations, seed,
                                              strata)})
    if categories is not None and category_embeddings is not None and len(category_names):
        categories = np.asarray(categories).astype(str)
        names = list(category_names)
        for method, decoded in held.predicted.items():
            probabilities = category_probabilities(decoded, category_embeddings,
                                                   held.logit_scale[method])
            predicted = np.asarray(names)[probabilities.argmax(axis=1)]
            rows.append({"metric": "category_accuracy", "decoder": method,
                         **classification_accuracy(predicted, categories,
                                                   np.full(len(categories), len(names)),
                                                   n_permutations, seed, strata)})
        unseen = held.zero_shot_folds >= 0
        for method, decoded in held.zero_shot.items():
            predicted, n_choices = zero_shot_categories(decoded, held.zero_shot_folds,
                                                        categories, names,
                                                        category_embeddings)
            within = strata * (held.zero_shot_folds.max() + 1) + held.zero_shot_folds
            rows.append({"metric": "zero_shot_accuracy", "decoder": method,
                         **classification_accuracy(predicted[unseen], categories[unseen],
                                                   n_choices[unseen], n_permutations, seed,
                                                   within[unseen])})
    for name, captions in (("generated", decoded_captions), ("retrieved", retrieved_captions)):
        if captions is None:
            continue
        present = np.isfinite(captions).all(axis=1)
        if present.sum() >= 2:
            rows.append({"metric": "caption_similarity", "decoder": name,
                         **paired_similarity(captions[present], targets[present],
                                             n_permutations, seed, strata[present])})
    return pd.DataFrame(rows, columns=["metric", "decoder", "value", "chance", "p_value",
                                       "n"])
