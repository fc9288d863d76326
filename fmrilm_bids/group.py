"""fMRI-LM on a derivatives tree: ``group`` trains the three stages, ``participant --model``
applies a trained model.

Both start from the participant level's denoised parcel series
(:mod:`fmrilm_bids.derivative_runs`) and write, per run, the descriptors, tokens, captions,
embeddings and answers (:mod:`fmrilm_bids.fmrilm_outputs`). Training state (checkpoints)
lives in ``WORK_DIR/fmrilm_training`` so a killed ``group`` resumes; the trained model is
published whole into ``OUTPUT_DIR/models/fmrilm``:

```
models/fmrilm/descriptor_reference.json   cohort reference of the descriptors (z-scores)
models/fmrilm/stage1.json                 atlas, parcels, settings
models/fmrilm/tokenizer/                  Stage 1 (safetensors + config + model card)
models/fmrilm/lm/                         Stages 2-3 (LoRA adapters, fMRI-token embeddings,
                                          tokenizer, config, model card)
models/fmrilm/metrics.json                held-out-subject evaluation
```
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fmrilm_bids.dataset.derivatives import atomic_write_text
from fmrilm_bids.dataset.layout import Selection
from fmrilm_bids.derivative_runs import DerivativeRun, collect_runs, read_participants
from fmrilm_bids.descriptors.corpus import RunDescriptors, RunInput, build_corpus, describe_dataset
from fmrilm_bids.descriptors.reference import DescriptorReference
from fmrilm_bids.errors import InputDataError, MissingInputError
from fmrilm_bids.fmrilm_outputs import (
    answers_table,
    captions_table,
    run_sources,
    write_run_array,
    write_run_table,
)
from fmrilm_bids.tokenizer.data import ParcelRun, TokenizedRun

LOGGER = logging.getLogger("fmrilm_bids")

MODEL_FOLDER = Path("models") / "fmrilm"
REFERENCE_FILE = "descriptor_reference.json"
STAGE1_FILE = "stage1.json"
METRICS_FILE = "metrics.json"


def atlas_name(atlas: str) -> str:
    """The ``seg-`` label the participant level used for ``atlas`` (name or file)."""
    from fmrilm_bids.atlases import load_atlas

    return load_atlas(atlas).name


def network_table(atlas: str) -> pd.DataFrame | None:
    """The shipped network table of a bundled atlas; None for a user atlas (data-driven)."""
    from fmrilm_bids.descriptors.networks import load_network_table

    try:
        return load_network_table(atlas)
    except (FileNotFoundError, ValueError):
        return None


def common_parcels(runs: Sequence[DerivativeRun]) -> list[str]:
    """Parcels with signal in every run (a parcel outside one run's field of view is left
    out of the whole group, and logged)."""
    names = list(runs[0].timeseries.columns)
    shared = set.intersection(*(set(run.timeseries.columns) for run in runs))
    dropped = [name for name in names if name not in shared]
    if dropped:
        LOGGER.info("Parcels missing from some runs, left out of the model: %s",
                    ", ".join(dropped))
    return [name for name in names if name in shared]


def restrict_parcels(runs: Sequence[DerivativeRun], parcels: Sequence[str]) -> None:
    """Keep ``parcels`` (in that order) in every run; a run without one is an input error."""
    for run in runs:
        absent = [p for p in parcels if p not in run.timeseries.columns]
        if absent:
            raise InputDataError(
                f"{run.timeseries_file}: parcels {', '.join(absent[:5])} have no signal "
                "(outside the field of view), but the model needs them; apply a model "
                "trained on data with the same coverage.")
        run.timeseries = run.timeseries[list(parcels)]


def describe(runs: Sequence[DerivativeRun], atlas: str,
             reference: DescriptorReference | None, seed: int
             ) -> tuple[dict[str, RunDescriptors], DescriptorReference]:
    """Descriptors of every run against the cohort (or a saved ``reference``)."""
    inputs = {run.key: RunInput(run.timeseries, run.tr, run.confounds,
                                run.events_in_series_time()) for run in runs}
    table = network_table(atlas) if reference is None else None
    return describe_dataset(inputs, table, reference=reference, seed=seed)


def window_texts(descriptors: RunDescriptors) -> list[str]:
    """The descriptor sentence of every window of a run."""
    records = descriptors.records
    return records.loc[records["scope"] == "window", "text"].tolist()


def run_text(descriptors: RunDescriptors) -> str:
    records = descriptors.records
    return " ".join(records.loc[records["scope"] == "run", "text"])


def parcel_run(run: DerivativeRun, networks: Sequence[str], texts: list[str] | None,
               target_tr: float, patch_length: int) -> ParcelRun:
    """The tokenizer's view of a run; window texts kept when they pair one to one with the
    tokenizer's patches (same window length)."""
    n_patches = int(len(run.timeseries) * run.tr / target_tr) // patch_length
    return ParcelRun(timeseries=run.timeseries.to_numpy(dtype=float), tr=run.tr,
                     networks=list(networks), subject=run.bold.subject,
                     window_texts=texts[:n_patches] if texts and len(texts) >= n_patches
                     else None)


