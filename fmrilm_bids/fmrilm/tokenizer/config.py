"""The neural fMRI tokenizer: parcel patches -> encoder -> vector quantiser -> decoder.

One token per window (``patch_length`` samples at ``target_tr``, all parcels):

1. **Parcel-set encoder** (:class:`ParcelSetEncoder`). A small network maps each parcel's
   identity (network one-hot and connectivity fingerprint, :func:`~.data.parcel_identity`)
   to attention scores for ``n_queries`` groups; a softmax across parcels turns them into
   pooling weights, and each group's weighted mean patch (learned, soft "networks") goes
   through a linear layer into one window vector. Nothing depends on the parcel count or
   order, so a model trained on one atlas tokenises another; the weights are computed once
   per run, so a window costs ``n_queries x n_parcels x patch_length`` multiply-adds.
2. **Time transformer**: ``n_layers`` pre-norm transformer blocks (nanoGPT style,
   bidirectional) over up to ``context_windows`` consecutive windows of a run, then a linear
   map to a unit-norm latent of width ``code_dim``: the pre-quantisation feature.
3. **Quantiser** (:class:`~.quantizer.VectorQuantizer`): the latent's nearest code is the
   token.
4. **Decoder** (:class:`PatchDecoder`): the code becomes ``n_basis`` time courses; each
   parcel's loadings on them come from its identity, so the patch of every parcel is
   reconstructed for any atlas.
5. **Alignment to language**: the latent is projected to the LLM's hidden size
   (``to_llm``) and pulled towards the text embedding of its window's descriptor with a
   sigmoid contrastive loss (SigLIP, Zhai et al., 2023; windows with the same text are all
   positives). Applied to the codebook, the same projection gives the initial embedding of
   each fMRI token in the LLM (:meth:`NeuralTokenizer.token_embeddings_for_llm`). When the
   text encoder is not the LLM (``text_dim != llm_hidden``) a learned linear map brings the
   text embeddings to the LLM width.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from fmrilm_bids.fmrilm.training import warmup_cosine


@dataclass
class TokenizerConfig:
    """Architecture and input format of a :class:`NeuralTokenizer`.

    Attributes
    ----------
    target_tr : float
        Common repetition time (s) every run is resampled to.
    patch_length : int
        Samples per window (window = ``patch_length * target_tr`` seconds).
    clip : float
        Robust-normalised signals are clipped to ``[-clip, clip]``.
    parcel_dim : int
        Hidden width of the parcel-identity networks (encoder scores, decoder loadings).
    n_queries : int
        Parcel groups the encoder pools (attention queries over parcels).
    d_model : int
        Width of the time transformer.
    n_layers, n_heads : int
        Time-transformer blocks and attention heads.
    context_windows : int
        Windows the time transformer sees at once.
    code_dim : int
        Width of the latents and codes.
    codebook_size : int
        Number of tokens.
    n_basis : int
        Decoder time courses per window.
    llm_hidden : int
        Hidden size of the language model (576 for SmolLM2-135M).
    text_dim : int
        Width of the text embeddings the alignment loss compares with.
    ema_decay : float
        EMA decay of the codebook.
    dead_after : int
        Training steps after which an unused code is restarted.
    """

    target_tr: float = 2.0
    patch_length: int = 6
    clip: float = 5.0
    parcel_dim: int = 16
    n_queries: int = 16
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    context_windows: int = 32
    code_dim: int = 32
    codebook_size: int = 256
    n_basis: int = 16
    llm_hidden: int = 576
    text_dim: int = 576
    ema_decay: float = 0.99
    dead_after: int = 20

    @property
    def window_seconds(self) -> float:
        """Duration of a window (s): the descriptor ``window_length`` that pairs with it."""
        return self.patch_length * self.target_tr

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, object]) -> TokenizerConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown tokenizer settings {unknown}; this fmrilm-bids knows "
                             f"{sorted(known)}.")
        return cls(**values)


@dataclass
class TrainConfig:
    """Optimisation settings.

    Attributes
    ----------
    steps : int
        Optimiser steps in all.
    batch_size : int
        Sequences per step.
    sequence_windows : int
        Consecutive windows per sequence (at most the model's ``context_windows``; shorter
        when a run is shorter).
    learning_rate, min_learning_rate : float
        Peak and final learning rate (linear warm-up, then cosine decay).
    warmup_steps : int
    weight_decay : float
        AdamW decay of the weight matrices (not of biases, norms, embeddings).
    grad_clip : float
        Gradient-norm clip.
    reconstruction_weight, commitment_weight, alignment_weight : float
        Loss weights.
    eval_interval, checkpoint_interval : int
        Steps between evaluations / checkpoints (and always at the end).
    seed : int
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    progress : bool, optional
        Show a progress bar (steps/s, ETA, loss); default: when stderr is a terminal.
    """

    steps: int = 2000
    batch_size: int = 16
    sequence_windows: int = 16
    learning_rate: float = 2e-3
    min_learning_rate: float = 2e-4
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    reconstruction_weight: float = 1.0
    commitment_weight: float = 0.25
    alignment_weight: float = 0.1
    eval_interval: int = 250
    checkpoint_interval: int = 500
    seed: int = 0
    device: str = "auto"
    progress: bool | None = None

    def learning_rate_at(self, step: int) -> float:
        """Warm-up then cosine schedule (:func:`~fmrilm_bids.fmrilm.training.warmup_cosine`)."""
        return warmup_cosine(step, steps=self.steps, warmup_steps=self.warmup_steps,
                             peak=self.learning_rate, floor=self.min_learning_rate)
