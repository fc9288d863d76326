"""nipype interfaces building the per-subject HTML report (see :mod:`fmrilm_bids.reports.html`)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    Directory,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from fmrilm_bids.dataset.output_checks import SELF_CHECKS, VALIDATOR_CHECKS
from fmrilm_bids.preproc.registration import resample_to
from fmrilm_bids.reports.figures import (
    carpet_figure,
    overlay_figure,
    parcellation_figure,
    unwarp_figure,
)
from fmrilm_bids.reports.html import publish_subject_report, section


def validation_section() -> dict[str, object]:
    """What checks these outputs: the official validator, and fmrilm-bids for the rest."""

    return section("Validation of the outputs", [
        "The BIDS validator (schema 1.2.7) checks: " + "; ".join(VALIDATOR_CHECKS) + ".",
        "It has no rule for the files below, which .bidsignore hides from it; fmrilm-bids "
        "checks them itself after each level (TSV columns, n/a for missing values, rows per "
        "run, sidecar keys such as RepetitionTime and Sources): " + "; ".join(SELF_CHECKS)
        + ".",
    ])


def _write_section(runtime, content: dict[str, object]) -> str:
    path = Path(runtime.cwd) / "section.json"
    path.write_text(json.dumps(content))
    return str(path)


class _AnatReportInputSpec(BaseInterfaceInputSpec):
    std_t1w = File(exists=True, mandatory=True)
    template_mask = File(exists=True, mandatory=True)
    source = traits.Str(mandatory=True, desc="the T1w file name")
    template = traits.Str(mandatory=True, desc="template identifier")


class _SectionOutputSpec(TraitedSpec):
    section = File(exists=True, desc="JSON report section")


class AnatReport(SimpleInterface):
    """Section: the T1w normalised to the template, with the template brain outline."""

    input_spec = _AnatReportInputSpec
    output_spec = _SectionOutputSpec

    def _run_interface(self, runtime):
        figure = overlay_figure(
            self.inputs.std_t1w, [(self.inputs.template_mask, "r")],
            f"T1w in {self.inputs.template}")
        self._results["section"] = _write_section(runtime, section(
            "Anatomical",
            [f"{self.inputs.source}: N4 bias-field correction, then affine and SyN "
             f"registration (ANTs, mutual information) to {self.inputs.template}; the brain "
             "mask is the template's, carried back to the T1w."],
            [("Spatial normalisation: the T1w resampled into the template, red: the "
              "template brain mask.", figure)]))
        return runtime


class _BoldReportInputSpec(BaseInterfaceInputSpec):
    run_name = traits.Str(mandatory=True)
    bold_std = File(exists=True, mandatory=True)
    mask_std = File(exists=True, mandatory=True)
    boldref_std = File(exists=True, desc="mean BOLD (computed from bold_std when omitted)")
    template_mask = File(exists=True, desc="template brain mask (omit for fMRIPrep inputs)")
    confounds_file = File(exists=True, mandatory=True)
    methods = traits.List(traits.Str, desc="paragraphs describing the preprocessing")
    atlas_files = InputMultiObject(File(exists=True), mandatory=True)
    timeseries_metadata = traits.List(traits.Dict, mandatory=True)
    sdc_before = File(exists=True, desc="BOLD reference (distorted), for the SDC figure")
    sdc_after = File(exists=True, desc="the BOLD reference unwarped")
    coreg_xfm = File(exists=True, desc="coregistration (T1w -> BOLD reference points)")
    t1w_brain = File(exists=True, desc="the T1w brain, whose edges the SDC figure draws")


class BoldReport(SimpleInterface):
    """Section of one run: registration and mask outlines, parcellation, carpet plot; with
    ``sdc_after``, the BOLD reference before and after distortion correction over the T1w's
    edges."""

    input_spec = _BoldReportInputSpec
    output_spec = _SectionOutputSpec

    def _run_interface(self, runtime):
        name = self.inputs.run_name
        confounds = pd.read_csv(self.inputs.confounds_file, sep="\t", na_values="n/a")
        mask = np.asarray(nib.load(self.inputs.mask_std).dataobj) > 0
        bold = np.asarray(nib.load(self.inputs.bold_std).dataobj)[mask]
        traces = {c: confounds[c].to_numpy() for c in
                  ("framewise_displacement", "std_dvars", "global_signal")
                  if c in confounds}
        first = self.inputs.timeseries_metadata[0]
        n_dummy = int(first["NonSteadyStateVolumes"])
        background = self.inputs.boldref_std
        if not isdefined(background):
            image = nib.load(self.inputs.bold_std)
            background = str(Path(runtime.cwd) / "boldref.nii.gz")
            nib.Nifti1Image(np.asarray(image.dataobj, dtype=np.float32).mean(axis=-1),
                            image.affine).to_filename(background)
        contours = [(self.inputs.mask_std, "g")]
        if isdefined(self.inputs.template_mask):
            contours.insert(0, (self.inputs.template_mask, "r"))
        figures = [
            ("Mean BOLD in template space; red: template brain mask, green: BOLD brain mask "
             "(coregistration, normalisation and mask check).",
             overlay_figure(background, contours, name)),
            ("Framewise displacement (mm), standardised DVARS and global signal above the "
             "carpet plot of brain voxels; shaded: non-steady-state volumes.",
             carpet_figure(bold, traces, n_dummy, name)),
        ]
        if isdefined(self.inputs.sdc_after):
            figures.insert(0, ("Susceptibility distortion correction: the BOLD reference in "
                               "T1w space (through the coregistration) before and after "
                               "unwarping; orange: edges of the T1w's white matter.",
                               self._unwarp_figure(Path(runtime.cwd), name)))
        paragraphs = list(self.inputs.methods)
        fd = confounds.get("framewise_displacement")
        if fd is not None:
            paragraphs.append(f"{len(confounds)} volumes, {n_dummy} non-steady-state; "
                              f"mean framewise displacement {np.nanmean(fd):.3f} mm, "
                              f"maximum {np.nanmax(fd):.3f} mm.")
        paragraphs.append("Denoising: " + first["DenoisingDescription"])
        for atlas_file, meta in zip(self.inputs.atlas_files,
                                    self.inputs.timeseries_metadata, strict=True):
            by_reason: dict[str, list[str]] = {}
            for parcel, reason in meta["MissingParcelReasons"].items():
                by_reason.setdefault(reason, []).append(parcel)
            paragraphs.append(
                f"Atlas {meta['Atlas']}: {len(meta['ParcelVoxelCounts'])} parcels with "
                f"signal; {len(meta['MissingParcels'])} missing."
                + "".join(f" {reason.capitalize()}: {', '.join(parcels)}."
                          for reason, parcels in by_reason.items()))
            if meta.get("CensoredVolumes"):
                paragraphs.append(f"Censored volumes: {meta['CensoredVolumes']}.")
            figures.append((f"Atlas {meta['Atlas']} over the mean BOLD image.",
                            parcellation_figure(atlas_file, background,
                                                        meta["Atlas"])))
        self._results["section"] = _write_section(
            runtime, section(f"BOLD run {name}", paragraphs, figures))
        return runtime

    def _unwarp_figure(self, cwd: Path, name: str) -> str:
        moved = []
        for label in ("sdc_before", "sdc_after"):
            image = resample_to(Path(getattr(self.inputs, label)), Path(self.inputs.t1w_brain),
                                [self.inputs.coreg_xfm])
            image.to_filename(cwd / f"{label}_t1w.nii.gz")
            moved.append(str(cwd / f"{label}_t1w.nii.gz"))
        return unwarp_figure(*moved, self.inputs.t1w_brain, name)


class _SubjectReportInputSpec(BaseInterfaceInputSpec):
    subject = traits.Str(mandatory=True)
    sections = InputMultiObject(File(exists=True), mandatory=True)
    output_dir = Directory(mandatory=True, desc="derivatives root")


class _SubjectReportOutputSpec(TraitedSpec):
    out_report = File(exists=True)


class SubjectReport(SimpleInterface):
    """Write ``sub-<label>.html`` at the derivatives root (atomically), with the
    preprocessing sections saved as its ``preproc`` part (``publish_subject_report``)."""

    input_spec = _SubjectReportInputSpec
    output_spec = _SubjectReportOutputSpec

    def _run_interface(self, runtime):
        sections = [json.loads(Path(p).read_text()) for p in self.inputs.sections]
        sections.append(validation_section())
        self._results["out_report"] = str(publish_subject_report(
            Path(self.inputs.output_dir), self.inputs.subject, "preproc", sections))
        return runtime
