"""Independent jobs over worker processes, each with its share of the torch threads.

Small models (the decoders' heads: a few hundred thousand weights, batches of a few hundred
units) use several threads poorly, so independent fits run faster side by side, one process
per core, than one after another on every thread. The workers are spawned (not forked: a
fork of a process whose OpenMP threads have started can hang) and receive the data the jobs
share once, when they start; each job then travels alone.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from typing import TypeVar

import torch

Shared = TypeVar("Shared")
Job = TypeVar("Job")
Result = TypeVar("Result")

#: What this worker process received when it started.
_WORKER: dict[str, object] = {}


def _start_worker(shared: object, threads: int) -> None:
    torch.set_num_threads(threads)
    _WORKER["shared"] = shared


def _run_job(function: Callable[[object, object], object], job: object) -> object:
    return function(_WORKER["shared"], job)


def map_in_processes(function: Callable[[Shared, Job], Result], shared: Shared,
                     jobs: Sequence[Job], processes: int = 1) -> list[Result]:
    """``[function(shared, job) for job in jobs]``, over ``processes`` worker processes.

    Parameters
    ----------
    function : callable
        A module-level function (workers import it by name).
    shared : object
        What every job reads (picklable); sent to each worker once.
    jobs : sequence
        Picklable; their results come back in their order.
    processes : int, default=1
        Worker processes (at most one per job); 1 runs the jobs here, one after another.
        Each worker gets an equal share of this process's torch threads (at least one).

    Returns
    -------
    list
    """
    processes = max(1, min(int(processes), len(jobs)))
    if processes == 1:
        return [function(shared, job) for job in jobs]
    threads = max(1, torch.get_num_threads() // processes)
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_start_worker, initargs=(shared, threads)) as pool:
        return list(pool.map(partial(_run_job, function), jobs))
