"""How good a tokenizer is: reconstruction, codebook use, and fMRI -> text retrieval."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def reconstruction_r2(target: np.ndarray, reconstruction: np.ndarray) -> float:
    """Share of the signal variance the reconstruction explains.

    ``1 - SSE / SST`` over all windows, parcels and samples, with SST taken about each
    parcel's mean (over windows and samples): 0 is no better than a constant per parcel.

    Parameters
    ----------
    target, reconstruction : ndarray of shape (n_windows, n_parcels, patch_length)
    """
    if target.shape != reconstruction.shape:
        raise ValueError(f"Shapes differ: {target.shape} vs {reconstruction.shape}.")
    centred = target - target.mean(axis=(0, 2), keepdims=True)
    return float(1.0 - ((target - reconstruction) ** 2).sum() / (centred**2).sum())


def codebook_usage(token_ids: np.ndarray, codebook_size: int) -> dict[str, float]:
    """Perplexity (``exp`` of the token entropy) and share of codes used at least once."""
    counts = np.bincount(np.asarray(token_ids).ravel(), minlength=codebook_size)
    probabilities = counts[counts > 0] / counts.sum()
    return {"perplexity": float(np.exp(-(probabilities * np.log(probabilities)).sum())),
            "usage": float((counts > 0).mean())}


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.clip(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12, None)


def retrieval_top1(window_features: np.ndarray, window_texts: Sequence[str],
                   text_features: np.ndarray,
                   candidate_texts: Sequence[str]) -> dict[str, float]:
    """fMRI -> text retrieval: is each window's own text the most similar candidate?

    Parameters
    ----------
    window_features : ndarray of shape (n_windows, dim)
        Windows in the shared space.
    window_texts : sequence of str
        The descriptor text of each window.
    text_features : ndarray of shape (n_candidates, dim)
        Candidate texts in the shared space.
    candidate_texts : sequence of str
        Distinct texts, covering every window's text.

    Returns
    -------
    dict
        ``top1`` (share of windows whose most similar candidate, by cosine, is their text)
        and ``chance`` (``1 / n_candidates``).
    """
    index = {text: i for i, text in enumerate(candidate_texts)}
    if len(index) != len(candidate_texts):
        raise ValueError("candidate_texts must be distinct.")
    missing = [t for t in window_texts if t not in index]
    if missing:
        raise ValueError(f"{len(missing)} window texts are not among the candidates.")
    similarity = _unit(np.asarray(window_features)) @ _unit(np.asarray(text_features)).T
    truth = np.array([index[t] for t in window_texts])
    return {"top1": float((similarity.argmax(axis=1) == truth).mean()),
            "chance": 1.0 / len(candidate_texts)}


def token_text_means(token_ids: np.ndarray, text_embeddings: np.ndarray,
                     codebook_size: int) -> np.ndarray:
    """Mean (unit) text embedding of the windows of each token; zeros for unused tokens.

    A token-level map to text fitted on training windows: read a held-out token as the
    average description of the training windows that got it.
    """
    sums = np.zeros((codebook_size, text_embeddings.shape[1]))
    np.add.at(sums, np.asarray(token_ids), _unit(np.asarray(text_embeddings, dtype=float)))
    counts = np.bincount(token_ids, minlength=codebook_size)[:, None]
    return sums / np.clip(counts, 1, None)
