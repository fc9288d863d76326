"""Anatomical preprocessing: conform, N4, template registration and brain mask."""

from __future__ import annotations

import logging
from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from fmrilm_bids.config import Config
from fmrilm_bids.interfaces.anatomical import (
    ConformT1w,
    N4BiasFieldCorrection,
    TemplateRegistration,
)
from fmrilm_bids.interfaces.reports import AnatReport
from fmrilm_bids.resources.templates import get_template

LOGGER = logging.getLogger(__name__)


def init_anat_preproc_wf(t1w: tuple[Path, ...], config: Config,
                         name: str = "anat_preproc_wf") -> pe.Workflow:
    """Build the anatomical workflow of one participant.

    The first T1w is conformed (RAS+ storage, float32), bias-corrected with N4 and
    registered to ``config.workflow.template`` (affine + SyN; ``config.workflow.sloppy``
    for a fast, coarse registration); the T1w brain mask is the template's, carried back.

    Parameters
    ----------
    t1w : tuple of Path
        The participant's T1w images (the first is used).
    config : fmrilm_bids.config.Config
        Uses ``workflow.template_resolution``, ``workflow.sloppy``, ``workflow.template``,
        and ``seeds.master``.

    Returns
    -------
    nipype Workflow
        ``inputnode``: ``t1w`` (list of files). ``outputnode``: ``t1w_preproc`` (N4),
        ``t1w_brain``, ``t1w_mask``, ``anat2std_xfm`` (antspyx transform list resampling
        T1w images onto the template), ``std_t1w`` (T1w in template space),
        ``report_section`` (JSON section of the HTML report).
    """
    workflow = pe.Workflow(name=name)
    if len(t1w) > 1:
        LOGGER.warning("%d T1w images; using %s (averaging several is not implemented).",
                       len(t1w), Path(t1w[0]).name)
    resolution = config.workflow.template_resolution
    template = str(get_template(resolution, suffix="T1w"))
    template_mask = str(get_template(resolution, suffix="mask", desc="brain"))
    seed = config.seeds.master

    inputnode = pe.Node(niu.IdentityInterface(fields=["t1w"]), name="inputnode")
    inputnode.inputs.t1w = [str(p) for p in t1w]
    outputnode = pe.Node(niu.IdentityInterface(fields=[
        "t1w_preproc", "t1w_brain", "t1w_mask", "anat2std_xfm", "std_t1w", "report_section",
    ]), name="outputnode")

    conform = pe.Node(ConformT1w(), name="conform")
    n4 = pe.Node(N4BiasFieldCorrection(seed=seed), name="n4", mem_gb=1.5)
    register = pe.Node(
        TemplateRegistration(template=template, template_mask=template_mask,
                             sloppy=config.workflow.sloppy, seed=seed),
        name="register", mem_gb=2.5)
    report = pe.Node(AnatReport(template_mask=template_mask, template=config.workflow.template,
                                source=Path(t1w[0]).name), name="report")

    workflow.connect([
        (inputnode, conform, [("t1w", "in_files")]),
        (conform, n4, [("out_file", "in_file")]),
        (n4, register, [("out_file", "in_file")]),
        (n4, outputnode, [("out_file", "t1w_preproc")]),
        (register, outputnode, [("t1w_brain", "t1w_brain"), ("t1w_mask", "t1w_mask"),
                                ("forward_transforms", "anat2std_xfm"),
                                ("std_t1w", "std_t1w")]),
        (register, report, [("std_t1w", "std_t1w")]),
        (report, outputnode, [("section", "report_section")]),
    ])
    return workflow
