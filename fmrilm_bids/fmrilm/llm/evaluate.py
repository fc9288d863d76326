"""Evaluation protocol of Stages 2 and 3, with simple baselines on the same splits.

* **Splits by subject** (:func:`subject_split`): no participant is in both the training and
  the test runs.
* **Tuned tasks**: questions the model was instruction-tuned on, asked about test runs.
* **Zero-shot**: tasks held out of tuning, asked the same way (the answer options are in
  the question; the model never saw the question).
* **Few-shot**: the question preceded by ``k`` answered examples per class (class-balanced,
  from training subjects; ``k`` examples in all for free-text and number tasks), as earlier
  conversation turns.
* **Baselines**: scikit-learn on the same items: logistic regression (classes), ridge
  regression (numbers), or ridge regression to the MiniLM embedding of the caption and the
  nearest training caption (text), on three feature sets: the **amplitude** of every parcel
  in the window asked about (the mean signal over the window, which holds the response
  to the window's events since events are assigned to windows after the haemodynamic
  delay; window questions only: the strongest simple baseline there, stronger alone than
  with the prompt's earlier windows, whose features only add noise), the functional
  **connectivity** of the parcel signals over the prompt's time span (Fisher-z
  correlations; for run and participant questions), and the Stage-1 **token features** of
  the prompt's windows (concatenated for a window question, averaged for a run question;
  one-hot tokens when the runs carry no features).

Metrics: accuracy, AUROC from answer probabilities and the chance accuracy (classes), with
a one-sided binomial p-value of the accuracy against chance (``p_vs_chance``); mean
absolute error (numbers); MiniLM cosine, BLEU and ROUGE-L to the true texts (captions and
window descriptions). Each method's main figure (accuracy, MAE, MiniLM cosine) has a 95 %
bootstrap interval over held-out subjects (``<metric>_ci_low``, ``<metric>_ci_high``).
:func:`evaluate_fmrilm` returns them as a JSON-ready dict.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import binomtest
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fmrilm_bids.fmrilm.llm.config import DecodingConfig
from fmrilm_bids.fmrilm.llm.inference import (
    class_scores,
    generate,
    number_answers,
    score_candidates,
    task_prompts,
    user_message,
    window_prompts,
)
from fmrilm_bids.fmrilm.llm.metrics import (
    caption_similarity,
    classification_metrics,
    pairwise_cosines,
    softmax,
    subject_bootstrap,
)
from fmrilm_bids.fmrilm.llm.model import FmriLM
from fmrilm_bids.fmrilm.llm.prompts import WINDOW_DESCRIBE
from fmrilm_bids.fmrilm.llm.runs import LMRun
from fmrilm_bids.fmrilm.llm.tasks import TaskItem, TaskSpec, task_items
from fmrilm_bids.resources.text_encoder import encode_sentences
from fmrilm_bids.utils.progress import Heartbeat


def connectivity_features(run: LMRun, start: int, stop: int) -> np.ndarray:
    """Fisher-z correlations between parcels over windows ``[start, stop)`` (upper triangle)."""
    if run.timeseries is None:
        raise ValueError(f"Run {run.key} has no parcel signals; the connectivity baseline "
                         "needs LMRun.timeseries and tr.")
    times = np.arange(len(run.timeseries)) * run.tr
    end = run.onsets[stop - 1] + run.durations[stop - 1]
    rows = run.timeseries[(times >= run.onsets[start]) & (times < end)]
    n_parcels = run.timeseries.shape[1]
    upper = np.triu_indices(n_parcels, k=1)
    if len(rows) < 3:
        return np.zeros(len(upper[0]))
    with np.errstate(invalid="ignore", divide="ignore"):
        correlation = np.nan_to_num(np.corrcoef(rows.T))
    return np.arctanh(np.clip(correlation[upper], -0.999, 0.999))


def amplitude_features(run: LMRun, window: int) -> np.ndarray:
    """Mean signal of every parcel in ``window`` (module docstring)."""
    if run.timeseries is None:
        raise ValueError(f"Run {run.key} has no parcel signals; the amplitude baseline "
                         "needs LMRun.timeseries and tr.")
    times = np.arange(len(run.timeseries)) * run.tr
    inside = (times >= run.onsets[window]) & (
        times < run.onsets[window] + run.durations[window])
    return run.timeseries[inside].mean(axis=0) if inside.any() else np.zeros(
        run.timeseries.shape[1])


def token_features(run: LMRun, start: int, stop: int, level: str, context: int,
                   codebook_size: int) -> np.ndarray:
    """Stage-1 features of windows ``[start, stop)`` (module docstring), the groups of a
    window side by side."""
    features = (run.token_features[start:stop] if run.token_features is not None
                else np.eye(codebook_size)[run.token_ids[start:stop]])
    features = features.reshape(len(features), -1)
    if level == "run":
        return features.mean(axis=0)
    padded = np.zeros((context + 1, features.shape[1]))
    padded[context + 1 - len(features):] = features
    return padded.reshape(-1)


def item_features(items: Sequence[TaskItem], runs: Sequence[LMRun], kind: str, level: str,
                  context: int, codebook_size: int) -> np.ndarray:
    """Baseline features (``kind`` "amplitude", "fc" or "tokens") of each item."""
    def features(item: TaskItem) -> np.ndarray:
        run = runs[item.run_index]
        if kind == "amplitude":
            return amplitude_features(run, item.stop - 1)
        if kind == "fc":
            return connectivity_features(run, item.start, item.stop)
        return token_features(run, item.start, item.stop, level, context, codebook_size)

    return np.stack([features(item) for item in items])


def baseline_kinds(level: str, runs: Sequence[LMRun]) -> list[str]:
    """The baselines of a question: amplitude (window questions) and connectivity when the
    runs carry parcel signals, and always the token features."""
    if any(run.timeseries is None for run in runs):
        return ["tokens"]
    return ["amplitude", "fc", "tokens"] if level == "window" else ["fc", "tokens"]


def baseline_predictions(task: TaskSpec, train_x: np.ndarray, train_answers: Sequence[str],
                         test_x: np.ndarray) -> np.ndarray | list[str]:
    """Baseline answers of the test items (module docstring).

    Returns
    -------
    ndarray of shape (n_test, n_classes) or (n_test,), or list of str
        Class probabilities (columns in ``task.classes`` order), numbers, or captions.
    """

    if task.kind == "class":
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        model.fit(train_x, list(train_answers))
        fitted = model.predict_proba(test_x)
        probabilities = np.zeros((len(test_x), len(task.classes)))
        for column, name in enumerate(model.classes_):
            if name in task.classes:
                probabilities[:, task.classes.index(name)] = fitted[:, column]
        return probabilities
    if task.kind == "number":
        model = make_pipeline(StandardScaler(), Ridge(alpha=10.0))
        return model.fit(train_x, [float(a) for a in train_answers]).predict(test_x)

    captions = sorted(set(train_answers))
    embedded = encode_sentences(captions)
    targets = embedded[[captions.index(a) for a in train_answers]]
    model = make_pipeline(StandardScaler(), Ridge(alpha=10.0)).fit(train_x, targets)
    predicted = model.predict(test_x)
    return [captions[i] for i in (predicted @ embedded.T).argmax(axis=1)]


def few_shot_turns(model: FmriLM, task: TaskSpec, runs: Sequence[LMRun],
                   items: Sequence[TaskItem], k: int,
                   rng: np.random.Generator) -> list[tuple[dict[str, object], str]]:
    """``k`` answered examples per class (``k`` in all without classes), shuffled."""
    if task.kind == "class":
        chosen = []
        for name in task.classes:
            members = [item for item in items if item.answer == name]
            picks = rng.choice(len(members), size=min(k, len(members)), replace=False)
            chosen += [members[i] for i in picks]
    else:
        chosen = [items[i] for i in rng.choice(len(items), size=min(k, len(items)),
                                               replace=False)]
    chosen = [chosen[i] for i in rng.permutation(len(chosen))]
    return [(user_message(model, runs[item.run_index], item.start, item.stop,
                          task.question(0)), item.answer) for item in chosen]


def model_answers(model: FmriLM, task: TaskSpec, runs: Sequence[LMRun],
                  items: Sequence[TaskItem], decoding: DecodingConfig,
                  turns: Sequence[tuple[dict[str, object], str]] = ()
                  ) -> np.ndarray | list[str]:
    """The model's answers to ``items`` (probabilities, numbers or texts)."""
    prompts = [task_prompts(model, task, runs[item.run_index], [(item.start, item.stop)],
                            turns)[0] for item in items]
    if task.kind == "class":  # calibrated without few-shot turns (as it was fitted)
        return softmax(class_scores(model, task, prompts) if not turns else
                       score_candidates(model, prompts, task.classes))
    if task.kind == "number":
        return number_answers(model, task, prompts, decoding)
    return generate(model, prompts, decoding)


