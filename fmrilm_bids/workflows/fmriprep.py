"""Start from existing fMRIPrep outputs (``--derivatives fmriprep=PATH``).

fMRIPrep's preprocessed BOLD in an MNI space, its brain mask and its confounds table replace
our preprocessing; the run goes straight to denoising and parcellation.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from fmrilm_bids.config import Config
from fmrilm_bids.dataset.derivatives import bids_uri
from fmrilm_bids.dataset.layout import BoldRun
from fmrilm_bids.errors import MissingInputError
from fmrilm_bids.interfaces.reports import BoldReport
from fmrilm_bids.workflows.bold import STIMULUS_FIELDS, init_bold_denoise_wf
from fmrilm_bids.workflows.utils import node_name

#: fMRIPrep's default output space, preferred when several MNI spaces exist.
PREFERRED_SPACE = "MNI152NLin2009cAsym"
_PREPROC = re.compile(
    r"^_space-(?P<space>MNI[A-Za-z0-9]*)(_cohort-[A-Za-z0-9]+)?(_res-[A-Za-z0-9]+)?"
    r"_desc-preproc_bold\.nii(\.gz)?$"
)


@dataclass(frozen=True)
class FmriprepRun:
    """fMRIPrep's files for one BOLD run."""

    bold: Path
    mask: Path
    confounds: Path
    confounds_metadata: Path | None
    space: str


def find_fmriprep_run(fmriprep_dir: Path, run: BoldRun) -> FmriprepRun:
    """Locate the MNI-space preprocessed BOLD, mask and confounds of ``run``.

    Raises
    ------
    MissingInputError
        When fMRIPrep has no MNI-space BOLD, mask or confounds for the run.
    """
    folder = Path(fmriprep_dir) / f"sub-{run.subject}"
    if run.session:
        folder = folder / f"ses-{run.session}"
    folder = folder / "func"
    candidates = []
    for path in sorted(folder.glob(f"{run.name}_space-MNI*_desc-preproc_bold.nii*")):
        match = _PREPROC.match(path.name[len(run.name):])
        if match:
            candidates.append((match["space"] != PREFERRED_SPACE, path.name, path))
    if not candidates:
        raise MissingInputError(
            f"{folder}: no {run.name}_space-MNI*_desc-preproc_bold.nii.gz in the fMRIPrep "
            "derivatives; run fMRIPrep with --output-spaces MNI152NLin2009cAsym.")
    bold = min(candidates)[2]
    mask = Path(re.sub(r"_desc-preproc_bold(\.nii(\.gz)?)$", r"_desc-brain_mask\1", str(bold)))
    confounds = folder / f"{run.name}_desc-confounds_timeseries.tsv"
    for needed in (mask, confounds):
        if not needed.is_file():
            raise MissingInputError(f"{needed}: missing from the fMRIPrep derivatives.")
    sidecar = confounds.with_suffix(".json")
    return FmriprepRun(bold=bold, mask=mask, confounds=confounds,
                       confounds_metadata=sidecar if sidecar.is_file() else None,
                       space=_PREPROC.match(bold.name[len(run.name):])["space"])


def init_fmriprep_bold_wf(run: BoldRun, config: Config,
                          name: str | None = None) -> pe.Workflow:
    """Denoise and parcellate the fMRIPrep outputs of one run.

    Returns
    -------
    nipype Workflow
        No inputs. ``outputnode``: ``timeseries`` (one TSV per atlas), ``report_section``,
        and the fMRIPrep files for the stimulus models (``confounds_file`` and
        :data:`~fmrilm_bids.workflows.bold.STIMULUS_FIELDS`).
    """
    fmriprep_dir = Path(config.execution.derivatives["fmriprep"])
    found = find_fmriprep_run(fmriprep_dir, run)
    workflow = pe.Workflow(name=name or f"fmriprep_{node_name(run.name)}_wf")
    outputnode = pe.Node(niu.IdentityInterface(fields=[
        "timeseries", "report_section", "confounds_file", *STIMULUS_FIELDS]),
        name="outputnode")
    outputnode.inputs.bold_std = str(found.bold)
    outputnode.inputs.mask_std = str(found.mask)
    outputnode.inputs.confounds_file = str(found.confounds)
    if found.confounds_metadata:
        outputnode.inputs.confounds_metadata = str(found.confounds_metadata)
    sources = [bids_uri(run.path, config.execution.bids_dir),
               bids_uri(found.bold, fmriprep_dir, "fmriprep"),
               bids_uri(found.confounds, fmriprep_dir, "fmriprep")]
    bold_sidecar = Path(re.sub(r"\.nii(\.gz)?$", ".json", str(found.bold)))
    start_time = 0.0
    if bold_sidecar.is_file():
        start_time = float(json.loads(bold_sidecar.read_text()).get("StartTime", 0.0))
    outputnode.inputs.start_time = start_time
    denoise = init_bold_denoise_wf(run, config, sources, start_time=start_time)
    denoise.inputs.inputnode.bold_std = str(found.bold)
    denoise.inputs.inputnode.mask_std = str(found.mask)
    denoise.inputs.inputnode.confounds_file = str(found.confounds)
    if found.confounds_metadata:
        denoise.inputs.inputnode.confounds_metadata = str(found.confounds_metadata)
    report = pe.Node(BoldReport(
        run_name=run.name, bold_std=str(found.bold), mask_std=str(found.mask),
        confounds_file=str(found.confounds),
        methods=[f"Preprocessed by fMRIPrep ({found.bold.name}, space {found.space}); "
                 "fMRIPrep's brain mask and confounds were used."]),
        name="report")
    workflow.connect([
        (denoise, report, [("outputnode.atlas_files", "atlas_files"),
                           ("outputnode.timeseries_metadata", "timeseries_metadata")]),
        (denoise, outputnode, [("outputnode.timeseries", "timeseries")]),
        (report, outputnode, [("section", "report_section")]),
    ])
    return workflow
