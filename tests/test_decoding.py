"""Decoders, readouts, cross-subject adapters and attribution against the simulator's truth.

The ground truth is the simulator's encoding model (``W`` from
:func:`fmrilm_bids.simulate.encoding.build_encoding_model`) on AAL3 regions, its 120
captions (20 per category) each shown once, six runs of 20; every region's amplitude drives
20 voxels with their own gain and noise (:func:`fmrilm_bids.simulate.encoding.voxel_responses`).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fmrilm_bids.resources.atlases import bundled_atlas_dir, read_label_table
from fmrilm_bids.resources.text_encoder import encode_sentences
from fmrilm_bids.simulate.encoding import build_encoding_model, voxel_responses
from fmrilm_bids.simulate.events import CATEGORIES, caption_pool
from fmrilm_bids.simulate.regions import VISUAL_REGIONS, assign_networks, region_membership
from fmrilm_bids.stimulus import adapters, attribution, decoding, readout
from fmrilm_bids.stimulus.encoding import group_folds
from fmrilm_bids.stimulus.features import trial_type_sentence

#: Every region of AAL3's image (the four it lists but does not draw are left out).
REGIONS = tuple(name for index, name in read_label_table(bundled_atlas_dir() / "AAL3.txt").items()
                if index not in (35, 36, 81, 82))


@pytest.fixture(scope="module")
def world() -> dict:
    pool = caption_pool()
    embeddings = encode_sentences([c for _, c in pool]).astype(float)
    model = build_encoding_model(REGIONS, assign_networks(REGIONS), embeddings,
                                 [c for c, _ in pool], np.random.default_rng(0))
    return {"model": model, "embeddings": embeddings,
            "categories": np.array([c for c, _ in pool]),
            "names": list(CATEGORIES),
            "category_embeddings": encode_sentences([trial_type_sentence(c)
                                                     for c in CATEGORIES])}


def _subject(world: dict, seed: int, **options) -> tuple[adapters.SubjectResponses,
                                                          np.ndarray]:
    """Every caption once, in a random order, in six runs of 20; and their categories."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(world["embeddings"]))
    responses, _ = voxel_responses(world["model"], world["embeddings"][order], rng, **options)
    return (adapters.SubjectResponses(f"s{seed}", responses, world["embeddings"][order],
                                      np.repeat(np.arange(6), 20), np.arange(len(order))),
            world["categories"][order])


@pytest.mark.slow
def test_decoders_read_captions_categories_and_unseen_categories(world) -> None:
    subject, categories = _subject(world, 1)
    # The 18 fits (9 per decoder) side by side in two worker processes, as one after another.
    held = decoding.held_out(subject.responses, subject.targets, subject.groups, categories,
                             n_folds=6, seed=3, processes=2)
    assert set(held.folds) == set(range(6)) and set(held.zero_shot_folds) == {0, 1, 2}
    for folds, predicted in ((group_folds(subject.groups, 6), held.predicted["ridge"]),
                             (decoding.category_folds(categories), held.zero_shot["ridge"])):
        serial, _ = decoding.cross_validate(subject.responses, subject.targets,
                                            subject.groups, folds, "ridge", seed=3)
        assert np.allclose(predicted, serial, equal_nan=True)
    for train, test in group_folds(subject.groups, 6):  # folds never split a run
        assert not set(subject.groups[train]) & set(subject.groups[test])
    table = readout.evaluation_table(held, subject.targets, categories, world["names"],
                                     world["category_embeddings"], n_permutations=200)
    figures = table.set_index(["metric", "decoder"])
    assert figures.loc[("retrieval_top1", "ridge"), "chance"] == pytest.approx(1 / 120)
    for decoder in decoding.METHODS:
        # Captions of one category are alike: the top 5 holds the seen one far above chance.
        top1, top5 = (figures.loc[(f"retrieval_top{k}", decoder)] for k in (1, 5))
        assert top1["value"] > top1["chance"] and top1["p_value"] < 0.05
        assert top5["value"] >= 5 * top5["chance"] and top5["p_value"] < 0.01
        seen = figures.loc[("category_accuracy", decoder)]
        assert seen["chance"] == pytest.approx(1 / 6) and seen["value"] > 0.8
        unseen = figures.loc[("zero_shot_accuracy", decoder)]
        assert unseen["chance"] == pytest.approx(0.5)
        assert unseen["value"] > 0.8 and unseen["p_value"] < 0.01


