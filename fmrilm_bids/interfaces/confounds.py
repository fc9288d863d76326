"""nipype interface computing the confounds table of a template-space BOLD run."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)
from scipy import ndimage

from fmrilm_bids.preproc.confounds import confounds_table

#: Probability above which a template voxel counts as white matter / CSF.
TISSUE_THRESHOLD = 0.9


class _ConfoundsInputSpec(BaseInterfaceInputSpec):
    bold_std = File(exists=True, mandatory=True)
    mask_std = File(exists=True, mandatory=True)
    motion_params = File(exists=True, mandatory=True)
    wm_probseg = File(exists=True, mandatory=True)
    csf_probseg = File(exists=True, mandatory=True)
    n_dummy = traits.Int(0, usedefault=True)
    repetition_time = traits.Float(mandatory=True)
    high_pass = traits.Float(0.008, usedefault=True)


class _ConfoundsOutputSpec(TraitedSpec):
    confounds_file = File(exists=True)
    confounds_metadata = traits.Dict(desc="sidecar content")
    metadata_file = File(exists=True)


class BoldConfounds(SimpleInterface):
    """fMRIPrep-style confounds of a template-space run.

    Tissue masks come from the template's probability maps (the run is normalised to the
    template): white matter above :data:`TISSUE_THRESHOLD`, eroded by one voxel; CSF above
    the threshold; both within the BOLD brain mask. aCompCor uses their union.
    """

    input_spec = _ConfoundsInputSpec
    output_spec = _ConfoundsOutputSpec

    def _run_interface(self, runtime):
        bold = np.asarray(nib.load(self.inputs.bold_std).dataobj)
        mask = np.asarray(nib.load(self.inputs.mask_std).dataobj) > 0
        wm = np.asarray(nib.load(self.inputs.wm_probseg).dataobj) > TISSUE_THRESHOLD
        csf = np.asarray(nib.load(self.inputs.csf_probseg).dataobj) > TISSUE_THRESHOLD
        wm = ndimage.binary_erosion(wm) & mask
        csf = csf & mask
        params = pd.read_csv(self.inputs.motion_params, sep="\t").to_numpy()
        table, metadata = confounds_table(
            params, bold[mask], {"white_matter": bold[wm], "csf": bold[csf]},
            bold[wm | csf], self.inputs.repetition_time, self.inputs.high_pass,
            self.inputs.n_dummy)
        cwd = Path(runtime.cwd)
        table.to_csv(cwd / "confounds.tsv", sep="\t", index=False, na_rep="n/a")
        (cwd / "confounds.json").write_text(json.dumps(metadata, indent=2))
        self._results["confounds_file"] = str(cwd / "confounds.tsv")
        self._results["metadata_file"] = str(cwd / "confounds.json")
        self._results["confounds_metadata"] = metadata
        return runtime
