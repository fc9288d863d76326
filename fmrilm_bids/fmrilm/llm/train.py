"""Train an :class:`~.model.FmriLM` on a pool of examples (one stage).

:func:`train_fmrilm` reads top to bottom: find this process's place (single process, or one
of several under ``torchrun``; :mod:`.distributed`), move the model to its device, build
AdamW over the trainable parameters (or resume model, optimiser and random states from the
stage's checkpoint), set the number of steps (given, or ``epochs`` passes' worth of the
examples' tokens), then the loop: per step, ``grad_accum`` micro-batches of
``batch_tokens`` tokens are drawn (:class:`~.examples.EpochSampler`) and packed into rows
(:func:`~.examples.pack`), run under the device's autocast (bfloat16 where the device
computes it natively, :func:`~fmrilm_bids.utils.devices.autocast_dtype`), and their
weighted losses back-propagated; gradients are averaged across processes, clipped, and
AdamW steps on a warm-up + cosine schedule. Every
``checkpoint_interval`` steps (and at the end) the main process writes
``<out_dir>/checkpoint``: the trainable weights, the optimiser state, every process's torch
RNG state and the JSON trainer state (step, numpy RNG, history), as one folder that appears
whole. ``resume=True`` continues from it; on the CPU a resumed run gives the weights of an
uninterrupted one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from fmrilm_bids.fmrilm.llm.config import LMTrainConfig
from fmrilm_bids.fmrilm.llm.examples import EpochSampler, Example, pack
from fmrilm_bids.fmrilm.llm.model import FmriLM
from fmrilm_bids.fmrilm.training import TrainingProgress, optimizer_tensors, restore_optimizer
from fmrilm_bids.utils.devices import DistributedContext, autocast, distributed_context
from fmrilm_bids.utils.files import atomic_write_text, publish_directory

LOGGER = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
WEIGHTS_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"
STATE_FILE = "trainer_state.json"


@dataclass
class StageResult:
    """What :func:`train_fmrilm` returns.

    Attributes
    ----------
    history : list of dict
        One entry per step: ``loss``, each kind's loss, ``lr``, ``tokens``.
    tokens_per_second : float
        Training throughput of the steps run now (input tokens, all processes; packing
        leaves almost no padding).
    steps : int
        Steps done in all.
    out_dir : Path
    """

    history: list[dict[str, float]] = field(repr=False)
    tokens_per_second: float
    steps: int
    out_dir: Path


def weighted_loss(nll: torch.Tensor, kind_ids: torch.Tensor, kinds: Sequence[str],
                  weights: dict[str, float]) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted mean over kinds of each kind's token-mean loss.

    Parameters
    ----------
    nll : Tensor (n,)
        Loss of each labelled token.
    kind_ids : LongTensor (n,)
        Its kind (index into ``kinds``).
    kinds : sequence of str
    weights : dict of str to float

    Returns
    -------
    loss : Tensor
    parts : dict of str to float
        Each kind's token-mean loss (for the history).
    """
    total, weight_sum, parts = nll.new_zeros(()), 0.0, {}
    for index, kind in enumerate(kinds):
        rows = kind_ids == index
        if not rows.any():
            continue
        mean = nll[rows].mean()
        total = total + weights.get(kind, 1.0) * mean
        weight_sum += weights.get(kind, 1.0)
        parts[kind] = mean.item()
    return total / max(weight_sum, 1e-12), parts


