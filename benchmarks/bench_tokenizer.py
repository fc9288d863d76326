"""Benchmark the fMRI tokenizer against a PCA + k-means baseline on held-out subjects.

Data: a simulated dataset (:func:`fmrilm_bids.simulate.simulate_dataset`; resting and
picture-viewing runs, AAL3) whose ground-truth parcel signals
(``sourcedata/simulation/.../_desc-clean_timeseries.tsv``) are tokenised. Every run is
described by the descriptor corpus with windows as long as the tokenizer's (events with
captions included), and the window texts are embedded with all-MiniLM-L6-v2. The last
``--held-out`` subjects are never trained on.

Rows: the neural tokenizer (default :class:`~fmrilm_bids.fmrilm.tokenizer.TokenizerConfig`,
trained with the alignment loss) and the PCA + k-means baseline (same windows, same
codebook size). Columns, on the held-out windows:

* ``R2``: reconstruction R² of the normalised patches from the tokens;
* ``perplexity`` / ``usage``: codebook perplexity, share of codes used;
* ``retr feat``: fMRI -> text retrieval top-1 among all distinct held-out window texts,
  from continuous features (neural: its trained projection to the LLM space; baseline:
  a ridge map from PCA scores to text embeddings fitted on the training windows);
* ``retr tok``: the same from the tokens only (neural: each token's LLM embedding,
  ``token_embeddings_for_llm``; baseline: the mean text embedding of the training windows
  that got the token);
* ``chance``: 1 / number of candidate texts;
* ``win/s``: tokenisation throughput on the CPU (``--threads``), windows per second (best
  of 3), on about 20,000 windows of the held-out signals: ``model``, the model alone on one
  long prepared run (:meth:`~fmrilm_bids.fmrilm.tokenizer.NeuralTokenizer.encode_prepared`);
  ``e2e long``, end to end (raw time series in: resampling, normalisation, patches, parcel
  identity, encoding, quantisation; the preparation shares its work between the same
  threads) on the same long run; ``e2e runs``, end to end on the held-out runs
  repeated as separate runs of their real length, tokenised together
  (:meth:`~fmrilm_bids.fmrilm.tokenizer.NeuralTokenizer.tokenize_runs`; the baseline one run at a
  time). ``TR/s`` = windows/s x samples per window. Target: 50,000 windows/s end to end.

Usage::

    python benchmarks/bench_tokenizer.py [--out DIR] [--subjects 12] [--volumes 240]
        [--held-out 3] [--steps 1500] [--threads 2]

Rerunning with the same ``--out`` and arguments reuses the simulated dataset and the trained
tokenizer (its checkpoint). On a shared, busy machine run with ``OMP_WAIT_POLICY=PASSIVE``:
torch's OpenMP threads otherwise spin for a core another process holds, and multi-threaded
throughput collapses (the policy in effect, and the load average, are printed with the
table).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def simulated_dataset(root: Path, n_subjects: int, n_volumes: int, seed: int) -> Path:
    """Simulate the dataset once (reused when present)."""
    from fmrilm_bids.simulate import simulate_dataset

    dataset = root / f"simulated-n{n_subjects}-v{n_volumes}-s{seed}"
    if not (dataset / "dataset_description.json").is_file():
        simulate_dataset(dataset, n_subjects=n_subjects, n_volumes=n_volumes, seed=seed,
                         overwrite=True)
    return dataset


def load_runs(dataset: Path) -> dict[str, tuple[str, object]]:
    """Ground-truth parcel signals, motion and events of every BOLD run, by BIDS stem.

    Returns
    -------
    dict
        stem -> (subject label, :class:`~fmrilm_bids.fmrilm.descriptors.RunInput`).
    """
    import re

    from fmrilm_bids.fmrilm.descriptors import RunInput
    from fmrilm_bids.simulate import load_run_truth

    runs = {}
    for sidecar in sorted(dataset.glob("sub-*/func/*_bold.json")):
        stem = sidecar.name.removesuffix("_bold.json")
        entities = dict(re.findall(r"(sub|task|run)-([a-zA-Z0-9]+)", stem))
        run_index = int(entities["run"]) if "run" in entities else None
        truth = load_run_truth(dataset, entities["sub"], entities["task"], run_index)
        events_path = sidecar.with_name(f"{stem}_events.tsv")
        events = pd.read_csv(events_path, sep="\t") if events_path.is_file() else None
        tr = json.loads(sidecar.read_text())["RepetitionTime"]
        runs[stem] = (entities["sub"], RunInput(truth.clean, tr, truth.motion, events))
    return runs


def best_rate(function, n_items: int, repeats: int = 3) -> float:
    """Items per second of the fastest of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return n_items / min(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="work folder (default: a temporary one)")
    parser.add_argument("--subjects", type=int, default=12)
    parser.add_argument("--volumes", type=int, default=240)
    parser.add_argument("--held-out", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    root = (args.out or Path(tempfile.mkdtemp(prefix="bench-tokenizer-"))).absolute()

    from fmrilm_bids.utils.environment import configure_environment

    configure_environment(work_dir=root / "work")

    import torch
    from sklearn.linear_model import Ridge

    from fmrilm_bids.fmrilm.descriptors import (
        DescriptorSettings,
        describe_dataset,
        load_network_table,
    )
    from fmrilm_bids.fmrilm.tokenizer import (
        ParcelRun,
        PCAKMeansTokenizer,
        TokenizerConfig,
        TrainConfig,
        codebook_usage,
        prepare_runs,
        reconstruction_r2,
        retrieval_top1,
        token_text_means,
        train_tokenizer,
    )
    from fmrilm_bids.resources.text_encoder import EMBEDDING_DIM, encode_sentences

    torch.set_num_threads(args.threads)
    config = TokenizerConfig(text_dim=EMBEDDING_DIM)

    # Data: simulated runs, described with the tokenizer's windows.
    started = time.perf_counter()
    dataset = simulated_dataset(root, args.subjects, args.volumes, args.seed)
    runs = load_runs(dataset)
    table = load_network_table("AAL3")
    described, _ = describe_dataset({k: run for k, (_, run) in runs.items()}, table,
                                    settings=DescriptorSettings(
                                        window_length=config.window_seconds))
    networks = table.set_index("name").loc[next(iter(runs.values()))[1].timeseries.columns,
                                            "network"].tolist()
    subjects = sorted({subject for subject, _ in runs.values()})
    held_out = set(subjects[-args.held_out:])
    parcel_runs = {"train": [], "test": []}
    for key, (subject, run) in runs.items():
        records = described[key].records
        texts = records.loc[records["scope"] == "window", "text"].tolist()
        parcel_runs["test" if subject in held_out else "train"].append(
            ParcelRun(run.timeseries.to_numpy(), run.tr, networks, subject, texts))
    train, test = parcel_runs["train"], parcel_runs["test"]
    prepared_data = time.perf_counter() - started

    # Training.
    started = time.perf_counter()
    checkpoint = root / (f"tokenizer-n{args.subjects}-v{args.volumes}-h{args.held_out}"
                         f"-steps{args.steps}-s{args.seed}")
    reused = (checkpoint / "trainer_state.json").is_file()
    result = train_tokenizer(train, test, checkpoint, config,
                             TrainConfig(steps=args.steps, seed=args.seed),
                             text_embedder=encode_sentences, resume=True)
    training_time = time.perf_counter() - started
    model = result.model
    baseline = PCAKMeansTokenizer(config.target_tr, config.patch_length, config.clip,
                                  codebook_size=config.codebook_size, seed=args.seed).fit(train)

    # Held-out evaluation: the same windows and texts for both tokenizers.
    def prepare(runs_: list[ParcelRun]) -> list:
        return prepare_runs(runs_, config.target_tr, config.patch_length, config.clip)

    train_prepared, test_prepared = prepare(train), prepare(test)
    train_texts = [t for r in train_prepared for t in r.window_texts]
    test_texts = [t for r in test_prepared for t in r.window_texts]
    candidates = sorted(set(test_texts))
    embeddings = dict(zip(sorted(set(train_texts) | set(candidates)),
                          encode_sentences(sorted(set(train_texts) | set(candidates))),
                          strict=True))
    train_text_matrix = np.stack([embeddings[t] for t in train_texts])
    candidate_matrix = np.stack([embeddings[t] for t in candidates])
    targets = np.concatenate([r.patches for r in test_prepared])

    rows = {}
    encoded = [model.encode_prepared(r) for r in test_prepared]
    latents = np.concatenate([lat for lat, _ in encoded])
    tokens = np.concatenate([ids for _, ids in encoded])
    with torch.no_grad():
        window_features = model.llm_features(torch.from_numpy(latents)).numpy()
        text_features = model.text_features(torch.from_numpy(candidate_matrix)).numpy()
    token_features = model.token_embeddings_for_llm().numpy()
    rows["neural tokenizer"] = {
        "R2": reconstruction_r2(targets, np.concatenate([model.reconstruct(r)
                                                         for r in test_prepared])),
        **codebook_usage(tokens, config.codebook_size),
        "retr feat": retrieval_top1(window_features, test_texts, text_features,
                                    candidates)["top1"],
        "retr tok": retrieval_top1(token_features[tokens], test_texts, text_features,
                                   candidates)["top1"],
    }

    base_train = [baseline.encode_prepared(r) for r in train_prepared]
    base_test = [baseline.encode_prepared(r) for r in test_prepared]
    ridge = Ridge(alpha=10.0).fit(np.concatenate([s for s, _ in base_train]),
                                  train_text_matrix)
    base_tokens = np.concatenate([ids for _, ids in base_test])
    base_means = token_text_means(np.concatenate([ids for _, ids in base_train]),
                                  train_text_matrix, config.codebook_size)
    rows["PCA + k-means"] = {
        "R2": reconstruction_r2(targets, np.concatenate([baseline.reconstruct(r)
                                                         for r in test_prepared])),
        **codebook_usage(base_tokens, config.codebook_size),
        "retr feat": retrieval_top1(ridge.predict(np.concatenate([s for s, _ in base_test])),
                                    test_texts, candidate_matrix, candidates)["top1"],
        "retr tok": retrieval_top1(base_means[base_tokens], test_texts, candidate_matrix,
                                   candidates)["top1"],
    }

    # Throughput on the CPU: ~20,000 windows as one long run, and as many runs of real length.
    signals = np.concatenate([r.timeseries for r in test])
    n_copies = int(np.ceil(20_000 * config.patch_length / len(signals)))
    long_run = ParcelRun(np.tile(signals, (n_copies, 1)), config.target_tr, networks)
    long_prepared = prepare([long_run])[0]
    n_windows = long_prepared.n_windows
    many_runs = [ParcelRun(r.timeseries, r.tr, networks) for r in test] * n_copies
    n_run_windows = sum(r.n_windows for r in test_prepared) * n_copies
    rows["neural tokenizer"] |= {
        "win/s model": best_rate(lambda: model.encode_prepared(long_prepared), n_windows),
        "win/s e2e long": best_rate(lambda: model.tokenize(long_run), n_windows),
        "win/s e2e runs": best_rate(lambda: model.tokenize_runs(many_runs), n_run_windows)}
    rows["PCA + k-means"] |= {
        "win/s model": best_rate(lambda: baseline.encode_prepared(long_prepared), n_windows),
        "win/s e2e long": best_rate(lambda: baseline.tokenize(long_run), n_windows),
        "win/s e2e runs": best_rate(lambda: [baseline.tokenize(r) for r in many_runs],
                                    n_run_windows)}

    chance = 1.0 / len(candidates)
    print(f"\nData: {dataset.name}, {len(runs)} runs of {len(subjects)} subjects "
          f"({len(held_out)} held out: {', '.join(sorted(held_out))}); "
          f"{sum(r.n_windows for r in train_prepared)} training and {len(targets)} held-out "
          f"windows of {config.window_seconds:g} s, {len(networks)} AAL3 parcels; "
          f"{len(candidates)} distinct held-out texts. Prepared in {prepared_data:.0f} s; "
          f"{args.steps} training steps "
          f"{'reused from ' + checkpoint.name if reused else f'in {training_time:.0f} s'} "
          "on the CPU.")
    print(f"Throughput: {n_windows} windows (one run) and {n_run_windows} windows "
          f"({len(many_runs)} runs), {args.threads} threads (OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs), best of 3.\n")
    header = ("tokenizer", "R2", "perplexity", "usage", "retr feat", "retr tok", "chance",
              "win/s model", "win/s e2e long", "win/s e2e runs", "TR/s model")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, values in rows.items():
        cells = [name, f"{values['R2']:.3f}", f"{values['perplexity']:.1f}",
                 f"{values['usage']:.2f}", f"{values['retr feat']:.3f}",
                 f"{values['retr tok']:.3f}", f"{chance:.3f}",
                 f"{values['win/s model']:,.0f}", f"{values['win/s e2e long']:,.0f}",
                 f"{values['win/s e2e runs']:,.0f}",
                 f"{values['win/s model'] * config.patch_length:,.0f}"]
        print("| " + " | ".join(cells) + " |")
    neural = rows["neural tokenizer"]
    verdict = neural["retr feat"] > rows["PCA + k-means"]["retr feat"]
    end_to_end = min(neural["win/s e2e long"], neural["win/s e2e runs"])
    print(f"\nNeural tokenizer beats the baseline on retrieval: {'yes' if verdict else 'NO'}; "
          f"throughput target >= 50,000 windows/s: model "
          f"{'met' if neural['win/s model'] >= 50_000 else 'NOT met'}, end to end "
          f"{'met' if end_to_end >= 50_000 else 'NOT met'}.")


if __name__ == "__main__":
    main()
