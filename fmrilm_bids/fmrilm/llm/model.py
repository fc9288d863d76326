"""fMRI-LM: a causal language model that reads fMRI tokens (Stages 2 and 3).

:class:`FmriLM` wraps a backbone (:func:`~.backbone.load_backbone`) whose vocabulary was
extended with the fMRI tokens (:func:`~.vocabulary.extend_vocabulary`). What trains:

* **LoRA** (default; ``peft``): low-rank adapters on ``lora_target_modules`` of every
  layer, and the **new embedding rows only**, through peft's trainable tokens
  (``LoraConfig.trainable_token_indices``): a small ``(K + 2, hidden)`` parameter that is
  written over the frozen embedding matrix in the forward pass. With tied embeddings
  (SmolLM2) the output layer reads the same rows; an untied output layer gets its own
  trainable rows. The original vocabulary never changes, and only these rows are saved.
* **Full fine-tuning** (``full_finetune=True``): every weight trains; the whole model is
  saved.

* **The projector** (``fmri_inputs="continuous"``, the default,
  :class:`FeatureProjector`): each fMRI token's continuous Stage-1 features
  (:meth:`~.runs.LMRun.segment_features`), standardised with the training tokens' means and
  standard deviations, then a linear map to the LLM's embedding space, plus a map of the
  token's own parcel group (``group_projection``); its output replaces
  the token's embedding at every fMRI position (:meth:`FmriLM.embed`), as in the reference
  design, where the LLM reads the encoder's features and the discrete codes are only the
  targets of its fMRI head (the output rows of the fMRI tokens). It starts as Stage 1's
  alignment projection (``to_llm``, scaled to the backbone's embedding norms), so the first
  step already reads the features in the LLM's text space; the group maps start from a
  ridge regression to the LLM's own embedding of the answers about each training window
  and run segment (:meth:`FmriLM.align_projector`). With ``segment_summary`` the mean
  of a segment's group terms, the read-out that the alignment fits, is also added at the
  segment's closing ``</fmri>``: one position that holds the whole segment in the LLM's
  words, however many tokens the segment has; with ``connectivity_summary`` the summary
  of a segment of more than one window (a run segment) is instead its groups'
  connectivity through a map of its own (``pair_weight``, aligned to the answers about
  run segments), the second-order read-out that run-level questions (patients vs
  controls) need. With
  ``fmri_inputs="discrete"`` (the ablation) the model reads the tokens' own embedding rows.

The loss (:meth:`FmriLM.forward`) runs the decoder once and applies the output layer only
where labels are set, so prompt tokens cost no vocabulary projection; packed rows (several
examples, positions restarting at 0) are read with block-diagonal attention.

A saved model (:meth:`FmriLM.save_pretrained`) is a folder: ``adapter_model.safetensors`` +
``adapter_config.json`` (LoRA and the new rows; or ``model.safetensors`` + ``config.json``
for full fine-tuning), ``projector.safetensors``, ``fmrilm.json`` (this config, the
vocabulary ids, the backbone, the tuned questions), the extended tokenizer, and a model
card ``README.md``.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from fmrilm_bids.fmrilm.card import render_card
from fmrilm_bids.fmrilm.llm.backbone import DEFAULT_BACKBONE, load_backbone
from fmrilm_bids.fmrilm.llm.config import FmriLMConfig
from fmrilm_bids.fmrilm.llm.examples import IGNORE_INDEX
from fmrilm_bids.fmrilm.llm.prompts import Formatter
from fmrilm_bids.fmrilm.llm.tasks import TaskSpec
from fmrilm_bids.fmrilm.llm.vocabulary import FmriVocabulary, extend_vocabulary
from fmrilm_bids.utils.devices import CPU
from fmrilm_bids.utils.files import atomic_write_text, publish_directory
from fmrilm_bids.utils.versions import software_versions

if TYPE_CHECKING:
    from transformers import Cache

METADATA_FILE = "fmrilm.json"
PROJECTOR_FILE = "projector.safetensors"
#: Packages whose versions the model card records.
LM_SOFTWARE = ("fmrilm-bids", "torch", "transformers", "peft", "numpy")
MODEL_CARD = "README.md"
#: Ridge penalties :meth:`FmriLM.align_projector` chooses from (relative to the mean
#: squared singular value of its design).
RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-3, 3, 13))


def ridge_gcv(design: torch.Tensor, targets: torch.Tensor, alphas: Sequence[float],
              ) -> tuple[torch.Tensor, float]:
    """Ridge regression of ``targets`` ``(n, out)`` on ``design`` ``(n, features)`` (no
    intercept), the penalty chosen by generalised cross-validation among ``alphas``
    (relative to the mean squared singular value of ``design``).

    Returns
    -------
    coefficients : Tensor of shape (features, out)
    alpha : float
        The chosen relative penalty.
    """
    u, singular, vt = torch.linalg.svd(design, full_matrices=False)
    projected = u.T @ targets
    best = None
    for alpha in alphas:
        penalty = alpha * float(singular.square().mean())
        shrink = singular.square() / (singular.square() + penalty)
        residual = (targets - u @ (shrink[:, None] * projected)).square().sum()
        gcv = float(residual) / max(len(targets) - float(shrink.sum()), 1e-9) ** 2
        if best is None or gcv < best[0]:
            best = (gcv, alpha, penalty)
    _, alpha, penalty = best
    return vt.T @ ((singular / (singular.square() + penalty))[:, None] * projected), alpha


def _module_name(model: nn.Module, module: nn.Module) -> str:
    return next(name for name, candidate in model.named_modules() if candidate is module)


def lora_config(config: FmriLMConfig, backbone: nn.Module, vocab: FmriVocabulary) -> LoraConfig:
    """The peft ``LoraConfig``: adapters, plus the new embedding rows as trainable tokens."""

    input_embeddings = backbone.get_input_embeddings()
    output = backbone.get_output_embeddings()
    rows: list[int] | dict[str, list[int]] = vocab.new_ids
    if output is not None and output.weight is not input_embeddings.weight:
        rows = {_module_name(backbone, input_embeddings).split(".")[-1]: vocab.new_ids,
                _module_name(backbone, output).split(".")[-1]: vocab.new_ids}
    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                      lora_dropout=config.lora_dropout,
                      target_modules=list(config.lora_target_modules),
                      trainable_token_indices=rows, task_type="CAUSAL_LM")


@contextlib.contextmanager
def _quiet_peft() -> Iterator[None]:
    """peft 0.21 asks transformers 5 a deprecated question on every wrap; keep logs clean."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*",
                                category=FutureWarning)
        yield


