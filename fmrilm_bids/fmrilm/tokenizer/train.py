"""Train the neural tokenizer on a group of subjects; evaluate on held-out subjects.

:func:`train_tokenizer` reads top to bottom: prepare the runs, embed every window text once,
build the model and optimiser (or resume them from the output folder), then the loop:
sample sequences of consecutive windows, forward under the device's autocast, weighted
loss, clipped AdamW step on a warm-up + cosine schedule; evaluate and checkpoint at
intervals. A checkpoint is the tokenizer (``model.safetensors`` + ``config.json``), the
trainer state (``trainer_state.safetensors``: optimiser moments and the torch RNG;
``trainer_state.json``: step, settings, numpy RNG, history) and a model card
(``README.md``). Rerunning with ``resume=True`` continues from the last checkpoint and, on
the CPU, gives the same weights as an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from fmrilm_bids.fmrilm.card import render_card
from fmrilm_bids.fmrilm.tokenizer.baseline import PCAProductQuantizer
from fmrilm_bids.fmrilm.tokenizer.config import TokenizerConfig, TrainConfig
from fmrilm_bids.fmrilm.tokenizer.metrics import codebook_usage, reconstruction_r2, retrieval_top1
from fmrilm_bids.fmrilm.tokenizer.model import NeuralTokenizer
from fmrilm_bids.fmrilm.tokenizer.runs import ParcelRun, PreparedRun, prepare_runs
from fmrilm_bids.fmrilm.training import TrainingProgress, optimizer_tensors, restore_optimizer
from fmrilm_bids.utils.devices import CPU, autocast
from fmrilm_bids.utils.files import atomic_write, atomic_write_text
from fmrilm_bids.utils.versions import software_versions

LOGGER = logging.getLogger(__name__)

STATE_TENSORS = "trainer_state.safetensors"
STATE_JSON = "trainer_state.json"
MODEL_CARD = "README.md"

#: ``list[str] -> (n, text_dim)`` embeddings (a tensor or an array).
TextEmbedder = Callable[[list[str]], torch.Tensor | np.ndarray]


@dataclass
class TrainingResult:
    """What :func:`train_tokenizer` returns.

    Attributes
    ----------
    model : NeuralTokenizer
    history : list of dict
        One entry per step (losses, learning rate) and per evaluation (``eval`` metrics).
    metrics : dict
        Held-out metrics of the final model.
    out_dir : Path
    """

    model: NeuralTokenizer
    history: list[dict[str, float]] = field(repr=False)
    metrics: dict[str, float]
    out_dir: Path


@dataclass
class TextTable:
    """Every distinct window text, embedded once."""

    texts: list[str]
    embeddings: torch.Tensor

    def ids(self, texts: Sequence[str | None] | None, n_windows: int) -> np.ndarray:
        """Row of each window's text (-1 for windows without text)."""
        if texts is None:
            return np.full(n_windows, -1, dtype=np.int64)
        index = {text: i for i, text in enumerate(self.texts)}
        return np.array([-1 if text is None else index[text] for text in texts],
                        dtype=np.int64)


#: What each alignment loss pulls a window towards (:class:`~.runs.PreparedRun` attribute).
ALIGNMENT_TEXTS = {"alignment": "window_texts", "event_alignment": "window_events"}


def embed_texts(texts: Sequence[Sequence[str | None] | None],
                text_embedder: TextEmbedder | None, text_dim: int) -> TextTable | None:
    """Embed the distinct texts of ``texts`` (the windows of each run; None without texts
    or embedder)."""
    texts = sorted({text for run in texts for text in (run or ()) if text is not None})
    if not texts or text_embedder is None:
        return None
    embeddings = torch.as_tensor(np.asarray(text_embedder(texts)), dtype=torch.float32)
    if embeddings.shape != (len(texts), text_dim):
        raise ValueError(f"The text embedder returned {tuple(embeddings.shape)} for "
                         f"{len(texts)} texts; the tokenizer expects text_dim={text_dim}.")
    return TextTable(texts=texts, embeddings=embeddings)


