"""Stage 1 on a derivatives tree: train it (group level), apply it (participant level).

:func:`run_stage1_group` reads top to bottom: the selected runs' denoised series, the parcels
with signal in every run, descriptors against the cohort (the reference), a subject split,
the tokenizer trained on the training participants' windows and their descriptor texts, the
model folder published whole, then every run's descriptors and tokens written with the
published model and the group corpus. :func:`apply_stage1` describes and tokenises runs with
a published model; on the runs the model was trained on it writes the same files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from fmrilm_bids.dataset.layout import Selection
from fmrilm_bids.errors import InputDataError, MissingInputError
from fmrilm_bids.fmrilm.descriptors.corpus import RunDescriptors, RunInput, describe_dataset
from fmrilm_bids.fmrilm.splits import subject_split
from fmrilm_bids.fmrilm.tokenizer.model import NeuralTokenizer
from fmrilm_bids.fmrilm.tokenizer.runs import ParcelRun, TokenizedRun
from fmrilm_bids.fmrilm.tokenizer.train import TextEmbedder, TrainingResult, train_tokenizer
from fmrilm_bids.resources.text_encoder import MODEL_NAME, encode_sentences
from fmrilm_bids.stages.bundle import Stage1Model, Stage1Settings, save_stage1_model, stage1_info
from fmrilm_bids.stages.inputs import (
    DerivativeRun,
    collect_runs,
    common_parcels,
    network_table,
    parcel_coordinates,
    read_participants,
    series_parcels,
    stage1_view,
)
from fmrilm_bids.stages.outputs import write_corpus, write_stage1_run
from fmrilm_bids.utils.devices import CPU
from fmrilm_bids.utils.files import publish_directory

LOGGER = logging.getLogger(__name__)

#: Written beside the tokenizer checkpoint: what it is trained on (a changed input restarts).
INPUTS_FILE = "stage1_inputs.json"


@dataclass
class Stage1Run:
    """One run's Stage-1 results.

    Attributes
    ----------
    run : DerivativeRun
        The run as Stage 1 read it: model parcels only, on its time grid.
    descriptors : RunDescriptors
        Records with onsets from the first row of the series (the files add ``StartTime``).
    tokens : TokenizedRun
        Onsets in seconds from the run's first volume (as written).
    files : dict of str to Path
        ``descriptors`` and ``tokens`` files (empty when nothing was written).
    """

    run: DerivativeRun = field(repr=False)
    descriptors: RunDescriptors = field(repr=False)
    tokens: TokenizedRun = field(repr=False)
    files: dict[str, Path] = field(default_factory=dict)


@dataclass
class Stage1Result:
    """What :func:`run_stage1_group` returns.

    Attributes
    ----------
    model : Stage1Model
        The published model folder.
    runs : list of Stage1Run
    corpus_file : Path
    training : TrainingResult
        Held-out metrics and the loss history.
    train_subjects, test_subjects : list of str
        Participants the tokenizer trained on / held out (its validation; later stages
        should test on the same ones).
    """

    model: Stage1Model
    runs: list[Stage1Run] = field(repr=False)
    corpus_file: Path
    training: TrainingResult = field(repr=False)
    train_subjects: list[str]
    test_subjects: list[str]


def run_input(run: DerivativeRun) -> RunInput:
    """The descriptors' view of a run (events on the series' clock)."""
    return RunInput(run.timeseries, run.tr, run.confounds, run.events_in_series_time())


def check_lengths(runs: Sequence[DerivativeRun], window_seconds: float) -> None:
    """Fail early, naming the file, on runs shorter than one window (or 10 samples)."""
    for run in runs:
        if len(run.timeseries) < 10 or len(run.timeseries) * run.tr < window_seconds:
            raise InputDataError(
                f"{run.timeseries_file}: {len(run.timeseries)} volumes "
                f"({len(run.timeseries) * run.tr:g} s) are too short for Stage 1 (at least 10 "
                f"volumes and one {window_seconds:g} s window); deselect the run "
                "(--bids-filter-file).")


def tokenize(tokenizer: NeuralTokenizer, runs: Sequence[DerivativeRun],
             networks: Sequence[str], coordinates: np.ndarray) -> list[TokenizedRun]:
    """Tokens of every run (batched), onsets in seconds from each run's first volume."""
    parcel_runs = [ParcelRun(run.timeseries.to_numpy(dtype=float), run.tr, list(networks),
                             run.bold.subject, coordinates=coordinates) for run in runs]
    return [replace(tokens, onsets=tokens.onsets + run.start_time)
            for run, tokens in zip(runs, tokenizer.tokenize_runs(parcel_runs), strict=True)]


