"""Single-trial responses: vectorised LSS against nilearn's one-GLM-per-event fit, blocks."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from nilearn.glm.first_level import FirstLevelModel, make_first_level_design_matrix

from fmrilm_bids.stimulus import lss


def _small_run(seed: int = 3, n_volumes: int = 80, n_events: int = 9, n_voxels: int = 27):
    rng = np.random.default_rng(seed)
    tr = 2.0
    onsets = np.sort(rng.uniform(4.0, n_volumes * tr - 20.0, n_events)).round(1)
    durations = rng.choice([1.0, 3.0], n_events)
    confounds = rng.standard_normal((n_volumes, 3))
    times = lss.frame_times(n_volumes, tr)
    regressors = lss.event_regressors(onsets, durations, times)
    truth = rng.normal(1.0, 0.5, (n_events, n_voxels))
    data = (100 + regressors @ truth + confounds @ rng.standard_normal((3, n_voxels))
            + rng.normal(0, 0.3, (n_volumes, n_voxels)))
    return tr, onsets, durations, confounds, times, data


def test_lss_equals_nilearn_first_level_model_per_event():
    tr, onsets, durations, confounds, times, data = _small_run()
    betas = lss.lss_betas(data, lss.event_regressors(onsets, durations, times),
                          lss.nuisance_design(times, confounds, high_pass=0.01))
    image = nib.Nifti1Image(data.T.reshape(3, 3, 3, -1).astype(np.float64), np.eye(4))
    mask = nib.Nifti1Image(np.ones((3, 3, 3), dtype=np.uint8), np.eye(4))
    for i in range(len(onsets)):
        events = pd.DataFrame({"onset": onsets, "duration": durations,
                               "trial_type": ["other"] * len(onsets)})
        events.loc[i, "trial_type"] = "target"
        design = make_first_level_design_matrix(
            times, events, hrf_model="spm", drift_model="cosine", high_pass=0.01,
            add_regs=confounds, add_reg_names=["c0", "c1", "c2"])
        model = FirstLevelModel(t_r=tr, mask_img=mask, noise_model="ols", signal_scaling=False,
                                minimize_memory=True).fit(image, design_matrices=design)
        expected = model.compute_contrast("target", output_type="effect_size").get_fdata()
        np.testing.assert_allclose(betas[i], expected.reshape(-1), atol=1e-5, rtol=1e-5)


def test_lss_single_event_is_the_plain_glm():
    _tr, onsets, durations, confounds, times, data = _small_run(n_events=1)
    regressors = lss.event_regressors(onsets, durations, times)
    nuisance = lss.nuisance_design(times, confounds)
    design = np.column_stack([regressors, nuisance])
    expected = np.linalg.lstsq(design, data, rcond=None)[0][0]
    np.testing.assert_allclose(lss.lss_betas(data, regressors, nuisance)[0], expected,
                               atol=1e-5)


def test_blocks_are_grouped_and_merged():
    events = pd.DataFrame({"onset": [0.0, 3.0, 6.0, 20.0, 23.0, 40.0],
                           "duration": [3.0] * 6,
                           "trial_type": ["faces", "faces", "faces", "food", "food", "faces"],
                           "caption": list("abcdef")})
    blocks = lss.group_blocks(events)
    assert blocks.tolist() == [0, 0, 0, 1, 1, 2]
    assert lss.is_block_design(blocks) and lss.resolve_unit("auto", blocks) == "block"
    merged = lss.block_events(events, blocks)
    assert merged["onset"].tolist() == [0.0, 20.0, 40.0]
    assert merged["duration"].tolist() == [9.0, 6.0, 3.0]
    assert merged["caption"].tolist() == ["a | b | c", "d | e", "f"]
    jittered = events.assign(onset=[0.0, 12.0, 24.0, 36.0, 48.0, 60.0])
    assert lss.resolve_unit("auto", lss.group_blocks(jittered)) == "event"
    with pytest.raises(ValueError, match="unit"):
        lss.resolve_unit("trial", blocks)
