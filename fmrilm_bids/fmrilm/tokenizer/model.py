"""The neural fMRI tokenizer: parcel patches -> parcel groups -> vector quantiser -> decoder.

``n_groups`` tokens per window (``patch_length`` samples at ``target_tr``), one per learned
parcel group, from a codebook of ``codebook_size`` codes:

1. **Parcel groups** (:class:`ParcelGroupEncoder`). A small network maps each parcel's
   identity (network one-hot, connectivity fingerprint and MNI position,
   :func:`~.runs.parcel_identity`) to signed weights for ``group_pools`` pooled signals of
   each of ``n_groups`` groups; the weights of a signal are scaled to unit absolute sum over
   the parcels, so it is a weighted contrast of parcels (learned, soft "networks" and
   regions). Nothing depends on the parcel count or order, so a model trained on one atlas
   tokenises another; the weights are computed once per run, so a window costs
   ``n_groups x group_pools x n_parcels x patch_length`` multiply-adds.
2. **Group encoder**: each group's pooled time courses in the window (``group_pools x
   patch_length`` samples) go through a small MLP, with a learned embedding of the group,
   to a unit-norm latent of width ``code_dim``. The token's continuous features, which the
   language model reads, are that latent and the pooled time courses themselves
   (:meth:`NeuralTokenizer.encode_runs`): ``group_pools`` times wider a path to the language
   model than one signal per token, at the same number of tokens.
3. **Quantiser** (:class:`~.quantizer.VectorQuantizer`): the latent's nearest code (one
   codebook shared by the groups) is the token.
4. **Decoder** (:class:`GroupDecoder`): each code becomes ``n_basis`` time courses of its
   group; each parcel's loadings on every group's time courses come from its identity, so
   the patch of every parcel is reconstructed for any atlas (a factor model whose factors
   are read from the tokens).
5. **Alignment to language**: the window's latents are projected to the LLM's hidden size
   (``to_llm``) and averaged over the groups; the mean is pulled towards the text embedding
   of the window's descriptor with a sigmoid contrastive loss (SigLIP, Zhai et al., 2023;
   windows with the same text are all positives), and, in windows where something was
   shown, towards the sentence embedding of what was shown (the events' captions, embedded
   by the app's sentence encoder and placed in the LLM width by a fixed orthonormal map,
   ``event_basis``, which keeps its geometry: captions of one kind of scene stay close
   together; a second SigLIP term on the same window vector), so that the groups keep what
   tells stimuli apart and not only what reconstructs the largest fluctuations, and the
   projection the language model starts reading the latents with (``to_llm``) already
   orders windows by what was shown. The same projection, applied to the
   codebook, gives the initial output embedding of each fMRI token in the LLM
   (:meth:`NeuralTokenizer.token_embeddings_for_llm`), and, applied to the latents, the
   initial projection by which the LLM reads them (:meth:`NeuralTokenizer.llm_projection`).
   When the text encoder is not the LLM (``text_dim != llm_hidden``) a learned linear map
   brings the text embeddings to the LLM width.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
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
    latents : Tensor (batch, windows, n_groups, code_dim)
        Unit-norm pre-quantisation features.
    token_ids : LongTensor (batch, windows, n_groups)
    losses : dict of str to Tensor
        ``reconstruction`` (of the patches), ``amplitude`` (of each parcel's mean over the
        window: its response to what happened then), ``commitment`` and one per alignment
        target given (``alignment`` for the descriptor texts, ``event_alignment`` for the
        events).
    """

    reconstruction: torch.Tensor
    latents: torch.Tensor
    token_ids: torch.Tensor
    losses: dict[str, torch.Tensor]


def _mlp(width_in: int, hidden: int, width_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width_in, hidden), nn.GELU(), nn.Linear(hidden, width_out))


