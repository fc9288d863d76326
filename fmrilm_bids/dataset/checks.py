"""Checks on the input that run before any work, each failing with one line: file and fix.

They read headers and stream the data once (a truncated ``.nii.gz`` is only found by
reading it to the end; floating-point data are scanned for NaN and infinite values on the
way), but never load whole images into memory.
"""

from __future__ import annotations

import gzip
import json
import os
import uuid
import zlib
from pathlib import Path
from typing import BinaryIO

import nibabel as nib
import numpy as np
import pandas as pd

from fmrilm_bids.dataset.events import rows_beyond_run, warn_beyond_run
from fmrilm_bids.dataset.fieldmaps import phase_encoding, total_readout_time
from fmrilm_bids.dataset.fmriprep import find_fmriprep_run
from fmrilm_bids.dataset.layout import NIFTI_EXTENSIONS, BoldRun, Selection
from fmrilm_bids.dataset.validator import validate_dataset
from fmrilm_bids.errors import InputDataError, MissingInputError, OutputError

_CHUNK = 1 << 20


def check_bids_root(bids_dir: Path) -> None:
    """The folder exists and holds a readable ``dataset_description.json``."""
    bids_dir = Path(bids_dir)
    if not bids_dir.is_dir():
        raise MissingInputError(
            f"{bids_dir}: not a folder; give the root of a BIDS dataset as BIDS_DIR."
        )
    description = bids_dir / "dataset_description.json"
    if not description.is_file():
        raise InputDataError(
            f"{description}: missing, so {bids_dir} is not a BIDS dataset root; point BIDS_DIR "
            "at the folder that holds dataset_description.json (with Name and BIDSVersion)."
        )
    try:
        content = json.loads(description.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputDataError(
            f"{description}: not valid JSON ({err}); fix the file (Name, BIDSVersion)."
        ) from err
    missing = [key for key in ("Name", "BIDSVersion") if key not in content]
    if missing:
        raise InputDataError(f"{description}: lacks {', '.join(missing)}; add the field(s).")


def run_bids_validator(bids_dir: Path) -> None:
    """Run the official validator; its errors stop the run (warnings do not)."""
    report = validate_dataset(bids_dir)
    if not report.ok:
        raise InputDataError(
            f"{bids_dir}: the BIDS validator found {len(report.errors)} error(s): "
            f"{report.describe_errors(3)}; fix them (run bids-validator-deno {bids_dir} for "
            "details) or pass --skip-bids-validation."
        )


def check_output_dir(output_dir: Path) -> None:
    """``output_dir`` (or, if it does not exist yet, its first existing parent) is writable.

    Probes by creating and removing a temporary entry, which also catches read-only mounts
    that permission bits do not show; nothing is left behind.
    """
    target = Path(output_dir).absolute()
    existing = target
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{existing}: is a file, so {target} cannot be created; "
                          "choose another OUTPUT_DIR.")
    probe = existing / f".fmrilm-write-probe-{uuid.uuid4().hex}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as err:
        raise OutputError(
            f"{target}: cannot write there ({err.strerror}); choose a writable OUTPUT_DIR or "
            f"fix the permissions of {existing}."
        ) from err


def check_present(path: Path) -> None:
    """``path`` exists; a broken symbolic link (DataLad / git-annex without content) says how
    to fetch it.

    Raises
    ------
    MissingInputError
        When the file, or the target of its link, is not there.
    """
    path = Path(path)
    if path.exists():
        return
    if path.is_symlink():
        raise MissingInputError(
            f"{path}: a symbolic link whose content is not here (a DataLad / git-annex dataset "
            f"without its data); fetch it with 'datalad get {path}' (or 'git annex get "
            f"{path}'), or leave its participant out with --participant-label."
        )
    raise MissingInputError(f"{path}: no such file; restore it or leave its participant out "
                            "with --participant-label.")


