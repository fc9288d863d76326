"""Shared fixtures. Every test runs offline, with caches in a per-session temporary folder.

The folder (several GB after a full run) is removed when the session ends; set
``FMRILM_TEST_ROOT`` to a folder of your own to keep the outputs for inspection.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

_SESSION_ROOT = Path(os.environ.get("FMRILM_TEST_ROOT", "")) if os.environ.get(
    "FMRILM_TEST_ROOT") else None


def pytest_configure(config: pytest.Config) -> None:
    """Configure caches before any test module imports templateflow/niworkflows."""
    import tempfile

    from fmrilm_bids.utils.environment import configure_environment

    root = _SESSION_ROOT or Path(tempfile.mkdtemp(prefix="fmrilm-tests-"))
    # The template cache is shared between test sessions (written once, read-only after).
    cache = Path(os.environ.get("FMRILM_TEST_CACHE", Path.home() / ".cache" / "fmrilm-tests"))
    configure_environment(work_dir=root / "work", cache_dir=cache)
    config.fmrilm_root = root  # type: ignore[attr-defined]


def pytest_unconfigure(config: pytest.Config) -> None:
    """Remove this process's temporary session folder (each xdist worker has its own)."""
    root = getattr(config, "fmrilm_root", None)
    if root is not None and _SESSION_ROOT is None:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(autouse=True)
def _restore_process_environment() -> object:
    """In-process CLI runs point TMPDIR and caches at their work dir: undo that after a test."""
    import tempfile

    saved_env, saved_tempdir = dict(os.environ), tempfile.tempdir
    yield
    os.environ.clear()
    os.environ.update(saved_env)
    tempfile.tempdir = saved_tempdir


@pytest.fixture(scope="session")
def session_root(pytestconfig: pytest.Config) -> Path:
    return pytestconfig.fmrilm_root  # type: ignore[attr-defined]


def write_tiny_bids(root: Path, subjects: tuple[str, ...] = ("01", "02")) -> Path:
    """A minimal, validator-clean BIDS dataset: small T1w and two short BOLD runs each.

    The images are noise (enough for the input checks, not for registration); with
    :func:`write_fmriprep_tree` the whole participant level runs on it in seconds.

    Runs: ``task-rest`` and ``task-faces`` (with events). ``RepetitionTime`` lives in
    top-level ``task-*_bold.json`` files, as in most real datasets (BIDS inheritance).
    """
    import json

    import nibabel as nib
    import numpy as np

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "tiny", "BIDSVersion": "1.10.0", "DatasetType": "raw", "License": "CC0",
         "Authors": ["fmrilm-bids tests"]}))
    (root / "README.md").write_text("A tiny dataset made by the fmrilm-bids tests.\n")
    (root / "participants.tsv").write_text(
        "participant_id\tage\tsex\n" + "".join(f"sub-{s}\t3{i}\tF\n" for i, s in
                                             enumerate(subjects)))
    for task in ("rest", "faces"):
        (root / f"task-{task}_bold.json").write_text(json.dumps(
            {"RepetitionTime": 2.0, "TaskName": task, "SliceTiming": [0.0, 1.0, 0.5, 1.5]}))
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    for sub in subjects:
        anat, func = root / f"sub-{sub}" / "anat", root / f"sub-{sub}" / "func"
        anat.mkdir(parents=True)
        func.mkdir(parents=True)
        t1 = nib.Nifti1Image(rng.integers(0, 1000, (12, 12, 12)).astype(np.int16),
                             np.diag([2.0, 2.0, 2.0, 1.0]))
        t1.to_filename(anat / f"sub-{sub}_T1w.nii.gz")
        for task in ("rest", "faces"):
            bold = nib.Nifti1Image(rng.normal(1000, 10, (6, 6, 4, 40)).astype(np.float32),
                                   affine)
            bold.header.set_xyzt_units("mm", "sec")
            bold.header["pixdim"][4] = 2.0
            bold.to_filename(func / f"sub-{sub}_task-{task}_bold.nii.gz")
        (func / f"sub-{sub}_task-faces_events.tsv").write_text(
            "onset\tduration\ttrial_type\tcaption\n0\t2\tface\tA smiling woman.\n"
            "10\t2\tplace\tA quiet beach at dawn.\n")
    return root