class FeatureProjector(nn.Module):
    """Continuous fMRI features -> embedding: standardise each feature, then a linear map.

    The means and standard deviations are fixed buffers (:meth:`standardise`, from the
    training tokens; saved with the weights), so every feature reaches the linear map at
    unit scale and centred, as the token-feature baseline reads them (``StandardScaler``).
    Adam moves each weight by about the learning rate whatever its input's scale, so a
    feature's scale sets how fast the model learns to read it; the raw features are small
    (the latent's coordinates, the group time courses and the group one-hot vary by about
    0.2 on the benchmark cohort). Read raw, a short Stage 3 learned to read them far less
    (README, "How well the language outputs read the brain today").

    With ``groups``, each token's standardised features also go through its own parcel
    group's map (``group_weight``, ``(groups, in_features - groups, out_features)``, zero at
    the start; the group is read from the one-hot that ends the features). A shared map
    alone gives the model, summed over a window's tokens, a linear function of the
    groups' *mean* features: on the benchmark cohort a logistic regression on that mean
    reads the held-out window condition at 0.53, one on every group's features side by
    side (what the group maps sum to) at 0.69.

    Parameters
    ----------
    in_features : int
        Width of a token's features (the group one-hot last).
    out_features : int
        The backbone's hidden size.
    groups : int, default=0
        Parcel groups (tokens per window) with a map of their own; 0: the shared map only.
    pairs : bool, default=False
        With groups, whose features hold their connectivity rows (just before the
        one-hot): a map of the segment's connectivity, each pair of groups once
        (``pair_weight``, ``(groups (groups - 1) / 2, out_features)``, zero at the start;
        :meth:`pair_terms`), its inputs standardised with ``pair_mean`` and ``pair_std``.
    """

    def __init__(self, in_features: int, out_features: int, groups: int = 0,
                 pairs: bool = False) -> None:
        super().__init__()
        if not 0 <= groups < in_features or (pairs and not 1 < groups <= in_features / 2):
            raise ValueError(f"A projector of {in_features} features (the last of them the "
                             f"group one-hot) cannot have {groups} groups"
                             f"{' and their connectivity' if pairs else ''}.")
        self.groups = groups
        self.register_buffer("mean", torch.zeros(in_features))
        self.register_buffer("std", torch.ones(in_features))
        self.linear = nn.Linear(in_features, out_features)
        self.group_weight = (nn.Parameter(torch.zeros(groups, in_features - groups,
                                                      out_features)) if groups else None)
        n_pairs = groups * (groups - 1) // 2
        # None without pairs: absent from the saved weights, as in models saved before them.
        self.register_buffer("pair_mean", torch.zeros(n_pairs) if pairs else None)
        self.register_buffer("pair_std", torch.ones(n_pairs) if pairs else None)
        self.pair_weight = nn.Parameter(torch.zeros(n_pairs, out_features)) if pairs else None

    @property
    def in_features(self) -> int:
        return self.linear.in_features

    @property
    def out_features(self) -> int:
        return self.linear.out_features

    @torch.no_grad()
    def standardise(self, mean: torch.Tensor | np.ndarray,
                    std: torch.Tensor | np.ndarray) -> None:
        """Set the features' means and standard deviations (:func:`~.runs.feature_moments`
        of the training runs; a constant feature keeps a standard deviation of 1)."""
        mean, std = (torch.as_tensor(np.asarray(v, dtype=np.float32)) for v in (mean, std))
        if mean.shape != (self.in_features,) or std.shape != (self.in_features,):
            raise ValueError(f"The projector reads {self.in_features} features; got means "
                             f"of shape {tuple(mean.shape)} and standard deviations of shape "
                             f"{tuple(std.shape)}.")
        self.mean.copy_(mean)
        self.std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    def standardised(self, features: torch.Tensor) -> torch.Tensor:
        """``features`` centred and scaled with the stored means and standard deviations."""
        return (features - self.mean) / self.std

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        standard = self.standardised(features)
        projected = self.linear(standard)
        if self.group_weight is None:
            return projected
        return projected + self._by_group(features, standard)

    def group_terms(self, features: torch.Tensor) -> torch.Tensor:
        """Each token's standardised features through its own group's map ``(..., out)``
        (the group read from the one-hot that ends ``features``)."""
        return self._by_group(features, self.standardised(features))

    def _by_group(self, features: torch.Tensor, standard: torch.Tensor) -> torch.Tensor:
        k = self.groups
        return torch.einsum("...g,...f,gfo->...o", features[..., -k:], standard[..., :-k],
                            self.group_weight)

    def pair_inputs(self, window: torch.Tensor) -> torch.Tensor:
        """The connectivity of each segment, each pair of groups once: the upper triangle
        of the connectivity rows that the tokens of one of its windows ``(..., groups,
        in_features)`` carry (every window of a segment carries the same), unstandardised
        ``(..., pairs)``."""
        k = self.groups
        upper = torch.triu_indices(k, k, offset=1, device=window.device)
        return window[..., -2 * k:-k][..., upper[0], upper[1]]

    def pair_terms(self, window: torch.Tensor) -> torch.Tensor:
        """:meth:`pair_inputs`, standardised, through ``pair_weight`` ``(..., out)``."""
        standard = (self.pair_inputs(window) - self.pair_mean) / self.pair_std
        return standard.to(self.pair_weight.dtype) @ self.pair_weight


