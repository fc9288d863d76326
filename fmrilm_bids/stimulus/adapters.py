"""Cross-subject decoding: one decoder shared in template space, a linear adapter per subject
(See Through Their Minds, Ferrante et al. 2024; MindBridge, Wang et al. 2024).

Every subject's responses sit on the same template voxels. The shared part is:

1. the voxels kept: the most driven on average over the training subjects (the mean of their
   t-statistics, :func:`~fmrilm_bids.stimulus.information.response_t`);
2. a PCA basis of the pooled features of the training subjects (each subject's kept voxels
   z-scored with its own units, patterns normalised:
   :class:`~fmrilm_bids.stimulus.decoding.Preparation`);
3. the contrastive head (:class:`~fmrilm_bids.stimulus.decoding.ContrastiveHead`).

Between the components and the head sits the subject's **adapter**: its own standardisation
and a linear map of the components (a square matrix and a bias), initialised to the identity
and held near it by a penalty ``adapter_penalty * (||A - I||^2 + ||b||^2)``, since template
space already aligns subjects roughly. Training the shared decoder fits the head and the
training subjects' adapters together (:func:`fit_shared`); a new subject fits only its
adapter, the shared part frozen, from a few of its units (:meth:`SharedDecoder.adapt`).
:func:`few_shot_evaluation` compares, on the same held-out units of each subject, its own
decoder trained on all of its training units with the shared decoder (trained without it,
and without the test captions) adapted from a fraction of them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from fmrilm_bids.stimulus.decoding import (
    DEFAULT_CONFIG,
    ContrastiveHead,
    DecoderConfig,
    Preparation,
    fit_decoder,
    head_outputs,
    principal_components,
    train_head,
)
from fmrilm_bids.stimulus.encoding import group_folds
from fmrilm_bids.stimulus.information import response_t, top_fraction
from fmrilm_bids.utils.devices import CPU
from fmrilm_bids.utils.parallel import map_in_processes

LOGGER = logging.getLogger(__name__)

#: Files of a saved shared decoder.
CONFIG_FILE = "decoder.json"
WEIGHTS_FILE = "decoder.safetensors"

@dataclass(frozen=True)
class SubjectResponses:
    """One subject's units on the shared template voxels.

    Attributes
    ----------
    name : str
    responses : ndarray of shape (n_units, n_voxels)
    targets : ndarray of shape (n_units, n_dims)
        Caption embeddings.
    groups : ndarray of shape (n_units,)
        Fold group of each unit: its run, or its block.
    blocks : ndarray of shape (n_units,)
        Block of each unit (an event of an event-related design is its own block).
    """

    name: str
    responses: np.ndarray = field(repr=False)
    targets: np.ndarray = field(repr=False)
    groups: np.ndarray = field(repr=False)
    blocks: np.ndarray = field(repr=False)


class AdaptedHead(nn.Module):
    """Per-subject linear adapters in front of a shared head."""

    def __init__(self, head: ContrastiveHead, n_subjects: int, n_components: int) -> None:
        super().__init__()
        self.head = head
        self.register_buffer("identity", torch.eye(n_components))
        self.weight = nn.Parameter(torch.eye(n_components).repeat(n_subjects, 1, 1))
        self.bias = nn.Parameter(torch.zeros(n_subjects, n_components))

    def forward(self, features: torch.Tensor, subjects: torch.Tensor) -> torch.Tensor:
        adapted = torch.einsum("nj,nkj->nk", features, self.weight[subjects])
        return self.head(adapted + self.bias[subjects])

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.head.logit_scale

    def distance(self) -> torch.Tensor:
        """Mean squared distance of the adapters to the identity."""
        return (((self.weight - self.identity) ** 2).sum((1, 2))
                + (self.bias ** 2).sum(1)).mean()


@dataclass(frozen=True)
class Adapter:
    """One subject's adapter: its own preparation of the shared voxels, the linear map of the
    components, and the mean output over the units it was fitted on."""

    preparation: Preparation = field(repr=False)
    weight: np.ndarray = field(repr=False)
    bias: np.ndarray = field(repr=False)
    output_mean: np.ndarray = field(repr=False)


@dataclass
class SharedDecoder:
    """The shared part (see the module docstring).

    Attributes
    ----------
    voxels : ndarray of int
        Kept voxels (columns of the responses it was fitted on).
    components : ndarray of shape (n_components, n_kept)
    head : ContrastiveHead
    config : DecoderConfig
    device : torch.device
    """

    voxels: np.ndarray = field(repr=False)
    components: np.ndarray = field(repr=False)
    head: ContrastiveHead = field(repr=False)
    config: DecoderConfig = DEFAULT_CONFIG
    device: torch.device = CPU

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])

    @property
    def logit_scale(self) -> float:
        """The head's ``1 / temperature``."""
        return float(self.head.logit_scale.detach())

    def _raw(self, responses: np.ndarray, preparation: Preparation, weight: np.ndarray,
             bias: np.ndarray) -> np.ndarray:
        scores = preparation.transform(responses) @ self.components.T
        return head_outputs(self.head, scores @ weight.T + bias, self.device)

    def identity(self, responses: np.ndarray) -> Adapter:
        """The identity adapter, prepared on ``responses``' units (no training)."""
        preparation = Preparation.fit(responses, self.voxels)
        k = self.n_components
        weight, bias = np.eye(k), np.zeros(k)
        return Adapter(preparation, weight, bias,
                       self._raw(responses, preparation, weight, bias).mean(axis=0))

    def predict(self, responses: np.ndarray, adapter: Adapter) -> np.ndarray:
        """Decoded embeddings through ``adapter``, relative to its units' mean output."""
        return (self._raw(responses, adapter.preparation, adapter.weight, adapter.bias)
                - adapter.output_mean)

    def adapt(self, responses: np.ndarray, targets: np.ndarray, seed: int = 0) -> Adapter:
        """Fit a new subject's adapter (the shared part frozen) on its units."""
        preparation = Preparation.fit(responses, self.voxels)
        scores = preparation.transform(responses) @ self.components.T
        model = AdaptedHead(self.head, 1, self.n_components).to(self.device)
        frozen = [p for p in self.head.parameters() if p.requires_grad]
        for parameter in frozen:
            parameter.requires_grad_(False)
        try:
            train_head(model, scores, targets, self.config, self.device, seed,
                       subjects=np.zeros(len(scores), dtype=int),
                       parameter_groups=[{"params": [model.weight, model.bias],
                                          "weight_decay": 0.0}],
                       penalty=lambda: self.config.adapter_penalty * model.distance())
        finally:
            for parameter in frozen:
                parameter.requires_grad_(True)
            self.head.eval()
        weight = model.weight[0].detach().cpu().numpy().astype(float)
        bias = model.bias[0].detach().cpu().numpy().astype(float)
        return Adapter(preparation, weight, bias,
                       self._raw(responses, preparation, weight, bias).mean(axis=0))

    def save(self, folder: Path, info: dict[str, object] | None = None) -> None:
        """Write the components and the head (safetensors) and the settings (with ``info``,
        what the caller records beside them)."""
        tensors = {"components": torch.as_tensor(self.components, dtype=torch.float32),
                   **{f"head.{k}": v.detach().cpu().contiguous()
                      for k, v in self.head.state_dict().items()}}
        save_file(tensors, str(Path(folder) / WEIGHTS_FILE))
        (Path(folder) / CONFIG_FILE).write_text(json.dumps(
            {**(info or {}), "config": self.config.to_dict(), "n_voxels": len(self.voxels),
             "n_components": self.n_components,
             "n_outputs": int(self.head.linear.out_features)}, indent=1))

    @classmethod
    def load(cls, folder: Path, device: torch.device = CPU) -> SharedDecoder:
        """Read :meth:`save`'s files; the voxels are the saved ones, in their order."""
        info = json.loads((Path(folder) / CONFIG_FILE).read_text())
        config = DecoderConfig.from_dict(info["config"])
        tensors = load_file(str(Path(folder) / WEIGHTS_FILE))
        head = ContrastiveHead(info["n_components"], info["n_outputs"], config.hidden,
                               config.dropout, config.temperature)
        head.load_state_dict({k[len("head."):]: v for k, v in tensors.items()
                              if k.startswith("head.")})
        return cls(voxels=np.arange(info["n_voxels"]),
                   components=tensors["components"].numpy().astype(float),
                   head=head.to(device).eval(), config=config, device=device)