def describe_with_model(runs: Sequence[DerivativeRun],
                        model: Stage1Model) -> dict[str, RunDescriptors]:
    """Descriptors of runs against the model's saved reference (participant level)."""
    described, _ = describe_dataset({run.key: run_input(run) for run in runs}, None,
                                    reference=model.reference,
                                    settings=model.descriptor_settings, seed=model.seed)
    return described


def reference_runs(runs: Sequence[DerivativeRun], bids_dir: Path,
                   group: str | None) -> list[str] | None:
    """Keys of the runs of the reference cohort (None: all runs).

    Raises
    ------
    MissingInputError
        When ``participants.tsv`` has no ``group`` column or no selected participant in
        ``group``.
    """
    if group is None:
        return None
    participants = read_participants(bids_dir)
    if participants is None or "group" not in participants:
        raise MissingInputError(f"{Path(bids_dir) / 'participants.tsv'}: a reference group "
                                f"({group!r}) needs a 'group' column; add it or describe "
                                "runs against all participants.")
    labels = participants.loc[participants["group"] == group, "participant_id"]
    members = {label.removeprefix("sub-") for label in labels}
    keys = [run.key for run in runs if run.bold.subject in members]
    if not keys:
        raise MissingInputError(f"No selected participant is in the group {group!r} of "
                                f"{Path(bids_dir) / 'participants.tsv'}.")
    return keys


def split_subjects(subjects: Sequence[str], fraction: float,
                   seed: int) -> tuple[list[str], list[str]]:
    """Training and held-out participants (seeded; none held out of one participant)."""

    if len(set(subjects)) < 2:
        LOGGER.warning("Stage 1 trains on a single participant: no held-out validation, the "
                       "model card has no held-out metrics.")
        return sorted(set(subjects)), []
    return subject_split(subjects, test_fraction=fraction, seed=seed)


def default_embedder(device: torch.device) -> tuple[TextEmbedder, str]:
    """all-MiniLM-L6-v2 sentence embeddings (384 wide) and its name: the default text
    embedder, and always the embedder of what was shown (the event alignment)."""

    def embed(texts: list[str]) -> np.ndarray:
        return encode_sentences(texts, device=device)

    return embed, MODEL_NAME


def data_hash(runs: dict[str, ParcelRun]) -> str:
    """SHA-256 of the tokenizer's training data: run keys, signals, TRs, window texts and
    events, parcel positions."""
    digest = hashlib.sha256()
    for key in sorted(runs):
        run = runs[key]
        digest.update(f"{key}:{run.tr}:{run.subject}:{run.timeseries.shape}".encode())
        digest.update(np.ascontiguousarray(run.timeseries).tobytes())
        digest.update("\n".join(run.window_texts or ()).encode())
        digest.update("\n".join(str(e) for e in run.window_events or ()).encode())
        if run.coordinates is not None:
            digest.update(np.ascontiguousarray(run.coordinates, dtype=float).tobytes())
    return digest.hexdigest()


def prepare_checkpoint(folder: Path, inputs: dict, resume: bool) -> None:
    """Keep a tokenizer checkpoint only when resuming on the same inputs."""
    record = folder / INPUTS_FILE
    text = json.dumps(inputs, indent=1)
    same = record.is_file() and record.read_text() == text
    if folder.exists() and not (resume and same):
        if resume:
            LOGGER.warning("%s was trained on other runs or settings; training anew.", folder)
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    record.write_text(text)


