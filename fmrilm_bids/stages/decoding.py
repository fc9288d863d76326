"""Decoding across participants: ``group`` trains the shared decoder; ``participant --model``
fits a new participant's adapter and decodes.

Both read what the participant level wrote for every run of a task with stimulus models:
its LSS betas (``<run>_space-<tpl>_desc-lss_betas.nii.gz`` and ``.tsv``). Per task:

``group`` (:func:`run_decoding_group`)
    * the held-out figures of the participants' own decoders, pooled over participants
      (the decoders are fitted again exactly as the participant level did; the generated
      captions are read from its ``desc-decoded_captions.tsv``), with permutation p-values
      shuffling within participants: ``group/task-<t>_desc-decoding_metrics.tsv``;
    * with two participants or more, the few-shot test of the cross-subject decoder
      (:func:`~fmrilm_bids.stimulus.adapters.few_shot_evaluation`, each participant in turn
      as the new one, its adapter fitted on :data:`ADAPTER_FRACTION` of its units):
      ``group/task-<t>_desc-fewshot_metrics.tsv``;
    * the shared decoder trained on every participant, published in the model folder
      (``models/fmrilm/decoding/task-<t>/``: ``mask.nii.gz``, the voxels it reads;
      ``decoder.json`` and ``decoder.safetensors``; beside the tasks, ``metrics.json`` and
      ``README.md``), and which networks its decoded embeddings come from
      (:func:`~fmrilm_bids.stimulus.attribution.network_ablation`):
      ``group/task-<t>_desc-decoding_attribution.tsv``;
    * a section of ``group.html``.

    On the CPU, the decoders' independent fits (folds) run side by side on ``--nprocs``
    worker processes (:func:`processes`).

``participant --model`` (:func:`apply_shared_decoder`)
    A participant's units decoded by the shared decoder through the participant's own
    adapter, fitted on the training folds only (folds as the participant level's): per run
    ``desc-adapted_captions.tsv``, ``desc-adapted_retrieval.tsv``,
    ``desc-adapted_embeddings.npy``, per task ``desc-adapted_metrics.tsv``, and a section
    of the participant's report.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch

from fmrilm_bids.config import Config
from fmrilm_bids.dataset.derivatives import bids_uri
from fmrilm_bids.dataset.layout import BoldRun, Selection
from fmrilm_bids.errors import InputDataError, MissingInputError
from fmrilm_bids.fmrilm.card import render_card
from fmrilm_bids.interfaces.bids import DerivativesDataSink
from fmrilm_bids.interfaces.decoding import (
    COLUMN_DESCRIPTIONS,
    Readout,
    caption_writer,
    decoding_metadata,
    metrics_section,
    read_out,
    unit_categories,
    unit_sentences,
    unit_targets,
    write_table,
)
from fmrilm_bids.interfaces.stimulus import betas_mask, fold_groups, read_betas
from fmrilm_bids.reports.figures import metrics_figure
from fmrilm_bids.reports.html import publish_subject_report, section
from fmrilm_bids.resources.atlases import load_atlas
from fmrilm_bids.resources.text_encoder import EMBEDDING_DIM, encode_sentences
from fmrilm_bids.stages.inputs import atlas_name, network_table
from fmrilm_bids.stimulus.adapters import (
    SharedDecoder,
    SubjectResponses,
    adapted_predictions,
    few_shot_evaluation,
    fit_shared,
)
from fmrilm_bids.stimulus.attribution import network_ablation, pool_attributions
from fmrilm_bids.stimulus.decoding import DEFAULT_CONFIG, HeldOut, held_out, stack_held_out
from fmrilm_bids.stimulus.encoding import group_folds
from fmrilm_bids.stimulus.features import trial_type_sentence
from fmrilm_bids.stimulus.readout import N_PERMUTATIONS, evaluation_table, retrieval_accuracy
from fmrilm_bids.utils.files import atomic_write_text, publish_directory

LOGGER = logging.getLogger(__name__)

#: The shared decoders' folder inside the model folder.
DECODING_FOLDER = "decoding"
#: Share of a new participant's units its adapter is fitted on in the few-shot test.
ADAPTER_FRACTION = 0.25
#: The few-shot settings (:func:`~fmrilm_bids.stimulus.adapters.few_shot_evaluation`).
FEW_SHOT_SETTINGS = ("own", "adapted", "shared", "own_fraction")
MASK_FILE = "mask.nii.gz"


@dataclass
class TaskBetas:
    """One participant's LSS betas of the runs of a task (participant-level outputs)."""

    subject: str
    runs: list[BoldRun]
    files: list[Path] = field(repr=False)
    tables: list[Path] = field(repr=False)
    space: str = ""

    @property
    def captions_files(self) -> list[Path]:
        """The participant level's ``desc-decoded_captions.tsv`` of each run."""
        return [f.with_name(f.name.replace("desc-lss_betas.nii.gz",
                                           "desc-decoded_captions.tsv")) for f in self.files]



