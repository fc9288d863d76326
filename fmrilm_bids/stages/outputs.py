"""Writing the fMRI-LM derivatives of a run (descriptors, tokens, captions, embeddings,
answers), all through :class:`~fmrilm_bids.interfaces.bids.DerivativesDataSink`.

=====================================================  ==========================================
file (beside the run's ``desc-denoised_timeseries``)   content
=====================================================  ==========================================
``_seg-<atlas>_desc-descriptors_text.tsv``             ``scope`` (run / window), ``onset``,
                                                       ``duration``, ``text``; JSON: features,
                                                       z-scores, the reference used
``_seg-<atlas>_desc-fmrilm_tokens.tsv``                ``onset``, ``duration``, ``token``
``_seg-<atlas>_desc-fmrilm_captions.tsv``              ``onset``, ``duration``, ``scope``
                                                       (window / event), ``trial_type``,
                                                       ``caption``
``_seg-<atlas>_desc-fmrilm_embeddings.npy``            float32 (windows x hidden): one pooled
                                                       LM hidden state per time patch; the JSON
                                                       lists each row's onset and duration
``_seg-<atlas>_desc-fmrilmrun_embeddings.npy``         float32 (1 x hidden): the whole run
``_seg-<atlas>_desc-answers_text.tsv``                 ``question``, ``onset``, ``duration``,
                                                       ``answer``, ``p_<answer>`` columns
=====================================================  ==========================================

The Stage-1 files in detail:

``_seg-<atlas>_desc-descriptors_text.tsv``
    ``scope`` (``run``: the run paragraph; ``window``: one row per window), ``onset``,
    ``duration``, ``text``, and for runs with events ``events``: the captions (or trial
    types) of the events whose response, ``hrf_delay`` s after them, overlaps the window
    (``n/a`` for none). JSON: every feature with its value and z-score, the facts stated,
    the window facts, the reference (description, size, file), the settings.
``_seg-<atlas>_desc-fmrilm_tokens.tsv``
    ``onset``, ``duration``, ``token_1`` .. ``token_<n_groups>`` (one row per patch, one
    code per learned parcel group). JSON: codebook size, tokens per window, TRs, patch
    length, the tokenizer's weights hash and location.

Onsets are seconds from the run's first volume, as in ``events.tsv`` (row 0 of the denoised
series lies at its ``StartTime``). Every sidecar lists its ``Sources`` as BIDS URIs.
Stages 2-3's files are written by :func:`fmrilm_bids.stages.language.write_lm_outputs`.

Group level: ``group/desc-descriptors_corpus.tsv`` (``group/`` is in ``.bidsignore``): every
description in ``n_paraphrases`` wordings, one row per text, columns ``run``, the BIDS
entities (``sub``, ``ses``, ``task``, ``acq``, ``run_index``), ``split`` (``train`` or
``test``: whether the tokenizer trained on the participant or held it out), ``paraphrase``,
``scope``, ``onset`` (seconds from the first row of the series), ``duration``, ``text``; its
JSON sidecar holds the settings and the descriptor files it comes from.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from fmrilm_bids.dataset.derivatives import bids_uri
from fmrilm_bids.dataset.layout import BoldRun
from fmrilm_bids.fmrilm.descriptors.corpus import RunDescriptors, build_corpus
from fmrilm_bids.fmrilm.tokenizer.runs import TokenizedRun
from fmrilm_bids.interfaces.bids import DerivativesDataSink
from fmrilm_bids.stages.bundle import REFERENCE_FILE, TOKENIZER_FOLDER, Stage1Model
from fmrilm_bids.stages.inputs import DerivativeRun
from fmrilm_bids.utils.files import atomic_write_text


def _sink(output_dir: Path, run: BoldRun, in_file: Path, suffix: str, desc: str,
          atlas_name: str, metadata: Mapping[str, object]) -> Path:
    result = DerivativesDataSink(
        base_directory=str(output_dir), in_file=str(in_file), source_file=str(run.path),
        suffix=suffix, desc=desc, segmentation=atlas_name, **metadata).run()
    return Path(result.outputs.out_file)


def write_run_table(output_dir: Path, run: BoldRun, table: pd.DataFrame, suffix: str,
                    desc: str, atlas_name: str, metadata: Mapping[str, object],
                    sources: list[str]) -> Path:
    """Write ``table`` as the run's ``_seg-<atlas>_desc-<desc>_<suffix>.tsv`` (+ JSON).

    Missing values are written ``n/a``; ``sources`` (BIDS URIs) go to the sidecar.
    """
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / f"{desc}_{suffix}.tsv"
        table.to_csv(path, sep="\t", index=False, na_rep="n/a", float_format="%.6g")
        return _sink(output_dir, run, path, suffix, desc, atlas_name,
                     {**metadata, "Sources": sources})


def write_run_array(output_dir: Path, run: BoldRun, array: np.ndarray, desc: str,
                    atlas_name: str, metadata: Mapping[str, object], sources: list[str]
                    ) -> Path:
    """Write ``array`` (float32) as the run's ``_seg-<atlas>_desc-<desc>_embeddings.npy``."""
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / f"{desc}_embeddings.npy"
        np.save(path, np.asarray(array, dtype=np.float32))
        return _sink(output_dir, run, path, "embeddings", desc, atlas_name,
                     {**metadata, "Sources": sources})


