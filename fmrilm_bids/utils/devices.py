"""The one place that knows about devices: CPU and GPU share every other line of code.

The device is resolved once, at the edge: the stage that a command runs turns ``--device``
into a :class:`torch.device` with :func:`resolve_device` (or, in a parallel run,
:meth:`DistributedContext.device`) and passes that object down; model code places tensors
on it and wraps forward passes in :func:`autocast`; nothing else checks ``torch.cuda``. On a
GPU forward passes run in bfloat16 autocast (parameters, optimiser state and losses stay
float32). On a CPU they run in float32 unless the edge chose bfloat16
(:func:`set_precision`, ``--precision``): ``"auto"`` takes it where the CPU computes it
natively (AVX-512 BF16 or AMX tiles: about twice its float32 matrix rate; emulated bfloat16
is tens of times slower than float32). Library code and tests that do not choose stay in
float32 on the CPU, so their numbers do not depend on the processor.

**Data-parallel training** across processes (``torchrun`` / ``accelerate launch``): the
launcher's environment is read by :mod:`fmrilm_bids.utils.launch`. Launched that way, every
process trains the same model on its own share of each batch; after the backward passes the
trainable gradients are averaged across processes (one all-reduce of a flat buffer: the
gradient synchronisation of DDP, done explicitly so the model's forward can stay as it is),
and every process takes the same optimiser step. A single process (no launcher) makes every
method here a no-op.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist

from fmrilm_bids.config import DEVICES
from fmrilm_bids.utils.launch import LaunchedProcess, launched_process

#: The default device of library functions: callers pass the one resolved at the edge.
CPU = torch.device("cpu")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:<n>"`` into a torch device.

    ``"auto"`` picks the first GPU when torch sees one, else the CPU.

    Raises
    ------
    ValueError
        For an unknown name, or ``"cuda"`` when no GPU is visible.
    """
    if isinstance(device, torch.device):
        device = str(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.split(":")[0] not in DEVICES[1:]:
        raise ValueError(f"Unknown device {device!r}; use one of {', '.join(DEVICES)}.")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"Device {device!r} was requested but torch sees no GPU; use 'cpu' "
                         "or install the CUDA build of torch.")
    return torch.device(device)


#: Choices of :func:`set_precision` (``--precision``).
PRECISIONS = ("auto", "float32", "bfloat16")
_cpu_bfloat16 = False


def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX-512 BF16 or AMX tiles)."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def set_precision(precision: str) -> str:
    """Choose, once at the edge, the CPU's autocast precision (module docstring).

    ``"auto"``: bfloat16 where the CPU computes it natively, else float32; ``"float32"``;
    ``"bfloat16"`` (even emulated). GPUs always autocast to bfloat16.

    Returns
    -------
    str
        The CPU precision now in force (``"float32"`` or ``"bfloat16"``).
    """
    global _cpu_bfloat16
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}.")
    _cpu_bfloat16 = precision == "bfloat16" or (precision == "auto"
                                                and cpu_has_native_bfloat16())
    return "bfloat16" if _cpu_bfloat16 else "float32"


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """Reduced precision used for forward passes on ``device`` (None: full float32)."""
    if device.type == "cuda" or (device.type == "cpu" and _cpu_bfloat16):
        return torch.bfloat16
    return None


@contextlib.contextmanager
def autocast(device: torch.device) -> Iterator[None]:
    """Mixed-precision context for forward passes on ``device`` (no-op on the CPU)."""
    dtype = autocast_dtype(device)
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


@contextlib.contextmanager
def full_precision(device: torch.device) -> Iterator[None]:
    """Leave autocast for numerically delicate code (codebook distances, EMA updates)."""
    with torch.autocast(device_type=device.type, enabled=False):
        yield


@dataclass(frozen=True)
class DistributedContext(LaunchedProcess):
    """This process's place among the training processes (:class:`LaunchedProcess`), with
    the collective operations they share."""

    def device(self, name: str) -> torch.device:
        """The device of this process: ``name``, or this process's GPU when launched."""
        device = resolve_device(name)
        if device.type == "cuda" and self.world_size > 1:
            return resolve_device(f"cuda:{self.local_rank}")
        return device

    def all_reduce_gradients(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Average the gradients of ``parameters`` over the processes."""
        if self.world_size == 1:
            return
        parameters = list(parameters)
        for p in parameters:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in parameters])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for p in parameters:
            p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
            offset += p.numel()

    def broadcast_parameters(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Give every process the main process's values of ``parameters``."""
        if self.world_size == 1:
            return
        with torch.no_grad():
            for p in parameters:
                dist.broadcast(p.data, src=0)

    def gather(self, value: object) -> list[object]:
        """``value`` of every process, in rank order (on every process)."""
        if self.world_size == 1:
            return [value]
        values: list[object] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def distributed_context() -> DistributedContext:
    """Read the launcher's environment; join the process group when there are several.

    NCCL on GPUs, gloo on CPUs. Without ``WORLD_SIZE`` (or with 1): a single process.
    """
    context = DistributedContext(**asdict(launched_process()))
    if context.world_size > 1 and not dist.is_initialized():
        gpu = torch.cuda.is_available()
        if gpu:
            torch.cuda.set_device(context.local_rank)
        dist.init_process_group(backend="nccl" if gpu else "gloo")
    return context
