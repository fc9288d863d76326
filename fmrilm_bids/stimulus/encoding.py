"""The caption-aligned voxel-wise encoding model (LLM-VEM): text features -> responses.

Ridge regression from each event's text features to its single-trial responses, with the
regularisation chosen per target (voxel or parcel) by cross-validation inside the training
data (himalaya's ``RidgeCV``; with two feature spaces, ``BandedRidgeCV``, which also learns
one scaling per space and target). Accuracy is the Pearson correlation, per target, of the
held-out predictions with the responses, over outer folds that hold out whole groups
(blocks or runs, never splitting one). ``contrastive > 0`` adds LLM-VEM's alignment term:
the ridge solution is refined by gradient descent on the squared error plus a symmetric
InfoNCE loss that makes each event's predicted pattern closest (cosine) to its own measured
pattern among the events of the training data.

Each feature space is centred and scaled, within the training data, to a root mean squared
row norm of 1 (:func:`space_scaling`) before the fit, so that the penalty grid means the same
for every space whatever its units (unit-length sentence embeddings and SmolLM2's mean
hidden states, whose rows are some 30 times longer, alike) and the banded ridge's search
starts the spaces on an equal footing. Only the units change: within a space the geometry,
and so the ridge's isotropic prior, is kept (standardising each column would change it).
The weights are returned in the features' own units.

The noise ceiling (where stimuli repeat) is the highest correlation a perfect model can
reach with single-trial responses: ``sqrt(r_12)``, with ``r_12`` the correlation across
stimuli of two presentations of the same stimulus. The held-out r is scored on the same
single trials, so r / ceiling estimates the correlation of the prediction with the noise-free
response (``benchmarks/bench_encoding.py`` checks that the true responses score 1).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from himalaya.backend import get_backend, set_backend
from himalaya.ridge import BandedRidgeCV, RidgeCV
from sklearn.model_selection import GroupKFold, PredefinedSplit

LOGGER = logging.getLogger(__name__)

#: Fewest stimuli shown at least twice for a noise ceiling.
MIN_REPEATED = 3
#: Candidate ridge penalties, for feature spaces scaled by :func:`space_scaling`. The centred
#: Gram matrix of such features has its nonzero eigenvalues between about 0.1 and the number
#: of samples, so the grid runs from no shrinkage at all (below the smallest eigenvalue:
#: ridge equals least squares on the span of the training stimuli) to predicting the mean.
DEFAULT_ALPHAS = np.logspace(-3, 5, 17)


@dataclass(frozen=True)
class EncodingFit:
    """A fitted encoding model and its held-out evaluation.

    Attributes
    ----------
    spaces : tuple of str
        Feature spaces, in the column order of ``weights``.
    weights : ndarray of shape (n_features, n_targets)
        Effective weights on the centred features (all spaces stacked), fit on all data.
    feature_means : ndarray of shape (n_features,)
    response_means : ndarray of shape (n_targets,)
    scores : ndarray of shape (n_targets,)
        Held-out Pearson r.
    predictions : ndarray of shape (n_samples, n_targets)
        Held-out predictions (each sample predicted by the fold that left it out).
    alphas : ndarray of shape (n_targets,)
        Chosen penalty (one space) or NaN (banded), for the features scaled by
        :func:`space_scaling`.
    space_scales : ndarray of shape (n_spaces, n_targets)
        Learnt scaling ``exp(delta)`` of each space scaled by :func:`space_scaling`
        (banded), ones otherwise.
    n_folds : int
    """

    spaces: tuple[str, ...]
    weights: np.ndarray = field(repr=False)
    feature_means: np.ndarray = field(repr=False)
    response_means: np.ndarray = field(repr=False)
    scores: np.ndarray = field(repr=False)
    predictions: np.ndarray = field(repr=False)
    alphas: np.ndarray = field(repr=False)
    space_scales: np.ndarray = field(repr=False)
    n_folds: int = 0

    def predict(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        """Predicted responses, shape (n_samples, n_targets), for new features."""
        stacked = stack_features(features, self.spaces)
        return (stacked - self.feature_means) @ self.weights + self.response_means


def stack_features(features: Mapping[str, np.ndarray], spaces: Sequence[str]) -> np.ndarray:
    """The feature spaces side by side, float64, in the order of ``spaces``."""
    return np.column_stack([np.asarray(features[s], dtype=float) for s in spaces])


def pearson_columns(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Pearson r of each column pair (NaN where a column is constant)."""
    a = first - first.mean(axis=0)
    b = second - second.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0))