def fit_shared(subjects: list[SubjectResponses], config: DecoderConfig = DEFAULT_CONFIG,
               device: torch.device = CPU, seed: int = 0) -> SharedDecoder:
    """Train the shared decoder and the training subjects' adapters together.

    Parameters
    ----------
    subjects : list of SubjectResponses
        On the same voxels.
    config : DecoderConfig
    device : torch.device
    seed : int

    Returns
    -------
    SharedDecoder
    """
    scores = np.mean([np.nan_to_num(response_t(s.responses), nan=0.0) for s in subjects],
                     axis=0)
    voxels = np.sort(top_fraction(scores, config.voxel_fraction))
    pooled = np.vstack([Preparation.fit(s.responses, voxels).transform(s.responses)
                        for s in subjects])
    components = principal_components(pooled, config.n_components)
    scores = pooled @ components.T
    targets = np.vstack([s.targets for s in subjects])
    index = np.concatenate([np.full(len(s.targets), i) for i, s in enumerate(subjects)])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = ContrastiveHead(scores.shape[1], targets.shape[1], config.hidden,
                               config.dropout, config.temperature)
    model = AdaptedHead(head, len(subjects), scores.shape[1]).to(device)
    train_head(model, scores, targets, config, device, seed, subjects=index,
               parameter_groups=[{"params": list(head.parameters()),
                                  "weight_decay": config.weight_decay},
                                 {"params": [model.weight, model.bias], "weight_decay": 0.0}],
               penalty=lambda: config.adapter_penalty * model.distance())
    LOGGER.info("Shared decoder: %d subjects, %d units, %d voxels, %d components",
                len(subjects), len(targets), len(voxels), scores.shape[1])
    return SharedDecoder(voxels=voxels, components=components, head=head.eval(),
                         config=config, device=device)


