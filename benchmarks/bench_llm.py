"""Benchmark fMRI-LM Stages 2 and 3 on held-out subjects, against simple baselines.

Data: a BIDS dataset (``--bids``; by default the demo dataset, simulated into the work
folder) and its parcel signals: ``--derivatives DIR`` holding
``sub-*/[ses-*/]func/*_seg-<atlas>_desc-denoised_timeseries.tsv`` with JSON sidecars
(``RepetitionTime``, optional ``StartTime``), or, without it, the simulator's ground-truth
parcel signals (``sourcedata/simulation/.../_desc-clean_timeseries.tsv``; said in the
header). Events and ``participants.tsv`` come from the BIDS folder. Every run is described
by the descriptor corpus with windows as long as the tokenizer's.

Pipeline: the last ``--held-out`` subjects (sorted) are never trained on. A small Stage-1
tokenizer is trained on the training subjects, aligned to the LLM's own input embeddings of
the window texts (:func:`~fmrilm_bids.fmrilm.llm.llm_text_embedder`, ``pooling="input"``: the
space its token embeddings initialise); then :func:`~fmrilm_bids.fmrilm.llm.fit_fmrilm` runs
Stage 2 and Stage 3 on SmolLM2-135M-Instruct (or ``--llm DIR``) with one task
(``--zero-shot``) held out of tuning, and evaluates; :func:`~fmrilm_bids.fmrilm.llm.apply_fmrilm`
captions the first held-out subject's runs (every window and event: the captions/s).

Table rows, on the held-out subjects' windows and runs: ``condition`` (events.tsv
``trial_type`` of a window; accuracy, AUROC), ``rest_vs_task`` (per run segment), the
zero-shot task (its few-shot score, ``k`` examples per class, beside it), ``age`` (mean
absolute error), ``stimulus caption`` (generated caption of a window vs the true event
caption: all-MiniLM-L6-v2 cosine, BLEU-4, ROUGE-L) and ``window description`` (vs the
descriptor text). Columns: fMRI-LM, few-shot, logistic/ridge baselines on functional
connectivity (``FC``), on each window's parcel amplitudes (``amplitude``: window questions)
and on the Stage-1 token features (``tokens``), and chance (the
majority answer's accuracy, AUROC 0.5, the MAE of the training mean). Then throughput:
training tokens/s per stage, captions/s, peak memory (CPU RSS; GPU when CUDA is used).

Usage::

    python benchmarks/bench_llm.py [--bids DIR] [--derivatives DIR] [--out DIR]
        [--held-out 2] [--steps 100] [--stage3-steps 150] [--tokenizer-steps 1000]
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import tempfile
import time
from pathlib import Path

import pandas as pd

ENTITIES = re.compile(r"(sub|ses|task|acq|run)-([a-zA-Z0-9]+)")


def demo_dataset(root: Path, seed: int) -> Path:
    """The demo dataset (``fmrilm-bids-simulate`` defaults), simulated once."""
    from fmrilm_bids.simulate import simulate_dataset

    dataset = root / f"demo-s{seed}"
    if not (dataset / "dataset_description.json").is_file():
        simulate_dataset(dataset, seed=seed, overwrite=True)
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


METHODS = ("fmrilm", "few_shot", "baseline_amplitude", "baseline_fc", "baseline_tokens")


def with_interval(values: dict, metric: str, digits: int = 3) -> str:
    """``value [low, high]`` (the bootstrap interval over held-out subjects, when there)."""
    value = values.get(metric)
    low, high = values.get(f"{metric}_ci_low"), values.get(f"{metric}_ci_high")
    if value is None or low is None:
        return cell(value, digits)
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


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
            rows.append([label, "p vs chance", *(cell(task.get(s, {}).get("p_vs_chance"), 4)
                                                 for s in METHODS), "—"])
        elif task["kind"] == "number":
            rows.append([label, "MAE", *(with_interval(task.get(s, {}), "mae", 1)
                                         for s in METHODS), cell(task["chance_mae"], 1)])
        else:
            for metric in ("minilm_cosine", "bleu", "rouge_l"):
                rows.append([f"stimulus caption (n={task['n_test']})", metric,
                             *(with_interval(task.get(s, {}), metric) for s in METHODS),
                             "—"])
    described = metrics.get("descriptions", {}).get("fmrilm")
    if described:
        for metric in ("minilm_cosine", "bleu", "rouge_l"):
            rows.append([f"window description (n={described['n']})", metric,
                         cell(described[metric]), "—", "—", "—", "—", "—"])
    return rows


def print_table(header: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bids", type=Path, help="BIDS dataset (default: the demo dataset)")
    parser.add_argument("--derivatives", type=Path,
                        help="folder with *_seg-<atlas>_desc-denoised_timeseries.tsv "
                             "(default: the simulator's ground-truth parcel signals)")
    parser.add_argument("--atlas", default="AAL3")
    parser.add_argument("--out", type=Path, help="work folder (default: a temporary one)")
    parser.add_argument("--llm", type=Path, help="local Hugging Face causal LM (default "
                        "SmolLM2-135M-Instruct)")
    parser.add_argument("--held-out", type=int, default=2, help="test subjects")
    parser.add_argument("--zero-shot", default="group", help="task held out of tuning")
    parser.add_argument("--few-shot-k", type=int, default=1)
    parser.add_argument("--tokenizer-steps", type=int, default=1000)
    parser.add_argument("--codebook", type=int, default=64)
    parser.add_argument("--steps", type=int, default=100, help="Stage-2 steps")
    parser.add_argument("--stage3-steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--max-length", type=int, default=128, help="training sequence")
    parser.add_argument("--describe", type=int, default=16,
                        help="held-out windows whose generated description is scored")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    root = (args.out or Path(tempfile.mkdtemp(prefix="bench-llm-"))).absolute()

    from fmrilm_bids.utils.environment import configure_environment

    configure_environment(work_dir=root / "work")

    import torch

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
    from fmrilm_bids.fmrilm.tokenizer import (
        ParcelRun,
        TokenizerConfig,
        TrainConfig,
        train_tokenizer,
    )
    from fmrilm_bids.fmrilm.training import matmul_peak_flops, training_flops_per_token
    from fmrilm_bids.utils.devices import resolve_device

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    started_all = time.perf_counter()

    # Data: parcel signals, events, participants; descriptor texts per tokenizer window.
    bids = (args.bids or demo_dataset(root, args.seed)).absolute()
    source = (f"denoised parcel series from {args.derivatives}" if args.derivatives else
              "the simulator's ground-truth parcel signals (no --derivatives given)")
    dataset = load_dataset(bids, args.derivatives, args.atlas)
    participants = pd.read_csv(bids / "participants.tsv", sep="\t")
    table = load_network_table(args.atlas)
    tokenizer_config = TokenizerConfig(codebook_size=args.codebook, d_model=64, n_layers=2,
                                       llm_hidden=576, text_dim=576)
    described, _ = describe_dataset(
        {stem: RunInput(run["series"], run["tr"], events=run["events"])
         for stem, run in dataset.items()}, table,
        settings=DescriptorSettings(window_length=tokenizer_config.window_seconds),
        seed=args.seed)
    subjects = sorted({run["entities"]["sub"] for run in dataset.values()})
    test_subjects = subjects[-args.held_out:]

    # Stage 1: a small tokenizer, aligned to the LLM's own input embeddings of the texts.
    embedder = llm_text_embedder(args.llm, pooling="input")
    tokenizer_config.llm_hidden = tokenizer_config.text_dim = embedder(["probe"]).shape[1]
    parcel_runs = {}
    for stem, run in dataset.items():
        records = described[stem].records
        networks = networks_of(list(run["series"].columns), table)
        parcel_runs[stem] = ParcelRun(run["series"].to_numpy(), run["tr"], networks,
                                      run["entities"]["sub"],
                                      records.loc[records["scope"] == "window", "text"]
                                      .tolist())
    started = time.perf_counter()
    stage1 = train_tokenizer(
        [r for r in parcel_runs.values() if r.subject not in test_subjects],
        [r for r in parcel_runs.values() if r.subject in test_subjects],
        root / "tokenizer", tokenizer_config,
        TrainConfig(steps=args.tokenizer_steps, batch_size=16, sequence_windows=8,
                    seed=args.seed, eval_interval=args.tokenizer_steps),
        text_embedder=embedder, device=device)
    tokenizer_seconds = time.perf_counter() - started

    runs = []
    for stem, run in dataset.items():
        records = described[stem].records
        entities = run["entities"]
        runs.append(LMRun.from_tokenized(
            stage1.model.tokenize(parcel_runs[stem]), entities["sub"], entities["task"],
            session=entities.get("ses"), run=entities.get("run"),
            window_texts=parcel_runs[stem].window_texts,
            run_text=records.loc[records["scope"] == "run", "text"].iloc[0],
            events=run["events"], timeseries=run["series"].to_numpy(), tr=run["tr"]))

    # Stages 2 and 3, evaluation on the held-out subjects.
    def stage(steps: int) -> LMTrainConfig:
        return LMTrainConfig(steps=steps, batch_size=args.batch_size,
                             grad_accum=args.grad_accum, learning_rate=args.learning_rate,
                             min_learning_rate=args.learning_rate / 10,
                             warmup_steps=max(1, steps // 10), checkpoint_interval=steps,
                             seed=args.seed)

    # The machine's matmul peak in the training precision (bf16 autocast on GPUs), before
    # training: the denominator of MFU.
    peak = matmul_peak_flops(device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    decoding = DecodingConfig(max_new_tokens=args.max_new_tokens)
    started = time.perf_counter()
    result = fit_fmrilm(
        runs, participants, root / "fmrilm",
        FmriLMConfig(codebook_size=args.codebook, lora_r=8, lora_alpha=16,
                     max_length=args.max_length, seed=args.seed),
        stage(args.steps), stage(args.stage3_steps),
        token_embeddings=stage1.model.token_embeddings_for_llm(), llm_dir=args.llm,
        held_out_tasks=[args.zero_shot], test_subjects=test_subjects,
        few_shot_k=args.few_shot_k, decoding=decoding, max_describe=args.describe,
        device=device)
    fit_seconds = time.perf_counter() - started
    captioned = [run for run in runs if run.subject == test_subjects[0]]
    outputs = apply_fmrilm(result.model, captioned, decoding, device=device)
    n_captions = [len(o.window_captions) + (0 if o.event_captions is None else int(
        (o.event_captions["caption"] != "n/a").sum())) for o in outputs.values()]
    caption_seconds = sum(n / o.settings["captions_per_second"]
                          for n, o in zip(n_captions, outputs.values(), strict=True))

    metrics = result.metrics
    windows = {name: sum(run.n_windows for run in runs if (run.subject in test_subjects)
                         == held) for name, held in (("training", False), ("held-out", True))}
    print(f"\nData: {bids.name}, {len(runs)} runs of {len(subjects)} subjects (held out: "
          f"{', '.join(test_subjects)}); parcel signals: {source}; {windows['training']} "
          f"training and {windows['held-out']} held-out windows of "
          f"{tokenizer_config.window_seconds:g} s, {args.atlas}.")
    print(f"Stage 1: {args.codebook} tokens, {args.tokenizer_steps} steps in "
          f"{tokenizer_seconds:.0f} s. Backbone: {result.model.backbone}. Stage 2: {args.steps}"
          f" steps, Stage 3: {args.stage3_steps} steps (batch {args.batch_size} x "
          f"{args.grad_accum}); fit + evaluation {fit_seconds:.0f} s "
          f"(evaluation {metrics.get('evaluation_seconds', 0):.0f} s); device {device}, "
          f"{args.threads} threads. Greedy decoding, {args.max_new_tokens} new tokens.\n")
    print_table(["task (setting, n)", "metric", "fMRI-LM", f"few-shot k={args.few_shot_k}",
                 "amplitude baseline", "FC baseline", "tokens baseline", "chance"],
                task_rows(metrics))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    # MFU: training tokens/s x FLOPs per token over this machine's own matmul peak.
    flops = training_flops_per_token(result.model)
    mfu = {stage: rate * flops / peak for stage, rate in result.throughput.items()}
    header = ["train tok/s stage 2", "MFU stage 2", "train tok/s stage 3", "MFU stage 3",
              "matmul peak (GFLOP/s)", "captions/s", "peak RSS (GiB)"]
    values = [f"{result.throughput['stage2']:,.0f}", f"{mfu['stage2']:.2f}",
              f"{result.throughput.get('stage3', 0):,.0f}", f"{mfu.get('stage3', 0):.2f}",
              f"{peak / 1e9:,.0f}", f"{sum(n_captions) / caption_seconds:.2f}", f"{rss:.2f}"]
    if device.type == "cuda":
        header.append("peak GPU (GiB)")
        values.append(f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f}")
    print()
    print_table(header, [values])
    condition = metrics["tasks"].get("condition", {})
    if "fmrilm" in condition:
        base = max(condition.get(f"baseline_{k}", {}).get("accuracy") or 0.0
                   for k in ("amplitude", "fc", "tokens"))
        accuracy = condition["fmrilm"]["accuracy"]
        print(f"\nCondition accuracy {accuracy:.3f}: "
              f"{'above' if accuracy > condition['fmrilm']['chance_accuracy'] else 'NOT above'}"
              f" chance, {'above' if accuracy > base else 'NOT above'} the best baseline.")
    examples = metrics.get("descriptions", {}).get("examples", [])
    for example in examples[:2]:
        print(f"  true: {example['true']}\n  generated: {example['generated']}")
    print(f"\nTotal {time.perf_counter() - started_all:.0f} s; metrics in "
          f"{root / 'fmrilm' / 'metrics.json'}.")


if __name__ == "__main__":
    main()
