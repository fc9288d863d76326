"""nipype interfaces of the anatomical steps (conform, N4, template registration)."""

from __future__ import annotations

import os
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

from fmrilm_bids.errors import InputDataError
from fmrilm_bids.preproc import registration


class _ConformInputSpec(BaseInterfaceInputSpec):
    in_files = InputMultiObject(File(exists=True), mandatory=True, desc="T1w images")


class _ConformOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the T1w, RAS+ voxel order, float32, scaling applied")


class ConformT1w(SimpleInterface):
    """Reorient the (first) T1w to RAS+ storage order as float32 (``scl_slope`` applied).

    Oblique acquisitions keep their world geometry: only the storage order changes.
    """

    input_spec = _ConformInputSpec
    output_spec = _ConformOutputSpec

    def _run_interface(self, runtime):
        img = nib.load(self.inputs.in_files[0])
        if img.ndim != 3:

            raise InputDataError(f"{self.inputs.in_files[0]}: a T1w must be 3-D, not "
                                 f"{img.shape}.")
        img = nib.as_closest_canonical(img)
        data = np.asarray(img.get_fdata(dtype=np.float32))
        out = nib.Nifti1Image(data, img.affine)
        out.header.set_data_dtype(np.float32)
        out.set_qform(img.affine, code=1)
        out.set_sform(img.affine, code=1)
        self._results["out_file"] = str(Path(runtime.cwd) / "t1w_conformed.nii.gz")
        out.to_filename(self._results["out_file"])
        return runtime


class _N4InputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True)
    seed = traits.Int(42, usedefault=True)


class _N4OutputSpec(TraitedSpec):
    out_file = File(exists=True)


class N4BiasFieldCorrection(SimpleInterface):
    """N4 intensity non-uniformity correction (antspyx)."""

    input_spec = _N4InputSpec
    output_spec = _N4OutputSpec

    def _run_interface(self, runtime):
        out = Path(runtime.cwd) / "t1w_desc-n4_T1w.nii.gz"
        registration.n4_bias_correct(self.inputs.in_file, out, seed=self.inputs.seed)
        self._results["out_file"] = str(out)
        return runtime


class _RegistrationInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="bias-corrected whole-head T1w")
    template = File(exists=True, mandatory=True)
    template_mask = File(exists=True, mandatory=True)
    sloppy = traits.Bool(False, usedefault=True)
    seed = traits.Int(42, usedefault=True)


class _RegistrationOutputSpec(TraitedSpec):
    forward_transforms = traits.List(File(exists=True),
                                     desc="antspyx list resampling T1w onto the template")
    t1w_mask = File(exists=True)
    t1w_brain = File(exists=True)
    std_t1w = File(exists=True)


class TemplateRegistration(SimpleInterface):
    """Affine + SyN registration of the T1w to the template; brain mask from the template."""

    input_spec = _RegistrationInputSpec
    output_spec = _RegistrationOutputSpec

    def _run_interface(self, runtime):
        result = registration.register_to_template(
            self.inputs.in_file, self.inputs.template, self.inputs.template_mask,
            out_dir=Path(runtime.cwd), sloppy=self.inputs.sloppy, seed=self.inputs.seed,
        )
        self._results.update(
            forward_transforms=[os.path.abspath(p) for p in result.forward_transforms],
            t1w_mask=result.t1w_mask, t1w_brain=result.t1w_brain, std_t1w=result.std_t1w,
        )
        return runtime
