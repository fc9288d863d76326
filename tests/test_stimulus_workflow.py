"""The stimulus-model workflow: builder wiring, skipping, and a full run on simulated images
(single-trial responses, encoding model, the participant's own decoders) whose derivatives
are named as documented, validator-clean and pass fmrilm-bids' own output checks."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy.stats import mannwhitneyu

from fmrilm_bids.config import Config, ExecutionConfig, WorkflowConfig
from fmrilm_bids.dataset.derivatives import write_derivatives_skeleton
from fmrilm_bids.dataset.layout import BoldRun, SubjectSelection
from fmrilm_bids.dataset.output_checks import check_outputs
from fmrilm_bids.dataset.validator import validate_dataset
from fmrilm_bids.interfaces.stimulus import response_units
from fmrilm_bids.preproc.motion import MOTION_COLUMNS
from fmrilm_bids.simulate import load_run_truth, simulate_dataset
from fmrilm_bids.simulate.events import CATEGORIES, TASK
from fmrilm_bids.simulate.geometry import MOTION_PARAMETERS
from fmrilm_bids.simulate.regions import category_preferences
from fmrilm_bids.workflows.base import init_single_subject_wf
from fmrilm_bids.workflows.stimulus import (
    can_fit_encoding,
    has_noise_ceiling,
    init_stimulus_wf,
    select_stimulus_runs,
)


def _config(bids: Path, out: Path, work: Path, **workflow) -> Config:
    return Config(execution=ExecutionConfig(
        bids_dir=bids, output_dir=out, analysis_level="participant", work_dir=work,
        run_uuid="x"), workflow=WorkflowConfig(**workflow))


def _run(root: Path, name: str, events: pd.DataFrame | None) -> BoldRun:
    func = root / "sub-01" / "func"
    func.mkdir(parents=True, exist_ok=True)
    path = func / f"sub-01_task-{name}_bold.nii.gz"
    nib.Nifti1Image(np.zeros((4, 4, 4, 10), np.float32), np.eye(4)).to_filename(path)
    events_path = None
    if events is not None:
        events_path = func / f"sub-01_task-{name}_events.tsv"
        events.to_csv(events_path, sep="\t", index=False)
    return BoldRun(path=path, subject="01", task=name, metadata={"RepetitionTime": 2.0},
                   events=events_path)


def test_runs_without_stimulus_text_are_skipped_and_the_flag_turns_it_off(tmp_path, caplog):
    timing = {"onset": [2.0, 8.0, 14.0, 20.0], "duration": [1.0] * 4}
    many = pd.DataFrame({"onset": np.arange(12) * 10.0, "duration": 2.0,
                         "trial_type": ["a", "b"] * 6})
    runs = (_run(tmp_path, "faces", many),
            _run(tmp_path, "few", pd.DataFrame({**timing, "trial_type": ["a", "b"] * 2})),
            _run(tmp_path, "rest", None),
            _run(tmp_path, "motor", pd.DataFrame(timing)))
    config = _config(tmp_path, tmp_path / "out", tmp_path / "work")
    with caplog.at_level(logging.INFO, logger="fmrilm_bids.workflows.stimulus"):
        selected = select_stimulus_runs(runs, config)
    assert list(selected) == ["faces", "few"]
    assert caplog.text.count("no stimulus model") == 2
    assert not has_noise_ceiling(selected["faces"], config)
    assert can_fit_encoding(selected["faces"], config)
    assert not can_fit_encoding(selected["few"], config)
    subject = init_single_subject_wf(SubjectSelection("01", (tmp_path / "T1w.nii.gz",), runs),
                                     config)
    names = subject.list_node_names()
    assert "stimulus_faces_wf.encoding_model" in names
    assert "stimulus_faces_wf.decoding_model" in names
    assert {f"stimulus_faces_wf.ds_decoded_{suffix}_sub_01_task_faces"
            for suffix in ("captions", "retrieval", "embeddings")} <= set(names)
    assert "stimulus_few_wf.decoding_model" not in names
    assert "stimulus_faces_wf.lss_sub_01_task_faces" in names
    assert "stimulus_few_wf.lss_sub_01_task_few" in names
    assert "stimulus_few_wf.encoding_model" not in names
    off = _config(tmp_path, tmp_path / "out", tmp_path / "work", stimulus_models=False)
    assert select_stimulus_runs(runs, off) == {}
    assert not any(n.startswith("stimulus_") for n in
                   init_single_subject_wf(SubjectSelection("01", (tmp_path / "T1w.nii.gz",),
                                                           runs), off).list_node_names())


def test_response_units_of_block_and_event_designs():
    events = pd.DataFrame({"onset": [0.0, 4.0, 30.0, 34.0], "duration": 3.0,
                           "trial_type": ["faces", "faces", "food", "food"]})
    captions = ["A man.", "A girl.", "A pie.", "A cake."]
    blocks = response_units(events, "auto", 4.0, captions)
    assert blocks["unit"].tolist() == ["block"] * 2
    assert blocks["caption"].tolist() == ["A man. | A girl.", "A pie. | A cake."]
    assert blocks["duration"].tolist() == [7.0, 7.0]
    single = response_units(events.iloc[::-1], "event", 4.0, captions[::-1])
    assert single["onset"].tolist() == [0.0, 4.0, 30.0, 34.0]
    assert single["caption"].tolist() == captions and single["block"].tolist() == [0, 0, 1, 1]


@pytest.mark.slow
def test_stimulus_workflow_on_simulated_images(tmp_path):
    """Raw simulated BOLD stands in for template-space BOLD (the simulator's brain sits in
    MNI space, moved by a few mm); confounds are the true motion (strategy 6P)."""
    root = simulate_dataset(tmp_path / "bids", n_subjects=1, runs=(TASK, TASK),
                            n_volumes=200, bold_voxel_size=5.0, seed=4)
    out = write_derivatives_skeleton(tmp_path / "out", root)
    config = _config(root, out, tmp_path / "work", denoise_strategy="6P")
    runs, inputs = [], {}
    for index, run_number in enumerate((1, 2)):
        stem = f"sub-01_task-{TASK}_run-{run_number}"
        func = root / "sub-01" / "func"
        runs.append(BoldRun(path=func / f"{stem}_bold.nii.gz", subject="01", task=TASK,
                            run=run_number, metadata={"RepetitionTime": 2.0},
                            events=func / f"{stem}_events.tsv"))
        image = nib.load(func / f"{stem}_bold.nii.gz")
        mean = np.asarray(image.dataobj, dtype=np.float32).mean(axis=-1)
        mask = tmp_path / f"{stem}_mask.nii.gz"
        nib.Nifti1Image((mean > 0.3 * np.percentile(mean[mean > 0], 95)).astype(np.uint8),
                        image.affine).to_filename(mask)
        motion = load_run_truth(root, "01", TASK, run_number).motion
        confounds = tmp_path / f"{stem}_confounds.tsv"
        motion[list(MOTION_PARAMETERS)].set_axis(list(MOTION_COLUMNS), axis=1).to_csv(
            confounds, sep="\t", index=False)
        inputs |= {f"bold_std_{index}": str(func / f"{stem}_bold.nii.gz"),
                   f"mask_std_{index}": str(mask), f"confounds_file_{index}": str(confounds),
                   f"start_time_{index}": 0.0}
    workflow = init_stimulus_wf(runs, config)
    for key, value in inputs.items():
        setattr(workflow.inputs.inputnode, key, value)
    workflow.base_dir = str(tmp_path / "work")
    workflow.config["execution"]["crashdump_dir"] = str(tmp_path / "crash")
    workflow.run(plugin="Linear")

    func = out / "sub-01" / "func"
    space = "space-MNI152NLin2009aSym"
    betas = nib.load(func / f"sub-01_task-{TASK}_run-1_{space}_desc-lss_betas.nii.gz")
    table = pd.read_csv(func / f"sub-01_task-{TASK}_run-1_{space}_desc-lss_betas.tsv",
                        sep="\t")
    assert betas.shape[-1] == len(table) > 5 and set(table["unit"]) == {"event"}
    parcels = pd.read_csv(func / f"sub-01_task-{TASK}_run-1_seg-AAL3_desc-lss_betas.tsv",
                          sep="\t")
    assert len(parcels) == len(table) and "Calcarine_L" in parcels
    r_map = func / f"sub-01_task-{TASK}_{space}_stat-r_desc-encoding_statmap.nii.gz"
    meta = json.loads(r_map.with_name(r_map.name.replace(".nii.gz", ".json")).read_text())
    assert meta["CrossValidation"] == "2 folds by run"
    scores = np.asarray(nib.load(r_map).dataobj)
    assert np.nanpercentile(scores, 99) > 0.2
    accuracy = pd.read_csv(func / f"sub-01_task-{TASK}_seg-AAL3_stat-r_desc-encoding_statmap"
                           ".tsv", sep="\t")
    selective = category_preferences(accuracy["region"], CATEGORIES).any(axis=1)
    # Category-selective parcels are predicted from held-out runs' captions; the others not
    # (a rank test between the two sets of parcels, and a clear margin between their medians).
    assert mannwhitneyu(accuracy["r"][selective], accuracy["r"][~selective],
                        alternative="greater").pvalue < 0.01
    assert accuracy["r"][selective].median() > accuracy["r"][~selective].median() + 0.15
    captions = pd.read_csv(func / f"sub-01_task-{TASK}_desc-encoding_selectivity.tsv",
                           sep="\t")
    assert {"AAL3"} <= set(captions["atlas"]) and set(captions["method"]) == {"brainscuba",
                                                                               "lavca"}
    assert (func / f"sub-01_task-{TASK}_{space}_desc-encoding_weights.npy").is_file()
    section = json.loads((tmp_path / "work" / "stimulus_images_wf" / "encoding_model"
                          / "section.json").read_text())
    assert section["figures"][0]["uri"].startswith("data:image/png;base64,")
    best = section["tables"][0]["rows"]
    assert len(best) == 8 and all(row[3] and row[4] for row in best)
    # The participant's own decoders: what each event saw, and the held-out figures.
    decoded = pd.read_csv(func / f"sub-01_task-{TASK}_run-1_{space}_desc-decoded_captions.tsv",
                          sep="\t", na_values="n/a", keep_default_na=False)
    assert len(decoded) == len(table) and decoded["seen_caption"].tolist() == \
        table["caption"].tolist()
    assert decoded["decoded_caption"].notna().mean() > 0.8  # SmolLM2 wrote them
    metrics = pd.read_csv(func / f"sub-01_task-{TASK}_{space}_desc-decoding_metrics.tsv",
                          sep="\t").set_index(["metric", "decoder"])
    assert metrics.loc[("category_accuracy", "contrastive"), "p_value"] < 0.01
    assert (func / f"sub-01_task-{TASK}_run-2_{space}_desc-decoded_retrieval.tsv").is_file()
    decoding = json.loads((tmp_path / "work" / "stimulus_images_wf" / "decoding_model"
                           / "section.json").read_text())
    assert decoding["title"] == f"Decoding: sub-01 task-{TASK}"
    report = validate_dataset(out)
    assert report.ok, report.describe_errors()
    assert check_outputs(out, folders=["sub-01"]) == []
