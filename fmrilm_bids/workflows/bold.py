"""BOLD workflows: preprocessing into template space, confounds, denoised parcel series."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from fmrilm_bids.config import Config, Space
from fmrilm_bids.dataset.derivatives import bids_uri
from fmrilm_bids.dataset.layout import BoldRun
from fmrilm_bids.errors import InputDataError
from fmrilm_bids.interfaces.bids import DerivativesDataSink
from fmrilm_bids.interfaces.confounds import BoldConfounds
from fmrilm_bids.interfaces.denoise import DenoiseParcellate
from fmrilm_bids.interfaces.functional import (
    BoldReference,
    Coregistration,
    Realign,
    ResampleToTemplate,
    SliceTimingCorrection,
)
from fmrilm_bids.interfaces.reports import BoldReport
from fmrilm_bids.preproc.slice_timing import slice_axis, slice_time_reference
from fmrilm_bids.resources.templates import space_file
from fmrilm_bids.workflows.utils import node_name, space_node_name

LOGGER = logging.getLogger(__name__)


def _bold_gb(run: BoldRun | Path, shape: tuple[int, ...]) -> float:
    """Rough memory (GB) of a node holding the run (or a BOLD file) on the template grid,
    float32."""
    n_volumes = nib.load(run if isinstance(run, Path) else run.path).shape[-1]
    return max(0.5, 3 * float(np.prod(shape[:3])) * n_volumes * 4 / 1e9)


def slice_timing_inputs(run: BoldRun) -> dict[str, object] | None:
    """Inputs of the slice-timing node, or None when it must be skipped (logged)."""
    times = run.metadata.get("SliceTiming")
    if not times:
        return None
    direction = run.metadata.get("SliceEncodingDirection", "k")
    axis, _ = slice_axis(direction)
    n_slices = nib.load(run.path).shape[axis]
    if min(times) < 0 or max(times) >= run.repetition_time:
        raise InputDataError(
            f"{run.path}: SliceTiming must lie within [0, RepetitionTime="
            f"{run.repetition_time}) s, not [{min(times)}, {max(times)}]; fix the sidecar.")
    if len(times) != n_slices:
        LOGGER.warning("%s: SliceTiming has %d values for %d slices; slice-timing correction "
                       "skipped.", run.name, len(times), n_slices)
        return None
    if np.ptp(times) == 0:
        return None
    return {"slice_timing": [float(t) for t in times], "repetition_time": run.repetition_time,
            "slice_encoding_direction": direction}


#: What a BOLD workflow's outputnode hands the stimulus models (besides ``confounds_file``).
STIMULUS_FIELDS = ("bold_std", "mask_std", "confounds_metadata", "start_time")


def init_bold_preproc_wf(run: BoldRun, config: Config,
                         name: str = "bold_preproc_wf") -> pe.Workflow:
    """Preprocess one BOLD run into template space and compute its confounds.

    Steps: non-steady-state detection and BOLD reference; head-motion estimation
    (:mod:`fmrilm_bids.preproc.motion`); slice-timing correction when ``SliceTiming`` is known;
    rigid BOLD-to-T1w coregistration (ANTs, mutual information); motion, coregistration
    and normalisation applied in one cubic resampling onto the template grid; brain mask;
    confounds (written as ``desc-confounds_timeseries.tsv``); the preprocessed BOLD and its
    mask are written when ``config.workflow.output_bold``, in every output space (the
    spaces after the first get their own one-step resampling, through ``std_xfms``).

    Returns
    -------
    nipype Workflow
        ``inputnode``: ``t1w_brain``, ``t1w_mask``, ``anat2std_xfm``, ``std_xfms`` (one
        transform list per output space after the first). ``outputnode``:
        ``bold_std``, ``boldref_std``, ``mask_std``, ``confounds_file``,
        ``confounds_metadata`` (JSON file), ``methods`` (list of paragraphs).
    """
    workflow = pe.Workflow(name=name)
    resolution = config.workflow.template_resolution
    analysis_space, *other_spaces = config.workflow.spaces
    template = str(space_file(analysis_space, "T1w"))
    template_mask = str(space_file(analysis_space, "mask", desc="brain"))
    seed = config.seeds.master
    output_dir = str(config.execution.output_dir)
    stc_inputs = slice_timing_inputs(run)
    mem_gb = _bold_gb(run, nib.load(template).shape)

    inputnode = pe.Node(niu.IdentityInterface(fields=["t1w_brain", "t1w_mask",
                                                      "anat2std_xfm", "std_xfms"]),
                        name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=[
        "bold_std", "boldref_std", "mask_std", "confounds_file", "confounds_metadata",
        "methods"]), name="outputnode")

    boldref = pe.Node(BoldReference(in_file=str(run.path),
                                    dummy_scans=config.workflow.dummy_scans), name="boldref")
    realign = pe.Node(Realign(in_file=str(run.path)), name="realign", mem_gb=1.0)
    coreg = pe.Node(Coregistration(seed=seed), name="coreg")
    resample = pe.Node(ResampleToTemplate(template=template, template_mask=template_mask,
                                          repetition_time=run.repetition_time),
                       name="resample", mem_gb=mem_gb)
    confounds = pe.Node(BoldConfounds(
        wm_probseg=str(space_file(analysis_space, "probseg", label="WM")),
        csf_probseg=str(space_file(analysis_space, "probseg", label="CSF")),
        repetition_time=run.repetition_time, high_pass=config.workflow.high_pass),
        name="confounds", mem_gb=mem_gb)
    ds_confounds = pe.Node(DerivativesDataSink(
        base_directory=output_dir, source_file=str(run.path), suffix="timeseries",
        desc="confounds", RepetitionTime=run.repetition_time,
        Sources=[bids_uri(run.path, config.execution.bids_dir)]),
        name="ds_confounds", run_without_submitting=True)

    workflow.connect([
        (boldref, realign, [("ref_file", "ref_file")]),
        (boldref, coreg, [("ref_file", "in_file")]),
        (boldref, confounds, [("n_dummy", "n_dummy")]),
        (inputnode, coreg, [("t1w_brain", "t1w_brain"), ("t1w_mask", "t1w_mask")]),
        (inputnode, resample, [("anat2std_xfm", "anat_transforms")]),
        (realign, resample, [("transforms", "motion_transforms")]),
        (coreg, resample, [("transform", "coreg_transform")]),
        (resample, confounds, [("bold_std", "bold_std"), ("mask_std", "mask_std")]),
        (realign, confounds, [("params", "motion_params")]),
        (confounds, ds_confounds, [("confounds_file", "in_file"),
                                   ("confounds_metadata", "meta_dict")]),
        (resample, outputnode, [("bold_std", "bold_std"), ("boldref_std", "boldref_std"),
                                ("mask_std", "mask_std")]),
        (confounds, outputnode, [("confounds_file", "confounds_file"),
                                 ("metadata_file", "confounds_metadata")]),
    ])
    resamplers = [(analysis_space, resample)]
    for index, space in enumerate(other_spaces if config.workflow.output_bold else []):
        label = space_node_name(space)
        select = pe.Node(niu.Select(index=index), name=f"select_xfm_{label}")
        space_resample = pe.Node(ResampleToTemplate(
            template=str(space_file(space, "T1w")),
            template_mask=str(space_file(space, "mask", desc="brain")),
            repetition_time=run.repetition_time), name=f"resample_{label}", mem_gb=mem_gb)
        workflow.connect([
            (inputnode, select, [("std_xfms", "inlist")]),
            (select, space_resample, [("out", "anat_transforms")]),
            (realign, space_resample, [("transforms", "motion_transforms")]),
            (coreg, space_resample, [("transform", "coreg_transform")]),
        ])
        resamplers.append((space, space_resample))
    stc = None
    if stc_inputs:
        stc = pe.Node(SliceTimingCorrection(in_file=str(run.path), **stc_inputs), name="stc")
    for _, node in resamplers:
        if stc is None:
            node.inputs.in_file = str(run.path)
        else:
            workflow.connect(stc, "out_file", node, "in_file")

    if config.workflow.output_bold:
        for space, node in resamplers:
            _connect_bold_sinks(workflow, node, space, run, config, stc_inputs, mem_gb,
                                suffix="" if node is resample else f"_{space_node_name(space)}")

    stc_words = (f"slice-timing correction (cubic interpolation to the middle of the "
                 f"acquisition, SliceEncodingDirection {stc_inputs['slice_encoding_direction']})"
                 if stc_inputs else "no slice-timing correction (SliceTiming not known)")
    dummies = ("detected from the global signal" if config.workflow.dummy_scans is None
               else f"set to {config.workflow.dummy_scans}")
    outputnode.inputs.methods = [
        f"Non-steady-state volumes {dummies}; "
        "BOLD reference: mean of up to 20 realigned steady-state volumes; head motion "
        f"estimated by rigid least-squares realignment; {stc_words}; rigid "
        "mutual-information coregistration to the T1w (ANTs); motion, coregistration and "
        f"normalisation to {config.workflow.template} ({resolution} mm) applied in one "
        "cubic-spline resampling. Confounds: 24 motion parameters, framewise displacement, "
        "DVARS, global, white-matter and CSF signals, aCompCor (template tissue priors).",
    ]
    return workflow


def _connect_bold_sinks(workflow: pe.Workflow, resample: pe.Node, space: Space, run: BoldRun,
                        config: Config, stc_inputs: dict[str, object] | None, mem_gb: float,
                        suffix: str) -> None:
    """Write one space's preprocessed BOLD and brain mask through the derivatives sink."""
    output_dir = str(config.execution.output_dir)
    ds_bold = pe.Node(DerivativesDataSink(
        base_directory=output_dir, source_file=str(run.path), desc="preproc",
        suffix="bold", compress=True, data_dtype="float32", **space.entities,
        meta_dict={"RepetitionTime": run.repetition_time, "SkullStripped": False,
                   "SliceTimingCorrected": bool(stc_inputs),
                   "StartTime": slice_time_reference(stc_inputs["slice_timing"])
                   if stc_inputs else 0.0,
                   "Sources": [bids_uri(run.path, config.execution.bids_dir)]}),
        name=f"ds_bold{suffix}", mem_gb=mem_gb)
    ds_mask = pe.Node(DerivativesDataSink(
        base_directory=output_dir, source_file=str(run.path), desc="brain",
        suffix="mask", compress=True, **space.entities), name=f"ds_mask{suffix}")
    workflow.connect([
        (resample, ds_bold, [("bold_std", "in_file")]),
        (resample, ds_mask, [("mask_std", "in_file")]),
    ])


