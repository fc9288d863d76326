"""Stimulus text, the encoding model and selectivity captions against the simulator's truth.

The ground truth is the simulator's own encoding model (``W`` from
:func:`fmrilm_bids.simulate.encoding.build_encoding_model`) on AAL3 regions: single-trial
parcel responses to its captions, each caption shown twice within one of six runs, folds by
run (held-out captions are new to the model).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from fmrilm_bids.resources.captions import TOPICS, compose_caption_pool, load_caption_pool
from fmrilm_bids.resources.text_encoder import encode_sentences
from fmrilm_bids.simulate.encoding import build_encoding_model
from fmrilm_bids.simulate.events import CATEGORIES, caption_pool
from fmrilm_bids.simulate.regions import (
    VISUAL_REGIONS,
    assign_networks,
    category_preferences,
    region_membership,
)
from fmrilm_bids.stimulus import encoding, features, information, selectivity

#: AAL3 regions: every category-selective one of the simulator, early visual, and others.
REGIONS = ("Fusiform_L", "Fusiform_R", "Occipital_Inf_L", "Temporal_Sup_L", "Amygdala_R",
           "ParaHippocampal_L", "Lingual_L", "Cingulate_Post_L", "Precuneus_L",
           "Occipital_Sup_L", "Hippocampus_L", "Temporal_Inf_L", "Occipital_Mid_L",
           "Temporal_Mid_L", "Parietal_Inf_L", "SupraMarginal_L", "Precentral_L",
           "Frontal_Inf_Oper_L", "Parietal_Sup_L", "Insula_L", "OFCmed_L",
           "Frontal_Med_Orb_L", "Calcarine_L", "Cuneus_L", "Caudate_L", "Precentral_R",
           "Cerebellum_4_5_L")
#: Single-trial noise (% signal change) on top of the simulator's trial noise.
BETA_NOISE = 0.3


@pytest.fixture(scope="module")
def truth() -> dict:
    pool = caption_pool()
    captions = [c for _, c in pool]
    embeddings = encode_sentences(captions)
    rng = np.random.default_rng(0)
    model = build_encoding_model(REGIONS, assign_networks(REGIONS), embeddings,
                                 [c for c, _ in pool], rng)
    order = rng.permutation(len(captions))
    shown, runs = [], []
    for run, chunk in enumerate(np.array_split(order, 6)):
        shown += np.concatenate([chunk, rng.permutation(chunk)]).tolist()
        runs += [run] * (2 * len(chunk))
    shown = np.asarray(shown)
    responses = model.amplitudes(embeddings[shown]) + rng.normal(
        0, np.hypot(0.1, BETA_NOISE), (len(shown), len(REGIONS)))
    fit = encoding.fit_encoding({"sentence": embeddings[shown]}, responses, runs)
    candidates = load_caption_pool().groupby("topic").head(60)
    candidate_embeddings = encode_sentences(candidates["caption"].tolist())
    return {"model": model, "fit": fit, "responses": responses, "runs": np.asarray(runs),
            "shown": shown, "captions": captions, "embeddings": embeddings,
            "candidates": candidates, "candidate_embeddings": candidate_embeddings}


def _selective(names=REGIONS) -> np.ndarray:
    return category_preferences(names, CATEGORIES).any(axis=1)


def test_held_out_accuracy_reaches_the_noise_ceiling(truth):
    fit = truth["fit"]
    ceiling = encoding.noise_ceiling(truth["responses"],
                                     [truth["captions"][i] for i in truth["shown"]])
    assert ceiling is not None
    selective = _selective()
    assert np.all(ceiling[selective] > 0)
    # Regions without stimulus-driven variance have a ceiling of 0: no ratio there.
    ratio = np.divide(fit.scores, ceiling, out=np.full_like(fit.scores, np.nan),
                      where=ceiling > 0)
    visual_only = region_membership(REGIONS, VISUAL_REGIONS) & ~selective
    assert np.all(ratio[selective] >= 0.8), dict(zip(REGIONS, ratio.round(2), strict=True))
    # Early visual cortex without a category has a random semantic tuning: still predicted.
    assert np.all(fit.scores[visual_only] > 0.3)
    # Regions with almost no stimulus-driven variance are not (held-out r near 0).
    assert np.all(fit.scores[~selective & ~visual_only] < 0.3)


def test_recovered_tuning_matches_the_true_tuning_on_new_sentences(truth):
    """Tuning = each region's response over the shipped pool (sentences never shown)."""
    new = {"sentence": truth["candidate_embeddings"]}
    recovered = truth["fit"].predict(new)
    true = truth["model"].amplitudes(truth["candidate_embeddings"])
    r = encoding.pearson_columns(recovered, true)
    assert np.all(r[_selective()] >= 0.8), dict(zip(REGIONS, r.round(2), strict=True))


