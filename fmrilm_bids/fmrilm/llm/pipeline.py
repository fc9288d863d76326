"""Entry points of Stages 2 and 3 for the BIDS-App: :func:`fit_fmrilm`, :func:`apply_fmrilm`.

Both take plain in-memory inputs (:class:`~.runs.LMRun` per run, the ``participants.tsv``
table) and return plain outputs (DataFrames, arrays, dicts); they write no BIDS file.
:func:`fit_fmrilm` writes its model folder and checkpoints under ``out_dir``:

```
out_dir/stage2/checkpoint/   Stage-2 training state (resumable)
out_dir/stage3/checkpoint/   Stage-3 training state (resumable)
out_dir/model/               the trained model (FmriLM.save_pretrained; load it with
                             apply_fmrilm or FmriLM.from_pretrained)
out_dir/metrics.json         the held-out evaluation (evaluate_fmrilm)
```
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fmrilm_bids.fmrilm.llm.backbone import backbone_source, load_backbone
from fmrilm_bids.fmrilm.llm.config import DecodingConfig, FmriLMConfig, LMTrainConfig
from fmrilm_bids.fmrilm.llm.evaluate import evaluate_fmrilm
from fmrilm_bids.fmrilm.llm.examples import Example, instruction_examples, stage2_examples
from fmrilm_bids.fmrilm.llm.inference import (
    answer_tasks,
    calibrate_tasks,
    condition_task,
    fmri_embeddings,
    run_captions,
)
from fmrilm_bids.fmrilm.llm.model import FmriLM
from fmrilm_bids.fmrilm.llm.runs import LMRun, feature_moments
from fmrilm_bids.fmrilm.llm.tasks import TaskSpec, answer_texts, default_tasks, resolve_tasks
from fmrilm_bids.fmrilm.llm.train import train_fmrilm
from fmrilm_bids.fmrilm.splits import subject_split
from fmrilm_bids.utils.devices import CPU, distributed_context
from fmrilm_bids.utils.files import atomic_write_text
from fmrilm_bids.utils.progress import Heartbeat

LOGGER = logging.getLogger(__name__)

MODEL_DIR = "model"
METRICS_FILE = "metrics.json"


@dataclass
class FitResult:
    """What :func:`fit_fmrilm` returns.

    Attributes
    ----------
    model : FmriLM
        The tuned model (also saved in ``model_dir``).
    model_dir : Path
    metrics : dict
        Held-out evaluation (empty without test subjects, and on processes other than the
        main one).
    history : dict of str to list
        Per-stage training history.
    throughput : dict of str to float
        Training tokens/s per stage.
    train_subjects, test_subjects : list of str
    """

    model: FmriLM
    model_dir: Path
    metrics: dict[str, object] = field(repr=False)
    history: dict[str, list[dict[str, float]]] = field(repr=False)
    throughput: dict[str, float]
    train_subjects: list[str]
    test_subjects: list[str]


def _groups(examples: Sequence[Example]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for example in examples:
        counts[example.group] = counts.get(example.group, 0) + 1
    return counts


#: Metrics of an evaluation that the model card lists.
CARD_METRICS = ("accuracy", "auroc", "mae", "minilm_cosine", "bleu", "rouge_l")


def _card_metrics(metrics: dict[str, object]) -> dict[str, str]:
    """Headline numbers of an evaluation, flattened for the model card."""
    rows = {}
    for name, task in metrics.get("tasks", {}).items():
        for setting in ("fmrilm", "few_shot", "baseline_fc", "baseline_tokens"):
            for metric in CARD_METRICS:
                value = task.get(setting, {}).get(metric)
                if isinstance(value, float):
                    rows[f"{name} ({task['setting']}): {setting} {metric}"] = f"{value:.3f}"
        chance = task.get("fmrilm", {}).get("chance_accuracy", task.get("chance_mae"))
        if chance is not None:
            rows[f"{name}: chance {'accuracy' if task['kind'] == 'class' else 'mae'}"] = \
                f"{chance:.3f}"
    for metric, value in metrics.get("descriptions", {}).get("fmrilm", {}).items():
        if metric in CARD_METRICS:
            rows[f"window descriptions: {metric}"] = f"{value:.3f}"
    return rows


def with_inputs(config: FmriLMConfig, runs: Sequence[LMRun]) -> FmriLMConfig:
    """``config`` with ``tokens_per_window`` and ``feature_dim`` of ``runs``, and without
    ``connectivity_inputs`` when the runs carry no time courses of the groups (nothing to
    correlate).

    Raises
    ------
    ValueError
        When the runs differ in tokens per window or feature width, or a model reading
        continuous inputs is given runs without features.
    """
    connectivity = config.connectivity_inputs and all(run.timecourse_length for run in runs)
    shapes = {(run.tokens_per_window, None if run.token_features is None else
               run.segment_features(0, 1, connectivity).shape[1])
              for run in runs}
    if len(shapes) != 1:
        raise ValueError(f"The runs differ in tokens per window or feature width: "
                         f"{sorted(shapes, key=str)}; tokenise them with one Stage-1 model.")
    (per_window, width), = shapes
    if config.fmri_inputs == "continuous" and width is None:
        raise ValueError("The runs carry no Stage-1 features (LMRun.token_features) for a "
                         "model reading continuous inputs; pass them, or use "
                         "fmri_inputs='discrete'.")
    return replace(config, tokens_per_window=per_window, connectivity_inputs=connectivity,
                   feature_dim=width if config.fmri_inputs == "continuous" else 0)


def align_projector(model: FmriLM, tasks: Sequence[TaskSpec], runs: Sequence[LMRun],
                    participants: pd.DataFrame | None) -> float | None:
    """Start ``model``'s group maps from the answers of ``tasks`` about ``runs`` (the
    training questions; :meth:`~.model.FmriLM.align_projector` on each asked-about
    segment's :func:`~.tasks.answer_texts`); the chosen ridge penalty, None (maps left at
    0) when fewer than two segments are asked about."""
    config = model.config
    texts = answer_texts(tasks, runs, participants, config.window_context,
                         config.run_segment_windows)
    if len(texts) < 2:
        return None
    alpha = model.align_projector(
        [model.formatter.segment_features(runs[index], start, stop)
         for index, start, stop in texts], list(texts.values()))
    LOGGER.info("Projector: group maps aligned to the answers about %d training segments "
                "(ridge penalty %.3g).", len(texts), alpha)
    return alpha


def fit_fmrilm(runs: Sequence[LMRun], participants: pd.DataFrame | None,
               out_dir: str | Path, config: FmriLMConfig | None = None,
               stage2: LMTrainConfig | None = None, stage3: LMTrainConfig | None = None,
               token_embeddings: torch.Tensor | np.ndarray | None = None,
               projection: tuple[torch.Tensor, torch.Tensor] | None = None,
               llm_dir: str | Path | None = None, cache_dir: str | Path | None = None,
               tasks: Sequence[TaskSpec] | None = None, held_out_tasks: Sequence[str] = (),
               test_subjects: Sequence[str] | None = None, few_shot_k: int = 2,
               corpus_texts: Sequence[str] | None = None, replay: Sequence[str] = ("describe",),
               replay_fraction: float = 0.25,
               decoding: DecodingConfig | None = None, evaluate: bool = True,
               max_describe: int | None = 32, resume: bool = False,
               device: torch.device = CPU) -> FitResult:
    """Train fMRI-LM Stages 2 and 3 on a group of runs; evaluate on held-out subjects.

    Parameters
    ----------
    runs : sequence of LMRun
        Every run (training and test subjects).
    participants : DataFrame, optional
        ``participants.tsv``.
    out_dir : str or Path
        Model, checkpoints and metrics (module docstring).
    config : FmriLMConfig, optional
        ``codebook_size`` must match the Stage-1 tokenizer; ``tokens_per_window`` and
        ``feature_dim`` are set from the runs.
    stage2, stage3 : LMTrainConfig, optional
        Optimisation of each stage.
    token_embeddings : Tensor or ndarray of shape (codebook_size, hidden), optional
        Stage-1 ``token_embeddings_for_llm()`` (initial fMRI-token embeddings).
    projection : (Tensor, Tensor), optional
        Stage-1 ``llm_projection()`` (initial projector of the continuous inputs).
    llm_dir, cache_dir : str or Path, optional
        Backbone folder (default SmolLM2) and models cache (:func:`~.backbone.load_backbone`).
    tasks : sequence of TaskSpec, optional
        Questions (default: :func:`~.tasks.default_tasks` of the training runs).
    held_out_tasks : sequence of str
        Task names kept out of tuning and evaluated zero-shot and few-shot.
    test_subjects : sequence of str, optional
        Held-out participants (default: a seeded quarter, at least one, when evaluating;
        none otherwise).
    few_shot_k : int, default=2
        Few-shot examples per class.
    corpus_texts : sequence of str, optional
        Descriptor corpus of the text-only term (default: the runs' descriptor texts).
    replay : sequence of str, default=("describe",)
        Stage-2 example groups mixed into Stage 3, so that window descriptions survive.
    replay_fraction : float, default=0.25
        Share of those examples mixed in (a seeded subset).
    decoding : DecodingConfig, optional
        Generation settings of the evaluation.
    evaluate : bool, default=True
    max_describe : int, optional
        Held-out windows whose generated description is scored (None: all).
    resume : bool, default=False
        Continue both stages from their checkpoints in ``out_dir``.
    device : torch.device, default=CPU
        Where the model trains (resolved by the caller; a parallel run's process GPU).

    Returns
    -------
    FitResult
    """
    config = config or FmriLMConfig()
    out_dir = Path(out_dir)
    subjects = sorted({run.subject for run in runs})
    if test_subjects is None:
        test = subject_split(subjects, seed=config.seed)[1] if evaluate else []
    else:
        test = sorted({str(s).removeprefix("sub-") for s in test_subjects})
        unknown = sorted(set(test) - set(subjects))
        if unknown:
            raise ValueError(f"Test subjects {unknown} have no run; subjects are "
                             f"{', '.join(subjects)}.")
    train_runs = [run for run in runs if run.subject not in test]
    test_runs = [run for run in runs if run.subject in test]
    if not train_runs:
        raise ValueError("fit_fmrilm needs runs of at least one training subject.")
    config = with_inputs(config, runs)
    context = distributed_context()

    # Backbone with fMRI tokens, adapters, the projector standardising the training
    # tokens' features; the questions.
    tokenizer, backbone = load_backbone(llm_dir, cache_dir, device)
    model = FmriLM.build(tokenizer, backbone, config, token_embeddings,
                         backbone_source(llm_dir), projection,
                         feature_moments(train_runs, config.connectivity_inputs,
                                         config.run_segment_windows)
                         if config.fmri_inputs == "continuous" else None)
    tasks = list(tasks) if tasks is not None else default_tasks(train_runs, participants)
    unknown = sorted(set(held_out_tasks) - {task.name for task in tasks})
    if unknown:
        raise ValueError(f"Held-out tasks {unknown} are not among the tasks "
                         f"{[task.name for task in tasks]}.")
    segment = (config.window_context, config.run_segment_windows)
    tuned, skipped = resolve_tasks([t for t in tasks if t.name not in held_out_tasks],
                                   train_runs, participants, *segment)
    held_out, skipped_held = resolve_tasks([t for t in tasks if t.name in held_out_tasks],
                                           train_runs, participants, *segment)
    if skipped + skipped_held:
        LOGGER.info("Tasks without two answers in the training runs, left out: %s",
                 ", ".join(skipped + skipped_held))
    if model.projector is not None and model.projector.group_weight is not None:
        align_projector(model, tuned, train_runs, participants)

    # Stage 2: joint fMRI-text modelling.
    examples2 = stage2_examples(model.formatter, train_runs, config, corpus_texts, config.seed)
    result2 = train_fmrilm(model, examples2, out_dir / "stage2", stage2, resume,
                           description="Stage 2")
    # Stage 3: instruction tuning (with some Stage-2 replay).
    examples3 = instruction_examples(model.formatter, tuned, train_runs, participants, config,
                                     config.seed)
    replayed = [example for example in examples2 if example.group in replay]
    keep = np.random.default_rng(config.seed).permutation(len(replayed))
    examples3 += [replayed[i] for i in sorted(keep[:round(replay_fraction * len(replayed))])]
    result3 = train_fmrilm(model, examples3, out_dir / "stage3", stage3, resume,
                           description="Stage 3") if tuned else None
    # Calibration of the classification answers, from prompts about training subjects.
    tuned = calibrate_tasks(model, tuned, train_runs, participants, seed=config.seed)
    held_out = calibrate_tasks(model, held_out, train_runs, participants, seed=config.seed)
    model.tasks = tuned

    metrics: dict[str, object] = {}
    if context.is_main:
        if evaluate and test_runs:
            started = time.perf_counter()
            metrics = evaluate_fmrilm(model, train_runs, test_runs, participants, held_out,
                                      few_shot_k, decoding=decoding,
                                      max_describe=max_describe, seed=config.seed)
            metrics["skipped_tasks"] = skipped + skipped_held
            metrics["evaluation_seconds"] = time.perf_counter() - started
            atomic_write_text(out_dir / METRICS_FILE, json.dumps(metrics, indent=1))
        model.card = {
            "data": {"train_subjects": ", ".join(r for r in subjects if r not in test),
                     "test_subjects": ", ".join(test) or "none",
                     "train_runs": len(train_runs), "test_runs": len(test_runs),
                     "train_windows": sum(run.n_windows for run in train_runs),
                     "stage 2 examples": _groups(examples2),
                     "stage 3 examples": _groups(examples3),
                     "held-out tasks": ", ".join(t.name for t in held_out) or "none",
                     "skipped tasks": ", ".join(skipped + skipped_held) or "none"},
            "training": {"stage 2": asdict(stage2 or LMTrainConfig()),
                         "stage 3": asdict(stage3 or LMTrainConfig()),
                         "processes": context.world_size},
            "metrics (held-out subjects)": _card_metrics(metrics)}
        model.save_pretrained(out_dir / MODEL_DIR)
    history = {"stage2": result2.history} | ({"stage3": result3.history} if result3 else {})
    throughput = {"stage2": result2.tokens_per_second} | (
        {"stage3": result3.tokens_per_second} if result3 else {})
    return FitResult(model=model, model_dir=out_dir / MODEL_DIR, metrics=metrics,
                     history=history, throughput=throughput,
                     train_subjects=[s for s in subjects if s not in test],
                     test_subjects=test)


@dataclass
class RunOutputs:
    """What :func:`apply_fmrilm` gives for one run.

    Attributes
    ----------
    window_captions : DataFrame
        ``onset``, ``duration``, ``caption``: a description of every window.
    event_captions : DataFrame or None
        ``onset``, ``duration``, [``trial_type``,] ``caption`` of every event (runs with
        events).
    patch_embeddings : ndarray of shape (n_windows, hidden)
        Hidden-state embedding of each time patch.
    run_embedding : ndarray of shape (hidden,)
    answers : dict of str to DataFrame
        Per tuned question (:func:`~.inference.answer_tasks`).
    settings : dict
        Decoding settings, the model folder and backbone, captions per second.
    """

    window_captions: pd.DataFrame | None
    event_captions: pd.DataFrame | None
    patch_embeddings: np.ndarray = field(repr=False)
    run_embedding: np.ndarray = field(repr=False)
    answers: dict[str, pd.DataFrame] = field(repr=False)
    settings: dict[str, object]


def apply_fmrilm(model: FmriLM | str | Path, runs: Sequence[LMRun],
                 decoding: DecodingConfig | None = None, llm_dir: str | Path | None = None,
                 cache_dir: str | Path | None = None, device: torch.device = CPU,
                 captions: bool = True) -> dict[str, RunOutputs]:
    """Captions, embeddings and answers of each run from a trained model.

    Parameters
    ----------
    model : FmriLM, str or Path
        A model, or its folder (``<fit out_dir>/model``).
    runs : sequence of LMRun
        Only tokens, onsets/durations and events are used.
    decoding : DecodingConfig, optional
        Caption generation settings (greedy by default); recorded in each output.
    llm_dir, cache_dir : str or Path, optional
        Backbone folder (when it moved since training) and models cache.
    device : torch.device, default=CPU
        Where the model runs (resolved by the caller).
    captions : bool, default=True
        Generate captions (the slow part); False gives embeddings and answers only.

    Returns
    -------
    dict of str to RunOutputs
        Keyed by run (:attr:`LMRun.key`).
    """

    decoding = decoding or DecodingConfig()
    if not isinstance(model, FmriLM):
        source = str(model)
        model = FmriLM.from_pretrained(model, llm_dir, cache_dir, device)
    else:
        source = "in memory"
        model.to(device).eval()
    outputs = {}
    with model.merged(), Heartbeat("Captions, embeddings and answers", len(runs),
                                   "runs") as beat:
        for number, run in enumerate(runs, start=1):
            started = time.perf_counter()
            answers = answer_tasks(model, run, decoding)
            condition = condition_task(model)
            windows, events = run_captions(
                model, run, decoding, answers.get(condition.name) if condition else None
            ) if captions else (None, None)
            n_captions = (len(windows) if windows is not None else 0) + (
                int((events["caption"] != "n/a").sum()) if events is not None else 0)
            rate = n_captions / (time.perf_counter() - started) if n_captions else None
            patches, vector = fmri_embeddings(model, run)
            outputs[run.key] = RunOutputs(
                window_captions=windows, event_captions=events, patch_embeddings=patches,
                run_embedding=vector, answers=answers,
                settings={"model": source, "backbone": model.backbone,
                          "decoding": decoding.to_dict(), "captions_per_second": rate})
            beat.advance()
            LOGGER.info("[%d/%d] %s: %d captions, embeddings and answers in %.0f s", number,
                        len(runs), run.key, n_captions, time.perf_counter() - started)
    return outputs
