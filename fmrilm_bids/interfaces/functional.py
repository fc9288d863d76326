"""nipype interfaces of the BOLD steps: reference, motion, slice timing, coregistration,
one-step resampling to the template."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)
from scipy import ndimage

from fmrilm_bids.errors import InputDataError
from fmrilm_bids.preproc import fieldmap, motion, registration, resampling
from fmrilm_bids.preproc.confounds import detect_non_steady_state
from fmrilm_bids.preproc.slice_timing import slice_time_correct


def load_bold(path: str) -> nib.Nifti1Image:
    """Load a BOLD run and check it is a usable 4-D series."""
    img = nib.load(path)
    if img.ndim != 4 or img.shape[-1] < 2:
        raise InputDataError(f"{path}: a BOLD run must be 4-D with 2+ volumes, not "
                             f"{img.shape}.")
    return img


def save_image(data: np.ndarray, affine: np.ndarray, path: Path, header=None,
               dtype: type = np.float32) -> str:
    """Write ``data`` as ``dtype`` (float32 by default) with ``affine`` as qform and sform
    (unscaled); returns the path."""
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine, header)
    img.header.set_data_dtype(dtype)
    img.header.set_slope_inter(1.0, 0.0)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.to_filename(path)
    return str(path)


def _rough_mask(mean: np.ndarray) -> np.ndarray:
    return mean > 0.2 * np.percentile(mean, 98)


class _ReferenceInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True)
    dummy_scans = traits.Either(None, traits.Int, default=None, usedefault=True,
                                desc="non-steady-state volumes (None: detect them)")


class _ReferenceOutputSpec(TraitedSpec):
    ref_file = File(exists=True)
    n_dummy = traits.Int()


class BoldReference(SimpleInterface):
    """Detect non-steady-state volumes and build a sharp BOLD reference after them."""

    input_spec = _ReferenceInputSpec
    output_spec = _ReferenceOutputSpec

    def _run_interface(self, runtime):
        img = load_bold(self.inputs.in_file)
        data = img.get_fdata(dtype=np.float32)
        mask = _rough_mask(np.median(data, axis=-1))
        if self.inputs.dummy_scans is None:
            n_dummy = detect_non_steady_state(data[mask].mean(axis=0))
        else:
            n_dummy = int(self.inputs.dummy_scans)
        if n_dummy >= data.shape[-1] - 1:
            raise InputDataError(f"{self.inputs.in_file}: {n_dummy} non-steady-state volumes "
                                 f"leave nothing of {data.shape[-1]}; set --dummy-scans.")
        ref = motion.reference_volume(data, img.affine, start=n_dummy)
        self._results["ref_file"] = save_image(ref, img.affine,
                                               Path(runtime.cwd) / "boldref.nii.gz")
        self._results["n_dummy"] = n_dummy
        return runtime


class _RealignInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True)
    ref_file = File(exists=True, mandatory=True)


class _RealignOutputSpec(TraitedSpec):
    transforms = File(exists=True, desc=".npy (T, 4, 4) reference -> volume, RAS+ mm")
    params = File(exists=True, desc="TSV of trans_x .. rot_z")


class Realign(SimpleInterface):
    """Head-motion estimation (:func:`fmrilm_bids.preproc.motion.realign`)."""

    input_spec = _RealignInputSpec
    output_spec = _RealignOutputSpec

    def _run_interface(self, runtime):
        img = load_bold(self.inputs.in_file)
        ref = nib.load(self.inputs.ref_file)
        result = motion.realign(img.get_fdata(dtype=np.float32), img.affine,
                                ref.get_fdata(dtype=np.float32))
        cwd = Path(runtime.cwd)
        np.save(cwd / "motion_xfm.npy", result.transforms)
        pd.DataFrame(result.params, columns=list(motion.MOTION_COLUMNS)).to_csv(
            cwd / "motion_params.tsv", sep="\t", index=False)
        self._results["transforms"] = str(cwd / "motion_xfm.npy")
        self._results["params"] = str(cwd / "motion_params.tsv")
        return runtime


class _STCInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True)
    slice_timing = traits.List(traits.Float, mandatory=True)
    repetition_time = traits.Float(mandatory=True)
    slice_encoding_direction = traits.Str("k", usedefault=True)


class _STCOutputSpec(TraitedSpec):
    out_file = File(exists=True)


class SliceTimingCorrection(SimpleInterface):
    """Slice-timing correction (:func:`fmrilm_bids.preproc.slice_timing.slice_time_correct`)."""

    input_spec = _STCInputSpec
    output_spec = _STCOutputSpec

    def _run_interface(self, runtime):
        img = load_bold(self.inputs.in_file)
        corrected = slice_time_correct(
            img.get_fdata(dtype=np.float32), self.inputs.slice_timing,
            self.inputs.repetition_time, self.inputs.slice_encoding_direction)
        self._results["out_file"] = save_image(corrected, img.affine,
                                          Path(runtime.cwd) / "bold_stc.nii", img.header)
        return runtime


class _CoregInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="BOLD reference")
    t1w_brain = File(exists=True, mandatory=True)
    t1w_mask = File(exists=True, mandatory=True)
    seed = traits.Int(42, usedefault=True)


class _CoregOutputSpec(TraitedSpec):
    transform = File(exists=True, desc="ITK affine, T1w points -> BOLD reference points")


class Coregistration(SimpleInterface):
    """Rigid, mutual-information BOLD-to-T1w registration (antspyx)."""

    input_spec = _CoregInputSpec
    output_spec = _CoregOutputSpec

    def _run_interface(self, runtime):
        self._results["transform"] = registration.coregister(
            self.inputs.in_file, self.inputs.t1w_brain, self.inputs.t1w_mask,
            Path(runtime.cwd), seed=self.inputs.seed)
        return runtime


class _ResampleInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="BOLD series (slice-time corrected)")
    motion_transforms = File(exists=True, mandatory=True)
    coreg_transform = File(exists=True, mandatory=True)
    anat_transforms = InputMultiObject(File(exists=True), mandatory=True,
                                       desc="T1w -> template (antspyx forward list)")
    template = File(exists=True, mandatory=True)
    template_mask = File(exists=True, mandatory=True)
    repetition_time = traits.Float(mandatory=True)
    order = traits.Int(3, usedefault=True)
    margin_mm = traits.Float(8.0, usedefault=True,
                             desc="samples beyond the template brain mask (mm)")
    vsm_file = File(exists=True, desc="voxel shift map on the BOLD reference grid (SDC)")
    pe_axis = traits.Int(desc="the BOLD's phase-encoding voxel axis (with vsm_file)")
    jacobian = traits.Bool(True, usedefault=True,
                           desc="multiply by the Jacobian of the shift (with vsm_file)")


class _ResampleOutputSpec(TraitedSpec):
    bold_std = File(exists=True)
    boldref_std = File(exists=True)
    mask_std = File(exists=True)


class ResampleToTemplate(SimpleInterface):
    """Compose motion, coregistration and normalisation (and, with ``vsm_file``, the
    susceptibility distortion); resample each volume once.

    Output voxels farther than ``margin_mm`` from the template brain mask are not sampled
    (zero). The BOLD brain mask is the template brain mask within the field of view of
    every volume, without voxels of near-zero mean signal.
    """

    input_spec = _ResampleInputSpec
    output_spec = _ResampleOutputSpec

    def _run_interface(self, runtime):
        cwd = Path(runtime.cwd)
        template = nib.load(self.inputs.template)
        brain = np.asarray(nib.load(self.inputs.template_mask).dataobj) > 0
        zoom = float(np.sqrt((template.affine[:3, :3] ** 2).sum(axis=0)).min())
        sampled = ndimage.binary_dilation(
            brain, iterations=max(1, round(self.inputs.margin_mm / zoom)))
        to_t1w = registration.points_field(Path(self.inputs.template),
                                           list(self.inputs.anat_transforms), cwd)[sampled]
        coreg = registration.itk_affine_to_ras(self.inputs.coreg_transform)
        points = to_t1w @ coreg[:3, :3].T + coreg[:3, 3]
        bold = load_bold(self.inputs.in_file)
        shifts = jacobian = None
        if isdefined(self.inputs.vsm_file):
            vsm_img = nib.load(self.inputs.vsm_file)
            vsm = vsm_img.get_fdata(dtype=np.float64)
            shifts = resampling.sample_points(vsm, vsm_img.affine, points)
            if self.inputs.jacobian:
                jacobian = resampling.sample_points(
                    fieldmap.shift_jacobian(vsm, self.inputs.pe_axis), vsm_img.affine, points)
        values, inside = resampling.resample_series(
            bold.get_fdata(dtype=np.float32), bold.affine, points,
            np.load(self.inputs.motion_transforms), order=self.inputs.order,
            pe_axis=self.inputs.pe_axis if shifts is not None else None, shifts=shifts,
            jacobian=jacobian)
        shape = template.shape[:3]
        series = np.zeros((*shape, values.shape[1]), dtype=np.float32)
        series[sampled] = values
        mean = series.mean(axis=-1)
        covered = np.zeros(shape, dtype=bool)
        covered[sampled] = inside
        in_brain = brain & covered
        signal = mean > 0.1 * np.median(mean[in_brain]) if in_brain.any() else in_brain
        mask = in_brain & signal
        header = nib.Nifti1Header()
        header.set_xyzt_units("mm", "sec")
        header["pixdim"][4] = self.inputs.repetition_time
        self._results["bold_std"] = save_image(series, template.affine, cwd / "bold_std.nii",
                                          header)
        self._results["boldref_std"] = save_image(mean, template.affine, cwd / "boldref_std.nii.gz")
        mask_img = nib.Nifti1Image(mask.astype(np.uint8), template.affine)
        mask_img.set_sform(template.affine, code=1)
        mask_img.to_filename(cwd / "mask_std.nii.gz")
        self._results["mask_std"] = str(cwd / "mask_std.nii.gz")
        return runtime
