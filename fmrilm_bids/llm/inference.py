"""Using a trained :class:`~.model.FmriLM`: captions, constrained answers, embeddings.

* **Generation** (:func:`generate`): batched, left-padded, greedy by default; the settings
  (:class:`DecodingConfig`) are recorded with the outputs.
* **Constrained answers** (:func:`score_candidates`): a classification question is not
  answered by free generation; every allowed answer is scored by the sum of its tokens'
  log-probabilities after the prompt (its stop token included), the best one is the answer,
  and a softmax over those sequence log-probabilities gives each answer's probability (the
  scores AUROC is computed from).
* **Embeddings** (:func:`fmri_embeddings`): the last hidden state at each fMRI token of a
  run read as ``<fmri> t1 ... tn </fmri>``: one vector per time patch; their mean is the
  run's vector.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch

from fmrilm_bids.backend import autocast

from .data import (
    IGNORE_INDEX,
    WINDOW_DESCRIBE,
    Example,
    LMRun,
    TaskSpec,
    collate,
    event_windows,
    run_segments,
    window_segment,
)
from .metrics import softmax
from .model import FmriLM

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass(frozen=True)
class DecodingConfig:
    """How text is generated.

    Attributes
    ----------
    max_new_tokens : int
    do_sample : bool
        Sample (with ``temperature`` and ``top_p``) instead of greedy decoding.
    num_beams : int
        Beam search width (1: none).
    temperature, top_p : float
        Sampling settings (used only when sampling).
    repetition_penalty : float
    seed : int
        Seed of sampling.
    batch_size : int
        Prompts per forward pass.
    """

    max_new_tokens: int = 48
    do_sample: bool = False
    num_beams: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int = 0
    batch_size: int = 16

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@torch.inference_mode()
def generate(model: FmriLM, prompts: Sequence[list[int]],
             decoding: DecodingConfig | None = None) -> list[str]:
    """Generate the answer to each prompt (ids from :class:`~.data.Formatter`).

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
    texts = []
    for start in range(0, len(prompts), decoding.batch_size):
        batch = prompts[start:start + decoding.batch_size]
        width = max(len(prompt) for prompt in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, prompt in enumerate(batch):
            ids[row, width - len(prompt):] = torch.tensor(prompt)
            mask[row, width - len(prompt):] = 1
        with autocast(device):
            output = model.model.generate(input_ids=ids.to(device),
                                          attention_mask=mask.to(device), **options)
        texts += [model.tokenizer.decode(row[width:], skip_special_tokens=True).strip()
                  for row in output]
    return texts


@torch.inference_mode()
def score_candidates(model: FmriLM, prompts: Sequence[list[int]], candidates: Sequence[str],
                     batch_size: int = 32) -> np.ndarray:
    """Log-probability of each allowed answer after each prompt.

    Returns
    -------
    ndarray of shape (n_prompts, n_candidates)
        Sum over each answer's tokens (stop token included) of their log-probabilities.
    """
    model.eval()
    device = model.device
    answers = [model.formatter.answer_ids(candidate) for candidate in candidates]
    pairs = [Example(prompt + answer, [IGNORE_INDEX] * len(prompt) + answer, "answer", "")
             for prompt in prompts for answer in answers]
    scores = []
    for start in range(0, len(pairs), batch_size):
        tensors = {k: v.to(device) for k, v in
                   collate(pairs[start:start + batch_size],
                           model.tokenizer.pad_token_id).items()}
        with autocast(device):
            nll, _ = model(**tensors)
        scores.append(-nll.float().cpu().numpy())
    return np.concatenate(scores).reshape(len(prompts), len(candidates))


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


def window_captions(model: FmriLM, run: LMRun,
                    decoding: DecodingConfig | None = None) -> pd.DataFrame:
    """A description of every window: ``onset``, ``duration``, ``caption``."""
    formatter = model.formatter
    prompts = [formatter.prompt_ids([formatter.user_message(
        run, *window_segment(window, model.config.window_context), WINDOW_DESCRIBE[0])])
        for window in range(run.n_windows)]
    return pd.DataFrame({"onset": run.onsets, "duration": run.durations,
                         "caption": generate(model, prompts, decoding)})


def caption_task(model: FmriLM) -> TaskSpec | None:
    """The tuned free-text question about a window's stimulus, if the model has one."""
    return next((task for task in model.tasks if task.level == "window"
                 and task.kind == "text" and task.source == "caption"), None)


def event_captions(model: FmriLM, run: LMRun,
                   decoding: DecodingConfig | None = None) -> pd.DataFrame | None:
    """A caption of every event, from the window holding its response.

    Asks the tuned stimulus question (:func:`caption_task`), else for a window description.
    Events whose response falls outside the run get no caption (``n/a``).

    Returns
    -------
    DataFrame or None
        ``onset``, ``duration``, ``trial_type`` (when the events have one), ``caption``;
        None for a run without events.
    """
    windows = event_windows(run)
    if not len(windows):
        return None
    task = caption_task(model)
    question = task.question(0) if task else WINDOW_DESCRIBE[0]
    inside = sorted({int(w) for w in windows if w >= 0})
    formatter = model.formatter
    prompts = [formatter.prompt_ids([formatter.user_message(
        run, *window_segment(window, model.config.window_context), question)])
        for window in inside]
    text = dict(zip(inside, generate(model, prompts, decoding), strict=True))
    table = pd.DataFrame({"onset": run.events["onset"].to_numpy(),
                          "duration": run.events["duration"].to_numpy()})
    if "trial_type" in run.events:
        table["trial_type"] = run.events["trial_type"].to_numpy()
    table["caption"] = [text.get(int(w), "n/a") for w in windows]
    return table


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
