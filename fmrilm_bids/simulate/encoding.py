"""From a caption's meaning to parcel response amplitudes: a fixed linear encoding model.

The amplitude (peak % signal change) of parcel ``p`` for an event whose caption has the
sentence embedding ``e`` (all-MiniLM-L6-v2, unit length) is::

    a_p = intercept_p + W_p . e + trial noise

``W`` concentrates on plausible cortex: each region's weight vector points at the mean
embedding of the categories it prefers (:data:`~fmrilm_bids.simulate.regions.CATEGORY_REGIONS`)
plus a random semantic tuning, and is scaled so that over the caption pool its response
varies by ``selectivity_p * semantic_amplitude`` (standard deviation). Selectivity is 1 for
category-selective regions, 0.6 for early visual cortex, 0.5 for the semantic system and 0.1
elsewhere. The intercept puts the pool-mean response at ``visual_amplitude`` in visual cortex,
``semantic_amplitude`` in other category-selective regions (so their non-preferred categories
still evoke a small positive response), ``default_deactivation`` in the default-mode network
and 0 elsewhere.

Early visual cortex has no preferred category, so its direction is the random tuning alone,
spread over all 384 dimensions. That is the hardest case for a caption-based encoding model,
on purpose: the truth stays linear in the captions' embeddings (learnable), but a new
caption's response lies partly outside the span of the captions a model was trained on, and
only many distinct captions close that gap (``benchmarks/bench_encoding.py``, case
``encoding-curve``: held-out r / noise ceiling about 0.4-0.7 from the simulator's 120
captions, 0.8 or more from about 500). Real early visual cortex is driven by low-level image
properties that captions carry only coarsely; modelling that would add stimulus-specific
responses that repeat (and so raise the noise ceiling) but that no caption model can
predict, lowering r / ceiling at any amount of data, so it would measure the features'
blind spot rather than the estimator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fmrilm_bids.simulate.regions import (
    SEMANTIC_REGIONS,
    VISUAL_REGIONS,
    category_preferences,
    region_membership,
)


@dataclass(frozen=True)
class EncodingModel:
    """A linear map from sentence embeddings to parcel amplitudes (% signal change).

    Attributes
    ----------
    weights : ndarray of shape (n_parcels, embedding_dim)
    intercept : ndarray of shape (n_parcels,)
    selectivity : ndarray of shape (n_parcels,)
    """

    weights: np.ndarray = field(repr=False)
    intercept: np.ndarray = field(repr=False)
    selectivity: np.ndarray = field(repr=False)

    def amplitudes(self, embeddings: np.ndarray) -> np.ndarray:
        """Noise-free amplitudes, shape (n_events, n_parcels)."""
        return self.intercept + np.asarray(embeddings, dtype=float) @ self.weights.T


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def build_encoding_model(names: Sequence[str], networks: Sequence[str],
                         embeddings: np.ndarray, categories: Sequence[str],
                         rng: np.random.Generator, semantic_amplitude: float = 0.8,
                         visual_amplitude: float = 1.0,
                         default_deactivation: float = -0.3) -> EncodingModel:
    """Draw the encoding model for the parcels ``names`` (see the module docstring).

    Parameters
    ----------
    names, networks : sequence of str
        Region name and network of each parcel.
    embeddings : ndarray of shape (n_captions, dim)
        Embeddings of the caption pool.
    categories : sequence of str
        Category of each caption of the pool.
    rng : numpy.random.Generator
    semantic_amplitude, visual_amplitude, default_deactivation : float
        % signal change.
    """
    embeddings = np.asarray(embeddings, dtype=float)
    categories = np.asarray(categories)
    category_names = list(dict.fromkeys(categories.tolist()))
    centre = embeddings.mean(axis=0)
    centroids = _unit(np.stack([embeddings[categories == c].mean(axis=0) - centre
                                for c in category_names]))
    prefers = category_preferences(names, category_names).astype(float)
    visual = region_membership(names, VISUAL_REGIONS)
    semantic = region_membership(names, SEMANTIC_REGIONS)
    default = np.asarray(networks) == "Default"

    selectivity = np.select([prefers.any(axis=1), visual, semantic], [1.0, 0.6, 0.5], 0.1)
    tuning = _unit(rng.standard_normal((len(names), embeddings.shape[1])))
    direction = 2.0 * prefers @ centroids + tuning
    spread = ((embeddings - centre) @ direction.T).std(axis=0)
    weights = direction * (selectivity * semantic_amplitude / spread)[:, None]
    baseline = np.select([visual, prefers.any(axis=1), default],
                         [visual_amplitude, semantic_amplitude, default_deactivation], 0.0)
    intercept = baseline - weights @ centre
    return EncodingModel(weights=weights, intercept=intercept, selectivity=selectivity)


def voxel_responses(model: EncodingModel, embeddings: np.ndarray, rng: np.random.Generator,
                    voxels_per_region: int = 20, trial_noise: float = 0.1,
                    voxel_noise: float = 1.0, gain_sd: float = 0.5,
                    misalignment: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Single-trial responses of template voxels to captions, through ``model``.

    Voxel ``v`` belongs to region ``v // voxels_per_region`` of the template; in this
    subject a share ``misalignment`` of the voxels takes a random region's signal instead
    (imperfect alignment to the template). A voxel's response is its region's amplitude
    (with trial noise ``trial_noise``, shared by the region) times the voxel's gain
    (log-normal, ``gain_sd``), plus independent noise ``voxel_noise`` (% signal change).

    Returns
    -------
    responses : ndarray of shape (n_events, n_regions * voxels_per_region)
    regions : ndarray of int
        The region each voxel carries in this subject.
    """
    amplitudes = model.amplitudes(embeddings)
    amplitudes = amplitudes + rng.normal(0.0, trial_noise, amplitudes.shape)
    regions = np.repeat(np.arange(amplitudes.shape[1]), voxels_per_region)
    moved = rng.random(len(regions)) < misalignment
    regions[moved] = rng.integers(0, amplitudes.shape[1], int(moved.sum()))
    gains = np.exp(rng.normal(0.0, gain_sd, len(regions)))
    noise = rng.normal(0.0, voxel_noise, (len(amplitudes), len(regions)))
    return amplitudes[:, regions] * gains + noise, regions
