"""Start from existing fMRIPrep outputs (``--derivatives fmriprep=PATH``).

fMRIPrep's preprocessed BOLD in an MNI space, its brain mask and its confounds table replace
our preprocessing; the run goes straight to denoising and parcellation.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from fmrilm_bids.config import Config
from fmrilm_bids.dataset.derivatives import bids_uri
from fmrilm_bids.dataset.fmriprep import PREFERRED_SPACE, FmriprepRun, find_fmriprep_run
from fmrilm_bids.dataset.layout import BoldRun
from fmrilm_bids.interfaces.reports import BoldReport
from fmrilm_bids.workflows.bold import STIMULUS_FIELDS, init_bold_denoise_wf
from fmrilm_bids.workflows.utils import node_name

__all__ = ["PREFERRED_SPACE", "FmriprepRun", "find_fmriprep_run", "init_fmriprep_bold_wf"]

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
    denoise = init_bold_denoise_wf(run, config, sources, start_time=start_time,
                                   bold_file=found.bold)
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
