"""Benchmark the stimulus models: LSS speed and exactness, encoding accuracy against the
simulator's ground truth, selectivity captions, and category information in a block design.

Cases:

* ``lss-nilearn``: LSS betas of 9 events x 27 voxels against nilearn's ``FirstLevelModel``
  fitted once per event (largest absolute difference);
* ``lss-200x200k``: 200 events x 200,000 voxels x 300 volumes (float32), wall time on the
  threads this process has (set ``OMP_NUM_THREADS=2`` for the 2-core figure);
* ``encoding-truth``: the simulator's encoding model ``W`` on AAL3 regions, its 120
  captions each shown twice within one of 6 runs, single-trial noise 0.3 %; folds by run;
  held-out r / noise ceiling, recovered tuning over 480 sentences of the shipped pool never
  shown, and whether BrainSCUBA's top captions name each category-selective region's
  preferred category;
* ``encoding-voxels``: wall time of the voxel-wise ridge (240 samples x 200,000 voxels,
  5 outer x 5 inner folds, 17 penalties);
* ``block-design``: one simulated run of 12 blocks of 6 categories (5 mm voxels): split-half
  identification of the category from the LSS block betas, exact permutation p.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/bench_encoding.py [--out DIR]

Prints a table: case, figure, value, the issue's must-show and whether it is met.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def _lss_cases() -> list[tuple[str, str, str, str, str]]:
    import nibabel as nib
    import numpy as np
    import pandas as pd
    from nilearn.glm.first_level import FirstLevelModel, make_first_level_design_matrix

    from fmrilm_bids.stimulus import lss

    rng = np.random.default_rng(3)
    tr, n_volumes, n_events = 2.0, 80, 9
    onsets = np.sort(rng.uniform(4.0, n_volumes * tr - 20.0, n_events)).round(1)
    durations = rng.choice([1.0, 3.0], n_events)
    confounds = rng.standard_normal((n_volumes, 3))
    times = lss.frame_times(n_volumes, tr)
    data = 100 + rng.standard_normal((n_volumes, 27))
    betas = lss.lss_betas(data, lss.event_regressors(onsets, durations, times),
                          lss.nuisance_design(times, confounds, 0.01))
    image = nib.Nifti1Image(data.T.reshape(3, 3, 3, -1), np.eye(4))
    mask = nib.Nifti1Image(np.ones((3, 3, 3), np.uint8), np.eye(4))
    worst = 0.0
    for i in range(n_events):
        events = pd.DataFrame({"onset": onsets, "duration": durations,
                               "trial_type": ["other"] * n_events})
        events.loc[i, "trial_type"] = "target"
        design = make_first_level_design_matrix(times, events, hrf_model="spm",
                                                high_pass=0.01, add_regs=confounds,
                                                add_reg_names=["a", "b", "c"])
        model = FirstLevelModel(t_r=tr, mask_img=mask, noise_model="ols",
                                signal_scaling=False).fit(image, design_matrices=design)
        expected = model.compute_contrast("target", output_type="effect_size").get_fdata()
        worst = max(worst, float(np.abs(betas[i] - expected.reshape(-1)).max()))
    times = lss.frame_times(300, 2.0)
    regressors = lss.event_regressors(np.linspace(4, 560, 200), np.full(200, 2.0), times)
    big = rng.standard_normal((300, 200_000)).astype(np.float32)
    start = time.perf_counter()
    lss.lss_betas(big, regressors, lss.nuisance_design(times))
    elapsed = time.perf_counter() - start
    return [("lss-nilearn", "max abs(LSS - nilearn)", f"{worst:.1e}", "<= 1e-5",
             "yes" if worst <= 1e-5 else "NO"),
            ("lss-200x200k", "wall time (s)", f"{elapsed:.1f}", "seconds",
             "yes" if elapsed < 60 else "NO")]


def _encoding_cases() -> list[tuple[str, str, str, str, str]]:
    import numpy as np

    from fmrilm_bids.resources.captions import load_caption_pool
    from fmrilm_bids.resources.text_encoder import encode_sentences
    from fmrilm_bids.simulate.encoding import build_encoding_model
    from fmrilm_bids.simulate.events import CATEGORIES, caption_pool
    from fmrilm_bids.simulate.regions import (
        VISUAL_REGIONS,
        assign_networks,
        category_preferences,
        region_membership,
    )
    from fmrilm_bids.stimulus import encoding, selectivity

    regions = ("Fusiform_L", "Fusiform_R", "Occipital_Inf_L", "Temporal_Sup_L", "Amygdala_R",
               "ParaHippocampal_L", "Lingual_L", "Cingulate_Post_L", "Precuneus_L",
               "Occipital_Sup_L", "Hippocampus_L", "Temporal_Inf_L", "Occipital_Mid_L",
               "Temporal_Mid_L", "Parietal_Inf_L", "SupraMarginal_L", "Precentral_L",
               "Frontal_Inf_Oper_L", "Parietal_Sup_L", "Insula_L", "OFCmed_L",
               "Frontal_Med_Orb_L", "Calcarine_L", "Cuneus_L", "Caudate_L", "Precentral_R")
    pool = caption_pool()
    captions = [c for _, c in pool]
    embeddings = encode_sentences(captions)
    rng = np.random.default_rng(0)
    model = build_encoding_model(regions, assign_networks(regions), embeddings,
                                 [c for c, _ in pool], rng)
    shown, runs = [], []
    for run, chunk in enumerate(np.array_split(rng.permutation(len(captions)), 6)):
        shown += np.concatenate([chunk, rng.permutation(chunk)]).tolist()
        runs += [run] * (2 * len(chunk))
    shown = np.asarray(shown)
    responses = model.amplitudes(embeddings[shown]) + rng.normal(
        0, np.hypot(0.1, 0.3), (len(shown), len(regions)))
    start = time.perf_counter()
    fit = encoding.fit_encoding({"sentence": embeddings[shown]}, responses, runs)
    fit_time = time.perf_counter() - start
    ceiling = encoding.noise_ceiling(responses, [captions[i] for i in shown])
    ratio = fit.scores / ceiling
    prefers = category_preferences(regions, CATEGORIES)
    selective = prefers.any(axis=1)
    visual_only = region_membership(regions, VISUAL_REGIONS) & ~selective
    candidates = load_caption_pool().groupby("topic").head(60)
    vectors = encode_sentences(candidates["caption"].tolist())
    tuning = encoding.pearson_columns(fit.predict({"sentence": vectors}),
                                      model.amplitudes(vectors))
    table = selectivity.selectivity_captions(
        fit.predict({"sentence": np.vstack([vectors, embeddings])}),
        [*candidates["caption"], *captions], regions,
        topics=[*candidates["topic"], *[c for c, _ in pool]])
    hits = [selectivity.preferred_topic(table, region)
            in {c for c, p in zip(CATEGORIES, prefers[i], strict=True) if p}
            for i, region in enumerate(regions) if prefers[i].any()]

    y = rng.standard_normal((240, 200_000)).astype(np.float32)
    x = rng.standard_normal((240, 384)).astype(np.float32)
    start = time.perf_counter()
    encoding.fit_encoding({"sentence": x}, y, np.repeat(np.arange(12), 20))
    voxel_time = time.perf_counter() - start
    return [
        ("encoding-truth", "r / ceiling, category-selective (min, median)",
         f"{ratio[selective].min():.2f}, {np.median(ratio[selective]):.2f}", ">= 0.8",
         "yes" if ratio[selective].min() >= 0.8 else "NO"),
        ("encoding-truth", "r / ceiling, early visual only (Calcarine, Cuneus)",
         ", ".join(f"{v:.2f}" for v in ratio[visual_only]), ">= 0.8",
         "yes" if ratio[visual_only].min() >= 0.8 else "NO"),
        ("encoding-truth", "tuning r, category-selective (min, median)",
         f"{tuning[selective].min():.2f}, {np.median(tuning[selective]):.2f}", ">= 0.8",
         "yes" if tuning[selective].min() >= 0.8 else "NO"),
        ("encoding-truth", "captions name the preferred category",
         f"{np.mean(hits):.0%} of {len(hits)}", ">= 80 %",
         "yes" if np.mean(hits) >= 0.8 else "NO"),
        ("encoding-truth", "fit time, 26 parcels (s)", f"{fit_time:.1f}", "-", "-"),
        ("encoding-voxels", "fit time, 240 x 200k voxels (s)", f"{voxel_time:.1f}", "-", "-"),
    ]


def _block_case(root: Path) -> list[tuple[str, str, str, str, str]]:
    import nibabel as nib
    import numpy as np
    import pandas as pd

    from fmrilm_bids.simulate import load_run_truth, simulate_dataset
    from fmrilm_bids.simulate.events import TASK
    from fmrilm_bids.simulate.geometry import MOTION_PARAMETERS
    from fmrilm_bids.stimulus import information, lss

    dataset = simulate_dataset(root / "block", n_subjects=1, runs=(TASK,), task_design="block",
                               n_volumes=175, bold_voxel_size=5.0, seed=3, overwrite=True)
    func = dataset / "sub-01" / "func"
    events = pd.read_csv(func / f"sub-01_task-{TASK}_events.tsv", sep="\t")
    table = lss.block_events(events, lss.group_blocks(events))
    data = np.asarray(nib.load(func / f"sub-01_task-{TASK}_bold.nii.gz").dataobj, np.float32)
    mean = data.mean(axis=-1)
    mask = mean > 0.3 * np.percentile(mean[mean > 0], 95)
    motion = load_run_truth(dataset, "01", TASK).motion[list(MOTION_PARAMETERS)].to_numpy()
    times = lss.frame_times(data.shape[-1], 2.0, 0.5)
    betas = 100 * lss.lss_betas(data[mask].T, lss.event_regressors(
        table["onset"], table["duration"], times), lss.nuisance_design(times, motion)) / mean[mask]
    result = information.split_half_identification(
        betas[:, information.driven_voxels(betas, 0.1)], table["trial_type"].to_numpy())
    return [("block-design", "split-half identification (chance 0.17)",
             f"{result.accuracy:.2f}, p = {result.p_value:.4f} ({result.n_permutations} perm.)",
             "p < 0.01", "yes" if result.p_value < 0.01 else "NO")]


def main(argv: list[str] | None = None) -> None:
    """Run every case and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="work folder (default: a temporary one)")
    opts = parser.parse_args(argv)
    root = opts.out or Path(tempfile.mkdtemp(prefix="bench-encoding-"))
    from fmrilm_bids.utils.environment import configure_environment

    configure_environment(work_dir=root / "work")
    rows = [*_lss_cases(), *_encoding_cases(), *_block_case(root)]
    header = ("case", "figure", "value", "must show", "met")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
