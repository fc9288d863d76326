"""Where this process stands among those a launcher started (``torchrun``,
``accelerate launch``, ``srun`` + ``torchrun`` on a cluster).

The one place that reads the launcher's environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``). It imports nothing heavy, so that the command line can ask before any
work; joining the process group and the collective operations belong to
:mod:`fmrilm_bids.utils.devices`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class LaunchedProcess:
    """This process's place among the processes of one run.

    Attributes
    ----------
    rank : int
        Global index of this process (0 is the main one: it writes files, reports).
    world_size : int
        Processes in all.
    local_rank : int
        Index on this machine (its GPU).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_process() -> LaunchedProcess:
    """Read the launcher's environment (a single process when ``WORLD_SIZE`` is unset)."""
    return LaunchedProcess(rank=int(os.environ.get("RANK", "0")),
                           world_size=int(os.environ.get("WORLD_SIZE", "1")),
                           local_rank=int(os.environ.get("LOCAL_RANK", "0")))