def group_folds(groups: np.ndarray, n_folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Train/test indices that never split a group (``min(n_folds, n_groups)`` folds)."""
    groups = np.asarray(groups)
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise ValueError("Cross-validation needs at least two groups (blocks or runs)")
    splitter = GroupKFold(n_splits=min(n_folds, n_groups))
    return list(splitter.split(np.zeros(len(groups)), groups=groups))


def noise_ceiling(responses: np.ndarray, stimuli: Sequence[str],
                  min_repeated: int = MIN_REPEATED) -> np.ndarray | None:
    """Single-trial noise ceiling per target from repeated stimuli, or None without repeats.

    Parameters
    ----------
    responses : ndarray of shape (n_samples, n_targets)
    stimuli : sequence of str
        Stimulus (caption) of each sample.
    min_repeated : int, default=3
        Fewest stimuli shown at least twice for a ceiling.

    Returns
    -------
    ndarray of shape (n_targets,) or None
        ``sqrt(max(r_12, 0))``, with ``r_12`` the correlation of the first and second
        presentations across the repeated stimuli.
    """
    stimuli = np.asarray(stimuli)
    first, second = [], []
    for stimulus in dict.fromkeys(stimuli.tolist()):
        shown = np.flatnonzero(stimuli == stimulus)
        if len(shown) >= 2:
            first.append(shown[0])
            second.append(shown[1])
    if len(first) < min_repeated:
        return None
    r12 = pearson_columns(responses[first], responses[second])
    return np.sqrt(np.clip(np.nan_to_num(r12), 0.0, 1.0))


def himalaya_backend(device: str | torch.device) -> str:
    """The himalaya backend for a torch device (or its name): ``torch_cuda`` on GPU, else numpy.

    ``device`` is the one resolved at the edge (:func:`fmrilm_bids.utils.devices.resolve_device`).
    """
    return "torch_cuda" if torch.device(device).type == "cuda" else "numpy"


def space_scaling(x: np.ndarray, sizes: Sequence[int]) -> np.ndarray:
    """Per column of ``x``: the factor that gives its feature space a unit RMS row norm.

    Parameters
    ----------
    x : ndarray of shape (n_samples, n_features)
        Centred features, the spaces side by side.
    sizes : sequence of int
        Columns of each space, in order.

    Returns
    -------
    ndarray of shape (n_features,)
        ``1 / sqrt(mean_i ||x_i,space||^2)`` for the columns of each space (1 for a space
        that does not vary).
    """
    factors = []
    for block in np.split(np.asarray(x, dtype=float), np.cumsum(sizes)[:-1], axis=1):
        rms = np.sqrt((block ** 2).sum(axis=1).mean())
        factors.append(np.full(block.shape[1], 1.0 / rms if rms > 0 else 1.0))
    return np.concatenate(factors)


def _inner_cv(groups: np.ndarray, n_folds: int) -> PredefinedSplit:
    test_fold = np.empty(len(groups), dtype=int)
    for fold, (_, test) in enumerate(group_folds(groups, n_folds)):
        test_fold[test] = fold
    return PredefinedSplit(test_fold)


def _ridge(x: np.ndarray, y: np.ndarray, sizes: Sequence[int], groups: np.ndarray,
           alphas: np.ndarray, n_folds: int, n_iter: int,
           seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit centred ``x -> y``; returns (weights, alphas per target, space scales).

    With two spaces the penalty on the weights of space ``i`` is ``1 / scales[i]``
    (himalaya fits ``exp(delta_i / 2) x_i`` with a unit penalty).

    In float32 (four times faster than float64 on CPU, and what GPUs are fast at)."""
    backend = get_backend()
    x, y = np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.float32)
    cv = _inner_cv(groups, n_folds)
    if len(sizes) == 1:
        model = RidgeCV(alphas=alphas, cv=cv)
        model.fit(x, y)
        chosen = np.asarray(backend.to_numpy(model.best_alphas_), dtype=float)
        scales = np.ones((1, y.shape[1]))
    else:
        labels = np.repeat(np.arange(len(sizes)), sizes)
        model = BandedRidgeCV(groups=labels, cv=cv, random_state=seed, solver_params={
            "n_iter": n_iter, "alphas": alphas, "progress_bar": False})
        model.fit(x, y)
        chosen = np.full(y.shape[1], np.nan)
        scales = np.exp(np.asarray(backend.to_numpy(model.deltas_), dtype=float))
    # Effective weights in the feature space: the model's answer to each unit feature.
    unit = np.eye(x.shape[1], dtype=np.float32)
    weights = np.asarray(backend.to_numpy(model.predict(unit)), dtype=float)
    return weights, chosen, scales


