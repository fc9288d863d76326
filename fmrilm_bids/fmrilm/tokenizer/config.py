"""Settings of the Stage-1 tokenizer, apart from the code that uses them.

:class:`TokenizerConfig` (architecture and window format of a
:class:`~.model.NeuralTokenizer`, saved with its weights) and :class:`TrainConfig`
(optimisation, :func:`~.train.train_tokenizer`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from fmrilm_bids.config import settings_from_dict
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
        """Settings written by :meth:`to_dict` (unknown keys refused)."""
        return settings_from_dict(cls, values, "tokenizer")


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
    progress: bool | None = None

    def learning_rate_at(self, step: int) -> float:
        """Warm-up then cosine schedule (:func:`~fmrilm_bids.fmrilm.training.warmup_cosine`)."""
        return warmup_cosine(step, steps=self.steps, warmup_steps=self.warmup_steps,
                             peak=self.learning_rate, floor=self.min_learning_rate)
