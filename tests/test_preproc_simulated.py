"""Preprocessing against the simulator's ground truth (:mod:`fmrilm_bids.simulate`).

One simulated participant, one resting run of 300 volumes (10 minutes at TR 2 s, a typical
resting-state run), run through the full workflow with default settings (sloppy
registration). Checks: head motion, the
BOLD brain mask in template space, recovered parcel signals, BIDS validity.

The simulated parcel signals are sampled at each volume's onset; after slice-timing
correction ours represent ``StartTime`` (sidecar) later, so the truth is interpolated to
those times before correlating.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy.interpolate import CubicSpline

from fmrilm_bids.config import Config, ExecutionConfig, NipypeConfig, WorkflowConfig
from fmrilm_bids.dataset.derivatives import write_derivatives_skeleton
from fmrilm_bids.dataset.layout import index_dataset, select_runs
from fmrilm_bids.dataset.validator import validate_dataset
from fmrilm_bids.interfaces.denoise import DenoiseParcellate
from fmrilm_bids.preproc.motion import MOTION_COLUMNS
from fmrilm_bids.resources.templates import get_template
from fmrilm_bids.simulate import simulate_dataset
from fmrilm_bids.simulate.truth import load_run_truth
from fmrilm_bids.workflows.base import init_fmrilm_wf

pytestmark = pytest.mark.slow

STEM = "sub-01_task-rest"


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    root = tmp_path_factory.mktemp("simulated")
    bids = simulate_dataset(root / "bids", n_subjects=1, runs=("rest",), seed=3,
                            n_volumes=300)
    config = Config(
        execution=ExecutionConfig(bids_dir=bids, output_dir=root / "out",
                                  analysis_level="participant", work_dir=root / "work",
                                  run_uuid="sim"),
        nipype=NipypeConfig(plugin="Linear", nprocs=2, omp_nthreads=2),
        workflow=WorkflowConfig(sloppy=True, output_bold=True),
    )
    selection = select_runs(index_dataset(bids, config.execution.bids_cache_dir))
    write_derivatives_skeleton(config.execution.output_dir, bids)
    workflow = init_fmrilm_wf(selection, config)
    workflow.base_dir = str(config.execution.work_dir)
    workflow.run(plugin="Linear")
    return {"bids": bids, "func": config.execution.output_dir / "sub-01" / "func",
            "out": config.execution.output_dir, "truth": load_run_truth(bids, "01", "rest"),
            "root": root}


def _time_aligned_r(table: pd.DataFrame, meta: dict, truth: pd.DataFrame) -> np.ndarray:
    tr = meta["RepetitionTime"]
    onsets = np.arange(len(truth)) * tr
    times = meta["StartTime"] + np.arange(len(table)) * tr
    inside = times <= onsets[-1]
    return np.array([
        np.corrcoef(table[c][inside], CubicSpline(onsets, truth[c])(times[inside]))[0, 1]
        for c in table.columns])


def test_motion_estimates_follow_the_simulated_motion(simulated):
    table = pd.read_csv(simulated["func"] / f"{STEM}_desc-confounds_timeseries.tsv",
                        sep="\t", na_values="n/a")
    truth = simulated["truth"].motion
    for column in MOTION_COLUMNS:
        assert truth[column].std() > 0  # non-trivial motion in every parameter
        assert np.corrcoef(table[column], truth[column])[0, 1] >= 0.9, column
    fd_r = np.corrcoef(table["framewise_displacement"][1:],
                       truth["framewise_displacement"][1:])[0, 1]
    assert fd_r >= 0.9


def test_brain_mask_in_template_space(simulated):
    mask = nib.load(simulated["func"] / (
        f"{STEM}_space-MNI152NLin2009aSym_res-2_desc-brain_mask.nii.gz")).get_fdata() > 0
    template = nib.load(get_template(2, suffix="mask", desc="brain")).get_fdata() > 0
    assert 2 * (mask & template).sum() / (mask.sum() + template.sum()) >= 0.9


def test_recovered_parcel_signals(simulated, tmp_path):
    stem = simulated["func"] / f"{STEM}_seg-AAL3_desc-denoised_timeseries"
    table = pd.read_csv(f"{stem}.tsv", sep="\t")
    meta = json.loads(Path(f"{stem}.json").read_text())
    clean = simulated["truth"].clean
    assert meta["DenoisingStrategy"] == "24P+aCompCor"
    default_r = _time_aligned_r(table, meta, clean)
    assert np.median(default_r) >= 0.8
    # The simulation has no motion artefact left after realignment, so every regressor only
    # costs degrees of freedom: a lighter strategy on the same data recovers more.
    work = tmp_path / "six"
    work.mkdir()
    result = DenoiseParcellate(
        bold_file=str(simulated["func"] / (
            f"{STEM}_space-MNI152NLin2009aSym_res-2_desc-preproc_bold.nii.gz")),
        mask_file=str(simulated["func"] / (
            f"{STEM}_space-MNI152NLin2009aSym_res-2_desc-brain_mask.nii.gz")),
        confounds_file=str(simulated["func"] / f"{STEM}_desc-confounds_timeseries.tsv"),
        atlas="AAL3", strategy="6P", repetition_time=meta["RepetitionTime"],
        start_time=meta["StartTime"],
    ).run(cwd=str(work))
    six = pd.read_csv(result.outputs.out_file, sep="\t")
    six_r = _time_aligned_r(six, result.outputs.metadata, clean)
    assert np.median(six_r) >= 0.9
    assert np.median(six_r) > np.median(default_r)


def test_simulated_outputs_are_valid_bids(simulated):
    report = validate_dataset(simulated["out"])
    assert report.ok, report.describe_errors()
    assert (simulated["out"] / "sub-01.html").is_file()
