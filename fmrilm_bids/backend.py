"""The one place that knows about devices: CPU and GPU share every other line of code.

Model code asks for a device with :func:`resolve_device` and wraps forward passes in
:func:`autocast`; nothing else checks ``torch.cuda``. On a GPU forward passes run in
bfloat16 autocast (parameters, optimiser state and losses stay float32); on the CPU they run
in float32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")


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
    if device.split(":")[0] not in DEVICE_CHOICES[1:]:
        raise ValueError(f"Unknown device {device!r}; use one of {', '.join(DEVICE_CHOICES)}.")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"Device {device!r} was requested but torch sees no GPU; use 'cpu' "
                         "or install the CUDA build of torch.")
    return torch.device(device)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """Reduced precision used for forward passes on ``device`` (None: full float32)."""
    return torch.bfloat16 if device.type == "cuda" else None


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
