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
from fmrilm_bids.resources.templates import space_file
from fmrilm_bids.workflows.utils import space_node_name

LOGGER = logging.getLogger(__name__)


def init_anat_preproc_wf(t1w: tuple[Path, ...], config: Config,
                         name: str = "anat_preproc_wf") -> pe.Workflow:
    """Build the anatomical workflow of one participant.

    The first T1w is conformed (RAS+ storage, float32), bias-corrected with N4 and
    registered to ``config.workflow.template`` (affine + SyN; ``config.workflow.sloppy``
    for a fast, coarse registration); the T1w brain mask is the template's, carried back.
    With further output spaces (``--output-spaces A B ...``), the T1w is also registered to
    each of them (``std_xfms``).

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
        ``report_section`` (JSON section of the HTML report), ``std_xfms`` (one antspyx
        transform list per output space after the first, in order; empty with one space).
    """
    workflow = pe.Workflow(name=name)
    if len(t1w) > 1:
        LOGGER.warning("%d T1w images; using %s (averaging several is not implemented).",
                       len(t1w), Path(t1w[0]).name)
    analysis_space, *other_spaces = config.workflow.spaces
    template = str(space_file(analysis_space, "T1w"))
    template_mask = str(space_file(analysis_space, "mask", desc="brain"))
    seed = config.seeds.master

    inputnode = pe.Node(niu.IdentityInterface(fields=["t1w"]), name="inputnode")
    inputnode.inputs.t1w = [str(p) for p in t1w]
    outputnode = pe.Node(niu.IdentityInterface(fields=[
        "t1w_preproc", "t1w_brain", "t1w_mask", "anat2std_xfm", "std_t1w", "report_section",
        "std_xfms"]), name="outputnode")

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
    if not other_spaces:
        outputnode.inputs.std_xfms = []
        return workflow
    std_xfms = pe.Node(niu.Merge(len(other_spaces)), name="std_xfms")
    for index, space in enumerate(other_spaces, start=1):
        register_space = pe.Node(TemplateRegistration(
            template=str(space_file(space, "T1w")),
            template_mask=str(space_file(space, "mask", desc="brain")),
            sloppy=config.workflow.sloppy, seed=seed),
            name=f"register_{space_node_name(space)}", mem_gb=2.5)
        workflow.connect([
            (n4, register_space, [("out_file", "in_file")]),
            (register_space, std_xfms, [("forward_transforms", f"in{index}")]),
        ])
    workflow.connect(std_xfms, "out", outputnode, "std_xfms")
    return workflow
