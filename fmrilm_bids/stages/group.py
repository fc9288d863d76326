"""``group``: fMRI-LM trained on the participant level's outputs of the selected runs.

Stage 1 (descriptors and tokenizer, :mod:`fmrilm_bids.stages.stage1`) writes every run's
descriptors and tokens and publishes its model folder; Stages 2-3
(:mod:`fmrilm_bids.fmrilm.llm`) then train the language model, every run gets its captions,
embeddings and answers (:mod:`fmrilm_bids.stages.language`), and ``group.html`` shows the
held-out results. Training state (checkpoints) lives in ``WORK_DIR/fmrilm_training`` so a
killed ``group`` resumes; the trained model is published whole into
``OUTPUT_DIR/models/fmrilm``:

```
models/fmrilm/stage1.json                 atlas, parcels and networks, settings, split
models/fmrilm/descriptor_reference.json   cohort reference of the descriptors (z-scores)
models/fmrilm/tokenizer/                  Stage 1 (safetensors + config + model card)
models/fmrilm/lm/                         Stages 2-3 (LoRA adapters, fMRI-token embeddings,
                                          tokenizer, config, model card)
models/fmrilm/metrics.json                held-out-subject evaluation
models/fmrilm/README.md                   the model card
models/fmrilm/decoding/                   the shared decoders (fmrilm_bids.stages.decoding)
```

Launched by ``torchrun`` (or ``accelerate launch``) the group level is data parallel: the
main process trains Stage 1 and writes its files, every process trains Stages 2-3 on its
share of each batch (:class:`~fmrilm_bids.utils.devices.DistributedContext`), the runs'
captions, embeddings and answers are shared out between the processes, and the main process
alone publishes the model and the report.

The device and the seed are resolved here, once (:func:`run_group_level`), and passed down.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from fmrilm_bids.config import Config, WorkflowConfig
from fmrilm_bids.dataset.layout import Selection
from fmrilm_bids.errors import InputDataError
from fmrilm_bids.fmrilm.llm.config import DecodingConfig, FmriLMConfig, LMTrainConfig
from fmrilm_bids.fmrilm.llm.pipeline import fit_fmrilm
from fmrilm_bids.fmrilm.llm.runs import LMRun
from fmrilm_bids.fmrilm.llm.tasks import TaskSpec, default_tasks
from fmrilm_bids.fmrilm.tokenizer.config import TokenizerConfig, TrainConfig
from fmrilm_bids.reports.html import render_report, section
from fmrilm_bids.reports.language import metrics_figures
from fmrilm_bids.stages.bundle import Stage1Model, Stage1Settings
from fmrilm_bids.stages.decoding import run_decoding_group
from fmrilm_bids.stages.inputs import atlas_name, read_participants
from fmrilm_bids.stages.language import (
    LM_FOLDER,
    apply_language_model,
    llm_embedder,
    lm_run,
    publish_model,
    write_language_reports,
)
from fmrilm_bids.stages.outputs import (
    CORPUS_FILE,
)
from fmrilm_bids.stages.stage1 import Stage1Run, describe_and_tokenize, run_stage1_group
from fmrilm_bids.utils.devices import distributed_context, set_precision
from fmrilm_bids.utils.environment import keep_freed_memory
from fmrilm_bids.utils.files import atomic_write_text

LOGGER = logging.getLogger(__name__)

MODEL_FOLDER = Path("models") / "fmrilm"


def train_stage1(selection: Selection, config: Config, atlas: str,
                 device: torch.device) -> list[Stage1Run]:
    """Stage 1 on the selected runs: model published into ``OUTPUT_DIR/models/fmrilm``,
    every run's descriptors and tokens written
    (:func:`~fmrilm_bids.stages.stage1.run_stage1_group`).
    """

    execution, workflow = config.execution, config.workflow
    embedder, hidden, name = llm_embedder(workflow.llm_dir, device)
    settings = Stage1Settings(tokenizer=TokenizerConfig(llm_hidden=hidden, text_dim=hidden),
                              training=TrainConfig(steps=workflow.tokenizer_steps),
                              reference_group=workflow.reference_group,
                              networks=workflow.networks)
    result = run_stage1_group(
        selection, execution.output_dir, execution.bids_dir,
        execution.output_dir / MODEL_FOLDER, atlas=atlas, settings=settings,
        text_embedder=embedder, text_embedder_name=name,
        work_dir=execution.work_dir / "fmrilm_training", seed=config.seeds.master,
        device=device, resume=True)
    return result.runs


#: Questions that come from the runs themselves (the others are participants.tsv columns).
RUN_QUESTIONS = ("condition", "stimulus", "rest_vs_task")


def check_questions(workflow: WorkflowConfig, participants: pd.DataFrame | None,
                    bids_dir: Path) -> None:
    """Fail early on ``--questions`` columns that ``participants.tsv`` lacks, and on
    ``--zero-shot`` names that cannot be questions.

    Raises
    ------
    InputDataError
    """
    path = Path(bids_dir) / "participants.tsv"
    columns = list(participants.columns[1:]) if participants is not None else []
    missing = [c for c in workflow.questions or () if c not in columns]
    if missing:
        raise InputDataError(f"{path}: no column {', '.join(missing)} for --questions; its "
                             f"columns are {', '.join(columns) or 'none'}.")
    possible = [*RUN_QUESTIONS, *(workflow.questions if workflow.questions is not None
                                  else [c for c in ("sex", "age", "group", "diagnosis")
                                        if c in columns])]
    unknown = [name for name in workflow.zero_shot if name not in possible]
    if unknown:
        raise InputDataError(f"--zero-shot {' '.join(unknown)}: not a question of this run; "
                             f"choose among {', '.join(possible)} (--questions adds "
                             f"columns of {path}).")


def stage3_questions(runs: Sequence[LMRun], participants: pd.DataFrame | None,
                     test_subjects: Sequence[str], workflow: WorkflowConfig) -> list[TaskSpec]:
    """The questions the training runs can answer (:func:`~fmrilm_bids.fmrilm.llm.default_tasks`),
    the ``--zero-shot`` ones among them.

    Raises
    ------
    InputDataError
        For a ``--zero-shot`` question these runs cannot answer (no events, one kind of run).
    """

    tasks = default_tasks([run for run in runs if run.subject not in test_subjects],
                          participants, workflow.questions)
    names = [task.name for task in tasks]
    absent = [name for name in workflow.zero_shot if name not in names]
    if absent:
        raise InputDataError(f"--zero-shot {' '.join(absent)}: the training runs cannot "
                             f"answer it (no events with it, or one kind of run); their "
                             f"questions are {', '.join(names) or 'none'}.")
    return tasks


def run_group_level(selection: Selection, config: Config) -> Path:
    """Train fMRI-LM on the selected runs, write every run's outputs, publish the model.

    Returns
    -------
    Path
        The model folder (``OUTPUT_DIR/models/fmrilm``).
    """

    execution, workflow = config.execution, config.workflow
    output_dir, bids_dir = execution.output_dir, execution.bids_dir
    context = distributed_context()
    # The edge: --device resolved once (this process's GPU in a parallel run), passed down.
    seed, device = config.seeds.master, context.device(workflow.device)
    LOGGER.info("Models run on %s (CPU precision %s)", device, set_precision(workflow.precision))
    keep_freed_memory()
    atlas = atlas_name(workflow.atlases[0])
    model_dir = output_dir / MODEL_FOLDER
    participants = read_participants(bids_dir)
    check_questions(workflow, participants, bids_dir)

    # Stage 1 on the main process; the others read its published model.
    stage1_runs = train_stage1(selection, config, atlas, device) if context.is_main else None
    context.barrier()
    stage1 = Stage1Model.load(model_dir)
    if stage1_runs is None:
        stage1_runs = describe_and_tokenize(selection, output_dir, stage1, device)
    corpus = pd.read_csv(output_dir / CORPUS_FILE, sep="\t", keep_default_na=False)

    stage2_epochs, stage3_epochs = workflow.lm_epochs
    LOGGER.info("Stages 2-3: language model (%s)", f"{workflow.lm_steps} steps per stage"
                if workflow.lm_steps else f"epochs {stage2_epochs:g} and {stage3_epochs:g}")
    stage2, stage3 = (LMTrainConfig(steps=workflow.lm_steps, epochs=epochs, seed=seed,
                                    gradient_checkpointing=workflow.gradient_checkpointing)
                      for epochs in workflow.lm_epochs)
    test_subjects = stage1.info["TestSubjects"]
    decoding = DecodingConfig(seed=seed)
    lm_runs = [lm_run(r.run, r.tokens, r.descriptors) for r in stage1_runs]
    tokenizer = stage1.tokenizer()
    fit = fit_fmrilm(
        lm_runs, participants, execution.work_dir / "fmrilm_training" / LM_FOLDER,
        FmriLMConfig(codebook_size=stage1.info["Tokenizer"]["codebook_size"],
                     fmri_inputs=workflow.fmri_inputs, seed=seed),
        stage2=stage2, stage3=stage3,
        token_embeddings=tokenizer.token_embeddings_for_llm().detach(),
        projection=tokenizer.llm_projection(), llm_dir=workflow.llm_dir,
        tasks=stage3_questions(lm_runs, participants, test_subjects, workflow),
        held_out_tasks=workflow.zero_shot, test_subjects=test_subjects,
        few_shot_k=workflow.few_shot_k,
        corpus_texts=corpus.loc[corpus["split"] == "train", "text"].tolist(),
        decoding=decoding, evaluate=bool(test_subjects), resume=True, device=device)
    apply_language_model(fit.model, stage1_runs, output_dir, bids_dir, atlas, device, decoding,
                         rank=context.rank, world_size=context.world_size)
    context.barrier()
    if context.is_main:
        publish_model(stage1, fit.model_dir, fit.metrics)
        decoding = run_decoding_group(selection, config, device, model_dir)
        write_group_report(output_dir, fit.metrics, stage1.info, decoding)
        write_language_reports(stage1_runs, output_dir,
                               stage1.info["Tokenizer"]["codebook_size"])
        LOGGER.info("Model published to %s", model_dir)
    return model_dir


def write_group_report(output_dir: Path, metrics: dict, stage1_info: dict,
                       extra_sections: Sequence[dict] = ()) -> Path:
    """``group.html``: the model's held-out results, as figures (the model against its
    baselines and chance, :func:`~fmrilm_bids.reports.language.metrics_figures`) and
    tables, then ``extra_sections`` (the decoders')."""

    rows = [[task, setting, metric, value]
            for task, settings in (metrics.get("tasks") or {}).items()
            if isinstance(settings, dict)
            for setting, values in settings.items() if isinstance(values, dict)
            for metric, value in values.items() if isinstance(value, int | float)]
    sections = [
        section("Stage 1: tokenizer", [
            f"Atlas {stage1_info['Atlas']}, {len(stage1_info['Parcels'])} parcels; trained on "
            f"{', '.join(stage1_info['TrainSubjects'])}, held out: "
            f"{', '.join(stage1_info['TestSubjects']) or 'none'}; "
            f"{len(stage1_info['ExcludedParcels'])} parcels left out (no signal in some runs)."],
            tables=[("Held-out tokenizer metrics", ["metric", "value"],
                     [[k, v] for k, v in stage1_info["Metrics"].items()])]),
        section("Stages 2-3: language model", [
            "Held-out-subject evaluation (models/fmrilm/metrics.json)."
            if metrics else "No held-out subject: no evaluation."],
            figures=metrics_figures(metrics),
            tables=[("Held-out results", ["task", "setting", "metric", "value"], rows)]
            if rows else []),
    ]
    path = output_dir / "group.html"
    atomic_write_text(path, render_report("group", [*sections, *extra_sections]))
    return path
