"""Susceptibility distortion correction end to end, against the simulator's ground truth.

One simulated participant whose BOLD run is distorted by a B0 field (peak 100 Hz under the
orbitofrontal cortex, phase encoding ``j-``, up to 2.8 voxels of shift) and measured by a
phase-difference field map. The participant level runs twice in one work dir (the
anatomical workflow is shared): with the field map, and with ``--ignore fieldmaps``. The
template-space mean BOLD is compared with the undistorted image the simulator formed
(:func:`fmrilm_bids.simulate.truth.undistorted_reference`) where the true shift is a voxel
or more; the estimated voxel shift map with the true one.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_app.run import main
from fmrilm_bids.preproc.fieldmap import magnitude_mask
from fmrilm_bids.resources.templates import get_template
from fmrilm_bids.simulate import simulate_dataset
from fmrilm_bids.simulate.truth import true_shift_map, undistorted_reference

pytestmark = pytest.mark.slow

FUNC = "sub-01/func/sub-01_task-rest"
SPACE = "space-MNI152NLin2009aSym_res-2"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sdc")
    bids = simulate_dataset(root / "bids", n_subjects=1, runs=("rest",), n_volumes=20, seed=3,
                            fieldmap="phasediff")
    outputs = {"bids": bids, "work": root / "work"}
    for name, extra in (("corrected", []), ("uncorrected", ["--ignore", "fieldmaps"])):
        outputs[name] = root / name
        assert main([str(bids), str(root / name), "participant", "-w", str(root / "work"),
                     "--skip-bids-validation", "--sloppy", "--output-bold", "--nprocs", "2",
                     "--omp-nthreads", "1", *extra]) == 0
    return outputs


def _alignment(runs: dict[str, Path], name: str) -> tuple[float, float]:
    """Correlation of the template-space mean BOLD with the undistorted truth: where the
    true shift is a voxel or more, and over the whole brain."""
    reference = undistorted_reference(runs["bids"])
    shift = true_shift_map(runs["bids"], "01", "rest", template_space=True)
    brain = np.asarray(nib.load(get_template(2, suffix="mask", desc="brain")).dataobj) > 0
    distorted = brain & (np.abs(shift) >= 1)
    mean = np.asarray(nib.load(runs[name] / f"{FUNC}_{SPACE}_desc-preproc_bold.nii.gz")
                      .dataobj, dtype=np.float64).mean(axis=-1)
    return (float(np.corrcoef(mean[distorted], reference[distorted])[0, 1]),
            float(np.corrcoef(mean[brain], reference[brain])[0, 1]))


def test_correction_restores_the_undistorted_anatomy(runs: dict[str, Path]) -> None:
    corrected, corrected_brain = _alignment(runs, "corrected")
    uncorrected, uncorrected_brain = _alignment(runs, "uncorrected")
    assert corrected >= 0.55 > uncorrected
    assert corrected - uncorrected >= 0.2
    assert corrected_brain > uncorrected_brain


def test_estimated_shift_map_matches_the_truth(runs: dict[str, Path]) -> None:
    (vsm_file,) = runs["work"].rglob("fmap2bold/vsm.nii.gz")
    (boldref,) = runs["work"].rglob("bold_preproc_wf/boldref/boldref.nii.gz")
    estimate = nib.load(vsm_file).get_fdata()
    truth = true_shift_map(runs["bids"], "01", "rest")
    brain = magnitude_mask(nib.load(boldref).get_fdata())
    strong = brain & (np.abs(truth) >= 1)
    assert strong.sum() > 50
    assert np.abs(estimate - truth)[strong].mean() < 0.3 < np.abs(truth)[strong].mean()
    assert np.abs(estimate - truth)[brain].mean() < 0.05


def test_what_was_done_is_recorded(runs: dict[str, Path]) -> None:
    stem = f"{FUNC}_seg-AAL3_desc-denoised_timeseries.json"
    corrected = json.loads((runs["corrected"] / stem).read_text())
    sdc = corrected["SusceptibilityDistortionCorrection"]
    assert sdc["Method"] == "phasediff" and sdc["PhaseEncodingDirection"] == "j-"
    assert "bids:raw:sub-01/fmap/sub-01_phasediff.nii.gz" in corrected["Sources"]
    preproc = json.loads((runs["corrected"] / f"{FUNC}_{SPACE}_desc-preproc_bold.json")
                         .read_text())
    assert preproc["SusceptibilityDistortionCorrection"]["FieldMap"] == sdc["FieldMap"]
    ignored = json.loads((runs["uncorrected"] / stem).read_text())
    assert ignored["SusceptibilityDistortionCorrection"]["Method"] == "none"
    report = (runs["corrected"] / "sub-01.html").read_text()
    assert "before and after unwarping" in report
    methods = (runs["corrected"] / "logs" / "CITATION.md").read_text()
    assert "from a phase-difference map" in methods and "[@jezzard1995" in methods
    assert "@article{jezzard1995," in (runs["corrected"] / "logs" / "CITATION.bib").read_text()
    assert "--ignore fieldmaps" in (runs["uncorrected"] / "logs" / "CITATION.md").read_text()
