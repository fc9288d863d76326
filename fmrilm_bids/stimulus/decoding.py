"""Decoders: single-trial responses -> the embedding of what was seen (BrainCLIP, MindEye).

A decoder maps a unit's response pattern (one event's or block's LSS betas at the modelled
voxels) to the sentence embedding of its caption (all-MiniLM-L6-v2: 384 numbers, unit
length). Both decoders read the same features, prepared on the training units only
(:class:`Preparation`):

1. the *driven* voxels are kept: the ``voxel_fraction`` with the largest t-statistic of the
   mean response over the training units (label-free, so never circular:
   :func:`~fmrilm_bids.stimulus.information.response_t`);
2. each voxel is z-scored with the training mean and standard deviation;
3. each unit's pattern is centred and scaled over the voxels (pattern normalisation), so a
   unit's overall response level does not dominate its comparison with the others.

- **Ridge** (the baseline): closed-form ridge regression from the features to the
  embedding, solved in its dual form (units are far fewer than voxels); the penalty is
  chosen by inner cross-validation over groups (the mean cosine of predicted and true
  embeddings), from :attr:`DecoderConfig.alphas` times the mean diagonal of the kernel
  (with fewer than ``min_inner_units`` training units, e.g. one run of 12 blocks, that
  choice is noise: the middle candidate is taken).
- **Contrastive head** (the model, MindEye-style): the principal components of the features
  (at most ``n_components``, fitted on the training units) go through a linear map plus a
  small residual MLP, trained with a symmetric InfoNCE loss between decoded and caption
  embeddings (learnt temperature; units that share a caption are all positives of each
  other) plus a cosine term pulling each decoded embedding towards its caption, in torch,
  on the device its caller resolved (:mod:`fmrilm_bids.utils.devices`), seeded.

A decoded embedding is reported relative to the decoder's mean output over its training
units (for ridge: without the training mean of the targets), so what a unit is compared
with is what sets it apart from the units the decoder learnt from; a test unit's category
is then not judged against a training mean from which its own category was partly left
out.

:func:`cross_validate` gives every unit a held-out prediction from folds that never split
a group (block or run): :func:`~fmrilm_bids.stimulus.encoding.group_folds`, or
:func:`category_folds` for categories left out of training (zero-shot).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from fmrilm_bids.config import settings_from_dict
from fmrilm_bids.stimulus.encoding import group_folds
from fmrilm_bids.stimulus.information import response_t, top_fraction
from fmrilm_bids.utils.devices import CPU, autocast
from fmrilm_bids.utils.parallel import map_in_processes

LOGGER = logging.getLogger(__name__)

#: The decoders.
METHODS = ("contrastive", "ridge")
Folds = list[tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class DecoderConfig:
    """Settings of the decoders (recorded in sidecars and model folders).

    Attributes
    ----------
    voxel_fraction : float
        Share of the voxels kept (the most driven on the training units).
    min_inner_units : int
        Fewest training units for choosing the ridge penalty on inner folds (with fewer,
        the middle candidate).
    alphas : tuple of float
        Candidate ridge penalties, relative to the mean diagonal of the kernel.
    inner_folds : int
        Folds of the penalty choice (by group, within the training units).
    n_components : int
        Principal components the contrastive head reads (at most the training units - 1).
    hidden : int
        Width of the head's MLP.
    dropout : float
    steps : int
        Optimiser steps of the head (and of an adapter).
    batch_size : int
        Units per step (all of them when fewer).
    learning_rate, weight_decay : float
        AdamW.
    temperature : float
        Initial InfoNCE temperature (learnt).
    alignment : float
        Weight of the cosine term beside InfoNCE.
    adapter_penalty : float
        Cross-subject adapters: weight of their squared distance to the identity.
    """

    voxel_fraction: float = 0.1
    min_inner_units: int = 30
    alphas: tuple[float, ...] = tuple(float(a) for a in np.logspace(-2, 3, 11))
    inner_folds: int = 5
    n_components: int = 32
    hidden: int = 256
    dropout: float = 0.5
    steps: int = 200
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 0.05
    temperature: float = 0.05
    alignment: float = 0.25
    adapter_penalty: float = 0.05

    def to_dict(self) -> dict[str, object]:
        """JSON-ready settings."""
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, object]) -> DecoderConfig:
        """Read :meth:`to_dict` back (unknown keys are an error)."""
        return settings_from_dict(cls, values, "decoder")


#: The default settings.
DEFAULT_CONFIG = DecoderConfig()


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), float64."""
    vectors = np.asarray(vectors, dtype=float)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def caption_ids(targets: np.ndarray) -> np.ndarray:
    """One integer per distinct target row (units that share a caption share an id)."""
    _, ids = np.unique(np.round(np.asarray(targets, dtype=float), 6), axis=0,
                       return_inverse=True)
    return ids.reshape(-1)


