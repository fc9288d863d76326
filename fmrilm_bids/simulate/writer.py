"""Writing BIDS files: NIfTI images with complete headers, JSON sidecars and TSV tables.

Everything written is a deterministic function of its input (gzip without time stamps,
fixed float formatting), so a simulation repeated with the same seed is byte-identical.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

#: Significant digits of floats in TSV files.
TSV_FLOAT_FORMAT = "%.6g"


def write_json(path: Path, content: dict) -> None:
    """Write ``content`` as indented JSON (keys in insertion order), creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_tsv(path: Path, table: pd.DataFrame) -> None:
    """Write a BIDS TSV: tab-separated, header row, ``n/a`` for missing values."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, sep="\t", index=False, na_rep="n/a", float_format=TSV_FLOAT_FORMAT,
                 lineterminator="\n")


def to_int16(data: np.ndarray) -> np.ndarray:
    """Round scanner intensities to int16, the way magnitude images are stored."""
    return np.clip(np.rint(data), 0, np.iinfo(np.int16).max).astype(np.int16)


def write_anatomical(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    """Write a 3-D int16 image with scanner-space qform and sform and mm units."""

    img = nib.Nifti1Image(to_int16(data), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.to_filename(path)


def write_image(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    """Write a 3-D float32 image (ground truth maps) with qform and sform."""
    img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.to_filename(path)


def write_bold(path: Path, data: np.ndarray, affine: np.ndarray, repetition_time: float,
               slice_timing: Sequence[float]) -> None:
    """Write a 4-D int16 BOLD series with a complete header.

    ``pixdim[4]`` is the TR in seconds (``xyzt_units`` mm and s), the slice axis is the third
    (``dim_info``), and ``slice_duration``/``slice_code`` describe the slice timing, whose
    times must be multiples of ``TR / n_slices`` (one slice after another over the TR).
    """

    img = nib.Nifti1Image(to_int16(data), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    header = img.header
    header.set_xyzt_units("mm", "sec")
    header.set_zooms((*header.get_zooms()[:3], float(repetition_time)))
    header.set_dim_info(slice=2)
    duration = float(repetition_time) / len(slice_timing)
    header["slice_duration"] = duration
    # The sidecar's times are rounded; the header wants exact multiples of the duration.
    header.set_slice_times(list(np.round(np.asarray(slice_timing) / duration) * duration))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.to_filename(path)


def write_dataset_description(root: Path, version: str) -> None:
    """``dataset_description.json`` of the raw dataset."""
    write_json(root / "dataset_description.json", {
        "Name": "fmrilm-bids simulated fMRI: resting state and natural picture viewing",
        "BIDSVersion": "1.10.0",
        "DatasetType": "raw",
        "License": "CC0",
        "Authors": ["fmrilm-bids developers"],
        "Acknowledgements": ("Anatomy derived from the ICBM 2009a Nonlinear Symmetric template "
                             "(Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging "
                             "Centre, Montreal Neurological Institute, McGill University); "
                             "parcels from the AAL3 atlas (Rolls et al., 2020)."),
        "HowToAcknowledge": "Cite fmrilm-bids and state that the data are simulated.",
        "ReferencesAndLinks": ["https://doi.org/10.1016/j.neuroimage.2010.07.033",
                               "https://doi.org/10.1016/j.neuroimage.2019.116189"],
        "GeneratedBy": [{
            "Name": "fmrilm-bids-simulate",
            "Version": version,
            "Description": ("Simulated from the MNI152NLin2009aSym template and the AAL3 "
                            "atlas with known head motion, network structure, captions and "
                            "group effects; ground truth in sourcedata/simulation."),
        }],
    })


def write_participants(root: Path, participants: pd.DataFrame) -> None:
    """``participants.tsv`` and its column descriptions."""
    write_tsv(root / "participants.tsv", participants)
    write_json(root / "participants.json", {
        "age": {"Description": "Age at scan", "Units": "year"},
        "sex": {"Description": "Sex", "Levels": {"F": "female", "M": "male"}},
        "group": {"Description": "Diagnostic group",
                  "Levels": {"control": "healthy control",
                             "patient": "patient (weaker default-mode coupling, simulated)"}},
    })


def write_events_sidecar(root: Path, task: str, categories: Sequence[str]) -> None:
    """Top-level ``task-<task>_events.json`` describing the events columns."""
    write_json(root / f"task-{task}_events.json", {
        "onset": {"Description": "Picture onset from the start of the run", "Units": "s"},
        "duration": {"Description": "How long the picture was shown", "Units": "s"},
        "trial_type": {"Description": "Picture category",
                       "Levels": {c: f"a picture of {c}" for c in categories}},
        "caption": {"Description": "One natural English sentence describing the picture"},
    })


def write_readme(root: Path, text: str) -> None:
    """``README.md`` at the dataset root."""
    (root / "README.md").write_text(text, encoding="utf-8")
