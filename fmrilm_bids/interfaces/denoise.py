"""nipype interface: parcel time series of a template-space run, denoised."""

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
    isdefined,
    traits,
)

from fmrilm_bids.preproc import denoise
from fmrilm_bids.preproc.parcellation import parcel_signals
from fmrilm_bids.resources.atlases import ABSENT_FROM_ATLAS, load_atlas


class _DenoiseInputSpec(BaseInterfaceInputSpec):
    bold_file = File(exists=True, mandatory=True, desc="template-space BOLD series")
    mask_file = File(exists=True, mandatory=True, desc="BOLD brain mask (same grid)")
    confounds_file = File(exists=True, mandatory=True, desc="fMRIPrep-style confounds TSV")
    confounds_metadata = File(exists=True, desc="its JSON sidecar (aCompCor masks)")
    atlas = traits.Str(mandatory=True, desc="bundled atlas name or labelled NIfTI path")
    strategy = traits.Str("24P+aCompCor", usedefault=True)
    high_pass = traits.Float(0.008, usedefault=True)
    fd_threshold = traits.Float(0.5, usedefault=True)
    scrub = traits.Bool(False, usedefault=True)
    dummy_scans = traits.Either(None, traits.Int, default=None, usedefault=True)
    repetition_time = traits.Float(mandatory=True)
    start_time = traits.Float(0.0, usedefault=True,
                              desc="time (s) of a volume's sample after its onset (slice-"
                              "timing reference)")
    sources = traits.List(traits.Str, [], usedefault=True, desc="BIDS URIs of the inputs")


class _DenoiseOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="TSV, one column per present parcel")
    metadata = traits.Dict(desc="sidecar content")
    atlas_name = traits.Str(desc="the seg- entity")
    atlas_file = File(exists=True, desc="the atlas on the BOLD grid (reports)")


class DenoiseParcellate(SimpleInterface):
    """Average the BOLD signal within each parcel, then regress the strategy's confounds.

    The sidecar lists the atlas, the strategy in words, ``RepetitionTime``, ``StartTime``
    (time of the first row after the run's first volume onset: discarded volumes plus the
    slice-timing reference), discarded and censored volumes, and the ``MissingParcels`` (listed
    in the atlas, no voxel within the BOLD mask), which have no column, with the reason of each
    in ``MissingParcelReasons`` (outside the field of view / brain mask, no voxel in the
    atlas image at the BOLD resolution, or absent from the atlas image altogether: listed in
    its label table only).
    """

    input_spec = _DenoiseInputSpec
    output_spec = _DenoiseOutputSpec

    def _run_interface(self, runtime):
        bold_img = nib.load(self.inputs.bold_file)
        mask = np.asarray(nib.load(self.inputs.mask_file).dataobj) > 0
        if not mask.any():
            raise ValueError(f"{self.inputs.mask_file}: the BOLD brain mask is empty; the "
                             "registration to the template failed (see the report).")
        atlas = load_atlas(self.inputs.atlas, reference=nib.Nifti1Image(
            mask.astype(np.uint8), bold_img.affine))
        labels = np.asarray(atlas.image.dataobj)
        bold = np.asarray(bold_img.dataobj)
        parcels = parcel_signals(bold[mask], labels[mask], atlas.indices)
        table = pd.read_csv(self.inputs.confounds_file, sep="\t", na_values="n/a")
        metadata = {}
        if isdefined(self.inputs.confounds_metadata):
            metadata = json.loads(Path(self.inputs.confounds_metadata).read_text())
        strategy = denoise.get_strategy(self.inputs.strategy)
        n_volumes = parcels.signals.shape[0]
        if len(table) != n_volumes:
            raise ValueError(f"{self.inputs.confounds_file} has {len(table)} rows for a run "
                             f"of {n_volumes} volumes.")
        n_dummy = denoise.non_steady_state_count(table, self.inputs.dummy_scans)
        censored = []
        if self.inputs.scrub:
            censored = denoise.censored_volumes(
                table["framewise_displacement"].to_numpy(), self.inputs.fd_threshold,
                start=n_dummy)
        keep = np.setdiff1d(np.arange(n_dummy, n_volumes), censored)
        cleaned = denoise.clean_signals(
            parcels.signals, denoise.select_confounds(table, strategy, metadata),
            self.inputs.repetition_time, self.inputs.high_pass, keep)
        names = [atlas.labels[v] for v in parcels.present]
        in_image, absent = atlas.present_labels(), atlas.absent_labels()
        missing_reasons = {
            atlas.labels[v]: (ABSENT_FROM_ATLAS if v in absent
                              else "outside the BOLD brain mask" if v in in_image
                              else "no voxel in the atlas image at this resolution")
            for v in parcels.missing}
        cwd = Path(runtime.cwd)
        out = cwd / f"seg-{atlas.name}_timeseries.tsv"
        pd.DataFrame(cleaned, columns=names).to_csv(out, sep="\t", index=False,
                                                    float_format="%.6g")
        atlas_file = cwd / f"seg-{atlas.name}_dseg.nii.gz"
        atlas.image.to_filename(atlas_file)
        scrub = (f" Volumes with framewise displacement above {self.inputs.fd_threshold} mm "
                 "were censored." if self.inputs.scrub else "")
        self._results.update(
            out_file=str(out),
            atlas_name=atlas.name,
            atlas_file=str(atlas_file),
            metadata={
                "Atlas": atlas.name,
                "AtlasSource": str(self.inputs.atlas),
                "DenoisingStrategy": strategy.name,
                "DenoisingDescription": (
                    f"Parcel means regressed on {strategy.description}, with a cosine "
                    f"high-pass filter at {self.inputs.high_pass} Hz; non-steady-state "
                    f"volumes discarded; z-scored.{scrub}"),
                "RepetitionTime": self.inputs.repetition_time,
                "StartTime": self.inputs.start_time
                + float(keep[0]) * self.inputs.repetition_time,
                "NonSteadyStateVolumes": n_dummy,
                "CensoredVolumes": censored,
                "HighPass": self.inputs.high_pass,
                "Standardized": "zscore",
                "MissingParcels": list(missing_reasons),
                "MissingParcelReasons": missing_reasons,
                "ParcelVoxelCounts": dict(zip(names, parcels.voxels, strict=True)),
                "Sources": list(self.inputs.sources),
            },
        )
        return runtime
