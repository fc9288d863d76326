"""Benchmark fMRI-LM (Stages 1-3) on held-out subjects, against simple baselines and chance.

Data: a BIDS dataset (``--bids``; by default an evaluation cohort simulated into the work
folder: ``--subjects`` participants (16), each with a resting run and two picture runs, half
of them patients) and its parcel signals: ``--derivatives DIR`` holding
``sub-*/[ses-*/]func/*_seg-<atlas>_desc-denoised_timeseries.tsv`` with JSON sidecars
(``RepetitionTime``, optional ``StartTime``), or, without it, the simulator's ground-truth
parcel signals (``sourcedata/simulation/.../_desc-clean_timeseries.tsv``; said in the
header: preprocessing is not what this measures). Events and ``participants.tsv`` come from
the BIDS folder. Every run is described by the descriptor corpus with windows as long as the
tokenizer's.

Pipeline, as the group level runs it (the app's defaults unless a flag says otherwise): a
seeded quarter of the participants is held out (:func:`~fmrilm_bids.fmrilm.splits.
subject_split`) and never trained on; the Stage-1 tokenizer is trained on the others (one
token per learned parcel group and window, aligned to the language model's input
embeddings of the window texts), then :func:`~fmrilm_bids.fmrilm.llm.fit_fmrilm` runs Stages
2 and 3 on SmolLM2-135M-Instruct (or ``--llm DIR``), every question tuned, and evaluates on
the held-out participants; then :func:`~fmrilm_bids.fmrilm.llm.apply_fmrilm` captions every
held-out run.

Tables, on the held-out subjects: Stage 1 (reconstruction R² and codebook usage beside the
PCA baseline of the same size, bits per window); each question's metric for fMRI-LM and the
logistic/ridge baselines on each window's HRF-shifted parcel amplitudes (``amplitude``), on
functional connectivity (``FC``) and on the Stage-1 token features (``tokens``), and
chance, with 95 % bootstrap intervals over held-out subjects and p-values (binomial against
chance; captions: permutation against shuffled pairs); the caption files' checks; training
throughput (tokens/s), MFU against the machine's own matrix-multiply peak in the training
precision, captions/s, peak memory; then the issue's must-show levels, met or not.

Usage::

    python benchmarks/bench_llm.py [--bids DIR] [--derivatives DIR] [--out DIR]
        [--subjects 16] [--lm-epochs 1 2] [--lm-steps N] [--tokenizer-steps N]
        [--fmri-inputs continuous|discrete] [--threads 2] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ENTITIES = re.compile(r"(sub|ses|task|acq|run)-([a-zA-Z0-9]+)")


def cohort_dataset(root: Path, subjects: int, seed: int) -> Path:
    """The evaluation cohort (``subjects`` participants, a resting and two picture runs
    each), simulated once into ``root``."""
    from fmrilm_bids.simulate import simulate_dataset

    dataset = root / f"cohort-{subjects}-s{seed}"
    if not (dataset / "dataset_description.json").is_file():
        simulate_dataset(dataset, n_subjects=subjects, runs=("rest", "images", "images"),
                         bold_voxel_size=6.0, seed=seed, overwrite=True)
    return dataset


def parcel_series(bids: Path, derivatives: Path | None, stem: str, entities: dict[str, str],
                  atlas: str, tr: float) -> tuple[pd.DataFrame, float, float]:
    """Parcel signals of a run: ``(table, tr, start time)`` (derivatives or ground truth)."""
    if derivatives is None:
        from fmrilm_bids.simulate import load_run_truth

        truth = load_run_truth(bids, entities["sub"], entities["task"],
                               int(entities["run"]) if "run" in entities else None)
        return truth.clean, tr, 0.0
    folder = derivatives / f"sub-{entities['sub']}"
    matches = sorted(folder.rglob(f"{stem}*_seg-{atlas}_desc-denoised_timeseries.tsv"))
    if not matches:
        raise FileNotFoundError(f"{folder}: no {stem}*_seg-{atlas}_desc-denoised_timeseries"
                                ".tsv; run the participant level first or pick --atlas.")
    sidecar = json.loads(matches[0].with_suffix(".json").read_text())
    sampling = sidecar.get("RepetitionTime") or 1.0 / sidecar["SamplingFrequency"]
    return pd.read_csv(matches[0], sep="\t"), float(sampling), float(sidecar.get("StartTime",
                                                                                 0.0))


def load_dataset(bids: Path, derivatives: Path | None, atlas: str) -> dict[str, dict]:
    """Every BOLD run: entities, parcel signals, TR and events (onsets in series time)."""
    runs = {}
    for sidecar in sorted(bids.glob("sub-*/**/func/*_bold.json")):
        stem = sidecar.name.removesuffix("_bold.json")
        entities = dict(ENTITIES.findall(stem))
        tr = float(json.loads(sidecar.read_text())["RepetitionTime"])
        series, tr, start = parcel_series(bids, derivatives, stem, entities, atlas, tr)
        events_file = sidecar.with_name(f"{stem}_events.tsv")
        events = None
        if events_file.is_file():
            events = pd.read_csv(events_file, sep="\t", keep_default_na=False,
                                 na_values=["n/a"])
            events["onset"] = events["onset"] - start
        runs[stem] = {"entities": entities, "series": series, "tr": tr, "events": events}
    if not runs:
        raise FileNotFoundError(f"{bids}: no sub-*/func/*_bold.json; point --bids at a BIDS "
                                "dataset.")
    return runs


def cell(value: object, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}" if isinstance(value, float) \
        else str(value)


METHODS = ("fmrilm", "baseline_amplitude", "baseline_fc", "baseline_tokens")


def with_interval(values: dict, metric: str, digits: int = 3) -> str:
    """``value [low, high]`` (the bootstrap interval over held-out subjects, when there)."""
    value = values.get(metric)
    low, high = values.get(f"{metric}_ci_low"), values.get(f"{metric}_ci_high")
    if value is None or low is None:
        return cell(value, digits)
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def p_value(value: float | None) -> str:
    return "—" if value is None else "< 0.0001" if value < 1e-4 else f"{value:.4f}"


def task_rows(metrics: dict) -> list[list[str]]:
    """Table rows of the held-out evaluation (95 % intervals over held-out subjects)."""
    rows = []
    for name, task in metrics["tasks"].items():
        if "fmrilm" not in task:
            continue
        label = f"{name} ({task['setting']}, n={task['n_test']})"
        if task["kind"] == "class":
            chance = {"accuracy": task["fmrilm"]["chance_accuracy"], "auroc": 0.5}
            for metric in ("accuracy", "auroc"):
                rows.append([label, metric, *(with_interval(task.get(s, {}), metric)
                                              for s in METHODS), cell(chance[metric])])
            rows.append([label, "p vs chance", *(p_value(task.get(s, {}).get("p_vs_chance"))
                                                 for s in METHODS), "—"])
        elif task["kind"] == "number":
            rows.append([label, "MAE", *(with_interval(task.get(s, {}), "mae", 1)
                                         for s in METHODS), cell(task["chance_mae"], 1)])
        else:
            for metric in ("minilm_cosine", "bleu", "rouge_l"):
                shuffled = task["fmrilm"].get("shuffled_cosine") if metric == "minilm_cosine" \
                    else None
                rows.append([label, metric, *(with_interval(task.get(s, {}), metric)
                                              for s in METHODS),
                             f"{shuffled:.3f} (shuffled)" if shuffled is not None else "—"])
            rows.append([label, "p vs shuffled pairs",
                         *(p_value(task.get(s, {}).get("p_vs_shuffled")) for s in METHODS),
                         "—"])
    return rows


def print_table(header: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def caption_checks(outputs: dict, categories: int) -> tuple[int, int, int]:
    """Empty captions, picture runs, and picture runs with at least ``categories`` distinct
    window captions, over the captioned runs."""
    empty = pictures = varied = 0
    for key, output in outputs.items():
        tables = [t for t in (output.window_captions, output.event_captions) if t is not None]
        empty += sum(int((t["caption"].fillna("").str.strip().isin(["", "n/a"])).sum())
                     for t in tables)
        if output.event_captions is not None and "rest" not in key:
            pictures += 1
            varied += output.window_captions["caption"].nunique() >= categories
    return empty, pictures, varied


def must_show(metrics: dict, stage1: dict, checks: tuple[int, int, int]) -> list[list[str]]:
    """The issue's levels, with the measured values and whether each is met."""
    rows = []
    tasks = metrics["tasks"]
    condition = tasks.get("condition", {})
    if "fmrilm" in condition:
        accuracy = condition["fmrilm"]["accuracy"]
        amplitude = condition.get("baseline_amplitude", {}).get("accuracy") or 0.0
        chance = condition["fmrilm"]["chance_accuracy"]
        p = condition["fmrilm"]["p_vs_chance"]
        rows.append(["condition accuracy >= 0.9 x amplitude baseline",
                     f"{accuracy:.3f} vs {0.9 * amplitude:.3f}",
                     "yes" if accuracy >= 0.9 * amplitude else "NO"])
        rows.append(["condition accuracy >= 2 x chance, p < 0.01",
                     f"{accuracy:.3f} vs {2 * chance:.3f}, p = {p_value(p)}",
                     "yes" if accuracy >= 2 * chance and p < 0.01 else "NO"])
    stimulus = tasks.get("stimulus", {})
    if "fmrilm" in stimulus:
        cosine = stimulus["fmrilm"]["minilm_cosine"]
        p = stimulus["fmrilm"]["p_vs_shuffled"]
        retrieval = stimulus.get("baseline_amplitude", {}).get("minilm_cosine") or 0.0
        rows.append(["caption cosine above shuffled pairs, p < 0.01",
                     f"{cosine:.3f} vs {stimulus['fmrilm']['shuffled_cosine']:.3f}, "
                     f"p = {p_value(p)}", "yes" if p < 0.01 else "NO"])
        rows.append(["caption cosine within 0.05 of the retrieval baseline",
                     f"{cosine:.3f} vs {retrieval:.3f}",
                     "yes" if cosine >= retrieval - 0.05 else "NO"])
    group = tasks.get("group", {})
    if "fmrilm" in group:
        auroc = group["fmrilm"].get("auroc")
        fc = group.get("baseline_fc", {}).get("auroc")
        rows.append(["patient vs control AUROC >= FC baseline - 0.05",
                     f"{cell(auroc)} vs {cell(fc)}",
                     "yes" if auroc is not None and fc is not None and auroc >= fc - 0.05
                     else "NO"])
    empty, pictures, varied = checks
    rows.append(["captions: none empty", f"{empty} empty", "yes" if empty == 0 else "NO"])
    rows.append(["picture runs: distinct window captions >= categories",
                 f"{varied} of {pictures} runs", "yes" if pictures and varied == pictures
                 else "NO"])
    rows.append(["Stage 1 codebook usage >= 50 %", f"{stage1['usage']:.0%}",
                 "yes" if stage1["usage"] >= 0.5 else "NO"])
    rows.append(["Stage 1 reconstruction R² >= PCA baseline",
                 f"{stage1['reconstruction_r2']:.3f} vs {stage1['pca_reconstruction_r2']:.3f}",
                 "yes" if stage1["reconstruction_r2"] >= stage1["pca_reconstruction_r2"]
                 else "NO"])
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bids", type=Path, help="BIDS dataset (default: the simulated "
                        "evaluation cohort)")
    parser.add_argument("--subjects", type=int, default=16, help="participants of the "
                        "simulated cohort")
    parser.add_argument("--derivatives", type=Path,
                        help="folder with *_seg-<atlas>_desc-denoised_timeseries.tsv "
                             "(default: the simulator's ground-truth parcel signals)")
    parser.add_argument("--atlas", default="AAL3")
    parser.add_argument("--out", type=Path, help="work folder (default: a temporary one)")
    parser.add_argument("--llm", type=Path, help="local Hugging Face causal LM (default "
                        "SmolLM2-135M-Instruct)")
    parser.add_argument("--tokenizer-steps", type=int, help="default: from the data")
    parser.add_argument("--lm-steps", type=int, help="steps per stage (default: from "
                        "--lm-epochs)")
    parser.add_argument("--lm-epochs", type=float, nargs=2, default=None,
                        metavar=("STAGE2", "STAGE3"), help="default: the app's")
    parser.add_argument("--fmri-inputs", default="continuous",
                        choices=("continuous", "discrete"))
    parser.add_argument("--few-shot-k", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    root = (args.out or Path(tempfile.mkdtemp(prefix="bench-llm-"))).absolute()
    # Progress of the long steps as log lines (bars only on a terminal).
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from fmrilm_bids.utils.environment import configure_environment, keep_freed_memory

    configure_environment(work_dir=root / "work")
    keep_freed_memory()  # as the group level does

    import torch

    from fmrilm_bids.config import WorkflowConfig
    from fmrilm_bids.fmrilm.descriptors import (
        DescriptorSettings,
        RunInput,
        describe_dataset,
        load_network_table,
        networks_of,
    )
    from fmrilm_bids.fmrilm.llm import (
        DecodingConfig,
        FmriLMConfig,
        LMRun,
        LMTrainConfig,
        apply_fmrilm,
        fit_fmrilm,
        llm_text_embedder,
    )
    from fmrilm_bids.fmrilm.splits import subject_split
    from fmrilm_bids.fmrilm.tokenizer import (
        ParcelRun,
        TokenizerConfig,
        TrainConfig,
        train_tokenizer,
    )
    from fmrilm_bids.fmrilm.training import matmul_peak_flops, training_flops_per_token
    from fmrilm_bids.resources.atlases import parcel_centroids
    from fmrilm_bids.resources.text_encoder import encode_sentences
    from fmrilm_bids.utils.devices import autocast_dtype, resolve_device, set_precision

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    precision = set_precision(args.precision)
    epochs = args.lm_epochs or WorkflowConfig().lm_epochs
    started_all = time.perf_counter()

    # Data: parcel signals (parcels with a position in the atlas image), events,
    # participants; descriptor texts per tokenizer window.
    bids = (args.bids or cohort_dataset(root, args.subjects, args.seed)).absolute()
    source = (f"denoised parcel series from {args.derivatives}" if args.derivatives else
              "the simulator's ground-truth parcel signals (no --derivatives given)")
    dataset = load_dataset(bids, args.derivatives, args.atlas)
    centres = parcel_centroids(args.atlas)
    for run in dataset.values():
        run["series"] = run["series"][[c for c in run["series"].columns if c in centres]]
    participants = pd.read_csv(bids / "participants.tsv", sep="\t")
    table = load_network_table(args.atlas)
    embedder = llm_text_embedder(args.llm, pooling="input", device=device)
    hidden = embedder(["probe"]).shape[1]
    tokenizer_config = TokenizerConfig(llm_hidden=hidden, text_dim=hidden)
    described, _ = describe_dataset(
        {stem: RunInput(run["series"], run["tr"], events=run["events"])
         for stem, run in dataset.items()}, table,
        settings=DescriptorSettings(window_length=tokenizer_config.window_seconds),
        seed=args.seed)
    subjects = sorted({run["entities"]["sub"] for run in dataset.values()})
    _, test_subjects = subject_split(subjects, seed=args.seed)
    parcel_runs = {}
    for stem, run in dataset.items():
        columns = list(run["series"].columns)
        parcel_runs[stem] = ParcelRun(run["series"].to_numpy(), run["tr"],
                                      networks_of(columns, table), run["entities"]["sub"],
                                      described[stem].window_texts,
                                      np.array([centres[c] for c in columns]),
                                      described[stem].window_events)

    # Stage 1.
    started = time.perf_counter()
    stage1 = train_tokenizer(
        [r for r in parcel_runs.values() if r.subject not in test_subjects],
        [r for r in parcel_runs.values() if r.subject in test_subjects],
        root / "tokenizer", tokenizer_config,
        TrainConfig(steps=args.tokenizer_steps, seed=args.seed, eval_interval=10**9),
        text_embedder=embedder, event_embedder=encode_sentences, device=device)
    tokenizer_seconds = time.perf_counter() - started
    tokens = dict(zip(parcel_runs, stage1.model.tokenize_runs(list(parcel_runs.values())),
                      strict=True))
    runs = []
    for stem, run in dataset.items():
        entities = run["entities"]
        runs.append(LMRun.from_tokenized(
            tokens[stem], entities["sub"], entities["task"], session=entities.get("ses"),
            run=entities.get("run"), window_texts=parcel_runs[stem].window_texts,
            run_text=described[stem].run_text,
            events=run["events"], timeseries=run["series"].to_numpy(), tr=run["tr"]))

    # Stages 2 and 3, evaluation on the held-out subjects; the matmul peak in the training
    # precision first (the denominator of MFU).
    dtype = autocast_dtype(device) or torch.float32
    peak = matmul_peak_flops(device, dtype)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    stages = [LMTrainConfig(steps=args.lm_steps, epochs=e, seed=args.seed) for e in epochs]
    decoding = DecodingConfig(seed=args.seed)
    started = time.perf_counter()
    result = fit_fmrilm(
        runs, participants, root / "fmrilm",
        FmriLMConfig(codebook_size=tokenizer_config.codebook_size,
                     fmri_inputs=args.fmri_inputs, seed=args.seed),
        *stages, token_embeddings=stage1.model.token_embeddings_for_llm(),
        projection=stage1.model.llm_projection(), llm_dir=args.llm,
        test_subjects=test_subjects, few_shot_k=args.few_shot_k, decoding=decoding,
        device=device)
    fit_seconds = time.perf_counter() - started
    held_out = [run for run in runs if run.subject in test_subjects]
    started = time.perf_counter()
    outputs = apply_fmrilm(result.model, held_out, decoding, device=device)
    caption_seconds = time.perf_counter() - started
    n_captions = sum(len(o.window_captions) + (0 if o.event_captions is None else len(
        o.event_captions)) for o in outputs.values())
    total = time.perf_counter() - started_all

    metrics = result.metrics
    windows = {name: sum(run.n_windows for run in runs if (run.subject in test_subjects)
                         == held) for name, held in (("training", False), ("held-out", True))}
    print(f"\nData: {bids.name}, {len(runs)} runs of {len(subjects)} subjects (held out: "
          f"{', '.join(test_subjects)}); parcel signals: {source}; {windows['training']} "
          f"training and {windows['held-out']} held-out windows of "
          f"{tokenizer_config.window_seconds:g} s, {args.atlas} "
          f"({len(next(iter(parcel_runs.values())).networks)} parcels).")
    print(f"Device {device}, {args.threads} threads, CPU precision {precision}. Stage 1: "
          f"{stage1.history[-1]['step']} steps in {tokenizer_seconds:.0f} s. Stages 2-3 "
          f"({args.fmri_inputs} inputs, backbone {result.model.backbone}): "
          f"{', '.join(f'{len(h)} steps' for h in result.history.values())} "
          f"({'--lm-steps' if args.lm_steps else f'epochs {epochs[0]:g} and {epochs[1]:g}'}),"
          f" fit + evaluation {fit_seconds:.0f} s (evaluation "
          f"{metrics.get('evaluation_seconds', 0):.0f} s); captions of the {len(held_out)} "
          f"held-out runs {caption_seconds:.0f} s. Total {total:.0f} s.\n")
    stage1_metrics = stage1.metrics
    print_table(["Stage 1 (held out)", "neural tokenizer", "PCA baseline, same size"], [
        ["tokens per window x codes", f"{tokenizer_config.n_groups} x "
         f"{tokenizer_config.codebook_size}", f"{tokenizer_config.n_groups} x "
         f"{tokenizer_config.codebook_size}"],
        ["bits per window", f"{tokenizer_config.bits_per_window:g}",
         f"{tokenizer_config.bits_per_window:g}"],
        ["reconstruction R²", f"{stage1_metrics['reconstruction_r2']:.3f}",
         f"{stage1_metrics['pca_reconstruction_r2']:.3f}"],
        ["codebook usage", f"{stage1_metrics['usage']:.0%}",
         f"{stage1_metrics['pca_usage']:.0%}"],
        ["perplexity", f"{stage1_metrics['perplexity']:.0f}",
         f"{stage1_metrics['pca_perplexity']:.0f}"],
        ["window -> text retrieval top-1 (chance)",
         f"{stage1_metrics.get('retrieval_top1', 0):.3f} "
         f"({stage1_metrics.get('retrieval_chance', 0):.3f})", "—"]])
    print()
    print_table(["task (setting, n)", "metric", "fMRI-LM", "amplitude baseline",
                 "FC baseline", "tokens baseline", "chance"], task_rows(metrics))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    flops = training_flops_per_token(result.model)
    mfu = {stage: rate * flops / peak for stage, rate in result.throughput.items()}
    header = ["train tok/s stage 2", "MFU stage 2", "train tok/s stage 3", "MFU stage 3",
              f"matmul peak {str(dtype).removeprefix('torch.')} (GFLOP/s)", "captions/s",
              "peak RSS (GiB)"]
    values = [f"{result.throughput['stage2']:,.0f}", f"{mfu['stage2']:.2f}",
              f"{result.throughput.get('stage3', 0):,.0f}", f"{mfu.get('stage3', 0):.2f}",
              f"{peak / 1e9:,.0f}", f"{n_captions / caption_seconds:.2f}", f"{rss:.2f}"]
    if device.type == "cuda":
        header.append("peak GPU (GiB)")
        values.append(f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f}")
    print()
    print_table(header, [values])
    categories = len({e for run in held_out if run.events is not None
                      for e in run.events["trial_type"]})
    print()
    print_table(["must show", "measured", "met"],
                must_show(metrics, stage1_metrics, caption_checks(outputs, categories)))
    example = next((o for o in outputs.values() if o.event_captions is not None), None)
    if example is not None:
        print("\nExample captions (first held-out picture run):")
        for row in example.window_captions.head(3).itertuples():
            print(f"  window {row.onset:.0f} s: {row.caption}")
        for row in example.event_captions.head(3).itertuples():
            print(f"  event {row.onset:.0f} s ({row.trial_type}): {row.caption}")
    print(f"\nMetrics in {root / 'fmrilm' / 'metrics.json'}.")


if __name__ == "__main__":
    main()
