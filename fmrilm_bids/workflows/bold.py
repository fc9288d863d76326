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
from fmrilm_bids.dataset.fieldmaps import PHASEDIFF, phase_encoding, total_readout_time
from fmrilm_bids.dataset.layout import BoldRun
from fmrilm_bids.errors import InputDataError
from fmrilm_bids.interfaces.bids import DerivativesDataSink
from fmrilm_bids.interfaces.confounds import BoldConfounds
from fmrilm_bids.interfaces.denoise import DenoiseParcellate
from fmrilm_bids.interfaces.fieldmap import BoldShiftMap, PepolarFieldmap, PhasediffFieldmap
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


def slice_timing_inputs(run: BoldRun, config: Config) -> dict[str, object] | None:
    """Inputs of the slice-timing node, or None when it must be skipped (logged), or is
    left out (``--ignore slicetiming``)."""
    times = run.metadata.get("SliceTiming")
    if not times or "slicetiming" in config.workflow.ignore:
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


def bold_phase_encoding(run: BoldRun) -> dict[str, object]:
    """The run's phase-encoding axis, polarity and total readout time (s), as the unwarping
    nodes take them (checked before the run: :func:`fmrilm_bids.dataset.checks.
    check_fieldmap_inputs`)."""
    axis, polarity = phase_encoding(run.metadata)
    return {"pe_axis": axis, "polarity": polarity,
            "readout_time": total_readout_time(run.metadata, nib.load(run.path).shape)}


def sdc_metadata(run: BoldRun, config: Config) -> dict[str, object]:
    """What the sidecars of the run's outputs say about susceptibility distortion correction
    (``SusceptibilityDistortionCorrection``: method, field map, phase encoding)."""
    if run.fieldmap is None:
        reason = ("field maps ignored (--ignore fieldmaps)"
                  if "fieldmaps" in config.workflow.ignore else
                  "no usable field map is intended for this run (IntendedFor or "
                  "B0FieldSource)")
        return {"SusceptibilityDistortionCorrection": {"Method": "none", "Reason": reason}}
    encoding = bold_phase_encoding(run)
    return {"SusceptibilityDistortionCorrection": {
        "Method": run.fieldmap.method,
        "B0FieldSource": run.fieldmap.identifier,
        "FieldMap": [bids_uri(path, config.execution.bids_dir)
                     for path in run.fieldmap.sources],
        "PhaseEncodingDirection": run.metadata["PhaseEncodingDirection"],
        "TotalReadoutTime": encoding["readout_time"],
        "JacobianCorrection": "fmap-jacobian" not in config.workflow.ignore,
    }}


def sdc_counts(runs: list[BoldRun]) -> dict[str, int]:
    """Runs corrected for susceptibility distortions, by method (for the boilerplate)."""
    counts: dict[str, int] = {}
    for run in runs:
        if run.fieldmap is not None:
            counts[run.fieldmap.method] = counts.get(run.fieldmap.method, 0) + 1
    return counts


def _run_sources(run: BoldRun, config: Config) -> list[str]:
    """BIDS URIs of the raw files a run's outputs come from: the run, and its field map."""
    files = [run.path, *(run.fieldmap.sources if run.fieldmap else ())]
    return [bids_uri(path, config.execution.bids_dir) for path in files]


def _sdc_words(run: BoldRun, config: Config) -> str:
    """The methods sentence on susceptibility distortion correction."""
    if run.fieldmap is None:
        return ("no susceptibility distortion correction (" + sdc_metadata(run, config)[
            "SusceptibilityDistortionCorrection"]["Reason"] + ")")
    estimate = ("the phase difference unwrapped within the magnitude's brain mask "
                "(scikit-image) and scaled to Hz by the echo-time difference"
                if run.fieldmap.method == PHASEDIFF else
                "least squares along the phase-encoding axis on the EPI images of opposite "
                "polarity (TOPUP-like)")
    jacobian = ("" if "fmap-jacobian" not in config.workflow.ignore
                else " without the Jacobian intensity correction")
    return (f"susceptibility distortion correction with the {run.fieldmap.description}: "
            f"B0 field from {estimate}, smoothed and extrapolated, registered rigidly to the "
            "BOLD reference through its reference image (ANTs), and turned into a voxel "
            f"shift map along PhaseEncodingDirection {run.metadata['PhaseEncodingDirection']} "
            f"with TotalReadoutTime {bold_phase_encoding(run)['readout_time']:.4g} s, applied "
            f"in the same one-step resampling{jacobian}; coregistration used the unwarped "
            "reference")