def tokenize(tokenizer: object, run: DerivativeRun, parcels: ParcelRun) -> TokenizedRun:
    """Tokens of a run, with onsets counted from the run's first volume (BIDS time)."""
    tokenized = tokenizer.tokenize(parcels)
    tokenized.onsets = tokenized.onsets + run.start_time
    return tokenized


def lm_run(run: DerivativeRun, tokenized: TokenizedRun, descriptors: RunDescriptors) -> object:
    """The language model's view of a run."""
    from fmrilm_bids.llm.data import LMRun

    texts = window_texts(descriptors)
    return LMRun.from_tokenized(
        tokenized, subject=run.bold.subject, task=run.bold.task, session=run.bold.session,
        run=run.bold.run, events=run.events, run_text=run_text(descriptors),
        window_texts=texts[:len(tokenized.token_ids)]
        if len(texts) >= len(tokenized.token_ids) else None,
        timeseries=run.timeseries.to_numpy(dtype=float), tr=run.tr)


def write_stage1_outputs(run: DerivativeRun, descriptors: RunDescriptors,
                         tokenized: TokenizedRun, atlas: str, model_hash: str,
                         tokenizer_config: dict, output_dir: Path, bids_dir: Path) -> None:
    """The run's descriptors and tokens."""
    sources = run_sources(output_dir, run.bold, bids_dir, run.timeseries_file)
    records = descriptors.records.assign(onset=descriptors.records["onset"] + run.start_time)
    write_run_table(output_dir, run.bold, records, "text", "descriptors", atlas,
                    {"Description": "Descriptor corpus of the run: one run paragraph, then "
                     "one sentence per window.", **descriptors.metadata}, sources)
    write_run_table(output_dir, run.bold, tokenized.to_frame(), "tokens", "fmrilm", atlas,
                    {"Description": "fMRI-LM Stage-1 token of each time patch.",
                     "CodebookSize": tokenizer_config["codebook_size"],
                     "RepetitionTime": run.tr, "TargetRepetitionTime":
                     tokenizer_config["target_tr"], "PatchLength":
                     tokenizer_config["patch_length"], "ModelHash": model_hash}, sources)


def write_lm_outputs(run: DerivativeRun, outputs: object, atlas: str, output_dir: Path,
                     bids_dir: Path, windows: tuple[np.ndarray, np.ndarray]) -> None:
    """The run's captions, embeddings and answers (:class:`~fmrilm_bids.llm.RunOutputs`)."""
    sources = run_sources(output_dir, run.bold, bids_dir, run.timeseries_file)
    settings = {"Model": str(outputs.settings["model"]),
                "Backbone": str(outputs.settings["backbone"]),
                "Decoding": outputs.settings["decoding"]}
    write_run_table(output_dir, run.bold, captions_table(outputs.window_captions,
                                                         outputs.event_captions),
                    "captions", "fmrilm", atlas,
                    {"Description": "Captions generated by fMRI-LM for every time window "
                     "and every event.", **settings}, sources)
    onsets, durations = windows
    write_run_array(output_dir, run.bold, outputs.patch_embeddings, "fmrilm", atlas,
                    {"Description": "Pooled LM hidden state of each time patch (rows).",
                     "Onset": onsets.tolist(), "Duration": durations.tolist(), **settings},
                    sources)
    write_run_array(output_dir, run.bold, outputs.run_embedding[None, :], "fmrilmrun", atlas,
                    {"Description": "Pooled LM hidden state of the whole run.", **settings},
                    sources)
    write_run_table(output_dir, run.bold, answers_table(outputs.answers), "text", "answers",
                    atlas, {"Description": "Answers of fMRI-LM to the tuned questions; "
                            "p_<answer>: probability of each allowed answer.", **settings},
                    sources)


def _publish(model_dir: Path, files: dict[str, Path | str]) -> None:
    """Replace ``model_dir`` by a folder holding ``files`` (name -> folder, file or text)."""
    from fmrilm_bids.llm.io import publish_directory

    def write(folder: Path) -> None:
        for name, content in files.items():
            if isinstance(content, str):
                (folder / name).write_text(content)
            elif content.is_dir():
                shutil.copytree(content, folder / name,
                                ignore=shutil.ignore_patterns("trainer_state*", "checkpoint*"))
            else:
                shutil.copy2(content, folder / name)

    publish_directory(model_dir, write)


