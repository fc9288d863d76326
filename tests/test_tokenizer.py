"""Neural tokenizer: data preparation, quantiser, training, checkpoints, baseline, metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fmrilm_bids.fmrilm.descriptors import NETWORKS, load_network_table, window_bounds, window_facts
from fmrilm_bids.fmrilm.descriptors.windows import render_windows
from fmrilm_bids.fmrilm.tokenizer import (
    NeuralTokenizer,
    ParcelRun,
    PCAProductQuantizer,
    TokenizerConfig,
    TrainConfig,
    TrainingResult,
    codebook_usage,
    prepare_run,
    prepare_runs,
    reconstruction_r2,
    retrieval_top1,
    token_text_means,
    train_tokenizer,
)
from fmrilm_bids.fmrilm.tokenizer import runs as runs_module
from fmrilm_bids.fmrilm.tokenizer.quantizer import VectorQuantizer
from fmrilm_bids.fmrilm.tokenizer.runs import (
    IDENTITY_DIM,
    POSITION_DIM,
    coordinate_features,
    parcel_identity,
    resample_to_tr,
    robust_normalise,
)
from fmrilm_bids.fmrilm.tokenizer.train import MODEL_CARD, STATE_JSON
from fmrilm_bids.resources.text_encoder import EMBEDDING_DIM, load_text_encoder
from fmrilm_bids.simulate.signals import (
    bandlimited_noise,
    network_time_courses,
    parcel_fluctuations,
)
from fmrilm_bids.utils.devices import autocast, resolve_device, set_precision


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models: one thread avoids oversubscribing shared CI cores (restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

CONFIG = TokenizerConfig(target_tr=2.0, patch_length=4, parcel_dim=16, n_groups=4,
                         group_pools=4, d_model=32, code_dim=16, codebook_size=32, n_basis=4,
                         llm_hidden=48, text_dim=EMBEDDING_DIM)
TRAIN = TrainConfig(steps=80, batch_size=8, sequence_windows=8, learning_rate=1e-2,
                    min_learning_rate=1e-3, warmup_steps=10, eval_interval=40,
                    checkpoint_interval=40, alignment_weight=0.5)


def embed_texts(texts: list[str]) -> torch.Tensor:
    """Mean of the all-MiniLM-L6-v2 input (word-piece) embeddings of each text.

    The recipe stage 2 uses with the language model's own embedding matrix; a real text
    embedding that needs no transformer pass, so tests stay fast.
    """
    tokenizer, model = load_text_encoder()
    batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    mask = batch["attention_mask"][..., None].float()
    with torch.no_grad():
        vectors = model.embeddings.word_embeddings(batch["input_ids"])
    return (vectors * mask).sum(dim=1) / mask.sum(dim=1)


def centres(table: pd.DataFrame) -> np.ndarray:
    """MNI centre of each parcel of ``table`` (bundled atlas AAL or AAL3)."""
    from fmrilm_bids.resources.atlases import parcel_centroids

    atlas = "AAL3" if len(table) > 120 else "AAL"
    found = CENTRES.setdefault(atlas, parcel_centroids(atlas))
    return np.array([found.get(name, (0.0, 0.0, 0.0)) for name in table["name"]])


CENTRES: dict[str, dict[str, tuple[float, float, float]]] = {}


def synthetic_run(table: pd.DataFrame, subject: int, tr: float = 2.0,
                  n_volumes: int = 120) -> ParcelRun:
    """Network-driven parcel signals (the simulator's signal model) with window texts and the
    parcels' positions."""
    rng = np.random.default_rng(subject)
    order = list(NETWORKS)
    assignment = np.array([order.index(n) for n in table["network"]])
    latent = network_time_courses(n_volumes, tr, np.eye(len(order)), rng)
    signals = parcel_fluctuations(latent, assignment, np.full(len(table), 0.7),
                                  rng.uniform(0.5, 1.5, len(table)),
                                  bandlimited_noise(n_volumes, tr, len(table), rng))
    networks = table["network"].tolist()
    texts = render_windows(window_facts(signals, tr, networks, CONFIG.window_seconds))
    return ParcelRun(signals, tr, networks, subject=f"{subject:02d}", window_texts=texts,
                     coordinates=centres(table))


@pytest.fixture(scope="module")
def aal() -> pd.DataFrame:
    return load_network_table("AAL")


@pytest.fixture(scope="module")
def runs(aal: pd.DataFrame) -> tuple[list[ParcelRun], list[ParcelRun]]:
    """8 training subjects (two scanned at TR 1.5 s: 22 windows, not 30) and 2 held out."""
    train = [synthetic_run(aal, s, tr=1.5 if s in (3, 6) else 2.0) for s in range(8)]
    return train, [synthetic_run(aal, s) for s in (8, 9)]


@pytest.fixture(scope="module")
def trained(runs: tuple[list[ParcelRun], list[ParcelRun]],
            tmp_path_factory: pytest.TempPathFactory) -> TrainingResult:
    train, validation = runs
    return train_tokenizer(train, validation, tmp_path_factory.mktemp("tokenizer"), CONFIG,
                           TRAIN, text_embedder=embed_texts)


# Data preparation --------------------------------------------------------------------------

def test_resampling_keeps_a_slow_signal_and_the_window_grid() -> None:
    tr, target = 0.8, 2.0
    times = np.arange(300) * tr
    slow = np.sin(2 * np.pi * 0.05 * times)[:, None]
    resampled = resample_to_tr(slow, tr, target)
    expected = np.sin(2 * np.pi * 0.05 * np.arange(len(resampled)) * target)
    assert len(resampled) == int(300 * tr / target)
    assert np.abs(resampled[5:-5, 0] - expected[5:-5]).max() < 0.02
    for source_tr, n_volumes in ((0.8, 300), (1.5, 97), (2.5, 61), (2.0, 120)):
        signals = np.random.default_rng(0).standard_normal((n_volumes, 3))
        prepared = prepare_run(ParcelRun(signals, source_tr, ["Visual"] * 3), 2.0, 6, 5.0)
        assert prepared.onsets.tolist() == window_bounds(n_volumes, source_tr, 12.0).tolist()


def test_robust_normalisation_uses_median_and_iqr_and_clips() -> None:
    rng = np.random.default_rng(0)
    signals = rng.normal(100.0, 4.0, (4000, 2))
    signals[10, 0] = 1e6
    normalised = robust_normalise(signals, clip=5.0)
    assert np.median(normalised, axis=0) == pytest.approx([0, 0], abs=1e-9)
    assert normalised.std(axis=0) == pytest.approx([1, 1], abs=0.05)
    assert normalised[10, 0] == 5.0


def test_parcel_identity_is_network_one_hot_fingerprint_and_position(aal: pd.DataFrame) -> None:
    run = synthetic_run(aal, 0)
    identity = parcel_identity(run.timeseries, run.networks)
    index = list(NETWORKS).index
    n = len(NETWORKS)
    assert identity.shape == (len(aal), IDENTITY_DIM)
    assert 2 * n + POSITION_DIM == IDENTITY_DIM
    for row, network in zip(identity, run.networks, strict=True):
        assert row[:n].argmax() == index(network)
        assert row[n:2 * n].argmax() == index(network)
    assert not identity[:, 2 * n:].any()  # position unknown
    placed = parcel_identity(run.timeseries, run.networks, run.coordinates)
    np.testing.assert_array_equal(placed[:, :2 * n], identity[:, :2 * n])
    np.testing.assert_allclose(placed[:, 2 * n:2 * n + 3], run.coordinates / 100)
    # Position features: sines and cosines of the scaled coordinates at each frequency.
    features = coordinate_features(np.array([[50.0, -25.0, 0.0]]), 1)[0]
    np.testing.assert_allclose(features[:3], [0.5, -0.25, 0.0])
    phases = np.array([[0.5], [-0.25], [0.0]]) * np.pi * np.array([1, 2, 4])  # axis x frequency
    np.testing.assert_allclose(features[3:12], np.sin(phases).ravel(), atol=1e-12)
    np.testing.assert_allclose(features[12:], np.cos(phases).ravel(), atol=1e-12)
    with pytest.raises(ValueError, match="one \\(x, y, z\\) per parcel"):
        coordinate_features(np.zeros((3, 2)), 3)
    unknown = coordinate_features(np.array([[50.0, -25.0, 0.0], [np.nan] * 3]), 2)
    np.testing.assert_array_equal(unknown[0], features)
    assert not unknown[1].any()
    # Data-driven networks: cluster k in slot k - 1; no mixing, no unknown names.
    clusters = [f"cluster {index(network) + 1}" for network in run.networks]
    np.testing.assert_array_equal(parcel_identity(run.timeseries, clusters), identity)
    for wrong in (["cluster 11"] * len(aal), [*clusters[:-1], run.networks[-1]],
                  ["visual"] * len(aal)):
        with pytest.raises(ValueError, match="neither canonical"):
            parcel_identity(run.timeseries, wrong)


def reference_preparation(run: ParcelRun, target_tr: float, patch_length: int,
                          clip: float) -> tuple[np.ndarray, np.ndarray]:
    """Patches and identity of one run, straight from the module docstring (float64, from
    the resampled signals in float32)."""
    signals = resample_to_tr(np.asarray(run.timeseries, dtype=float), run.tr, target_tr)
    signals = signals.astype(np.float32).astype(float)
    q25, median, q75 = np.percentile(signals, [25, 50, 75], axis=0)
    scale = (q75 - q25) / 1.349
    scale[~(scale > 1e-12)] = 1.0
    normalised = np.clip((signals - median) / scale, -clip, clip)
    n_windows = len(normalised) // patch_length
    patches = normalised[:n_windows * patch_length].reshape(n_windows, patch_length, -1)

    def standardised(columns: np.ndarray) -> np.ndarray:
        sd = columns.std(axis=0)
        return np.where(sd > 1e-12, (columns - columns.mean(axis=0)) / np.where(sd > 0, sd, 1), 0)

    one_hot = np.array([[network == name for name in NETWORKS] for network in run.networks],
                       dtype=float)
    parcels = standardised(normalised)
    network_means = standardised(parcels @ one_hot / np.maximum(one_hot.sum(axis=0), 1))
    correlation = parcels.T @ network_means / len(normalised)
    position = (np.zeros((len(one_hot), POSITION_DIM)) if run.coordinates is None else
                coordinate_features(run.coordinates, len(one_hot)))
    return patches.transpose(0, 2, 1), np.concatenate([one_hot, correlation, position], axis=1)


@pytest.mark.parametrize(("chunk_values", "threads"),
                         [(runs_module.CHUNK_VALUES, 1), (runs_module.CHUNK_VALUES, 2),
                          (3000, 1), (3000, 3)])
def test_prepare_runs_matches_a_per_run_reference(aal: pd.DataFrame, chunk_values: int,
                                                  threads: int,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Batched preparation (runs grouped, a few at a time, rows sorted or partitioned, in
    threads) gives each run the patches and identity of the straightforward computation."""
    monkeypatch.setattr(runs_module, "CHUNK_VALUES", chunk_values)
    networks = aal["network"].tolist()
    rng = np.random.default_rng(3)
    runs = []
    for tr, n_volumes in ((2.0, 120), (2.0, 120), (1.5, 97), (2.0, 2100), (2.0, 120),
                          (0.8, 300), (2.0, 13)):
        signals = (rng.standard_normal((n_volumes, len(networks))).cumsum(axis=0) * 0.1
                   + rng.normal(100.0, 4.0, (n_volumes, len(networks))))
        signals[:, 0] = 7.0  # constant: identity correlations are 0
        signals[:, 1] = 1.0  # inter-quartile range 0 and one spike: scale 1, clipped
        signals[n_volumes // 2, 1] = 50.0
        coordinates = rng.uniform(-80, 80, (len(networks), 3)) if len(runs) % 2 else None
        runs.append(ParcelRun(signals, tr, networks, subject=f"{len(runs)}",
                              coordinates=coordinates))
    prepared = prepare_runs(runs, 2.0, 6, 5.0, threads=threads)
    assert [p.subject for p in prepared] == [r.subject for r in runs]
    for run, result in zip(runs, prepared, strict=True):
        patches, identity = reference_preparation(run, 2.0, 6, 5.0)
        assert result.patches.dtype == np.float32 and result.identity.dtype == np.float32
        np.testing.assert_allclose(result.patches, patches, atol=1e-5)
        np.testing.assert_allclose(result.identity, identity, atol=1e-5)
        assert np.abs(identity[0, len(NETWORKS):2 * len(NETWORKS)]).max() == 0.0
        assert result.patches[:, 1].max() == 5.0
        single = prepare_run(run, 2.0, 6, 5.0)
        np.testing.assert_array_equal(single.patches, result.patches)
        np.testing.assert_array_equal(single.identity, result.identity)


# Quantiser ---------------------------------------------------------------------------------

def test_quantizer_moves_codes_to_their_latents_and_restarts_dead_codes() -> None:
    torch.manual_seed(0)
    quantizer = VectorQuantizer(codebook_size=8, code_dim=4, decay=0.5, dead_after=3)
    centres = torch.nn.functional.normalize(torch.randn(4, 4), dim=-1)
    latents = torch.nn.functional.normalize(
        centres.repeat(64, 1) + 0.01 * torch.randn(256, 4), dim=-1)
    for _ in range(30):
        output = quantizer(latents)
    assert output.codes.shape == latents.shape and output.indices.shape == (256,)
    assert output.commitment < 1e-3
    # Every centre has a code on it; codes no latent chose were restarted on latents, so
    # none is left where it started.
    assert (quantizer.codebook @ centres.T).max(dim=0).values.min() > 0.999
    assert (quantizer.codebook @ centres.T).max(dim=1).values.min() > 0.99

    quantizer.eval()
    before = quantizer.codebook.clone()
    quantizer(torch.nn.functional.normalize(torch.randn(16, 4), dim=-1))
    assert torch.equal(before, quantizer.codebook)


def test_straight_through_gradient_reaches_the_latents() -> None:
    quantizer = VectorQuantizer(codebook_size=4, code_dim=3)
    latents = torch.nn.functional.normalize(torch.randn(5, 3), dim=-1).requires_grad_()
    quantizer(latents).codes.sum().backward()
    assert torch.equal(latents.grad, torch.ones(5, 3))


# Training ----------------------------------------------------------------------------------

def test_training_learns_without_codebook_collapse(trained) -> None:
    losses = [entry["loss"] for entry in trained.history if "loss" in entry]
    assert len(losses) == TRAIN.steps
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])
    metrics = trained.metrics
    assert metrics["reconstruction_r2"] > 0.0
    assert metrics["usage"] >= 0.5
    assert metrics["perplexity"] >= 8.0
    assert metrics["retrieval_chance"] == pytest.approx(1 / 60)  # 2 runs x 30 windows
    # The PCA baseline of the same size (4 tokens of 32 codes per window), held out too.
    assert -1.0 < metrics["pca_reconstruction_r2"] < 1.0 and 0 < metrics["pca_usage"] <= 1
    assert "alignment" in trained.history[0]
    card = (trained.out_dir / MODEL_CARD).read_text()
    assert "reconstruction_r2" in card and "torch" in card and "| train_windows | 224 |" in card
    assert "20 bits per window" in card  # 4 groups x log2(32)


def test_steps_follow_the_data_unless_given() -> None:
    config = TrainConfig(epochs=10, min_steps=5, batch_size=4, sequence_windows=5)
    assert config.for_windows(1000).steps == 500  # 10 passes of 1000 windows, 20 a step
    assert config.for_windows(6).steps == 5  # 3 from the epochs, but at least min_steps
    assert TrainConfig(steps=7).for_windows(1000).steps == 7
    with pytest.raises(ValueError, match="for_windows"):
        TrainConfig().learning_rate_at(0)


def test_tokenize_run_gives_a_token_per_group_and_window(trained, runs) -> None:
    _, validation = runs
    tokens = trained.model.tokenize(validation[0])
    frame = tokens.to_frame()
    assert list(frame.columns) == ["onset", "duration", *(f"token_{g}" for g in range(1, 5))]
    assert frame["onset"].tolist() == window_bounds(120, 2.0, 8.0).tolist()
    assert (frame["duration"] == 8.0).all()
    assert frame.filter(like="token_").stack().between(0, CONFIG.codebook_size - 1).all()
    assert tokens.token_ids.shape == (30, 4)
    # Features: the unit-norm latent, then the group's 4 pooled time courses of 4 samples.
    model = trained.model
    assert tokens.embeddings.shape == (30, 4, model.feature_dim) and model.feature_dim == 32
    latents = tokens.embeddings[..., :CONFIG.code_dim]
    np.testing.assert_allclose(np.linalg.norm(latents, axis=-1), 1.0, rtol=1e-5)
    prepared = prepare_run(validation[0], CONFIG.target_tr, CONFIG.patch_length, CONFIG.clip)
    with torch.no_grad():
        pooled = model.encoder.pooled(torch.from_numpy(np.ascontiguousarray(prepared.patches))
                                      [None], torch.from_numpy(prepared.identity)[None])[0]
    np.testing.assert_allclose(tokens.embeddings[..., CONFIG.code_dim:], pooled.numpy(),
                               atol=1e-5)
    # The groups read different parts of the brain: their tokens differ.
    assert len({tuple(column) for column in tokens.token_ids.T}) == 4


def test_encode_runs_matches_the_model_on_each_run(trained, runs) -> None:
    """Runs encoded in slices (long runs sliced, several atlases) give the latents and tokens
    of the model's forward pass on each whole run."""
    model = trained.model
    aal3 = load_network_table("AAL3")
    parcel_runs = [*runs[1], synthetic_run(aal3, 12, n_volumes=500),
                   synthetic_run(aal3, 13, n_volumes=28), runs[0][3]]
    prepared = prepare_runs(parcel_runs, CONFIG.target_tr, CONFIG.patch_length, CONFIG.clip)
    encoded = model.encode_runs(prepared, batch_windows=64)
    for run, (features, token_ids) in zip(prepared, encoded, strict=True):
        patches = torch.from_numpy(np.ascontiguousarray(run.patches))[None]
        identity = torch.from_numpy(run.identity)[None]
        with torch.no_grad():
            expected = model.encode(patches, identity)[0]
        np.testing.assert_allclose(features[..., :CONFIG.code_dim], expected.numpy(), atol=1e-5)
        np.testing.assert_array_equal(token_ids, model.quantizer.lookup(expected).numpy())


def test_a_trained_tokenizer_reads_another_atlas(trained) -> None:
    aal3 = load_network_table("AAL3")
    tokens = trained.model.tokenize(synthetic_run(aal3, 11))
    assert tokens.token_ids.shape == (30, 4)


def test_token_embeddings_for_llm_project_the_codebook(trained) -> None:
    model = trained.model
    embeddings = model.token_embeddings_for_llm()
    assert embeddings.shape == (CONFIG.codebook_size, CONFIG.llm_hidden)
    with torch.no_grad():
        expected = model.to_llm(model.quantizer.codebook)
    torch.testing.assert_close(embeddings, expected)


def test_save_load_round_trip_is_exact(trained, runs, tmp_path: Path) -> None:
    model = trained.model
    model.save_pretrained(tmp_path)
    loaded = NeuralTokenizer.from_pretrained(tmp_path)
    assert loaded.config == model.config
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    run = runs[1][1]
    first, second = model.tokenize(run), loaded.tokenize(run)
    np.testing.assert_array_equal(first.token_ids, second.token_ids)
    np.testing.assert_array_equal(first.embeddings, second.embeddings)
    assert json.loads((tmp_path / "config.json").read_text())["codebook_size"] == 32


def test_resumed_training_matches_uninterrupted_training(runs, tmp_path: Path) -> None:
    train, validation = runs
    settings = TrainConfig(**{**TRAIN.__dict__, "steps": 12, "eval_interval": 6,
                              "checkpoint_interval": 6, "warmup_steps": 3})
    straight = train_tokenizer(train[:4], validation, tmp_path / "straight", CONFIG, settings,
                               text_embedder=embed_texts)
    train_tokenizer(train[:4], validation, tmp_path / "split", CONFIG, settings,
                    text_embedder=embed_texts, until_step=6)
    assert json.loads((tmp_path / "split" / STATE_JSON).read_text())["step"] == 6
    resumed = train_tokenizer(train[:4], validation, tmp_path / "split", CONFIG, settings,
                              text_embedder=embed_texts, resume=True)
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    assert [h.get("loss") for h in straight.history] == [h.get("loss") for h in resumed.history]

    # Resumed once more after the last step (e.g. killed while writing its card): nothing
    # trains, the held-out metrics and the model card are those of the finished model.
    (tmp_path / "split" / MODEL_CARD).unlink()
    again = train_tokenizer(train[:4], validation, tmp_path / "split", CONFIG, settings,
                            text_embedder=embed_texts, resume=True)
    assert again.metrics == pytest.approx(straight.metrics)
    assert again.history == resumed.history
    assert "reconstruction_r2" in (tmp_path / "split" / MODEL_CARD).read_text()


def test_training_refuses_leaky_splits_and_wrong_text_widths(runs, tmp_path: Path) -> None:
    train, validation = runs
    with pytest.raises(ValueError, match="both the training and the validation"):
        train_tokenizer(train, train[:1], tmp_path, CONFIG, TRAIN)
    with pytest.raises(ValueError, match="text_dim=384"):
        train_tokenizer(train, validation, tmp_path, CONFIG, TRAIN,
                        text_embedder=lambda texts: np.zeros((len(texts), 10)))


# Baseline and metrics ----------------------------------------------------------------------

def test_pca_baseline_tokenizes_and_reconstructs(runs, aal: pd.DataFrame) -> None:
    train, validation = runs
    baseline = PCAProductQuantizer(patch_length=4, n_tokens=4, sub_dim=2,
                                   codebook_size=32).fit(train)
    tokens = baseline.tokenize(validation[0])
    assert tokens.token_ids.shape == (30, 4) and tokens.embeddings.shape == (30, 4, 2)
    assert tokens.token_ids.max() < 32
    assert tokens.to_frame()["onset"].tolist() == window_bounds(120, 2.0, 8.0).tolist()
    prepared = [baseline.prepare(run) for run in validation]
    r2 = reconstruction_r2(np.concatenate([p.patches for p in prepared]),
                           np.concatenate([baseline.reconstruct(p) for p in prepared]))
    assert r2 > 0.0
    with pytest.raises(ValueError, match="another atlas"):
        baseline.tokenize(synthetic_run(load_network_table("AAL3"), 1))


def test_metrics_on_known_cases() -> None:
    rng = np.random.default_rng(0)
    target = rng.standard_normal((10, 5, 4))
    assert reconstruction_r2(target, target) == 1.0
    assert reconstruction_r2(target, np.broadcast_to(target.mean(axis=(0, 2), keepdims=True),
                                                     target.shape)) == pytest.approx(0.0)
    assert codebook_usage(np.arange(8).repeat(3), 16) == pytest.approx(
        {"perplexity": 8.0, "usage": 0.5})
    features = rng.standard_normal((6, 3))
    texts = ["a", "b", "c", "a", "b", "c"]
    candidates = features[:3]
    assert retrieval_top1(features[:3], texts[:3], candidates, ["a", "b", "c"]) == {
        "top1": 1.0, "chance": 1 / 3}
    means = token_text_means(np.array([0, 0, 2]), np.eye(3), 4)
    np.testing.assert_allclose(means, [[0.5, 0.5, 0], [0, 0, 0], [0, 0, 1], [0, 0, 0]])


# Backend -----------------------------------------------------------------------------------

def test_backend_resolves_devices_and_autocasts_on_cpus_only_when_chosen() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    with pytest.raises(ValueError, match="Unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no GPU"):
            resolve_device("cuda")
    layer = torch.nn.Linear(3, 3)
    with autocast(torch.device("cpu")):
        assert layer(torch.ones(1, 3)).dtype == torch.float32
    try:
        assert set_precision("bfloat16") == "bfloat16"
        with autocast(torch.device("cpu")):
            assert layer(torch.ones(1, 3)).dtype == torch.bfloat16
        assert set_precision("auto") in ("bfloat16", "float32")
        with pytest.raises(ValueError, match="Unknown precision"):
            set_precision("half")
    finally:
        set_precision("float32")
    with autocast(torch.device("cpu")):
        assert layer(torch.ones(1, 3)).dtype == torch.float32


def test_mfu_parts_count_the_matrix_products() -> None:
    """FLOPs per training token: 4 N for the frozen weights, 6 N for what trains, embedding
    tables left out (the numerator of MFU)."""
    from fmrilm_bids.fmrilm.training import training_flops_per_token

    model = torch.nn.Sequential(torch.nn.Embedding(100, 8), torch.nn.Linear(8, 8),
                                torch.nn.Linear(8, 4, bias=False))
    model[1].requires_grad_(False)
    frozen, trainable = 8 * 8 + 8, 8 * 4
    assert training_flops_per_token(model) == 4 * (frozen + trainable) + 2 * trainable
