"""Training sequences of Stages 2 and 3 (:class:`Example`), packed into batches.

Stage 2 (joint modelling), one kind each:

* ``fmri``: next-token prediction over a run's tokens, ``<fmri> t1 t2 ... </fmri>`` (the
  model reads each token's features and predicts the next token's code: the codes are the
  targets of its fMRI head);
* ``describe``: a segment and a request for a description -> the descriptor sentence of the
  window (or the run's paragraph);
* ``text``: the descriptor corpus alone (plain language modelling), so the backbone keeps
  its language.

Stage 3 (instruction tuning, ``answer``): a segment and a question (:mod:`.tasks`) -> its
answer. The loss falls on the target tokens only (labels are :data:`IGNORE_INDEX`
elsewhere).

**Packing** (:func:`pack`): the examples of a micro-batch are laid end to end in rows of at
most ``row_length`` tokens (first fit, longest first) instead of being padded to the
longest; each example's positions restart at 0, which makes the attention block-diagonal
(transformers builds the mask from the position ids), so an example sees only itself and
the result equals running it alone. :class:`EpochSampler` decides which examples a
micro-batch holds: example groups (one per question, plus the Stage-2 kinds) are drawn so
that each group's share of the training *tokens* is proportional to the square root of its
size (small groups are not drowned, large ones not over-repeated) times the group's weight
(``FmriLMConfig.sampling_weights``: the text-only corpus less often, the window condition
more); a group of long examples (a run-level question reads 128 fMRI tokens) is drawn less
often than one of short window questions, which would otherwise spend most of the compute.
Inside a group, examples are drawn without replacement until it is used up. An epoch is as
many draws as there are examples.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from fmrilm_bids.fmrilm.llm.config import FmriLMConfig
from fmrilm_bids.fmrilm.llm.prompts import RUN_DESCRIBE, WINDOW_DESCRIBE, Formatter, Prompt
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
        Sampling group (:class:`EpochSampler`).
    features : ndarray of shape (n_fmri_tokens, feature_dim), optional
        Features read at the fMRI positions, in order (:class:`~.prompts.Prompt`).
    """

    input_ids: list[int]
    labels: list[int]
    kind: str
    group: str
    features: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.input_ids)


def supervised(prompt: Prompt, target: list[int], kind: str, group: str,
               max_length: int) -> Example:
    """A prompt/target example; the target is cut to fit ``max_length``."""
    if len(prompt) >= max_length:
        raise ValueError(f"A {group} prompt has {len(prompt)} tokens, max_length is "
                         f"{max_length}: raise max_length or lower run_segment_windows.")
    ids = (prompt.ids + target)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt) + target)[:max_length]
    return Example(ids, labels, kind, group, prompt.features)


