"""The neural fMRI tokenizer: parcel patches -> encoder -> vector quantiser -> decoder.

One token per window (``patch_length`` samples at ``target_tr``, all parcels):

1. **Parcel-set encoder** (:class:`ParcelSetEncoder`). A small network maps each parcel's
   identity (network one-hot and connectivity fingerprint, :func:`~.runs.parcel_identity`)
   to attention scores for ``n_queries`` groups; a softmax across parcels turns them into
   pooling weights, and each group's weighted mean patch (learned, soft "networks") goes
   through a linear layer into one window vector. Nothing depends on the parcel count or
   order, so a model trained on one atlas tokenises another; the weights are computed once
   per run, so a window costs ``n_queries x n_parcels x patch_length`` multiply-adds.
2. **Time transformer**: ``n_layers`` pre-norm transformer blocks (nanoGPT style,
   bidirectional) over up to ``context_windows`` consecutive windows of a run, then a linear
   map to a unit-norm latent of width ``code_dim``: the pre-quantisation feature.
3. **Quantiser** (:class:`~.quantizer.VectorQuantizer`): the latent's nearest code is the
   token.
4. **Decoder** (:class:`PatchDecoder`): the code becomes ``n_basis`` time courses; each
   parcel's loadings on them come from its identity, so the patch of every parcel is
   reconstructed for any atlas.
5. **Alignment to language**: the latent is projected to the LLM's hidden size
   (``to_llm``) and pulled towards the text embedding of its window's descriptor with a
   sigmoid contrastive loss (SigLIP, Zhai et al., 2023; windows with the same text are all
   positives). Applied to the codebook, the same projection gives the initial embedding of
   each fMRI token in the LLM (:meth:`NeuralTokenizer.token_embeddings_for_llm`). When the
   text encoder is not the LLM (``text_dim != llm_hidden``) a learned linear map brings the
   text embeddings to the LLM width.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from fmrilm_bids.fmrilm.tokenizer.config import TokenizerConfig
from fmrilm_bids.fmrilm.tokenizer.quantizer import VectorQuantizer
from fmrilm_bids.fmrilm.tokenizer.runs import (
    IDENTITY_DIM,
    ParcelRun,
    PreparedRun,
    TokenizedRun,
    prepare_runs,
)
from fmrilm_bids.utils.devices import CPU, autocast

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def weights_hash(directory: str | Path) -> str:
    """``sha256:<hex>`` of the weights file of a saved tokenizer (identifies the model)."""

    digest = hashlib.sha256()
    with open(Path(directory) / WEIGHTS_FILE, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


@dataclass
class TokenizerOutput:
    """What a training forward pass returns.

    Attributes
    ----------
    reconstruction : Tensor (batch, windows, parcels, patch_length)
    latents : Tensor (batch, windows, code_dim)
        Unit-norm pre-quantisation features.
    token_ids : LongTensor (batch, windows)
    losses : dict of str to Tensor
        ``reconstruction``, ``commitment`` and, with texts, ``alignment``.
    """

    reconstruction: torch.Tensor
    latents: torch.Tensor
    token_ids: torch.Tensor
    losses: dict[str, torch.Tensor]


class ParcelSetEncoder(nn.Module):
    """Pool the parcels of each window into soft groups chosen by parcel identity."""

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        self.scores = nn.Sequential(nn.Linear(IDENTITY_DIM, config.parcel_dim), nn.GELU(),
                                    nn.Linear(config.parcel_dim, config.n_queries))
        self.out = nn.Linear(config.n_queries * config.patch_length, config.d_model)

    def pooling_weights(self, identity: torch.Tensor) -> torch.Tensor:
        """``(B, P, n_queries)``: each group's weights over the parcels (they sum to 1)."""
        return torch.softmax(self.scores(identity), dim=1)

    def forward(self, patches: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        """``(B, W, P, L)`` patches and ``(B, P, I)`` identities -> ``(B, W, d_model)``."""
        pooled = torch.einsum("bpq,bwpl->bwql", self.pooling_weights(identity), patches)
        return self.out(pooled.flatten(-2))


class SelfAttention(nn.Module):
    """Multi-head bidirectional self-attention over windows."""

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        if config.d_model % config.n_heads:
            raise ValueError(f"d_model ({config.d_model}) must be divisible by n_heads "
                             f"({config.n_heads}).")
        self.n_heads = config.n_heads
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = (t.view(batch, length, self.n_heads, -1).transpose(1, 2)
                   for t in self.qkv(x).split(width, dim=2))
        attended = F.scaled_dot_product_attention(q, k, v)
        return self.proj(attended.transpose(1, 2).reshape(batch, length, width))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.d_model)
        self.attn = SelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.d_model)
        self.mlp = nn.Sequential(nn.Linear(config.d_model, 4 * config.d_model), nn.GELU(),
                                 nn.Linear(4 * config.d_model, config.d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class PatchDecoder(nn.Module):
    """Code -> ``n_basis`` time courses; parcel identity -> loadings; patch = their product."""

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        self.n_basis, self.patch_length = config.n_basis, config.patch_length
        self.basis = nn.Sequential(nn.Linear(config.code_dim, config.d_model), nn.GELU(),
                                   nn.Linear(config.d_model, config.n_basis * config.patch_length))
        self.loadings = nn.Sequential(nn.Linear(IDENTITY_DIM, config.parcel_dim), nn.GELU(),
                                      nn.Linear(config.parcel_dim, config.n_basis))

    def forward(self, codes: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        """``(B, W, code_dim)`` codes and ``(B, P, I)`` identities -> ``(B, W, P, L)``."""
        basis = self.basis(codes).unflatten(-1, (self.n_basis, self.patch_length))
        return self.loadings(identity)[:, None] @ basis


def _cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``torch.cat`` that returns a lone tensor as it is (no copy)."""
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``torch.stack`` that returns a lone tensor as a view (no copy)."""
    return tensors[0][None] if len(tensors) == 1 else torch.stack(tensors)


def _batches(spans: list[tuple[int, int, int, int]],
             size: int) -> Iterator[list[tuple[int, int, int, int]]]:
    """Split spans of sequences (last item: how many) into batches of ``size`` sequences."""
    batch, filled = [], 0
    for index, start, length, count in spans:
        while count:
            taken = min(count, size - filled)
            batch.append((index, start, length, taken))
            start, count, filled = start + taken * length, count - taken, filled + taken
            if filled == size:
                yield batch
                batch, filled = [], 0
    if batch:
        yield batch


class NeuralTokenizer(nn.Module):
    """fMRI tokenizer with a language-aligned projection (see the module docstring)."""

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = ParcelSetEncoder(config)
        self.position = nn.Embedding(config.context_windows, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.to_code = nn.Linear(config.d_model, config.code_dim)
        self.quantizer = VectorQuantizer(config.codebook_size, config.code_dim,
                                         config.ema_decay, config.dead_after)
        self.decoder = PatchDecoder(config)
        self.to_llm = nn.Linear(config.code_dim, config.llm_hidden)
        self.text_projection = (nn.Linear(config.text_dim, config.llm_hidden)
                                if config.text_dim != config.llm_hidden else None)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.logit_bias = nn.Parameter(torch.tensor(-10.0))

    def encode(self, patches: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        """Unit-norm pre-quantisation latents ``(B, W, code_dim)`` of ``(B, W, P, L)``."""
        return self.encode_windows(self.encoder(patches, identity))

    def encode_windows(self, windows: torch.Tensor) -> torch.Tensor:
        """Latents ``(B, W, code_dim)`` of window vectors ``(B, W, d_model)`` (the output of
        the parcel-set encoder): the time transformer and the map to unit-norm latents."""
        n_windows = windows.shape[1]
        if n_windows > self.config.context_windows:
            raise ValueError(f"{n_windows} windows exceed context_windows "
                             f"({self.config.context_windows}); encode shorter sequences.")
        x = windows + self.position.weight[:n_windows]
        for block in self.blocks:
            x = block(x)
        return F.normalize(self.to_code(self.ln_f(x)).float(), dim=-1)

    def llm_features(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (or codes) in the LLM's embedding space, ``(..., llm_hidden)``."""
        return self.to_llm(latents)

    def text_features(self, text_embeddings: torch.Tensor) -> torch.Tensor:
        """Text embeddings in the LLM's embedding space."""
        if self.text_projection is None:
            return text_embeddings
        return self.text_projection(text_embeddings)

    def alignment_loss(self, latents: torch.Tensor, text_ids: torch.Tensor,
                       text_table: torch.Tensor) -> torch.Tensor:
        """Sigmoid contrastive loss between windows and the distinct texts of the batch.

        Parameters
        ----------
        latents : Tensor (N, code_dim)
        text_ids : LongTensor (N,)
            Row of ``text_table`` holding each window's text.
        text_table : Tensor (n_texts, text_dim)
        """
        unique, positive_of = torch.unique(text_ids, return_inverse=True)
        windows = F.normalize(self.llm_features(latents).float(), dim=-1)
        texts = F.normalize(self.text_features(text_table[unique]).float(), dim=-1)
        logits = windows @ texts.T * self.logit_scale.exp() + self.logit_bias
        labels = -torch.ones_like(logits)
        labels[torch.arange(len(positive_of)), positive_of] = 1.0
        return -F.logsigmoid(labels * logits).sum() / len(latents)

    def forward(self, patches: torch.Tensor, identity: torch.Tensor,
                text_ids: torch.Tensor | None = None,
                text_table: torch.Tensor | None = None) -> TokenizerOutput:
        """Encode, quantise, decode; losses.

        Parameters
        ----------
        patches : Tensor (B, W, P, L)
        identity : Tensor (B, P, IDENTITY_DIM)
        text_ids : LongTensor (B, W), optional
            Row of ``text_table`` of each window's descriptor, -1 for none.
        text_table : Tensor (n_texts, text_dim), optional
        """
        latents = self.encode(patches, identity)
        quantized = self.quantizer(latents)
        reconstruction = self.decoder(quantized.codes.to(latents.dtype), identity)
        losses = {"reconstruction": F.mse_loss(reconstruction.float(), patches.float()),
                  "commitment": quantized.commitment}
        if text_ids is not None and text_table is not None:
            described = text_ids.reshape(-1) >= 0
            if described.any():
                losses["alignment"] = self.alignment_loss(
                    latents.reshape(-1, latents.shape[-1])[described],
                    text_ids.reshape(-1)[described], text_table)
        return TokenizerOutput(reconstruction=reconstruction, latents=latents,
                               token_ids=quantized.indices, losses=losses)

    @torch.no_grad()
    def token_embeddings_for_llm(self) -> torch.Tensor:
        """Initial LLM input embedding of every token, ``(codebook_size, llm_hidden)``."""
        return self.llm_features(self.quantizer.codebook).float().cpu()

    @property
    def device(self) -> torch.device:
        """Where the parameters are (inference runs there)."""
        return self.to_llm.weight.device

    @torch.inference_mode()
    def window_vectors(self, prepared: Sequence[PreparedRun],
                       batch_windows: int = 4096) -> list[torch.Tensor]:
        """Parcel-set encoder output ``(n_windows, d_model)`` of each prepared run.

        Runs with the same window and parcel counts go through the encoder together, up to
        ``batch_windows`` windows a pass (a longer run, in slices of that many windows); the
        patches are stacked parcel-major, so that the pooling over parcels is one matrix
        product per run and a lone run is read in place. Float32, on the model's device.
        """
        device = self.device
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for index, run in enumerate(prepared):
            by_shape.setdefault(run.patches.shape, []).append(index)
        # Encoder passes: lists of (run, first window, end window) of one shape.
        passes = []
        for (n_windows, *_), members in by_shape.items():
            if n_windows > batch_windows:
                passes += [[(index, start, min(start + batch_windows, n_windows))]
                           for index in members for start in range(0, n_windows, batch_windows)]
            else:
                per_pass = batch_windows // n_windows
                passes += [[(index, 0, n_windows) for index in members[first:first + per_pass]]
                           for first in range(0, len(members), per_pass)]
        vectors = [torch.empty(run.n_windows, self.config.d_model, device=device)
                   for run in prepared]
        for runs in passes:
            # (W, P, L) patches of parcel-major signals, stacked as (R, P, W, L).
            patches = _stack([torch.from_numpy(prepared[index].patches[start:end]).transpose(0, 1)
                              for index, start, end in runs]).transpose(1, 2)
            identity = _stack([torch.from_numpy(prepared[index].identity)
                               for index, _, _ in runs])
            with autocast(device):
                encoded = self.encoder(patches.to(device), identity.to(device))
            for windows, (index, start, end) in zip(encoded, runs, strict=True):
                vectors[index][start:end] = windows
        return vectors

    @torch.inference_mode()
    def encode_runs(self, prepared: Sequence[PreparedRun],
                    batch_windows: int = 4096) -> list[tuple[np.ndarray, np.ndarray]]:
        """Latents and token ids of prepared runs, batched across runs.

        The parcel-set encoder maps every window to a vector (:meth:`window_vectors`; its
        output does not depend on the other windows). Then each run is cut into sequences
        of ``context_windows`` windows (the last one shorter); sequences of the same length,
        from any run, go through the time transformer together, so many short runs cost
        about as much as one long run of the same length.

        Parameters
        ----------
        prepared : sequence of PreparedRun
        batch_windows : int, default=4096
            Windows per forward pass (bounds the memory).

        Returns
        -------
        list of (latents, token_ids)
            Per run, in order: ``(n_windows, code_dim)`` float32 latents and
            ``(n_windows,)`` int64 token ids.
        """
        self.eval()
        device, context = self.device, self.config.context_windows
        vectors = self.window_vectors(prepared, batch_windows)
        # Spans of consecutive sequences: (run, first window, sequence length, sequences).
        groups: dict[int, list[tuple[int, int, int, int]]] = {}
        for index, run in enumerate(prepared):
            n_full, rest = divmod(run.n_windows, context)
            if n_full:
                groups.setdefault(context, []).append((index, 0, context, n_full))
            if rest:
                groups.setdefault(rest, []).append((index, n_full * context, rest, 1))
        latents = [torch.empty(run.n_windows, self.config.code_dim) for run in prepared]
        token_ids = [torch.empty(run.n_windows, dtype=torch.long) for run in prepared]
        for length, spans in groups.items():
            per_batch = max(1, batch_windows // length)
            for batch in _batches(spans, per_batch):
                views = [vectors[i][s:s + length * n].view(n, length, -1) for i, s, _, n in batch]
                with autocast(device):
                    encoded = self.encode_windows(_cat(views)).float().flatten(0, 1)
                ids, encoded = self.quantizer.lookup(encoded).cpu(), encoded.cpu()
                offset = 0
                for i, s, _, n in batch:
                    latents[i][s:s + length * n] = encoded[offset:offset + length * n]
                    token_ids[i][s:s + length * n] = ids[offset:offset + length * n]
                    offset += length * n
        return [(lat.numpy(), ids.numpy()) for lat, ids in zip(latents, token_ids, strict=True)]

    def encode_prepared(self, prepared: PreparedRun,
                        batch_windows: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """Latents and token ids of one prepared run (:meth:`encode_runs`)."""
        return self.encode_runs([prepared], batch_windows)[0]

    def tokenize_runs(self, runs: Sequence[ParcelRun],
                      batch_windows: int = 4096) -> list[TokenizedRun]:
        """Token per window of each run, with onsets and pre-quantisation embeddings.

        Runs are prepared (:func:`~.runs.prepare_runs`, with as many threads as torch) and
        encoded (:meth:`encode_runs`) together.
        """
        config = self.config
        prepared = prepare_runs(runs, config.target_tr, config.patch_length, config.clip,
                                threads=torch.get_num_threads())
        return [TokenizedRun(token_ids=token_ids, onsets=run.onsets,
                             window_duration=run.window_duration, embeddings=latents)
                for run, (latents, token_ids) in zip(
                    prepared, self.encode_runs(prepared, batch_windows), strict=True)]

    def tokenize(self, run: ParcelRun) -> TokenizedRun:
        """Token per window of a run, with onsets and pre-quantisation embeddings."""
        return self.tokenize_runs([run])[0]

    @torch.inference_mode()
    def reconstruct(self, prepared: PreparedRun) -> np.ndarray:
        """Decoded patches ``(n_windows, P, L)`` of a prepared run (from its tokens)."""
        _, token_ids = self.encode_prepared(prepared)
        device = self.device
        codes = self.quantizer.codebook[torch.from_numpy(token_ids).to(device)]
        identity = torch.from_numpy(prepared.identity).to(device)[None]
        with autocast(device):
            return self.decoder(codes[None], identity)[0].float().cpu().numpy()

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``model.safetensors`` and ``config.json`` into ``directory``."""

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {name: tensor.detach().cpu().contiguous()
                 for name, tensor in self.state_dict().items()}
        save_file(state, directory / WEIGHTS_FILE, metadata={"format": "pt"})
        (directory / CONFIG_FILE).write_text(json.dumps(self.config.to_dict(), indent=1))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path,
                        device: torch.device = CPU) -> NeuralTokenizer:
        """Load a tokenizer written by :meth:`save_pretrained` (or a training checkpoint)."""

        directory = Path(directory)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory / name} is missing; point at a folder "
                                        "written by NeuralTokenizer.save_pretrained.")
        config = TokenizerConfig.from_dict(json.loads((directory / CONFIG_FILE).read_text()))
        model = cls(config)
        model.load_state_dict(load_file(directory / WEIGHTS_FILE))
        return model.to(device)
