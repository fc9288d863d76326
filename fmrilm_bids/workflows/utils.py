"""Small helpers shared by the workflow builders."""

from __future__ import annotations

import re


def node_name(label: str) -> str:
    """A nipype-safe name from a BIDS label (``sub-01_task-rest`` -> ``sub_01_task_rest``)."""
    return re.sub(r"\W", "_", label)
