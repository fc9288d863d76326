"""Training sequences of Stages 2 and 3: token ids with loss masks (:class:`Example`).

Stage 2 (joint modelling), one kind each:

* ``fmri``: next-token prediction over a run's tokens, ``<fmri> t1 t2 ... </fmri>``;
* ``describe``: a segment and a request for a description -> the descriptor sentence of the
  window (or the run's paragraph);
* ``text``: the descriptor corpus alone (plain language modelling), so the backbone keeps
  its language.

Stage 3 (instruction tuning, ``answer``): a segment and a question (:mod:`.tasks`) -> its
answer. The loss falls on the target tokens only (labels are :data:`IGNORE_INDEX`
elsewhere); :func:`collate` pads a micro-batch, :func:`sample_examples` draws one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from fmrilm_bids.fmrilm.llm.config import FmriLMConfig
from fmrilm_bids.fmrilm.llm.prompts import RUN_DESCRIBE, WINDOW_DESCRIBE, Formatter
from fmrilm_bids.fmrilm.llm.runs import LMRun, run_segments, window_segment
from fmrilm_bids.fmrilm.llm.tasks import TaskSpec, task_items

#: Label value that the loss ignores.
IGNORE_INDEX = -100


@dataclass
class Example:
    """A training sequence.

    Attributes
    ----------
    input_ids : list of int
    labels : list of int
        ``input_ids`` where the loss applies, :data:`IGNORE_INDEX` elsewhere (the shift to
        next-token targets happens in the loss).
    kind : str
        Loss-weight key: ``fmri``, ``describe``, ``text`` or ``answer``.
    group : str
        Sampling group (:func:`sample_examples` draws one per micro-batch).
    """

    input_ids: list[int]
    labels: list[int]
    kind: str
    group: str

    def __len__(self) -> int:
        return len(self.input_ids)


def supervised(prompt: list[int], target: list[int], kind: str, group: str,
               max_length: int) -> Example:
    """A prompt/target example; the target is cut to fit ``max_length``."""
    if len(prompt) >= max_length:
        raise ValueError(f"A {group} prompt has {len(prompt)} tokens, max_length is "
                         f"{max_length}: raise max_length or lower run_segment_windows.")
    ids = (prompt + target)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt) + target)[:max_length]
    return Example(ids, labels, kind, group)


def fmri_examples(formatter: Formatter, runs: Sequence[LMRun],
                  config: FmriLMConfig) -> list[Example]:
    """Next-token sequences ``<fmri> t1 ... </fmri>`` (segments of each run)."""
    length = min(config.max_length - 2, config.fmri_sequence_windows)
    examples = []
    for run in runs:
        for start, stop in run_segments(run.n_windows, length):
            ids = formatter.vocab.segment_ids(run.token_ids[start:stop])
            examples.append(Example(ids, list(ids), "fmri", "fmri"))
    return examples


def describe_examples(formatter: Formatter, runs: Sequence[LMRun], config: FmriLMConfig,
                      rng: np.random.Generator) -> list[Example]:
    """Segment -> descriptor text (every window with a text; every run with a paragraph)."""
    examples = []
    for run in runs:
        for window, text in enumerate(run.window_texts or ()):
            start, stop = window_segment(window, config.window_context)
            question = WINDOW_DESCRIBE[rng.integers(len(WINDOW_DESCRIBE))]
            prompt = formatter.prompt_ids([formatter.user_message(run, start, stop, question)])
            examples.append(supervised(prompt, formatter.answer_ids(text), "describe",
                                       "describe", config.max_length))
        if run.run_text:
            for start, stop in run_segments(run.n_windows, config.run_segment_windows):
                question = RUN_DESCRIBE[rng.integers(len(RUN_DESCRIBE))]
                prompt = formatter.prompt_ids([formatter.user_message(run, start, stop,
                                                                      question)])
                examples.append(supervised(prompt, formatter.answer_ids(run.run_text),
                                           "describe", "describe", config.max_length))
    return examples


def text_examples(formatter: Formatter, texts: Sequence[str],
                  config: FmriLMConfig) -> list[Example]:
    """Language modelling on the descriptor corpus (distinct texts)."""
    examples = []
    for text in sorted(set(texts)):
        ids = formatter.text_ids(text)[:config.max_length]
        examples.append(Example(ids, list(ids), "text", "text"))
    return examples


def stage2_examples(formatter: Formatter, runs: Sequence[LMRun], config: FmriLMConfig,
                    corpus_texts: Sequence[str] | None = None, seed: int = 0) -> list[Example]:
    """Every Stage-2 example of ``runs`` (see the module docstring).

    ``corpus_texts`` (e.g. the ``text`` column of
    :func:`~fmrilm_bids.fmrilm.descriptors.build_corpus`) feed the text-only term; by default the
    runs' own descriptor texts do.
    """
    rng = np.random.default_rng(seed)
    if corpus_texts is None:
        corpus_texts = [text for run in runs for text in
                        [*(run.window_texts or ()), *([run.run_text] if run.run_text else [])]]
    return (fmri_examples(formatter, runs, config) + describe_examples(formatter, runs, config,
                                                                       rng)
            + text_examples(formatter, corpus_texts, config))


def instruction_examples(formatter: Formatter, tasks: Sequence[TaskSpec],
                         runs: Sequence[LMRun], participants: pd.DataFrame | None,
                         config: FmriLMConfig, seed: int = 0) -> list[Example]:
    """Stage-3 question/answer examples of every task (a random phrasing each)."""
    rng = np.random.default_rng(seed)
    examples = []
    for task in tasks:
        for item in task_items(task, runs, participants, config.window_context,
                               config.run_segment_windows):
            question = task.question(int(rng.integers(len(task.questions))))
            message = formatter.user_message(runs[item.run_index], item.start, item.stop,
                                             question)
            examples.append(supervised(formatter.prompt_ids([message]),
                                       formatter.answer_ids(item.answer), "answer", task.name,
                                       config.max_length))
    return examples


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` tensors."""
    width = max(len(example) for example in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        ids[row, :len(example)] = torch.tensor(example.input_ids)
        labels[row, :len(example)] = torch.tensor(example.labels)
        mask[row, :len(example)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def sample_examples(examples: Sequence[Example], rng: np.random.Generator,
                    batch_size: int) -> list[Example]:
    """A micro-batch: one group drawn uniformly, then ``batch_size`` of its examples.

    One group per micro-batch keeps sequence lengths alike (little padding) and gives every
    group the same share of the steps, however many examples it has.
    """
    groups: dict[str, list[Example]] = {}
    for example in examples:
        groups.setdefault(example.group, []).append(example)
    members = groups[sorted(groups)[rng.integers(len(groups))]]
    return [members[i] for i in rng.integers(len(members), size=batch_size)]
