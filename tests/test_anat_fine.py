"""The lighter anatomical path: a fine T1w is fit on shrunk copies, written at full size."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from fmrilm_bids.preproc.registration import N4_WORKING_MM, n4_bias_correct, working_spacing


def test_only_a_t1w_finer_than_1mm_is_shrunk() -> None:
    assert working_spacing((0.7, 0.7, 0.7), N4_WORKING_MM) == (2.0, 2.0, 2.0)
    assert working_spacing((1.0, 0.8, 1.2), 1.0) == (1.0, 1.0, 1.0)
    assert working_spacing((1.0, 1.0, 1.0), N4_WORKING_MM) is None
    assert working_spacing((2.0, 2.0, 2.0), 1.0) is None


def _phantom(path: Path, voxel: float, shape: tuple[int, int, int]) -> tuple[np.ndarray, ...]:
    """A head-like ellipsoid (two tissues) under a smooth multiplicative bias."""
    rng = np.random.default_rng(0)
    grid = (np.indices(shape, dtype=np.float32).T - (np.array(shape) - 1) / 2).T * voxel
    radius = np.sqrt((grid[0] / 60) ** 2 + (grid[1] / 75) ** 2 + (grid[2] / 60) ** 2)
    tissue = np.where(radius < 0.6, 100.0, np.where(radius < 1.0, 60.0, 0.0))
    bias = np.exp(0.35 * grid[0] / 60 - 0.25 * grid[2] / 60).astype(np.float32)
    image = (tissue * bias + rng.normal(0, 1.0, shape) * (tissue > 0)).astype(np.float32)
    affine = np.diag([voxel, voxel, voxel, 1.0])
    nib.Nifti1Image(image, affine).to_filename(path)
    return tissue, bias


def test_n4_on_a_fine_t1w_removes_the_bias_at_full_size(tmp_path: Path) -> None:
    shape = (190, 230, 190)  # 0.7 mm: 13 x 16 x 13 cm
    tissue, _ = _phantom(tmp_path / "t1w.nii.gz", 0.7, shape)
    out = n4_bias_correct(tmp_path / "t1w.nii.gz", tmp_path / "n4.nii.gz")
    corrected = np.asarray(nib.load(out).dataobj)
    assert corrected.shape == shape and nib.load(out).header.get_zooms()[:3] == (0.7,) * 3
    inner = tissue == 100.0
    raw = np.asarray(nib.load(tmp_path / "t1w.nii.gz").dataobj)
    cv_before = raw[inner].std() / raw[inner].mean()
    cv_after = corrected[inner].std() / corrected[inner].mean()
    assert cv_after < 0.4 * cv_before, (cv_before, cv_after)
