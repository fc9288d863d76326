"""Small helpers shared by the workflow builders."""

from __future__ import annotations

import re

from fmrilm_bids.config import Space


def node_name(label: str) -> str:
    """A nipype-safe name from a BIDS label (``sub-01_task-rest`` -> ``sub_01_task_rest``)."""
    return re.sub(r"\W", "_", label)


def space_node_name(space: Space) -> str:
    """A nipype-safe name of an output space (``MNI152NLin6Asym:res-2`` ->
    ``MNI152NLin6Asym_res_2``)."""
    return node_name(space.label)
