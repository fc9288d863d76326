"""The top-level workflow: one sub-workflow per participant.

``init_fmrilm_wf`` is what the entry point runs (it sets ``base_dir`` to the work dir and
picks the nipype plugin). Each participant's workflow combines the anatomical workflow, one
BOLD workflow per run, the stimulus models of every task whose runs have events with trial
types or captions (:mod:`fmrilm_bids.workflows.stimulus`, off with ``--no-stimulus-models``)
and the HTML report (``sub-<label>.html`` at the derivatives root).
With ``--derivatives fmriprep=PATH`` the fMRIPrep outputs replace our preprocessing.
"""

from __future__ import annotations

import logging
from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from fmrilm_bids.config import Config
from fmrilm_bids.dataset.layout import Selection, SubjectSelection
from fmrilm_bids.errors import MissingInputError
from fmrilm_bids.interfaces.reports import SubjectReport
from fmrilm_bids.preproc.denoise import get_strategy
from fmrilm_bids.workflows.anatomical import init_anat_preproc_wf
from fmrilm_bids.workflows.bold import init_bold_wf
from fmrilm_bids.workflows.fmriprep import find_fmriprep_run, init_fmriprep_bold_wf
from fmrilm_bids.workflows.stimulus import (
    RUN_FIELDS,
    can_fit_encoding,
    init_stimulus_wf,
    select_stimulus_runs,
)
from fmrilm_bids.workflows.utils import node_name

LOGGER = logging.getLogger(__name__)


def init_fmrilm_wf(selection: Selection, config: Config) -> pe.Workflow:
    """One workflow for every selected participant.

    Parameters
    ----------
    selection : fmrilm_bids.dataset.layout.Selection
    config : fmrilm_bids.config.Config

    Returns
    -------
    nipype Workflow
        Named ``fmrilm_wf`` (``bids_app.execution.run_workflow`` runs it).
    """
    get_strategy(config.workflow.denoise_strategy)  # fail early on an unknown strategy
    workflow = pe.Workflow(name="fmrilm_wf")
    for subject in selection.subjects:
        workflow.add_nodes([init_single_subject_wf(subject, config)])
    return workflow


def init_single_subject_wf(subject: SubjectSelection, config: Config) -> pe.Workflow:
    """Anatomical + BOLD workflows of one participant, and the report.

    Raises
    ------
    MissingInputError
        When the participant has no T1w and no fMRIPrep derivatives were given.

    Returns
    -------
    nipype Workflow
        Named ``sub_<label>_wf``; no inputs; ``outputnode``: ``timeseries`` (every run's
        parcel series files), ``report`` (the HTML file).
    """
    workflow = pe.Workflow(name=f"sub_{node_name(subject.subject)}_wf")
    use_fmriprep = "fmriprep" in (config.execution.derivatives or {})
    LOGGER.info("sub-%s: %d BOLD run(s), %s", subject.subject, len(subject.bold),
                "fMRIPrep derivatives" if use_fmriprep else "full preprocessing")
    outputnode = pe.Node(niu.IdentityInterface(fields=["timeseries", "report"]),
                         name="outputnode")
    stimulus_tasks = select_stimulus_runs(subject.bold, config)
    with_model = {task: can_fit_encoding(runs, config) for task, runs in stimulus_tasks.items()}
    # Each task with stimulus models adds two sections: encoding, then decoding.
    n_sections = (len(subject.bold) + (0 if use_fmriprep else 1)
                  + 2 * sum(with_model.values()))
    sections = pe.Node(niu.Merge(n_sections), name="report_sections")
    timeseries = pe.Node(niu.Merge(len(subject.bold)), name="all_timeseries")
    report = pe.Node(SubjectReport(subject=subject.subject,
                                   output_dir=str(config.execution.output_dir)),
                     name="subject_report", run_without_submitting=True)

    first_run_section = 1
    anat_wf = None
    if not use_fmriprep:
        if not subject.t1w:
            raise MissingInputError(
                f"sub-{subject.subject}: no T1w image (anat/*_T1w.nii[.gz]); a T1w is needed "
                "for registration, or pass --derivatives fmriprep=PATH.")
        anat_wf = init_anat_preproc_wf(subject.t1w, config)
        workflow.connect(anat_wf, "outputnode.report_section", sections, "in1")
        first_run_section = 2
    bold_wfs = {}
    for index, run in enumerate(subject.bold):
        if use_fmriprep:
            bold_wf = init_fmriprep_bold_wf(run, config)
        else:
            bold_wf = init_bold_wf(run, config)
            workflow.connect(anat_wf, "outputnode.t1w_brain", bold_wf, "inputnode.t1w_brain")
            workflow.connect(anat_wf, "outputnode.t1w_mask", bold_wf, "inputnode.t1w_mask")
            workflow.connect(anat_wf, "outputnode.anat2std_xfm",
                             bold_wf, "inputnode.anat2std_xfm")
            workflow.connect(anat_wf, "outputnode.std_xfms", bold_wf, "inputnode.std_xfms")
        bold_wfs[run.path] = bold_wf
        workflow.connect([
            (bold_wf, sections, [("outputnode.report_section", f"in{first_run_section + index}")]),
            (bold_wf, timeseries, [("outputnode.timeseries", f"in{index + 1}")]),
        ])
    next_section = first_run_section + len(subject.bold)
    for task, runs in stimulus_tasks.items():
        space = (find_fmriprep_run(Path(config.execution.derivatives["fmriprep"]), runs[0]).space
                 if use_fmriprep else None)
        stimulus_wf = init_stimulus_wf(runs, config, space=space)
        workflow.connect([
            (bold_wfs[run.path], stimulus_wf, [(f"outputnode.{field}",
                                                f"inputnode.{field}_{index}")
                                               for field in RUN_FIELDS])
            for index, run in enumerate(runs)])
        if with_model[task]:
            workflow.connect([(stimulus_wf, sections, [
                ("outputnode.report_section", f"in{next_section}"),
                ("outputnode.decoding_section", f"in{next_section + 1}")])])
            next_section += 2
    workflow.connect([
        (sections, report, [("out", "sections")]),
        (report, outputnode, [("out_report", "report")]),
        (timeseries, outputnode, [("out", "timeseries")]),
    ])
    return workflow