def category_folds(categories: Sequence[str], group_size: int = 2) -> Folds:
    """Folds that leave whole categories out of training (zero-shot evaluation).

    The categories (sorted) are dealt into groups of ``group_size`` (the last group takes
    any remainder); each fold trains on the units of the other groups and tests on its
    group's units. Blocks and runs hold one category per block, so no block is split.

    Raises
    ------
    ValueError
        With fewer than ``2 * group_size`` categories (no group left to train on, or a
        group of one category, whose classification would be trivial).
    """
    categories = np.asarray(categories).astype(str)
    names = sorted(set(categories.tolist()))
    if group_size < 2 or len(names) < 2 * group_size:
        raise ValueError(f"Zero-shot folds need at least {2 * max(group_size, 2)} categories, "
                         f"not {len(names)}")
    n_groups = len(names) // group_size
    groups = [names[i * group_size:(i + 1) * group_size] for i in range(n_groups)]
    groups[-1] += names[n_groups * group_size:]
    folds = []
    for held_out in groups:
        test = np.flatnonzero(np.isin(categories, held_out))
        folds.append((np.flatnonzero(~np.isin(categories, held_out)), test))
    return folds


@dataclass(frozen=True)
class Standardiser:
    """Per-voxel mean and standard deviation of training units."""

    mean: np.ndarray = field(repr=False)
    scale: np.ndarray = field(repr=False)

    @classmethod
    def fit(cls, responses: np.ndarray) -> Standardiser:
        responses = np.asarray(responses, dtype=np.float64)
        scale = responses.std(axis=0)
        return cls(mean=responses.mean(axis=0), scale=np.where(scale > 0, scale, 1.0))

    def transform(self, responses: np.ndarray) -> np.ndarray:
        return (np.asarray(responses, dtype=np.float64) - self.mean) / self.scale


def normalise_patterns(features: np.ndarray) -> np.ndarray:
    """Each row centred over its columns and scaled to a unit mean square."""
    centred = features - features.mean(axis=1, keepdims=True)
    norms = np.sqrt((centred ** 2).mean(axis=1, keepdims=True))
    return centred / np.where(norms > 0, norms, 1.0)


@dataclass(frozen=True)
class Preparation:
    """The features a decoder reads: kept voxels, standardised, patterns normalised."""

    voxels: np.ndarray = field(repr=False)
    standardiser: Standardiser = field(repr=False)

    @classmethod
    def fit(cls, responses: np.ndarray, voxels: np.ndarray) -> Preparation:
        """Standardise ``voxels`` of training ``responses``."""
        responses = np.asarray(responses, dtype=np.float64)
        return cls(voxels=voxels, standardiser=Standardiser.fit(responses[:, voxels]))

    def transform(self, responses: np.ndarray) -> np.ndarray:
        return normalise_patterns(self.standardiser.transform(
            np.asarray(responses)[:, self.voxels]))


def mean_cosine(predicted: np.ndarray, targets: np.ndarray) -> float:
    """Mean cosine similarity of matching rows."""
    return float(np.mean(np.sum(unit_rows(predicted) * unit_rows(targets), axis=1)))


