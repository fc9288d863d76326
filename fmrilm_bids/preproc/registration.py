"""Image registration with antspyx (real ANTs, in-process).

Four registrations, as in fMRIPrep:

* :func:`register_to_template` -- T1w to template, affine then SyN (mutual information);
  also derives the T1w brain mask by warping the template's brain mask back (the idea of
  ``antsBrainExtraction``: the template's skull-stripping, carried by the registration);
* :func:`coregister` -- BOLD reference to T1w brain, rigid, mutual information;
* :func:`fieldmap_to_reference` -- a B0 field map to the BOLD reference, rigid, through
  its reference image (magnitude or unwarped EPI), as SDCflows does;
* :func:`n4_bias_correct` -- N4 intensity non-uniformity correction of the T1w.

Transforms stay ANTs files (ITK conventions, LPS coordinates) on disk;
:func:`itk_affine_to_ras` and :func:`points_field` turn them into RAS+ world mappings that
:mod:`fmrilm_bids.preproc.resampling` composes with head motion into one resampling step.

A fine T1w (e.g. 0.7 mm, 274 x 384 x 384) is *fit* on a shrunk copy, as ANTs' shrink
factors do, and full resolution is kept only for what is written in T1w space: N4 fits its
bias field on a copy at :data:`N4_WORKING_MM` and divides the full image by the smooth field
brought back by linear interpolation; the affine and SyN stages are fit on a copy at the
template's voxel size (2 mm by default; never finer than :data:`FINE_T1W_MM`) and the
transforms, physical-space mappings, then apply to the full image; the brain mask is
carried back on the shrunk grid (the template's mask has no finer detail) and brought to the
full grid by nearest neighbour. A T1w of :data:`FINE_T1W_MM` or coarser is used as it is.

antspyx pitfalls handled here: every call writes under an explicit ``outprefix`` (never
``/tmp``); results are deterministic (``set_ants_deterministic`` with the run's seed, which
also makes ITK single-threaded: ANTs nodes use one core, and MultiProc runs others beside);
``fwdtransforms`` of a registration started from ``initial_transform`` already contain it.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import ants
import nibabel as nib
import numpy as np

#: ITK uses LPS+ world coordinates, NIfTI/nibabel RAS+: flip the first two axes.
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@contextmanager
def ants_session(seed: int):
    """Make antspyx deterministic (seeded, and single-threaded: ITK's multi-threaded
    metrics are not reproducible) for the enclosed calls."""

    ants.config.set_ants_deterministic(True, seed_value=int(seed))
    yield ants


#: A T1w with a voxel side finer than this (mm) is fit on shrunk copies; others as they are.
FINE_T1W_MM = 1.0
#: Voxel size (mm) of the copy on which N4 fits the bias field of a fine T1w.
N4_WORKING_MM = 2.0
#: N4's own shrink factor (as before for a T1w fit as it is; on the working copy, the
#: factor that fits the field at about 4 mm, as on a 1 mm image).
N4_SHRINK_AT_1MM = 4


def working_spacing(spacing: tuple[float, ...], working_mm: float) -> tuple[float, ...] | None:
    """The isotropic spacing at which to fit an image of ``spacing``, or None to use it as
    it is (no voxel side finer than :data:`FINE_T1W_MM`)."""
    if min(spacing) >= FINE_T1W_MM * 0.99:
        return None
    return (float(working_mm),) * len(spacing)


def _shrunk(image, working_mm: float):
    """``image`` resampled (linear) to ``working_mm`` voxels, or itself when not finer."""
    spacing = working_spacing(tuple(image.spacing), working_mm)
    return image if spacing is None else ants.resample_image(image, spacing, use_voxels=False,
                                                              interp_type=0)


def n4_bias_correct(in_file: Path, out_file: Path, seed: int = 42) -> Path:
    """N4 bias-field correction of a T1w (head mask from Otsu-like thresholding).

    The field is fit on a copy at :data:`N4_WORKING_MM` when the T1w is finer (N4 shrinks
    it further, to about 4 mm, as on any 1 mm image), then brought back to the full grid.

    Returns
    -------
    Path
        ``out_file``, float32.
    """
    with ants_session(seed) as ants:
        img = ants.image_read(str(in_file))
        work = _shrunk(img, N4_WORKING_MM)
        head = ants.get_mask(work, cleanup=2)
        if work is img:
            corrected = ants.n4_bias_field_correction(img, mask=head,
                                                      shrink_factor=N4_SHRINK_AT_1MM)
        else:
            shrink = max(1, round(N4_SHRINK_AT_1MM / N4_WORKING_MM))
            field = ants.n4_bias_field_correction(work, mask=head, shrink_factor=shrink,
                                                  return_bias_field=True)
            full_field = ants.resample_image_to_target(field, img, interp_type="linear")
            values = full_field.numpy()
            corrected = img.new_image_like(img.numpy() / np.where(values > 0, values, 1.0))
        ants.image_write(corrected, str(out_file))
    return Path(out_file)


@dataclass(frozen=True)
class TemplateRegistration:
    """Files of a T1w-to-template registration."""

    forward_transforms: list[str]  # warp moving (T1w) images into the template grid
    t1w_mask: str  # template brain mask carried into T1w space
    t1w_brain: str  # masked T1w
    std_t1w: str  # the T1w resampled into the template grid (for reports)


def register_to_template(
    t1w: Path,
    template: Path,
    template_mask: Path,
    out_dir: Path,
    sloppy: bool = False,
    seed: int = 42,
) -> TemplateRegistration:
    """Register a (bias-corrected, whole-head) T1w to the template: affine, then SyN.

    Steps: (1) affine, T1w to the whole-head template; (2) the template brain mask, dilated
    by 3 voxels, is carried into T1w space by (1); (3) affine refinement and SyN between the
    two images restricted to that mask, initialised with (1), so that the brain drives the
    fit whether the T1w is whole-head or already skull-stripped; (4) the brain mask is the
    template's carried back through the full transform.

    Parameters
    ----------
    sloppy : bool
        Coarser, shorter optimisation (tests, quick looks): about 3x faster.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with ants_session(seed) as ants:
        full = ants.image_read(str(t1w))
        fixed = ants.image_read(str(template))
        # Fit on a copy at the template's voxel size; write on ``full``.
        moving = _shrunk(full, max(min(fixed.spacing), FINE_T1W_MM))
        fixed_mask = ants.image_read(str(template_mask))
        affine = ants.registration(
            fixed=fixed, moving=moving, type_of_transform="AffineFast" if sloppy else "Affine",
            outprefix=str(out_dir / "affine_"),
        )
        wide_mask = ants.iMath(fixed_mask, "MD", 3)
        moving_mask = ants.apply_transforms(moving, wide_mask, affine["invtransforms"],
                                            interpolator="nearestNeighbor")
        syn = ants.registration(
            fixed=fixed * wide_mask, moving=moving * moving_mask, type_of_transform="SyN",
            initial_transform=affine["fwdtransforms"],
            aff_iterations=(200, 100, 0, 0) if sloppy else (1000, 500, 250, 0),
            reg_iterations=(20, 10, 0) if sloppy else (60, 30, 10),
            outprefix=str(out_dir / "syn_"),
        )
        mask = ants.apply_transforms(moving, fixed_mask, syn["invtransforms"],
                                     interpolator="nearestNeighbor")
        mask = ants.iMath(ants.threshold_image(mask, 0.5, 1e9), "FillHoles")
        if moving is not full:
            mask = ants.resample_image_to_target(mask, full, interp_type="nearestNeighbor")
        paths = {
            "mask": out_dir / "t1w_desc-brain_mask.nii.gz",
            "brain": out_dir / "t1w_desc-brain_T1w.nii.gz",
            "std": out_dir / "space-template_T1w.nii.gz",
        }
        ants.image_write(mask, str(paths["mask"]))
        ants.image_write(full * mask, str(paths["brain"]))
        ants.image_write(ants.apply_transforms(fixed, full, syn["fwdtransforms"]),
                         str(paths["std"]))
    return TemplateRegistration(
        forward_transforms=[str(p) for p in syn["fwdtransforms"]],
        t1w_mask=str(paths["mask"]),
        t1w_brain=str(paths["brain"]),
        std_t1w=str(paths["std"]),
    )


