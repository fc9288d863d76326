"""Vector quantiser: a cosine codebook updated by exponential moving averages (EMA), with
dead-code restarts.

Latents and codes live on the unit sphere; a latent's code is the one with the highest
cosine similarity. The codebook is not trained by gradients: each training step moves code
``k`` towards the mean direction of the latents assigned to it (EMA of counts and sums, van
den Oord et al., 2017; cosine codes as in ViT-VQGAN, Yu et al., 2022). A code whose EMA
no latent has chosen for ``dead_after`` training steps is restarted on a random latent of the
batch, so the codebook cannot collapse onto a few codes. The encoder is pulled
towards its code by the commitment loss; the straight-through estimator passes the
decoder's gradient to the encoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fmrilm_bids.utils.devices import full_precision


@dataclass
class Quantized:
    """Output of :class:`VectorQuantizer`.

    Attributes
    ----------
    codes : Tensor (..., code_dim)
        Code vectors, with straight-through gradients to the latents.
    indices : LongTensor (...)
        Token ids.
    commitment : Tensor ()
        Mean squared distance of the latents to their (detached) codes.
    """

    codes: torch.Tensor
    indices: torch.Tensor
    commitment: torch.Tensor


class VectorQuantizer(nn.Module):
    """EMA cosine codebook with dead-code restarts.

    Parameters
    ----------
    codebook_size : int
        Number of codes (tokens).
    code_dim : int
        Width of a code.
    decay : float, default=0.99
        EMA decay of the code counts and sums.
    dead_after : int, default=20
        Training steps without a latent after which a code is restarted.
    """

    def __init__(self, codebook_size: int, code_dim: int, decay: float = 0.99,
                 dead_after: int = 20) -> None:
        super().__init__()
        self.codebook_size, self.code_dim = codebook_size, code_dim
        self.decay, self.dead_after = decay, dead_after
        codebook = F.normalize(torch.randn(codebook_size, code_dim), dim=-1)
        self.register_buffer("codebook", codebook)
        self.register_buffer("cluster_size", torch.ones(codebook_size))
        self.register_buffer("embed_sum", codebook.clone())
        # Steps since a latent last chose each code; starts "dead" so that the first batch
        # seeds the whole codebook with real latents.
        self.register_buffer("idle_steps", torch.full((codebook_size,), dead_after))

    def lookup(self, latents: torch.Tensor) -> torch.Tensor:
        """Token id of each unit latent (nearest code by cosine)."""
        return (latents @ self.codebook.T).argmax(dim=-1)

    def forward(self, latents: torch.Tensor) -> Quantized:
        """Quantise unit-norm latents ``(..., code_dim)``; updates the codebook in training."""
        with full_precision(latents.device):
            flat = latents.float().reshape(-1, self.code_dim)
            indices = self.lookup(flat)
            if self.training:
                self._update(flat.detach(), indices)
            codes = self.codebook[indices]
            commitment = F.mse_loss(flat, codes)
            codes = flat + (codes - flat).detach()
        shape = latents.shape[:-1]
        return Quantized(codes=codes.reshape(*shape, self.code_dim),
                         indices=indices.reshape(shape), commitment=commitment)

    @torch.no_grad()
    def _update(self, latents: torch.Tensor, indices: torch.Tensor) -> None:
        counts = torch.bincount(indices, minlength=self.codebook_size).to(latents.dtype)
        sums = torch.zeros_like(self.embed_sum).index_add_(0, indices, latents)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        self.idle_steps.add_(1).masked_fill_(counts > 0, 0)
        dead = self.idle_steps >= self.dead_after
        n_dead = int(dead.sum())
        if n_dead:
            chosen = latents[torch.randint(latents.shape[0], (n_dead,), device=latents.device)]
            share = latents.shape[0] / self.codebook_size
            self.embed_sum[dead] = chosen * share
            self.cluster_size[dead] = share
            self.idle_steps[dead] = 0
        self.codebook.copy_(F.normalize(self.embed_sum, dim=-1))