def fmri_examples(formatter: Formatter, runs: Sequence[LMRun],
                  config: FmriLMConfig) -> list[Example]:
    """Next-token sequences ``<fmri> t1 ... </fmri>`` (segments of each run)."""
    examples = []
    for run in runs:
        windows = max(1, min(config.fmri_sequence_windows,
                             (config.max_length - 2) // run.tokens_per_window))
        for start, stop in run_segments(run.n_windows, windows):
            ids = formatter.vocab.segment_ids(run.token_ids[start:stop])
            features = (formatter.segment_features(run, start, stop)
                        if config.fmri_inputs == "continuous" else None)
            examples.append(Example(ids, list(ids), "fmri", "fmri", features))
    return examples


def _message(formatter: Formatter, run: LMRun, start: int, stop: int, question: str,
             config: FmriLMConfig) -> dict[str, object]:
    message = formatter.user_message(run, start, stop, question)
    if config.fmri_inputs != "continuous":
        message.pop("fmri", None)
    return message


def describe_examples(formatter: Formatter, runs: Sequence[LMRun], config: FmriLMConfig,
                      rng: np.random.Generator) -> list[Example]:
    """Segment -> descriptor text (every window with a text; every run with a paragraph)."""
    examples = []
    for run in runs:
        for window, text in enumerate(run.window_texts or ()):
            start, stop = window_segment(window, config.window_context)
            question = WINDOW_DESCRIBE[rng.integers(len(WINDOW_DESCRIBE))]
            prompt = formatter.prompt([_message(formatter, run, start, stop, question, config)])
            examples.append(supervised(prompt, formatter.answer_ids(text), "describe",
                                       "describe", config.max_length))
        if run.run_text:
            for start, stop in run_segments(run.n_windows, config.run_segment_windows):
                question = RUN_DESCRIBE[rng.integers(len(RUN_DESCRIBE))]
                prompt = formatter.prompt([_message(formatter, run, start, stop, question,
                                                    config)])
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
            message = _message(formatter, runs[item.run_index], item.start, item.stop,
                               question, config)
            examples.append(supervised(formatter.prompt([message]),
                                       formatter.answer_ids(item.answer), "answer", task.name,
                                       config.max_length))
    return examples


def pack(examples: Sequence[Example], pad_id: int, row_length: int,
         kinds: Sequence[str]) -> dict[str, torch.Tensor | None]:
    """Lay ``examples`` end to end in rows of at most ``row_length`` tokens (module
    docstring).

    Rows are filled first fit, longest example first; an example longer than
    ``row_length`` gets a row of its own. Each example's positions start at 0 and its first
    label is :data:`IGNORE_INDEX` (nothing before it in the row may predict it).

    Parameters
    ----------
    examples : sequence of Example
    pad_id : int
        Id of the tokens that fill the end of the rows.
    row_length : int
    kinds : sequence of str
        Every example kind, in the order ``kind_ids`` refers to.

    Returns
    -------
    dict
        ``input_ids``, ``position_ids``, ``labels`` and ``kind_ids`` (the kind of each
        label, -1 where there is none), LongTensors ``(rows, width)``; ``features``: the
        features of every fMRI token, row by row, ``(n, feature_dim)`` float32 (None when no
        example has features).
    """
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]))
    rows: list[list[int]] = []
    filled: list[int] = []
    for index in order:
        size = len(examples[index])
        slot = next((r for r, used in enumerate(filled) if used + size <= row_length), None)
        if slot is None:
            rows.append([index])
            filled.append(size)
        else:
            rows[slot].append(index)
            filled[slot] += size
    width = max(filled)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    kind_ids = torch.full((len(rows), width), -1, dtype=torch.long)
    features = []
    for row, members in enumerate(rows):
        offset = 0
        for index in members:
            example = examples[index]
            end = offset + len(example)
            ids[row, offset:end] = torch.tensor(example.input_ids)
            positions[row, offset:end] = torch.arange(len(example))
            example_labels = torch.tensor(example.labels)
            example_labels[0] = IGNORE_INDEX
            labels[row, offset:end] = example_labels
            kind_ids[row, offset:end] = kinds.index(example.kind)
            if example.features is not None:
                features.append(example.features)
            offset = end
        positions[row, offset:] = torch.arange(width - offset)  # the padding: its own block
    return {"input_ids": ids, "position_ids": positions, "labels": labels,
            "kind_ids": kind_ids,
            "features": torch.from_numpy(np.concatenate(features)) if features else None}


class EpochSampler:
    """Micro-batches of examples for one training stage (module docstring).

    Parameters
    ----------
    examples : sequence of Example
    batch_tokens : int
        Tokens per micro-batch (examples are added until the next would exceed it; at
        least one).
    rng : numpy.random.Generator
    group_weights : mapping of str to float, optional
        Multiplies a group's share of the tokens (default 1).
    """

    def __init__(self, examples: Sequence[Example], batch_tokens: int,
                 rng: np.random.Generator,
                 group_weights: Mapping[str, float] | None = None) -> None:
        self.examples, self.batch_tokens, self.rng = list(examples), batch_tokens, rng
        self.groups: dict[str, list[int]] = {}
        for index, example in enumerate(self.examples):
            self.groups.setdefault(example.group, []).append(index)
        self.names = sorted(self.groups)
        sizes = np.array([len(self.groups[name]) for name in self.names], dtype=float)
        self.mean_lengths = np.array([np.mean([len(self.examples[i]) for i in self.groups[name]])
                                      for name in self.names])
        shares = np.sqrt(sizes) * [(group_weights or {}).get(name, 1.0) for name in self.names]
        weights = shares / self.mean_lengths  # draws that give those token shares
        self.weights = weights / weights.sum()
        self.queues: dict[str, list[int]] = {name: [] for name in self.names}

    @property
    def tokens(self) -> float:
        """Expected tokens of one epoch: as many draws as there are examples."""
        return len(self.examples) * float(np.dot(self.weights, self.mean_lengths))

    def steps_for(self, epochs: float, grad_accum: int) -> int:
        """Optimiser steps that show ``epochs`` passes' worth of tokens."""
        return max(1, math.ceil(epochs * self.tokens / (self.batch_tokens * grad_accum)))

    def _draw(self) -> tuple[str, int]:
        name = self.names[self.rng.choice(len(self.names), p=self.weights)]
        if not self.queues[name]:
            members = self.groups[name]
            self.queues[name] = [members[i] for i in self.rng.permutation(len(members))]
        return name, self.queues[name].pop()

    def batches(self) -> Iterator[list[Example]]:
        """Endless micro-batches. An example that does not fit goes back to its group's
        queue, so :attr:`queues` (and the generator's random state) are the whole state."""
        while True:
            batch, size = [], 0
            while True:
                name, index = self._draw()
                example = self.examples[index]
                if batch and size + len(example) > self.batch_tokens:
                    self.queues[name].append(index)
                    break
                batch.append(example)
                size += len(example)
            yield batch