def fraction_of_blocks(blocks: np.ndarray, rows: np.ndarray, count: int,
                       rng: np.random.Generator) -> np.ndarray:
    """Whole blocks drawn at random among ``rows`` until they hold ``count`` units or more."""
    chosen: list[int] = []
    for block in rng.permutation(np.unique(blocks[rows])):
        chosen += rows[blocks[rows] == block].tolist()
        if len(chosen) >= count:
            break
    return np.sort(np.asarray(chosen, dtype=int))


def without_captions(subjects: list[SubjectResponses],
                     targets: np.ndarray) -> list[SubjectResponses]:
    """``subjects`` without their units whose caption embedding is one of ``targets``."""
    shown = {tuple(np.round(t, 6)) for t in np.asarray(targets, dtype=float)}
    kept = []
    for subject in subjects:
        keep = np.array([tuple(np.round(t, 6)) not in shown for t in subject.targets])
        kept.append(SubjectResponses(subject.name, subject.responses[keep],
                                     subject.targets[keep], subject.groups[keep],
                                     subject.blocks[keep]))
    return kept


@dataclass(frozen=True)
class FewShotFold:
    """One fold of one subject in :func:`few_shot_evaluation`: its units (indices)."""

    subject: int
    train: np.ndarray = field(repr=False)
    test: np.ndarray = field(repr=False)
    subset: np.ndarray = field(repr=False)
    seed: int = 0


