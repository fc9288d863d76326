"""Settings of the Stage-1 tokenizer, apart from the code that uses them.

:class:`TokenizerConfig` (architecture and window format of a
:class:`~.model.NeuralTokenizer`, saved with its weights) and :class:`TrainConfig`
(optimisation, :func:`~.train.train_tokenizer`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

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
        Hidden width of the parcel-identity networks (group weights, decoder loadings).
    n_groups : int
        Parcel groups, hence tokens per window.
    group_pools : int
        Pooled signals per group (a token's continuous features hold them all).
    d_model : int
        Hidden width of the group encoder and decoder.
    code_dim : int
        Width of the latents and codes.
    codebook_size : int
        Number of codes (one codebook shared by the groups).
    n_basis : int
        Decoder time courses per group and window.
    llm_hidden : int
        Hidden size of the language model (576 for SmolLM2-135M).
    text_dim : int
        Width of the text embeddings the alignment loss compares with.
    event_dim : int
        Width of the sentence embeddings of what was shown (the event alignment; 384 for
        all-MiniLM-L6-v2; 0: embedded like the descriptors, ``text_dim``).
    ema_decay : float
        EMA decay of the codebook.
    dead_after : int
        Training steps after which an unused code is restarted.
    """

    target_tr: float = 2.0
    patch_length: int = 6
    clip: float = 5.0
    parcel_dim: int = 64
    n_groups: int = 16
    group_pools: int = 1
    d_model: int = 64
    code_dim: int = 32
    codebook_size: int = 1024
    n_basis: int = 4
    llm_hidden: int = 576
    text_dim: int = 576
    event_dim: int = 384
    ema_decay: float = 0.99
    dead_after: int = 20

    @property
    def window_seconds(self) -> float:
        """Duration of a window (s): the descriptor ``window_length`` that pairs with it."""
        return self.patch_length * self.target_tr

    @property
    def bits_per_window(self) -> float:
        """Information the tokens of one window can carry: ``n_groups * log2(codebook_size)``."""
        return self.n_groups * math.log2(self.codebook_size)

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
    steps : int, optional
        Optimiser steps in all; None (the default) sets them from the data
        (:meth:`for_windows`): ``epochs`` passes over the training windows, at least
        ``min_steps``.
    epochs : float
        Passes over the training windows when ``steps`` is None.
    min_steps : int
        Fewest steps when ``steps`` is None (small cohorts need more passes).
    batch_size : int
        Samples per step.
    sequence_windows : int
        Consecutive windows of one run per sample (fewer when a run is shorter).
    learning_rate, min_learning_rate : float
        Peak and final learning rate (linear warm-up, then cosine decay).
    warmup_steps : int
    weight_decay : float
        AdamW decay of the weight matrices (not of biases, norms, embeddings).
    grad_clip : float
        Gradient-norm clip.
    reconstruction_weight, amplitude_weight, commitment_weight : float
        Loss weights of the patches' reconstruction, of the reconstruction of each parcel's
        window mean (the amplitude pattern, which holds the responses to events but only a
        sixth of the patch variance), and of the commitment. Weighting the amplitude up
        (8) keeps the responses to events in the tokens and raises the reconstruction too:
        on the cohort of ``benchmarks/bench_llm.py`` (400 epochs), held-out R² 0.49 against
        0.47 without it, and a logistic regression on a window's token features reads the
        condition at 0.73-0.75 against 0.66-0.67.
    alignment_weight, event_alignment_weight : float
        Loss weights of the alignment to the descriptor texts and to what was shown.
    eval_interval, checkpoint_interval : int
        Steps between evaluations / checkpoints (and always at the end).
    seed : int
    progress : bool, optional
        Show a progress bar (steps/s, ETA, loss); default: when stderr is a terminal.
    """

    steps: int | None = None
    epochs: float = 400.0
    min_steps: int = 300
    batch_size: int = 16
    sequence_windows: int = 8
    learning_rate: float = 2e-3
    min_learning_rate: float = 2e-4
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    reconstruction_weight: float = 1.0
    amplitude_weight: float = 8.0
    commitment_weight: float = 0.25
    alignment_weight: float = 0.1
    event_alignment_weight: float = 1.0
    eval_interval: int = 250
    checkpoint_interval: int = 500
    seed: int = 0
    progress: bool | None = None

    def for_windows(self, n_windows: int) -> TrainConfig:
        """These settings with ``steps`` set: as given, else from ``epochs`` over
        ``n_windows`` training windows (at least ``min_steps``)."""
        if self.steps is not None:
            return self
        per_step = self.batch_size * self.sequence_windows
        return replace(self, steps=max(self.min_steps,
                                       math.ceil(self.epochs * n_windows / per_step)))

    def learning_rate_at(self, step: int) -> float:
        """Warm-up then cosine schedule (:func:`~fmrilm_bids.fmrilm.training.warmup_cosine`)."""
        if self.steps is None:
            raise ValueError("Set the number of steps first (TrainConfig.for_windows).")
        return warmup_cosine(step, steps=self.steps, warmup_steps=self.warmup_steps,
                             peak=self.learning_rate, floor=self.min_learning_rate)