def ridge_penalty(features: np.ndarray, targets: np.ndarray, groups: np.ndarray,
                  config: DecoderConfig) -> float:
    """The penalty (absolute) with the best inner-CV mean cosine of predicted and true
    embeddings (both relative to the inner training units' mean embedding)."""
    kernel = features @ features.T
    scale = float(np.mean(np.diag(kernel))) or 1.0
    alphas = np.asarray(config.alphas) * scale
    if len(np.unique(groups)) < 2 or len(features) < config.min_inner_units:
        return float(np.median(alphas))
    scores = np.zeros(len(alphas))
    for train, test in group_folds(groups, config.inner_folds):
        y_mean = targets[train].mean(0)
        eigenvalues, vectors = np.linalg.eigh(kernel[np.ix_(train, train)])
        projected = vectors.T @ (targets[train] - y_mean)
        cross = kernel[np.ix_(test, train)] @ vectors
        for index, alpha in enumerate(alphas):
            predicted = cross @ (projected / (eigenvalues + alpha)[:, None])
            scores[index] += mean_cosine(predicted, targets[test] - y_mean) * len(test)
    return float(alphas[int(np.argmax(scores))])


class ContrastiveHead(nn.Module):
    """A linear map plus a residual MLP (MindEye-style), with a learnt temperature."""

    def __init__(self, n_inputs: int, n_outputs: int, hidden: int = 512,
                 dropout: float = 0.3, temperature: float = 0.05) -> None:
        super().__init__()
        self.linear = nn.Linear(n_inputs, n_outputs)
        self.mlp = nn.Sequential(nn.Linear(n_inputs, hidden), nn.LayerNorm(hidden), nn.GELU(),
                                 nn.Dropout(dropout), nn.Linear(hidden, n_outputs))
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features) + self.mlp(features)

    @property
    def logit_scale(self) -> torch.Tensor:
        """``1 / temperature``, capped at 100 (as CLIP)."""
        return self.log_scale.exp().clamp(max=100.0)


def contrastive_loss(decoded: torch.Tensor, targets: torch.Tensor, positives: torch.Tensor,
                     logit_scale: torch.Tensor, alignment: float) -> torch.Tensor:
    """Symmetric InfoNCE with soft positives, plus ``alignment`` times the mean cosine gap.

    ``positives`` (n x n) is 1 where two units share a caption (each row sums to its
    count); each row's target distribution spreads evenly over its positives.
    """
    decoded = nn.functional.normalize(decoded.float(), dim=1)
    targets = nn.functional.normalize(targets.float(), dim=1)
    logits = logit_scale * decoded @ targets.T
    soft = positives / positives.sum(dim=1, keepdim=True)
    nce = 0.5 * (-(soft * logits.log_softmax(dim=1)).sum(1).mean()
                 - (soft.T * logits.T.log_softmax(dim=1)).sum(1).mean())
    return nce + alignment * (1.0 - (decoded * targets).sum(1)).mean()


def train_head(head: nn.Module, features: np.ndarray, targets: np.ndarray,
               config: DecoderConfig, device: torch.device = CPU, seed: int = 0,
               subjects: np.ndarray | None = None,
               parameter_groups: list[dict] | None = None,
               penalty: Callable[[], torch.Tensor] | None = None) -> nn.Module:
    """Train ``head`` (in place) on ``features -> targets`` with :func:`contrastive_loss`.

    Parameters
    ----------
    head : torch.nn.Module
        Maps features (and, with ``subjects``, each unit's subject index) to embeddings;
        has a ``logit_scale``.
    features : ndarray of shape (n_units, n_features)
    targets : ndarray of shape (n_units, n_dims)
    config : DecoderConfig
        ``steps``, ``batch_size``, ``learning_rate``, ``weight_decay``, ``alignment``.
    device : torch.device
    seed : int
        Mini-batch order and dropout.
    subjects : ndarray of int, shape (n_units,), optional
        Subject index of each unit, passed to ``head`` beside the features.
    parameter_groups : list of dict, optional
        AdamW parameter groups (default: all of ``head``'s, with ``config.weight_decay``).
    penalty : callable, optional
        ``penalty()`` adds a regularisation term to every step's loss.

    Returns
    -------
    torch.nn.Module
        ``head``, in evaluation mode.
    """
    x = torch.as_tensor(np.asarray(features, dtype=np.float32), device=device)
    y = torch.as_tensor(np.asarray(targets, dtype=np.float32), device=device)
    ids = torch.as_tensor(caption_ids(targets), device=device)
    index = None if subjects is None else torch.as_tensor(np.asarray(subjects), device=device)
    groups = parameter_groups or [{"params": list(head.parameters()),
                                   "weight_decay": config.weight_decay}]
    optimiser = torch.optim.AdamW(groups, lr=config.learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(config.steps, 1))
    generator = torch.Generator().manual_seed(seed)
    batch = min(config.batch_size, len(x))
    head.train()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for _ in range(config.steps):
            rows = torch.randperm(len(x), generator=generator)[:batch].to(device)
            positives = (ids[rows, None] == ids[None, rows]).float()
            with autocast(device):
                decoded = head(x[rows]) if index is None else head(x[rows], index[rows])
            loss = contrastive_loss(decoded, y[rows], positives, head.logit_scale,
                                    config.alignment)
            if penalty is not None:
                loss = loss + penalty()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
    return head.eval()


