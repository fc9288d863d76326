"""Where the ground truth of a simulated dataset lives, and how to read it back.

The layout and the conventions are documented in :mod:`fmrilm_bids.simulate` (and in
``sourcedata/simulation/README.md`` of every simulated dataset). Later stages' tests use
:func:`load_run_truth` to compare what they recover with what was simulated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from fmrilm_bids.simulate.anatomy import bold_baseline, grid_points, load_template
from fmrilm_bids.simulate.bold import point_spread_sigma
from fmrilm_bids.simulate.geometry import MOTION_PARAMETERS, apply_affine, rigid_matrices

#: Ground-truth folder, relative to the dataset root (``sourcedata`` is not validated).
TRUTH_DIR = Path("sourcedata") / "simulation"


def subject_label(subject: str) -> str:
    """``"sub-01"`` or ``"01"`` -> ``"01"``."""
    return subject.removeprefix("sub-")


def run_stem(subject: str, task: str, run: int | None = None) -> str:
    """BIDS file-name stem of a run, e.g. ``sub-01_task-images_run-2``."""
    stem = f"sub-{subject_label(subject)}_task-{task}"
    return stem if run is None else f"{stem}_run-{run}"


def subject_truth_file(subject: str) -> Path:
    """Subject ground truth (pose, bias field, group), relative to :data:`TRUTH_DIR`."""
    label = subject_label(subject)
    return Path(f"sub-{label}") / f"sub-{label}_simulation.json"


def run_truth_files(subject: str, task: str, run: int | None = None) -> dict[str, Path]:
    """Ground-truth files of one run, relative to :data:`TRUTH_DIR`.

    Keys: ``metadata`` (JSON), ``motion``, ``clean``, ``networks`` (TSVs, every run);
    ``evoked`` and ``amplitudes`` (TSVs, task runs with events only).
    """
    folder = Path(f"sub-{subject_label(subject)}")
    stem = run_stem(subject, task, run)
    return {
        "metadata": folder / f"{stem}_simulation.json",
        "motion": folder / f"{stem}_motion.tsv",
        "clean": folder / f"{stem}_desc-clean_timeseries.tsv",
        "networks": folder / f"{stem}_desc-networks_timeseries.tsv",
        "evoked": folder / f"{stem}_desc-evoked_timeseries.tsv",
        "amplitudes": folder / f"{stem}_amplitudes.tsv",
    }


@dataclass(frozen=True)
class RunTruth:
    """The ground truth of one BOLD run.

    Attributes
    ----------
    metadata : dict
        The run's ``_simulation.json``.
    motion : pandas.DataFrame
        One row per volume: trans_x, trans_y, trans_z (mm), rot_x, rot_y, rot_z (rad),
        framewise_displacement (mm).
    clean : pandas.DataFrame
        Noise-free parcel signals (% signal change), one column per atlas region.
    networks : pandas.DataFrame
        Latent network signals (unit variance), one column per network.
    evoked : pandas.DataFrame or None
        The stimulus-driven part of ``clean`` (task runs).
    amplitudes : pandas.DataFrame or None
        Per event: onset, trial_type, caption, then each region's amplitude (%).
    """

    metadata: dict = field(repr=False)
    motion: pd.DataFrame = field(repr=False)
    clean: pd.DataFrame = field(repr=False)
    networks: pd.DataFrame = field(repr=False)
    evoked: pd.DataFrame | None = field(default=None, repr=False)
    amplitudes: pd.DataFrame | None = field(default=None, repr=False)

    def motion_matrices(self) -> np.ndarray:
        """Head motion ``H_t`` of each volume, shape (n_volumes, 4, 4), scanner world (mm)."""
        return rigid_matrices(self.motion[list(MOTION_PARAMETERS)].to_numpy(),
                              np.asarray(self.metadata["motion_centre_mm"]))

    def mni_to_scanner(self) -> np.ndarray:
        """Where each MNI point is during each volume: ``H_t @ mni_to_bold``, (n, 4, 4)."""
        return self.motion_matrices() @ np.asarray(self.metadata["mni_to_bold"])


def load_subject_truth(dataset: Path, subject: str) -> dict:
    """Read a subject's ``_simulation.json``."""
    return json.loads((Path(dataset) / TRUTH_DIR / subject_truth_file(subject)).read_text())


def load_run_truth(dataset: Path, subject: str, task: str, run: int | None = None) -> RunTruth:
    """Read the ground truth of one run of a simulated dataset."""
    root = Path(dataset) / TRUTH_DIR
    files = run_truth_files(subject, task, run)

    def table(key: str) -> pd.DataFrame | None:
        path = root / files[key]
        return pd.read_csv(path, sep="\t", keep_default_na=False) if path.is_file() else None

    return RunTruth(metadata=json.loads((root / files["metadata"]).read_text()),
                    motion=table("motion"), clean=table("clean"), networks=table("networks"),
                    evoked=table("evoked"), amplitudes=table("amplitudes"))


def true_shift_map(dataset: Path, subject: str, task: str, run: int | None = None,
                   template_space: bool = False) -> np.ndarray:
    """The susceptibility shift (voxels along the run's phase-encoding axis, signed) of a
    run simulated with a field map, on the BOLD grid with the head at rest (volume 0), or
    with ``template_space`` on the template grid of the field.

    Raises
    ------
    ValueError
        When the run was simulated without a field map.
    """
    truth = load_run_truth(dataset, subject, task, run).metadata
    susceptibility = truth.get("susceptibility")
    if not susceptibility:
        raise ValueError(f"{run_stem(subject, task, run)} was simulated without a field map")
    polarity = -1.0 if susceptibility["PhaseEncodingDirection"].endswith("-") else 1.0
    scale = polarity * float(susceptibility["TotalReadoutTime"])
    field_img = nib.load(Path(dataset) / TRUTH_DIR / susceptibility["field_hz"])
    field = np.asarray(field_img.dataobj, dtype=np.float64)
    if template_space:
        return field * scale
    affine = np.asarray(truth["bold_affine"])
    shape = tuple(truth["bold_shape"][:3])
    mni = apply_affine(np.linalg.inv(np.asarray(truth["mni_to_bold"])),
                       grid_points(affine, shape))
    voxels = apply_affine(np.linalg.inv(field_img.affine), mni)
    return scale * ndimage.map_coordinates(field, np.moveaxis(voxels, -1, 0), order=1,
                                           mode="nearest")


def undistorted_reference(dataset: Path) -> np.ndarray:
    """What a BOLD run's mean image would be in template space (2 mm grid) without
    distortion, receive field or drift: the simulator's T2*-weighted baseline at the
    acquisition's point-spread function. Compare the template-space mean BOLD with it."""
    parameters = json.loads((Path(dataset) / TRUTH_DIR / "parameters.json").read_text())
    resolution = int(parameters["bold_source_resolution_mm"])
    template = load_template(resolution)
    sigma = point_spread_sigma(float(parameters["settings"]["bold_voxel_size"]), resolution)
    return ndimage.gaussian_filter(bold_baseline(template), sigma, mode="constant")
