"""Small synthetic BIDS datasets for the preprocessing tests (known motion and signals).

The "subject" is the 2 mm template placed in the scanner by a rigid pose; the T1w is its
image with a bias field and noise; each BOLD volume samples an EPI-like image of the
template, modulated per AAL3 parcel by known signals, after the head moved by known rigid
transforms (conventions of :mod:`fmrilm_bids.preproc.motion`: volume ``t`` sees the reference
point ``x`` at ``M_t x``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from fmrilm_bids.preproc.motion import params_to_matrix, rotation_matrix
from fmrilm_bids.resources.atlases import load_atlas
from fmrilm_bids.resources.templates import get_template


@dataclass
class SyntheticRun:
    path: Path
    motion: np.ndarray  # (T, 6) parameters about `centre`
    centre: np.ndarray
    signals: dict[str, np.ndarray]  # parcel name -> clean signal (T,)
    n_dummy: int


def _pose(angles: tuple[float, float, float], shift: tuple[float, float, float]) -> np.ndarray:
    pose = np.eye(4)
    pose[:3, :3] = rotation_matrix(np.asarray(angles))
    pose[:3, 3] = shift
    return pose


def _sample(volume: np.ndarray, volume_affine: np.ndarray, world_to_volume_world: np.ndarray,
            affine: np.ndarray, shape: tuple[int, ...], order: int = 1) -> np.ndarray:
    ijk = np.indices(shape, dtype=float).reshape(3, -1)
    world = affine[:3, :3] @ ijk + affine[:3, 3:4]
    moved = world_to_volume_world[:3, :3] @ world + world_to_volume_world[:3, 3:4]
    vox = np.linalg.inv(volume_affine)[:3, :3] @ moved + np.linalg.inv(volume_affine)[:3, 3:4]
    return ndimage.map_coordinates(volume, vox, order=order, mode="constant").reshape(shape)


def oblique_affine(zooms: tuple[float, float, float], shape: tuple[int, int, int],
                   angles: tuple[float, float, float], centre: tuple[float, float, float],
                   flip_x: bool = False) -> np.ndarray:
    """Voxel -> world affine of a tilted grid centred on ``centre`` (LAS storage if flip_x)."""
    scale = np.diag(zooms) @ (np.diag([-1.0, 1, 1]) if flip_x else np.eye(3))
    linear = rotation_matrix(np.asarray(angles)) @ scale
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = np.asarray(centre) - linear @ ((np.asarray(shape) - 1) / 2.0)
    return affine


class SyntheticDataset:
    """Write a BIDS dataset with one subject: a T1w and BOLD runs with known truth."""

    def __init__(self, root: Path, seed: int = 0) -> None:
        self.root = Path(root)
        self.rng = np.random.default_rng(seed)
        template = nib.load(get_template(2, suffix="T1w"))
        self.template_affine = template.affine
        self.template = template.get_fdata(dtype=np.float32)
        self.brain = np.asarray(nib.load(get_template(2, suffix="mask", desc="brain"))
                                .dataobj) > 0
        self.atlas = load_atlas("AAL3", reference=template)
        self.labels = np.asarray(self.atlas.image.dataobj)
        csf = nib.load(get_template(2, suffix="probseg", label="CSF")).get_fdata()
        # EPI-like contrast: CSF bright, brain moderately, a little scalp.
        self.epi = (600 * self.template + 800 * csf * self.brain).astype(np.float32)
        self.pose = _pose((0.08, -0.05, 0.1), (2.0, -3.0, 4.0))  # template -> scanner
        (self.root / "sub-01" / "anat").mkdir(parents=True, exist_ok=True)
        (self.root / "sub-01" / "func").mkdir(parents=True, exist_ok=True)
        (self.root / "dataset_description.json").write_text(json.dumps(
            {"Name": "synthetic", "BIDSVersion": "1.10.0", "DatasetType": "raw"}))
        (self.root / "participants.tsv").write_text("participant_id\nsub-01\n")

    def write_t1w(self, zooms: tuple[float, float, float] = (1.6, 1.6, 2.0)) -> Path:
        shape = tuple(round(s) for s in np.array([190, 230, 190]) / np.array(zooms))
        affine = oblique_affine(zooms, shape, (0.15, 0.0, -0.1), (2, -15, 10))
        image = _sample(self.template, self.template_affine, np.linalg.inv(self.pose),
                        affine, shape, order=1)
        x = np.linspace(-1, 1, shape[0])[:, None, None]
        image = image * (1 + 0.25 * x) * 900 + self.rng.normal(0, 10, shape)
        path = self.root / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
        nib.Nifti1Image(np.clip(image, 0, None).astype(np.float32), affine).to_filename(path)
        return path

    def write_bold(self, name: str, n_volumes: int = 60, shape: tuple[int, int, int] = (40, 48, 30),
                   zooms: tuple[float, float, float] = (4.0, 4.0, 4.5), tr: float = 2.0,
                   n_dummy: int = 2, motion_scale: float = 1.0, centre_z: float = 15.0,
                   int16: bool = True, slice_timing: bool = True) -> SyntheticRun:
        """One run: oblique LAS grid, anisotropic voxels, optional int16 + scl_slope."""
        affine = oblique_affine(zooms, shape, (0.2, 0.05, 0.0), (0, -18, centre_z),
                                flip_x=True)
        centre = affine[:3, :3] @ ((np.array(shape) - 1) / 2.0) + affine[:3, 3]
        t = np.arange(n_volumes)
        walk = ndimage.gaussian_filter1d(self.rng.standard_normal((n_volumes, 6)).cumsum(0),
                                         2.0, axis=0)
        walk -= walk[0]
        walk /= np.abs(walk).max(axis=0) + 1e-9
        motion = walk * np.array([0.8, 1.2, 1.5, 0.02, 0.012, 0.015]) * motion_scale
        signals = {}
        modulation = np.zeros((n_volumes, *self.labels.shape), dtype=np.float32)
        present = sorted(set(np.unique(self.labels)) - {0})
        freqs = self.rng.uniform(0.015, 0.09, len(present))
        phases = self.rng.uniform(0, 2 * np.pi, len(present))
        for k, label in enumerate(present):
            series = np.sin(2 * np.pi * freqs[k] * t * tr + phases[k])
            series += 0.5 * ndimage.gaussian_filter1d(self.rng.standard_normal(n_volumes), 1.0)
            series = (series - series.mean()) / series.std()
            region = self.atlas.labels[int(label)]
            signals[region] = series
            modulation[:, self.labels == label] = 0.03 * series[:, None]
        data = np.empty((*shape, n_volumes), dtype=np.float32)
        to_template = np.linalg.inv(self.pose)
        for v in range(n_volumes):
            head = params_to_matrix(motion[v], centre)
            scene = self.epi * (1 + modulation[v])
            data[..., v] = _sample(scene, self.template_affine,
                                   to_template @ np.linalg.inv(head), affine, shape)
        data *= 1 + 0.4 * (t[None, None, None, :] < n_dummy)
        data += self.rng.normal(0, 8, data.shape).astype(np.float32)
        data = np.clip(data, 0, None)
        path = self.root / "sub-01" / "func" / f"sub-01_{name}_bold.nii.gz"
        if int16:
            img = nib.Nifti1Image(np.round(data / 0.5).astype(np.int16), affine)
            img.header.set_slope_inter(0.5, 0.0)
        else:
            img = nib.Nifti1Image(data, affine)
        img.header.set_xyzt_units("mm", "sec")
        img.header["pixdim"][4] = tr
        img.to_filename(path)
        sidecar = {"RepetitionTime": tr, "TaskName": name.split("_")[0].split("-")[1]}
        (path.parent / path.name.replace(".nii.gz", ".json")).write_text(json.dumps(sidecar))
        if slice_timing:
            order = np.concatenate([np.arange(0, shape[2], 2), np.arange(1, shape[2], 2)])
            timing = np.empty(shape[2])
            timing[order] = np.arange(shape[2]) * tr / shape[2]
            top = self.root / f"task-{sidecar['TaskName']}_bold.json"
            top.write_text(json.dumps({"SliceTiming": [round(float(x), 4) for x in timing],
                                       "SliceEncodingDirection": "k"}))
        return SyntheticRun(path=path, motion=motion, centre=centre, signals=signals,
                            n_dummy=n_dummy)