def coregister(moving: Path, fixed: Path, fixed_mask: Path, out_dir: Path,
               seed: int = 42) -> str:
    """Rigid, mutual-information registration of a BOLD reference to the T1w brain.

    Returns
    -------
    str
        The ITK affine file mapping T1w (fixed) points to BOLD-reference (moving) points.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with ants_session(seed) as ants:
        fixed_img = ants.image_read(str(fixed))
        moving_img = ants.image_read(str(moving))
        mask = ants.iMath(ants.image_read(str(fixed_mask)), "MD", 2)
        result = ants.registration(
            fixed=fixed_img, moving=moving_img, type_of_transform="Rigid",
            aff_metric="mattes", mask=mask, outprefix=str(out_dir / "coreg_"),
        )
    return str(result["fwdtransforms"][0])


def fieldmap_to_reference(fieldmap: Path, fieldmap_reference: Path, target: Path,
                          out_dir: Path, seed: int = 42) -> np.ndarray:
    """A field map (Hz) on the grid of ``target`` (the BOLD reference).

    ``fieldmap_reference`` (the field map's magnitude, or its unwarped EPI average, on the
    field map's grid) is registered rigidly to ``target`` (mutual information); the field is
    carried by that transform (linear interpolation, 0 beyond the field map's extent).

    Returns
    -------
    array
        The field (Hz) on the grid of ``target``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with ants_session(seed) as ants:
        fixed = ants.image_read(str(target))
        result = ants.registration(
            fixed=fixed, moving=ants.image_read(str(fieldmap_reference)),
            type_of_transform="Rigid", aff_metric="mattes",
            outprefix=str(out_dir / "fmap2ref_"))
        moved = ants.apply_transforms(fixed, ants.image_read(str(fieldmap)),
                                      result["fwdtransforms"], interpolator="linear")
    return moved.numpy()


def resample_to(moving: Path, fixed: Path, transforms: list[str]) -> nib.Nifti1Image:
    """``moving`` resampled onto the grid of ``fixed`` through an antspyx transform list
    (e.g. a BOLD reference into T1w space through the coregistration), linear."""
    moved = ants.apply_transforms(ants.image_read(str(fixed)), ants.image_read(str(moving)),
                                  [str(t) for t in transforms], interpolator="linear")
    return nib.Nifti1Image(moved.numpy().astype(np.float32), nib.load(str(fixed)).affine)


def itk_affine_to_ras(path: Path) -> np.ndarray:
    """4x4 RAS+ matrix of an ITK/ANTs linear transform file (fixed point -> moving point)."""

    transform = ants.read_transform(str(path))
    corners = np.vstack([np.zeros(3), np.eye(3) * 100.0])
    mapped = np.array([transform.apply_to_point(tuple(p)) for p in corners])
    lps = np.eye(4)
    lps[:3, 3] = mapped[0]
    lps[:3, :3] = (mapped[1:] - mapped[0]).T / 100.0
    return _LPS @ lps @ _LPS


def points_field(reference: Path, transforms: list[str], out_dir: Path) -> np.ndarray:
    """Where each voxel centre of ``reference`` lands through ``transforms`` (RAS+ mm).

    ``transforms`` is an antspyx transform list as used to resample a moving image onto
    ``reference`` (e.g. a registration's ``fwdtransforms``); the result, of shape
    ``reference.shape + (3,)``, holds the matching world points of the moving image.
    """

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ref_img = ants.image_read(str(reference))
    composed = ants.apply_transforms(ref_img, ref_img, transforms,
                                     compose=str(out_dir / "points_"))
    displacement = np.asarray(nib.load(composed).dataobj, dtype=np.float64)
    os.remove(composed)
    ref = nib.load(str(reference))
    shape = ref.shape[:3]
    ijk = np.indices(shape, dtype=np.float64).reshape(3, -1).T
    ras = ijk @ ref.affine[:3, :3].T + ref.affine[:3, 3]
    moved = ras * _LPS.diagonal()[:3] + displacement.reshape(-1, 3)
    return (moved * _LPS.diagonal()[:3]).reshape(*shape, 3)
