"""Run locks in the work dir, and worker processes that die with their parent.

Two runs on the same participant and work dir would race each other's nipype nodes, and so
would a resumed run and the MultiProc workers of a killed one. Each run holds an exclusive
lock (:func:`fcntl.flock`) per participant (or on the group level) in ``WORK_DIR/locks``;
forked workers inherit it, so the lock stays held until the last process of a run is gone.
Workers ask the kernel to kill them when their parent dies (:func:`die_with_parent`), so a
``kill -9`` of the main process leaves nothing behind.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import sys
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import IO

from fmrilm_bids.errors import WorkDirBusyError

_PR_SET_PDEATHSIG = 1
_HELD: dict[Path, IO[str]] = {}


def die_with_parent(parent_pid: int | None = None) -> None:
    """Have the kernel send SIGKILL to this process when its parent dies (Linux), and exit
    at once if the parent is already gone."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)


def acquire_run_locks(work_dir: Path, names: Iterable[str]) -> list[Path]:
    """Lock ``WORK_DIR/locks/<name>.lock`` for each name, or fail naming the holder.

    Raises
    ------
    WorkDirBusyError
        When another live run (or a worker it left) holds one of the locks; the locks taken
        so far are released.
    """
    folder = Path(work_dir) / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    taken = []
    for name in names:
        path = folder / f"{name}.lock"
        if path in _HELD:
            continue
        handle = open(path, "a+")  # noqa: SIM115 - kept open while the run lives
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            release_run_locks(taken)
            raise WorkDirBusyError(
                f"{path}: another fmrilm-bids run ({holder}) is working on {name} in the work "
                f"dir {work_dir}; wait for it to end (or stop it), or give another -w/--work-dir."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}, started {datetime.now():%Y-%m-%d %H:%M:%S}\n")
        handle.flush()
        _HELD[path] = handle
        taken.append(path)
    return taken


def release_run_locks(paths: Iterable[Path] | None = None) -> None:
    """Release the given locks (default: every lock this process holds)."""
    for path in list(_HELD if paths is None else paths):
        handle = _HELD.pop(path, None)
        if handle is not None:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()