def find_betas(selection: Selection, output_dir: Path) -> dict[str, list[TaskBetas]]:
    """Every selected participant's betas, by task, where the participant level decoded the
    task (its ``desc-decoded_captions.tsv`` exist: enough units for cross-validation);
    runs without betas are left out."""
    found: dict[str, list[TaskBetas]] = {}
    for subject in selection.subjects:
        by_task: dict[str, TaskBetas] = {}
        for run in subject.bold:
            folder = Path(output_dir) / f"sub-{run.subject}"
            folder = (folder / f"ses-{run.session}" if run.session else folder) / "func"
            files = sorted(folder.glob(f"{run.name}_space-*_desc-lss_betas.nii.gz"))
            if len(files) != 1:
                continue
            space = files[0].name[len(f"{run.name}_space-"):].split("_")[0]
            entry = by_task.setdefault(run.task, TaskBetas(run.subject, [], [], [], space))
            if space != entry.space:
                LOGGER.warning("%s: in %s, not %s like the other runs of its task; left out "
                               "of decoding", files[0], space, entry.space)
                continue
            entry.runs.append(run)
            entry.files.append(files[0])
            entry.tables.append(files[0].with_name(files[0].name.replace(".nii.gz", ".tsv")))
        for task, entry in by_task.items():
            if all(path.is_file() for path in entry.captions_files):
                found.setdefault(task, []).append(entry)
            else:
                LOGGER.info("sub-%s task-%s: not decoded at the participant level (too few "
                            "units); left out of decoding", entry.subject, task)
    return found


def _sources(participants: Sequence[TaskBetas], output_dir: Path) -> list[str]:
    return [bids_uri(path, output_dir, "") for p in participants for path in p.files]


def _write_group_table(output_dir: Path, name: str, table: pd.DataFrame,
                       sidecar: Mapping[str, object]) -> Path:
    path = Path(output_dir) / "group" / f"{name}.tsv"
    atomic_write_text(path, table.to_csv(sep="\t", index=False, na_rep="n/a",
                                         float_format="%.6g"))
    atomic_write_text(path.with_suffix(".json"), json.dumps(dict(sidecar), indent=1))
    return path