def test_retrieval_chance_permutations_and_zero_shot_folds() -> None:
    rng = np.random.default_rng(0)
    targets = decoding.unit_rows(rng.standard_normal((30, 8)))
    exact = readout.retrieval_accuracy(targets, targets, 1, n_permutations=99)
    assert exact["value"] == 1.0 and exact["chance"] == pytest.approx(1 / 30)
    assert exact["p_value"] == pytest.approx(1 / 100)  # the smallest p of 99 permutations
    unrelated = readout.retrieval_accuracy(rng.standard_normal((30, 8)), targets, 5, 99)
    assert unrelated["p_value"] > 0.05 and unrelated["chance"] == pytest.approx(5 / 30)
    # Within strata: each half retrieves among its own 15 units.
    halves = readout.retrieval_accuracy(targets, targets, 1, 9, strata=np.repeat([0, 1], 15))
    assert halves["value"] == 1.0 and halves["chance"] == pytest.approx(1 / 15)
    assert (readout.retrieval_ranks(targets, targets) == 1).all()
    kinds = np.array(["a", "b", "c", "d", "e"] * 4)
    folds = decoding.category_folds(kinds)
    assert len(folds) == 2  # {a, b} and {c, d, e}
    assert [sorted(set(kinds[test])) for _, test in folds] == [["a", "b"], ["c", "d", "e"]]
    assert all(not set(kinds[train]) & set(kinds[test]) for train, test in folds)
    with pytest.raises(ValueError, match="at least 4 categories"):
        decoding.category_folds(["a", "b", "c"] * 3)
    similarity = readout.paired_similarity(targets, targets, 99)
    assert similarity["value"] == pytest.approx(1.0) and similarity["chance"] < 0.3


def test_retrieved_captions_come_from_the_pool_and_the_training_folds() -> None:
    sentences = [["A red bus."], ["A green tree."], ["A blue cup."], ["A red bus."]]
    embedded = {"A red bus.": np.array([1.0, 0, 0]), "A green tree.": np.array([0, 1.0, 0]),
                "A blue cup.": np.array([0, 0, 1.0])}
    folds = np.array([0, 0, 1, 1])
    cup = [0, 0.1, 1.0]
    decoded = np.array([cup, [0, 1.0, 0.1], cup, [1.0, 0, 0]])
    table = readout.retrieve_captions(decoded, folds, sentences, embedded, ["A pool cup."],
                                      np.array([[0, 0.2, 0.98]]), k=2)
    first = table[table["rank"] == 1].set_index("unit")
    # Unit 2 saw the blue cup, shown in its own fold only: the pool's cup comes first.
    assert first.loc[2, "caption"] == "A pool cup." and first.loc[2, "source"] == "pool"
    # Unit 0's decoder learnt the blue cup from the other fold.
    assert first.loc[0, "caption"] == "A blue cup." and first.loc[0, "source"] == "dataset"
    assert first.loc[3, "caption"] == "A red bus."  # shown in both folds
    assert set(table.groupby("unit")["rank"].max()) == {2}
    assert readout.clean_caption('1. "A dog runs on a beach." It is sunny.\nMore') == \
        "A dog runs on a beach."
    assert readout.clean_caption("  \n ") == ""
    assert "- A red bus." in readout.caption_prompt(["A red bus.", "A green tree."])