def principal_components(features: np.ndarray, n_components: int) -> np.ndarray:
    """PCA basis (rows) of centred ``features``, scaled so the scores have unit mean variance.

    At most ``n_units - 1`` components (the rank of centred training data).
    """
    centred = features - features.mean(axis=0)
    _, singular, rows = np.linalg.svd(centred, full_matrices=False)
    keep = max(1, min(n_components, len(features) - 1, rows.shape[0]))
    variance = singular[:keep] ** 2 / max(len(features) - 1, 1)
    return rows[:keep] / math.sqrt(float(variance.mean()) or 1.0)


def head_outputs(head: nn.Module, features: np.ndarray, device: torch.device) -> np.ndarray:
    """``head(features)`` in evaluation mode, as float64 numbers on the CPU."""
    with torch.no_grad(), autocast(device):
        decoded = head(torch.as_tensor(np.asarray(features, dtype=np.float32), device=device))
    return decoded.float().cpu().numpy().astype(float)


@dataclass
class FittedDecoder:
    """A decoder fitted on training units (:func:`fit_decoder`).

    Attributes
    ----------
    method : {"contrastive", "ridge"}
    preparation : Preparation
    output_mean : ndarray of shape (n_dims,)
        Mean output over the training units (subtracted from every prediction).
    ridge_weights : ndarray of shape (n_kept, n_dims) or None
    components : ndarray of shape (n_components, n_kept) or None
        PCA basis the head reads.
    head : ContrastiveHead or None
    device : torch.device
    """

    method: str
    preparation: Preparation = field(repr=False)
    output_mean: np.ndarray = field(repr=False)
    ridge_weights: np.ndarray | None = field(default=None, repr=False)
    components: np.ndarray | None = field(default=None, repr=False)
    head: ContrastiveHead | None = field(default=None, repr=False)
    device: torch.device = CPU

    def raw(self, responses: np.ndarray) -> np.ndarray:
        """The decoder's output before its training mean is subtracted."""
        features = self.preparation.transform(responses)
        if self.method == "ridge":
            return features @ self.ridge_weights
        return head_outputs(self.head, features @ self.components.T, self.device)

    def predict(self, responses: np.ndarray) -> np.ndarray:
        """Decoded embeddings, shape (n_units, n_dims), relative to the training mean."""
        return self.raw(responses) - self.output_mean

    @property
    def logit_scale(self) -> float:
        """The head's ``1 / temperature`` (CLIP's 100 for ridge)."""
        return float(self.head.logit_scale.detach()) if self.head is not None else 100.0


