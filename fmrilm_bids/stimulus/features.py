"""Stimulus text: one caption per event, and its feature spaces.

The caption of an event comes from, in this order of preference:

1. a caption column of ``events.tsv`` (``caption`` by default; the name is settable);
2. its ``trial_type`` put into a sentence (``"faces"`` -> ``"A picture of faces."``);
3. its ``stim_file`` looked up in a user-given table of captions (``stim_file``, ``caption``).

Feature spaces (:data:`FEATURE_SPACES`): ``"sentence"``, the bundled all-MiniLM-L6-v2
embedding (:func:`fmrilm_bids.resources.text_encoder.encode_sentences`), and ``"llm"``, the
language model's mean last hidden state
(:func:`fmrilm_bids.fmrilm.llm.backbone.llm_text_embedder`); the embedders are built by
:func:`fmrilm_bids.interfaces.stimulus.text_embedders` and passed to :func:`embed_texts`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

LOGGER = logging.getLogger(__name__)

#: Feature spaces the encoding model knows.
FEATURE_SPACES = ("sentence", "llm")


def trial_type_sentence(trial_type: str) -> str:
    """A trial type as a plain sentence: ``"face_happy"`` -> ``"A picture of face happy."``."""
    words = str(trial_type).replace("_", " ").replace("-", " ").strip()
    return f"A picture of {words}."


def has_stimulus_text(events: pd.DataFrame, caption_column: str = "caption",
                      stim_captions: Mapping[str, str] | None = None) -> bool:
    """Whether :func:`event_captions` can give every event of ``events`` a caption."""
    try:
        event_captions(events, caption_column, stim_captions)
    except ValueError:
        return False
    return len(events) > 0


def _usable(column: pd.Series) -> bool:
    values = column.astype(str).str.strip()
    return bool(len(values)) and not values.isin(["", "n/a", "nan", "None"]).any()


def event_captions(events: pd.DataFrame, caption_column: str = "caption",
                   stim_captions: Mapping[str, str] | None = None) -> list[str]:
    """One caption per event (see the module docstring for the order of sources).

    Parameters
    ----------
    events : pandas.DataFrame
        A BIDS ``events.tsv``.
    caption_column : str, default="caption"
    stim_captions : mapping of str to str, optional
        ``stim_file`` -> caption.

    Raises
    ------
    ValueError
        When no source covers every event.
    """
    if caption_column in events and _usable(events[caption_column]):
        return events[caption_column].astype(str).str.strip().tolist()
    if "trial_type" in events and _usable(events["trial_type"]):
        return [trial_type_sentence(t) for t in events["trial_type"]]
    if stim_captions and "stim_file" in events:
        missing = sorted(set(events["stim_file"].astype(str)) - set(stim_captions))
        if not missing:
            return [stim_captions[str(s)] for s in events["stim_file"]]
        raise ValueError(f"The table of captions lacks {len(missing)} stim_file(s), e.g. "
                         f"{missing[0]!r}")
    raise ValueError(f"The events have no {caption_column!r} or trial_type column (nor a "
                     "stim_file with a table of captions)")


def read_stim_captions(path: str | None) -> dict[str, str] | None:
    """A user's table of captions (TSV with ``stim_file`` and ``caption``) as a dict."""
    if not path:
        return None
    table = pd.read_csv(path, sep="\t", keep_default_na=False)
    missing = {"stim_file", "caption"} - set(table.columns)
    if missing:
        raise ValueError(f"{path}: the table of captions needs the columns stim_file and "
                         f"caption (missing: {', '.join(sorted(missing))})")
    return dict(zip(table["stim_file"].astype(str), table["caption"].astype(str),
                    strict=True))


Embedder = Callable[[list[str]], np.ndarray]


def embed_texts(texts: Sequence[str], embedders: Mapping[str, Embedder]) -> dict[str, np.ndarray]:
    """Each feature space's embedding of ``texts`` (unique texts embedded once)."""
    unique = list(dict.fromkeys(texts))
    position = {text: i for i, text in enumerate(unique)}
    index = np.array([position[t] for t in texts], dtype=int)
    return {space: np.asarray(embed(unique), dtype=np.float32)[index]
            for space, embed in embedders.items()}
