"""How good answers and captions are: accuracy, AUROC, BLEU, ROUGE-L, MiniLM similarity.

BLEU and ROUGE-L are small pure functions on lower-cased word tokens (``\\w+`` runs and
single punctuation marks), checked against hand-computed values in the tests.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

from fmrilm_bids.resources.text_encoder import encode_sentences

WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens of ``text``."""
    return WORD.findall(text.lower())


def _ngrams(tokens: list[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def bleu(candidates: Sequence[str], references: Sequence[str | Sequence[str]],
         max_order: int = 4, smooth: bool = True) -> float:
    """Corpus BLEU (Papineni et al., 2002) of ``candidates`` against their references.

    Parameters
    ----------
    candidates : sequence of str
    references : sequence of str or of sequences of str
        One reference (or several) per candidate.
    max_order : int, default=4
        Longest n-gram.
    smooth : bool, default=True
        Add one to the matches and totals of n-grams longer than one (Lin and Och, 2004),
        so that short texts without a matching 4-gram do not all score 0.

    Returns
    -------
    float
        Brevity penalty times the geometric mean of the clipped n-gram precisions, in [0, 1].
    """
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates for {len(references)} references.")
    matches, totals = np.zeros(max_order), np.zeros(max_order)
    candidate_length = reference_length = 0
    for candidate, refs in zip(candidates, references, strict=True):
        refs = [refs] if isinstance(refs, str) else list(refs)
        tokens = words(candidate)
        ref_tokens = [words(ref) for ref in refs]
        candidate_length += len(tokens)
        reference_length += min((abs(len(r) - len(tokens)), len(r)) for r in ref_tokens)[1]
        for n in range(1, max_order + 1):
            counts = _ngrams(tokens, n)
            best: Counter[tuple[str, ...]] = Counter()
            for ref in ref_tokens:
                best |= _ngrams(ref, n)
            matches[n - 1] += sum(min(count, best[gram]) for gram, count in counts.items())
            totals[n - 1] += max(len(tokens) - n + 1, 0)
    if candidate_length == 0:
        return 0.0
    if smooth:
        matches[1:] += 1
        totals[1:] += 1
    if (matches == 0).any():
        return 0.0
    log_precision = float(np.mean(np.log(matches / totals)))
    brevity = 1.0 if candidate_length > reference_length else \
        math.exp(1 - reference_length / candidate_length)
    return brevity * math.exp(log_precision)


def _lcs_length(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for token in a:
        current = [0]
        for j, other in enumerate(b):
            current.append(previous[j] + 1 if token == other else max(previous[j + 1],
                                                                       current[j]))
        previous = current
    return previous[-1]


def rouge_l(candidate: str, reference: str | Sequence[str], beta: float = 1.0) -> float:
    """ROUGE-L F-measure (Lin, 2004): longest common subsequence of words.

    With several references the best score is kept. ``beta`` weighs recall against
    precision (1: their harmonic mean).
    """
    references = [reference] if isinstance(reference, str) else list(reference)
    tokens = words(candidate)
    best = 0.0
    for ref in references:
        ref_tokens = words(ref)
        common = _lcs_length(tokens, ref_tokens)
        if common == 0:
            continue
        precision, recall = common / len(tokens), common / len(ref_tokens)
        best = max(best, (1 + beta**2) * precision * recall / (recall + beta**2 * precision))
    return best


def softmax(log_probs: np.ndarray) -> np.ndarray:
    """Row-wise softmax of log-probabilities (answer probabilities among candidates)."""
    shifted = np.asarray(log_probs, dtype=float)
    shifted = shifted - shifted.max(axis=-1, keepdims=True)
    weights = np.exp(shifted)
    return weights / weights.sum(axis=-1, keepdims=True)


def auroc(labels: Sequence[str], probabilities: np.ndarray,
          classes: Sequence[str]) -> float | None:
    """Area under the ROC curve from answer probabilities.

    Binary tasks: the AUROC of the second class's probability; more classes: the mean
    one-versus-rest AUROC over the classes present and absent in ``labels`` (macro).
    None when no class has both positives and negatives.

    Parameters
    ----------
    labels : sequence of str
        True answers.
    probabilities : ndarray of shape (n, n_classes)
        Columns in the order of ``classes``.
    classes : sequence of str
    """

    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities, dtype=float)
    columns = [1] if len(classes) == 2 else range(len(classes))
    scores = []
    for column in columns:
        positive = labels == classes[column]
        if 0 < positive.sum() < len(labels):
            scores.append(roc_auc_score(positive, probabilities[:, column]))
    return float(np.mean(scores)) if scores else None


def classification_metrics(labels: Sequence[str], probabilities: np.ndarray,
                           classes: Sequence[str]) -> dict[str, float | int | None]:
    """Accuracy of the most probable answer, AUROC, and what chance would score.

    Returns
    -------
    dict
        ``accuracy``, ``auroc`` (None when undefined), ``n``, ``chance_accuracy`` (share of
        the most common true answer: always guessing it scores that).
    """
    labels = list(labels)
    predicted = [classes[i] for i in np.asarray(probabilities).argmax(axis=1)]
    counts = Counter(labels)
    return {"accuracy": float(np.mean([p == t for p, t in zip(predicted, labels,
                                                                strict=True)])),
            "auroc": auroc(labels, probabilities, classes), "n": len(labels),
            "chance_accuracy": max(counts.values()) / len(labels)}


def pairwise_cosines(predicted: Sequence[str], references: Sequence[str],
                     device: str = "cpu") -> np.ndarray:
    """all-MiniLM-L6-v2 cosine of each (generated, true) caption pair."""
    a = encode_sentences(list(predicted), device=device)
    b = encode_sentences(list(references), device=device)
    return (a * b).sum(axis=1)


def subject_bootstrap(values: np.ndarray, subjects: Sequence[str], n_resamples: int = 2000,
                      seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Interval of the mean of per-item ``values`` over held-out subjects.

    Subjects (not items) are resampled with replacement, as the held-out unit: items of
    one participant are not independent.

    Parameters
    ----------
    values : ndarray of shape (n_items,)
        One score per item (1/0 correct, absolute error, cosine).
    subjects : sequence of str
        The participant of each item.
    n_resamples : int, default=2000
    seed : int, default=0
    level : float, default=0.95

    Returns
    -------
    tuple of float
        Lower and upper percentile bounds.
    """
    values = np.asarray(values, dtype=float)
    labels = np.asarray(subjects)
    unique = np.unique(labels)
    sums = np.array([values[labels == s].sum() for s in unique])
    counts = np.array([(labels == s).sum() for s in unique])
    rng = np.random.default_rng(seed)
    draws = rng.integers(len(unique), size=(n_resamples, len(unique)))
    means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def caption_similarity(predicted: Sequence[str], references: Sequence[str],
                       device: str = "cpu") -> dict[str, float]:
    """Similarity of generated captions to the true ones.

    Returns
    -------
    dict
        ``minilm_cosine`` (mean cosine of the all-MiniLM-L6-v2 embeddings of each pair),
        ``bleu`` (corpus BLEU-4, smoothed), ``rouge_l`` (mean ROUGE-L F), ``n``.
    """

    if len(predicted) != len(references) or not predicted:
        raise ValueError(f"Need as many captions as references (and at least one): "
                         f"{len(predicted)} and {len(references)}.")
    return {"minilm_cosine": float(pairwise_cosines(predicted, references, device).mean()),
            "bleu": bleu(predicted, references),
            "rouge_l": float(np.mean([rouge_l(p, r) for p, r in zip(predicted, references,
                                                                    strict=True)])),
            "n": len(predicted)}
