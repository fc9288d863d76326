"""fMRI-LM metrics (BLEU, ROUGE-L, AUROC, accuracy), subject splits and the baselines."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from fmrilm_bids.fmrilm.llm import bleu, classification_metrics, rouge_l
from fmrilm_bids.fmrilm.llm.evaluate import (
    baseline_predictions,
    connectivity_features,
    item_features,
    shuffled_pairs,
    token_features,
)
from fmrilm_bids.fmrilm.llm.metrics import auroc, softmax, words
from fmrilm_bids.fmrilm.llm.runs import LMRun
from fmrilm_bids.fmrilm.llm.tasks import TaskItem, TaskSpec
from fmrilm_bids.fmrilm.splits import subject_split
from fmrilm_bids.resources.text_encoder import encode_sentences


def test_words_are_lowercased_with_punctuation_split_off() -> None:
    assert words("The cat, sat.") == ["the", "cat", ",", "sat", "."]


def test_bleu_against_hand_computed_values() -> None:
    candidate, reference = "the cat sat on the mat", "the cat is on the mat"
    # Clipped matches / totals: 1-grams 5/6, 2-grams 3/5, 3-grams 1/4, 4-grams 0/3; equal
    # lengths (no brevity penalty).
    assert bleu([candidate], [reference], max_order=2, smooth=False) == pytest.approx(
        math.sqrt(5 / 6 * 3 / 5))
    assert bleu([candidate], [reference], smooth=False) == 0.0
    # Add-one smoothing above unigrams: 5/6, 4/6, 2/5, 1/4.
    assert bleu([candidate], [reference]) == pytest.approx(
        (5 / 6 * 4 / 6 * 2 / 5 * 1 / 4) ** 0.25)
    assert bleu([reference], [reference]) == pytest.approx(1.0)
    # Brevity penalty: 3 of 6 words, all matching -> exp(1 - 6/3).
    assert bleu(["the cat is"], [reference], max_order=1) == pytest.approx(math.exp(-1))
    # Corpus level: counts add up over sentences before the ratios.
    assert bleu(["a b", "c d"], ["a b", "c e"], max_order=1) == pytest.approx(3 / 4)
    # Several references: the best clip per n-gram, the closest length.
    assert bleu(["a a"], [["a b", "a a c"]], max_order=1) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="candidates"):
        bleu(["a"], [])


def test_rouge_l_against_hand_computed_values() -> None:
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    # LCS("a b c", "a c d e") = 2: precision 2/3, recall 1/2, F1 = 4/7.
    assert rouge_l("a b c", "a c d e") == pytest.approx(4 / 7)
    assert rouge_l("x y", "a b") == 0.0
    assert rouge_l("a b c", ["x", "a b c"]) == pytest.approx(1.0)
    # beta weighs recall: F_beta with P = 2/3, R = 1/2, beta = 2.
    assert rouge_l("a b c", "a c d e", beta=2.0) == pytest.approx(
        5 * (2 / 3) * 0.5 / (0.5 + 4 * (2 / 3)))


def test_auroc_uses_probabilities_not_hard_answers() -> None:
    expected = np.array([[0.9, 0.1], [0.55, 0.45], [0.6, 0.4], [0.7, 0.3]])
    probabilities = softmax(np.log(expected) - 3.0)  # sequence log-probs -> probabilities
    np.testing.assert_allclose(probabilities, expected)
    labels = ["rest", "task", "task", "rest"]
    classes = ["rest", "task"]
    value = auroc(labels, probabilities, classes)
    assert value == pytest.approx(roc_auc_score([0, 1, 1, 0], probabilities[:, 1]))
    assert value == 1.0  # every answer is "rest": hard answers alone would give 0.5
    metrics = classification_metrics(labels, probabilities, classes)
    assert metrics == {"accuracy": 0.5, "auroc": 1.0, "n": 4,
                       "chance_accuracy": 0.5}
    # Several classes: the mean one-vs-rest AUROC of the classes with both outcomes.
    three = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6], [0.4, 0.4, 0.2]])
    expected = np.mean([roc_auc_score([1, 0, 0, 1], three[:, 0]),
                        roc_auc_score([0, 1, 0, 0], three[:, 1]),
                        roc_auc_score([0, 0, 1, 0], three[:, 2])])
    assert auroc(["a", "b", "c", "a"], three, ["a", "b", "c"]) == pytest.approx(expected)
    assert auroc(["a", "a"], three[:2, :2], ["a", "b"]) is None


def test_subject_split_holds_out_whole_subjects() -> None:
    train, test = subject_split(["01", "02", "03", "04", "02"], seed=3)
    assert len(test) == 1 and not set(train) & set(test)
    assert sorted(train + test) == ["01", "02", "03", "04"]
    assert subject_split(["01", "02", "03", "04"], seed=3) == (train, test)
    with pytest.raises(ValueError, match="at least one"):
        subject_split(["01"])


def _run(subject: str, rng: np.random.Generator, label: int) -> LMRun:
    """Windows whose features and connectivity both carry ``label``."""
    n_windows, tr = 8, 2.0
    shared = rng.standard_normal((n_windows * 6, 1))
    timeseries = rng.standard_normal((n_windows * 6, 4))
    timeseries[:, :2] += (3.0 if label else 0.0) * shared  # parcels 0-1 coupled in class 1
    features = rng.standard_normal((n_windows, 3)) + 2.0 * label
    return LMRun(subject, "images", rng.integers(0, 4, n_windows), np.arange(n_windows) * 12.0,
                 12.0, token_features=features, timeseries=timeseries, tr=tr)


def test_baselines_separate_a_separable_problem() -> None:
    rng = np.random.default_rng(0)
    runs = [_run(f"{i:02d}", rng, i % 2) for i in range(12)]
    task = TaskSpec("group", "group", "run", "class", ("Which group?",),
                    classes=("control", "patient"))
    items = [TaskItem(i, 0, 8, task.classes[i % 2], 0.0, 96.0) for i in range(12)]
    train, test = items[:8], items[8:]
    truth = [item.answer for item in test]
    for kind in ("fc", "tokens"):
        features = [item_features(part, runs, kind, "run", 0, 4) for part in (train, test)]
        probabilities = baseline_predictions(task, features[0], [i.answer for i in train],
                                             features[1])
        assert probabilities.shape == (4, 2)
        metrics = classification_metrics(truth, probabilities, task.classes)
        assert metrics["accuracy"] == 1.0 and metrics["auroc"] == 1.0, kind
    fc = connectivity_features(runs[1], 0, 8)
    assert fc.shape == (6,) and fc[0] > 1.0  # Fisher z of the coupled pair
    number = TaskSpec("age", "age", "run", "number", ("How old?",))
    ages = [20.0 + 30.0 * (i % 2) for i in range(12)]
    features = [item_features(part, runs, "tokens", "run", 0, 4) for part in (train, test)]
    predicted = baseline_predictions(number, features[0], [str(a) for a in ages[:8]],
                                     features[1])
    assert np.abs(predicted - np.array(ages[8:])).max() < 10.0


def test_token_baseline_reads_every_group_of_a_window() -> None:
    """Two tokens per window: the label lives in the second group's features only, which the
    baseline reads beside the first's."""
    rng = np.random.default_rng(1)
    runs = []
    for index in range(12):
        features = rng.standard_normal((8, 2, 3))
        features[:, 1] += 2.0 * (index % 2)
        runs.append(LMRun(f"{index:02d}", "images", rng.integers(0, 4, (8, 2)),
                          np.arange(8) * 12.0, 12.0, token_features=features))
    run = runs[1]
    window = token_features(run, 2, 4, "window", 2, 4)  # windows 2-3 after an empty one
    np.testing.assert_array_equal(window, np.r_[np.zeros(6), run.token_features[2:4].ravel()])
    np.testing.assert_allclose(token_features(run, 0, 8, "run", 0, 4),
                               run.token_features.mean(axis=0).ravel())
    codes = replace(run, token_features=None)  # one-hot codes of every group, side by side
    np.testing.assert_array_equal(token_features(codes, 3, 4, "window", 0, 4),
                                  np.eye(4)[run.token_ids[3]].ravel())
    task = TaskSpec("group", "group", "run", "class", ("Which group?",),
                    classes=("control", "patient"))
    items = [TaskItem(i, 0, 8, task.classes[i % 2], 0.0, 96.0) for i in range(12)]
    features = [item_features(part, runs, "tokens", "run", 0, 4) for part in (items[:8],
                                                                              items[8:])]
    assert features[0].shape == (8, 6)
    probabilities = baseline_predictions(task, features[0], [i.answer for i in items[:8]],
                                         features[1])
    assert classification_metrics([i.answer for i in items[8:]], probabilities,
                                   task.classes)["accuracy"] == 1.0