@pytest.mark.slow
def test_a_new_subject_adapts_the_shared_decoder_from_a_quarter_of_its_units(world,
                                                                           tmp_path) -> None:
    first, new = (_subject(world, seed, misalignment=0.2, voxels_per_region=5)[0]
                  for seed in (11, 12))
    shared = adapters.fit_shared([first], seed=0)
    head_before = [p.detach().clone() for p in shared.head.parameters()]
    few = np.arange(30)  # a quarter of its 120 units
    adapter = shared.adapt(new.responses[few], new.targets[few], seed=1)
    assert all(torch.equal(a, b) for a, b in zip(head_before, shared.head.parameters(),
                                                   strict=True))
    assert not np.allclose(adapter.weight, np.eye(shared.n_components))
    rest = np.arange(30, 120)
    decoded = shared.predict(new.responses[rest], adapter)
    top5 = readout.retrieval_accuracy(decoded, new.targets[rest], 5, 99)
    assert top5["value"] >= 3 * top5["chance"] and top5["p_value"] < 0.05
    # Saved, the decoder reads the kept voxels only, in their order.
    shared.save(tmp_path, {"task": "images"})
    loaded = adapters.SharedDecoder.load(tmp_path)
    kept = adapters.Adapter(decoding.Preparation(np.arange(len(shared.voxels)),
                                                 adapter.preparation.standardiser),
                            adapter.weight, adapter.bias, adapter.output_mean)
    assert np.allclose(loaded.predict(new.responses[rest][:, shared.voxels], kept), decoded,
                       atol=1e-5)
    # The few-shot test on 40 units each: same held-out units for every setting.
    small = [adapters.SubjectResponses(s.name, s.responses[:40], s.targets[:40],
                                       s.groups[:40], s.blocks[:40]) for s in (first, new)]
    results = adapters.few_shot_evaluation(small, 0.25, n_folds=2, seed=0)
    # The folds fitted side by side in two worker processes give the same predictions.
    parallel = adapters.few_shot_evaluation(small, 0.25, n_folds=2, seed=0, processes=2)
    for subject in small:
        result = results[subject.name]
        assert set(result["subset"]) == {10}  # whole blocks (single events) up to 25 %
        for setting in ("own", "adapted", "shared", "own_fraction"):
            assert result[setting].shape == subject.targets.shape
            assert np.isfinite(result[setting]).all()
            assert np.allclose(parallel[subject.name][setting], result[setting], atol=1e-4)


def test_ablation_finds_the_network_the_decoder_reads(world) -> None:
    """Visual regions' voxels carry the captions; as many voxels of pure noise do not."""
    rng = np.random.default_rng(21)
    responses, regions = voxel_responses(world["model"], world["embeddings"], rng)
    visual = responses[:, region_membership(np.asarray(REGIONS)[regions], VISUAL_REGIONS)]
    responses = np.hstack([visual, rng.normal(0, 1, visual.shape)])
    networks = np.repeat(["Visual", "Default"], visual.shape[1])
    decoder = decoding.fit_decoder(responses, world["embeddings"],
                                   np.repeat(np.arange(6), 20), "ridge")
    table = attribution.network_ablation(decoder.predict, responses, world["embeddings"],
                                         networks)
    rows = table.set_index("network")
    assert table["network"].tolist() == ["Visual", "Default"]
    assert rows.loc["Visual", "similarity_drop"] > 0.05
    assert rows.loc["Visual", "similarity_drop"] > 5 * rows.loc["Default", "similarity_drop"]
    assert rows.loc["Visual", "embedding_change"] > rows.loc["Default", "embedding_change"]
    pooled = attribution.pool_attributions([table, table.assign(n_units=3 * table["n_units"])])
    assert pooled.set_index("network").loc["Visual", "n_units"] == 4 * len(responses)
    assert pooled.set_index("network")["similarity_drop"].to_dict() == pytest.approx(
        rows["similarity_drop"].to_dict())