class ParcelGroupEncoder(nn.Module):
    """Pool the parcels of each window into signed groups chosen by parcel identity, then
    encode each group's time course into a unit-norm latent."""

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        self.n_groups, self.pools = config.n_groups, config.group_pools
        self.scores = _mlp(IDENTITY_DIM, config.parcel_dim, config.n_groups * config.group_pools)
        self.time = _mlp(config.group_pools * config.patch_length, config.d_model,
                         config.d_model)
        self.group_embedding = nn.Parameter(torch.randn(config.n_groups, config.d_model) * 0.02)
        self.head = nn.Sequential(nn.LayerNorm(config.d_model),
                                  _mlp(config.d_model, 2 * config.d_model, config.code_dim))

    def pooling_weights(self, identity: torch.Tensor) -> torch.Tensor:
        """``(B, P, n_groups * group_pools)``: each pooled signal's signed weights over the
        parcels (unit absolute sum)."""
        scores = self.scores(identity)
        return scores / scores.abs().sum(dim=1, keepdim=True).clamp(min=1e-6)

    def pooled(self, patches: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        """``(B, W, P, L)`` patches -> ``(B, W, n_groups, group_pools * L)``: each group's
        pooled time courses, one after the other."""
        pooled = torch.einsum("bps,bwpl->bwsl", self.pooling_weights(identity), patches)
        return pooled.unflatten(2, (self.n_groups, self.pools)).flatten(-2)

    def encode_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled time courses ``(..., n_groups, group_pools * L)`` -> unit-norm latents
        ``(..., n_groups, code_dim)``."""
        hidden = self.time(pooled) + self.group_embedding
        return F.normalize(self.head(hidden).float(), dim=-1)

    def forward(self, patches: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        """``(B, W, P, L)`` patches and ``(B, P, I)`` identities -> ``(B, W, G, code_dim)``."""
        return self.encode_pooled(self.pooled(patches, identity))


class GroupDecoder(nn.Module):
    """Codes -> ``n_basis`` time courses per group; parcel identity -> loadings on them."""

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        self.n_groups, self.n_basis = config.n_groups, config.n_basis
        self.patch_length = config.patch_length
        self.basis = _mlp(config.code_dim, config.d_model, config.n_basis * config.patch_length)
        self.group_basis = nn.Parameter(torch.zeros(config.n_groups,
                                                    config.n_basis * config.patch_length))
        self.loadings = _mlp(IDENTITY_DIM, config.parcel_dim, config.n_groups * config.n_basis)

    def forward(self, codes: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        """``(B, W, G, code_dim)`` codes and ``(B, P, I)`` identities -> ``(B, W, P, L)``."""
        basis = (self.basis(codes) + self.group_basis).unflatten(
            -1, (self.n_basis, self.patch_length))
        loadings = self.loadings(identity).unflatten(-1, (self.n_groups, self.n_basis))
        return torch.einsum("bpgn,bwgnl->bwpl", loadings, basis)


class NeuralTokenizer(nn.Module):
    """fMRI tokenizer with a language-aligned projection (see the module docstring)."""

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = ParcelGroupEncoder(config)
        self.quantizer = VectorQuantizer(config.codebook_size, config.code_dim,
                                         config.ema_decay, config.dead_after)
        self.decoder = GroupDecoder(config)
        self.to_llm = nn.Linear(config.code_dim, config.llm_hidden)
        self.text_projection = (nn.Linear(config.text_dim, config.llm_hidden)
                                if config.text_dim != config.llm_hidden else None)
        # Orthonormal rows (an isometry) when the LLM is wider than the sentence space, as
        # SmolLM2's 576 > 384; orthonormal columns (a projection) for narrower test models.
        wide, narrow = sorted((config.llm_hidden, config.event_dim or 1), reverse=True)
        generator = torch.Generator().manual_seed(0)
        basis = torch.linalg.qr(torch.randn(wide, narrow, generator=generator))[0]
        basis = basis.T if config.llm_hidden >= (config.event_dim or 1) else basis
        self.register_buffer("event_basis", basis if config.event_dim else None)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.logit_bias = nn.Parameter(torch.tensor(-10.0))

    def encode(self, patches: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        """Unit-norm pre-quantisation latents ``(B, W, G, code_dim)`` of ``(B, W, P, L)``."""
        return self.encoder(patches, identity)

    def llm_features(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (or codes) in the LLM's embedding space, ``(..., llm_hidden)``."""
        return self.to_llm(latents)

    def window_features(self, latents: torch.Tensor) -> torch.Tensor:
        """A window's latents ``(..., G, code_dim)`` as one vector in the LLM's space (the
        mean over its groups; what the alignment loss compares with the text)."""
        return self.llm_features(latents).mean(dim=-2)

    def text_features(self, text_embeddings: torch.Tensor) -> torch.Tensor:
        """Text embeddings in the LLM's embedding space."""
        if self.text_projection is None:
            return text_embeddings
        return self.text_projection(text_embeddings)

    def alignment_loss(self, window_latents: torch.Tensor, text_ids: torch.Tensor,
                       text_table: torch.Tensor, events: bool = False) -> torch.Tensor:
        """Sigmoid contrastive loss between windows and the distinct texts of the batch.

        Parameters
        ----------
        window_latents : Tensor (N, G, code_dim)
        text_ids : LongTensor (N,)
            Row of ``text_table`` holding each window's text.
        text_table : Tensor (n_texts, text_dim or event_dim)
        events : bool, default=False
            The texts are what was shown (sentence embeddings, placed in the LLM width by
            ``event_basis``), not descriptors.
        """
        unique, positive_of = torch.unique(text_ids, return_inverse=True)
        windows = F.normalize(self.window_features(window_latents).float(), dim=-1)
        texts = text_table[unique]
        if events and self.event_basis is not None:
            texts = texts.float() @ self.event_basis
        else:
            texts = self.text_features(texts)
        texts = F.normalize(texts.float(), dim=-1)
        logits = windows @ texts.T * self.logit_scale.exp() + self.logit_bias
        labels = -torch.ones_like(logits)
        labels[torch.arange(len(positive_of)), positive_of] = 1.0
        return -F.logsigmoid(labels * logits).sum() / len(window_latents)

    def forward(self, patches: torch.Tensor, identity: torch.Tensor,
                alignments: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None
                ) -> TokenizerOutput:
        """Encode, quantise, decode; losses.

        Parameters
        ----------
        patches : Tensor (B, W, P, L)
        identity : Tensor (B, P, IDENTITY_DIM)
        alignments : mapping of str to (LongTensor (B, W), Tensor (n_texts, text_dim))
            Per alignment loss (``"alignment"``, ``"event_alignment"``): the row of the
            table holding each window's text (-1 for none) and the table of embeddings.
        """
        latents = self.encode(patches, identity)
        quantized = self.quantizer(latents)
        reconstruction = self.decoder(quantized.codes.to(latents.dtype), identity)
        losses = {"reconstruction": F.mse_loss(reconstruction.float(), patches.float()),
                  "amplitude": F.mse_loss(reconstruction.float().mean(dim=-1),
                                          patches.float().mean(dim=-1)),
                  "commitment": quantized.commitment}
        for name, (text_ids, text_table) in (alignments or {}).items():
            described = text_ids.reshape(-1) >= 0
            if described.any():
                losses[name] = self.alignment_loss(
                    latents.flatten(0, 1)[described], text_ids.reshape(-1)[described],
                    text_table, events=name == "event_alignment")
        return TokenizerOutput(reconstruction=reconstruction, latents=latents,
                               token_ids=quantized.indices, losses=losses)

    @torch.no_grad()
    def token_embeddings_for_llm(self) -> torch.Tensor:
        """Initial LLM output embedding of every token, ``(codebook_size, llm_hidden)``."""
        return self.llm_features(self.quantizer.codebook).float().cpu()

    @torch.no_grad()
    def llm_projection(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight ``(llm_hidden, code_dim)`` and bias of ``to_llm``: the initial projection by
        which the language model reads the latents."""
        return self.to_llm.weight.detach().float().cpu(), self.to_llm.bias.detach().float().cpu()

    @property
    def device(self) -> torch.device:
        """Where the parameters are (inference runs there)."""
        return self.to_llm.weight.device

    @property
    def feature_dim(self) -> int:
        """Width of a token's continuous features (:meth:`encode_runs`)."""
        return self.config.code_dim + self.config.group_pools * self.config.patch_length

    @torch.inference_mode()
    def encode_runs(self, prepared: Sequence[PreparedRun],
                    batch_windows: int = 4096) -> list[tuple[np.ndarray, np.ndarray]]:
        """Continuous features and token ids of prepared runs.

        A window's tokens depend on its own patch and its run's parcel identities only, so
        each run is encoded in slices of at most ``batch_windows`` windows (bounding memory).

        Returns
        -------
        list of (features, token_ids)
            Per run, in order: ``(n_windows, n_groups, feature_dim)`` float32 features (the
            unit-norm latent, ``code_dim`` wide, then the group's pooled time courses) and
            ``(n_windows, n_groups)`` int64 token ids.
        """
        self.eval()
        device = self.device
        encoded = []
        for run in prepared:
            identity = torch.from_numpy(run.identity)[None].to(device)
            features = []
            for start in range(0, run.n_windows, batch_windows):
                patches = torch.from_numpy(np.ascontiguousarray(
                    run.patches[start:start + batch_windows]))[None].to(device)
                with autocast(device):
                    pooled = self.encoder.pooled(patches, identity)[0].float()
                    latents = self.encoder.encode_pooled(pooled).float()
                features.append(torch.cat([latents, pooled], dim=-1))
            feature = torch.cat(features)
            ids = self.quantizer.lookup(feature[..., :self.config.code_dim])
            encoded.append((feature.cpu().numpy(), ids.cpu().numpy()))
        return encoded

    def encode_prepared(self, prepared: PreparedRun,
                        batch_windows: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """Features and token ids of one prepared run (:meth:`encode_runs`)."""
        return self.encode_runs([prepared], batch_windows)[0]

    def tokenize_runs(self, runs: Sequence[ParcelRun],
                      batch_windows: int = 4096) -> list[TokenizedRun]:
        """Tokens of every window of each run, with onsets and continuous features.

        Runs are prepared (:func:`~.runs.prepare_runs`, with as many threads as torch) and
        encoded (:meth:`encode_runs`).
        """
        config = self.config
        prepared = prepare_runs(runs, config.target_tr, config.patch_length, config.clip,
                                threads=torch.get_num_threads())
        return [TokenizedRun(token_ids=token_ids, onsets=run.onsets,
                             window_duration=run.window_duration, embeddings=features,
                             timecourse_length=config.patch_length)
                for run, (features, token_ids) in zip(
                    prepared, self.encode_runs(prepared, batch_windows), strict=True)]

    def tokenize(self, run: ParcelRun) -> TokenizedRun:
        """Tokens of every window of a run, with onsets and continuous features."""
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