def init_bold_denoise_wf(run: BoldRun, config: Config, sources: list[str],
                         start_time: float = 0.0,
                         name: str = "bold_denoise_wf",
                         bold_file: Path | None = None) -> pe.Workflow:
    """Denoise and parcellate one template-space run, for every atlas of the config.

    Writes ``<run>_seg-<atlas>_desc-denoised_timeseries.tsv`` (+ JSON) per atlas.

    Parameters
    ----------
    sources : list of str
        BIDS URIs of the inputs, written as ``Sources`` in each sidecar.
    start_time : float
        Time (s) after each volume's onset that its samples represent (the slice-timing
        reference; 0 without slice-timing correction).
    bold_file : Path, optional
        The template-space BOLD (sizes the nodes' memory); default the raw run's image.

    Returns
    -------
    nipype Workflow
        ``inputnode``: ``bold_std``, ``mask_std``, ``confounds_file``,
        ``confounds_metadata`` (optional JSON file). ``outputnode``: ``timeseries``,
        ``atlas_files``, ``timeseries_metadata`` (lists, one item per atlas).
    """
    workflow = pe.Workflow(name=name)
    atlases = list(config.workflow.atlases)
    inputnode = pe.Node(niu.IdentityInterface(fields=[
        "bold_std", "mask_std", "confounds_file", "confounds_metadata"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=[
        "timeseries", "atlas_files", "timeseries_metadata"]), name="outputnode")
    merges = {key: pe.Node(niu.Merge(len(atlases)), name=f"merge_{key}")
              for key in ("timeseries", "atlas_files", "timeseries_metadata")}
    for index, atlas in enumerate(atlases, start=1):
        label = node_name(Path(atlas).name.split(".nii")[0])
        parcellate = pe.Node(DenoiseParcellate(
            atlas=str(atlas), strategy=config.workflow.denoise_strategy,
            high_pass=config.workflow.high_pass, fd_threshold=config.workflow.fd_threshold,
            scrub=config.workflow.scrub, dummy_scans=config.workflow.dummy_scans,
            repetition_time=run.repetition_time, start_time=start_time, sources=sources),
            name=f"denoise_{label}", mem_gb=_bold_gb(bold_file or run, (100, 120, 100)))
        sink = pe.Node(DerivativesDataSink(
            base_directory=str(config.execution.output_dir), source_file=str(run.path),
            suffix="timeseries", desc="denoised"), name=f"ds_timeseries_{label}",
            run_without_submitting=True)
        workflow.connect([
            (inputnode, parcellate, [("bold_std", "bold_file"), ("mask_std", "mask_file"),
                                     ("confounds_file", "confounds_file"),
                                     ("confounds_metadata", "confounds_metadata")]),
            (parcellate, sink, [("out_file", "in_file"), ("metadata", "meta_dict"),
                                ("atlas_name", "segmentation")]),
            (sink, merges["timeseries"], [("out_file", f"in{index}")]),
            (parcellate, merges["atlas_files"], [("atlas_file", f"in{index}")]),
            (parcellate, merges["timeseries_metadata"], [("metadata", f"in{index}")]),
        ])
    for key, merge in merges.items():
        workflow.connect(merge, "out", outputnode, key)
    return workflow


def init_bold_wf(run: BoldRun, config: Config, name: str | None = None) -> pe.Workflow:
    """Preprocess, denoise and parcellate one BOLD run; make its report section.

    Returns
    -------
    nipype Workflow
        ``inputnode``: ``t1w_brain``, ``t1w_mask``, ``anat2std_xfm``. ``outputnode``:
        ``timeseries`` (one TSV per atlas), ``confounds_file``, ``report_section``, and for
        the stimulus models ``bold_std``, ``mask_std``, ``confounds_metadata``,
        ``start_time`` (s, the slice-timing reference).
    """
    workflow = pe.Workflow(name=name or f"bold_{node_name(run.name)}_wf")
    LOGGER.info("%s: preprocessing workflow (%s)", run.name,
                "slice timing known" if run.metadata.get("SliceTiming") else "no SliceTiming")
    inputnode = pe.Node(niu.IdentityInterface(fields=["t1w_brain", "t1w_mask",
                                                      "anat2std_xfm", "std_xfms"]),
                        name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=[
        "timeseries", "confounds_file", "report_section", *STIMULUS_FIELDS]),
        name="outputnode")
    preproc = init_bold_preproc_wf(run, config)
    stc_inputs = slice_timing_inputs(run)
    start_time = slice_time_reference(stc_inputs["slice_timing"]) if stc_inputs else 0.0
    outputnode.inputs.start_time = start_time
    denoise = init_bold_denoise_wf(
        run, config, [bids_uri(run.path, config.execution.bids_dir)], start_time=start_time)
    template_mask = str(space_file(config.workflow.spaces[0], "mask", desc="brain"))
    report = pe.Node(BoldReport(run_name=run.name, template_mask=template_mask),
                     name="report", mem_gb=_bold_gb(run, (100, 120, 100)))
    fields = ["bold_std", "mask_std", "confounds_file", "confounds_metadata"]
    workflow.connect([
        (inputnode, preproc, [(f, f"inputnode.{f}") for f in
                              ("t1w_brain", "t1w_mask", "anat2std_xfm", "std_xfms")]),
        (preproc, denoise, [(f"outputnode.{f}", f"inputnode.{f}") for f in fields]),
        (preproc, report, [("outputnode.bold_std", "bold_std"),
                           ("outputnode.mask_std", "mask_std"),
                           ("outputnode.boldref_std", "boldref_std"),
                           ("outputnode.confounds_file", "confounds_file"),
                           ("outputnode.methods", "methods")]),
        (denoise, report, [("outputnode.atlas_files", "atlas_files"),
                           ("outputnode.timeseries_metadata", "timeseries_metadata")]),
        (denoise, outputnode, [("outputnode.timeseries", "timeseries")]),
        (preproc, outputnode, [("outputnode.confounds_file", "confounds_file"),
                               ("outputnode.bold_std", "bold_std"),
                               ("outputnode.mask_std", "mask_std"),
                               ("outputnode.confounds_metadata", "confounds_metadata")]),
        (report, outputnode, [("section", "report_section")]),
    ])
    return workflow