def shuffled_pairs(predicted: Sequence[str], truth: Sequence[str], n_permutations: int = 2000,
                   seed: int = 0) -> dict[str, float]:
    """How much closer each caption is to its own true caption than to the others'.

    The mean all-MiniLM-L6-v2 cosine of the matched (caption, true caption) pairs against
    its distribution when the true captions are shuffled among the items.

    Returns
    -------
    dict
        ``shuffled_cosine`` (the mean over permutations) and ``p_vs_shuffled`` (one-sided
        permutation p-value, ``(1 + #{shuffled >= matched}) / (1 + n_permutations)``).
    """
    a, b = encode_sentences(list(predicted)), encode_sentences(list(truth))
    similarity = a @ b.T
    matched = float(np.trace(similarity)) / len(a)
    rng = np.random.default_rng(seed)
    shuffled = np.array([similarity[np.arange(len(a)), rng.permutation(len(a))].mean()
                         for _ in range(n_permutations)])
    return {"shuffled_cosine": float(shuffled.mean()),
            "p_vs_shuffled": float((1 + (shuffled >= matched).sum()) / (1 + n_permutations))}


def score(task: TaskSpec, truth: Sequence[str], predicted: np.ndarray | list[str],
          subjects: Sequence[str], seed: int = 0) -> dict[str, float | int | None]:
    """Metrics of one set of answers, with a bootstrap interval over ``subjects`` (the
    participant of each item) and, for classes, the p-value against chance."""
    if task.kind == "class":
        metrics = classification_metrics(truth, predicted, task.classes)
        correct = np.asarray(predicted).argmax(axis=1) == np.array(
            [task.classes.index(t) if t in task.classes else -1 for t in truth])
        metrics["p_vs_chance"] = float(binomtest(int(correct.sum()), len(correct),
                                                 metrics["chance_accuracy"],
                                                 alternative="greater").pvalue)
        main, per_item = "accuracy", correct
    elif task.kind == "number":
        values = np.asarray(predicted, dtype=float)
        truth_values = np.array([float(t) for t in truth])
        valid = np.isfinite(values)
        metrics = {"mae": float(np.abs(values[valid] - truth_values[valid]).mean())
                   if valid.any() else None, "answered": float(valid.mean()), "n": len(truth)}
        if not valid.any():
            return metrics
        main, per_item = "mae", np.abs(values - truth_values)[valid]
        subjects = [s for s, v in zip(subjects, valid, strict=True) if v]
    else:
        metrics = caption_similarity(list(predicted), list(truth))
        main, per_item = "minilm_cosine", pairwise_cosines(list(predicted), list(truth))
        metrics |= shuffled_pairs(list(predicted), list(truth), seed=seed)
    low, high = subject_bootstrap(per_item, subjects, seed=seed)
    return metrics | {f"{main}_ci_low": low, f"{main}_ci_high": high}


