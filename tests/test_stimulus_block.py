"""A simulated single-run block design (12 blocks of 6 categories): the LSS block betas of
the BOLD images carry held-out category information (split-half identification)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from fmrilm_bids.simulate import SimulationConfig, load_run_truth, simulate_dataset
from fmrilm_bids.simulate.events import TASK, BlockTiming, schedule_blocks
from fmrilm_bids.simulate.geometry import MOTION_PARAMETERS
from fmrilm_bids.stimulus import information, lss


def test_block_schedule_balances_categories_and_fills_blocks():
    events = pd.DataFrame(schedule_blocks(np.random.default_rng(0)))
    assert len(events) == 48 and events["caption"].is_unique
    blocks = lss.group_blocks(events)
    assert blocks.max() == 11 and set(np.bincount(blocks)) == {4}
    per_block = events.assign(block=blocks).groupby("block")["trial_type"].agg(["first",
                                                                               "nunique"])
    assert set(per_block["nunique"]) == {1}
    assert set(per_block["first"].value_counts()) == {2}
    assert np.allclose(np.diff(events["onset"])[:3], 4.0)


def test_block_design_settings_are_checked():
    needed = BlockTiming().run_duration()
    assert needed == pytest.approx(6 + 12 * (4 * 4 + 12))
    with pytest.raises(ValueError, match="block-design"):
        SimulationConfig(runs=(TASK,), task_design="block", n_volumes=100)
    with pytest.raises(ValueError, match="task_design"):
        SimulationConfig(task_design="blocks")


def test_single_run_block_design_betas_carry_the_category(tmp_path):
    root = simulate_dataset(tmp_path / "block", n_subjects=1, runs=(TASK,),
                            task_design="block", n_volumes=175, bold_voxel_size=5.0, seed=3)
    func = root / "sub-01" / "func"
    events = pd.read_csv(func / f"sub-01_task-{TASK}_events.tsv", sep="\t")
    blocks = lss.group_blocks(events)
    assert lss.resolve_unit("auto", blocks) == "block"
    table = lss.block_events(events, blocks)
    assert len(table) == 12 and set(table["trial_type"].value_counts()) == {2}
    image = nib.load(func / f"sub-01_task-{TASK}_bold.nii.gz")
    data = np.asarray(image.dataobj, dtype=np.float32)
    mean = data.mean(axis=-1)
    mask = mean > 0.3 * np.percentile(mean[mean > 0], 95)
    motion = load_run_truth(root, "01", TASK).motion[list(MOTION_PARAMETERS)].to_numpy()
    times = lss.frame_times(data.shape[-1], 2.0, 0.5)
    betas = lss.lss_betas(data[mask].T, lss.event_regressors(table["onset"], table["duration"],
                                                             times),
                          lss.nuisance_design(times, motion))
    betas = 100 * betas / mean[mask]
    driven = information.driven_voxels(betas, 0.1)
    result = information.split_half_identification(betas[:, driven],
                                                   table["trial_type"].to_numpy())
    assert result.n_permutations == 720
    assert result.p_value < 0.01 and result.accuracy >= 0.5
