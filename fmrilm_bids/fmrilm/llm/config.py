"""Settings of Stages 2 and 3, apart from the code that uses them.

:class:`FmriLMConfig` (architecture, prompt format, loss weights of an
:class:`~.model.FmriLM`), :class:`LMTrainConfig` (optimisation of one training stage) and
:class:`DecodingConfig` (how text is generated). Each is saved with the model or its outputs
and read back strictly (:func:`~fmrilm_bids.config.settings_from_dict`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from fmrilm_bids.config import settings_from_dict
from fmrilm_bids.fmrilm.training import warmup_cosine

#: What the language model can read at an fMRI position (:attr:`FmriLMConfig.fmri_inputs`).
FMRI_INPUTS = ("continuous", "discrete")

#: Llama-style projections (SmolLM2's): the modules that get LoRA adapters by default.
LLAMA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                     "down_proj")


@dataclass
class FmriLMConfig:
    """Architecture, prompt format and loss weights of an :class:`FmriLM`.

    Attributes
    ----------
    codebook_size : int
        fMRI tokens (the Stage-1 codebook size).
    tokens_per_window : int
        fMRI tokens per window (the Stage-1 parcel groups).
    feature_dim : int
        Width of the features read at each fMRI position (:meth:`~.runs.LMRun.
        segment_features`; 0: not known yet, set from the runs by
        :func:`~.pipeline.fit_fmrilm`).
    fmri_inputs : {"continuous", "discrete"}
        What the model reads at an fMRI position: the token's continuous Stage-1 features,
        standardised, through a learned linear projection (the reference design; its
        codes stay the targets of the fMRI head), or the token's own embedding row (the
        discrete ablation).
    group_projection : bool
        Continuous inputs: besides the projector's shared linear map, each parcel group's
        features go through a map of their own (``FeatureProjector.group_weight``), so the
        sum over a window's tokens can weigh every group's features as a linear read-out
        of the window does. False: the shared map only (the ablation).
    connectivity_inputs : bool
        Continuous inputs: each token also carries its group's correlations with every
        other group over the prompt's windows (:func:`~.runs.group_connectivity`; runs
        whose Stage-1 features hold the groups' time courses), the second-order
        information that run-level questions (patients vs controls) need. False: the
        tokens' own features only (the ablation; models saved before it was added).
    segment_summary : bool
        With group maps: the mean of a segment's group terms (what
        :meth:`~.model.FmriLM.align_projector` fits to the answers about the segment) is
        added to the embedding of the segment's closing ``</fmri>``, so that one position
        carries the whole segment's read-out, however many tokens it has (a run segment
        has 128). On the benchmark cohort, before any training, it raised the held-out
        window condition answered zero-shot from 0.36 to 0.43 (AUROC 0.68 to 0.74).
        False: the ablation.
    connectivity_summary : bool
        With connectivity rows and the segment summary: the summary at the closing
        ``</fmri>`` of a segment of more than one window (a run-level prompt) is its
        groups' connectivity (the upper triangle of :func:`~.runs.group_connectivity`,
        standardised over the training run segments) through a map of its own, which
        :meth:`~.model.FmriLM.align_projector` fits to the answers about run segments
        alone, instead of the mean group term (one fit for windows and run segments alike,
        from the tokens' own features beside their connectivity rows). On the benchmark
        cohort, read without the language model (cosine to the answers' embeddings), the
        held-out patients vs controls go from accuracy 0.48 (AUROC 0.55) to 0.77 (AUROC
        0.78; a logistic regression on parcel connectivity: 0.65, AUROC 0.77), rest vs
        task from 0.92 to 0.98. False: the ablation (and
        models saved before it); :func:`~.pipeline.with_inputs` turns
        ``connectivity_inputs`` off for runs without the groups' time courses.
    lora_r, lora_alpha : int
        LoRA rank and scale (``alpha / r``).
    lora_dropout : float
        Dropout on the adapters' inputs. Default 0: each adapted projection would keep its
        own dropped copy of its input for the backward pass; on the CPU, dropout 0.05 cost
        about 0.35 GB more peak memory per 512 training tokens and 12 % of the throughput
        (SmolLM2-135M, 2 threads), and the stages are too short to overfit.
    lora_target_modules : tuple of str
        Module names that get adapters (Llama-style projections by default).
    full_finetune : bool
        Train every weight instead of LoRA + new rows.
    window_context : int
        Windows before a window that its prompts show. Default 0: the window's own 16
        tokens (events are aligned to windows after the haemodynamic delay, and on the
        cohort of ``benchmarks/bench_llm.py`` a probe of the Stage-1 features reads the
        condition better from the window alone than with two windows before it), which
        also keeps window prompts five times shorter.
    run_segment_windows : int
        Windows of a run-level prompt (longer runs give several segments).
    fmri_sequence_windows : int
        Windows of a next-fMRI-token training sequence (fewer when ``max_length`` is
        reached).
    max_length : int
        Tokens of a training sequence (longer targets are cut).
    system_prompt : str
        System message of every prompt.
    loss_weights : dict of str to float
        Weight of each example kind: ``fmri``, ``describe``, ``text`` (Stage 2), ``answer``
        (Stage 3). The loss is the weighted mean of each kind's token-mean loss.
    sampling_weights : dict of str to float
        Multiplies an example group's share of the training tokens
        (:class:`~.examples.EpochSampler`; default 1): the text-only corpus, the largest
        group, is drawn less, and the window condition (what kind of thing was shown, which
        the window captions state) three times more. In one six-question Stage-3 epoch on
        the benchmark cohort, tripling the condition's share raised its held-out accuracy
        (0.28 against 0.17, chance 0.18) and brought the stimulus captions above shuffled
        pairs (p = 0.006 against 0.13).
    seed : int
        Seed of LoRA and new-row initialisation.
    """

    codebook_size: int = 1024
    tokens_per_window: int = 1
    feature_dim: int = 0
    fmri_inputs: str = "continuous"
    group_projection: bool = True
    connectivity_inputs: bool = True
    segment_summary: bool = True
    connectivity_summary: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: tuple[str, ...] = LLAMA_PROJECTIONS
    full_finetune: bool = False
    window_context: int = 0
    run_segment_windows: int = 8
    fmri_sequence_windows: int = 8
    max_length: int = 256
    system_prompt: str = "You describe fMRI scans."
    loss_weights: dict[str, float] = field(default_factory=lambda: {
        "fmri": 1.0, "describe": 1.0, "text": 0.5, "answer": 1.0})
    sampling_weights: dict[str, float] = field(default_factory=lambda: {
        "text": 0.25, "condition": 3.0})
    seed: int = 0

    def __post_init__(self) -> None:
        if self.fmri_inputs not in FMRI_INPUTS:
            raise ValueError(f"fmri_inputs must be one of {', '.join(FMRI_INPUTS)}, not "
                             f"{self.fmri_inputs!r}.")

    def to_dict(self) -> dict[str, object]:
        values = asdict(self)
        values["lora_target_modules"] = list(self.lora_target_modules)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, object]) -> FmriLMConfig:
        """Settings written by :meth:`to_dict` (unknown keys refused)."""
        return settings_from_dict(cls, values, "fMRI-LM")


@dataclass
class LMTrainConfig:
    """Optimisation settings of one training stage.

    Attributes
    ----------
    steps : int, optional
        Optimiser steps in all; None (the default) sets them from the data: ``epochs``
        passes' worth of the stage's example tokens (:meth:`~.examples.EpochSampler.
        steps_for`).
    epochs : float
        Passes over the examples when ``steps`` is None.
    batch_tokens : int
        Tokens per micro-batch and process (whole examples, packed into rows). Activation
        memory grows with it: on the CPU (SmolLM2-135M, float32, 2 threads) one micro-batch
        of 512 tokens peaked at 2.9 GB of process memory and trained at 169 tokens/s, one
        of 1024 at 4.4 GB and 151 tokens/s.
    row_length : int
        Longest packed row (attention costs grow with its square).
    grad_accum : int
        Micro-batches per step (effective batch: ``batch_tokens * grad_accum * processes``
        tokens).
    learning_rate, min_learning_rate : float
        Peak and final learning rate (linear warm-up, then cosine decay).
    warmup_steps : int
        Linear warm-up (at most a tenth of the steps).
    weight_decay : float
        AdamW decay of the adapter matrices (never of embedding rows).
    grad_clip : float
        Gradient-norm clip.
    checkpoint_interval : int
        Steps between checkpoints (and always at the end).
    gradient_checkpointing : bool
        Recompute activations in the backward pass (GPU memory saver).
    seed : int
    progress : bool, optional
        Progress bar: None shows it on a terminal only.
    """

    steps: int | None = None
    epochs: float = 1.0
    batch_tokens: int = 512
    row_length: int = 512
    grad_accum: int = 4
    learning_rate: float = 1e-3
    min_learning_rate: float = 1e-4
    warmup_steps: int = 20
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    checkpoint_interval: int = 100
    gradient_checkpointing: bool = False
    seed: int = 0
    progress: bool | None = None

    def learning_rate_at(self, step: int) -> float:
        """Warm-up then cosine schedule (:func:`~fmrilm_bids.fmrilm.training.warmup_cosine`)."""
        if self.steps is None:
            raise ValueError("Set the number of steps first (e.g. from the epochs).")
        return warmup_cosine(step, steps=self.steps,
                             warmup_steps=min(self.warmup_steps, max(1, self.steps // 10)),
                             peak=self.learning_rate, floor=self.min_learning_rate)


@dataclass(frozen=True)
class DecodingConfig:
    """How text is generated.

    Attributes
    ----------
    max_new_tokens : int
    min_new_tokens : int
        Tokens generated before the end of the answer may come (no empty caption).
    do_sample : bool
        Sample (with ``temperature`` and ``top_p``) instead of greedy decoding.
    num_beams : int
        Beam search width (1: none).
    temperature, top_p : float
        Sampling settings (used only when sampling).
    repetition_penalty : float
    seed : int
        Seed of sampling.
    batch_size : int
        Prompts per forward pass (a decoding step reads every weight once for all of them:
        larger batches are faster, on the CPU too: the 38 captions of a demo picture run in
        9 s with 64, 15 s with 32, which split them into 32 and 6).
    """

    max_new_tokens: int = 48
    min_new_tokens: int = 3
    do_sample: bool = False
    num_beams: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int = 0
    batch_size: int = 64

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