def build_optimizer(model: FmriLM, config: LMTrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; no decay on embedding rows, biases, norms."""
    decay, no_decay = [], []
    for name, parameter in model.trainable_parameters().items():
        embedding = "trainable_tokens" in name or "embed" in name or "lm_head" in name
        (no_decay if embedding or parameter.ndim < 2 else decay).append(parameter)
    return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=config.learning_rate, betas=(0.9, 0.95))


def _rng_states(device: torch.device) -> dict[str, torch.Tensor]:
    states = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def save_checkpoint(out_dir: Path, model: FmriLM, optimizer: torch.optim.AdamW,
                    state: dict[str, object], context: DistributedContext,
                    device: torch.device) -> None:
    """Write ``<out_dir>/checkpoint`` (module docstring); every process must call it."""

    rng = context.gather({k: v.cpu() for k, v in _rng_states(device).items()})
    if not context.is_main:
        context.barrier()
        return
    weights = {name: p.detach().cpu().contiguous()
               for name, p in model.trainable_parameters().items()}
    moments, param_groups = optimizer_tensors(optimizer)
    rng_tensors = {f"{name}.{rank}": tensor for rank, states in enumerate(rng)
                   for name, tensor in states.items()}
    content = dict(state, param_groups=param_groups,
                   world_size=context.world_size)

    def write(folder: Path) -> None:
        save_file(weights, folder / WEIGHTS_FILE)
        save_file(moments, folder / OPTIMIZER_FILE)
        save_file(rng_tensors, folder / RNG_FILE)
        atomic_write_text(folder / STATE_FILE, json.dumps(content, indent=1))

    publish_directory(out_dir / CHECKPOINT_DIR, write)
    context.barrier()


def load_checkpoint(out_dir: Path, model: FmriLM, optimizer: torch.optim.AdamW,
                    context: DistributedContext, device: torch.device) -> dict[str, object]:
    """Restore trainable weights, optimiser and RNG states; return the JSON trainer state."""

    folder = out_dir / CHECKPOINT_DIR
    content = json.loads((folder / STATE_FILE).read_text())
    if content["world_size"] != context.world_size:
        raise ValueError(f"{folder} was written by {content['world_size']} processes; resume "
                         f"with as many (now {context.world_size}).")
    weights = load_file(folder / WEIGHTS_FILE)
    parameters = model.trainable_parameters()
    if set(weights) != set(parameters):
        raise ValueError(f"{folder} holds other trainable weights than this model; resume "
                         "with the same fMRI-LM settings or train into a new folder.")
    with torch.no_grad():
        for name, parameter in parameters.items():
            parameter.copy_(weights[name])
    restore_optimizer(optimizer, load_file(folder / OPTIMIZER_FILE), content.pop("param_groups"),
                      device)
    rng = load_file(folder / RNG_FILE)
    torch.set_rng_state(rng[f"cpu.{context.rank}"])
    if device.type == "cuda" and f"cuda.{context.rank}" in rng:
        torch.cuda.set_rng_state(rng[f"cuda.{context.rank}"], device)
    return content


def train_fmrilm(model: FmriLM, examples: Sequence[Example], out_dir: str | Path,
                 config: LMTrainConfig | None = None, resume: bool = False,
                 until_step: int | None = None, description: str = "fMRI-LM") -> StageResult:
    """Train ``model`` in place on ``examples`` (one stage; see the module docstring).

    Parameters
    ----------
    model : FmriLM
    examples : sequence of Example
        Stage-2 or Stage-3 examples (:mod:`.examples`).
    out_dir : str or Path
        Folder of this stage's checkpoint.
    config : LMTrainConfig, optional
    resume : bool, default=False
        Continue from ``<out_dir>/checkpoint`` when there is one.
    until_step : int, optional
        Stop (with a checkpoint) after this many steps in all, to split training over jobs.
    description : str
        Progress-bar label.

    Returns
    -------
    StageResult
    """
    config = config or LMTrainConfig()
    if not examples:
        raise ValueError("train_fmrilm needs at least one example.")
    out_dir = Path(out_dir)
    context = distributed_context()
    device = model.device  # where the caller put it
    model.train()
    if config.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    torch.manual_seed(config.seed + context.rank)
    rng = np.random.default_rng(config.seed)  # the same on every process: one global batch

    # Optimiser, fresh or resumed.
    parameters = list(model.trainable_parameters().values())
    optimizer = build_optimizer(model, config)
    start, history = 0, []
    if resume and (out_dir / CHECKPOINT_DIR / STATE_FILE).is_file():
        state = load_checkpoint(out_dir, model, optimizer, context, device)
        start, history = int(state["step"]), list(state["history"])
        rng.bit_generator.state = state["numpy_rng"]
        LOGGER.info("Resumed %s from %s at step %d.", description, out_dir, start)
    context.broadcast_parameters(parameters)
    sampler = EpochSampler(examples, config.batch_tokens * context.world_size, rng,
                           model.config.sampling_weights)
    if config.steps is None:
        config = replace(config, steps=sampler.steps_for(config.epochs, config.grad_accum))
    if start:
        sampler.queues = {name: list(queue) for name, queue in state["sampler"].items()}
    last = config.steps if until_step is None else min(until_step, config.steps)
    pad_id = model.tokenizer.pad_token_id
    kinds = sorted({example.kind for example in examples})
    batches = sampler.batches()

    progress = TrainingProgress(description, start, last, show=config.progress,
                                enabled=context.is_main, unit="tokens")
    tokens = int(history[-1]["tokens"]) if history else 0  # seen before a resume too
    for step in range(start, last):
        learning_rate = config.learning_rate_at(step)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate
        entry: dict[str, float] = {"step": step + 1, "lr": learning_rate, "loss": 0.0}
        kind_losses: dict[str, list[float]] = {}
        step_tokens = 0
        for _ in range(config.grad_accum):
            batch = next(batches)
            mine = batch[context.rank::context.world_size] or batch[:1]
            packed = pack(mine, pad_id, config.row_length, kinds)
            kind_ids = packed.pop("kind_ids").to(device)
            tensors = {k: v.to(device) for k, v in packed.items() if v is not None}
            with autocast(device):
                nll, keep = model(**tensors)
            loss, parts = weighted_loss(nll, kind_ids[:, 1:][keep], kinds,
                                        model.config.loss_weights)
            (loss / config.grad_accum).backward()
            step_tokens += sum(len(example) for example in mine) * context.world_size
            entry["loss"] += loss.item() / config.grad_accum
            for kind, value in parts.items():
                kind_losses.setdefault(kind, []).append(value)
        entry |= {kind: float(np.mean(values)) for kind, values in kind_losses.items()}
        context.all_reduce_gradients(parameters)
        torch.nn.utils.clip_grad_norm_(parameters, config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += step_tokens
        entry["tokens"] = tokens
        history.append(entry)
        progress.update(step + 1, entry["loss"], amount=step_tokens)

        if (step + 1) % config.checkpoint_interval == 0 or step + 1 == last:
            save_checkpoint(out_dir, model, optimizer, {
                "step": step + 1, "numpy_rng": rng.bit_generator.state, "history": history,
                "sampler": sampler.queues,
                "train_config": asdict(config)}, context, device)
    progress.close()
    model.eval()
    return StageResult(history=history, tokens_per_second=progress.rate if last > start else 0.0,
                       steps=max(last, start), out_dir=out_dir)
