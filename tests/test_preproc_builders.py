"""Fast tests of the workflow builders and of single interfaces on awkward inputs."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fmrilm_bids.config import Config, ExecutionConfig, WorkflowConfig
from fmrilm_bids.dataset.layout import BoldRun, Selection, SubjectSelection
from fmrilm_bids.errors import InputDataError, MissingInputError
from fmrilm_bids.interfaces.functional import BoldReference
from fmrilm_bids.workflows.base import init_fmrilm_wf, init_single_subject_wf
from fmrilm_bids.workflows.bold import init_bold_wf, slice_timing_inputs
from fmrilm_bids.workflows.fmriprep import find_fmriprep_run


def _bold(path: Path, shape=(8, 9, 6, 12), slope=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    data = 500 + rng.normal(0, 5, shape)
    if slope:
        img = nib.Nifti1Image(np.round(data / slope).astype(np.int16), np.eye(4))
        img.header.set_slope_inter(slope, 0)
    else:
        img = nib.Nifti1Image(data.astype(np.float32), np.eye(4))
    img.to_filename(path)
    return path


def _run(tmp_path: Path, **metadata) -> BoldRun:
    path = _bold(tmp_path / "bids" / "sub-01" / "func" / "sub-01_task-rest_bold.nii.gz")
    return BoldRun(path=path, subject="01", task="rest",
                   metadata={"RepetitionTime": 2.0, **metadata})


def _config(tmp_path: Path, **workflow) -> Config:
    return Config(execution=ExecutionConfig(
        bids_dir=tmp_path / "bids", output_dir=tmp_path / "out", analysis_level="participant",
        work_dir=tmp_path / "work", run_uuid="x"), workflow=WorkflowConfig(**workflow))


def test_bold_workflow_interface(tmp_path):
    run = _run(tmp_path, SliceTiming=[0, 1, 0.5, 1.5, 0.25, 1.25])
    workflow = init_bold_wf(run, _config(tmp_path, atlases=["AAL3", "AAL"]))
    assert workflow.name == "bold_sub_01_task_rest_wf"
    inputnode = workflow.get_node("inputnode")
    outputnode = workflow.get_node("outputnode")
    assert set(inputnode.inputs.copyable_trait_names()) == {"t1w_brain", "t1w_mask",
                                                            "anat2std_xfm", "std_xfms"}
    assert {"timeseries", "confounds_file", "report_section"} <= set(
        outputnode.outputs.copyable_trait_names())
    names = workflow.list_node_names()
    assert "bold_preproc_wf.stc" in names
    assert {"bold_denoise_wf.denoise_AAL3", "bold_denoise_wf.denoise_AAL"} <= set(names)
    assert "bold_preproc_wf.ds_bold" not in names  # output_bold is off by default


def test_slice_timing_checks(tmp_path, caplog):
    config = _config(tmp_path)
    assert slice_timing_inputs(_run(tmp_path), config) is None
    with caplog.at_level(logging.WARNING, logger="fmrilm_bids.workflows"):
        assert slice_timing_inputs(_run(tmp_path, SliceTiming=[0, 1, 0.5]), config) is None
    assert "slice-timing correction skipped" in caplog.text
    with pytest.raises(InputDataError, match="SliceTiming must lie within"):
        slice_timing_inputs(_run(tmp_path, SliceTiming=[0, 1, 2, 3, 4, 5]), config)
    timed = _run(tmp_path, SliceTiming=[0, 1, 0.5, 1.5, 0.25, 1.25],
                 SliceEncodingDirection="k-")
    assert slice_timing_inputs(timed, config)["slice_encoding_direction"] == "k-"
    # --ignore slicetiming leaves it out, as in fMRIPrep
    assert slice_timing_inputs(timed, _config(tmp_path, ignore=["slicetiming"])) is None
    workflow = init_bold_wf(timed, _config(tmp_path, ignore=["slicetiming"]))
    assert "bold_preproc_wf.stc" not in workflow.list_node_names()


def test_subject_without_t1w_needs_fmriprep(tmp_path):
    subject = SubjectSelection(subject="01", t1w=(), bold=(_run(tmp_path),))
    with pytest.raises(MissingInputError, match="no T1w image"):
        init_single_subject_wf(subject, _config(tmp_path))


def test_unknown_strategy_fails_before_running(tmp_path):
    selection = Selection(subjects=(SubjectSelection("01", (), (_run(tmp_path),)),))
    with pytest.raises(ValueError, match="Unknown denoising strategy"):
        init_fmrilm_wf(selection, _config(tmp_path, denoise_strategy="lots"))


def test_find_fmriprep_run_prefers_2009c_and_reports_missing_files(tmp_path):
    run = dataclasses.replace(_run(tmp_path), run=1,
                              path=tmp_path / "sub-01_task-rest_run-1_bold.nii.gz")
    func = tmp_path / "fmriprep" / "sub-01" / "func"
    with pytest.raises(MissingInputError, match="no sub-01_task-rest_run-1_space-MNI"):
        find_fmriprep_run(tmp_path / "fmriprep", run)
    for space in ("MNI152NLin6Asym", "MNI152NLin2009cAsym"):
        _bold(func / f"sub-01_task-rest_run-1_space-{space}_res-2_desc-preproc_bold.nii.gz")
    # another run with a longer name must not be picked up
    _bold(func / "sub-01_task-rest_run-10_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz")
    with pytest.raises(MissingInputError, match="desc-brain_mask"):
        find_fmriprep_run(tmp_path / "fmriprep", run)
    (func / "sub-01_task-rest_run-1_space-MNI152NLin2009cAsym_res-2_desc-brain_mask.nii.gz"
     ).write_bytes(b"")
    (func / "sub-01_task-rest_run-1_desc-confounds_timeseries.tsv").write_text("a\n1\n")
    found = find_fmriprep_run(tmp_path / "fmriprep", run)
    assert found.space == "MNI152NLin2009cAsym"
    assert found.bold.name.endswith("res-2_desc-preproc_bold.nii.gz")
    assert found.confounds_metadata is None


def test_bold_reference_on_int16_with_slope_and_dummies(tmp_path):
    path = tmp_path / "bold.nii.gz"
    rng = np.random.default_rng(1)
    grid = np.indices((16, 16, 10)) - np.array([7.5, 7.5, 4.5])[:, None, None, None]
    head = ((grid ** 2).sum(0) < 36) * 800.0
    data = head[..., None] + rng.normal(0, 4, (16, 16, 10, 30))
    data[..., :3] *= np.array([1.6, 1.3, 1.1])
    img = nib.Nifti1Image(np.round(data / 0.25).astype(np.int16), np.eye(4) * [3, 3, 4, 1])
    img.header.set_slope_inter(0.25, 0)
    img.to_filename(path)
    result = BoldReference(in_file=str(path)).run(cwd=str(tmp_path))
    assert result.outputs.n_dummy == 3
    ref = nib.load(result.outputs.ref_file).get_fdata()
    assert np.abs(ref[head > 0].mean() - 800) < 10  # scaled, and dummies left out
    fixed = BoldReference(in_file=str(path), dummy_scans=1).run(cwd=str(tmp_path))
    assert fixed.outputs.n_dummy == 1


def test_denoise_parcellate_with_a_user_atlas(tmp_path):
    import json

    import pandas as pd

    from fmrilm_bids.interfaces.denoise import DenoiseParcellate
    from fmrilm_bids.preproc.confounds import confounds_table

    rng = np.random.default_rng(2)
    n = 60
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    signal = rng.normal(size=n)
    bold = 100 + rng.normal(0, 1, (10, 10, 10, n))
    bold[:5] += 3 * signal  # label 1 lives in x < 5
    mask = np.zeros((10, 10, 10), dtype=np.uint8)
    mask[:, :, :8] = 1  # z >= 8 is outside the field of view
    atlas = np.zeros((10, 10, 10), dtype=np.int16)
    atlas[:5] = 1
    atlas[5:, :, :4] = 2
    atlas[5:, :, 8:] = 3  # entirely outside the mask
    nib.Nifti1Image(bold.astype(np.float32), affine).to_filename(tmp_path / "bold.nii.gz")
    nib.Nifti1Image(mask, affine).to_filename(tmp_path / "mask.nii.gz")
    nib.Nifti1Image(atlas, affine).to_filename(tmp_path / "my_atlas.nii.gz")
    (tmp_path / "my_atlas.tsv").write_text("index\tname\n1\tleft\n2\tright_low\n3\ttop\n"
                                         "4\tunused\n")
    motion = rng.normal(0, 0.0005, (n, 6))
    motion[30, 0] += 1.0  # a 1 mm jump and back: volumes 30 and 31 exceed FD 0.5 mm
    table, meta = confounds_table(motion, bold[mask > 0].reshape(-1, n),
                                  {"white_matter": bold[:2, :2, :2].reshape(-1, n),
                                   "csf": bold[-2:, -2:, :2].reshape(-1, n)},
                                  bold[:3, :3, :3].reshape(-1, n), 2.0, 0.008, n_dummy=0)
    table.to_csv(tmp_path / "confounds.tsv", sep="\t", index=False, na_rep="n/a")
    (tmp_path / "confounds.json").write_text(json.dumps(meta))
    result = DenoiseParcellate(
        bold_file=str(tmp_path / "bold.nii.gz"), mask_file=str(tmp_path / "mask.nii.gz"),
        confounds_file=str(tmp_path / "confounds.tsv"),
        confounds_metadata=str(tmp_path / "confounds.json"),
        atlas=str(tmp_path / "my_atlas.nii.gz"), strategy="6P", scrub=True,
        repetition_time=2.0, sources=["bids:raw:sub-01/func/x_bold.nii.gz"],
    ).run(cwd=str(tmp_path))
    out = pd.read_csv(result.outputs.out_file, sep="\t")
    assert list(out.columns) == ["left", "right_low"]
    assert result.outputs.metadata["CensoredVolumes"] == [30, 31]
    assert len(out) == n - 2
    assert result.outputs.metadata["MissingParcels"] == ["top", "unused"]
    assert result.outputs.metadata["MissingParcelReasons"] == {
        "top": "outside the BOLD brain mask",
        "unused": "absent from the atlas image (listed in its label table only)"}
    assert result.outputs.atlas_name == "myatlas"
    assert not out.isna().any().any()
    kept = np.setdiff1d(np.arange(n), [30, 31])
    assert np.corrcoef(out["left"], signal[kept])[0, 1] > 0.85  # 8 regressors, 58 volumes
    assert result.outputs.metadata["ParcelVoxelCounts"] == {"left": 400, "right_low": 200}