def run_stage1_group(selection: Selection, derivatives_dir: Path, bids_dir: Path,
                     model_dir: Path, *, atlas: str = "AAL3",
                     settings: Stage1Settings | None = None,
                     text_embedder: TextEmbedder | None = None,
                     text_embedder_name: str | None = None, work_dir: Path | None = None,
                     seed: int = 0, device: torch.device = CPU,
                     resume: bool = False) -> Stage1Result:
    """Train Stage 1 on the selected runs; write their descriptors and tokens; publish it.

    Parameters
    ----------
    selection : Selection
        The participants' runs (:func:`fmrilm_bids.dataset.layout.select_runs`); every one
        needs its ``seg-<atlas>`` denoised series in ``derivatives_dir``.
    derivatives_dir : Path
        The participant level's output folder; Stage-1 files are written into it.
    bids_dir : Path
        The raw dataset (events, ``participants.tsv``, BIDS URIs).
    model_dir : Path
        Where the model folder is published (replaced whole; e.g.
        ``derivatives_dir / "models" / "fmrilm"``).
    atlas : str, default="AAL3"
        The ``seg-`` label of the series. A bundled atlas has its network table; a user
        atlas needs a ``network`` column in its label table, unless ``settings.networks``
        is ``"data-driven"``.
    settings : Stage1Settings, optional
    text_embedder : callable, optional
        ``list[str] -> (n, settings.tokenizer.text_dim)``, e.g. the language model's own
        embedder; default all-MiniLM-L6-v2 (384 wide, matching the default settings).
    text_embedder_name : str, optional
        Its name, recorded in the model cards.
    work_dir : Path, optional
        Keeps the tokenizer checkpoint (``work_dir/tokenizer``) for ``resume``. Default: a
        hidden folder beside ``model_dir``, left after a failure (so that a rerun with
        ``resume`` continues) and removed once the model is published.
    seed : int, default=0
        The run's one seed: paraphrases, subject split, connectivity features (Louvain,
        ICA), data-driven networks and tokenizer training all take it.
    device : torch.device, default=CPU
        Where the tokenizer trains and runs (resolved by the caller).
    resume : bool, default=False
        Continue training from the checkpoint when it was made on the same inputs.

    Returns
    -------
    Stage1Result
    """
    settings = settings or Stage1Settings()
    seeded = settings.descriptor_settings()
    settings = replace(settings, training=replace(settings.training, seed=seed),
                       descriptors=replace(seeded, features=replace(seeded.features, seed=seed)))
    derivatives_dir, bids_dir = Path(derivatives_dir).absolute(), Path(bids_dir).absolute()
    model_dir = Path(model_dir).absolute()
    descriptor_settings = settings.descriptor_settings()

    # Inputs: the denoised series, restricted to the parcels every run has.
    runs = collect_runs(selection, derivatives_dir, atlas)
    if not runs:
        raise MissingInputError("No BOLD run selected; check --participant-label/--task-id.")
    table = network_table(atlas, runs) if settings.networks == "atlas" else None
    parcels, excluded = common_parcels(runs, table["name"].tolist() if table is not None
                                       else series_parcels(runs))
    runs = [stage1_view(run, parcels) for run in runs]
    check_lengths(runs, settings.tokenizer.window_seconds)

    # Descriptors against the cohort (or the reference group); without a network table the
    # networks are clusters of the cohort's connectivity.
    LOGGER.info("Stage 1: descriptors of %d runs (atlas %s, %d parcels, %s networks)",
                len(runs), atlas, len(parcels), settings.networks)
    described, reference = describe_dataset(
        {run.key: run_input(run) for run in runs}, table,
        reference_runs=reference_runs(runs, bids_dir, settings.reference_group),
        settings=descriptor_settings, seed=seed)
    networks = list(reference.networks)
    coordinates = parcel_coordinates(atlas, runs, parcels)

    # Tokenizer, trained on the training participants, validated on the others.
    train_subjects, test_subjects = split_subjects(
        [run.bold.subject for run in runs], settings.test_fraction, seed)
    if text_embedder is None:
        text_embedder, text_embedder_name = default_embedder(device)
    name = text_embedder_name or getattr(text_embedder, "__name__", "custom text embedder")
    parcel_runs = {run.key: ParcelRun(run.timeseries.to_numpy(dtype=float), run.tr, networks,
                                      run.bold.subject, described[run.key].window_texts,
                                      coordinates, described[run.key].window_events)
                   for run in runs}
    training_config = settings.training
    checkpoint = (Path(work_dir) if work_dir else
                  model_dir.with_name(f".{model_dir.name}.training")) / "tokenizer"
    prepare_checkpoint(checkpoint, {
        "data": data_hash(parcel_runs), "parcels": parcels, "text_embedder": name,
        "train_subjects": train_subjects, "tokenizer": settings.tokenizer.to_dict(),
        "training": asdict(training_config)}, resume)
    LOGGER.info("Stage 1: tokenizer (train %s; held out %s)", ", ".join(train_subjects),
                ", ".join(test_subjects) or "none")
    training = train_tokenizer(
        [parcel_runs[run.key] for run in runs if run.bold.subject in train_subjects],
        [parcel_runs[run.key] for run in runs if run.bold.subject in test_subjects],
        checkpoint, settings.tokenizer, training_config, text_embedder,
        default_embedder(device)[0], resume=resume, text_embedder_name=name, device=device)

    # The model folder appears whole; every output is made with the published model.

    info = stage1_info(atlas, parcels, networks, coordinates, excluded, settings, seed, name,
                       train_subjects, test_subjects, training.metrics, reference)
    publish_directory(model_dir, lambda folder: save_stage1_model(folder, checkpoint,
                                                                  reference, info))
    model = Stage1Model.load(model_dir)
    tokens = tokenize(model.tokenizer(device), runs, networks, coordinates)
    results = [Stage1Run(run=run, descriptors=described[run.key], tokens=run_tokens,
                         files=write_stage1_run(run, described[run.key], run_tokens, model,
                                                derivatives_dir, bids_dir))
               for run, run_tokens in zip(runs, tokens, strict=True)]
    corpus_file = write_corpus(
        derivatives_dir, described,
        {run.key: "train" if run.bold.subject in train_subjects else "test"
         for run in runs}, {result.run.key: result.files["descriptors"] for result in results},
        settings.n_paraphrases, seed)
    if work_dir is None:
        shutil.rmtree(checkpoint.parent)
    LOGGER.info("Stage 1: model published to %s", model_dir)
    return Stage1Result(model=model, runs=results, corpus_file=corpus_file, training=training,
                        train_subjects=train_subjects, test_subjects=test_subjects)