def write_fmriprep_tree(bids_dir: Path, root: Path) -> Path:
    """fMRIPrep-shaped derivatives for every BOLD run of ``bids_dir`` (for
    ``--derivatives fmriprep=ROOT``): MNI-space BOLD at 8 mm, brain mask, confounds table.
    """
    import json

    import nibabel as nib
    import numpy as np

    from fmrilm_bids.preproc.confounds import confounds_table

    rng = np.random.default_rng(1)
    affine = np.diag([8.0, 8.0, 8.0, 1.0])
    affine[:3, 3] = (-96, -132, -78)
    shape = (25, 29, 25)
    mask = np.zeros(shape, dtype=np.uint8)
    mask[3:-3, 3:-3, 3:-3] = 1
    (root / "dataset_description.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "fMRIPrep", "BIDSVersion": "1.10.0", "DatasetType": "derivative",
         "GeneratedBy": [{"Name": "fMRIPrep"}]}))
    for raw in sorted(bids_dir.glob("sub-*/**/func/*_bold.nii.gz")):
        n_volumes = nib.load(raw).shape[3]
        stem = raw.name[: -len("_bold.nii.gz")]
        func = root / raw.parent.relative_to(bids_dir)
        func.mkdir(parents=True, exist_ok=True)
        space = f"{stem}_space-MNI152NLin2009cAsym_res-2"
        bold = 100 + rng.normal(0, 1, (*shape, n_volumes)) * mask[..., None]
        nib.Nifti1Image(bold.astype(np.float32), affine).to_filename(
            func / f"{space}_desc-preproc_bold.nii.gz")
        nib.Nifti1Image(mask, affine).to_filename(func / f"{space}_desc-brain_mask.nii.gz")
        voxels = bold[mask > 0]
        table, metadata = confounds_table(
            rng.normal(0, 0.05, (n_volumes, 6)), voxels,
            {"white_matter": voxels[:50], "csf": voxels[50:100]}, voxels[:100], 2.0, 0.008,
            n_dummy=0)
        table.to_csv(func / f"{stem}_desc-confounds_timeseries.tsv", sep="\t", index=False,
                     na_rep="n/a")
        (func / f"{stem}_desc-confounds_timeseries.json").write_text(json.dumps(metadata))
    return root


@pytest.fixture(scope="session")
def tiny_participant_outputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One tiny participant-level run (fMRIPrep input, sub-01, both tasks): its outputs
    (pristine; tests that break files copy them) and the raw dataset."""
    from bids_app.run import main

    root = tmp_path_factory.mktemp("outputs")
    bids = write_tiny_bids(root / "bids")
    fmriprep = write_fmriprep_tree(bids, root / "fmriprep")
    out = root / "out"
    import tempfile

    saved_env, saved_tempdir = dict(os.environ), tempfile.tempdir
    try:
        assert main([str(bids), str(out), "participant", "-w", str(root / "work"),
                     "--skip-bids-validation", "--participant-label", "01", "--nprocs", "2",
                     "--derivatives", f"fmriprep={fmriprep}"]) == 0
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        tempfile.tempdir = saved_tempdir
    return out, bids


@pytest.fixture
def tiny_fmriprep(tiny_bids: Path, tmp_path: Path) -> Path:
    """fMRIPrep derivatives of :func:`tiny_bids` (see :func:`write_fmriprep_tree`)."""
    return write_fmriprep_tree(tiny_bids, tmp_path / "fmriprep")


@pytest.fixture
def tiny_bids(tmp_path: Path) -> Path:
    """A fresh copy of the tiny dataset for each test (tests may break it)."""
    return write_tiny_bids(tmp_path / "bids")


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder nobody can write to (a read-only mount when running as root)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                           capture_output=True, check=False)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a read-only folder here: {mount.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)