def ridge_penalties(alphas: np.ndarray, scales: np.ndarray,
                    sizes: Sequence[int]) -> np.ndarray:
    """The penalty on each weight, shape (n_features, n_targets), of a fitted ridge.

    ``alphas`` per target (one space), or, where they are NaN (banded ridge), ``1 / scale``
    of each weight's space.
    """
    alphas = np.asarray(alphas, dtype=float)
    if np.all(np.isfinite(alphas)):
        return np.broadcast_to(alphas, (int(sum(sizes)), len(alphas))).copy()
    return np.repeat(1.0 / np.asarray(scales, dtype=float), sizes, axis=0)


def contrastive_refine(x: np.ndarray, y: np.ndarray, weights: np.ndarray,
                       penalties: np.ndarray, strength: float, temperature: float = 0.1,
                       steps: int = 200, learning_rate: float = 1e-3,
                       device: str | torch.device = "cpu") -> np.ndarray:
    """LLM-VEM's alignment: refine centred ridge weights with a contrastive (InfoNCE) term.

    Minimises, per target ``t``, the ridge objective ``||x w_t - y_t||^2 + sum_j
    penalty_jt w_jt^2`` (averaged over targets, divided by ``n`` and the response variance)
    plus ``strength`` times an InfoNCE loss, symmetric over the events: each event's
    predicted pattern (row of ``x W``) should be nearest, by cosine, to its own measured
    pattern. With ``strength = 0`` the ridge solution is the minimum and stays put.

    Parameters
    ----------
    x : ndarray of shape (n_samples, n_features)
    y : ndarray of shape (n_samples, n_targets)
    weights : ndarray of shape (n_features, n_targets)
        The ridge solution to start from.
    penalties : ndarray of shape (n_targets,) or (n_features, n_targets)
        Its penalties (:func:`ridge_penalties`).
    strength, temperature : float
        Weight and temperature of the InfoNCE term.
    steps : int, default=200
    learning_rate : float, default=1e-3
        Adam.
    device : str or torch.device, default="cpu"

    Returns
    -------
    ndarray of shape (n_features, n_targets)
    """
    dev = torch.device(device)
    xt = torch.as_tensor(x, dtype=torch.float32, device=dev)
    yt = torch.as_tensor(y, dtype=torch.float32, device=dev)
    penalty = torch.as_tensor(penalties, dtype=torch.float32, device=dev)
    w = torch.tensor(weights, dtype=torch.float32, device=dev, requires_grad=True)
    optimiser = torch.optim.Adam([w], lr=learning_rate)
    targets = torch.arange(len(xt), device=dev)
    scale = yt.var().clamp_min(1e-12)
    for _ in range(steps):
        optimiser.zero_grad()
        predicted = xt @ w
        fit = ((predicted - yt) ** 2).mean() / scale
        ridge = (penalty * (w ** 2)).sum(0).mean() / (len(xt) * scale)
        logits = (torch.nn.functional.normalize(predicted, dim=1)
                  @ torch.nn.functional.normalize(yt, dim=1).T) / temperature
        nce = 0.5 * (torch.nn.functional.cross_entropy(logits, targets)
                     + torch.nn.functional.cross_entropy(logits.T, targets))
        (fit + ridge + strength * nce).backward()
        optimiser.step()
    return w.detach().cpu().numpy().astype(float)