def _init_sdc(workflow: pe.Workflow, run: BoldRun, config: Config,
              boldref: pe.Node) -> pe.Node:
    """Field-map estimation and its voxel shift map on the BOLD reference; returns the node
    whose ``vsm_file`` and ``corrected_ref`` the resampling and coregistration take."""
    fieldmap = run.fieldmap
    if fieldmap.method == PHASEDIFF:
        echo_time1, echo_time2 = fieldmap.echo_times
        estimate = pe.Node(PhasediffFieldmap(
            phasediff=str(fieldmap.sources[0]), magnitude=str(fieldmap.sources[1]),
            echo_time1=echo_time1, echo_time2=echo_time2, seed=config.seeds.master),
            name="fmap_phasediff")
    else:
        encodings = [phase_encoding(meta) for meta in fieldmap.metadata]
        estimate = pe.Node(PepolarFieldmap(
            in_files=[str(p) for p in fieldmap.sources], pe_axis=encodings[0][0],
            polarities=[polarity for _, polarity in encodings],
            readout_times=[total_readout_time(meta, nib.load(path).shape)
                           for path, meta in zip(fieldmap.sources, fieldmap.metadata,
                                                 strict=True)]),
            name="fmap_pepolar", mem_gb=1.0)
    shift_map = pe.Node(BoldShiftMap(**bold_phase_encoding(run), seed=config.seeds.master,
                                     jacobian="fmap-jacobian" not in config.workflow.ignore),
                        name="fmap2bold")
    workflow.connect([
        (estimate, shift_map, [("fieldmap", "fieldmap"),
                               ("reference", "fieldmap_reference")]),
        (boldref, shift_map, [("ref_file", "boldref")]),
    ])
    return shift_map


#: What a BOLD workflow's outputnode hands the stimulus models (besides ``confounds_file``).
STIMULUS_FIELDS = ("bold_std", "mask_std", "confounds_metadata", "start_time")


