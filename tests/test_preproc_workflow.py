"""End-to-end preprocessing on small synthetic scanner-like data, with known truth.

One participant: an oblique, anisotropic T1w; run 1 is stored int16 with ``scl_slope``,
oblique with a left-right flipped (LAS) voxel order, anisotropic, with 2 bright dummy
volumes and ``SliceTiming`` only in the top-level ``task-rest_bold.json``; run 2 covers only
the lower part of the brain. The workflow runs with MultiProc, is re-run to check that
nothing is recomputed, and its outputs feed an fMRIPrep-shaped tree for the
``--derivatives fmriprep=`` path.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from preproc_synthetic import SyntheticDataset

from fmrilm_bids.config import Config, ExecutionConfig, NipypeConfig, WorkflowConfig
from fmrilm_bids.dataset.derivatives import write_derivatives_skeleton
from fmrilm_bids.dataset.layout import Selection, index_dataset, select_runs
from fmrilm_bids.dataset.validator import validate_dataset
from fmrilm_bids.preproc.motion import MOTION_COLUMNS
from fmrilm_bids.resources.templates import get_template
from fmrilm_bids.workflows.base import init_fmrilm_wf

pytestmark = pytest.mark.slow

RUN1 = "sub-01_task-rest_run-1"
RUN2 = "sub-01_task-rest_run-2"


def make_config(root: Path, bids_dir: Path, **workflow: object) -> Config:
    return Config(
        execution=ExecutionConfig(bids_dir=bids_dir, output_dir=root / "out",
                                  analysis_level="participant", work_dir=root / "work",
                                  run_uuid="test"),
        nipype=NipypeConfig(plugin="MultiProc", nprocs=2, omp_nthreads=2),
        workflow=WorkflowConfig(sloppy=True, **workflow),
    )


def run_workflow(selection: Selection, config: Config) -> None:
    write_derivatives_skeleton(config.execution.output_dir, config.execution.bids_dir)
    workflow = init_fmrilm_wf(selection, config)
    workflow.base_dir = str(config.execution.work_dir)
    workflow.config["execution"]["poll_sleep_duration"] = 0.2  # MultiProc polls (2 s default)
    workflow.run(plugin=config.nipype.plugin,
                 plugin_args=config.nipype.resolved_plugin_args())


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    root = tmp_path_factory.mktemp("preproc")
    dataset = SyntheticDataset(root / "bids", seed=7)
    dataset.write_t1w()
    run1 = dataset.write_bold("task-rest_run-1", n_volumes=80, n_dummy=2)
    # Inherits run 1's 30-slice SliceTiming, wrong for its 14 slices: STC is skipped.
    run2 = dataset.write_bold("task-rest_run-2", n_volumes=30, n_dummy=0, shape=(40, 48, 14),
                              centre_z=-25.0, int16=False, slice_timing=False)
    config = make_config(root, root / "bids", output_bold=True, denoise_strategy="6P")
    selection = select_runs(index_dataset(root / "bids", config.execution.bids_cache_dir))
    run_workflow(selection, config)
    return {"root": root, "config": config, "selection": selection, "run1": run1,
            "run2": run2}


def _func(processed) -> Path:
    return processed["config"].execution.output_dir / "sub-01" / "func"


def _read_timeseries(folder: Path, run: str, atlas: str = "AAL3"):
    stem = folder / f"{run}_seg-{atlas}_desc-denoised_timeseries"
    return (pd.read_csv(f"{stem}.tsv", sep="\t"),
            json.loads(Path(f"{stem}.json").read_text()))


def test_metadata_is_inherited_and_slice_timing_applied(processed):
    run = processed["selection"].bold_runs[0]
    assert "SliceTiming" in run.metadata  # from the top-level sidecar only
    work = processed["config"].execution.work_dir
    assert list(work.rglob("bold_sub_01_task_rest_run_1_wf/bold_preproc_wf/stc/result_stc.pklz"))


def test_head_motion_matches_the_truth(processed):
    table = pd.read_csv(_func(processed) / f"{RUN1}_desc-confounds_timeseries.tsv", sep="\t",
                        na_values="n/a")
    truth = processed["run1"].motion
    for k, column in enumerate(MOTION_COLUMNS):
        r = np.corrcoef(table[column].to_numpy()[2:], truth[2:, k])[0, 1]
        assert r >= 0.9, f"{column}: r = {r:.3f}"
    assert table["non_steady_state_outlier_01"].tolist()[:3] == [0, 1, 0]
    assert "non_steady_state_outlier_02" not in table
    for column in ("framewise_displacement", "std_dvars", "white_matter", "csf",
                   "a_comp_cor_00", "trans_x_derivative1_power2"):
        assert column in table
    assert np.isnan(table["framewise_displacement"][0])


def test_brain_mask_matches_the_template(processed):
    mask = nib.load(_func(processed) / (
        f"{RUN1}_space-MNI152NLin2009aSym_res-2_desc-brain_mask.nii.gz")).get_fdata() > 0
    template = nib.load(get_template(2, suffix="mask", desc="brain")).get_fdata() > 0
    dice = 2 * (mask & template).sum() / (mask.sum() + template.sum())
    assert dice >= 0.9


def test_parcel_signals_match_the_truth(processed):
    table, meta = _read_timeseries(_func(processed), RUN1)
    truth = processed["run1"].signals
    assert len(table) == 78  # the 2 dummies are discarded
    assert meta["NonSteadyStateVolumes"] == 2
    assert meta["StartTime"] == pytest.approx(2 * 2.0 + 1.0 - 1.0 / 30, abs=1e-3)  # + STC
    r = [np.corrcoef(table[c], truth[c][2:])[0, 1] for c in table.columns]
    assert np.median(r) >= 0.8
    assert meta["RepetitionTime"] == 2.0
    assert meta["Sources"] == [f"bids:raw:sub-01/func/{RUN1}_bold.nii.gz"]
    assert meta["DenoisingStrategy"] == "6P"
    assert not table.isna().any().any()


def test_partial_coverage_lists_missing_parcels(processed):
    table, meta = _read_timeseries(_func(processed), RUN2)
    full, _ = _read_timeseries(_func(processed), RUN1)
    missing = set(meta["MissingParcels"])
    assert {"Supp_Motor_Area_L", "Parietal_Sup_R", "Paracentral_Lobule_L"} <= missing
    assert meta["MissingParcelReasons"]["Parietal_Sup_R"] == "outside the BOLD brain mask"
    assert "Temporal_Inf_L" in table.columns
    assert missing.isdisjoint(table.columns)
    assert not table.isna().any().any()
    assert (table.std() > 0).all()  # no silent zero columns
    assert len(table.columns) < len(full.columns)


def test_outputs_are_valid_bids_and_the_report_is_complete(processed):
    out = processed["config"].execution.output_dir
    report = validate_dataset(out)
    assert report.ok, report.describe_errors()
    html = (out / "sub-01.html").read_text()
    assert html.count('src="data:image/png;base64,') >= 7  # anat + 3 per run
    for text in ("Anatomical", f"BOLD run {RUN1}", "framewise displacement", "6 rigid-body",
                 "missing", "antspyx", "nilearn"):
        assert text in html


def test_rerun_resumes_from_the_work_dir(processed):
    work = processed["config"].execution.work_dir
    results = sorted(work.rglob("result_*.pklz"))
    before = {p: p.stat().st_mtime_ns for p in results}
    run_workflow(processed["selection"], processed["config"])
    rerun = sorted(p.parent.name for p in results if p.stat().st_mtime_ns != before[p])
    # Only the data sinks run again (niworkflows' sinks always run); nothing is recomputed.
    assert rerun
    assert all(name.startswith("ds_") for name in rerun), rerun


def _fmriprep_tree(processed, root: Path) -> Path:
    """An fMRIPrep-shaped derivatives tree made of our outputs of run 1."""
    tree = root / "fmriprep"
    func = tree / "sub-01" / "func"
    func.mkdir(parents=True)
    (tree / "dataset_description.json").write_text(json.dumps({
        "Name": "fMRIPrep", "BIDSVersion": "1.10.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "fMRIPrep", "Version": "24.1.0"}]}))
    ours = _func(processed)
    space = "space-MNI152NLin2009aSym_res-2"
    for target_space in ("MNI152NLin2009cAsym", "MNI152NLin6Asym"):
        for suffix in ("desc-preproc_bold", "desc-brain_mask"):
            shutil.copy(ours / f"{RUN1}_{space}_{suffix}.nii.gz",
                        func / f"{RUN1}_space-{target_space}_res-2_{suffix}.nii.gz")
    (func / f"{RUN1}_space-MNI152NLin2009cAsym_res-2_desc-preproc_bold.json").write_text(
        json.dumps({"RepetitionTime": 2.0, "StartTime": 1.0 - 1.0 / 30}))
    for ext in ("tsv", "json"):
        shutil.copy(ours / f"{RUN1}_desc-confounds_timeseries.{ext}",
                    func / f"{RUN1}_desc-confounds_timeseries.{ext}")
    return tree


def test_fmriprep_derivatives_skip_preprocessing(processed, tmp_path):
    tree = _fmriprep_tree(processed, tmp_path)
    config = make_config(tmp_path, processed["config"].execution.bids_dir,
                         denoise_strategy="6P")
    config.execution.derivatives = {"fmriprep": tree}
    subject = processed["selection"].subjects[0]
    selection = Selection(subjects=(dataclasses.replace(
        subject, t1w=(), bold=tuple(r for r in subject.bold if r.name == RUN1)),))
    run_workflow(selection, config)
    func = config.execution.output_dir / "sub-01" / "func"
    table, meta = _read_timeseries(func, RUN1)
    ours, our_meta = _read_timeseries(_func(processed), RUN1)
    assert list(table.columns) == list(ours.columns)
    assert np.allclose(table.to_numpy(), ours.to_numpy(), atol=1e-3)
    assert meta["StartTime"] == pytest.approx(our_meta["StartTime"], abs=1e-3)
    assert f"bids:fmriprep:sub-01/func/{RUN1}_space-MNI152NLin2009cAsym_res-2_desc-preproc_" \
           "bold.nii.gz" in meta["Sources"]
    assert not list(config.execution.work_dir.rglob("result_register.pklz"))
    assert not list(func.glob("*_bold.nii.gz"))  # output_bold is off by default
    assert (config.execution.output_dir / "sub-01.html").is_file()