def run_sources(output_dir: Path, run: BoldRun, bids_dir: Path, timeseries_file: Path
                ) -> list[str]:
    """BIDS URIs of what a run's model outputs come from: the raw run, its parcel series."""
    return [bids_uri(run.path, bids_dir), bids_uri(timeseries_file, output_dir, "")]


def _one_line(texts: pd.Series) -> pd.Series:
    """Each text on one line, its runs of white space single spaces (a TSV cell holds no
    line break or tab); missing values and non-text values stay as they are."""
    return texts.map(lambda value: " ".join(value.split()) if isinstance(value, str)
                     else value)


def answers_table(answers: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """One table of every question's answers (``question`` first; a text answer on one
    line, as :func:`captions_table` writes captions)."""
    tables = [table.assign(question=name) for name, table in answers.items()]
    if not tables:
        return pd.DataFrame(columns=["question", "onset", "duration", "answer"])
    merged = pd.concat(tables, ignore_index=True)
    merged["answer"] = _one_line(merged["answer"])
    return merged[["question", *[c for c in merged.columns if c != "question"]]]


def captions_table(window_captions: pd.DataFrame | None,
                   event_captions: pd.DataFrame | None) -> pd.DataFrame:
    """Window and event captions in one table, sorted by onset (``scope`` says which).

    A caption the model left empty is missing (written ``n/a``), never an empty cell; a
    caption the model wrote over several lines (or with tabs) is one line, its runs of
    white space single spaces (a TSV cell holds neither).
    """
    tables = []
    if window_captions is not None:
        tables.append(window_captions.assign(scope="window"))
    if event_captions is not None:
        tables.append(event_captions.assign(scope="event"))
    if not tables:
        return pd.DataFrame(columns=["onset", "duration", "scope", "caption"])
    table = pd.concat(tables, ignore_index=True).sort_values(["onset", "scope"], kind="stable")
    leading = ["onset", "duration", "scope", *(["trial_type"] if "trial_type" in table else [])]
    captions = _one_line(table["caption"])
    table["caption"] = captions.where(captions.notna() & (captions.astype(str) != ""))
    return table[[*leading, "caption"]].reset_index(drop=True)


CORPUS_FILE = Path("group") / "desc-descriptors_corpus.tsv"


def uri(path: Path, derivatives_dir: Path) -> str:
    """BIDS URI of a file inside the derivatives (``bids::...``), else its ``file://`` URI."""
    path = Path(path).absolute()
    if path.is_relative_to(Path(derivatives_dir).absolute()):
        return bids_uri(path, derivatives_dir, "")
    return path.as_uri()


def with_model_source(found: list[str], model_uri: str) -> list[str]:
    """``Sources`` plus a model file when it is a BIDS URI (a model outside the derivatives
    is named by its own sidecar field only)."""
    return [*found, model_uri] if model_uri.startswith("bids:") else found


def sources(run: DerivativeRun, derivatives_dir: Path, bids_dir: Path) -> list[str]:
    """BIDS URIs of what a run's Stage-1 outputs come from (raw run, series, confounds)."""
    found = run_sources(derivatives_dir, run.bold, bids_dir, run.timeseries_file)
    confounds = run.timeseries_file.parent / f"{run.key}_desc-confounds_timeseries.tsv"
    if run.confounds is not None and confounds.is_file():
        found.append(uri(confounds, derivatives_dir))
    return found


def run_facts(run: DerivativeRun, model: Stage1Model) -> dict[str, object]:
    """Sidecar fields every Stage-1 file of a run shares."""
    return {"Atlas": model.atlas, "ModelParcels": len(model.parcels),
            "MissingParcels": sorted(run.metadata.get("MissingParcels") or []),
            "RepetitionTime": run.tr, "StartTime": run.start_time,
            "InterpolatedVolumes": list(run.metadata.get("InterpolatedVolumes") or [])}


def descriptor_table(run: DerivativeRun, descriptors: RunDescriptors) -> pd.DataFrame:
    """The ``_desc-descriptors_text.tsv`` table of a run (see the module docstring)."""
    records = descriptors.records
    table = records.assign(onset=records["onset"] + run.start_time)
    if run.events is not None:
        labels = [None] + ["; ".join(window["events"]) or None
                           for window in descriptors.metadata["windows"]]
        table["events"] = labels
    return table


def descriptor_sidecar(run: DerivativeRun, descriptors: RunDescriptors, model: Stage1Model,
                       derivatives_dir: Path, bids_dir: Path) -> dict[str, object]:
    """Sidecar of the descriptors: the run's metadata (features, z-scores, facts, windows,
    settings), the reference file, provenance."""
    reference = uri(model.directory / REFERENCE_FILE, derivatives_dir)
    found = sources(run, derivatives_dir, bids_dir)
    if run.bold.events is not None:
        found.append(bids_uri(run.bold.events, bids_dir))
    return {"Description": "fMRI-LM descriptors of the run: one paragraph on the whole run, "
            "then one sentence group per window, graded against the reference.",
            **run_facts(run, model), "ReferenceFile": reference,
            **descriptors.metadata, "Sources": with_model_source(found, reference)}


def token_sidecar(run: DerivativeRun, model: Stage1Model, derivatives_dir: Path,
                  bids_dir: Path) -> dict[str, object]:
    """Sidecar of the tokens: the window format and the tokenizer that read them."""
    config = model.info["Tokenizer"]
    weights = uri(model.directory / TOKENIZER_FOLDER, derivatives_dir)
    return {"Description": "fMRI-LM Stage-1 tokens of each time patch "
            f"({config['patch_length']} samples at TR {config['target_tr']:g} s): token_<g> "
            f"is the code of learned parcel group g (1..{config['n_groups']}).",
            **run_facts(run, model), "CodebookSize": config["codebook_size"],
            "TokensPerWindow": config["n_groups"],
            "TargetRepetitionTime": config["target_tr"], "PatchLength": config["patch_length"],
            "WindowDuration": config["patch_length"] * config["target_tr"],
            "ModelHash": model.tokenizer_hash, "Model": weights,
            "Sources": with_model_source(sources(run, derivatives_dir, bids_dir), weights)}


def write_stage1_run(run: DerivativeRun, descriptors: RunDescriptors, tokens: TokenizedRun,
                     model: Stage1Model, derivatives_dir: Path,
                     bids_dir: Path) -> dict[str, Path]:
    """Write a run's descriptors and tokens (``tokens`` with onsets in run time).

    Returns
    -------
    dict
        ``{"descriptors": path, "tokens": path}``.
    """
    def write(table: pd.DataFrame, suffix: str, desc: str, sidecar: dict) -> Path:
        metadata = {key: value for key, value in sidecar.items() if key != "Sources"}
        return write_run_table(derivatives_dir, run.bold, table, suffix, desc, model.atlas,
                               metadata, sidecar["Sources"])

    return {"descriptors": write(descriptor_table(run, descriptors), "text", "descriptors",
                                 descriptor_sidecar(run, descriptors, model, derivatives_dir,
                                                    bids_dir)),
            "tokens": write(tokens.to_frame(), "tokens", "fmrilm",
                            token_sidecar(run, model, derivatives_dir, bids_dir))}


def write_corpus(derivatives_dir: Path, described: Mapping[str, RunDescriptors],
                 splits: Mapping[str, str], files: Mapping[str, Path], n_paraphrases: int,
                 seed: int) -> Path:
    """Write ``group/desc-descriptors_corpus.tsv`` and its JSON (module docstring).

    Parameters
    ----------
    derivatives_dir : Path
    described : mapping of str to RunDescriptors
        By run key (BIDS stem).
    splits : mapping of str to str
        Run key -> ``"train"`` or ``"test"``.
    files : mapping of str to Path
        Run key -> its descriptors file (the corpus's sources).
    n_paraphrases, seed : int
        As :func:`~fmrilm_bids.fmrilm.descriptors.build_corpus`.
    """
    corpus = build_corpus({key: d.metadata for key, d in described.items()}, n_paraphrases,
                          seed)
    corpus.insert(corpus.columns.get_loc("paraphrase"), "split", corpus["run"].map(splits))
    path = Path(derivatives_dir) / CORPUS_FILE
    atomic_write_text(path, corpus.to_csv(sep="\t", index=False, na_rep="n/a",
                                          float_format="%.6g"))
    sidecar = {"Description": "fMRI-LM descriptor corpus: every run and window description in "
               f"{n_paraphrases} wordings (paraphrase 0 is the one in the run's "
               "_desc-descriptors_text.tsv).", "NParaphrases": n_paraphrases, "Seed": seed,
               "Runs": len(described), "Rows": len(corpus),
               "Sources": [uri(files[key], derivatives_dir) for key in described]}
    atomic_write_text(path.with_suffix(".json"), json.dumps(sidecar, indent=1))
    return path
