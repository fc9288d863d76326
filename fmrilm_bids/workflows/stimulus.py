"""Stimulus models of one participant's task: single-trial responses, encoding, captions,
decoding.

``init_stimulus_wf`` takes the runs of one task whose ``events.tsv`` gives every event a
caption (a caption column, ``trial_type``, or ``stim_file`` with ``--stim-captions``; see
:func:`select_stimulus_runs`) and writes, per run (``func/``)::

    <run>_space-<tpl>_desc-lss_betas.nii.gz   one volume per event (or block), % signal change
    <run>_space-<tpl>_desc-lss_betas.tsv      what each volume is (onset, trial_type, caption)
    <run>_seg-<atlas>_desc-lss_betas.tsv      the same betas, averaged per parcel

and per task (all its runs)::

    sub-<l>_task-<t>_space-<tpl>_stat-r_desc-encoding_statmap.nii.gz            held-out r
    sub-<l>_task-<t>_space-<tpl>_stat-noiseceiling_desc-encoding_statmap.nii.gz  (repeats)
    sub-<l>_task-<t>_space-<tpl>_desc-encoding_weights.npy
    sub-<l>_task-<t>_seg-<atlas>_stat-r_desc-encoding_statmap.tsv               per parcel
    sub-<l>_task-<t>_desc-encoding_selectivity.tsv                 BrainSCUBA / LaVCa captions
    sub-<l>_task-<t>_space-<tpl>_desc-decoding_metrics.tsv        held-out decoding figures

and, per run, what the participant's own decoders read out of each unit::

    <run>_space-<tpl>_desc-decoded_captions.tsv     seen, retrieved and generated captions,
                                                    category probabilities
    <run>_space-<tpl>_desc-decoded_retrieval.tsv    the top retrieved captions, with scores
    <run>_space-<tpl>_desc-decoded_embeddings.npy   held-out decoded embeddings
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pandas as pd
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from fmrilm_bids.config import Config
from fmrilm_bids.dataset.derivatives import bids_uri
from fmrilm_bids.dataset.layout import BoldRun
from fmrilm_bids.interfaces.bids import DerivativesDataSink
from fmrilm_bids.interfaces.decoding import COLUMN_DESCRIPTIONS, DecodingModel
from fmrilm_bids.interfaces.stimulus import (
    EncodingModel,
    SingleTrialResponses,
    response_units,
)
from fmrilm_bids.resources.templates import space_file
from fmrilm_bids.stimulus.encoding import MIN_REPEATED
from fmrilm_bids.stimulus.features import event_captions, has_stimulus_text, read_stim_captions
from fmrilm_bids.stimulus.lss import DEFAULT_BLOCK_GAP
from fmrilm_bids.utils.devices import resolve_device
from fmrilm_bids.workflows.utils import node_name

LOGGER = logging.getLogger(__name__)

#: Fewest responses (events or blocks, over a task's runs) for an encoding model.
MIN_UNITS = 12
#: Inputs per run ``i`` of the workflow: ``<field>_<i>``.
RUN_FIELDS = ("bold_std", "mask_std", "confounds_file", "confounds_metadata", "start_time")


def select_stimulus_runs(runs: Sequence[BoldRun], config: Config) -> dict[str, list[BoldRun]]:
    """The runs with stimulus text, by task; every other run is skipped with one log line."""
    selected: dict[str, list[BoldRun]] = {}
    if not config.workflow.stimulus_models:
        return selected
    stim = read_stim_captions(str(config.workflow.stim_captions)
                              if config.workflow.stim_captions else None)
    for run in runs:
        events = (pd.read_csv(run.events, sep="\t", keep_default_na=False, na_values=["n/a"])
                  if run.events else None)
        if events is None or not has_stimulus_text(events, config.workflow.caption_column,
                                                   stim):
            LOGGER.info("%s: no events with trial types or captions; no stimulus model",
                        run.name)
            continue
        selected.setdefault(run.task, []).append(run)
    return selected


def init_stimulus_wf(runs: Sequence[BoldRun], config: Config, space: str | None = None,
                     name: str | None = None) -> pe.Workflow:
    """LSS betas of each run, then the encoding model and selectivity captions of the task.

    Parameters
    ----------
    runs : sequence of BoldRun
        Runs of one task, each with an events file (:func:`select_stimulus_runs`).
    config : fmrilm_bids.config.Config
    space : str, optional
        Template of the BOLD series (the ``space-`` entity; default the config's template,
        fMRIPrep's space with ``--derivatives fmriprep=PATH``).

    Returns
    -------
    nipype Workflow
        ``inputnode``: ``bold_std_<i>``, ``mask_std_<i>``, ``confounds_file_<i>``,
        ``confounds_metadata_<i>``, ``start_time_<i>`` for each run ``i``.
        ``outputnode``: ``r_map``, ``selectivity_file``, ``report_section`` (encoding),
        ``decoding_section`` (left unset when the runs are too few for the models,
        :func:`can_fit_encoding`).
    """
    task = runs[0].task
    wf_config = config.workflow
    output_dir = str(config.execution.output_dir)
    space = {"space": space or wf_config.template}
    workflow = pe.Workflow(name=name or f"stimulus_{node_name(task)}_wf")
    inputnode = pe.Node(niu.IdentityInterface(fields=[
        f"{f}_{i}" for i in range(len(runs)) for f in RUN_FIELDS]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["r_map", "selectivity_file",
                                                       "report_section", "decoding_section"]),
                         name="outputnode")
    gm_probseg = str(space_file(wf_config.spaces[0], "probseg", label="GM"))
    merges = {key: pe.Node(niu.Merge(len(runs)), name=f"merge_{key}")
              for key in ("betas", "tables", "masks")}
    for index, run in enumerate(runs):
        label = node_name(run.name)
        # Sources of every file of the run: its raw BOLD and events (BIDS URIs).
        run_sources = {"Sources": [bids_uri(path, config.execution.bids_dir)
                                   for path in (run.path, run.events)]}
        responses = pe.Node(SingleTrialResponses(
            events_file=str(run.events), gm_probseg=gm_probseg,
            repetition_time=run.repetition_time, strategy=wf_config.denoise_strategy,
            high_pass=wf_config.high_pass, dummy_scans=wf_config.dummy_scans,
            unit=wf_config.stimulus_unit, caption_column=wf_config.caption_column,
            atlases=[str(a) for a in wf_config.atlases],
            **({"stim_captions": str(wf_config.stim_captions)} if wf_config.stim_captions
               else {})), name=f"lss_{label}")
        ds_betas = pe.Node(DerivativesDataSink(
            base_directory=output_dir, source_file=str(run.path), desc="lss", suffix="betas",
            compress=True, **space, **run_sources), name=f"ds_betas_{label}",
            run_without_submitting=True)
        ds_table = pe.Node(DerivativesDataSink(
            base_directory=output_dir, source_file=str(run.path), desc="lss", suffix="betas",
            Description="The modelled events (or blocks): one row per volume of the betas "
            "image.", **space, **run_sources), name=f"ds_betas_table_{label}",
            run_without_submitting=True)
        workflow.connect([
            (inputnode, responses, [(f"bold_std_{index}", "bold_file"),
                                    (f"mask_std_{index}", "mask_file"),
                                    (f"confounds_file_{index}", "confounds_file"),
                                    (f"confounds_metadata_{index}", "confounds_metadata"),
                                    (f"start_time_{index}", "start_time")]),
            (responses, ds_betas, [("betas_file", "in_file"), ("metadata", "meta_dict")]),
            (responses, ds_table, [("betas_table", "in_file")]),
            (responses, merges["betas"], [("betas_file", f"in{index + 1}")]),
            (responses, merges["tables"], [("betas_table", f"in{index + 1}")]),
            (responses, merges["masks"], [("mask_file", f"in{index + 1}")]),
        ])
        for position in range(len(wf_config.atlases)):
            pick = pe.Node(niu.Select(index=position), name=f"select_{label}_{position}")
            pick_name = pe.Node(niu.Select(index=position), name=f"name_{label}_{position}")
            ds_parcels = pe.Node(DerivativesDataSink(
                base_directory=output_dir, source_file=str(run.path), desc="lss",
                suffix="betas", Description="Single-trial responses (LSS betas) averaged "
                "in each parcel: one row per modelled event or block.", **run_sources),
                name=f"ds_parcel_betas_{label}_{position}", run_without_submitting=True)
            workflow.connect([
                (responses, pick, [("parcel_files", "inlist")]),
                (responses, pick_name, [("atlas_names", "inlist")]),
                (pick, ds_parcels, [("out", "in_file")]),
                (pick_name, ds_parcels, [("out", "segmentation")]),
            ])

    if not can_fit_encoding(runs, config):
        LOGGER.info("sub-%s task-%s: fewer than %d responses (or a run with one block); "
                    "single-trial responses only, no encoding model", runs[0].subject, task,
                    MIN_UNITS)
        return workflow
    sources = [str(run.path) for run in runs]
    model = pe.Node(EncodingModel(
        atlases=[str(a) for a in wf_config.atlases], spaces=list(wf_config.stimulus_features),
        llm_dir=str(wf_config.llm_dir) if wf_config.llm_dir else None,
        device=str(resolve_device(wf_config.device)), cv=wf_config.encoding_cv,
        n_folds=wf_config.encoding_folds, contrastive=wf_config.contrastive_alignment,
        top=wf_config.selectivity_top, seed=config.seeds.master,
        background=str(space_file(wf_config.spaces[0], "T1w")),
        title=f"sub-{runs[0].subject} task-{task}"), name="encoding_model")
    common = {"base_directory": output_dir, "source_file": sources, "desc": "encoding",
              "dismiss_entities": ["run"],
              "Sources": [bids_uri(path, config.execution.bids_dir)
                          for run in runs for path in (run.path, run.events)]}
    ds_r = pe.Node(DerivativesDataSink(**common, suffix="statmap", statistic="r",
                                       compress=True, **space), name="ds_encoding_r",
                   run_without_submitting=True)
    ds_ceiling = pe.Node(DerivativesDataSink(**common, suffix="statmap",
                                             statistic="noiseceiling", compress=True, **space),
                         name="ds_encoding_ceiling", run_without_submitting=True)
    ds_weights = pe.Node(DerivativesDataSink(**common, suffix="weights", **space),
                         name="ds_encoding_weights", run_without_submitting=True)
    ds_selectivity = pe.Node(DerivativesDataSink(**common, suffix="selectivity"),
                             name="ds_selectivity", run_without_submitting=True)
    workflow.connect([
        (merges["betas"], model, [("out", "betas_files")]),
        (merges["tables"], model, [("out", "betas_tables")]),
        (merges["masks"], model, [("out", "mask_files")]),
        (model, ds_r, [("r_map", "in_file"), ("metadata", "meta_dict")]),
        (model, ds_weights, [("weights_file", "in_file")]),
        (model, ds_selectivity, [("selectivity_file", "in_file")]),
        (model, outputnode, [("r_map", "r_map"), ("selectivity_file", "selectivity_file"),
                             ("section", "report_section")]),
    ])
    if has_noise_ceiling(runs, config):
        workflow.connect(model, "ceiling_map", ds_ceiling, "in_file")
    _connect_decoding(workflow, runs, config, space, merges, outputnode, common)
    for position in range(len(wf_config.atlases)):
        pick = pe.Node(niu.Select(index=position), name=f"select_encoding_{position}")
        pick_name = pe.Node(niu.Select(index=position), name=f"name_encoding_{position}")
        ds_parcels = pe.Node(DerivativesDataSink(**common, suffix="statmap", statistic="r"),
                             name=f"ds_encoding_parcels_{position}",
                             run_without_submitting=True)
        workflow.connect([
            (model, pick, [("parcel_files", "inlist")]),
            (model, pick_name, [("atlas_names", "inlist")]),
            (pick, ds_parcels, [("out", "in_file")]),
            (pick_name, ds_parcels, [("out", "segmentation")]),
        ])
    return workflow


def _connect_decoding(workflow: pe.Workflow, runs: Sequence[BoldRun], config: Config,
                      space: dict[str, str], merges: dict[str, pe.Node],
                      outputnode: pe.Node, common: dict[str, object]) -> None:
    """The participant's own decoders of the task, and the sinks of what they read out."""
    wf_config = config.workflow
    output_dir = str(config.execution.output_dir)
    model = pe.Node(DecodingModel(
        llm_dir=str(wf_config.llm_dir) if wf_config.llm_dir else None,
        device=str(resolve_device(wf_config.device)), cv=wf_config.encoding_cv,
        n_folds=wf_config.decoding_folds, seed=config.seeds.master,
        title=f"sub-{runs[0].subject} task-{runs[0].task}"), name="decoding_model")
    ds_metrics = pe.Node(DerivativesDataSink(
        **{**common, "desc": "decoding"}, suffix="metrics", **space,
        Description="Held-out decoding figures of the task beside chance, with permutation "
        "p-values (retrieval among the units, category and zero-shot category accuracy, "
        "caption similarity)."), name="ds_decoding_metrics", run_without_submitting=True)
    workflow.connect([
        (merges["betas"], model, [("out", "betas_files")]),
        (merges["tables"], model, [("out", "betas_tables")]),
        (model, ds_metrics, [("metrics_file", "in_file"), ("metadata", "meta_dict")]),
        (model, outputnode, [("section", "decoding_section")]),
    ])
    kinds = {"captions_files": ("captions", {"Description": "What the participant's own "
                                             "decoder read out of each event (or block), "
                                             "held out.", **COLUMN_DESCRIPTIONS}),
             "retrieval_files": ("retrieval", {"Description": "The candidate captions most "
                                               "similar to each unit's decoded embedding."}),
             "embeddings_files": ("embeddings", {"Description": "Held-out decoded embedding "
                                                 "of each unit (rows as in the "
                                                 "desc-decoded_captions.tsv), relative to "
                                                 "its decoder's mean output."})}
    for index, run in enumerate(runs):
        label = node_name(run.name)
        sources = {"Sources": [bids_uri(path, config.execution.bids_dir)
                               for path in (run.path, run.events)]}
        for output, (suffix, metadata) in kinds.items():
            pick = pe.Node(niu.Select(index=index), name=f"select_{suffix}_{label}")
            sink = pe.Node(DerivativesDataSink(
                base_directory=output_dir, source_file=str(run.path), desc="decoded",
                suffix=suffix, **space, **sources, **metadata),
                name=f"ds_decoded_{suffix}_{label}", run_without_submitting=True)
            workflow.connect([(model, pick, [(output, "inlist")]),
                              (pick, sink, [("out", "in_file")]),
                              (model, sink, [("metadata", "meta_dict")])])


def _run_units(runs: Sequence[BoldRun], config: Config) -> list[pd.DataFrame]:
    """The modelled units (events or blocks) of each run, as the models will see them."""
    wf_config = config.workflow
    stim = read_stim_captions(str(wf_config.stim_captions) if wf_config.stim_captions
                              else None)
    tables = []
    for run in runs:
        events = pd.read_csv(run.events, sep="\t", keep_default_na=False, na_values=["n/a"])
        tables.append(response_units(events, wf_config.stimulus_unit, DEFAULT_BLOCK_GAP,
                                     event_captions(events, wf_config.caption_column, stim)))
    return tables


def can_fit_encoding(runs: Sequence[BoldRun], config: Config) -> bool:
    """Whether a task's runs hold enough responses for a cross-validated encoding model:
    :data:`MIN_UNITS` units or more and two blocks (or events) or more in every run."""
    tables = _run_units(runs, config)
    return (sum(len(t) for t in tables) >= MIN_UNITS
            and all(t["block"].nunique() >= 2 for t in tables))


def has_noise_ceiling(runs: Sequence[BoldRun], config: Config) -> bool:
    """Whether the encoding model will find repeated stimuli (the same rule as the model:
    at least ``MIN_REPEATED`` unit captions shown twice or more, over all runs)."""
    captions = [c for table in _run_units(runs, config) for c in table["caption"]]
    counts = pd.Series(captions, dtype=object).value_counts()
    return int((counts >= 2).sum()) >= MIN_REPEATED
