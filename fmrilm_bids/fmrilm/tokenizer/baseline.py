"""Baseline tokenizer of the same size: PCA of the window patches, product-quantised.

Windows are prepared exactly as for :class:`~.model.NeuralTokenizer` (common TR, robust
normalisation, patches), flattened to ``n_parcels * patch_length`` values and reduced by PCA
to ``n_tokens * sub_dim`` scores; the scores are cut into ``n_tokens`` sub-vectors of
``sub_dim`` values, and one k-means codebook of ``codebook_size`` codes, shared by the
sub-vectors, quantises each of them: ``n_tokens`` tokens per window from ``codebook_size``
codes, as many bits as the neural tokenizer with ``n_groups = n_tokens``. A window is
reconstructed from its tokens' centroids back through the PCA. Unlike the neural tokenizer it
needs the parcels it was fitted on (one atlas), and nothing aligns it to text.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA

from fmrilm_bids.fmrilm.tokenizer.runs import ParcelRun, PreparedRun, TokenizedRun, prepare_run


class PCAProductQuantizer:
    """PCA + product quantisation with a shared codebook (module docstring).

    Parameters
    ----------
    target_tr, patch_length, clip
        Window format (as :class:`~.config.TokenizerConfig`).
    n_tokens : int, default=16
        Tokens (sub-vectors) per window.
    sub_dim : int, default=2
        PCA scores per token.
    codebook_size : int, default=1024
        k-means codes shared by the sub-vectors (fewer when there are fewer sub-vectors).
    seed : int, default=0
    """

    def __init__(self, target_tr: float = 2.0, patch_length: int = 6, clip: float = 5.0,
                 n_tokens: int = 16, sub_dim: int = 2, codebook_size: int = 1024,
                 seed: int = 0) -> None:
        self.target_tr, self.patch_length, self.clip = target_tr, patch_length, clip
        self.n_tokens, self.sub_dim = n_tokens, sub_dim
        self.codebook_size, self.seed = codebook_size, seed
        self.pca: PCA | None = None
        self.kmeans: KMeans | None = None

    def prepare(self, run: ParcelRun) -> PreparedRun:
        """Windows of a run, in this tokenizer's format."""
        return prepare_run(run, self.target_tr, self.patch_length, self.clip)

    def fit(self, runs: Sequence[ParcelRun]) -> PCAProductQuantizer:
        """Fit PCA and the codebook on every window of ``runs`` (one atlas)."""
        return self.fit_prepared([self.prepare(run) for run in runs])

    def fit_prepared(self, prepared: Sequence[PreparedRun]) -> PCAProductQuantizer:
        """Fit PCA and the codebook on every window of prepared runs (one atlas)."""
        windows = np.concatenate([self._flatten(run) for run in prepared])
        n_components = min(self.n_tokens * self.sub_dim, *windows.shape)
        self.pca = PCA(n_components=n_components, random_state=self.seed).fit(windows)
        pieces = self._pieces(self.pca.transform(windows))
        self.kmeans = KMeans(n_clusters=min(self.codebook_size, len(pieces)), n_init=1,
                             random_state=self.seed).fit(pieces)
        return self

    def _flatten(self, prepared: PreparedRun) -> np.ndarray:
        return prepared.patches.reshape(prepared.n_windows, -1)

    def _pieces(self, scores: np.ndarray) -> np.ndarray:
        """``(n_windows, n_components)`` scores as ``(n_windows * n_tokens, sub_dim)``
        sub-vectors (zero-padded when PCA kept fewer components)."""
        padded = np.zeros((len(scores), self.n_tokens * self.sub_dim))
        padded[:, :scores.shape[1]] = scores
        return padded.reshape(-1, self.sub_dim)

    def _fitted(self) -> tuple[PCA, KMeans]:
        if self.pca is None or self.kmeans is None:
            raise RuntimeError("Fit the PCA product quantiser first (fit(runs)).")
        return self.pca, self.kmeans

    def encode_prepared(self, prepared: PreparedRun) -> tuple[np.ndarray, np.ndarray]:
        """PCA scores ``(n_windows, n_components)`` and token ids ``(n_windows, n_tokens)``."""
        pca, kmeans = self._fitted()
        flat = self._flatten(prepared)
        if flat.shape[1] != pca.n_features_in_:
            raise ValueError(f"The run has {prepared.patches.shape[1]} parcels; this PCA "
                             "baseline was fitted on another atlas.")
        scores = pca.transform(flat).astype(np.float32)
        token_ids = kmeans.predict(self._pieces(scores)).astype(np.int64)
        return scores, token_ids.reshape(len(flat), self.n_tokens)

    def tokenize(self, run: ParcelRun) -> TokenizedRun:
        """Tokens of every window of a run, with onsets and their PCA sub-vectors."""
        prepared = self.prepare(run)
        scores, token_ids = self.encode_prepared(prepared)
        return TokenizedRun(token_ids=token_ids, onsets=prepared.onsets,
                            window_duration=prepared.window_duration,
                            embeddings=self._pieces(scores).reshape(
                                prepared.n_windows, self.n_tokens, self.sub_dim)
                            .astype(np.float32))

    def reconstruct(self, prepared: PreparedRun) -> np.ndarray:
        """Patches decoded from the tokens: the centroids, back through the PCA."""
        pca, kmeans = self._fitted()
        _, token_ids = self.encode_prepared(prepared)
        scores = kmeans.cluster_centers_[token_ids].reshape(prepared.n_windows, -1)
        flat = pca.inverse_transform(scores[:, :pca.n_components_])
        return flat.reshape(prepared.patches.shape)