def fit_decoder(responses: np.ndarray, targets: np.ndarray, groups: np.ndarray,
                method: str = "contrastive", config: DecoderConfig = DEFAULT_CONFIG,
                device: torch.device = CPU, seed: int = 0) -> FittedDecoder:
    """Fit a decoder on training units (see the module docstring).

    Parameters
    ----------
    responses : ndarray of shape (n_units, n_voxels)
    targets : ndarray of shape (n_units, n_dims)
        Caption embeddings (unit length).
    groups : ndarray of shape (n_units,)
        Block or run of each unit (inner folds never split one).
    method : {"contrastive", "ridge"}
    config : DecoderConfig
    device : torch.device
        Where the head trains.
    seed : int

    Returns
    -------
    FittedDecoder
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    responses = np.asarray(responses, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    preparation = Preparation.fit(responses, np.sort(top_fraction(response_t(responses),
                                                                  config.voxel_fraction)))
    features = preparation.transform(responses)
    if method == "ridge":
        alpha = ridge_penalty(features, targets, np.asarray(groups), config)
        dual = np.linalg.solve(features @ features.T + alpha * np.eye(len(features)),
                               targets - targets.mean(axis=0))
        decoder = FittedDecoder(method, preparation, np.zeros(targets.shape[1]),
                                ridge_weights=features.T @ dual, device=device)
    else:
        components = principal_components(features, config.n_components)
        scores = features @ components.T
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            head = ContrastiveHead(scores.shape[1], targets.shape[1], config.hidden,
                                   config.dropout, config.temperature).to(device)
        train_head(head, scores, targets, config, device, seed)
        decoder = FittedDecoder(method, preparation, np.zeros(targets.shape[1]),
                                components=components, head=head, device=device)
    decoder.output_mean = decoder.raw(responses).mean(axis=0)
    return decoder


def fold_predictions(data: tuple[np.ndarray, np.ndarray, np.ndarray, DecoderConfig,
                                  torch.device],
                     job: tuple[str, np.ndarray, np.ndarray, int]) -> tuple[np.ndarray, float]:
    """One fold: the ``method`` decoder fitted on the ``train`` units (seeded ``seed``), its
    predictions of the ``test`` units and its ``1 / temperature``.

    ``data`` is (responses, targets, groups, config, device); ``job`` is (method, train,
    test, seed).
    """
    responses, targets, groups, config, device = data
    method, train, test, seed = job
    decoder = fit_decoder(responses[train], targets[train], groups[train], method, config,
                          device, seed)
    return decoder.predict(responses[test]), decoder.logit_scale


def cross_validate_many(responses: np.ndarray, targets: np.ndarray, groups: np.ndarray,
                        fold_sets: Sequence[tuple[str, Folds]],
                        config: DecoderConfig = DEFAULT_CONFIG, device: torch.device = CPU,
                        seed: int = 0, processes: int = 1
                        ) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`cross_validate` of each (method, folds) of ``fold_sets``, their fits side by
    side on ``processes`` worker processes
    (:func:`~fmrilm_bids.utils.parallel.map_in_processes`; the fold of index ``i`` seeded
    ``seed + i`` in every set, as one after another)."""
    responses = np.asarray(responses, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    jobs = [(method, train, test, seed + index) for method, folds in fold_sets
            for index, (train, test) in enumerate(folds)]
    outcomes = iter(map_in_processes(fold_predictions, (responses, targets, np.asarray(groups),
                                                        config, device), jobs, processes))
    results = []
    for _, folds in fold_sets:
        predicted = np.full(targets.shape, np.nan)
        scale = np.full(len(targets), np.nan)
        for _, test in folds:
            predicted[test], scale[test] = next(outcomes)
        results.append((predicted, scale))
    return results


def cross_validate(responses: np.ndarray, targets: np.ndarray, groups: np.ndarray,
                   folds: Folds, method: str = "contrastive",
                   config: DecoderConfig = DEFAULT_CONFIG, device: torch.device = CPU,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Held-out decoded embeddings: each fold's test units from a decoder fitted on the rest.

    ``groups`` are the groups of the decoders' inner folds (the penalty choice).

    Returns
    -------
    predicted : ndarray of shape (n_units, n_dims)
        NaN for units no fold tests.
    logit_scale : ndarray of shape (n_units,)
        ``1 / temperature`` of the decoder that predicted each unit
        (:attr:`FittedDecoder.logit_scale`).
    """
    return cross_validate_many(responses, targets, groups, [(method, folds)], config, device,
                               seed)[0]


@dataclass(frozen=True)
class HeldOut:
    """Held-out decoded embeddings of one subject's units (:func:`held_out`).

    Attributes
    ----------
    predicted : dict of str to ndarray
        Decoder (:data:`METHODS`) -> (n_units, n_dims), from folds by group.
    logit_scale : dict of str to ndarray
        Decoder -> each unit's decoder's ``1 / temperature``.
    folds : ndarray of int
        Fold that held each unit out.
    zero_shot : dict of str to ndarray
        Decoder -> predictions from decoders trained without the unit's category (empty
        with fewer than four categories).
    zero_shot_folds : ndarray of int
        Category fold of each unit (-1 without zero-shot folds).
    """

    predicted: dict[str, np.ndarray] = field(repr=False)
    logit_scale: dict[str, np.ndarray] = field(repr=False)
    folds: np.ndarray = field(repr=False)
    zero_shot: dict[str, np.ndarray] = field(repr=False)
    zero_shot_folds: np.ndarray = field(repr=False)


#: Fewest categories for zero-shot folds (two groups of two).
MIN_ZERO_SHOT_CATEGORIES = 4


def held_out(responses: np.ndarray, targets: np.ndarray, groups: np.ndarray,
             categories: Sequence[str] | None = None, n_folds: int = 5,
             config: DecoderConfig = DEFAULT_CONFIG, device: torch.device = CPU,
             seed: int = 0, blocks: np.ndarray | None = None, processes: int = 1) -> HeldOut:
    """Every decoder's held-out predictions of a subject's units (folds by group), and the
    zero-shot ones (:func:`category_folds`) when there are four categories or more.

    Parameters
    ----------
    responses : ndarray of shape (n_units, n_voxels)
    targets : ndarray of shape (n_units, n_dims)
    groups : ndarray of shape (n_units,)
        Block or run of each unit; folds never split one.
    categories : sequence of str, optional
        Category (``trial_type``) of each unit.
    n_folds : int, default=5
    config : DecoderConfig
    device : torch.device
    seed : int
    blocks : ndarray of shape (n_units,), optional
        Groups of the decoders' inner folds (e.g. blocks when the folds are runs: with two
        runs, one training run is one group). Default: ``groups``.
    processes : int, default=1
        Worker processes fitting the folds side by side (:func:`cross_validate_many`).
    """
    groups = np.asarray(groups)
    inner = groups if blocks is None else np.asarray(blocks)
    folds = group_folds(groups, n_folds)
    fold_of = np.zeros(len(groups), dtype=int)
    for index, (_, test) in enumerate(folds):
        fold_of[test] = index
    zero_shot_of = np.full(len(groups), -1)
    unseen: Folds = []
    if categories is not None and len(set(categories)) >= MIN_ZERO_SHOT_CATEGORIES:
        unseen = category_folds(categories)
        for index, (_, test) in enumerate(unseen):
            zero_shot_of[test] = index
    fold_sets = [(method, folds) for method in METHODS]
    fold_sets += [(method, unseen) for method in METHODS] if unseen else []
    results = cross_validate_many(responses, targets, inner, fold_sets, config, device, seed,
                                  processes)
    return HeldOut(predicted={m: results[i][0] for i, m in enumerate(METHODS)},
                   logit_scale={m: results[i][1] for i, m in enumerate(METHODS)},
                   folds=fold_of, zero_shot={m: results[len(METHODS) + i][0]
                                             for i, m in enumerate(METHODS) if unseen},
                   zero_shot_folds=zero_shot_of)


def stack_held_out(parts: Sequence[HeldOut]) -> HeldOut:
    """Several subjects' held-out predictions as one, in order (folds and zero-shot folds
    numbered on; the zero-shot predictions kept only if every subject has them)."""
    offsets = np.cumsum([0, *[int(p.folds.max()) + 1 for p in parts[:-1]]])
    zero_shot = all(p.zero_shot for p in parts)
    unseen = np.cumsum([0, *[int(p.zero_shot_folds.max()) + 1 for p in parts[:-1]]])
    methods = list(parts[0].predicted)
    return HeldOut(
        predicted={m: np.vstack([p.predicted[m] for p in parts]) for m in methods},
        logit_scale={m: np.concatenate([p.logit_scale[m] for p in parts]) for m in methods},
        folds=np.concatenate([p.folds + o for p, o in zip(parts, offsets, strict=True)]),
        zero_shot={m: np.vstack([p.zero_shot[m] for p in parts]) for m in parts[0].zero_shot}
        if zero_shot else {},
        zero_shot_folds=np.concatenate([p.zero_shot_folds + o if zero_shot
                                        else np.full(len(p.folds), -1)
                                        for p, o in zip(parts, unseen, strict=True)]))
