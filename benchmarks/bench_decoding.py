"""Benchmark the decoders (fMRI -> caption embedding) against the simulator's truth.

Cases:

* ``simulator``: the simulator's encoding model ``W`` on every AAL3 region drives 20 voxels
  per region (own gain, noise 1 % per voxel, trial noise 0.1 %;
  :func:`fmrilm_bids.simulate.encoding.voxel_responses`); each of four participants sees the
  simulator's 120 captions (20 of each of the 6 categories) twice, both times within one of
  six runs (240 events); folds by run, so every held-out caption is new to its decoder.
  Held-out retrieval among each participant's 120 captions (top-1, top-5), pooled over the
  four, the contrastive head beside ridge, with permutation p-values (1,000, shuffling
  within participants);
* ``zero-shot``: the same units, decoders trained without two of the six categories and
  asked to tell those two apart by their names ("A picture of faces.");
* ``captions``: SmolLM2 writes one sentence from the 3 captions retrieved for each of the
  first 60 units (shipped pool plus the training folds' captions): similarity to the true
  caption beside the top retrieved caption's and chance (shuffled pairs);
* ``few-shot``: five participants (each with its own voxel gains, 20 % of voxels misaligned
  to a random region) see the same captions; each in turn is the new one: in each fold (five
  by run) the shared decoder trained on the other four's units that did not show the fold's
  test captions, with an adapter fitted on 25 % of the participant's units, against its own
  decoder trained on all its training units, on the same held-out units;
* ``block-design``: one simulated run of 12 blocks of 6 categories (5 mm), LSS block betas of
  the BOLD images (motion as confounds, as ``bench_encoding.py``, whose seed 3 is the
  must-show's run; seeds 1, 2 and 4-10 show the spread); each block's category read from
  its decoded embedding by the decoders trained on the other 11 blocks, beside the
  simplest decoder (the nearest category mean of the other blocks, by correlation) and the
  run's split-half identification p (is the information there at all); 10,000
  permutations. With ``--app``, the seed-3 run goes through the app's own participant level
  (``--sloppy`` preprocessing, its decoders, the default ``--decoding-folds``: one block
  held out at a time): the figures of its ``desc-decoding_metrics.tsv``;
* ``gpu``: the contrastive head's cross-validation of the simulator case on the GPU
  (``--device cuda``, or ``auto`` with a GPU); not measured without one.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/bench_decoding.py [--out DIR] [--device auto] [--app]
        [--cases simulator few-shot block-design]

Prints a table, each row as soon as it is measured: case, figure, value, the issue's
must-show, whether it is met, and the time.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

Row = tuple[str, str, str, str, str, str]
N_RUNS = 6
N_SUBJECTS = 5
#: Participants of the simulator case, and seeds of the block design (3: the must-show's).
SIMULATED = (1, 2, 3, 4)
BLOCK_SEEDS = (3, 1, 2, 4, 5, 6, 7, 8, 9, 10)
#: Cases that ``--cases`` picks.
CASES = ("simulator", "few-shot", "block-design")


def _world() -> dict:
    import numpy as np

    from fmrilm_bids.resources.atlases import bundled_atlas_dir, read_label_table
    from fmrilm_bids.resources.text_encoder import encode_sentences
    from fmrilm_bids.simulate.encoding import build_encoding_model
    from fmrilm_bids.simulate.events import CATEGORIES, caption_pool
    from fmrilm_bids.simulate.regions import assign_networks
    from fmrilm_bids.stimulus.features import trial_type_sentence

    labels = read_label_table(bundled_atlas_dir() / "AAL3.txt")
    names = [name for index, name in labels.items() if index not in (35, 36, 81, 82)]
    pool = caption_pool()
    embeddings = encode_sentences([c for _, c in pool]).astype(float)
    model = build_encoding_model(names, assign_networks(names), embeddings,
                                 [c for c, _ in pool], np.random.default_rng(0))
    return {"model": model, "captions": np.array([c for _, c in pool]),
            "topics": np.array([t for t, _ in pool]), "embeddings": embeddings,
            "names": list(CATEGORIES),
            "category_embeddings": encode_sentences([trial_type_sentence(c)
                                                     for c in CATEGORIES])}


def _participant(world: dict, seed: int, misalignment: float = 0.0) -> dict:
    """Every caption twice, both times within one of six runs, in a random order."""
    import numpy as np

    from fmrilm_bids.simulate.encoding import voxel_responses

    rng = np.random.default_rng(100 + seed)
    shown, runs = [], []
    for run, chunk in enumerate(np.array_split(rng.permutation(len(world["captions"])),
                                               N_RUNS)):
        shown += rng.permutation(np.concatenate([chunk, chunk])).tolist()
        runs += [run] * (2 * len(chunk))
    shown = np.asarray(shown)
    responses, _ = voxel_responses(world["model"], world["embeddings"][shown], rng,
                                   misalignment=misalignment)
    return {"responses": responses, "targets": world["embeddings"][shown],
            "categories": world["topics"][shown], "captions": world["captions"][shown],
            "runs": np.asarray(runs), "blocks": np.arange(len(shown))}


def _fmt(result: dict) -> str:
    ratio = result["value"] / result["chance"]
    return (f"{result['value']:.3f} ({ratio:.1f} x chance {result['chance']:.3f}), "
            f"p = {result['p_value']:.4f}")


def _simulator_cases(world: dict, device: str) -> tuple[list[Row], dict]:
    import numpy as np
    import pandas as pd
    import torch

    from fmrilm_bids.interfaces.decoding import caption_writer, read_out
    from fmrilm_bids.resources.text_encoder import encode_sentences
    from fmrilm_bids.stimulus import decoding, readout

    subjects = [_participant(world, seed) for seed in SIMULATED]
    start = time.perf_counter()
    parts = [decoding.held_out(s["responses"], s["targets"], s["runs"], s["categories"],
                               n_folds=6, seed=7, blocks=s["blocks"]) for s in subjects]
    held_time = (time.perf_counter() - start) / len(subjects)
    table = readout.evaluation_table(
        decoding.stack_held_out(parts), np.vstack([s["targets"] for s in subjects]),
        np.concatenate([s["categories"] for s in subjects]), world["names"],
        world["category_embeddings"],
        strata=np.repeat(np.arange(len(subjects)), len(subjects[0]["targets"])))
    figures = {(r.metric, r.decoder): r._asdict() for r in table.itertuples()}
    top1, ridge1 = figures[("retrieval_top1", "contrastive")], figures[("retrieval_top1",
                                                                         "ridge")]
    top5, ridge5 = figures[("retrieval_top5", "contrastive")], figures[("retrieval_top5",
                                                                         "ridge")]
    rows: list[Row] = [
        ("simulator", "retrieval top-1 among 120 held-out captions, contrastive (4 x 240 "
         "units)", _fmt(top1), ">= 5 x chance",
         "yes" if top1["value"] >= 5 * top1["chance"] else "NO",
         f"{held_time:.0f} s CPU per participant (both decoders, 6 + 3 folds)"),
        ("simulator", "retrieval top-1, ridge (baseline)", _fmt(ridge1), "-", "-", ""),
        ("simulator", "contrastive head vs ridge, top-1",
         f"{top1['value']:.3f} vs {ridge1['value']:.3f}", "contrastive >= ridge",
         "yes" if top1["value"] >= ridge1["value"] else "NO", ""),
        ("simulator", "contrastive head vs ridge, top-5",
         f"{top5['value']:.3f} vs {ridge5['value']:.3f} (chance {top5['chance']:.3f})",
         "contrastive >= ridge", "yes" if top5["value"] >= ridge5["value"] else "NO", ""),
        ("simulator", "category accuracy (names), contrastive / ridge",
         f"{figures[('category_accuracy', 'contrastive')]['value']:.3f} / "
         f"{figures[('category_accuracy', 'ridge')]['value']:.3f} (chance 0.167)", "-", "-",
         "")]
    for decoder in decoding.METHODS:
        unseen = figures[("zero_shot_accuracy", decoder)]
        rows.append(("zero-shot", f"2 categories never trained on, {decoder}", _fmt(unseen),
                     "> chance, p < 0.01" if decoder == "contrastive" else "-",
                     ("yes" if unseen["value"] > unseen["chance"] and unseen["p_value"] < 0.01
                      else "NO") if decoder == "contrastive" else "-", ""))
    subject, held = subjects[0], parts[0]

    # Captions of the first 60 units (SmolLM2 on this machine's threads).
    first = np.arange(60)
    subset = decoding.HeldOut(
        predicted={"contrastive": held.predicted["contrastive"][first]},
        logit_scale={"contrastive": held.logit_scale["contrastive"][first]},
        folds=held.folds[first], zero_shot={}, zero_shot_folds=np.full(60, -1))
    units = pd.DataFrame({"onset": 0.0, "duration": 3.0,
                          "trial_type": subject["categories"][first],
                          "caption": subject["captions"][first], "block": first,
                          "unit": "event"})
    start = time.perf_counter()
    result = read_out(subset, "contrastive", units, encode_sentences,
                      caption_writer(device=torch.device(device)))
    caption_time = time.perf_counter() - start
    similarity = result.metrics.set_index(["metric", "decoder"])
    generated = similarity.loc[("caption_similarity", "generated")]
    retrieved = similarity.loc[("caption_similarity", "retrieved")]
    rows.append(("captions", "MiniLM cosine to the true caption: generated / top retrieved / "
                 "chance (60 units)",
                 f"{generated['value']:.3f} / {retrieved['value']:.3f} / "
                 f"{generated['chance']:.3f}, p = {generated['p_value']:.4f}", "-", "-",
                 f"{caption_time:.0f} s ({device})"))
    return rows, subject


def _gpu_case(subject: dict, device: str) -> list[Row]:
    import torch

    from fmrilm_bids.stimulus import decoding, readout
    from fmrilm_bids.stimulus.encoding import group_folds
    from fmrilm_bids.utils.devices import resolve_device

    resolved = resolve_device(device)
    if resolved.type != "cuda":
        return [("gpu", "contrastive head, simulator case, 6 folds", "not measured: torch "
                 "sees no GPU here", "runs on the GPU where one is at hand", "-", "")]
    folds = group_folds(subject["runs"], 6)
    start = time.perf_counter()
    predicted, _ = decoding.cross_validate(subject["responses"], subject["targets"],
                                           subject["blocks"], folds, "contrastive",
                                           device=resolved, seed=7)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    top1 = readout.retrieval_accuracy(predicted, subject["targets"], 1)
    return [("gpu", "contrastive head, simulator case, 6 folds", _fmt(top1),
             "runs on the GPU where one is at hand", "yes",
             f"{elapsed:.1f} s GPU ({torch.cuda.get_device_name()})")]


def _few_shot_case(world: dict) -> list[Row]:
    import numpy as np

    from fmrilm_bids.stimulus import adapters, readout

    subjects = []
    for seed in range(N_SUBJECTS):
        data = _participant(world, 10 + seed, misalignment=0.2)
        subjects.append(adapters.SubjectResponses(f"s{seed}", data["responses"],
                                                  data["targets"], data["runs"],
                                                  data["blocks"]))
    start = time.perf_counter()
    processes = len(os.sched_getaffinity(0))  # as the app (--nprocs: every core)
    results = adapters.few_shot_evaluation(subjects, 0.25, n_folds=5, seed=3,
                                           processes=processes)
    elapsed = time.perf_counter() - start
    targets = np.vstack([s.targets for s in subjects])
    strata = np.concatenate([np.full(len(s.targets), i) for i, s in enumerate(subjects)])
    figures = {setting: readout.retrieval_accuracy(
        np.vstack([results[s.name][setting] for s in subjects]), targets, 1, strata=strata)
        for setting in ("own", "adapted", "shared", "own_fraction")}
    ratio = figures["adapted"]["value"] / figures["own"]["value"]
    fraction = np.mean([results[s.name]["subset"].mean() / len(s.targets) for s in subjects])
    return [
        ("few-shot", "retrieval top-1, own decoder on all its training units",
         _fmt(figures["own"]), "-", "-",
         f"{elapsed:.0f} s CPU ({processes} processes; 5 x leave-one-out)"),
        ("few-shot", f"retrieval top-1, shared + adapter on {fraction:.0%} of the units",
         _fmt(figures["adapted"]), "-", "-", ""),
        ("few-shot", "adapted / own", f"{ratio:.2f}", ">= 0.8",
         "yes" if ratio >= 0.8 else "NO", ""),
        ("few-shot", "retrieval top-1, shared without adapter / own decoder on those units",
         f"{figures['shared']['value']:.3f} / {figures['own_fraction']['value']:.3f}", "-",
         "-", "")]


def _met(result: dict) -> str:
    return "yes" if result["value"] > result["chance"] and result["p_value"] < 0.01 else "NO"


def _block_case(root: Path, app: bool) -> Iterator[Row]:
    import numpy as np
    import pandas as pd
    from bench_encoding import block_betas  # the same simulated run as the encoding benchmark

    from fmrilm_bids.interfaces.decoding import unit_sentences, unit_targets
    from fmrilm_bids.resources.text_encoder import encode_sentences
    from fmrilm_bids.simulate.events import CATEGORIES
    from fmrilm_bids.stimulus import decoding, information, readout
    from fmrilm_bids.stimulus.features import trial_type_sentence

    names = sorted(CATEGORIES)
    category_embeddings = encode_sentences([trial_type_sentence(c) for c in names])
    deciders = (*decoding.METHODS, "nearest mean")
    significant = dict.fromkeys(deciders, 0)
    for seed in BLOCK_SEEDS:
        dataset, table, betas = block_betas(root, seed)
        if seed == BLOCK_SEEDS[0]:
            must_show = dataset
        sentences = unit_sentences(table["caption"])
        distinct = list(dict.fromkeys(s for group in sentences for s in group))
        targets = unit_targets(sentences, dict(zip(distinct, encode_sentences(distinct),
                                                   strict=True)))
        truth, blocks = table["trial_type"].to_numpy(), table["block"].to_numpy()
        start = time.perf_counter()
        held = decoding.held_out(betas, targets, blocks, n_folds=12, seed=7)
        elapsed = time.perf_counter() - start
        metrics = readout.evaluation_table(held, targets, truth, names, category_embeddings,
                                           n_permutations=10_000).set_index(["metric",
                                                                             "decoder"])
        figures = {decoder: metrics.loc[("category_accuracy", decoder)].to_dict()
                   for decoder in decoding.METHODS}
        figures["nearest mean"] = readout.classification_accuracy(
            information.nearest_mean_categories(betas, truth, blocks), truth,
            np.full(len(truth), len(names)), 10_000)
        identification = information.split_half_identification(
            betas[:, information.driven_voxels(betas, 0.1)], truth)
        for decider in deciders:
            significant[decider] += figures[decider]["p_value"] < 0.01
        must = seed == BLOCK_SEEDS[0]
        yield ("block-design", f"per-block category, 12 blocks / 6 categories, seed {seed}"
               f"{' (the must-show run)' if must else ''}: contrastive; ridge; nearest "
               "category mean (baseline); split-half identification p (information in the "
               "run)", "; ".join(_fmt(figures[d]) for d in deciders)
               + f"; p = {identification.p_value:.4f}",
               "contrastive > chance, p < 0.01" if must else "-",
               _met(figures["contrastive"]) if must else "-",
               f"{elapsed:.0f} s CPU (both decoders, 12 + 3 folds)")
    yield ("block-design", f"seeds with p < 0.01, of {len(BLOCK_SEEDS)}",
           "; ".join(f"{d} {significant[d]}" for d in deciders), "-", "-", "")
    if app:
        out = root / "app"
        start = time.perf_counter()
        subprocess.run([str(Path(sys.executable).with_name("fmrilm-bids")), str(must_show),
                        str(out), "participant", "-w", str(root / "app-work"), "--sloppy",
                        "--skip-bids-validation", "--nprocs", "1", "--omp-nthreads", "1"],
                       check=True, capture_output=True)
        elapsed = time.perf_counter() - start
        found = sorted(out.glob("sub-01/func/*_desc-decoding_metrics.tsv"))
        figures = pd.read_csv(found[0], sep="\t").set_index(["metric", "decoder"])
        for decoder in decoding.METHODS:
            accuracy = figures.loc[("category_accuracy", decoder)].to_dict()
            yield ("block-design", f"seed {BLOCK_SEEDS[0]} through the app's participant "
                   f"level (--sloppy, default folds), {decoder}", _fmt(accuracy),
                   "> chance, p < 0.01", _met(accuracy),
                   f"{elapsed:.0f} s CPU (whole participant level)"
                   if decoder == "contrastive" else "")


def main(argv: list[str] | None = None) -> None:
    """Run every case and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="work folder (default: a temporary one)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    parser.add_argument("--app", action="store_true",
                        help="also run the app's participant level on the block design")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES),
                        help="cases to run (default: all; gpu and captions come with "
                        "simulator)")
    opts = parser.parse_args(argv)
    root = opts.out or Path(tempfile.mkdtemp(prefix="bench-decoding-"))
    from fmrilm_bids.utils.environment import configure_environment

    configure_environment(work_dir=root / "work")
    header = ("case", "figure", "value", "must show", "met", "time")
    print(f"threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header), flush=True)

    def show(rows: Iterable[Row]) -> None:
        for row in rows:  # each row as soon as it is measured
            print("| " + " | ".join(row) + " |", flush=True)

    world = _world() if {"simulator", "few-shot"} & set(opts.cases) else {}
    if "simulator" in opts.cases:
        rows, subject = _simulator_cases(world, "cpu")
        show(rows)
        show(_gpu_case(subject, opts.device))
    if "few-shot" in opts.cases:
        show(_few_shot_case(world))
    if "block-design" in opts.cases:
        show(_block_case(root, opts.app))


if __name__ == "__main__":
    main()
