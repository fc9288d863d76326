"""Imaging features of one run: connectivity, graph, gradients, ICA, amplitude and motion.

Every feature is a float under a key ``"<kind>.<argument>"``; pairs of networks are joined by
``~`` in the canonical order (:data:`~fmrilm_bids.fmrilm.descriptors.networks.NETWORKS`, then by
name). The kinds:

``fc.<A>~<B>``
    Mean Pearson correlation between the parcels of networks A and B (within a network: its
    distinct parcel pairs), averaged in Fisher-z space and transformed back to r.
``graph.global_efficiency``, ``graph.modularity``, ``graph.clustering``
    On the graph that keeps the strongest ``density`` share of positive correlations
    (weights = r): binary global efficiency (mean inverse shortest path), modularity of the
    Louvain partition (weighted, seeded), mean weighted clustering (Onnela et al., 2005).
``strength.<A>``
    Mean node strength of network A in that graph, divided by ``n_parcels - 1``.
``gradient<k>.<A>``
    Mean position of network A on functional gradient k: diffusion-map embedding of the
    connectivity (each row keeps its top ``1 - gradient_sparsity`` share, normalised-angle
    affinity, ``alpha = 0.5``), each gradient standardised over parcels, then rotated onto a group
    template by orthogonal Procrustes (see :func:`align_gradients`).
``ica.top_share``, ``ica.low_high_ratio``, ``ica.autocorrelation``
    FastICA of the parcel signals: signal-variance share of the strongest component, median
    over components of the low (0.01-0.08 Hz) to high (above 0.08 Hz) power ratio, median
    lag-1 autocorrelation. The strongest component's network is an annotation.
``amplitude.<A>``, ``falff.<A>``
    Mean parcel standard deviation, and mean fractional ALFF (amplitude spectrum in
    0.01-0.08 Hz over the whole spectrum), of network A.
``motion.mean_fd``, ``motion.max_fd``, ``motion.high_fd_fraction``
    Framewise displacement (mm) from the confounds; the share of volumes above
    ``fd_threshold``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import networkx as nx
import numpy as np
import pandas as pd
from scipy.linalg import orthogonal_procrustes
from scipy.sparse.csgraph import shortest_path
from sklearn.decomposition import FastICA
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits

from fmrilm_bids.config import settings_from_dict
from fmrilm_bids.fmrilm.descriptors.networks import NETWORKS

#: Band of the low-frequency fluctuations (Hz), for fALFF and the ICA spectral ratio.
LOW_BAND = (0.01, 0.08)


@dataclass(frozen=True)
class FeatureSettings:
    """How the features are computed (recorded in the descriptor metadata).

    Attributes
    ----------
    density : float
        Share of positive parcel pairs kept as graph edges.
    n_gradients : int
        Functional gradients described.
    gradient_sparsity : float
        Share of each connectivity row zeroed before the diffusion-map affinity.
    n_ica_components : int
        FastICA components (fewer when the run is short or has few parcels).
    fd_threshold : float
        Framewise displacement (mm) above which a volume counts as high-motion.
    seed : int
        Seed of Louvain and FastICA.
    """

    density: float = 0.15
    n_gradients: int = 2
    gradient_sparsity: float = 0.9
    n_ica_components: int = 8
    fd_threshold: float = 0.5
    seed: int = 0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, object]) -> FeatureSettings:
        """Settings written by :meth:`to_dict` (unknown keys refused)."""
        return settings_from_dict(cls, values, "feature")


@dataclass
class RunFeatures:
    """The features of one run.

    Attributes
    ----------
    values : dict[str, float]
        Feature key -> value (see the module docstring).
    annotations : dict[str, str]
        Facts that are names, not numbers (``ica.top_network``).
    connectivity : ndarray of shape (n_parcels, n_parcels)
        Parcel correlation matrix (input of the group gradient template).
    gradients : ndarray of shape (n_parcels, n_gradients)
        Standardised gradients, aligned to the template when one was given.
    duration : float
        Run length (s).
    networks : list of str
        Network of each parcel.
    """

    values: dict[str, float]
    annotations: dict[str, str]
    connectivity: np.ndarray = field(repr=False)
    gradients: np.ndarray = field(repr=False)
    duration: float
    networks: list[str] = field(repr=False)


def network_order(networks: Sequence[str]) -> list[str]:
    """Networks present, canonical ones first (in :data:`NETWORKS` order), then by name."""
    present = set(networks)
    return [n for n in NETWORKS if n in present] + sorted(present - set(NETWORKS))


def pair_key(first: str, second: str, order: Sequence[str]) -> str:
    """Feature key of a network pair, in ``order`` (``fc.Default~Default`` for within)."""
    a, b = sorted((first, second), key=list(order).index)
    return f"fc.{a}~{b}"


def correlation_matrix(timeseries: np.ndarray) -> np.ndarray:
    """Pearson correlation of the columns (time points in rows)."""
    centred = timeseries - timeseries.mean(axis=0)
    norms = np.linalg.norm(centred, axis=0)
    fc = (centred.T @ centred) / np.outer(norms, norms)
    return np.clip(fc, -1.0, 1.0)


def network_pair_connectivity(fc: np.ndarray, networks: Sequence[str]) -> dict[str, float]:
    """``fc.<A>~<B>``: mean Fisher-z correlation of each network pair, back to r."""
    labels = np.asarray(networks)
    order = network_order(networks)
    z = np.arctanh(np.clip(fc, -0.999999, 0.999999))
    values = {}
    for i, first in enumerate(order):
        rows = labels == first
        for second in order[i:]:
            block = z[np.ix_(rows, labels == second)]
            if first == second:
                block = block[~np.eye(block.shape[0], dtype=bool)]
            if block.size:
                values[pair_key(first, second, order)] = float(np.tanh(block.mean()))
    return values


def threshold_graph(fc: np.ndarray, density: float) -> np.ndarray:
    """Weighted adjacency keeping the strongest ``density`` share of positive pairs."""
    n = fc.shape[0]
    upper = np.triu_indices(n, k=1)
    weights = fc[upper]
    n_edges = round(density * weights.size)
    keep = np.argsort(-weights, kind="stable")[:n_edges]
    keep = keep[weights[keep] > 0]
    adjacency = np.zeros_like(fc)
    adjacency[upper[0][keep], upper[1][keep]] = weights[keep]
    return adjacency + adjacency.T


def weighted_clustering(adjacency: np.ndarray) -> np.ndarray:
    """Weighted clustering coefficient of each node (Onnela et al., 2005).

    ``C_i = sum_jk (w_ij w_jk w_ki)^(1/3) / (k_i (k_i - 1))`` with weights divided by the
    largest one; 0 for nodes with fewer than two neighbours (as in networkx).
    """
    cube_root = np.cbrt(adjacency / adjacency.max())
    triangles = np.einsum("ij,jk,ki->i", cube_root, cube_root, cube_root)
    degree = (adjacency > 0).sum(axis=1)
    pairs = degree * (degree - 1)
    return np.divide(triangles, pairs, out=np.zeros_like(triangles), where=pairs > 0)


def graph_metrics(fc: np.ndarray, networks: Sequence[str], density: float,
                  seed: int) -> dict[str, float]:
    """Global efficiency, modularity, clustering and per-network strength of the graph."""

    adjacency = threshold_graph(fc, density)
    n = adjacency.shape[0]
    distances = shortest_path(adjacency > 0, unweighted=True, directed=False)
    off_diagonal = ~np.eye(n, dtype=bool)
    values = {"graph.global_efficiency": float((1.0 / distances[off_diagonal]).mean())}
    graph = nx.from_numpy_array(adjacency)
    communities = nx.community.louvain_communities(graph, weight="weight", seed=seed)
    values["graph.modularity"] = float(nx.community.modularity(graph, communities,
                                                               weight="weight"))
    values["graph.clustering"] = float(weighted_clustering(adjacency).mean())
    strength = adjacency.sum(axis=1) / (n - 1)
    labels = np.asarray(networks)
    for network in network_order(networks):
        values[f"strength.{network}"] = float(strength[labels == network].mean())
    return values


def diffusion_map(fc: np.ndarray, n_components: int, sparsity: float = 0.9,
                  alpha: float = 0.5) -> np.ndarray:
    """Diffusion-map embedding of a connectivity matrix (Margulies et al., 2016).

    Parameters
    ----------
    fc : ndarray of shape (n_parcels, n_parcels)
    n_components : int
        Gradients returned (the trivial constant one is dropped).
    sparsity : float, default=0.9
        Share of each row set to zero (its weakest entries) before the affinity
        (``1 - arccos(cosine) / pi`` between rows, as BrainSpace's normalised angle).
    alpha : float, default=0.5
        Anisotropic diffusion parameter (0.5: Fokker-Planck normalisation).

    Returns
    -------
    ndarray of shape (n_parcels, n_components)
        Gradients scaled by ``lambda / (1 - lambda)`` (automatic diffusion time), in
        decreasing order of eigenvalue.
    """
    rows = fc.copy()
    np.fill_diagonal(rows, 1.0)
    cutoff = np.quantile(rows, sparsity, axis=1, keepdims=True)
    rows[rows < cutoff] = 0.0
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    cosine = np.clip((rows / norms) @ (rows / norms).T, -1.0, 1.0)
    # Normalised angle: positive for any pair short of opposite rows, so the graph is
    # connected and the trivial eigenvector is unique (a thresholded cosine can split it).
    affinity = 1.0 - np.arccos(cosine) / np.pi
    degree = affinity.sum(axis=1) ** alpha
    kernel = affinity / np.outer(degree, degree)
    sqrt_degree = np.sqrt(kernel.sum(axis=1))
    symmetric = kernel / np.outer(sqrt_degree, sqrt_degree)
    eigenvalues, eigenvectors = np.linalg.eigh(symmetric)
    order = np.argsort(-eigenvalues)[: n_components + 1]
    eigenvalues, eigenvectors = eigenvalues[order], eigenvectors[:, order]
    psi = eigenvectors / sqrt_degree[:, None]
    psi = psi[:, 1:] / psi[:, [0]]
    lambdas = eigenvalues[1:]
    return psi * (lambdas / (1.0 - lambdas))


def standardise_columns(values: np.ndarray) -> np.ndarray:
    """Zero mean, unit standard deviation per column."""
    return (values - values.mean(axis=0)) / values.std(axis=0)


def align_gradients(gradients: np.ndarray, template: np.ndarray | None) -> np.ndarray:
    """Standardise gradients and rotate them onto a template (orthogonal Procrustes).

    Without a template each gradient's sign is fixed so that its largest absolute entry
    is positive.
    """
    standard = standardise_columns(gradients)
    if template is None:
        signs = np.sign(standard[np.abs(standard).argmax(axis=0), np.arange(standard.shape[1])])
        return standard * signs
    if template.shape != gradients.shape:
        raise ValueError(f"The gradient template has shape {template.shape}, the run's "
                         f"gradients {gradients.shape}: they need the same parcels.")
    rotation, _ = orthogonal_procrustes(standard, standardise_columns(template))
    return standard @ rotation


def gradient_positions(gradients: np.ndarray, networks: Sequence[str]) -> dict[str, float]:
    """``gradient<k>.<A>``: mean position of each network on each gradient."""
    labels = np.asarray(networks)
    return {f"gradient{k + 1}.{network}": float(gradients[labels == network, k].mean())
            for k in range(gradients.shape[1]) for network in network_order(networks)}


def band_power_ratio(signals: np.ndarray, tr: float) -> np.ndarray:
    """Power in :data:`LOW_BAND` over power above it, per column."""
    frequencies = np.fft.rfftfreq(signals.shape[0], d=tr)
    power = np.abs(np.fft.rfft(signals - signals.mean(axis=0), axis=0)) ** 2
    low = (frequencies >= LOW_BAND[0]) & (frequencies <= LOW_BAND[1])
    high = frequencies > LOW_BAND[1]
    return power[low].sum(axis=0) / np.clip(power[high].sum(axis=0), 1e-12, None)


def lag1_autocorrelation(signals: np.ndarray) -> np.ndarray:
    """Lag-1 autocorrelation of each column."""
    centred = signals - signals.mean(axis=0)
    return (centred[1:] * centred[:-1]).sum(axis=0) / (centred**2).sum(axis=0)


def ica_features(timeseries: np.ndarray, tr: float, networks: Sequence[str],
                 n_components: int, seed: int) -> tuple[dict[str, float], dict[str, str]]:
    """Summary of a FastICA decomposition (see the module docstring)."""

    n_components = max(1, min(n_components, timeseries.shape[1], timeseries.shape[0] // 4))
    ica = FastICA(n_components=n_components, whiten="unit-variance", max_iter=400, tol=1e-3,
                  random_state=seed)
    # One BLAS thread: on matrices this small, thread start-up costs more than it saves
    # (and it stalls FastICA's many small products on a busy machine).
    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
        # A component that has not fully converged is still a valid spatial summary.
        warnings.simplefilter("ignore", ConvergenceWarning)
        sources = ica.fit_transform(timeseries)
    mixing = ica.mixing_
    explained = (mixing**2).sum(axis=0) * sources.var(axis=0)
    total = timeseries.var(axis=0).sum()
    top = int(np.argmax(explained))
    labels = np.asarray(networks)
    order = network_order(networks)
    loading = [float((mixing[labels == network, top] ** 2).mean()) for network in order]
    values = {
        "ica.top_share": float(explained[top] / total),
        "ica.low_high_ratio": float(np.median(band_power_ratio(sources, tr))),
        "ica.autocorrelation": float(np.median(lag1_autocorrelation(sources))),
    }
    return values, {"ica.top_network": order[int(np.argmax(loading))]}


def amplitude_features(timeseries: np.ndarray, tr: float,
                       networks: Sequence[str]) -> dict[str, float]:
    """``amplitude.<A>`` (mean parcel SD) and ``falff.<A>`` per network."""
    frequencies = np.fft.rfftfreq(timeseries.shape[0], d=tr)
    spectrum = np.abs(np.fft.rfft(timeseries - timeseries.mean(axis=0), axis=0))
    low = (frequencies >= LOW_BAND[0]) & (frequencies <= LOW_BAND[1])
    falff = spectrum[low].sum(axis=0) / spectrum[1:].sum(axis=0)
    sd = timeseries.std(axis=0)
    labels = np.asarray(networks)
    values = {}
    for network in network_order(networks):
        values[f"amplitude.{network}"] = float(sd[labels == network].mean())
        values[f"falff.{network}"] = float(falff[labels == network].mean())
    return values


def motion_features(confounds: pd.DataFrame, fd_threshold: float) -> dict[str, float]:
    """Mean and maximum framewise displacement, share of volumes above the threshold."""
    if "framewise_displacement" not in confounds:
        raise ValueError("The confounds lack a 'framewise_displacement' column; pass the "
                         "confounds of the preprocessed run (or none).")
    fd = pd.to_numeric(confounds["framewise_displacement"], errors="coerce").to_numpy()
    fd = fd[np.isfinite(fd)]
    if not fd.size:
        return {}
    return {"motion.mean_fd": float(fd.mean()), "motion.max_fd": float(fd.max()),
            "motion.high_fd_fraction": float((fd > fd_threshold).mean())}


def as_array(timeseries: pd.DataFrame | np.ndarray) -> np.ndarray:
    """Parcel time series as a float array, checked (2-D, finite, varying parcels)."""
    array = np.asarray(timeseries, dtype=float)
    if array.ndim != 2:
        raise ValueError(f"Parcel time series must be 2-D (time x parcels), not {array.shape}.")
    if not np.isfinite(array).all():
        raise ValueError("The parcel time series contain NaN or infinite values; fill or "
                         "drop those parcels first.")
    flat = np.flatnonzero(array.std(axis=0) == 0)
    if flat.size:
        raise ValueError(f"Parcels {flat[:5].tolist()} are constant over the run (no signal);"
                         " drop them (and their network-table rows) first.")
    return array


def compute_run_features(timeseries: pd.DataFrame | np.ndarray, tr: float,
                         networks: Sequence[str], confounds: pd.DataFrame | None = None,
                         gradient_template: np.ndarray | None = None,
                         settings: FeatureSettings = FeatureSettings()) -> RunFeatures:
    """Compute every feature of one run.

    Parameters
    ----------
    timeseries : DataFrame or ndarray of shape (n_timepoints, n_parcels)
        Denoised parcel signals.
    tr : float
        Repetition time (s).
    networks : sequence of str
        Network of each parcel (column).
    confounds : DataFrame, optional
        With a ``framewise_displacement`` column; adds the motion features.
    gradient_template : ndarray of shape (n_parcels, n_gradients), optional
        Group gradients to align to (:func:`group_gradient_template`).
    settings : FeatureSettings

    Returns
    -------
    RunFeatures
    """
    signals = as_array(timeseries)
    if len(networks) != signals.shape[1]:
        raise ValueError(f"{len(networks)} network labels for {signals.shape[1]} parcels.")
    if signals.shape[0] < 10:
        raise ValueError(f"A run needs at least 10 time points for its features, not "
                         f"{signals.shape[0]}.")
    networks = list(networks)
    fc = correlation_matrix(signals)
    values = network_pair_connectivity(fc, networks)
    values |= graph_metrics(fc, networks, settings.density, settings.seed)
    gradients = align_gradients(
        diffusion_map(fc, settings.n_gradients, settings.gradient_sparsity), gradient_template)
    values |= gradient_positions(gradients, networks)
    ica_values, annotations = ica_features(signals, tr, networks, settings.n_ica_components,
                                           settings.seed)
    values |= ica_values
    values |= amplitude_features(signals, tr, networks)
    if confounds is not None:
        values |= motion_features(confounds, settings.fd_threshold)
    return RunFeatures(values=values, annotations=annotations, connectivity=fc,
                       gradients=gradients, duration=signals.shape[0] * tr, networks=networks)


def group_connectivity(timeseries: Sequence[pd.DataFrame | np.ndarray]) -> np.ndarray:
    """Cohort connectivity: parcel correlations averaged in Fisher-z space, back to r."""
    stacked = [np.arctanh(np.clip(correlation_matrix(as_array(ts)), -0.999999, 0.999999))
               for ts in timeseries]
    if len({fc.shape for fc in stacked}) != 1:
        raise ValueError("Group connectivity needs runs with the same parcels.")
    return np.tanh(np.mean(stacked, axis=0))


def group_gradient_template(timeseries: Sequence[pd.DataFrame | np.ndarray],
                            settings: FeatureSettings = FeatureSettings()) -> np.ndarray:
    """Gradients of the cohort's connectivity (:func:`group_connectivity`), the alignment
    target.

    Returns
    -------
    ndarray of shape (n_parcels, n_gradients)
        Standardised, sign-fixed gradients.
    """
    return align_gradients(diffusion_map(group_connectivity(timeseries), settings.n_gradients,
                                         settings.gradient_sparsity), None)