def init_bold_preproc_wf(run: BoldRun, config: Config,
                         name: str = "bold_preproc_wf") -> pe.Workflow:
    """Preprocess one BOLD run into template space and compute its confounds.

    Steps: non-steady-state detection and BOLD reference; head-motion estimation
    (:mod:`fmrilm_bids.preproc.motion`); slice-timing correction when ``SliceTiming`` is known;
    with a field map (``run.fieldmap``), its B0 field as a voxel shift map on the BOLD
    reference (:mod:`fmrilm_bids.preproc.fieldmap`) and the unwarped reference; rigid
    BOLD-to-T1w coregistration (ANTs, mutual information) of the (unwarped) reference;
    motion, coregistration, normalisation and the distortion applied in one cubic resampling
    onto the template grid; brain mask;
    confounds (written as ``desc-confounds_timeseries.tsv``); the preprocessed BOLD and its
    mask are written when ``config.workflow.output_bold``, in every output space (the
    spaces after the first get their own one-step resampling, through ``std_xfms``).

    Returns
    -------
    nipype Workflow
        ``inputnode``: ``t1w_brain``, ``t1w_mask``, ``anat2std_xfm``, ``std_xfms`` (one
        transform list per output space after the first). ``outputnode``:
        ``bold_std``, ``boldref_std``, ``mask_std``, ``confounds_file``,
        ``confounds_metadata`` (JSON file), ``methods`` (list of paragraphs), ``boldref``
        (the BOLD reference), ``coreg_xfm``, and with a field map ``boldref_sdc`` (the
        reference unwarped).
    """
    workflow = pe.Workflow(name=name)
    resolution = config.workflow.template_resolution
    analysis_space, *other_spaces = config.workflow.spaces
    template = str(space_file(analysis_space, "T1w"))
    template_mask = str(space_file(analysis_space, "mask", desc="brain"))
    seed = config.seeds.master
    output_dir = str(config.execution.output_dir)
    stc_inputs = slice_timing_inputs(run, config)
    mem_gb = _bold_gb(run, nib.load(template).shape)

    inputnode = pe.Node(niu.IdentityInterface(fields=["t1w_brain", "t1w_mask",
                                                      "anat2std_xfm", "std_xfms"]),
                        name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=[
        "bold_std", "boldref_std", "mask_std", "confounds_file", "confounds_metadata",
        "methods", "boldref", "boldref_sdc", "coreg_xfm"]), name="outputnode")

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
        Sources=_run_sources(run, config), **sdc_metadata(run, config)),
        name="ds_confounds", run_without_submitting=True)
    sdc = _init_sdc(workflow, run, config, boldref) if run.fieldmap is not None else None
    if sdc is None:
        workflow.connect(boldref, "ref_file", coreg, "in_file")
    else:
        workflow.connect([
            (sdc, coreg, [("corrected_ref", "in_file")]),
            (sdc, outputnode, [("corrected_ref", "boldref_sdc")]),
        ])

    workflow.connect([
        (boldref, realign, [("ref_file", "ref_file")]),
        (boldref, outputnode, [("ref_file", "boldref")]),
        (coreg, outputnode, [("transform", "coreg_xfm")]),
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
    if sdc is not None:
        encoding = bold_phase_encoding(run)
        for _, node in resamplers:
            node.inputs.pe_axis = encoding["pe_axis"]
            node.inputs.jacobian = "fmap-jacobian" not in config.workflow.ignore
            workflow.connect(sdc, "vsm_file", node, "vsm_file")
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
        f"estimated by rigid least-squares realignment; {stc_words}; "
        f"{_sdc_words(run, config)}; rigid mutual-information coregistration to the T1w "
        "(ANTs); motion, coregistration and "
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
                   "Sources": _run_sources(run, config), **sdc_metadata(run, config)}),
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
                         bold_file: Path | None = None,
                         metadata: dict[str, object] | None = None) -> pe.Workflow:
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
    metadata : dict, optional
        Further sidecar entries (e.g. :func:`sdc_metadata`).

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
            suffix="timeseries", desc="denoised", **(metadata or {})),
            name=f"ds_timeseries_{label}",
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
    LOGGER.info("%s: preprocessing workflow (%s; %s)", run.name,
                "slice timing known" if run.metadata.get("SliceTiming") else "no SliceTiming",
                f"susceptibility distortions corrected with the {run.fieldmap.description}"
                if run.fieldmap else "no field map: not corrected for susceptibility "
                "distortions")
    inputnode = pe.Node(niu.IdentityInterface(fields=["t1w_brain", "t1w_mask",
                                                      "anat2std_xfm", "std_xfms"]),
                        name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=[
        "timeseries", "confounds_file", "report_section", *STIMULUS_FIELDS]),
        name="outputnode")
    preproc = init_bold_preproc_wf(run, config)
    stc_inputs = slice_timing_inputs(run, config)
    start_time = slice_time_reference(stc_inputs["slice_timing"]) if stc_inputs else 0.0
    outputnode.inputs.start_time = start_time
    denoise = init_bold_denoise_wf(run, config, _run_sources(run, config),
                                   start_time=start_time, metadata=sdc_metadata(run, config))
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
    if run.fieldmap is not None:  # the report's before/after figure of the unwarping
        workflow.connect([
            (inputnode, report, [("t1w_brain", "t1w_brain")]),
            (preproc, report, [("outputnode.boldref", "sdc_before"),
                               ("outputnode.boldref_sdc", "sdc_after"),
                               ("outputnode.coreg_xfm", "coreg_xfm")]),
        ])
    return workflow