def evaluate_task(model: FmriLM, task: TaskSpec, train_runs: Sequence[LMRun],
                  test_runs: Sequence[LMRun], participants: pd.DataFrame | None,
                  setting: str, few_shot_k: int, decoding: DecodingConfig, baselines: bool,
                  rng: np.random.Generator) -> dict[str, object]:
    """Metrics of one task on the test runs: the model, few-shot, baselines."""
    context, segment = model.config.window_context, model.config.run_segment_windows
    train_items = task_items(task, train_runs, participants, context, segment)
    test_items = task_items(task, test_runs, participants, context, segment)
    result: dict[str, object] = {"kind": task.kind, "level": task.level, "setting": setting,
                                 "classes": list(task.classes), "n_train": len(train_items),
                                 "n_test": len(test_items)}
    if not test_items:
        return result | {"skipped": "no labelled test item"}
    truth = [item.answer for item in test_items]
    subjects = [test_runs[item.run_index].subject for item in test_items]
    seed = int(rng.integers(2**31))

    def scored(predicted: np.ndarray | list[str]) -> dict[str, float | int | None]:
        return score(task, truth, predicted, subjects, seed)

    result["fmrilm"] = scored(model_answers(model, task, test_runs, test_items, decoding))
    if task.kind == "class":
        result["chance"] = scored(np.tile(
            [float(c == max(task.classes, key=[i.answer for i in train_items].count))
             for c in task.classes], (len(test_items), 1)))
    if few_shot_k > 0 and train_items:
        turns = few_shot_turns(model, task, train_runs, train_items, few_shot_k, rng)
        result["few_shot"] = scored(model_answers(model, task, test_runs, test_items,
                                                  decoding, turns))
        result["few_shot_k"] = few_shot_k
    if task.kind == "number":
        mean = np.mean([float(item.answer) for item in train_items])
        result["chance_mae"] = float(np.mean([abs(float(t) - mean) for t in truth]))
    if baselines and train_items:
        answers = [item.answer for item in train_items]
        kinds = baseline_kinds(task.level, [*train_runs, *test_runs])
        for kind in kinds if task.kind != "class" or len(set(answers)) > 1 else ():
            features = [item_features(items, runs, kind, task.level, context,
                                      model.vocab.codebook_size)
                        for items, runs in ((train_items, train_runs),
                                            (test_items, test_runs))]
            result[f"baseline_{kind}"] = scored(baseline_predictions(
                task, features[0], answers, features[1]))
    return result