def test_selectivity_captions_name_the_preferred_category(truth):
    candidates = truth["candidates"]
    dataset = pd.DataFrame({"topic": [c for c, _ in caption_pool()],
                            "caption": truth["captions"]})
    captions = [*candidates["caption"], *dataset["caption"]]
    vectors = np.vstack([truth["candidate_embeddings"], truth["embeddings"]])
    predicted = truth["fit"].predict({"sentence": vectors})
    table = selectivity.selectivity_captions(
        predicted, captions, REGIONS, top=10, topics=[*candidates["topic"], *dataset["topic"]],
        sources=["pool"] * len(candidates) + ["dataset"] * len(dataset))
    assert set(table["method"]) == {"brainscuba", "lavca"}
    prefers = category_preferences(REGIONS, CATEGORIES)
    hits = [selectivity.preferred_topic(table, region) in
            {c for c, p in zip(CATEGORIES, prefers[i], strict=True) if p}
            for i, region in enumerate(REGIONS) if prefers[i].any()]
    assert np.mean(hits) >= 0.8, hits
    summary = table[(table["method"] == "lavca") & (table["region"] == "ParaHippocampal_L")]
    assert len(summary) == 1 and summary["caption"].iloc[0].count(",") == 2


def test_folds_never_split_a_group_and_the_ceiling_needs_repeats(truth):
    runs = truth["runs"]
    for train, test in encoding.group_folds(runs, 5):
        assert not set(runs[train]) & set(runs[test])
    with pytest.raises(ValueError, match="two groups"):
        encoding.group_folds(np.zeros(10), 5)
    responses = truth["responses"]
    assert encoding.noise_ceiling(responses, [str(i) for i in range(len(responses))]) is None


def test_banded_ridge_favours_the_informative_space_and_contrastive_option(truth):
    rng = np.random.default_rng(1)
    keep = truth["runs"] < 4
    sentence = truth["embeddings"][truth["shown"][keep]]
    responses = truth["responses"][keep][:, :6]
    noise = rng.standard_normal((len(sentence), 32)).astype(np.float32)
    fit = encoding.fit_encoding({"sentence": sentence, "noise": noise}, responses,
                                truth["runs"][keep], n_folds=4, n_iter=10)
    assert fit.space_scales.shape == (2, 6)
    assert np.all(fit.space_scales[0] > fit.space_scales[1])
    assert np.all(fit.scores > 0.7)
    plain = encoding.fit_encoding({"sentence": sentence}, responses, truth["runs"][keep],
                                  n_folds=4)
    aligned = encoding.fit_encoding({"sentence": sentence}, responses, truth["runs"][keep],
                                    n_folds=4, contrastive=0.5)
    assert np.all(aligned.scores >= plain.scores - 0.05)
    assert not np.allclose(aligned.weights, plain.weights)


