"""Where fmrilm-bids keeps its caches, and the process environment it needs.

Everything that would otherwise land in ``$HOME`` or ``/tmp`` (TemplateFlow, matplotlib,
deno, model weights, temporary files) gets a documented, settable location, so the app runs
with a read-only HOME (Singularity) and with no network.

Precedence for each location: an explicit environment variable set by the user, else a
folder under the fmrilm-bids cache dir. The cache dir itself is ``$FMRILM_CACHE_DIR``, else
``$XDG_CACHE_HOME/fmrilm-bids`` (``~/.cache/fmrilm-bids``) when writable, else
``<work dir>/cache``.

The group level (model training) also sets the memory allocator to reuse freed memory
(:func:`keep_freed_memory`).

:func:`configure_environment` must run before ``templateflow``, ``niworkflows``, ``nipype``
or ``matplotlib`` are imported: they read these variables once, at import.
"""

from __future__ import annotations

import ctypes
import os
import sys
import tempfile
from pathlib import Path

#: Environment variables that point at a folder, and the cache sub-folder used by default.
CACHE_VARIABLES: dict[str, str] = {
    "TEMPLATEFLOW_HOME": "templateflow",
    "MPLCONFIGDIR": "matplotlib",
    "DENO_DIR": "deno",
    "FMRILM_MODELS_DIR": "models",
    "HF_HOME": "huggingface",
}

#: Variables that keep every library offline and quiet.
OFFLINE_VARIABLES: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "NIPYPE_NO_ET": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


#: glibc ``mallopt`` parameters (``malloc.h``).
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
#: Free memory at the top of the heap kept for reuse before it goes back to the system.
TRIM_THRESHOLD = 256 << 20


def keep_freed_memory() -> bool:
    """Let glibc's ``malloc`` reuse freed memory instead of handing it back to the system.

    PyTorch on the CPU allocates and frees large buffers at every training step (the
    trainable rows of the language model's embedding take a 113 MB copy of the whole
    matrix per forward pass). glibc serves each block above 32 MB with fresh ``mmap`` pages
    that the kernel faults in and zeroes every time, and returns it at ``free``: on 2 cores
    the kernel's share of a Stage-2 step reached half of it and varied from run to run
    (82-100 against 147-150 tokens/s on the demo's data, 41 against 9 s of system time).
    With ``mmap`` off and a 256 MiB trim threshold, freed blocks stay in the heap and are
    reused. A 1 GiB threshold kept more (the benchmark cohort, 3 Stage-2 and 8 Stage-3
    steps: 140 and 171 tokens/s but a peak of 7.0 GiB, against 120 and 153 tokens/s, 3.17
    GiB by default); 256 MiB: 136 and 157 tokens/s, 3.19 GiB. The whole benchmark still
    peaks higher with it (6.25 GiB against 3.41 GiB without; not yet traced to a step),
    the demo's group level does not (3.47 GiB). Called where models train
    (the group level, ``benchmarks/bench_llm.py``), not in the participant level's worker
    processes, which would each keep up to the threshold.

    Returns
    -------
    bool
        Whether it applied (glibc on Linux; elsewhere nothing changes).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl)
        return False
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD,
                                                                   TRIM_THRESHOLD))


def _writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".fmrilm-write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError:
        return False
    return True


def default_cache_dir(work_dir: Path | None = None) -> Path:
    """Return the fmrilm-bids cache folder (see the module docstring for the rules)."""
    if os.environ.get("FMRILM_CACHE_DIR"):
        return Path(os.environ["FMRILM_CACHE_DIR"]).expanduser().absolute()
    xdg = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser()
    candidate = xdg / "fmrilm-bids"
    if _writable(candidate):
        return candidate.absolute()
    if work_dir is None:
        raise OSError(
            f"No writable cache folder: {candidate} is read-only. "
            "Set FMRILM_CACHE_DIR to a writable folder."
        )
    return (Path(work_dir) / "cache").absolute()


def configure_environment(work_dir: Path | None = None, cache_dir: Path | None = None) -> Path:
    """Point every cache at writable folders and switch the libraries offline.

    Parameters
    ----------
    work_dir : Path, optional
        The run's work folder. Temporary files go to ``<work_dir>/tmp`` (never ``/tmp``),
        and it is the cache dir of last resort.
    cache_dir : Path, optional
        Overrides :func:`default_cache_dir`.

    Returns
    -------
    Path
        The cache folder in use (exported as ``FMRILM_CACHE_DIR``).
    """
    cache = Path(cache_dir).absolute() if cache_dir else default_cache_dir(work_dir)
    cache.mkdir(parents=True, exist_ok=True)
    os.environ["FMRILM_CACHE_DIR"] = str(cache)
    for variable, sub in CACHE_VARIABLES.items():
        if not os.environ.get(variable):
            os.environ[variable] = str(cache / sub)
        Path(os.environ[variable]).mkdir(parents=True, exist_ok=True)
    for variable, value in OFFLINE_VARIABLES.items():
        os.environ.setdefault(variable, value)
    if work_dir is not None:
        tmp = Path(work_dir).absolute() / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        os.environ["TMPDIR"] = str(tmp)
        tempfile.tempdir = str(tmp)
    return cache