def _selected(runs: Sequence[DerivativeRun]) -> None:
    if not runs:
        raise MissingInputError("No BOLD run selected; check --participant-label/--task-id.")


def run_group_level(selection: Selection, config: object) -> Path:
    """Train fMRI-LM on the selected runs, write every run's outputs, publish the model.

    Returns
    -------
    Path
        The model folder (``OUTPUT_DIR/models/fmrilm``).
    """
    from fmrilm_bids.backend import resolve_device
    from fmrilm_bids.llm.backbone import llm_text_embedder
    from fmrilm_bids.llm.evaluate import subject_split
    from fmrilm_bids.llm.model import FmriLMConfig
    from fmrilm_bids.llm.pipeline import apply_fmrilm, fit_fmrilm
    from fmrilm_bids.llm.train import LMTrainConfig
    from fmrilm_bids.tokenizer.model import TokenizerConfig
    from fmrilm_bids.tokenizer.train import TrainConfig, train_tokenizer

    execution, workflow = config.execution, config.workflow
    output_dir, bids_dir = execution.output_dir, execution.bids_dir
    seed, device = config.seeds.master, str(resolve_device(workflow.device))
    atlas = atlas_name(workflow.atlases[0])
    runs = collect_runs(selection, output_dir, atlas)
    _selected(runs)
    parcels = common_parcels(runs)
    restrict_parcels(runs, parcels)
    training = execution.work_dir / "fmrilm_training"

    LOGGER.info("Descriptors of %d runs (atlas %s, %d parcels)", len(runs), atlas, len(parcels))
    described, reference = describe(runs, atlas, None, seed)
    corpus = build_corpus({key: d.metadata for key, d in described.items()}, seed=seed)
    atomic_write_text(output_dir / "group" / "desc-descriptors_corpus.tsv",
                      corpus.to_csv(sep="\t", index=False, na_rep="n/a"))

    subjects = sorted({run.bold.subject for run in runs})
    train_subjects, test_subjects = (subject_split(subjects, seed=seed) if len(subjects) > 1
                                     else (subjects, []))
    LOGGER.info("Stage 1: tokenizer (train %s; held out %s)", ", ".join(train_subjects),
                ", ".join(test_subjects) or "none")
    embedder = llm_text_embedder(workflow.llm_dir, device=device)
    hidden = int(embedder(["fMRI"]).shape[1])
    tokenizer_config = TokenizerConfig(llm_hidden=hidden, text_dim=hidden)
    parcel_runs = {run.key: parcel_run(run, reference.networks, window_texts(described[run.key]),
                                       tokenizer_config.target_tr, tokenizer_config.patch_length)
                   for run in runs}
    stage1 = train_tokenizer(
        [parcel_runs[r.key] for r in runs if r.bold.subject in train_subjects],
        [parcel_runs[r.key] for r in runs if r.bold.subject in test_subjects],
        training / "tokenizer", tokenizer_config,
        TrainConfig(steps=workflow.tokenizer_steps, seed=seed, device=device),
        text_embedder=embedder, resume=True)
    del embedder
    tokenizer = stage1.model.eval()
    model_hash = tokenizer_hash(training / "tokenizer")
    tokenized = {run.key: tokenize(tokenizer, run, parcel_runs[run.key]) for run in runs}
    for run in runs:
        write_stage1_outputs(run, described[run.key], tokenized[run.key], atlas, model_hash,
                             tokenizer_config.to_dict(), output_dir, bids_dir)

    LOGGER.info("Stages 2-3: language model (%d steps per stage)", workflow.lm_steps)
    lm_runs = [lm_run(run, tokenized[run.key], described[run.key]) for run in runs]
    stage_config = LMTrainConfig(steps=workflow.lm_steps, seed=seed, device=device)
    fit = fit_fmrilm(lm_runs, read_participants(bids_dir), training / "lm",
                     FmriLMConfig(codebook_size=tokenizer_config.codebook_size, seed=seed),
                     stage2=stage_config, stage3=stage_config,
                     token_embeddings=tokenizer.token_embeddings_for_llm().detach().cpu(),
                     llm_dir=workflow.llm_dir, test_subjects=test_subjects,
                     corpus_texts=corpus["text"].tolist(), evaluate=bool(test_subjects),
                     resume=True)
    outputs = apply_fmrilm(fit.model, lm_runs, device=device)
    for run, lm in zip(runs, lm_runs, strict=True):
        write_lm_outputs(run, outputs[lm.key], atlas, output_dir, bids_dir,
                         (lm.onsets, lm.durations))

    model_dir = output_dir / MODEL_FOLDER
    reference_file = training / REFERENCE_FILE
    reference.save(reference_file)
    stage1_info = {"Atlas": atlas, "AtlasSource": str(workflow.atlases[0]),
                   "Parcels": parcels, "TokenizerHash": model_hash,
                   "TrainSubjects": train_subjects, "TestSubjects": test_subjects}
    _publish(model_dir, {REFERENCE_FILE: reference_file, "tokenizer": training / "tokenizer",
                         "lm": fit.model_dir, STAGE1_FILE: json.dumps(stage1_info, indent=1),
                         METRICS_FILE: json.dumps(fit.metrics, indent=1, default=str)})
    write_group_report(output_dir, fit.metrics, stage1.metrics, stage1_info)
    LOGGER.info("Model published to %s", model_dir)
    return model_dir