def test_the_fit_does_not_depend_on_the_units_of_the_features(truth):
    """Each space is scaled to a unit RMS row norm first: the penalty grid fits any units.

    Without it, embeddings 1000 times smaller left every penalty of the grid far too strong
    (held-out r near 0) and 1000 times larger ones pushed the penalty to the grid's top.
    """
    columns = [REGIONS.index(r) for r in ("Fusiform_L", "ParaHippocampal_L", "Calcarine_L",
                                          "Cuneus_L")]
    base = truth["fit"]
    sentence = truth["embeddings"][truth["shown"]]
    for factor in (1e-3, 1e3):
        fit = encoding.fit_encoding({"sentence": factor * sentence},
                                    truth["responses"][:, columns], truth["runs"])
        np.testing.assert_allclose(fit.scores, base.scores[columns], atol=1e-3)
        np.testing.assert_allclose(factor * fit.weights, base.weights[:, columns],
                                   atol=1e-3 * np.abs(base.weights[:, columns]).max())
    rng = np.random.default_rng(4)
    x = np.column_stack([rng.normal(0, 5.0, (50, 3)), np.zeros((50, 2))])
    scaling = encoding.space_scaling(x, [3, 2])
    assert np.sqrt(((x[:, :3] * scaling[:3]) ** 2).sum(1).mean()) == pytest.approx(1.0)
    assert np.all(scaling[3:] == 1.0)


def test_banded_penalties_are_those_of_the_himalaya_solution(truth):
    """The penalty of each weight (for the contrastive refinement) solves the ridge equations."""
    keep = truth["runs"] < 4
    rng = np.random.default_rng(5)
    sentence = truth["embeddings"][truth["shown"][keep]]
    spaces = {"sentence": sentence, "noise": rng.standard_normal((len(sentence), 16))}
    responses = truth["responses"][keep][:, :3]
    fit = encoding.fit_encoding(spaces, responses, truth["runs"][keep], n_folds=2, n_iter=5)
    x = encoding.stack_features(spaces, fit.spaces) - fit.feature_means
    scaling = encoding.space_scaling(x, [384, 16])
    scaled, weights = x * scaling, fit.weights / scaling[:, None]
    penalties = encoding.ridge_penalties(fit.alphas, fit.space_scales, [384, 16])
    assert penalties.shape == (400, 3)
    for t in range(3):
        lhs = scaled.T @ scaled @ weights[:, t] + penalties[:, t] * weights[:, t]
        rhs = scaled.T @ (responses[:, t] - fit.response_means[t])
        np.testing.assert_allclose(lhs, rhs, atol=2e-3 * np.abs(rhs).max())


def test_the_contrastive_refinement_starts_at_its_ridge_minimum():
    """With no contrastive term the refinement keeps the ridge solution it starts from.

    (Its ridge term was once ``n_features`` times too weak: weights moved by 0.2 to 180
    times their norm with the contrastive term switched off.)
    """
    rng = np.random.default_rng(6)
    x = rng.standard_normal((120, 40))
    x -= x.mean(0)
    y = x @ rng.normal(0, 0.1, (40, 4)) + rng.standard_normal((120, 4))
    y -= y.mean(0)
    sizes = [30, 10]
    one_space = encoding.ridge_penalties(np.array([0.1, 1.0, 10.0, 100.0]), np.ones((1, 4)),
                                         [40])
    banded = encoding.ridge_penalties(np.full(4, np.nan), rng.uniform(0.01, 10, (2, 4)), sizes)
    assert np.all(banded[:30] == banded[0]) and np.all(banded[30:] == banded[30])
    for penalties in (one_space, banded):
        ridge = np.column_stack([np.linalg.solve(x.T @ x + np.diag(p), x.T @ y[:, t])
                                 for t, p in enumerate(penalties.T)])
        refined = encoding.contrastive_refine(x, y, ridge, penalties, strength=0.0, steps=50)
        assert np.all(np.linalg.norm(refined - ridge, axis=0)
                      <= 1e-3 * np.linalg.norm(ridge, axis=0))


def test_a_cuda_device_runs_himalaya_on_its_torch_backend():
    """The device resolved at the edge picks the backend (no GPU here to run it on)."""
    assert encoding.himalaya_backend("cpu") == "numpy"
    assert encoding.himalaya_backend(torch.device("cpu")) == "numpy"
    assert encoding.himalaya_backend("cuda") == "torch_cuda"
    assert encoding.himalaya_backend("cuda:1") == "torch_cuda"
    assert encoding.himalaya_backend(torch.device("cuda", 0)) == "torch_cuda"


