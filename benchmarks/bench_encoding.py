"""Benchmark the stimulus models: LSS speed and exactness, encoding accuracy against the
simulator's ground truth, selectivity captions, and category information in a block design.

Cases:

* ``lss-nilearn``: LSS betas of 9 events x 27 voxels against nilearn's ``FirstLevelModel``
  fitted once per event (largest absolute difference);
* ``lss-200x200k``: 200 events x 200,000 voxels x 300 volumes (float32), wall time on the
  threads this process has (set ``OMP_NUM_THREADS=2`` for the 2-core figure);
* ``encoding-truth``: the simulator's encoding model ``W`` on AAL3 regions, its 120
  captions each shown twice within one of 6 runs, single-trial noise 0.3 %; folds by run;
  held-out r / noise ceiling, the same ratio for the true responses themselves (a perfect
  model: 1 when the ceiling is on the score's footing), recovered tuning over 480 sentences
  of the shipped pool never shown, and whether BrainSCUBA's top captions name each
  category-selective region's preferred category;
* ``encoding-curve``: the learning curve of the early visual regions. Their true tuning is a
  random direction of the 384-d sentence space (no category), which only many distinct
  captions pin down: a held-out caption's response lies partly outside the span of the
  training captions' embeddings, and no linear model of those captions can predict that
  part. Each run then also shows 0, 20, 60 or 140 sentences of the shipped pool (of the six
  categories, none of the 480 above), each twice, for 120 to 960 distinct captions; r /
  noise ceiling is scored on the held-out simulator captions only, beside the span limit
  (the held-out r that noise-free responses would give, from the span alone). Real
  caption-based encoding datasets have thousands of stimuli (NSD: about 10,000 images per
  participant); the issue's level is asked of the largest point;
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

import numpy as np


def _lss_cases() -> list[tuple[str, str, str, str, str]]:
    import nibabel as nib
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


#: Sentences of the shipped pool added to each of the 6 runs, per point of the learning
#: curve (0: the simulator's 120 captions alone; 140: 960 distinct captions).
CURVE_EXTRA_PER_RUN = (0, 20, 60, 140)
#: Single-trial noise (% signal change): the simulator's trial noise and the betas' noise.
TRIAL_NOISE = float(np.hypot(0.1, 0.3))


def _show(indices, extra, rng):
    """Each run shows its share of ``indices`` and of ``extra`` twice; (shown, runs)."""
    shown, runs = [], []
    splits = zip(np.array_split(rng.permutation(indices), 6), np.array_split(extra, 6),
                 strict=True)
    for run, (own, more) in enumerate(splits):
        chunk = np.concatenate([own, more]).astype(int)
        shown += np.concatenate([chunk, rng.permutation(chunk)]).tolist()
        runs += [run] * (2 * len(chunk))
    return np.asarray(shown), np.asarray(runs)


def _span_limit(x, weights, runs, n_folds, keep):
    """Held-out r of the true responses with their part in the span of the training stimuli.

    What the ridge fit reaches with noise-free responses (least squares on the training
    captions' embeddings recovers exactly the projection of the true weights on their span):
    the ceiling that the number of distinct training captions sets, per parcel, over the
    samples ``keep``.
    """
    from fmrilm_bids.stimulus import encoding

    predicted = np.zeros((len(x), len(weights)))
    for train, test in encoding.group_folds(runs, n_folds):
        mean = x[train].mean(axis=0)
        _, singular, basis = np.linalg.svd(x[train] - mean, full_matrices=False)
        basis = basis[singular > 1e-6 * singular[0]]
        predicted[test] = (x[test] - mean) @ basis.T @ (basis @ weights.T)
    return encoding.pearson_columns(predicted[keep], x[keep] @ weights.T)


def _encoding_cases() -> list[tuple[str, str, str, str, str]]:
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
    shown, runs = _show(np.arange(len(captions)), np.zeros(0), rng)
    truth = model.amplitudes(embeddings[shown])
    responses = truth + rng.normal(0, TRIAL_NOISE, truth.shape)
    start = time.perf_counter()
    fit = encoding.fit_encoding({"sentence": embeddings[shown]}, responses, runs)
    fit_time = time.perf_counter() - start
    ceiling = encoding.noise_ceiling(responses, [captions[i] for i in shown])
    ratio = fit.scores / ceiling
    perfect = encoding.pearson_columns(truth, responses) / ceiling
    prefers = category_preferences(regions, CATEGORIES)
    selective = prefers.any(axis=1)
    visual_only = region_membership(regions, VISUAL_REGIONS) & ~selective
    pool_table = load_caption_pool()
    candidates = pool_table.groupby("topic").head(60)
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
    rows = [
        ("encoding-truth", "r / ceiling, category-selective (min, median)",
         f"{ratio[selective].min():.2f}, {np.median(ratio[selective]):.2f}", ">= 0.8",
         "yes" if ratio[selective].min() >= 0.8 else "NO"),
        ("encoding-truth", "r / ceiling, early visual only (Calcarine, Cuneus)",
         ", ".join(f"{v:.2f}" for v in ratio[visual_only]), ">= 0.8",
         "yes" if ratio[visual_only].min() >= 0.8 else "NO (too few captions: see curve)"),
        ("encoding-truth", "r of the true responses / ceiling (median, 26 parcels)",
         f"{np.median(perfect):.2f}", "1 (same footing)",
         "yes" if abs(np.median(perfect) - 1) <= 0.05 else "NO"),
        ("encoding-truth", "tuning r, category-selective (min, median)",
         f"{tuning[selective].min():.2f}, {np.median(tuning[selective]):.2f}", ">= 0.8",
         "yes" if tuning[selective].min() >= 0.8 else "NO"),
        ("encoding-truth", "captions name the preferred category",
         f"{np.mean(hits):.0%} of {len(hits)}", ">= 80 %",
         "yes" if np.mean(hits) >= 0.8 else "NO"),
        ("encoding-truth", "fit time, 26 parcels (s)", f"{fit_time:.1f}", "-", "-"),
    ]

    # Learning curve: more distinct training captions, scored on the simulator's own ones.
    # The added sentences are the shipped pool's of the six categories, apart from the 480
    # candidates above (never shown).
    extra = pool_table[pool_table["topic"].isin(CATEGORIES)
                       & ~pool_table.index.isin(candidates.index)]
    stimuli = np.vstack([embeddings, encode_sentences(extra["caption"].tolist())])
    for per_run in CURVE_EXTRA_PER_RUN:
        if per_run == 0:
            curve_fit, curve_shown, curve_runs, curve_responses = fit, shown, runs, responses
        else:
            curve_rng = np.random.default_rng(per_run)
            added = len(captions) + curve_rng.permutation(len(extra))[:6 * per_run]
            curve_shown, curve_runs = _show(np.arange(len(captions)), added, curve_rng)
            clean = model.amplitudes(stimuli[curve_shown])
            curve_responses = clean + curve_rng.normal(0, TRIAL_NOISE, clean.shape)
            curve_fit = encoding.fit_encoding({"sentence": stimuli[curve_shown]},
                                              curve_responses, curve_runs)
        own = curve_shown < len(captions)
        curve_ratio = encoding.pearson_columns(
            curve_fit.predictions[own], curve_responses[own]) / encoding.noise_ceiling(
            curve_responses[own], curve_shown[own].astype(str))
        limit = _span_limit(stimuli[curve_shown], model.weights, curve_runs,
                            curve_fit.n_folds, own)
        n_distinct = len(np.unique(curve_shown))
        last = per_run == CURVE_EXTRA_PER_RUN[-1]
        rows.append((
            "encoding-curve",
            f"{n_distinct} distinct captions: r / ceiling early visual (span limit); "
            "category-selective min",
            ", ".join(f"{v:.2f}" for v in curve_ratio[visual_only])
            + " (" + ", ".join(f"{v:.2f}" for v in limit[visual_only]) + f"); "
            f"{curve_ratio[selective].min():.2f}",
            ">= 0.8" if last else "-",
            ("yes" if curve_ratio[visual_only].min() >= 0.8 else "NO") if last else "-"))

    y = rng.standard_normal((240, 200_000)).astype(np.float32)
    x = rng.standard_normal((240, 384)).astype(np.float32)
    start = time.perf_counter()
    encoding.fit_encoding({"sentence": x}, y, np.repeat(np.arange(12), 20))
    voxel_time = time.perf_counter() - start
    rows.append(("encoding-voxels", "fit time, 240 x 200k voxels (s)", f"{voxel_time:.1f}",
                 "-", "-"))
    return rows


def block_betas(root: Path, seed: int = 3):
    """A simulated single-run block design (12 blocks of 6 categories, 5 mm voxels): the
    dataset, its block table and the blocks' LSS betas (percent signal change) in the brain."""
    import nibabel as nib
    import numpy as np
    import pandas as pd

    from fmrilm_bids.simulate import load_run_truth, simulate_dataset
    from fmrilm_bids.simulate.events import TASK
    from fmrilm_bids.simulate.geometry import MOTION_PARAMETERS
    from fmrilm_bids.stimulus import lss

    dataset = simulate_dataset(root / f"block-{seed}", n_subjects=1, runs=(TASK,),
                               task_design="block", n_volumes=175, bold_voxel_size=5.0,
                               seed=seed, overwrite=True)
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
    return dataset, table, betas


def _block_case(root: Path) -> list[tuple[str, str, str, str, str]]:
    from fmrilm_bids.stimulus import information

    _, table, betas = block_betas(root)
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