def evaluate_descriptions(model: FmriLM, runs: Sequence[LMRun], decoding: DecodingConfig,
                          max_windows: int | None = None) -> dict[str, object]:
    """Generated window descriptions against the runs' descriptor texts, and captions/s."""
    pairs = [(run, window) for run in runs for window in range(run.n_windows)
             if run.window_texts is not None]
    if max_windows is not None:
        pairs = pairs[:max_windows]
    if not pairs:
        return {"skipped": "no window descriptor text"}
    prompts = [window_prompts(model, run, [window], WINDOW_DESCRIBE[0])[0]
               for run, window in pairs]
    started = time.perf_counter()
    texts = generate(model, prompts, decoding)
    rate = len(texts) / (time.perf_counter() - started)
    truth = [run.window_texts[window] for run, window in pairs]
    return {"fmrilm": caption_similarity(texts, truth), "captions_per_second": rate,
            "examples": [{"true": t, "generated": g} for t, g in list(zip(truth, texts,
                                                                        strict=True))[:3]]}


def evaluate_fmrilm(model: FmriLM, train_runs: Sequence[LMRun], test_runs: Sequence[LMRun],
                    participants: pd.DataFrame | None = None,
                    held_out_tasks: Sequence[TaskSpec] = (), few_shot_k: int = 2,
                    few_shot_all: bool = False, decoding: DecodingConfig | None = None,
                    baselines: bool = True, describe: bool = True,
                    max_describe: int | None = 64, seed: int = 0) -> dict[str, object]:
    """Run the evaluation protocol (module docstring) on test subjects.

    Parameters
    ----------
    model : FmriLM
        Tuned on ``model.tasks``.
    train_runs, test_runs : sequence of LMRun
        Runs of disjoint subjects (training runs give few-shot examples and fit baselines).
    participants : DataFrame, optional
    held_out_tasks : sequence of TaskSpec
        Tasks kept out of tuning (answer sets resolved), evaluated zero-shot and few-shot.
    few_shot_k : int, default=2
        Examples per class in few-shot prompts (0: no few-shot).
    few_shot_all : bool, default=False
        Few-shot for the tuned tasks too (by default only for held-out ones).
    decoding : DecodingConfig, optional
    baselines : bool, default=True
    describe : bool, default=True
        Also score generated window descriptions against the descriptor texts.
    max_describe : int, optional
        At most this many windows described (generation is the slow part).
    seed : int

    Returns
    -------
    dict
        ``train_subjects``, ``test_subjects``, ``tasks`` (per task: ``fmrilm``,
        ``few_shot``, ``baseline_fc``, ``baseline_tokens`` metrics), ``descriptions``,
        ``decoding``.
    """
    overlap = {r.subject for r in train_runs} & {r.subject for r in test_runs}
    if overlap:
        raise ValueError(f"Subjects {sorted(overlap)} are in both the training and the test "
                         "runs; hold out whole subjects.")
    decoding = decoding or DecodingConfig()
    rng = np.random.default_rng(seed)
    tasks: dict[str, object] = {}
    result = {"train_subjects": sorted({r.subject for r in train_runs}),
              "test_subjects": sorted({r.subject for r in test_runs}), "tasks": tasks,
              "decoding": decoding.to_dict()}
    steps = len(model.tasks) + len(held_out_tasks) + int(describe)
    with model.merged(), Heartbeat("Held-out evaluation", steps, "questions") as beat:
        for task in model.tasks:
            tasks[task.name] = evaluate_task(model, task, train_runs, test_runs, participants,
                                             "tuned", few_shot_k if few_shot_all else 0,
                                             decoding, baselines, rng)
            beat.advance()
        for task in held_out_tasks:
            tasks[task.name] = evaluate_task(model, task, train_runs, test_runs, participants,
                                             "zero-shot", few_shot_k, decoding, baselines, rng)
            beat.advance()
        if describe:
            result["descriptions"] = evaluate_descriptions(model, test_runs, decoding,
                                                           max_describe)
    return result