def _caption_embeddings(paths: Sequence[Path], column: str, n_units: int,
                        embed: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    """Embeddings of a column of the runs' ``desc-decoded_captions.tsv`` (NaN: none)."""
    vectors = np.full((n_units, EMBEDDING_DIM), np.nan)
    texts = pd.concat([pd.read_csv(p, sep="\t", na_values="n/a", keep_default_na=False)
                       for p in paths], ignore_index=True)[column]
    if len(texts) != n_units:
        return vectors
    present = np.flatnonzero(texts.notna().to_numpy())
    if len(present):
        vectors[present] = embed(texts.iloc[present].astype(str).tolist())
    return vectors


def processes(config: Config, device: torch.device) -> int:
    """Worker processes of the decoders' independent fits: ``--nprocs`` on the CPU, one on
    a GPU."""
    return config.nipype.nprocs if device.type == "cpu" else 1


def pooled_evaluation(participants: Sequence[TaskBetas], config: Config,
                      device: torch.device,
                      embed: Callable[[list[str]], np.ndarray]) -> pd.DataFrame:
    """The participants' own decoders, held out and pooled (see the module docstring)."""
    workflow, seed = config.workflow, config.seeds.master
    parts, targets, categories, generated, retrieved, strata = [], [], [], [], [], []
    for index, participant in enumerate(participants):
        responses, units = read_betas(participant.files, participant.tables,
                                      betas_mask(participant.files))
        groups, blocks, _ = fold_groups(units, workflow.encoding_cv)
        sentences = unit_sentences(units["caption"])
        distinct = list(dict.fromkeys(s for group in sentences for s in group))
        target = unit_targets(sentences, dict(zip(distinct, embed(distinct), strict=True)))
        kinds = unit_categories(units)
        parts.append(held_out(responses, target, groups, kinds, workflow.decoding_folds,
                              DEFAULT_CONFIG, device, seed, blocks, processes(config, device)))
        targets.append(target)
        categories.append(kinds if kinds is not None else np.full(len(units), "n/a"))
        generated.append(_caption_embeddings(participant.captions_files, "decoded_caption",
                                             len(units), embed))
        retrieved.append(_caption_embeddings(participant.captions_files,
                                             "retrieved_caption", len(units), embed))
        strata.append(np.full(len(units), index))
    kinds = np.concatenate(categories)
    names = sorted(set(kinds.tolist()) - {"n/a"})
    with_kinds = len(names) >= 2 and "n/a" not in set(kinds.tolist())
    return evaluation_table(
        stack_held_out(parts), np.vstack(targets), kinds if with_kinds else None,
        names if with_kinds else (),
        embed([trial_type_sentence(n) for n in names]) if with_kinds else None,
        np.vstack(generated), np.vstack(retrieved), np.concatenate(strata),
        seed=seed)


def _common_responses(participants: Sequence[TaskBetas], config: Config,
                      embed: Callable[[list[str]], np.ndarray]
                      ) -> tuple[list[SubjectResponses], np.ndarray, nib.Nifti1Image]:
    """Every participant's units on the voxels they all share."""
    reference = nib.load(participants[0].files[0])
    inside = np.logical_and.reduce([betas_mask(p.files) for p in participants])
    subjects = []
    for participant in participants:
        responses, units = read_betas(participant.files, participant.tables, inside)
        groups, blocks, _ = fold_groups(units, config.workflow.encoding_cv)
        sentences = unit_sentences(units["caption"])
        distinct = list(dict.fromkeys(s for group in sentences for s in group))
        subjects.append(SubjectResponses(
            participant.subject, responses,
            unit_targets(sentences, dict(zip(distinct, embed(distinct), strict=True))),
            groups, blocks))
    return subjects, inside, reference


def few_shot_table(subjects: Sequence[SubjectResponses], config: Config,
                   device: torch.device) -> pd.DataFrame:
    """Retrieval of each few-shot setting, pooled over the participants (top-1 and top-5,
    among each participant's units), and the adapted / own ratio of top-1."""
    results = few_shot_evaluation(list(subjects), ADAPTER_FRACTION,
                                  config.workflow.adapter_folds, DEFAULT_CONFIG, device,
                                  config.seeds.master, processes(config, device))
    targets = np.vstack([s.targets for s in subjects])
    strata = np.concatenate([np.full(len(s.targets), i) for i, s in enumerate(subjects)])
    rows = []
    for setting in FEW_SHOT_SETTINGS:
        decoded = np.vstack([results[s.name][setting] for s in subjects])
        for k in (1, 5):
            rows.append({"metric": f"retrieval_top{k}", "setting": setting,
                         **retrieval_accuracy(decoded, targets, k, N_PERMUTATIONS,
                                              config.seeds.master, strata)})
    table = pd.DataFrame(rows)
    subset = np.mean([results[s.name]["subset"].mean() / len(s.targets) for s in subjects])
    return table.assign(adapter_fraction=round(float(subset), 3))


#: The network of voxels outside every network of the atlas.
UNASSIGNED = "unassigned"


def voxel_networks(atlas: str, reference: nib.Nifti1Image, inside: np.ndarray) -> np.ndarray:
    """The network of every voxel ``inside`` (:data:`UNASSIGNED` outside the atlas's
    networks).

    Raises
    ------
    MissingInputError, InputDataError
        When the atlas has no network table (:func:`~fmrilm_bids.stages.inputs.network_table`).
    """
    table = network_table(atlas, [])
    labels = np.asarray(load_atlas(atlas, reference=nib.Nifti1Image(
        inside.astype(np.uint8), reference.affine)).image.dataobj)[inside]
    by_label = dict(zip(table["index"].astype(int), table["network"].astype(str),
                        strict=True))
    return np.array([by_label.get(int(v), UNASSIGNED) for v in labels])


def _card(tasks: Mapping[str, Mapping[str, object]]) -> str:
    return render_card("Shared decoder (fmrilm-bids)", """
Decoders from single-trial responses (LSS betas in template space) to the sentence embedding
of what was seen (all-MiniLM-L6-v2), shared across the training participants (See Through
Their Minds, MindBridge). `fmrilm-bids BIDS_DIR OUTPUT_DIR participant --model {the model
folder}` fits a new participant's linear adapter on its training folds and decodes its
held-out events (`desc-adapted_*` files).""", {
        f"task-{task}": {key: value for key, value in info.items()
                         if not isinstance(value, dict | list)}
        for task, info in tasks.items()})


def run_decoding_group(selection: Selection, config: Config, device: torch.device,
                       model_dir: Path) -> list[dict[str, object]]:
    """The group level's decoding (see the module docstring).

    Returns
    -------
    list of dict
        The ``group.html`` sections (none without betas).
    """
    output_dir = config.execution.output_dir
    found = find_betas(selection, output_dir)
    if not found:
        LOGGER.info("Decoding: no participant-level LSS betas (runs with events and stimulus "
                    "models); no decoder")
        return []
    embed = encode_sentences
    sections, published, summary = [], {}, {}
    for task, participants in sorted(found.items()):
        LOGGER.info("Decoding task-%s: %d participant(s)", task, len(participants))
        sources = {"Sources": _sources(participants, output_dir)}
        metrics = pooled_evaluation(participants, config, device, embed)
        _write_group_table(output_dir, f"task-{task}_desc-decoding_metrics", metrics, {
            "Description": "Held-out figures of the participants' own decoders, pooled over "
            "participants (retrieval within each participant), beside chance; permutation "
            "p-values shuffle within participants.", "Participants":
            [p.subject for p in participants], "Permutations": N_PERMUTATIONS, **sources})
        summary[task] = {"participants": [p.subject for p in participants],
                         "metrics": metrics.to_dict(orient="records")}
        paragraphs = [f"task-{task}: the held-out figures of the participants' own decoders "
                      f"({', '.join(p.subject for p in participants)}), pooled."]
        tables: list = []
        figures: list = []
        if len(participants) >= 2:
            subjects, inside, reference = _common_responses(participants, config, embed)
            few_shot = few_shot_table(subjects, config, device)
            _write_group_table(output_dir, f"task-{task}_desc-fewshot_metrics", few_shot, {
                "Description": "Each participant as a new one: its own decoder trained on all "
                "its training units ('own'), the shared decoder trained on the others with an "
                f"adapter fitted on {ADAPTER_FRACTION:.0%} of its units ('adapted'), without "
                "adapter ('shared'), and its own decoder on those few units "
                "('own_fraction'); retrieval among its held-out units, pooled.", **sources})
            shared = fit_shared(subjects, DEFAULT_CONFIG, device, config.seeds.master)
            attribution = _attribution(shared, subjects, config, reference, inside)
            if attribution is not None:
                _write_group_table(output_dir, f"task-{task}_desc-decoding_attribution",
                                   attribution, {
                                       "Description": "Each network's contribution to the "
                                       "shared decoder's decoded embeddings, by ablation (its "
                                       "voxels set to the participant's mean).",
                                       "Atlas": atlas_name(config.workflow.atlases[0]),
                                       **sources})
                figures.append(("Network ablation: drop of the decoded embedding's similarity "
                                "to the true caption, and its change, per network.",
                                metrics_figure({r.network: {
                                    "similarity drop": r.similarity_drop,
                                    "embedding change": r.embedding_change}
                                    for r in attribution.itertuples()}, "ablation effect")))
                tables.append(("Attribution by network (ablation)", list(attribution.columns),
                               attribution.to_numpy().tolist()))
                summary[task]["attribution"] = attribution.to_dict(orient="records")
            summary[task]["few_shot"] = few_shot.to_dict(orient="records")
            tables.append(("Few-shot: each participant as the new one (retrieval among its "
                           "held-out units)", list(few_shot.columns),
                           few_shot.to_numpy().tolist()))
            kept = np.zeros(inside.shape, dtype=np.uint8)
            kept[tuple(np.argwhere(inside)[shared.voxels].T)] = 1
            published[task] = (shared, nib.Nifti1Image(kept, reference.affine),
                               {"task": task, "space": participants[0].space,
                                "participants": [p.subject for p in participants],
                                "voxels": int(kept.sum())})
        sections.append(metrics_section(f"Decoding: task-{task}", paragraphs, metrics))
        sections[-1]["figures"] += [{"caption": c, "uri": u} for c, u in figures]
        sections[-1]["tables"] += section("", tables=tables)["tables"]
    if published:
        _publish(model_dir / DECODING_FOLDER, published, summary)
    return sections


def _attribution(shared: SharedDecoder, subjects: Sequence[SubjectResponses], config: Config,
                 reference: nib.Nifti1Image, inside: np.ndarray) -> pd.DataFrame | None:
    """Network ablation of the shared decoder on every participant (identity adapters)."""
    try:
        networks = voxel_networks(str(config.workflow.atlases[0]), reference, inside)
    except (MissingInputError, InputDataError) as err:
        LOGGER.warning("No network attribution: %s", err)
        return None
    kept = np.zeros(len(networks), dtype=bool)
    kept[shared.voxels] = True
    tables = []
    for subject in subjects:
        adapter = shared.identity(subject.responses)
        tables.append(network_ablation(lambda r, a=adapter: shared.predict(r, a),
                                       subject.responses, subject.targets, networks,
                                       kept=kept))
    return pool_attributions(tables)


def _publish(folder: Path, published: Mapping[str, tuple], summary: Mapping[str, object]
             ) -> None:
    def write(partial: Path) -> None:
        for task, (shared, mask, info) in published.items():
            target = partial / f"task-{task}"
            target.mkdir()
            shared.save(target, info)
            mask.to_filename(target / MASK_FILE)
        (partial / "metrics.json").write_text(json.dumps(summary, indent=1, default=float))
        (partial / "README.md").write_text(_card({t: v[2] for t, v in published.items()}))

    publish_directory(folder, write)
    LOGGER.info("Shared decoder(s) published to %s", folder)


def _sink(output_dir: Path, source: Sequence[Path], path: Path, suffix: str, desc: str,
          space: str, metadata: Mapping[str, object]) -> Path:
    result = DerivativesDataSink(
        base_directory=str(output_dir), in_file=str(path),
        source_file=[str(s) for s in source] if len(source) > 1 else str(source[0]),
        suffix=suffix, desc=desc, space=space, dismiss_entities=["run"] if len(source) > 1
        else [], **metadata).run()
    return Path(result.outputs.out_file)


def write_readout(output_dir: Path, bids_dir: Path, participant: TaskBetas,
                  units: pd.DataFrame, readout: Readout, desc: str,
                  metadata: Mapping[str, object]) -> None:
    """Write a participant's readout as the participant level does (per run: captions,
    retrieval, embeddings; per task: metrics), with ``desc``."""
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        for index, run in enumerate(participant.runs):
            rows = np.flatnonzero(units["run"].to_numpy() == index)
            sources = {"Sources": [bids_uri(p, bids_dir) for p in (run.path, run.events)
                                   if p is not None]}
            retrieved = readout.retrieved[readout.retrieved["unit"].isin(rows)]
            timing = readout.units[["onset", "duration"]].iloc[retrieved["unit"]]
            np.save(folder / f"{index}.npy", readout.embeddings[rows])
            for suffix, path, extra in (
                    ("captions", write_table(readout.units.iloc[rows],
                                             folder / f"{index}_captions.tsv"),
                     COLUMN_DESCRIPTIONS),
                    ("retrieval", write_table(pd.concat(
                        [timing.reset_index(drop=True),
                         retrieved.drop(columns="unit").reset_index(drop=True)], axis=1),
                        folder / f"{index}_retrieval.tsv"), {}),
                    ("embeddings", folder / f"{index}.npy", {})):
                _sink(output_dir, [run.path], Path(path), suffix, desc, participant.space,
                      {**metadata, **extra, **sources})
        _sink(output_dir, [r.path for r in participant.runs],
              Path(write_table(readout.metrics, folder / "metrics.tsv")), "metrics", desc,
              participant.space, {**metadata, "Sources": [
                  bids_uri(p, bids_dir) for r in participant.runs for p in (r.path, r.events)
                  if p is not None]})


def apply_shared_decoder(selection: Selection, config: Config, model_dir: Path,
                         device: torch.device) -> None:
    """``participant --model``: every selected participant's units of each task the model
    has a shared decoder for, decoded through the participant's own adapter (fitted on the
    training folds) and read out (see the module docstring)."""
    folder = Path(model_dir) / DECODING_FOLDER
    found = find_betas(selection, config.execution.output_dir)
    if not folder.is_dir() or not found:
        return
    output_dir, bids_dir = config.execution.output_dir, config.execution.bids_dir
    workflow, seed = config.workflow, config.seeds.master
    write = None
    sections: dict[str, list[dict[str, object]]] = {}
    for task, participants in sorted(found.items()):
        task_dir = folder / f"task-{task}"
        if not task_dir.is_dir():
            LOGGER.info("The model has no shared decoder of task-%s", task)
            continue
        shared = SharedDecoder.load(task_dir, device)
        mask_img = nib.load(task_dir / MASK_FILE)
        write = write or caption_writer(workflow.llm_dir, device)
        for participant in participants:
            grid = nib.load(participant.files[0])
            if grid.shape[:3] != mask_img.shape or not np.allclose(grid.affine,
                                                                    mask_img.affine):
                LOGGER.warning("sub-%s task-%s: its betas are not on the grid of the shared "
                               "decoder (%s); not decoded", participant.subject, task,
                               task_dir / MASK_FILE)
                continue
            responses, units = read_betas(participant.files, participant.tables,
                                          np.asarray(mask_img.dataobj) > 0)
            groups, _, by_run = fold_groups(units, workflow.encoding_cv)
            folds = group_folds(groups, workflow.decoding_folds)
            sentences = unit_sentences(units["caption"])
            distinct = list(dict.fromkeys(s for group in sentences for s in group))
            targets = unit_targets(sentences, dict(zip(distinct, encode_sentences(distinct),
                                                       strict=True)))
            fold_of = np.zeros(len(units), dtype=int)
            for index, (_, test) in enumerate(folds):
                fold_of[test] = index
            held = HeldOut(
                predicted={"adapted": adapted_predictions(shared, responses, targets, folds,
                                                          seed)},
                logit_scale={"adapted": np.full(len(units), shared.logit_scale)},
                folds=fold_of, zero_shot={}, zero_shot_folds=np.full(len(units), -1))
            readout = read_out(held, "adapted", units, encode_sentences, write, seed=seed)
            validation = f"{len(folds)} folds by {'run' if by_run else 'block'}"
            write_readout(output_dir, bids_dir, participant, units, readout, "adapted", {
                **decoding_metadata(workflow.llm_dir, seed, validation,
                                    "the shared decoder of the model folder through this "
                                    "participant's linear adapter, fitted on the training "
                                    "folds"), "Model": str(task_dir)})
            sections.setdefault(participant.subject, []).append(metrics_section(
                f"Decoding with the shared decoder: sub-{participant.subject} task-{task}",
                [f"The shared decoder of {task_dir} through this participant's adapter, "
                 f"fitted on the training folds ({validation})."], readout.metrics,
                readout.units.head(8)))
    for subject, parts in sections.items():
        publish_subject_report(output_dir, subject, "decoding", parts)
