"""Using a trained :class:`~.model.FmriLM`: captions, constrained answers, embeddings.

* **Generation** (:func:`generate`): batched, left-padded, greedy by default; the settings
  (:class:`DecodingConfig`) are recorded with the outputs.
* **Constrained answers** (:func:`score_candidates`): a classification question is not
  answered by free generation; every allowed answer is scored by the sum of its tokens'
  log-probabilities after the prompt (its stop token included), the best one is the answer,
  and a softmax over those sequence log-probabilities gives each answer's probability (the
  scores AUROC is computed from). Each prompt is read once and its answers continue from
  its cached keys and values; what all prompts begin with (few-shot turns) is read once.
* **Embeddings** (:func:`fmri_embeddings`): the last hidden state at each fMRI token of a
  run read as ``<fmri> t1 ... tn </fmri>``: one vector per time patch; their mean is the
  run's vector.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from transformers import DynamicCache

from fmrilm_bids.fmrilm.llm.config import DecodingConfig
from fmrilm_bids.fmrilm.llm.metrics import softmax
from fmrilm_bids.fmrilm.llm.model import FmriLM
from fmrilm_bids.fmrilm.llm.prompts import WINDOW_DESCRIBE
from fmrilm_bids.fmrilm.llm.runs import LMRun, event_windows, run_segments, window_segment
from fmrilm_bids.fmrilm.llm.tasks import TaskSpec
from fmrilm_bids.utils.devices import autocast

if TYPE_CHECKING:
    from transformers import DynamicCache

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@torch.inference_mode()
def generate(model: FmriLM, prompts: Sequence[list[int]],
             decoding: DecodingConfig | None = None) -> list[str]:
    """Generate the answer to each prompt (ids from :class:`~.prompts.Formatter`).

    Without sampling, identical prompts are answered once.

    Returns
    -------
    list of str
        Decoded new tokens, special tokens (fMRI tokens included) left out, stripped.
    """
    decoding = decoding or DecodingConfig()
    model.eval()
    device = model.device
    pad_id = model.tokenizer.pad_token_id
    options: dict[str, object] = {"max_new_tokens": decoding.max_new_tokens,
                                  "do_sample": decoding.do_sample,
                                  "num_beams": decoding.num_beams,
                                  "repetition_penalty": decoding.repetition_penalty,
                                  "eos_token_id": model.formatter.stop_id,
                                  "pad_token_id": pad_id}
    if decoding.do_sample:
        options |= {"temperature": decoding.temperature, "top_p": decoding.top_p}
        torch.manual_seed(decoding.seed)
    else:
        options |= {"temperature": None, "top_p": None, "top_k": None}
    rows = list(range(len(prompts)))
    if not decoding.do_sample:  # greedy and beam search: identical prompts, identical texts
        first: dict[tuple[int, ...], int] = {}
        rows = [first.setdefault(tuple(prompt), row) for row, prompt in enumerate(prompts)]
    distinct = sorted(set(rows))
    texts = {}
    for start in range(0, len(distinct), decoding.batch_size):
        chosen = distinct[start:start + decoding.batch_size]
        width = max(len(prompts[row]) for row in chosen)
        ids = torch.full((len(chosen), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for index, row in enumerate(chosen):
            ids[index, width - len(prompts[row]):] = torch.tensor(prompts[row])
            mask[index, width - len(prompts[row]):] = 1
        with autocast(device):
            output = model.model.generate(input_ids=ids.to(device),
                                          attention_mask=mask.to(device), **options)
        texts |= {row: model.tokenizer.decode(tokens[width:], skip_special_tokens=True)
                  .strip() for row, tokens in zip(chosen, output, strict=True)}
    return [texts[row] for row in rows]


def _read(model: FmriLM, cache: DynamicCache, ids: torch.Tensor) -> torch.Tensor:
    """Last hidden states ``(N, T, hidden)`` of ``ids`` read after the sequences in ``cache``.

    ``cache`` (one unpadded sequence per row, or none yet) keeps the new tokens too.
    """
    mask = torch.ones((len(ids), cache.get_seq_length() + ids.shape[1]), dtype=torch.long,
                      device=ids.device)
    return model.hidden_states(ids, mask, cache)


def _select(cache: DynamicCache, rows: torch.Tensor) -> DynamicCache:
    """A new cache holding ``rows`` of ``cache`` (which is left as it is)."""

    return DynamicCache([(keys[rows], values[rows]) for keys, values, _ in cache])


@torch.inference_mode()
def score_candidates(model: FmriLM, prompts: Sequence[list[int]], candidates: Sequence[str],
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
    prompts : sequence of list of int
        Prompt ids (:class:`~.prompts.Formatter`), none empty.
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
    unique = sorted(dict.fromkeys(tuple(prompt) for prompt in prompts), key=len)
    most = len(unique[0]) - 1  # every prompt keeps a token at least of its own
    low, high = min(unique), max(unique)  # lexicographic extremes share what all share
    shared = next((i for i in range(most) if low[i] != high[i]), most)
    per_pass = max(1, batch_size // len(answers))
    prefix = DynamicCache()
    scores = {}
    with autocast(device):
        if shared:
            _read(model, prefix, torch.tensor([unique[0][:shared]], device=device))
        for same in (list(group) for _, group in itertools.groupby(unique, key=len)):
            for start in range(0, len(same), per_pass):
                batch = same[start:start + per_pass]
                cache = _select(prefix, torch.zeros(len(batch), dtype=torch.long,
                                                    device=device))
                ends = _read(model, cache, torch.tensor([prompt[shared:] for prompt in batch],
                                                        device=device))[:, -1]
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
                scores |= dict(zip(batch, found, strict=True))
    return np.stack([scores[tuple(prompt)] for prompt in prompts])


def task_prompts(model: FmriLM, task: TaskSpec, run: LMRun,
                 segments: Sequence[tuple[int, int]],
                 turns: Sequence[tuple[dict[str, str], str]] = ()) -> list[list[int]]:
    """Prompt ids asking ``task``'s first phrasing about each segment (after ``turns``)."""
    formatter = model.formatter
    return [formatter.prompt_ids(formatter.conversation(
        turns, formatter.user_message(run, start, stop, task.question(0))))
        for start, stop in segments]