def _fit(x: np.ndarray, y: np.ndarray, sizes: Sequence[int], groups: np.ndarray,
         alphas: np.ndarray, n_folds: int, n_iter: int, seed: int, contrastive: float,
         device: str | torch.device) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ridge (and alignment) on centred data, the spaces scaled by :func:`space_scaling`.

    Returns the weights in the features' own units, the alphas and the space scales.
    """
    scaling = space_scaling(x, sizes)
    scaled = x * scaling
    weights, chosen, scales = _ridge(scaled, y, sizes, groups, alphas, n_folds, n_iter, seed)
    if contrastive > 0:
        weights = contrastive_refine(scaled, y, weights, ridge_penalties(chosen, scales, sizes),
                                     contrastive, device=device)
    return weights * scaling[:, None], chosen, scales


def fit_encoding(features: Mapping[str, np.ndarray], responses: np.ndarray,
                 groups: Sequence[int] | np.ndarray, *, alphas: np.ndarray = DEFAULT_ALPHAS,
                 n_folds: int = 5, contrastive: float = 0.0,
                 device: str | torch.device = "cpu",
                 n_iter: int = 20, seed: int = 0,
                 inner_groups: Sequence[int] | np.ndarray | None = None) -> EncodingFit:
    """Fit and evaluate the encoding model.

    Parameters
    ----------
    features : mapping of str to ndarray of shape (n_samples, n_features_space)
        One or two feature spaces (two: banded ridge).
    responses : ndarray of shape (n_samples, n_targets)
        Single-trial (or single-block) responses.
    groups : array of int, shape (n_samples,)
        Block or run of each sample: folds never split a group.
    inner_groups : array of int, shape (n_samples,), optional
        Groups of the inner (penalty) folds, e.g. blocks when the outer folds are runs
        (needed with two runs: one training run is one group). Default: ``groups``.
    alphas : ndarray
        Candidate penalties.
    n_folds : int, default=5
        Outer (evaluation) folds; the inner (penalty) folds are as many, within training.
    contrastive : float, default=0
        Weight of the contrastive alignment term (0: plain ridge).
    device : str or torch.device, default="cpu"
        A CUDA device runs himalaya on its torch backend on the GPU
        (:func:`himalaya_backend`), and the contrastive refinement there too.
    n_iter : int, default=20
        Random-search iterations of the banded ridge.
    seed : int, default=0

    Returns
    -------
    EncodingFit
    """
    spaces = tuple(features)
    if not 1 <= len(spaces) <= 2:
        raise ValueError(f"One or two feature spaces, not {len(spaces)}")
    x_all = stack_features(features, spaces)
    sizes = [np.asarray(features[s]).shape[1] for s in spaces]
    y_all = np.asarray(responses, dtype=float)
    groups = np.asarray(groups)
    inner = groups if inner_groups is None else np.asarray(inner_groups)
    if len(x_all) != len(y_all) or len(groups) != len(y_all) or len(inner) != len(y_all):
        raise ValueError("features, responses and groups need one row per sample")
    previous = get_backend().name
    set_backend(himalaya_backend(device), on_error="warn")
    try:
        folds = group_folds(groups, n_folds)
        predictions = np.zeros_like(y_all)
        for train, test in folds:
            x_mean, y_mean = x_all[train].mean(0), y_all[train].mean(0)
            weights, _, _ = _fit(x_all[train] - x_mean, y_all[train] - y_mean, sizes,
                                 inner[train], alphas, n_folds, n_iter, seed, contrastive,
                                 device)
            predictions[test] = (x_all[test] - x_mean) @ weights + y_mean
        x_mean, y_mean = x_all.mean(0), y_all.mean(0)
        weights, chosen, scales = _fit(x_all - x_mean, y_all - y_mean, sizes, inner, alphas,
                                       n_folds, n_iter, seed, contrastive, device)
    finally:
        set_backend(previous, on_error="warn")
    scores = pearson_columns(predictions, y_all)
    LOGGER.info("Encoding model (%s): %d samples, %d targets, %d folds, median r = %.3f",
                "+".join(spaces), len(y_all), y_all.shape[1], len(folds),
                float(np.nanmedian(scores)))
    return EncodingFit(spaces=spaces, weights=weights, feature_means=x_mean,
                       response_means=y_mean, scores=scores, predictions=predictions,
                       alphas=chosen, space_scales=scales, n_folds=len(folds))
