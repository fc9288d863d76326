"""Baseline tokenizer: PCA of the flattened window patches, then k-means; the same API.

Windows are prepared exactly as for :class:`~.model.NeuralTokenizer` (common TR, robust
normalisation, patches), flattened to ``n_parcels * patch_length`` values, reduced by PCA
and clustered by k-means; a window's token is its nearest centroid. Unlike the neural
tokenizer it needs the parcels it was fitted on (one atlas), and nothing aligns it to text.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA

from fmrilm_bids.fmrilm.tokenizer.runs import ParcelRun, PreparedRun, TokenizedRun, prepare_run


class PCAKMeansTokenizer:
    """PCA + k-means tokenizer.

    Parameters
    ----------
    target_tr, patch_length, clip
        Window format (as :class:`~.model.TokenizerConfig`).
    n_components : int, default=32
        PCA components kept.
    codebook_size : int, default=256
        k-means clusters (fewer when there are fewer training windows).
    seed : int, default=0
    """

    def __init__(self, target_tr: float = 2.0, patch_length: int = 6, clip: float = 5.0,
                 n_components: int = 32, codebook_size: int = 256, seed: int = 0) -> None:
        self.target_tr, self.patch_length, self.clip = target_tr, patch_length, clip
        self.n_components, self.codebook_size, self.seed = n_components, codebook_size, seed
        self.pca: PCA | None = None
        self.kmeans: KMeans | None = None

    def prepare(self, run: ParcelRun) -> PreparedRun:
        """Windows of a run, in this tokenizer's format."""
        return prepare_run(run, self.target_tr, self.patch_length, self.clip)

    def fit(self, runs: Sequence[ParcelRun]) -> PCAKMeansTokenizer:
        """Fit PCA and k-means on every window of ``runs`` (one atlas)."""
        windows = np.concatenate([self._flatten(self.prepare(run)) for run in runs])
        n_components = min(self.n_components, *windows.shape)
        self.pca = PCA(n_components=n_components, random_state=self.seed).fit(windows)
        scores = self.pca.transform(windows)
        self.kmeans = KMeans(n_clusters=min(self.codebook_size, len(windows)), n_init=3,
                             random_state=self.seed).fit(scores)
        return self

    def _flatten(self, prepared: PreparedRun) -> np.ndarray:
        return prepared.patches.reshape(prepared.n_windows, -1)

    def _fitted(self) -> tuple[PCA, KMeans]:
        if self.pca is None or self.kmeans is None:
            raise RuntimeError("Fit the PCA + k-means tokenizer first (fit(runs)).")
        return self.pca, self.kmeans

    def encode_prepared(self, prepared: PreparedRun) -> tuple[np.ndarray, np.ndarray]:
        """PCA scores and token ids of a prepared run."""
        pca, kmeans = self._fitted()
        flat = self._flatten(prepared)
        if flat.shape[1] != pca.n_features_in_:
            raise ValueError(f"The run has {prepared.patches.shape[1]} parcels; this PCA + "
                             "k-means tokenizer was fitted on another atlas.")
        scores = pca.transform(flat).astype(np.float32)
        return scores, kmeans.predict(scores).astype(np.int64)

    def tokenize(self, run: ParcelRun) -> TokenizedRun:
        """Token per window of a run, with onsets and the PCA scores as embeddings."""
        prepared = self.prepare(run)
        scores, token_ids = self.encode_prepared(prepared)
        return TokenizedRun(token_ids=token_ids, onsets=prepared.onsets,
                            window_duration=prepared.window_duration, embeddings=scores)

    def reconstruct(self, prepared: PreparedRun) -> np.ndarray:
        """Patches decoded from the tokens: each window's centroid, back through the PCA."""
        pca, kmeans = self._fitted()
        _, token_ids = self.encode_prepared(prepared)
        flat = pca.inverse_transform(kmeans.cluster_centers_[token_ids])
        return flat.reshape(prepared.patches.shape)