def broken_links(folder: Path) -> list[Path]:
    """The broken symbolic links under ``folder`` (hidden folders left out), sorted."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(root) / name
            if path.is_symlink() and not path.exists():
                found.append(path)
    return found


def check_selected_files_present(bids_dir: Path, selection: Selection,
                                 images: bool = True) -> None:
    """Every file the selected participants may read is there: the top-level files (sidecars
    inherited by every run) and the selected participants' folders (without ``images``,
    their NIfTI files are not needed); other participants' files are not looked at.

    Raises
    ------
    MissingInputError
        For the first broken symbolic link (with the count of the others).
    """
    bids_dir = Path(bids_dir)
    broken = [p for p in sorted(bids_dir.iterdir()) if p.is_symlink() and not p.exists()]
    for subject in selection.subjects:
        broken += broken_links(bids_dir / f"sub-{subject.subject}")
    if not images:
        broken = [p for p in broken if not p.name.endswith(NIFTI_EXTENSIONS)]
    if broken:
        more = f" ({len(broken) - 1} more such file(s))" if len(broken) > 1 else ""
        try:
            check_present(broken[0])
        except MissingInputError as err:
            raise MissingInputError(f"{err}{more}") from None


def _data_offset(img: nib.Nifti1Image) -> int:
    """Where the image data start in the (uncompressed) file."""
    return int(getattr(img.dataobj, "offset", img.header["vox_offset"]))


def _expected_nifti_bytes(img: nib.Nifti1Image) -> int:
    header = img.header
    return _data_offset(img) + int(np.prod(img.shape)) * header.get_data_dtype().itemsize


def check_nifti_complete(path: Path) -> nib.Nifti1Image:
    """Load the header and make sure all the data are there (not truncated, not corrupt).

    Returns
    -------
    nibabel.Nifti1Image
        The (lazily loaded) image.
    """

    path = Path(path)
    check_present(path)
    fix = "re-convert it from the scanner data (e.g. dcm2niix) or copy it again"
    try:
        img = nib.load(path)
    except Exception as err:  # nibabel raises several types for broken headers
        raise InputDataError(f"{path}: not a readable NIfTI ({err}); {fix}.") from err
    expected = _expected_nifti_bytes(img)
    scan = _FiniteScan(img)
    if path.name.endswith(".gz"):
        try:
            with gzip.open(path, "rb") as stream:
                size = scan.read(stream)
        except (EOFError, OSError, zlib.error) as err:
            raise InputDataError(f"{path}: corrupt or truncated gzip data ({err}); {fix}.") from err
    elif scan.check:
        with open(path, "rb") as stream:
            size = scan.read(stream)
    else:  # integers are always finite: the size is enough
        size = os.path.getsize(path)
    if size < expected:
        raise InputDataError(
            f"{path}: truncated, {size} bytes of image data where the header needs {expected}; "
            f"{fix}."
        )
    if scan.bad:
        raise InputDataError(
            f"{path}: {scan.bad} NaN or infinite value(s) in the image data"
            + (f" (first in volume {scan.first_volume})" if len(img.shape) > 3 else "")
            + "; replace them (e.g. by 0 outside the brain, or drop the "
            "broken volumes) or re-convert the data."
        )
    return img


class _FiniteScan:
    """Stream a NIfTI file once: count its bytes and, for floating-point data, the NaN and
    infinite values (in chunks, never the whole image in memory)."""

    def __init__(self, img: object) -> None:
        header = img.header
        self.offset = _data_offset(img)
        self.dtype = header.get_data_dtype()
        self.check = self.dtype.kind in "fc"
        shape = img.shape
        self.volume_size = int(np.prod(shape[:3])) if len(shape) > 3 else int(np.prod(shape))
        self.n_values = int(np.prod(shape))
        self.bad = 0
        self.first_volume: int | None = None

    def read(self, stream: BinaryIO) -> int:
        """Read ``stream`` to its end; return its size in bytes."""
        size, seen, pending = 0, 0, b""
        itemsize = self.dtype.itemsize
        while chunk := stream.read(_CHUNK):
            start = max(0, self.offset - size)
            size += len(chunk)
            if not self.check or start >= len(chunk):
                continue
            data = pending + chunk[start:]
            usable = len(data) - len(data) % itemsize
            values = np.frombuffer(data[:usable], dtype=self.dtype)[: self.n_values - seen]
            pending = data[usable:]
            finite = np.isfinite(values)
            if not finite.all():
                if self.first_volume is None:
                    self.first_volume = (seen + int(np.argmin(finite))) // self.volume_size
                self.bad += int(values.size - finite.sum())
            seen += values.size
        return size


def check_bold_run(run: BoldRun, bold_file: Path | None = None) -> None:
    """A BOLD run is a complete 4-D NIfTI with a RepetitionTime, and its events are usable.

    ``bold_file`` is the image to check in place of the raw one (fMRIPrep's preprocessed
    BOLD, when the raw dataset gives only metadata and events).
    """
    image_path = Path(bold_file) if bold_file is not None else run.path
    img = check_nifti_complete(image_path)
    if len(img.shape) != 4 or img.shape[3] < 2:
        raise InputDataError(
            f"{image_path}: BOLD must be 4-D (x, y, z, time) with several volumes, but its "
            f"shape is {tuple(img.shape)}; give the full time series, not a single volume."
        )
    tr = run.metadata.get("RepetitionTime")
    if tr is None:
        raise InputDataError(
            f"{run.path}: RepetitionTime is missing; add it (in seconds) to "
            f"{run.path.name.split('.nii')[0]}.json or to a top-level "
            f"task-{run.task}_bold.json."
        )
    if not isinstance(tr, (int, float)) or tr <= 0:
        raise InputDataError(
            f"{run.path}: RepetitionTime is {tr!r}; it must be a positive number of seconds."
        )
    if run.events is not None:
        check_events(run.events, img.shape[3] * float(tr))
    if run.fieldmap is not None:
        check_fieldmap_inputs(run, img.shape)


def check_fieldmap_inputs(run: BoldRun, shape: tuple[int, ...]) -> None:
    """A run with a field map has what distortion correction needs: its field-map images
    (complete) and, in its own metadata, ``PhaseEncodingDirection`` and ``TotalReadoutTime``
    (or ``EffectiveEchoSpacing``).

    fMRIPrep fails on such a run only when it unwarps it, hours in; here it is refused before
    any work, with the fix (add the metadata, or ``--ignore fieldmaps``).
    """
    fieldmap = run.fieldmap
    for source in fieldmap.sources:
        check_nifti_complete(source)
    try:
        phase_encoding(run.metadata)
        total_readout_time(run.metadata, shape)
    except ValueError as err:
        raise InputDataError(
            f"{run.path}: the field map {fieldmap.sources[0].name} is intended for this run, "
            f"but in its metadata {err}; add it to {run.path.name.split('.nii')[0]}.json "
            "(the scanner's values, e.g. from dcm2niix), or pass --ignore fieldmaps to "
            "process the run without distortion correction.") from None


def check_fmriprep_run(run: BoldRun, fmriprep_dir: Path) -> None:
    """fMRIPrep has the run's MNI-space BOLD (complete, 4-D), brain mask and confounds; the
    raw dataset gives the metadata and events (its images are not read)."""

    found = find_fmriprep_run(fmriprep_dir, run)
    check_nifti_complete(found.mask)
    check_present(found.confounds)
    check_bold_run(run, bold_file=found.bold)


def check_events(path: Path, run_duration: float | None = None) -> None:
    """An ``events.tsv`` has numeric ``onset`` and ``duration`` columns; events that start
    after the end of the run (``run_duration`` seconds) are named in a warning (they are left
    out of every model, see :mod:`fmrilm_bids.dataset.events`)."""


    check_present(path)
    try:
        events = pd.read_csv(path, sep="\t", na_values=["n/a"])
    except Exception as err:
        raise InputDataError(
            f"{path}: not a readable TSV ({err}); write it tab-separated."
        ) from err
    missing = [c for c in ("onset", "duration") if c not in events.columns]
    if missing:
        raise InputDataError(
            f"{path}: lacks the column(s) {', '.join(missing)} (it has "
            f"{', '.join(map(str, events.columns)) or 'none'}); BIDS events need 'onset' and "
            "'duration' in seconds."
        )
    for column in ("onset", "duration"):
        if not pd.api.types.is_numeric_dtype(events[column]):
            raise InputDataError(
                f"{path}: column '{column}' has non-numeric values; write seconds (or n/a)."
            )
    if run_duration is not None:
        warn_beyond_run(path, events, rows_beyond_run(events, run_duration), run_duration)


def check_selection(selection: Selection, require_t1w: bool = True,
                    bids_dir: Path | None = None, strict: bool = True,
                    fmriprep_dir: Path | None = None) -> Selection:
    """Check every selected run (and, for our own preprocessing, each participant's T1w).

    With ``bids_dir``, first make sure no file of the selected participants (nor a top-level
    file) is a broken symbolic link (:func:`check_selected_files_present`).

    Parameters
    ----------
    selection : Selection
    require_t1w : bool
        Our own preprocessing needs a T1w per participant (fMRIPrep inputs do not).
    bids_dir : Path, optional
    strict : bool
        Refuse the run when a participant has no T1w; otherwise that participant is left
        out (one line in :attr:`Selection.refused`) and the others are processed.
    fmriprep_dir : Path, optional
        fMRIPrep derivatives to start from: their images are checked, and the raw dataset
        needs only metadata and events (its images may be absent or placeholders).

    Returns
    -------
    Selection
        The participants to process, with those left out in ``refused``.

    Raises
    ------
    MissingInputError
        Without a T1w when ``strict`` (or when no participant has one).
    """
    if bids_dir is not None:
        check_selected_files_present(bids_dir, selection, images=fmriprep_dir is None)
    kept, refused = [], []
    for subject in selection.subjects:
        if require_t1w and not subject.t1w:
            error = MissingInputError(
                f"sub-{subject.subject}/anat: no T1w image; preprocessing needs one per "
                "participant (or pass --derivatives fmriprep=PATH to use fMRIPrep outputs)."
            )
            if strict:
                raise error
            refused.append((subject.subject, error))
            continue
        kept.append(subject)
    if not kept:
        raise refused[0][1]
    for subject in kept:
        if fmriprep_dir is not None:
            for run in subject.bold:
                check_fmriprep_run(run, fmriprep_dir)
            continue
        for t1w in subject.t1w:
            check_nifti_complete(t1w)
        for run in subject.bold:
            check_bold_run(run)
    return Selection(
        subjects=tuple(kept),
        refused=tuple(f"{error} sub-{label} was left out (--strict refuses the whole run)."
                      for label, error in refused),
    )