def test_shuffled_pairs_tell_matched_captions_from_unrelated_ones() -> None:
    truth = ["A smiling face.", "A quiet beach at dawn.", "A red house on a hill.",
             "A dog running in a park.", "A bowl of fresh fruit.", "A city street at night.",
             "A snowy mountain peak.", "A small boat on a lake."]
    predicted = ["A happy face smiling.", "An empty beach at sunrise.",
                 "A red house on a hilltop.", "A dog runs through a park.",
                 "Fresh fruit in a bowl.", "A busy street in the city at night.",
                 "A mountain covered in snow.", "A little boat on a lake."]
    similarity = encode_sentences(predicted) @ encode_sentences(truth).T
    matched = shuffled_pairs(predicted, truth)
    # No shuffle comes near the matched pairs: the smallest p-value 2000 permutations give.
    assert matched["p_vs_shuffled"] == pytest.approx(1 / 2001)
    assert shuffled_pairs(predicted, truth, n_permutations=200)["p_vs_shuffled"] == \
        pytest.approx(1 / 201)
    # A shuffle's mean cosine is, on average, that of all pairs.
    assert matched["shuffled_cosine"] == pytest.approx(similarity.mean(), abs=0.01)
    assert np.trace(similarity) / len(truth) > matched["shuffled_cosine"] + 0.5
    # Each caption beside another item's truth: no better than a shuffle.
    unrelated = shuffled_pairs(predicted[1:] + predicted[:1], truth)
    assert unrelated["p_vs_shuffled"] > 0.5
    assert unrelated["shuffled_cosine"] == pytest.approx(similarity.mean(), abs=0.01)


