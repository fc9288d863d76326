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

Onsets are in seconds from the run's first volume, as in ``events.tsv``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from fmrilm_bids.dataset.derivatives import bids_uri
from fmrilm_bids.dataset.layout import BoldRun
from fmrilm_bids.interfaces.bids import DerivativesDataSink


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


def answers_table(answers: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """One table of every question's answers (``question`` first)."""
    tables = [table.assign(question=name) for name, table in answers.items()]
    if not tables:
        return pd.DataFrame(columns=["question", "onset", "duration", "answer"])
    merged = pd.concat(tables, ignore_index=True)
    return merged[["question", *[c for c in merged.columns if c != "question"]]]


def captions_table(window_captions: pd.DataFrame | None,
                   event_captions: pd.DataFrame | None) -> pd.DataFrame:
    """Window and event captions in one table, sorted by onset (``scope`` says which)."""
    tables = []
    if window_captions is not None:
        tables.append(window_captions.assign(scope="window"))
    if event_captions is not None:
        tables.append(event_captions.assign(scope="event"))
    if not tables:
        return pd.DataFrame(columns=["onset", "duration", "scope", "caption"])
    table = pd.concat(tables, ignore_index=True).sort_values(["onset", "scope"], kind="stable")
    leading = ["onset", "duration", "scope", *(["trial_type"] if "trial_type" in table else [])]
    return table[[*leading, "caption"]].reset_index(drop=True)
