"""Using a trained :class:`~.model.FmriLM`: captions, constrained answers, embeddings.

* **Generation** (:func:`generate`): batched, left-padded, greedy by default; the settings
  (:class:`DecodingConfig`) are recorded with the outputs. A greedy answer leaves its batch
  at its stop token (on 2 CPU cores a decoding step costs about 60 ms for reading the
  weights plus 4 ms per running answer, so a batch no longer pays for its longest answer
  in every row).
* **Constrained answers** (:func:`score_candidates`): a classification question is not
  answered by free generation; every allowed answer is scored by the sum of its tokens'
  log-probabilities after the prompt (its stop token included), the best one is the answer,
  and a softmax over those sequence log-probabilities gives each answer's probability (the
  scores AUROC is computed from). Each prompt is read once and its answers continue from
  its cached keys and values; what all prompts begin with (few-shot turns) is read once.
* **Calibration** (:func:`calibrate_tasks`): a tuned model prefers some answers whatever
  the scan (on the cohort of ``benchmarks/bench_llm.py``, the first class listed in the
  question for 135 of 143 held-out windows, although its probabilities ranked the true
  class well: AUROC 0.75). Each class's mean log-probability over prompts about training
  subjects is subtracted from its score (contextual calibration, Zhao et al., 2021,
  arXiv:2102.09690). No answer is used, only the prompts.
* **Embeddings** (:func:`fmri_embeddings`): the last hidden states at the fMRI tokens of a
  run read as ``<fmri> t1 ... tn </fmri>``, averaged over each window's tokens: one vector
  per time patch; their mean is the run's vector.

Every function takes :class:`~.prompts.Prompt` objects: ids, and the features the model
reads at their fMRI positions.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from transformers import DynamicCache

from fmrilm_bids.fmrilm.llm.config import DecodingConfig
from fmrilm_bids.fmrilm.llm.metrics import softmax
from fmrilm_bids.fmrilm.llm.model import FmriLM
from fmrilm_bids.fmrilm.llm.prompts import WINDOW_DESCRIBE, Prompt
from fmrilm_bids.fmrilm.llm.runs import LMRun, event_windows, run_segments, window_segment
from fmrilm_bids.fmrilm.llm.tasks import TaskSpec, task_items
from fmrilm_bids.utils.devices import autocast

if TYPE_CHECKING:
    from transformers import DynamicCache

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
#: The end of a sentence: a full stop, question or exclamation mark before a space or the end
#: (not a decimal point).
SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def _features(prompts: Sequence[Prompt], device: torch.device) -> torch.Tensor | None:
    """The features of ``prompts``, one after the other (None when none has any)."""
    parts = [p.features for p in prompts if p.features is not None]
    return torch.from_numpy(np.concatenate(parts)).to(device) if parts else None


@torch.inference_mode()
def generate(model: FmriLM, prompts: Sequence[Prompt],
             decoding: DecodingConfig | None = None) -> list[str]:
    """Generate the answer to each prompt (from :class:`~.prompts.Formatter`).

    Prompts are left-padded and read as input embeddings (:meth:`~.model.FmriLM.embed`),
    so the model sees the features of their fMRI tokens. Without sampling, identical
    prompts are answered once, and greedy decoding (:func:`_greedy`) lets each answer
    leave the batch at its stop token; sampling and beam search go through transformers'
    ``generate``.

    Returns
    -------
    list of str
        Decoded new tokens, special tokens (fMRI tokens included) left out, stripped.
    """
    decoding = decoding or DecodingConfig()
    model.eval()
    device = model.device
    pad_id = model.tokenizer.pad_token_id
    greedy = not decoding.do_sample and decoding.num_beams == 1
    options = {} if greedy else _generate_options(model, decoding)
    rows = list(range(len(prompts)))
    if not decoding.do_sample:  # greedy and beam search: identical prompts, identical texts
        first: dict[tuple, int] = {}
        rows = [first.setdefault(prompt.key(), row) for row, prompt in enumerate(prompts)]
    distinct = sorted(set(rows))
    texts = {}
    for start in range(0, len(distinct), decoding.batch_size):
        chosen = distinct[start:start + decoding.batch_size]
        width = max(len(prompts[row]) for row in chosen)
        ids = torch.full((len(chosen), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for index, row in enumerate(chosen):
            ids[index, width - len(prompts[row]):] = torch.tensor(prompts[row].ids)
            mask[index, width - len(prompts[row]):] = 1
        features = _features([prompts[row] for row in chosen], device)
        with autocast(device):
            if greedy:
                output = _greedy(model, ids.to(device), mask.to(device), features, decoding)
            else:
                output = model.model.generate(
                    inputs_embeds=model.embed(ids.to(device), features),
                    attention_mask=mask.to(device), **options)
        texts |= {row: model.tokenizer.decode(tokens, skip_special_tokens=True).strip()
                  for row, tokens in zip(chosen, output, strict=True)}
    return [texts[row] for row in rows]


def _generate_options(model: FmriLM, decoding: DecodingConfig) -> dict[str, object]:
    """transformers' ``generate`` settings of sampling or beam search (sampling seeded)."""
    options: dict[str, object] = {"max_new_tokens": decoding.max_new_tokens,
                                  "min_new_tokens": decoding.min_new_tokens,
                                  "do_sample": decoding.do_sample,
                                  "num_beams": decoding.num_beams,
                                  "repetition_penalty": decoding.repetition_penalty,
                                  "eos_token_id": model.formatter.stop_id,
                                  "pad_token_id": model.tokenizer.pad_token_id}
    if not decoding.do_sample:
        return options | {"temperature": None, "top_p": None, "top_k": None}
    torch.manual_seed(decoding.seed)
    return options | {"temperature": decoding.temperature, "top_p": decoding.top_p}