def apply_model(selection: Selection, config: object) -> None:
    """``participant --model DIR``: descriptors, tokens, captions, embeddings and answers
    of the selected runs from a model trained by ``group``."""
    from fmrilm_bids.backend import resolve_device
    from fmrilm_bids.llm.pipeline import apply_fmrilm
    from fmrilm_bids.tokenizer.model import NeuralTokenizer

    execution, workflow = config.execution, config.workflow
    model_dir = Path(workflow.model_dir)
    if not (model_dir / STAGE1_FILE).is_file():
        raise MissingInputError(f"{model_dir}: not an fmrilm-bids model (no {STAGE1_FILE}); "
                                "give --model OUTPUT_DIR/models/fmrilm of a group run.")
    info = json.loads((model_dir / STAGE1_FILE).read_text())
    device = str(resolve_device(workflow.device))
    atlas = info["Atlas"]
    runs = collect_runs(selection, execution.output_dir, atlas)
    _selected(runs)
    restrict_parcels(runs, info["Parcels"])
    reference = DescriptorReference.load(model_dir / REFERENCE_FILE)
    described, _ = describe(runs, atlas, reference, config.seeds.master)
    tokenizer = NeuralTokenizer.from_pretrained(model_dir / "tokenizer", device).eval()
    tokenizer_config = tokenizer.config
    tokenized = {}
    for run in runs:
        parcels = parcel_run(run, reference.networks, None, tokenizer_config.target_tr,
                             tokenizer_config.patch_length)
        tokenized[run.key] = tokenize(tokenizer, run, parcels)
        write_stage1_outputs(run, described[run.key], tokenized[run.key], atlas,
                             info["TokenizerHash"], tokenizer_config.to_dict(),
                             execution.output_dir, execution.bids_dir)
    lm_runs = [lm_run(run, tokenized[run.key], described[run.key]) for run in runs]
    outputs = apply_fmrilm(model_dir / "lm", lm_runs, llm_dir=workflow.llm_dir, device=device)
    for run, lm in zip(runs, lm_runs, strict=True):
        write_lm_outputs(run, outputs[lm.key], atlas, execution.output_dir,
                         execution.bids_dir, (lm.onsets, lm.durations))


def tokenizer_hash(folder: Path) -> str:
    """SHA-256 of the tokenizer weights (``sha256:<hex>``)."""
    import hashlib

    from fmrilm_bids.tokenizer.model import WEIGHTS_FILE

    return "sha256:" + hashlib.sha256((folder / WEIGHTS_FILE).read_bytes()).hexdigest()


def write_group_report(output_dir: Path, metrics: dict, tokenizer_metrics: dict,
                       stage1_info: dict) -> Path:
    """``group.html``: the model's held-out results, as tables."""
    from fmrilm_bids import reports

    rows = [[task, setting, metric, value]
            for task, settings in (metrics.get("tasks") or {}).items()
            if isinstance(settings, dict)
            for setting, values in settings.items() if isinstance(values, dict)
            for metric, value in values.items() if isinstance(value, int | float)]
    sections = [
        reports.section("Stage 1: tokenizer", [
            f"Atlas {stage1_info['Atlas']}, {len(stage1_info['Parcels'])} parcels; trained on "
            f"{', '.join(stage1_info['TrainSubjects'])}, held out: "
            f"{', '.join(stage1_info['TestSubjects']) or 'none'}."],
            tables=[("Held-out tokenizer metrics", ["metric", "value"],
                     [[k, v] for k, v in tokenizer_metrics.items()])]),
        reports.section("Stages 2-3: language model", [
            "Held-out-subject evaluation (models/fmrilm/metrics.json)."
            if metrics else "No held-out subject: no evaluation."],
            tables=[("Held-out results", ["task", "setting", "metric", "value"], rows)]
            if rows else []),
    ]
    path = output_dir / "group.html"
    atomic_write_text(path, reports.render_report("group", sections))
    return path