def picture_runs(n_subjects: int = 6, n_windows: int = 24, tr: float = 2.0,
                 effect: float = 1.0) -> list[LMRun]:
    """Picture runs whose condition lives in the amplitude of parcel 0 (faces up, places
    down) in the event's window, and not in the connectivity."""
    rng = np.random.default_rng(3)
    runs = []
    per_window = int(12.0 / tr)
    for index in range(n_subjects):
        kinds = rng.choice(["faces", "places"], n_windows)
        onsets = np.arange(n_windows) * 12.0
        events = pd.DataFrame({"onset": onsets + 1.0, "duration": 2.0, "trial_type": kinds})
        series = rng.standard_normal((n_windows * per_window, 8))
        series[:, 0] += np.repeat(np.where(kinds == "faces", effect, -effect), per_window)
        runs.append(LMRun(f"{index + 1:02d}", "images", np.zeros(n_windows), onsets, 12.0,
                          events=events, timeseries=series, tr=tr))
    return runs


def test_amplitude_baseline_reads_the_condition_of_each_window() -> None:
    """The strongest simple baseline for window questions: each window's parcel amplitudes
    (its events' responses, after the haemodynamic delay) decode the condition; the same
    items' connectivity does not."""
    from fmrilm_bids.fmrilm.llm.evaluate import amplitude_features, baseline_kinds
    from fmrilm_bids.fmrilm.llm.tasks import task_items

    runs = picture_runs()
    task = TaskSpec("condition", "trial_type", "window", "class", ("Which?",),
                    classes=("faces", "places"))
    train, test = runs[:4], runs[4:]
    items = [task_items(task, split, None, 1, 6) for split in (train, test)]
    truth = [item.answer for item in items[1]]
    accuracy = {}
    for kind in ("amplitude", "fc"):
        x = [item_features(i, r, kind, "window", 1, 4) for i, r in zip(items, (train, test),
                                                                       strict=True)]
        predicted = baseline_predictions(task, x[0], [i.answer for i in items[0]], x[1])
        accuracy[kind] = classification_metrics(truth, predicted, task.classes)["accuracy"]
    assert accuracy["amplitude"] >= 0.9
    assert accuracy["fc"] < 0.75
    # The asked window alone: the mean of each parcel over its volumes.
    run = runs[0]
    np.testing.assert_allclose(amplitude_features(run, 0), run.timeseries[:6].mean(axis=0))
    np.testing.assert_allclose(amplitude_features(run, 1), run.timeseries[6:12].mean(axis=0))
    assert baseline_kinds("window", runs) == ["amplitude", "fc", "tokens"]
    assert baseline_kinds("run", runs) == ["fc", "tokens"]


def test_subject_bootstrap_resamples_participants() -> None:
    from fmrilm_bids.fmrilm.llm.metrics import subject_bootstrap

    # Every participant scores the same: no spread between resamples.
    assert subject_bootstrap(np.ones(12), ["a"] * 4 + ["b"] * 8) == (1.0, 1.0)
    # Two participants, one always right, one always wrong: the interval spans (almost) all
    # the way, although the 40 items alone would suggest a narrow one.
    low, high = subject_bootstrap(np.r_[np.ones(20), np.zeros(20)], ["a"] * 20 + ["b"] * 20)
    assert low == 0.0 and high == 1.0
    rng = np.random.default_rng(0)
    values = rng.random(200)
    subjects = [f"{i % 20:02d}" for i in range(200)]
    low, high = subject_bootstrap(values, subjects)
    assert low < values.mean() < high and high - low < 0.2