def few_shot_fold(shared: tuple[list[SubjectResponses], DecoderConfig, torch.device],
                  fold: FewShotFold) -> dict[str, np.ndarray]:
    """The four settings' predictions of ``fold``'s test units (see
    :func:`few_shot_evaluation`); ``shared`` is (subjects, config, device)."""
    subjects, config, device = shared
    subject = subjects[fold.subject]
    x, y, blocks = subject.responses, subject.targets, subject.blocks
    train, test, subset = fold.train, fold.test, fold.subset
    others = [s for s in subjects if s.name != subject.name]
    decoder = fit_shared(without_captions(others, y[test]), config, device, fold.seed)
    adapter = decoder.adapt(x[subset], y[subset], fold.seed)
    return {
        "own": fit_decoder(x[train], y[train], blocks[train], "contrastive", config, device,
                           fold.seed).predict(x[test]),
        "adapted": decoder.predict(x[test], adapter),
        "shared": decoder.predict(x[test], decoder.identity(x[subset])),
        "own_fraction": fit_decoder(x[subset], y[subset], blocks[subset], "contrastive",
                                    config, device, fold.seed).predict(x[test])}


def few_shot_evaluation(subjects: list[SubjectResponses], fraction: float = 0.25,
                        n_folds: int = 5, config: DecoderConfig = DEFAULT_CONFIG,
                        device: torch.device = CPU, seed: int = 0, processes: int = 1
                        ) -> dict[str, dict[str, np.ndarray]]:
    """Held-out predictions of each subject by its own decoder and by the adapted shared one.

    Each subject's units are split into folds by group; in each fold, on the same test
    units, whose captions every decoder below has never seen:

    - ``own``: the subject's own contrastive decoder, trained on all its training units;
    - ``adapted``: the shared decoder, trained on the other subjects' units that did not
      show the test captions, with an adapter fitted on ``fraction`` of the subject's units
      (whole blocks drawn from the training units);
    - ``shared``: the same shared decoder without adapter (identity, standardised on the
      same units as the adapter);
    - ``own_fraction``: the subject's own decoder trained on those same few units.

    The folds are independent (each seeded on its own): ``processes`` worker processes fit
    them side by side (:func:`~fmrilm_bids.utils.parallel.map_in_processes`; 1 on a GPU),
    with the same results (up to the rounding of a different thread count).

    Returns
    -------
    dict
        Subject name -> setting -> held-out predictions (n_units x n_dims); ``"subset"``
        holds how many units the adapters saw per fold (one row per unit: its fold's count).
    """
    if len(subjects) < 2:
        raise ValueError("Few-shot evaluation needs two subjects or more")
    rng = np.random.default_rng(seed)
    folds = []
    for index, subject in enumerate(subjects):
        count = max(2, int(np.ceil(fraction * len(subject.targets))))
        for fold, (train, test) in enumerate(group_folds(subject.groups, n_folds)):
            folds.append(FewShotFold(index, train, test,
                                     fraction_of_blocks(subject.blocks, train, count, rng),
                                     seed + 1000 * index + fold))
    LOGGER.info("Few-shot evaluation: %d subjects, %d folds, %d process(es)", len(subjects),
                len(folds), processes)
    predictions = map_in_processes(few_shot_fold, (subjects, config, device), folds,
                                   processes)
    results = {subject.name: {name: np.full(subject.targets.shape, np.nan)
                              for name in ("own", "adapted", "shared", "own_fraction")}
               | {"subset": np.zeros(len(subject.targets))} for subject in subjects}
    for fold, predicted in zip(folds, predictions, strict=True):
        result = results[subjects[fold.subject].name]
        for name, values in predicted.items():
            result[name][fold.test] = values
        result["subset"][fold.test] = len(fold.subset)
    return results


def adapted_predictions(shared: SharedDecoder, responses: np.ndarray, targets: np.ndarray,
                        folds: list[tuple[np.ndarray, np.ndarray]],
                        seed: int = 0) -> np.ndarray:
    """Held-out predictions of a new subject: per fold, an adapter fitted on the training
    units decodes the test units (the shared part never changes).

    Returns
    -------
    ndarray of shape (n_units, n_dims)
        NaN for units no fold tests.
    """
    predicted = np.full((len(responses), shared.head.linear.out_features), np.nan)
    for index, (train, test) in enumerate(folds):
        adapter = shared.adapt(responses[train], targets[train], seed + index)
        predicted[test] = shared.predict(responses[test], adapter)
    return predicted