def _greedy(model: FmriLM, ids: torch.Tensor, mask: torch.Tensor,
            features: torch.Tensor | None, decoding: DecodingConfig) -> list[list[int]]:
    """Greedy decoding of left-padded prompts (``ids``, ``mask``), as transformers'
    ``generate`` does it (``min_new_tokens`` holds the stop token back, the repetition
    penalty weighs the answer's own tokens), except that an answer leaves the batch at its
    stop token: a decoding step reads every weight once for the answers still running, so
    short answers no longer wait for the longest one.

    Returns
    -------
    list of list of int
        Each prompt's new tokens, without the stop token.
    """
    stop, penalty = model.formatter.stop_id, decoding.repetition_penalty
    decoder, head = model.model.get_decoder(), model.model.get_output_embeddings()
    embed = model.model.get_input_embeddings()
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    cache = DynamicCache()
    hidden = model.hidden_states(ids, mask, cache, features, positions)[:, -1]
    rows = torch.arange(len(ids), device=ids.device)
    history = torch.zeros((len(ids), 0), dtype=torch.long, device=ids.device)
    answers: list[list[int]] = [[] for _ in range(len(ids))]
    for step in range(decoding.max_new_tokens):
        logits = head(hidden).float()
        if penalty != 1.0 and history.shape[1]:
            seen = logits.gather(1, history)
            logits.scatter_(1, history, torch.where(seen < 0, seen * penalty, seen / penalty))
        if step < decoding.min_new_tokens:
            logits[:, stop] = -float("inf")
        tokens = logits.argmax(dim=1)
        running = tokens != stop
        for row, token in zip(rows[running].tolist(), tokens[running].tolist(), strict=True):
            answers[row].append(token)
        if step + 1 == decoding.max_new_tokens or not running.any():
            break
        if not running.all():
            kept = running.nonzero()[:, 0]
            cache = _select(cache, kept)
            rows, tokens, mask = rows[kept], tokens[kept], mask[kept]
            positions, history = positions[kept], history[kept]
        history = torch.cat([history, tokens[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        positions = positions[:, -1:] + 1
        hidden = decoder(inputs_embeds=embed(tokens[:, None]), attention_mask=mask,
                         position_ids=positions, cache=cache,
                         use_cache=True).last_hidden_state[:, -1]
    return answers


def _read(model: FmriLM, cache: DynamicCache, ids: torch.Tensor,
          features: torch.Tensor | None = None) -> torch.Tensor:
    """Last hidden states ``(N, T, hidden)`` of ``ids`` read after the sequences in ``cache``.

    ``cache`` (one unpadded sequence per row, or none yet) keeps the new tokens too;
    ``features`` are those of the fMRI tokens of ``ids`` (row-major).
    """
    mask = torch.ones((len(ids), cache.get_seq_length() + ids.shape[1]), dtype=torch.long,
                      device=ids.device)
    return model.hidden_states(ids, mask, cache, features=features)


def _shared_prefix(model: FmriLM, prompts: Sequence[Prompt]) -> int:
    """Tokens that all ``prompts`` begin with, inputs included: ids, and the features of
    the fMRI tokens among them (cut before the first fMRI token whose features differ,
    and never inside a segment: before its ``<fmri>``); every prompt keeps at least one
    token of its own."""
    ordered = sorted(prompts, key=lambda p: p.ids)
    low, high = ordered[0].ids, ordered[-1].ids  # lexicographic extremes share what all do
    most = min(len(p) for p in prompts) - 1
    shared = next((i for i in range(most) if low[i] != high[i]), most)
    positions = np.flatnonzero(model.fmri_positions(torch.tensor(low[:shared])).numpy())
    if len(positions) and prompts[0].features is not None:
        reference = prompts[0].features[:len(positions)]
        same = np.logical_and.reduce([(p.features[:len(positions)] == reference).all(axis=1)
                                      for p in prompts[1:]]) if len(prompts) > 1 else None
        if same is not None and not same.all():
            shared = int(positions[np.argmin(same)])
    opened = [i for i in range(shared) if low[i] == model.vocab.open_id]
    if opened and model.vocab.close_id not in low[opened[-1]:shared]:
        shared = opened[-1]  # a segment is read whole in one pass (its summary reads it all)
    return shared


def _select(cache: DynamicCache, rows: torch.Tensor) -> DynamicCache:
    """A new cache holding ``rows`` of ``cache`` (which is left as it is)."""

    return DynamicCache([(keys[rows], values[rows]) for keys, values, _ in cache])


@torch.inference_mode()
def score_candidates(model: FmriLM, prompts: Sequence[Prompt], candidates: Sequence[str],
                     batch_size: int = 32) -> np.ndarray:
    """Log-probability of each allowed answer after each prompt.

    Each distinct prompt is read once: the tokens all prompts begin with (system message,
    few-shot turns) in one pass, the rest in batches of prompts of one length; every answer
    is then read as a continuation of its prompt's cached keys and values, answers of one
    length together. Nothing is padded (a one-word answer and its stop token cost one token),
    so every attention pattern (sliding windows too) is the one of a lone sequence.

    Parameters
    ----------
    model : FmriLM
    prompts : sequence of Prompt
        From :class:`~.prompts.Formatter`, none empty.
    candidates : sequence of str
        Allowed answers.
    batch_size : int, default=32
        (prompt, answer) pairs per forward pass (at least one prompt per pass).

    Returns
    -------
    ndarray of shape (n_prompts, n_candidates)
        Sum over each answer's tokens (stop token included) of their log-probabilities.
    """

    model.eval()
    device = model.device
    answers = [model.formatter.answer_ids(candidate) for candidate in candidates]
    by_length: dict[int, list[int]] = {}
    for index, answer in enumerate(answers):
        by_length.setdefault(len(answer), []).append(index)
    unique = sorted({prompt.key(): prompt for prompt in prompts}.values(), key=len)
    shared = _shared_prefix(model, unique)
    n_shared = int(model.fmri_positions(torch.tensor(unique[0].ids[:shared])).sum())
    per_pass = max(1, batch_size // len(answers))
    prefix = DynamicCache()
    scores = {}
    with autocast(device):
        if shared:
            _read(model, prefix, torch.tensor([unique[0].ids[:shared]], device=device),
                  _features([Prompt(unique[0].ids[:shared], None if unique[0].features is None
                                    else unique[0].features[:n_shared])], device))
        for same in (list(group) for _, group in itertools.groupby(unique, key=len)):
            for start in range(0, len(same), per_pass):
                batch = same[start:start + per_pass]
                cache = _select(prefix, torch.zeros(len(batch), dtype=torch.long,
                                                    device=device))
                rest = [Prompt(p.ids[shared:], None if p.features is None
                               else p.features[n_shared:]) for p in batch]
                ends = _read(model, cache, torch.tensor([p.ids for p in rest], device=device),
                             _features(rest, device))[:, -1]
                found = np.zeros((len(batch), len(answers)), dtype=np.float32)
                for length, group in by_length.items():
                    pairs = torch.arange(len(batch), device=device).repeat_interleave(
                        len(group))
                    targets = torch.tensor([answers[j] for j in group],
                                           device=device).repeat(len(batch), 1)
                    states = ends[pairs, None]
                    if length > 1:
                        states = torch.cat([states, _read(model, _select(cache, pairs),
                                                          targets[:, :-1])], dim=1)
                    nll = model.target_nll(states, targets).cpu().numpy()
                    found[:, group] = -nll.reshape(len(batch), len(group))
                scores |= {prompt.key(): row for prompt, row in zip(batch, found,
                                                                    strict=True)}
    return np.stack([scores[prompt.key()] for prompt in prompts])


def user_message(model: FmriLM, run: LMRun, start: int, stop: int,
                 question: str) -> dict[str, object]:
    """A user turn about windows ``[start, stop)`` of ``run``, with the segment's features
    when the model reads them."""
    message = model.formatter.user_message(run, start, stop, question)
    if model.projector is None:
        message.pop("fmri", None)
    return message


def task_prompts(model: FmriLM, task: TaskSpec, run: LMRun,
                 segments: Sequence[tuple[int, int]],
                 turns: Sequence[tuple[dict[str, object], str]] = ()) -> list[Prompt]:
    """Prompts asking ``task``'s first phrasing about each segment (after ``turns``)."""
    formatter = model.formatter
    return [formatter.prompt(formatter.conversation(
        turns, user_message(model, run, start, stop, task.question(0))))
        for start, stop in segments]


#: Prompts about training subjects that calibrate a classification question.
CALIBRATION_PROMPTS = 128


def class_scores(model: FmriLM, task: TaskSpec, prompts: Sequence[Prompt]) -> np.ndarray:
    """Each allowed answer's log-probability (:func:`score_candidates`) less the task's
    calibration, ``(n_prompts, n_classes)``; a softmax over a row gives the probabilities."""
    scores = score_candidates(model, prompts, task.classes)
    return scores - np.asarray(task.calibration) if task.calibration else scores


def calibrate_tasks(model: FmriLM, tasks: Sequence[TaskSpec], runs: Sequence[LMRun],
                    participants: pd.DataFrame | None,
                    n_prompts: int = CALIBRATION_PROMPTS, seed: int = 0) -> list[TaskSpec]:
    """``tasks`` with the calibration of each classification question set (module
    docstring).

    Parameters
    ----------
    model : FmriLM
        The trained model.
    tasks : sequence of TaskSpec
    runs : sequence of LMRun
        Runs of training subjects (their prompts are read, not their answers).
    participants : DataFrame, optional
    n_prompts : int, default=128
        Prompts per question (a seeded sample when there are more).
    seed : int

    Returns
    -------
    list of TaskSpec
        :attr:`TaskSpec.calibration`: each class's mean log-softmax score over the prompts
        (tasks other than classification, and those without prompts, unchanged).
    """
    rng = np.random.default_rng(seed)
    calibrated = []
    for task in tasks:
        items = task_items(task, runs, participants, model.config.window_context,
                           model.config.run_segment_windows) if task.kind == "class" else []
        if not items:
            calibrated.append(task)
            continue
        chosen = sorted(rng.choice(len(items), min(n_prompts, len(items)), replace=False))
        prompts = [task_prompts(model, task, runs[items[i].run_index],
                                [(items[i].start, items[i].stop)])[0] for i in chosen]
        scores = score_candidates(model, prompts, task.classes)
        log_probs = scores - np.logaddexp.reduce(scores, axis=1, keepdims=True)
        calibrated.append(replace(task, calibration=tuple(float(v)
                                                           for v in log_probs.mean(axis=0))))
    return calibrated


#: Tokens a number answer may take ("34", "1.75" and the stop: a few).
NUMBER_TOKENS = 8


def number_answer(task: TaskSpec, text: str) -> float:
    """The first number in ``text`` as ``task``'s answer (NaN when there is none, or when
    it is not :meth:`~.tasks.TaskSpec.plausible`)."""
    match = NUMBER.search(text)
    return task.plausible(float(match.group())) if match else float("nan")


def number_answers(model: FmriLM, task: TaskSpec, prompts: Sequence[Prompt],
                   decoding: DecodingConfig | None = None) -> np.ndarray:
    """``task``'s number answer to each prompt (:func:`number_answer` of a text of at most
    :data:`NUMBER_TOKENS` tokens)."""
    decoding = decoding or DecodingConfig()
    short = replace(decoding, max_new_tokens=min(decoding.max_new_tokens, NUMBER_TOKENS))
    return np.array([number_answer(task, text) for text in generate(model, prompts, short)])


@torch.inference_mode()
def fmri_embeddings(model: FmriLM, run: LMRun) -> tuple[np.ndarray, np.ndarray]:
    """Hidden-state embeddings of a run (module docstring).

    Returns
    -------
    patches : ndarray of shape (n_windows, hidden), float32
    run : ndarray of shape (hidden,), float32
    """
    model.eval()
    device = model.device
    per_window = run.tokens_per_window
    length = max(1, (model.config.max_length - 2) // per_window)
    vectors = []
    for start in range(0, run.n_windows, length):
        stop = min(start + length, run.n_windows)
        ids = torch.tensor([model.vocab.segment_ids(run.token_ids[start:stop])], device=device)
        features = (model.formatter.segment_features(run, start, stop)
                    if model.projector is not None else None)
        with autocast(device):
            hidden = model.hidden_states(ids, torch.ones_like(ids), features=None
                                         if features is None else
                                         torch.from_numpy(features).to(device))
        tokens = hidden[0, 1:-1].float().cpu().numpy()
        vectors.append(tokens.reshape(stop - start, per_window, -1).mean(axis=1))
    patches = np.concatenate(vectors).astype(np.float32)
    return patches, patches.mean(axis=0)


def caption_task(model: FmriLM) -> TaskSpec | None:
    """The tuned free-text question about a window's stimulus, if the model has one."""
    return next((task for task in model.tasks if task.level == "window"
                 and task.kind == "text" and task.source == "caption"), None)


def window_prompts(model: FmriLM, run: LMRun, windows: Sequence[int],
                   question: str) -> list[Prompt]:
    """Prompts asking ``question`` about each of ``windows`` (with its context)."""
    return [model.formatter.prompt([user_message(
        model, run, *window_segment(window, model.config.window_context), question)])
        for window in windows]


#: Below this probability of its most likely class, a caption says the model is unsure.
CONFIDENT = 0.5


def condition_task(model: FmriLM) -> TaskSpec | None:
    """The tuned classification question about a window's trial type, if the model has one."""
    return next((task for task in model.tasks if task.level == "window"
                 and task.kind == "class" and task.source == "trial_type"), None)


def confidence_sentence(probabilities: np.ndarray, classes: Sequence[str]) -> str:
    """What the model thinks was shown, in words: the most likely class and its probability,
    or, below :data:`CONFIDENT`, that it is unsure (with the two most likely classes)."""
    order = np.argsort(probabilities)[::-1]
    best = order[0]
    if probabilities[best] >= CONFIDENT:
        return f"Most likely {classes[best]} (p = {probabilities[best]:.2f})."
    second = order[1] if len(order) > 1 else best
    return (f"Unsure what was shown: perhaps {classes[best]} (p = {probabilities[best]:.2f}) "
            f"or {classes[second]} (p = {probabilities[second]:.2f}).")


def whole_sentences(text: str) -> str:
    """``text`` without an unfinished last sentence (generation stopped by
    ``max_new_tokens`` in mid-sentence); unchanged when it holds no finished sentence, so a
    caption is never emptied."""
    ends = [match.end() for match in SENTENCE_END.finditer(text)]
    return text[:ends[-1]] if ends else text


def run_captions(model: FmriLM, run: LMRun, decoding: DecodingConfig | None = None,
                 condition: pd.DataFrame | None = None
                 ) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """A caption of every window and of every event, generated together.

    A window's caption is its generated description, cut after its last finished sentence
    (:func:`whole_sentences`); in a run with events, followed by what
    the model thinks was shown (:func:`confidence_sentence` of ``condition``, the window
    answers of the tuned trial-type question). An event is captioned from the window holding
    its response, with the tuned stimulus question (:func:`caption_task`), else with the
    window description; when that window's most likely class is below :data:`CONFIDENT`,
    the caption ends with "(uncertain)". Events whose response falls after the run's end
    are left out (nothing of them was recorded).

    Parameters
    ----------
    condition : DataFrame, optional
        :func:`answer_tasks`' table of the trial-type question (``p_<class>`` per window).

    Returns
    -------
    windows : DataFrame
        ``onset``, ``duration``, ``caption`` of every window.
    events : DataFrame or None
        ``onset``, ``duration``, ``trial_type`` (when the events have one), ``caption`` of
        the events inside the run; None for a run without events.
    """
    prompts = window_prompts(model, run, range(run.n_windows), WINDOW_DESCRIBE[0])
    response_windows = event_windows(run)
    inside = sorted({int(w) for w in response_windows if w >= 0})
    task = caption_task(model)
    prompts += window_prompts(model, run, inside,
                              task.question(0) if task else WINDOW_DESCRIBE[0])
    texts = [whole_sentences(text) for text in generate(model, prompts, decoding)]
    captions = texts[:run.n_windows]
    unsure = np.zeros(run.n_windows, dtype=bool)
    if condition is not None and len(response_windows):
        classes = [c.removeprefix("p_") for c in condition.columns if c.startswith("p_")]
        probabilities = condition[[f"p_{c}" for c in classes]].to_numpy(float)
        captions = [f"{text.rstrip()} {confidence_sentence(p, classes)}".strip()
                    for text, p in zip(captions, probabilities, strict=True)]
        unsure = probabilities.max(axis=1) < CONFIDENT
    windows = pd.DataFrame({"onset": run.onsets, "duration": run.durations,
                            "caption": captions})
    if not len(response_windows):
        return windows, None
    by_window = {window: text + (" (uncertain)" if unsure[window] else "")
                 for window, text in zip(inside, texts[run.n_windows:], strict=True)}
    kept = response_windows >= 0
    events = pd.DataFrame({"onset": run.events["onset"].to_numpy()[kept],
                           "duration": run.events["duration"].to_numpy()[kept]})
    if "trial_type" in run.events:
        events["trial_type"] = run.events["trial_type"].to_numpy()[kept]
    events["caption"] = [by_window[int(w)] for w in response_windows[kept]]
    return windows, events


def answer_tasks(model: FmriLM, run: LMRun,
                 decoding: DecodingConfig | None = None) -> dict[str, pd.DataFrame]:
    """Answers of ``run`` to the tuned questions (free-text window tasks excepted).

    Window-level classification: one row per window. Run-level: one row for the run (the
    candidates' log-probabilities averaged over its segments; the median of the numbers
    read from each segment's answer).

    Returns
    -------
    dict of str to DataFrame
        Per task: ``onset``, ``duration``, ``answer`` and, for classification, one
        ``p_<answer>`` column per allowed answer.
    """
    answers = {}
    for task in model.tasks:
        if task.level == "window" and task.kind != "class":
            continue
        if task.level == "window":
            segments = [window_segment(w, model.config.window_context)
                        for w in range(run.n_windows)]
            onsets, durations = run.onsets, run.durations
        else:
            segments = run_segments(run.n_windows, model.config.run_segment_windows)
            onsets = [run.onsets[0]]
            durations = [run.onsets[-1] + run.durations[-1] - run.onsets[0]]
        prompts = task_prompts(model, task, run, segments)
        table = pd.DataFrame({"onset": onsets, "duration": durations})
        if task.kind == "class":
            log_probs = class_scores(model, task, prompts)
            if task.level == "run":
                log_probs = log_probs.mean(axis=0, keepdims=True)
            probabilities = softmax(log_probs)
            table["answer"] = [task.classes[i] for i in probabilities.argmax(axis=1)]
            for column, name in enumerate(task.classes):
                table[f"p_{name}"] = probabilities[:, column]
        else:
            values = number_answers(model, task, prompts, decoding)
            table["answer"] = [float(np.nanmedian(values)) if np.isfinite(values).any()
                               else float("nan")]
        answers[task.name] = table
    return answers