def test_event_captions_sources_and_the_shipped_pool():
    events = pd.DataFrame({"onset": [0, 5], "duration": [1, 1],
                           "trial_type": ["faces", "road_signs"],
                           "stim_file": ["a.png", "b.png"]})
    assert features.event_captions(events.assign(caption=["A dog.", "A cat."])) == [
        "A dog.", "A cat."]
    assert features.event_captions(events) == ["A picture of faces.",
                                               "A picture of road signs."]
    table = {"a.png": "A red bus.", "b.png": "A green tree."}
    no_type = events.drop(columns="trial_type")
    assert features.event_captions(no_type, stim_captions=table) == ["A red bus.",
                                                                     "A green tree."]
    assert features.event_captions(no_type.assign(text=["x", "y"]), "text") == ["x", "y"]
    assert not features.has_stimulus_text(no_type)
    with pytest.raises(ValueError, match="lacks 1"):
        features.event_captions(no_type, stim_captions={"a.png": "A red bus."})
    pool = load_caption_pool()
    pd.testing.assert_frame_equal(pool, compose_caption_pool())
    assert 2000 <= len(pool) <= 5000 and pool["caption"].is_unique
    assert tuple(pool["topic"].unique()) == TOPICS


def test_split_half_identification_is_exact_and_calibrated():
    rng = np.random.default_rng(2)
    labels = np.tile(np.arange(6), 2)
    signal = rng.standard_normal((6, 200))
    informative = information.split_half_identification(
        signal[labels] + rng.normal(0, 1.0, (12, 200)), labels)
    assert informative.n_permutations == 720
    assert informative.accuracy >= 0.8 and informative.p_value < 0.01
    null_p = [information.split_half_identification(rng.standard_normal((12, 200)), labels,
                                                    seed=s).p_value for s in range(40)]
    assert 0.02 < np.mean(np.asarray(null_p) < 0.2) < 0.45
    assert len(information.driven_voxels(np.abs(signal), 0.1)) == 20


def test_nearest_mean_reads_held_out_blocks_and_only_from_the_other_blocks():
    rng = np.random.default_rng(4)
    labels = np.asarray([f"c{k}" for k in np.tile(np.arange(6), 2)])
    blocks = np.arange(12)
    # Responsive voxels (positive mean) carry the category; the rest are noise.
    signal = rng.standard_normal((6, 300)) + 3.0
    patterns = np.hstack([signal[np.tile(np.arange(6), 2)] + rng.normal(0, 0.8, (12, 300)),
                          rng.normal(0, 1.0, (12, 300))])
    predicted = information.nearest_mean_categories(patterns, labels, blocks, 0.3)
    assert (predicted == labels).mean() >= 0.9
    # A category whose only block is held out cannot be predicted for it.
    single = labels.copy()
    single[0] = "lonely"
    assert information.nearest_mean_categories(patterns, single, blocks, 0.3)[0] != "lonely"
    noise = information.nearest_mean_categories(rng.standard_normal((12, 600)), labels,
                                                blocks)
    assert (noise == labels).mean() < 0.5


def test_llm_hidden_states_as_a_second_feature_space(truth, tmp_path):
    from test_group_level import save_tiny_llama

    from fmrilm_bids.interfaces.stimulus import text_embedders

    embedders = text_embedders(["sentence", "llm"], llm_dir=str(save_tiny_llama(tmp_path)))
    keep = truth["runs"] < 4
    texts = [truth["captions"][i] for i in truth["shown"][keep]]
    spaces = features.embed_texts(texts, embedders)
    assert spaces["sentence"].shape == (len(texts), 384)
    assert spaces["llm"].shape == (len(texts), 32)
    np.testing.assert_allclose(spaces["sentence"], truth["embeddings"][truth["shown"][keep]],
                               atol=1e-5)
    fit = encoding.fit_encoding(spaces, truth["responses"][keep][:, :4], truth["runs"][keep],
                                n_folds=4, n_iter=10)
    # An untrained language model carries no caption meaning: the sentence space wins.
    assert np.all(fit.space_scales[0] > fit.space_scales[1])
    with pytest.raises(ValueError, match="Unknown feature space"):
        text_embedders(["clip"])