def sample_batch(runs: Sequence[PreparedRun], text_ids: dict[str, list[np.ndarray]],
                 rng: np.random.Generator, batch_size: int,
                 length: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Random sequences of ``length`` consecutive windows (every start equally likely).

    Returns
    -------
    patches (B, length, P, L), identity (B, P, I), text ids (B, length) per alignment
    """
    starts_per_run = np.array([run.n_windows - length + 1 for run in runs])
    chosen = rng.choice(starts_per_run.sum(), size=batch_size)
    run_index = np.searchsorted(np.cumsum(starts_per_run), chosen, side="right")
    starts = chosen - np.concatenate([[0], np.cumsum(starts_per_run)])[run_index]
    patches = np.stack([runs[r].patches[s:s + length] for r, s in zip(run_index, starts,
                                                                      strict=True)])
    identity = np.stack([runs[r].identity for r in run_index])
    ids = {name: torch.from_numpy(np.stack([per_run[r][s:s + length] for r, s in zip(
        run_index, starts, strict=True)])) for name, per_run in text_ids.items()}
    return torch.from_numpy(patches), torch.from_numpy(identity), ids


@torch.no_grad()
def evaluate(model: NeuralTokenizer, runs: Sequence[PreparedRun],
             text_table: TextTable | None) -> dict[str, float]:
    """Held-out reconstruction R², codebook perplexity/usage, fMRI -> text retrieval top-1."""
    device = model.device
    was_training = model.training
    encoded = model.encode_runs(runs)
    targets = np.concatenate([run.patches for run in runs])
    reconstructions = np.concatenate([model.reconstruct(run) for run in runs])
    token_ids = np.concatenate([ids.reshape(-1) for _, ids in encoded])
    metrics = {"reconstruction_r2": reconstruction_r2(targets, reconstructions),
               **codebook_usage(token_ids, model.config.codebook_size)}
    code_dim = model.config.code_dim
    described = [(features[..., :code_dim], run.window_texts)
                 for (features, _), run in zip(encoded, runs, strict=True)
                 if run.window_texts is not None]
    if text_table is not None and described:
        latents = torch.from_numpy(np.concatenate([lat for lat, _ in described])).to(device)
        texts = [text for _, run_texts in described for text in run_texts]
        candidates = sorted(set(texts))
        rows = torch.from_numpy(text_table.ids(candidates, len(candidates)))
        with autocast(device):
            window_features = model.window_features(latents).float().cpu().numpy()
            text_features = model.text_features(
                text_table.embeddings[rows].to(device)).float().cpu().numpy()
        retrieval = retrieval_top1(window_features, texts, text_features, candidates)
        metrics |= {"retrieval_top1": retrieval["top1"], "retrieval_chance": retrieval["chance"]}
    model.train(was_training)
    return metrics


def build_optimizer(model: NeuralTokenizer, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "position" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "position" in n]
    return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=config.learning_rate, betas=(0.9, 0.95))


def save_checkpoint(out_dir: Path, model: NeuralTokenizer, optimizer: torch.optim.AdamW,
                    state: dict[str, object]) -> None:
    """Write the tokenizer and the trainer state (see the module docstring)."""

    model.save_pretrained(out_dir)
    moments, param_groups = optimizer_tensors(optimizer)
    tensors = {"torch_rng": torch.get_rng_state(),
               **{f"optimizer.{key}": tensor for key, tensor in moments.items()}}
    atomic_write(out_dir / STATE_TENSORS, lambda p: save_file(tensors, p))
    content = dict(state, param_groups=param_groups)
    atomic_write_text(out_dir / STATE_JSON, json.dumps(content, indent=1))


def load_checkpoint(out_dir: Path, model: NeuralTokenizer,
                    optimizer: torch.optim.AdamW) -> dict[str, object]:
    """Restore model, optimiser and torch RNG; return the JSON trainer state."""

    restored = NeuralTokenizer.from_pretrained(out_dir)
    if restored.config != model.config:
        raise ValueError(f"{out_dir} holds a tokenizer with another configuration; train "
                         "into a new folder or resume with the same settings.")
    model.load_state_dict(restored.state_dict())
    content = json.loads((out_dir / STATE_JSON).read_text())
    tensors = load_file(out_dir / STATE_TENSORS)
    torch.set_rng_state(tensors.pop("torch_rng"))
    restore_optimizer(optimizer, {key.removeprefix("optimizer."): tensor
                                  for key, tensor in tensors.items()},
                      content.pop("param_groups"))
    return content


def pca_baseline_metrics(train: Sequence[PreparedRun], validation: Sequence[PreparedRun],
                         config: TokenizerConfig, seed: int) -> dict[str, float]:
    """Held-out reconstruction R² and codebook usage of the PCA baseline of the same size
    (:class:`~.baseline.PCAProductQuantizer`: as many tokens per window, as many codes),
    fitted on the training windows."""
    baseline = PCAProductQuantizer(n_tokens=config.n_groups,
                                   codebook_size=config.codebook_size, seed=seed)
    baseline.fit_prepared(train)
    targets = np.concatenate([run.patches for run in validation])
    reconstructions = np.concatenate([baseline.reconstruct(run) for run in validation])
    tokens = np.concatenate([baseline.encode_prepared(run)[1].reshape(-1)
                             for run in validation])
    usage = codebook_usage(tokens, config.codebook_size)
    return {"pca_reconstruction_r2": reconstruction_r2(targets, reconstructions),
            "pca_usage": usage["usage"], "pca_perplexity": usage["perplexity"]}


def data_summary(train: Sequence[PreparedRun], validation: Sequence[PreparedRun],
                 train_runs: Sequence[ParcelRun]) -> dict[str, object]:
    """What the tokenizer was trained on (for the model card)."""
    return {"train_subjects": sorted({run.subject for run in train}),
            "validation_subjects": sorted({run.subject for run in validation}),
            "train_runs": len(train), "validation_runs": len(validation),
            "train_windows": int(sum(run.n_windows for run in train)),
            "validation_windows": int(sum(run.n_windows for run in validation)),
            "n_parcels": int(train[0].patches.shape[1]),
            "source_trs": sorted({float(run.tr) for run in train_runs}),
            "described_windows": int(sum(run.n_windows for run in train if run.window_texts))}


def write_model_card(out_dir: Path, config: TokenizerConfig, train_config: TrainConfig,
                     summary: dict[str, object], metrics: dict[str, float], step: int) -> None:
    """Markdown model card: data used, held-out metrics, settings, software versions."""
    text = render_card("fMRI tokenizer (fmrilm-bids)", f"""
Neural tokenizer of fMRI-LM: {config.n_groups} tokens (one per learned parcel group) per
{config.window_seconds:g} s window of parcel time series (resampled to TR
{config.target_tr:g} s) from a codebook of {config.codebook_size} codes, i.e.
{config.bits_per_window:g} bits per window; features aligned to a language model of hidden
size {config.llm_hidden}. Trained for {step} steps. The held-out metrics put its
reconstruction R² beside that of a PCA baseline of the same size (`pca_*`: PCA of the
window patches, product-quantised into as many tokens from as many codes).
Load with `NeuralTokenizer.from_pretrained(folder)`.""", {
        "Data": summary,
        "Held-out metrics (validation subjects)":
            {k: f"{v:.4f}" for k, v in metrics.items()} or "No validation runs.",
        "Model": config.to_dict(), "Training": asdict(train_config),
        "Software": software_versions(("fmrilm-bids", "torch", "numpy")),
        "Limitations": """Windows are described by the descriptor corpus, not by people: the
alignment to language is only as good as those texts. Parcel identity comes from the network
table of the atlas."""})
    atomic_write_text(out_dir / MODEL_CARD, text)


def train_tokenizer(train_runs: Sequence[ParcelRun], validation_runs: Sequence[ParcelRun],
                    out_dir: str | Path, config: TokenizerConfig | None = None,
                    train_config: TrainConfig | None = None,
                    text_embedder: TextEmbedder | None = None,
                    event_embedder: TextEmbedder | None = None, resume: bool = False,
                    until_step: int | None = None,
                    text_embedder_name: str | None = None,
                    device: torch.device = CPU) -> TrainingResult:
    """Train a :class:`NeuralTokenizer` (group level).

    Parameters
    ----------
    train_runs : sequence of ParcelRun
        Runs of the training subjects (one parcel count).
    validation_runs : sequence of ParcelRun
        Runs of held-out subjects (no subject in both).
    out_dir : str or Path
        Checkpoint folder.
    config : TokenizerConfig, optional
    train_config : TrainConfig, optional
    text_embedder : callable, optional
        ``list[str] -> (n, config.text_dim)``; with window texts, enables the alignment loss.
    event_embedder : callable, optional
        ``list[str] -> (n, config.event_dim)`` (the sentence encoder); with window events,
        enables the event alignment loss (``config.event_dim`` 0: the text embedder's).
    resume : bool, default=False
        Continue from the checkpoint in ``out_dir``.
    until_step : int, optional
        Stop (with a checkpoint) after this many steps in all, to split training over jobs.
    text_embedder_name : str, optional
        What ``text_embedder`` is (e.g. the sentence encoder's name), for the model card.
    device : torch.device, default=CPU
        Where the tokenizer trains (resolved by the caller).

    Returns
    -------
    TrainingResult
    """
    config = config or TokenizerConfig()
    train_config = train_config or TrainConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    overlap = {r.subject for r in train_runs} & {r.subject for r in validation_runs}
    if overlap:
        raise ValueError(f"Subjects {sorted(overlap)} are in both the training and the "
                         "validation runs; hold out whole subjects.")
    torch.manual_seed(train_config.seed)
    rng = np.random.default_rng(train_config.seed)

    # Data: windows of every run, every distinct text embedded once.
    def prepare(runs: Sequence[ParcelRun]) -> list[PreparedRun]:
        return prepare_runs(runs, config.target_tr, config.patch_length, config.clip)

    train, validation = prepare(train_runs), prepare(validation_runs)
    if not train:
        raise ValueError("train_tokenizer needs at least one training run.")
    train_config = train_config.for_windows(sum(run.n_windows for run in train))
    if len({run.patches.shape[1] for run in train}) > 1:
        raise ValueError("Training runs have different parcel counts; train on one atlas.")
    embedders = {"alignment": (text_embedder, config.text_dim),
                 "event_alignment": (event_embedder, config.event_dim) if config.event_dim
                 else (text_embedder, config.text_dim)}
    tables = {name: embed_texts([getattr(run, attribute) for run in train + validation],
                                *embedders[name])
              for name, attribute in ALIGNMENT_TEXTS.items()}
    tables = {name: table for name, table in tables.items() if table is not None}
    text_table = tables.get("alignment")
    text_ids = {name: [table.ids(getattr(run, ALIGNMENT_TEXTS[name]), run.n_windows)
                       for run in train] for name, table in tables.items()}
    on_device = {name: table.embeddings.to(device) for name, table in tables.items()}
    length = min(train_config.sequence_windows, min(run.n_windows for run in train))
    summary = data_summary(train, validation, train_runs)
    summary["text_embedder"] = (text_embedder_name or getattr(text_embedder, "__name__", "custom")
                                if text_embedder is not None else "none (no alignment loss)")

    # Model and optimiser, fresh or resumed.
    model = NeuralTokenizer(config).to(device)
    optimizer = build_optimizer(model, train_config)
    start, history = 0, []
    if resume and (out_dir / STATE_JSON).is_file():
        state = load_checkpoint(out_dir, model, optimizer)
        start, history = int(state["step"]), list(state["history"])
        rng.bit_generator.state = state["numpy_rng"]
        LOGGER.info("Resumed from %s at step %d.", out_dir, start)
    last = train_config.steps if until_step is None else min(until_step, train_config.steps)
    weights = {"reconstruction": train_config.reconstruction_weight,
               "amplitude": train_config.amplitude_weight,
               "commitment": train_config.commitment_weight,
               "alignment": train_config.alignment_weight,
               "event_alignment": train_config.event_alignment_weight}
    metrics: dict[str, float] = {}

    model.train()
    progress = TrainingProgress("Stage 1 tokenizer", start, last, show=train_config.progress)
    for step in range(start, last):
        learning_rate = train_config.learning_rate_at(step)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate
        patches, identity, ids = sample_batch(train, text_ids, rng, train_config.batch_size,
                                              length)
        with autocast(device):
            output = model(patches.to(device), identity.to(device),
                           {name: (ids[name].to(device), on_device[name]) for name in ids})
        loss = sum(weights[name] * value for name, value in output.losses.items())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train_config.grad_clip)
        optimizer.step()
        history.append({"step": step + 1, "loss": loss.item(), "lr": learning_rate,
                        **{name: value.item() for name, value in output.losses.items()}})
        progress.update(step + 1, history[-1]["loss"], amount=train_config.batch_size)

        done = step + 1 == last
        if validation and ((step + 1) % train_config.eval_interval == 0 or done):
            metrics = evaluate(model, validation, text_table)
            if done:
                metrics |= pca_baseline_metrics(train, validation, config, train_config.seed)
            history.append({"step": step + 1, "eval": metrics})
            LOGGER.info("step %d: loss %.4f, held-out %s", step + 1, loss.item(), metrics)
        if (step + 1) % train_config.checkpoint_interval == 0 or done:
            save_checkpoint(out_dir, model, optimizer, {
                "step": step + 1, "numpy_rng": rng.bit_generator.state, "history": history,
                "train_config": asdict(train_config), "data": summary})
            write_model_card(out_dir, config, train_config, summary, metrics, step + 1)
    progress.close()
    if start >= last:  # resumed from a finished run: nothing trained, the card may be missing
        metrics = (evaluate(model, validation, text_table)
                   | pca_baseline_metrics(train, validation, config, train_config.seed)
                   if validation else {})
        write_model_card(out_dir, config, train_config, summary, metrics, start)
    return TrainingResult(model=model, history=history, metrics=metrics, out_dir=out_dir)