def parse_number(text: str) -> float:
    """The first number in ``text`` (NaN when there is none)."""
    match = NUMBER.search(text)
    return float(match.group()) if match else float("nan")


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
    length = max(1, model.config.max_length - 2)
    vectors = []
    for start in range(0, run.n_windows, length):
        ids = torch.tensor([model.vocab.segment_ids(run.token_ids[start:start + length])],
                           device=device)
        with autocast(device):
            hidden = model.hidden_states(ids, torch.ones_like(ids))
        vectors.append(hidden[0, 1:-1].float().cpu().numpy())
    patches = np.concatenate(vectors).astype(np.float32)
    return patches, patches.mean(axis=0)


def caption_task(model: FmriLM) -> TaskSpec | None:
    """The tuned free-text question about a window's stimulus, if the model has one."""
    return next((task for task in model.tasks if task.level == "window"
                 and task.kind == "text" and task.source == "caption"), None)


def window_prompts(model: FmriLM, run: LMRun, windows: Sequence[int],
                   question: str) -> list[list[int]]:
    """Prompt ids asking ``question`` about each of ``windows`` (with its context)."""
    formatter = model.formatter
    return [formatter.prompt_ids([formatter.user_message(
        run, *window_segment(window, model.config.window_context), question)])
        for window in windows]


def run_captions(model: FmriLM, run: LMRun, decoding: DecodingConfig | None = None
                 ) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """A description of every window and a caption of every event, generated together.

    An event is captioned from the window holding its response, with the tuned stimulus
    question (:func:`caption_task`), else with the window description (then generated once,
    for the window and its events). Events whose response falls outside the run get no
    caption (``n/a``).

    Returns
    -------
    windows : DataFrame
        ``onset``, ``duration``, ``caption`` of every window.
    events : DataFrame or None
        ``onset``, ``duration``, ``trial_type`` (when the events have one), ``caption``;
        None for a run without events.
    """
    prompts = window_prompts(model, run, range(run.n_windows), WINDOW_DESCRIBE[0])
    response_windows = event_windows(run)
    inside = sorted({int(w) for w in response_windows if w >= 0})
    task = caption_task(model)
    prompts += window_prompts(model, run, inside,
                              task.question(0) if task else WINDOW_DESCRIBE[0])
    texts = generate(model, prompts, decoding)
    windows = pd.DataFrame({"onset": run.onsets, "duration": run.durations,
                            "caption": texts[:run.n_windows]})
    if not len(response_windows):
        return windows, None
    by_window = dict(zip(inside, texts[run.n_windows:], strict=True))
    events = pd.DataFrame({"onset": run.events["onset"].to_numpy(),
                           "duration": run.events["duration"].to_numpy()})
    if "trial_type" in run.events:
        events["trial_type"] = run.events["trial_type"].to_numpy()
    events["caption"] = [by_window.get(int(w), "n/a") for w in response_windows]
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
            log_probs = score_candidates(model, prompts, task.classes)
            if task.level == "run":
                log_probs = log_probs.mean(axis=0, keepdims=True)
            probabilities = softmax(log_probs)
            table["answer"] = [task.classes[i] for i in probabilities.argmax(axis=1)]
            for column, name in enumerate(task.classes):
                table[f"p_{name}"] = probabilities[:, column]
        else:
            texts = generate(model, prompts, decoding)
            values = [parse_number(text) for text in texts]
            table["answer"] = [float(np.nanmedian(values)) if np.isfinite(values).any()
                               else float("nan")]
        answers[task.name] = table
    return answers