def describe_and_tokenize(selection: Selection, derivatives_dir: Path, model: Stage1Model,
                          device: torch.device = CPU) -> list[Stage1Run]:
    """Descriptors and tokens of the selected runs from a published model, in memory.

    Nothing is written (the runs' ``files`` are empty): :func:`apply_stage1` writes them.

    Raises
    ------
    MissingInputError
        When no run is selected.
    InputDataError
        When a run lacks signal in a model parcel, or is shorter than one window.
    """
    runs = [stage1_view(run, model.parcels)
            for run in collect_runs(selection, Path(derivatives_dir).absolute(), model.atlas)]
    if not runs:
        raise MissingInputError("No BOLD run selected; check --participant-label/--task-id.")
    check_lengths(runs, model.info["Tokenizer"]["patch_length"]
                  * model.info["Tokenizer"]["target_tr"])
    described = describe_with_model(runs, model)
    tokens = tokenize(model.tokenizer(device), runs, model.networks, model.coordinates)
    return [Stage1Run(run=run, descriptors=described[run.key], tokens=run_tokens)
            for run, run_tokens in zip(runs, tokens, strict=True)]


def apply_stage1(selection: Selection, derivatives_dir: Path, bids_dir: Path,
                 model_dir: Path, *, device: torch.device = CPU) -> list[Stage1Run]:
    """Describe and tokenise the selected runs with a published Stage-1 model; write them.

    Parameters
    ----------
    selection : Selection
        Runs whose denoised series (the model's atlas) are in ``derivatives_dir``.
    derivatives_dir, bids_dir : Path
    model_dir : Path
        A folder published by :func:`run_stage1_group`.
    device : torch.device, default=CPU

    Returns
    -------
    list of Stage1Run

    Raises
    ------
    InputDataError
        When a run lacks signal in a model parcel (naming the file and the parcels).
    """
    derivatives_dir, bids_dir = Path(derivatives_dir).absolute(), Path(bids_dir).absolute()
    model = Stage1Model.load(model_dir)
    results = describe_and_tokenize(selection, derivatives_dir, model, device)
    for result in results:
        result.files = write_stage1_run(result.run, result.descriptors, result.tokens, model,
                                        derivatives_dir, bids_dir)
    return results