class FmriLM(nn.Module):
    """A backbone with fMRI tokens, adapters and a prompt format (module docstring).

    Build one with :meth:`build` (new) or :meth:`from_pretrained` (saved).

    Attributes
    ----------
    model : transformers.PreTrainedModel or peft.PeftModel
    tokenizer : transformers.PreTrainedTokenizerBase
        Extended with the fMRI tokens.
    vocab : FmriVocabulary
    config : FmriLMConfig
    formatter : Formatter
    backbone : str
        Where the backbone came from (:func:`~.backbone.backbone_source`).
    tasks : list of TaskSpec
        Questions it was tuned on (saved with it).
    card : dict
        Sections of the model card (data used, metrics, training settings).
    projector : FeatureProjector or None
        Features -> embedding at the fMRI positions (continuous inputs).
    """

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, vocab: FmriVocabulary,
                 config: FmriLMConfig, backbone: str) -> None:
        super().__init__()
        self.model = model
        self.tokenizer, self.vocab, self.config, self.backbone = tokenizer, vocab, config, \
            backbone
        self.formatter = Formatter(tokenizer, vocab, config.system_prompt,
                                   config.fmri_inputs == "continuous"
                                   and config.connectivity_inputs)
        self.tasks: list[TaskSpec] = []
        self.card: dict[str, dict[str, object]] = {}
        hidden = model.get_input_embeddings().weight.shape[1]
        if config.fmri_inputs == "continuous" and config.feature_dim < 1:
            raise ValueError("A model reading continuous fMRI inputs needs feature_dim (the "
                             "width of LMRun.segment_features); or use fmri_inputs='discrete'.")
        groups = config.tokens_per_window if config.group_projection else 0
        pairs = groups > 1 and config.connectivity_inputs and config.segment_summary and \
            config.connectivity_summary
        self.projector = (FeatureProjector(config.feature_dim, hidden, groups, pairs)
                          if config.fmri_inputs == "continuous" else None)
        if self.projector is not None:
            self.projector.to(model.get_input_embeddings().weight.device)

    @classmethod
    def build(cls, tokenizer: PreTrainedTokenizerBase, backbone_model: nn.Module,
              config: FmriLMConfig,
              token_embeddings: torch.Tensor | np.ndarray | None = None,
              backbone: str = DEFAULT_BACKBONE,
              projection: tuple[torch.Tensor, torch.Tensor] | None = None,
              moments: tuple[np.ndarray, np.ndarray] | None = None) -> FmriLM:
        """Extend the vocabulary of a loaded backbone and add what trains.

        Parameters
        ----------
        tokenizer, backbone_model
            From :func:`~.backbone.load_backbone` (changed in place).
        config : FmriLMConfig
        token_embeddings : Tensor or ndarray of shape (codebook_size, hidden), optional
            Stage-1 ``token_embeddings_for_llm()``: initial fMRI-token embeddings.
        backbone : str
            Recorded source of the backbone (reloaded by :meth:`from_pretrained`).
        projection : (Tensor (hidden, code_dim), Tensor (hidden,)), optional
            Stage-1 ``llm_projection()``: the initial projector, read from the first
            ``code_dim`` features (the latents), scaled as the token embeddings are
            (:func:`~.vocabulary.extend_vocabulary`); the other features start at 0.
            Without it the projector starts at random (seeded).
        moments : (ndarray (feature_dim,), ndarray (feature_dim,)), optional
            Means and standard deviations of the training tokens' features
            (:func:`~.runs.feature_moments`), with which the projector standardises them
            (without them it reads the features as they are).
        """

        torch.manual_seed(config.seed)
        reference = backbone_model.get_input_embeddings().weight.detach().float()
        vocab = extend_vocabulary(tokenizer, backbone_model, config.codebook_size,
                                  token_embeddings, config.seed)
        if config.full_finetune:
            model = backbone_model.requires_grad_(True)
        else:
            with _quiet_peft():
                model = get_peft_model(backbone_model, lora_config(config, backbone_model,
                                                                   vocab))
        lm = cls(model, tokenizer, vocab, config, backbone)
        if lm.projector is not None and moments is not None:
            lm.projector.standardise(*moments)
        if lm.projector is not None and projection is not None:
            lm.initialise_projector(*projection, reference[:vocab.base_vocab_size],
                                    token_embeddings)
        return lm.eval()

    @torch.no_grad()
    def initialise_projector(self, weight: torch.Tensor, bias: torch.Tensor,
                             reference: torch.Tensor,
                             token_embeddings: torch.Tensor | np.ndarray | None) -> None:
        """Start the projector as Stage 1's ``to_llm`` (see :meth:`build`), scaled so that
        the codebook's images have the mean norm of the backbone's embedding rows
        ``reference``, on the projector's standardised features (the same map of the raw
        latents)."""
        weight, bias = torch.as_tensor(weight).float(), torch.as_tensor(bias).float()
        if weight.shape[0] != self.projector.out_features or \
                weight.shape[1] > self.projector.in_features:
            raise ValueError(f"The Stage-1 projection is {tuple(weight.shape)}; this model "
                             f"reads {self.projector.in_features} features into "
                             f"{self.projector.out_features} dimensions.")
        scale = 1.0
        if token_embeddings is not None:
            rows = torch.as_tensor(np.asarray(token_embeddings)).float()
            scale = float(reference.norm(dim=1).mean() / rows.norm(dim=1).mean().clamp(
                min=1e-12))
        latent = slice(0, weight.shape[1])
        linear, mean, std = self.projector.linear, self.projector.mean, self.projector.std
        linear.weight.zero_()
        linear.weight[:, latent] = weight * std[latent] * scale
        linear.bias.copy_((bias + weight @ mean[latent]) * scale)

    @torch.no_grad()
    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """Each text's mean input-embedding row ``(n, hidden)``, float32 (the LLM's own
        words, no special tokens)."""
        embedding = self.model.get_input_embeddings()
        device = embedding.weight.device
        return torch.stack([embedding(torch.tensor(
            self.tokenizer(text, add_special_tokens=False)["input_ids"] or
            [self.tokenizer.eos_token_id], device=device)).float().mean(dim=0)
            for text in texts])

    @torch.no_grad()
    def align_projector(self, segments: Sequence[np.ndarray], texts: Sequence[str],
                        alphas: Sequence[float] = RIDGE_ALPHAS) -> float:
        """Start the group maps so that a segment's tokens read, averaged, as its text.

        A ridge regression (penalty chosen by generalised cross-validation) from the mean
        over a segment's tokens of their standardised features, each group's in its own
        slot, to the LLM's embedding of the segment's text (:meth:`text_embeddings`, less
        their mean, scaled to the mean norm of the embedding rows) sets ``group_weight``:
        the mean over a segment's fMRI positions of the group terms is the predicted text,
        so the first Stage-2 step already reads the segment in the LLM's own words (a
        closed-form version of the projector-alignment stage of vision-language models).
        With a connectivity map (``connectivity_summary``), a second ridge regression from
        the standardised connectivity of the segments of more than one window to their
        texts' embeddings (less their own mean) sets ``pair_weight`` (and ``pair_mean``,
        ``pair_std`` from those segments): a run segment's summary.

        Parameters
        ----------
        segments : sequence of ndarray of shape (n_tokens, feature_dim)
            Features of each training segment's tokens (:meth:`~.runs.LMRun.
            segment_features`; a window, or a run segment).
        texts : sequence of str
            Each segment's text (:func:`~.tasks.answer_texts`: the answers of the
            questions about it).
        alphas : sequence of float
            Ridge penalties tried, relative to the mean squared singular value.

        Returns
        -------
        float
            The chosen penalty of the group maps (relative).
        """
        projector = self.projector
        if projector is None or projector.group_weight is None:
            raise ValueError("Only a model with group projections (continuous inputs, "
                             "group_projection=True) has group maps to align.")
        device = projector.group_weight.device
        if len(segments) != len(texts) or len(texts) < 2:
            raise ValueError(f"{len(segments)} segments and {len(texts)} texts: give one text "
                             "per segment, at least two.")
        k = projector.groups
        design_rows, windows = [], []
        for segment in segments:
            features = torch.as_tensor(np.asarray(segment, dtype=np.float32), device=device)
            if features.ndim != 2 or len(features) == 0 or features.shape[1] != \
                    projector.in_features:
                raise ValueError(f"Expected segments of shape (n_tokens, "
                                 f"{projector.in_features}); got {tuple(features.shape)}.")
            standard = projector.standardised(features)[:, :-k]
            design_rows.append(torch.einsum("sg,sf->gf", features[:, -k:],
                                            standard).flatten() / len(features))
            windows.append(features[:k] if len(features) > k else None)
        design = torch.stack(design_rows).double()
        targets = self.text_embeddings(texts).to(device).double()
        rows = self.model.get_input_embeddings().weight[:self.vocab.base_vocab_size]
        targets = (targets - targets.mean(dim=0)) * (
            rows.float().norm(dim=1).mean() / targets.norm(dim=1).mean().clamp(min=1e-12))
        coefficients, alpha = ridge_gcv(design, targets, alphas)
        projector.group_weight.copy_(coefficients.reshape(projector.group_weight.shape))
        longer = [i for i, window in enumerate(windows) if window is not None]
        if projector.pair_weight is not None and len(longer) >= 2:
            pairs = projector.pair_inputs(torch.stack([windows[i] for i in longer])).double()
            mean, std = pairs.mean(dim=0), pairs.std(dim=0, correction=0)
            std = torch.where(std > 1e-6, std, torch.ones_like(std))
            texts_of_longer = targets[longer] - targets[longer].mean(dim=0)
            weight, _ = ridge_gcv((pairs - mean) / std, texts_of_longer, alphas)
            projector.pair_mean.copy_(mean)
            projector.pair_std.copy_(std)
            projector.pair_weight.copy_(weight)
        return alpha

    @contextlib.contextmanager
    def merged(self) -> Iterator[FmriLM]:
        """Adapters and new rows merged into the backbone's weights, for faster inference.

        Un-merging on exit subtracts the LoRA updates again, which can leave rounding-level
        differences in the frozen weights (never saved). No-op for full fine-tuning.
        """
        if self.config.full_finetune:
            yield self
            return
        with _quiet_peft():
            self.model.merge_adapter()
        try:
            yield self
        finally:
            self.model.unmerge_adapter()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def enable_gradient_checkpointing(self) -> None:
        """Recompute activations in the backward pass (less memory, ~30% more time)."""
        self.model.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False})

    def fmri_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Boolean mask of the fMRI tokens (``<fmri_k>``) of ``input_ids``."""
        first = self.vocab.first_id
        return (input_ids >= first) & (input_ids < first + self.vocab.codebook_size)

    def embed(self, input_ids: torch.Tensor,
              features: torch.Tensor | None = None) -> torch.Tensor:
        """Input embeddings ``(B, T, hidden)``: the tokens' rows, and at the fMRI positions
        the projected ``features`` (one row per fMRI token of ``input_ids``, row-major
        order) when the model reads continuous inputs.

        Raises
        ------
        ValueError
            When a continuous model is given fMRI tokens without as many feature rows.
        """
        embeddings = self.model.get_input_embeddings()(input_ids)
        if self.projector is None:
            return embeddings
        positions = self.fmri_positions(input_ids)
        count = int(positions.sum())
        if count == 0:
            return embeddings
        if features is None or len(features) != count:
            raise ValueError(f"The input holds {count} fMRI tokens but "
                             f"{0 if features is None else len(features)} feature rows; "
                             "build prompts with Formatter.prompt (LMRun.token_features "
                             "set).")
        weight = self.projector.linear.weight
        features = features.to(weight.device, weight.dtype)
        embeddings = embeddings.masked_scatter(positions[..., None],
                                               self.projector(features).to(embeddings.dtype))
        if not (self.config.segment_summary and self.projector.group_weight is not None):
            return embeddings
        return self._with_summaries(input_ids, embeddings, positions, features)

    def _with_summaries(self, input_ids: torch.Tensor, embeddings: torch.Tensor,
                        positions: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """``embeddings`` with each segment's mean group term added at its ``</fmri>``;
        with a connectivity map, the :meth:`~FeatureProjector.pair_terms` of a segment of
        more than one window instead.

        Segments are told apart by their ``<fmri>`` (row-major order, as the features
        are); a ``</fmri>`` before any ``<fmri>`` of its row (its segment was read in an
        earlier call) gets nothing.
        """
        opens = input_ids == self.vocab.open_id
        segment = torch.cumsum(opens.reshape(-1), 0) - 1
        segment = torch.where(torch.cumsum(opens, dim=-1).reshape(-1) > 0, segment, -1)
        of_token = segment[positions.reshape(-1)]
        inside = of_token >= 0
        n_segments = int(segment.max()) + 1
        if n_segments <= 0:
            return embeddings
        terms = self.projector.group_terms(features[inside]).to(embeddings.dtype)
        sums = terms.new_zeros(n_segments, terms.shape[1]).index_add_(0, of_token[inside],
                                                                      terms)
        counts = torch.bincount(of_token[inside], minlength=n_segments)
        summaries = sums / counts.clamp(min=1)[:, None]
        k = self.projector.groups
        if self.projector.pair_weight is not None and bool((counts > k).any()):
            longer = (counts > k).nonzero()[:, 0]
            first = (torch.cumsum(counts, 0) - counts)[longer]
            window = features[inside][first[:, None] + torch.arange(k, device=first.device)]
            summaries = summaries.index_copy(0, longer, self.projector.pair_terms(window).to(
                summaries.dtype))
        where = ((input_ids.reshape(-1) == self.vocab.close_id) & (segment >= 0)).nonzero()[:, 0]
        where = where[counts[segment[where]] > 0]
        means = summaries[segment[where]]
        return embeddings.reshape(-1, embeddings.shape[-1]).index_add(0, where, means).reshape(
            embeddings.shape)

    def hidden_states(self, input_ids: torch.Tensor,
                      attention_mask: torch.Tensor | None = None,
                      cache: Cache | None = None, features: torch.Tensor | None = None,
                      position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Last hidden states ``(B, T, hidden)`` (inputs: :meth:`embed`).

        With a ``cache`` (a transformers ``DynamicCache``) the tokens continue the sequences
        it holds (``attention_mask`` then covers those too), and it holds them afterwards.
        Packed rows give ``position_ids`` restarting at each example and no
        ``attention_mask``.
        """
        decoder = self.model.get_decoder()
        return decoder(inputs_embeds=self.embed(input_ids, features),
                       attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                       use_cache=cache is not None).last_hidden_state

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               features: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token logits ``(B, T, vocab)`` of every position."""
        return self.model.get_output_embeddings()(self.hidden_states(
            input_ids, attention_mask, features=features))

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor,
                position_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None,
                features: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Negative log-likelihood of every labelled token.

        Parameters
        ----------
        input_ids, labels : LongTensor (B, T)
            ``labels`` as :class:`~.examples.Example` (position ``t`` is predicted from the
            tokens before it; :data:`~.examples.IGNORE_INDEX` where no loss applies).
        position_ids : LongTensor (B, T), optional
            Packed rows (:func:`~.examples.pack`): positions restarting at each example.
        attention_mask : LongTensor (B, T), optional
            Padded rows instead.
        features : Tensor (n_fmri_tokens, feature_dim), optional
            Continuous inputs (:meth:`embed`).

        Returns
        -------
        nll : Tensor (n_labelled,)
            Of each labelled token, row by row (float32).
        keep : BoolTensor (B, T - 1)
            Where the labelled targets are (``labels[:, 1:]``).
        """
        hidden = self.hidden_states(input_ids, attention_mask, features=features,
                                    position_ids=position_ids)
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX
        logits = self.model.get_output_embeddings()(hidden[:, :-1][keep]).float()
        return F.cross_entropy(logits, targets[keep], reduction="none"), keep

    def target_nll(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood of ``targets`` read from the hidden states before them.

        Parameters
        ----------
        hidden : Tensor (B, T, hidden)
            Position ``t`` predicts ``targets[:, t]``.
        targets : LongTensor (B, T)
            Token ids; :data:`~.examples.IGNORE_INDEX` where no loss applies (the output layer
            runs only where one does).

        Returns
        -------
        Tensor (B,)
            Summed over each row's targets (float32).
        """
        keep = targets != IGNORE_INDEX
        logits = self.model.get_output_embeddings()(hidden[keep]).float()
        losses = F.cross_entropy(logits, targets[keep], reduction="none")
        rows = keep.nonzero()[:, 0]
        return torch.zeros(len(targets), device=losses.device).index_add(0, rows, losses)

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """The parameters that train, by name (the projector's under ``projector.``)."""
        parameters = {name: p for name, p in self.model.named_parameters() if p.requires_grad}
        if self.projector is not None:
            parameters |= {f"projector.{name}": p
                           for name, p in self.projector.named_parameters()}
        return parameters

    def metadata(self) -> dict[str, object]:
        """Content of ``fmrilm.json``."""
        embeddings = self.model.get_input_embeddings().weight
        return {"config": self.config.to_dict(), "vocab": self.vocab.to_dict(),
                "backbone": self.backbone,
                "backbone_shape": {"hidden_size": int(embeddings.shape[1]),
                                   "base_vocab_size": self.vocab.base_vocab_size},
                "tasks": [task.to_dict() for task in self.tasks], "card": self.card,
                "software": software_versions(LM_SOFTWARE)}

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the model folder (module docstring), atomically.

        Returns
        -------
        Path
        """
        metadata = self.metadata()

        def write(folder: Path) -> None:
            if self.config.full_finetune:
                self.model.save_pretrained(folder)
            else:
                self.model.save_pretrained(folder, save_embedding_layers=False)
            if self.projector is not None:
                save_file({name: p.detach().cpu().contiguous()
                           for name, p in self.projector.state_dict().items()},
                          folder / PROJECTOR_FILE)
            self.tokenizer.save_pretrained(folder)
            atomic_write_text(folder / METADATA_FILE, json.dumps(metadata, indent=1))
            atomic_write_text(folder / MODEL_CARD, model_card(metadata))

        return publish_directory(Path(directory), write)

    @classmethod
    def from_pretrained(cls, directory: str | Path, llm_dir: str | Path | None = None,
                        cache_dir: str | Path | None = None,
                        device: torch.device = CPU) -> FmriLM:
        """Load a folder written by :meth:`save_pretrained` (in eval mode).

        Parameters
        ----------
        directory : str or Path
        llm_dir : str or Path, optional
            The backbone folder, when it moved since training (default: the recorded one).
        cache_dir : str or Path, optional
            Models cache of the default backbone.
        device : str or torch.device, default="cpu"
        """

        directory = Path(directory)
        if not (directory / METADATA_FILE).is_file():
            raise FileNotFoundError(f"{directory / METADATA_FILE} is missing; point at a folder "
                                    "written by FmriLM.save_pretrained (or fit_fmrilm).")
        metadata = json.loads((directory / METADATA_FILE).read_text())
        # Models saved before the group maps (the connectivity rows, the segment summary,
        # the connectivity map) existed read without them.
        config = FmriLMConfig.from_dict({"group_projection": False,
                                         "connectivity_inputs": False,
                                         "segment_summary": False,
                                         "connectivity_summary": False} | metadata["config"])
        saved_vocab = FmriVocabulary(**metadata["vocab"])
        if config.full_finetune:
            tokenizer, model = load_backbone(directory, device=device)
            backbone = metadata["backbone"]
        else:
            source = llm_dir if llm_dir is not None else (
                None if metadata["backbone"] == DEFAULT_BACKBONE else metadata["backbone"])
            _, base = load_backbone(source, cache_dir, device)
            shape = metadata["backbone_shape"]
            found = base.get_input_embeddings().weight.shape
            if (found[1], min(found[0], saved_vocab.first_id)) != (
                    shape["hidden_size"], shape["base_vocab_size"]):
                raise ValueError(f"The backbone {source or DEFAULT_BACKBONE} has embeddings "
                                 f"{tuple(found)}; {directory} was trained on one of hidden "
                                 f"size {shape['hidden_size']} and {shape['base_vocab_size']} "
                                 "tokens: pass the backbone it was trained with (llm_dir).")
            tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
            extend_vocabulary(tokenizer, base, config.codebook_size, seed=config.seed)
            with _quiet_peft():
                model = PeftModel.from_pretrained(base, directory)
            model.to(device)
            backbone = metadata["backbone"] if llm_dir is None else str(llm_dir)
        lm = cls(model, tokenizer, saved_vocab, config, backbone)
        if lm.projector is not None:
            lm.projector.load_state_dict(load_file(directory / PROJECTOR_FILE))
            lm.projector.to(device)
        lm.tasks = [TaskSpec.from_dict(task) for task in metadata["tasks"]]
        lm.card = metadata.get("card", {})
        return lm.eval()


def model_card(metadata: dict[str, object]) -> str:
    """Markdown model card: what it is, data used, metrics, settings, software."""
    config = metadata["config"]
    mode = ("full fine-tuning" if config["full_finetune"] else
            f"LoRA (r={config['lora_r']}, alpha={config['lora_alpha']}) on "
            f"{', '.join(config['lora_target_modules'])}, plus the new token embeddings")
    inputs = ("each token's continuous Stage-1 features, standardised, through a learned "
              "linear projection (the codes are the targets of its fMRI head)"
              if config.get("fmri_inputs", "continuous") == "continuous" else
              "each token's own embedding (discrete inputs)")
    tasks = ", ".join(f"{task['name']} ({task['kind']}, {task['level']})"
                      for task in metadata["tasks"]) or "none"
    sections = {title.capitalize(): values for title, values in metadata.get("card", {}).items()}
    return render_card("fMRI-LM (fmrilm-bids)", f"""
A causal language model that reads fMRI tokens (fMRI-LM Stages 2 and 3, Wei et al., 2025,
arXiv:2511.21760). Backbone: {metadata['backbone']}; {config['codebook_size']} fMRI tokens
`<fmri_0>`..`<fmri_{config['codebook_size'] - 1}>` between `<fmri>` and `</fmri>`,
{config['tokens_per_window']} per window; at an fMRI position it reads {inputs}; trained
with {mode}. Tuned questions: {tasks}. A classification answer's score is its
log-probability less its mean over prompts about training subjects (contextual
calibration). Load with `FmriLM.from_pretrained(folder)`.""", {
        **sections, "Model": config, "Software": metadata["software"],
        "Limitations": """Descriptions are learned from the descriptor corpus (texts computed
from imaging features), and answers from the labels of the training dataset: outputs are as
good as those texts and labels, and say nothing about people beyond them."""})
