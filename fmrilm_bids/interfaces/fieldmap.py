"""nipype interfaces of susceptibility distortion correction: field maps (phase difference,
PEPOLAR) and their voxel shift map on the BOLD reference (:mod:`fmrilm_bids.preproc.fieldmap`).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from fmrilm_bids.interfaces.functional import save_image
from fmrilm_bids.preproc import fieldmap, registration


def _mean_volume(path: str) -> tuple[np.ndarray, nib.Nifti1Image]:
    """A 3-D image, or the mean of a 4-D one, as float64 (with its image)."""
    img = nib.load(path)
    data = np.asarray(img.get_fdata(dtype=np.float64))
    return (data.mean(axis=-1) if data.ndim == 4 else data), img


class _FieldmapOutputSpec(TraitedSpec):
    fieldmap = File(exists=True, desc="B0 field (Hz) on the field map's grid")
    reference = File(exists=True, desc="undistorted reference image on the same grid")
    mask = File(exists=True, desc="where the field was measured")


class _PhasediffInputSpec(BaseInterfaceInputSpec):
    phasediff = File(exists=True, mandatory=True)
    magnitude = File(exists=True, mandatory=True, desc="the first magnitude image")
    echo_time1 = traits.Float(mandatory=True, desc="s")
    echo_time2 = traits.Float(mandatory=True, desc="s")
    seed = traits.Int(42, usedefault=True)


class PhasediffFieldmap(SimpleInterface):
    """The field (Hz) of a phase-difference map
    (:func:`fmrilm_bids.preproc.fieldmap.phasediff_fieldmap`); reference: the magnitude."""

    input_spec = _PhasediffInputSpec
    output_spec = _FieldmapOutputSpec

    def _run_interface(self, runtime):
        phase, img = _mean_volume(self.inputs.phasediff)
        magnitude, _ = _mean_volume(self.inputs.magnitude)
        field, mask = fieldmap.phasediff_fieldmap(
            phase, magnitude, self.inputs.echo_time1, self.inputs.echo_time2,
            tuple(float(z) for z in img.header.get_zooms()[:3]), seed=self.inputs.seed)
        cwd = Path(runtime.cwd)
        self._results.update(
            fieldmap=save_image(field, img.affine, cwd / "fieldmap_hz.nii.gz"),
            reference=save_image(magnitude, img.affine, cwd / "fieldmap_ref.nii.gz"),
            mask=save_image(mask, img.affine, cwd / "fieldmap_mask.nii.gz", dtype=np.uint8))
        return runtime


class _PepolarInputSpec(BaseInterfaceInputSpec):
    in_files = InputMultiObject(File(exists=True), mandatory=True,
                                desc="_epi images on one grid")
    pe_axis = traits.Int(mandatory=True, desc="the phase-encoding voxel axis (all images)")
    polarities = traits.List(traits.Int, mandatory=True, desc="+1 or -1 per image")
    readout_times = traits.List(traits.Float, mandatory=True, desc="s, per image")


class PepolarFieldmap(SimpleInterface):
    """The field (Hz) of EPI images with opposite phase-encoding polarities
    (:func:`fmrilm_bids.preproc.fieldmap.estimate_pepolar_shift` on the mean image of each
    polarity); reference: the mean of both polarities, unwarped."""

    input_spec = _PepolarInputSpec
    output_spec = _FieldmapOutputSpec

    def _run_interface(self, runtime):
        volumes = [_mean_volume(path) for path in self.inputs.in_files]
        polarities = np.asarray(self.inputs.polarities)
        plus = np.mean([v for (v, _), p in zip(volumes, polarities, strict=True) if p > 0],
                       axis=0)
        minus = np.mean([v for (v, _), p in zip(volumes, polarities, strict=True) if p < 0],
                        axis=0)
        img = volumes[0][1]
        axis = self.inputs.pe_axis
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
        shift = fieldmap.estimate_pepolar_shift(plus, minus, axis, zooms)
        field = shift / float(np.mean(self.inputs.readout_times))
        reference = 0.5 * (fieldmap.unwarp_volume(plus, shift, axis)
                           + fieldmap.unwarp_volume(minus, -shift, axis))
        cwd = Path(runtime.cwd)
        self._results.update(
            fieldmap=save_image(field, img.affine, cwd / "fieldmap_hz.nii.gz"),
            reference=save_image(reference, img.affine, cwd / "fieldmap_ref.nii.gz"),
            mask=save_image(fieldmap.magnitude_mask(reference), img.affine,
                       cwd / "fieldmap_mask.nii.gz", dtype=np.uint8))
        return runtime


class _ShiftMapInputSpec(BaseInterfaceInputSpec):
    fieldmap = File(exists=True, mandatory=True, desc="Hz")
    fieldmap_reference = File(exists=True, mandatory=True)
    boldref = File(exists=True, mandatory=True, desc="the (distorted) BOLD reference")
    pe_axis = traits.Int(mandatory=True, desc="the BOLD's phase-encoding voxel axis")
    polarity = traits.Enum(1, -1, mandatory=True)
    readout_time = traits.Float(mandatory=True, desc="the BOLD's TotalReadoutTime (s)")
    jacobian = traits.Bool(True, usedefault=True)
    seed = traits.Int(42, usedefault=True)


class _ShiftMapOutputSpec(TraitedSpec):
    vsm_file = File(exists=True, desc="voxel shift map on the BOLD reference grid (voxels)")
    corrected_ref = File(exists=True, desc="the BOLD reference, unwarped")


class BoldShiftMap(SimpleInterface):
    """The field map registered to the BOLD reference (rigid, via its reference image), as
    a voxel shift map along the BOLD's phase-encoding axis; and the unwarped BOLD reference
    (for coregistration and the report)."""

    input_spec = _ShiftMapInputSpec
    output_spec = _ShiftMapOutputSpec

    def _run_interface(self, runtime):
        cwd = Path(runtime.cwd)
        field = registration.fieldmap_to_reference(
            Path(self.inputs.fieldmap), Path(self.inputs.fieldmap_reference),
            Path(self.inputs.boldref), cwd, seed=self.inputs.seed)
        vsm = fieldmap.voxel_shift_map(field, self.inputs.readout_time, self.inputs.polarity)
        ref = nib.load(self.inputs.boldref)
        corrected = fieldmap.unwarp_volume(ref.get_fdata(dtype=np.float64), vsm,
                                           self.inputs.pe_axis, jacobian=self.inputs.jacobian)
        self._results.update(
            vsm_file=save_image(vsm, ref.affine, cwd / "vsm.nii.gz"),
            corrected_ref=save_image(np.clip(corrected, 0, None), ref.affine,
                                cwd / "boldref_sdc.nii.gz"))
        return runtime
