"""What both training loops share: the learning-rate schedule, the optimiser state of a
checkpoint, and the progress a person sees.

The Stage-1 tokenizer (:func:`~fmrilm_bids.fmrilm.tokenizer.train.train_tokenizer`) and the
Stages 2-3 language model (:func:`~fmrilm_bids.fmrilm.llm.train.train_fmrilm`) each keep
their own loop, read top to bottom; these helpers are the parts that must not differ.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any

import torch
from tqdm.auto import tqdm

LOGGER = logging.getLogger(__name__)


def warmup_cosine(step: int, *, steps: int, warmup_steps: int, peak: float,
                  floor: float) -> float:
    """Learning rate of 0-based ``step``: linear warm-up to ``peak``, then cosine to ``floor``.

    Parameters
    ----------
    step : int
        Optimiser step (0 is the first).
    steps : int
        Steps in all.
    warmup_steps : int
        Steps of the linear warm-up (0: none).
    peak, floor : float
        Learning rate at the end of the warm-up and at the last step.
    """
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, steps - warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return floor + cosine * (peak - floor)


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor],
                                                                  list[dict[str, Any]]]:
    """The optimiser's state as flat CPU tensors (``"<index>.<name>"``, for safetensors) and
    its JSON-serialisable parameter groups."""
    state = optimizer.state_dict()
    tensors = {f"{index}.{name}": tensor.detach().cpu().contiguous()
               for index, values in state["state"].items() for name, tensor in values.items()}
    return tensors, state["param_groups"]


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                      param_groups: list[dict[str, Any]],
                      device: torch.device | None = None) -> None:
    """Load what :func:`optimizer_tensors` saved back into ``optimizer``."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = tensor if device is None else tensor.to(device)
    optimizer.load_state_dict({"state": state, "param_groups": param_groups})


class TrainingProgress:
    """A progress bar on a terminal, a log line at most every ``interval`` seconds otherwise.

    Both say the step, the loss, the rate and the time left, so a log file of a long run
    (a cluster job) shows where training is.

    Parameters
    ----------
    description : str
        What trains (the bar's label, the log lines' start).
    start, last : int
        First step of this call (after a resume) and the step training stops at.
    show : bool, optional
        Force the bar on or off (None: on when stderr is a terminal).
    enabled : bool
        False on the non-main processes of a parallel run (they report nothing).
    interval : float
        Seconds between log lines when there is no bar.
    unit : str
        What :meth:`update`'s ``amount`` counts (``"tokens"``, ``"windows"``) for the rate.
    """

    def __init__(self, description: str, start: int, last: int, show: bool | None = None,
                 enabled: bool = True, interval: float = 30.0, unit: str = "steps") -> None:
        self.description, self.start, self.last = description, start, last
        self.unit, self.interval, self.enabled = unit, interval, enabled
        terminal = sys.stderr.isatty() if show is None else show
        self.bar = tqdm(total=last, initial=start, desc=description, unit="step",
                        disable=not (terminal and enabled), dynamic_ncols=True)
        self.log_lines = enabled and not terminal
        self.started = self.logged = time.perf_counter()
        self.amount = 0

    def update(self, step: int, loss: float, amount: int = 0) -> None:
        """Step ``step`` (1-based, done) finished with ``loss``; ``amount`` more units seen."""
        self.amount += amount
        now = time.perf_counter()
        elapsed = max(now - self.started, 1e-9)
        rate = self.amount / elapsed if self.amount else (step - self.start) / elapsed
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.3f}", **{f"{self.unit}_s": f"{rate:.0f}"})
        if self.log_lines and (now - self.logged >= self.interval or step == self.last):
            self.logged = now
            left = elapsed / max(step - self.start, 1) * (self.last - step)
            LOGGER.info("%s: step %d/%d, loss %.3f, %.0f %s/s, %.0f s left", self.description,
                        step, self.last, loss, rate, self.unit, left)

    @property
    def rate(self) -> float:
        """Units per second so far (steps per second when no amount was given)."""
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        return self.amount / elapsed if self.amount else self.bar.n / elapsed

    def close(self) -> None:
        self.bar.close()


def matmul_peak_flops(device: torch.device, dtype: torch.dtype = torch.float32,
                      size: int = 2048, trials: int = 5, seconds: float = 0.3) -> float:
    """The machine's own dense matrix-multiply rate (FLOP/s): the denominator of MFU.

    The best of ``trials`` timings of ``size x size`` products on ``device`` in ``dtype``
    (each about ``seconds`` long, after a warm-up), with as many threads as torch uses: the
    best, since other work on a shared machine only slows a trial down.
    """
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)

    def synchronise() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    a @ b
    synchronise()
    best = 0.0
    for _ in range(trials):
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            a @ b
            count += 1
            synchronise()
        best = max(best, 2.0 * size**3 * count / (time.perf_counter() - started))
    return best


def training_flops_per_token(model: torch.nn.Module) -> float:
    """Floating-point operations one training token costs: the forward pass (``2 N``), the
    backward pass through the activations (``2 N``) and the weight gradients of what trains
    (``2 N_trainable``), ``N`` the weights of the matrix products (embedding tables, read
    not multiplied, left out). The numerator of MFU (tokens/s times this)."""
    embeddings = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding)
                  for p in m.parameters(recurse=False)}
    weights = [p for p in model.parameters() if id(p) not in embeddings]
    total = sum(p.numel() for p in weights)
    trainable = sum(p.numel() for p in weights if p.requires_grad)
    return 4.0 * total + 2.0 * trainable
