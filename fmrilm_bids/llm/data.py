"""Stage-2 and Stage-3 data: runs in, token-id sequences with loss masks out.

A run (:class:`LMRun`) is its fMRI tokens, one per window, with what is known about it:
descriptor texts, events, its subject. A prompt shows the model an fMRI **segment**
``<fmri> t_a ... t_b </fmri>``: for a window ``i``, the window and the ``window_context``
windows before it (the question is about the *last* window of the segment); for a whole
run, up to ``run_segment_windows`` consecutive windows (long runs give several segments).

Stage 2 (joint modelling), one :class:`Example` kind each:

* ``fmri``: next-token prediction over a run's tokens, ``<fmri> t1 t2 ... </fmri>``;
* ``describe``: a segment and a request for a description -> the descriptor sentence of the
  window (or the run's paragraph);
* ``text``: the descriptor corpus alone (plain language modelling), so the backbone keeps
  its language.

Stage 3 (instruction tuning): questions about the data themselves (:class:`TaskSpec`): the
condition (``trial_type``) or stimulus caption of a window, rest versus task, and columns of
``participants.tsv`` (sex, age as a number or in bins, group or diagnosis); each has several
phrasings, and classification questions list their answers. Events are assigned to windows
by their haemodynamic response: an event belongs to the window holding its midpoint shifted
by :data:`~fmrilm_bids.descriptors.windows.HRF_DELAY` (the event nearest the window centre
when several do).

Prompts use the backbone's chat template when it has one (a plain ``User:/Assistant:`` layout
otherwise); the loss falls on the target tokens only (labels are -100 elsewhere).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from fmrilm_bids.descriptors.windows import HRF_DELAY

from .vocabulary import FmriVocabulary

if TYPE_CHECKING:
    from fmrilm_bids.tokenizer import TokenizedRun

    from .model import FmriLMConfig

#: Label value that the loss ignores.
IGNORE_INDEX = -100

WINDOW_DESCRIBE = ("Describe the brain activity in the last window.",
                   "What happens in the brain during the last window of this recording?",
                   "Summarise the last window of this fMRI recording in words.")
RUN_DESCRIBE = ("Describe this fMRI scan.",
                "Summarise the functional organisation seen in this recording.",
                "What is notable about this scan compared with other scans?")


@dataclass
class LMRun:
    """One run as Stages 2 and 3 take it.

    Attributes
    ----------
    subject : str
        Participant label (``"01"``; a ``sub-`` prefix is dropped). Splits are by subject.
    task : str
        BIDS task label (``rest`` in the name makes it a resting run).
    token_ids : ndarray of shape (n_windows,)
        Stage-1 token of each window.
    onsets, durations : ndarray of shape (n_windows,)
        Window onsets and durations (s).
    session, run : str, optional
        BIDS entities (numbers are turned into text).
    window_texts : list of str, optional
        Descriptor sentence of each window (Stage 2 targets).
    run_text : str, optional
        Run-level descriptor paragraph.
    events : DataFrame, optional
        BIDS events (``onset``, ``duration``, ``trial_type``, optional ``caption``).
    token_features : ndarray of shape (n_windows, dim), optional
        Stage-1 features of each window (``TokenizedRun.embeddings``), for the baseline.
    timeseries : ndarray of shape (n_timepoints, n_parcels), optional
        Parcel signals, for the connectivity baseline.
    tr : float, optional
        Sampling interval of ``timeseries`` (s).
    """

    subject: str
    task: str
    token_ids: np.ndarray = field(repr=False)
    onsets: np.ndarray = field(repr=False)
    durations: np.ndarray = field(repr=False)
    session: str | None = None
    run: str | None = None
    window_texts: list[str] | None = field(default=None, repr=False)
    run_text: str | None = field(default=None, repr=False)
    events: pd.DataFrame | None = field(default=None, repr=False)
    token_features: np.ndarray | None = field(default=None, repr=False)
    timeseries: np.ndarray | None = field(default=None, repr=False)
    tr: float | None = None

    def __post_init__(self) -> None:
        self.subject = str(self.subject).removeprefix("sub-")
        self.session = None if self.session is None else str(self.session)
        self.run = None if self.run is None else str(self.run)
        self.token_ids = np.asarray(self.token_ids, dtype=np.int64).reshape(-1)
        self.onsets = np.asarray(self.onsets, dtype=float).reshape(-1)
        self.durations = np.broadcast_to(np.asarray(self.durations, dtype=float),
                                         self.onsets.shape).copy()
        n = len(self.token_ids)
        problems = [f"{name} has {len(value)} rows" for name, value in
                    (("onsets", self.onsets), ("window_texts", self.window_texts),
                     ("token_features", self.token_features)) if value is not None
                    and len(value) != n]
        if n == 0:
            problems.append("there are no windows")
        if self.timeseries is not None and not self.tr:
            problems.append("timeseries is given without its tr")
        if problems:
            raise ValueError(f"Run {self.key}: {n} tokens, but " + "; ".join(problems) + ".")

    @classmethod
    def from_tokenized(cls, tokenized: TokenizedRun, subject: str, task: str,
                       **attributes: object) -> LMRun:
        """A run from a Stage-1 :class:`~fmrilm_bids.tokenizer.TokenizedRun`."""
        return cls(subject=subject, task=task, token_ids=tokenized.token_ids,
                   onsets=tokenized.onsets, durations=tokenized.window_duration,
                   token_features=tokenized.embeddings, **attributes)

    @property
    def key(self) -> str:
        """BIDS stem, e.g. ``sub-01_ses-1_task-rest_run-2``."""
        parts = [f"sub-{self.subject}"] + ([f"ses-{self.session}"] if self.session else [])
        parts.append(f"task-{self.task}")
        return "_".join(parts + ([f"run-{self.run}"] if self.run else []))

    @property
    def n_windows(self) -> int:
        return len(self.token_ids)

    @property
    def is_rest(self) -> bool:
        return "rest" in self.task.lower()


def window_segment(window: int, context: int) -> tuple[int, int]:
    """Windows ``[start, stop)`` of the prompt about ``window`` (it comes last)."""
    return max(0, window - context), window + 1


def run_segments(n_windows: int, length: int) -> list[tuple[int, int]]:
    """Consecutive segments of at most ``length`` windows covering a run (half overlap)."""
    if n_windows <= length:
        return [(0, n_windows)]
    starts = list(range(0, n_windows - length + 1, max(1, length // 2)))
    if starts[-1] != n_windows - length:
        starts.append(n_windows - length)
    return [(start, start + length) for start in starts]


def _responses(events: pd.DataFrame, hrf_delay: float) -> np.ndarray:
    """Midpoint of each event's haemodynamic response (s)."""
    onsets = pd.to_numeric(events["onset"], errors="coerce").to_numpy(float)
    lengths = pd.to_numeric(events["duration"], errors="coerce").to_numpy(float)
    return onsets + hrf_delay + np.nan_to_num(lengths) / 2


def event_windows(run: LMRun, hrf_delay: float = HRF_DELAY) -> np.ndarray:
    """Window of each event of ``run`` (the module docstring's rule); -1 outside the run."""
    if run.events is None or run.events.empty:
        return np.zeros(0, dtype=np.int64)
    response = _responses(run.events, hrf_delay)
    index = np.searchsorted(run.onsets, response, side="right") - 1
    inside = (index >= 0) & np.isfinite(response)
    inside[inside] = response[inside] < (run.onsets + run.durations)[index[inside]]
    return np.where(inside, index, -1)


def window_events(run: LMRun, hrf_delay: float = HRF_DELAY) -> dict[int, pd.Series]:
    """The event of each window (see the module docstring); windows without one are absent."""
    windows = event_windows(run, hrf_delay)
    if not len(windows):
        return {}
    distance = np.abs(_responses(run.events, hrf_delay)
                      - (run.onsets + run.durations / 2)[np.maximum(windows, 0)])
    chosen: dict[int, int] = {}
    for row in np.argsort(distance, kind="stable"):
        if windows[row] >= 0:
            chosen.setdefault(int(windows[row]), int(row))
    return {window: run.events.iloc[row] for window, row in sorted(chosen.items())}


def _present(value: object) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return str(value).strip() not in ("", "n/a", "nan")


@dataclass(frozen=True)
class TaskSpec:
    """A question the model is tuned (or tested zero-shot) to answer.

    Attributes
    ----------
    name : str
    source : str
        ``"trial_type"`` or ``"caption"`` (events of a window), ``"rest"`` (rest versus
        task, from the task label) or a ``participants.tsv`` column.
    level : {"window", "run"}
    kind : {"class", "text", "number"}
        Classification (constrained answers), free text, or a number.
    questions : tuple of str
        Phrasings; a training example uses a random one, evaluation the first.
    bins : tuple of float
        For a numeric column asked as classes: bin edges.
    classes : tuple of str
        Allowed answers of a classification task (set from the training data by
        :func:`resolve_tasks`).
    """

    name: str
    source: str
    level: str
    kind: str
    questions: tuple[str, ...]
    bins: tuple[float, ...] = ()
    classes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.level not in ("window", "run") or self.kind not in ("class", "text", "number"):
            raise ValueError(f"Task {self.name!r}: level must be 'window' or 'run' and kind "
                             f"'class', 'text' or 'number' (got {self.level!r}, "
                             f"{self.kind!r}).")
        if not self.questions:
            raise ValueError(f"Task {self.name!r} needs at least one question.")

    def question(self, index: int = 0) -> str:
        """Phrasing ``index``; classification questions end with their answers."""
        text = self.questions[index % len(self.questions)]
        if self.kind == "class" and self.classes:
            return f"{text} Answer with one of: {', '.join(self.classes)}."
        return text

    def bin_label(self, value: float) -> str:
        """Class of a number under :attr:`bins`."""
        edges = list(self.bins)
        position = int(np.searchsorted(edges, value, side="right"))
        if position == 0:
            return f"under {edges[0]:g}"
        if position == len(edges):
            return f"{edges[-1]:g} or more"
        return f"{edges[position - 1]:g} to {edges[position]:g}"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, object]) -> TaskSpec:
        known = {f.name for f in fields(cls)}
        return cls(**{key: tuple(value) if isinstance(value, list) else value
                      for key, value in values.items() if key in known})


def participant_task(column: str, bins: Sequence[float] | None = None,
                     numeric: bool = False) -> TaskSpec:
    """A run-level question about a ``participants.tsv`` column.

    ``sex``, ``age``, ``group`` and ``diagnosis`` get tailored phrasings; a numeric column is
    asked as classes with ``bins`` or, without, as a number.
    """
    phrasings = {
        "sex": ("Is the participant male or female?", "What is the sex of the participant?",
                "Which sex does this participant have?"),
        "age": ("How old is the participant?", "What is the age of the participant?",
                "Estimate the participant's age."),
        "group": ("Which group does the participant belong to?",
                  "Is this participant a patient or a control?",
                  "What is the participant's group?"),
        "diagnosis": ("What is the participant's diagnosis?",
                      "Which diagnosis does this participant have?",
                      "Name the diagnosis of the participant."),
    }
    name = column.lower()
    questions = phrasings.get(name, (f"What is the participant's {column}?",
                                     f"Give the {column} of this participant.",
                                     f"Which {column} does the participant have?"))
    if bins:
        if name == "age":
            questions = ("Which age group is the participant in?",
                         "How old is the participant, roughly?",
                         "In which age range is the participant?")
        return TaskSpec(column, column, "run", "class", questions,
                        bins=tuple(sorted(float(b) for b in bins)))
    return TaskSpec(column, column, "run", "number" if numeric else "class", questions)


def default_tasks(runs: Sequence[LMRun], participants: pd.DataFrame | None,
                  columns: Sequence[str] | None = None,
                  bins: Mapping[str, Sequence[float]] | None = None) -> list[TaskSpec]:
    """The questions these data can answer.

    Parameters
    ----------
    runs : sequence of LMRun
    participants : DataFrame, optional
        ``participants.tsv`` (``participant_id`` then the columns).
    columns : sequence of str, optional
        Columns that become questions (default: those of ``sex``, ``age``, ``group``,
        ``diagnosis`` present).
    bins : mapping of str to sequence of float, optional
        Numeric columns asked as classes, with their bin edges; other numeric columns are
        asked as numbers.

    Returns
    -------
    list of TaskSpec
        ``condition`` (window trial type), ``stimulus`` (window caption), ``rest_vs_task``
        when the runs have them, then one per column.
    """
    tasks = []
    has = {column: any(run.events is not None and column in run.events
                       and run.events[column].map(_present).any() for run in runs)
           for column in ("trial_type", "caption")}
    if has["trial_type"]:
        tasks.append(TaskSpec("condition", "trial_type", "window", "class", (
            "Which condition does the last window belong to?",
            "What kind of stimulus was shown in the last window?",
            "Name the trial type of the last window.")))
    if has["caption"]:
        tasks.append(TaskSpec("stimulus", "caption", "window", "text", (
            "What was the participant looking at in the last window?",
            "Describe the picture shown during the last window.",
            "Caption the stimulus of the last window.")))
    if len({run.is_rest for run in runs}) == 2:
        tasks.append(TaskSpec("rest_vs_task", "rest", "run", "class", (
            "Was the participant resting or doing a task?",
            "Is this a resting-state scan or a task scan?",
            "Rest or task: which kind of scan is this?")))
    if participants is not None:
        chosen = columns if columns is not None else [
            c for c in ("sex", "age", "group", "diagnosis") if c in participants]
        for column in chosen:
            if column not in participants:
                raise ValueError(f"participants.tsv has no column {column!r}; it has "
                                 f"{', '.join(participants.columns)}.")
            values = participants[column][participants[column].map(_present)]
            numeric = bool(len(values)) and pd.to_numeric(values, errors="coerce").notna().all()
            tasks.append(participant_task(column, (bins or {}).get(column), numeric))
    return tasks


@dataclass(frozen=True)
class TaskItem:
    """One labelled question: a segment of a run and its answer."""

    run_index: int
    start: int
    stop: int
    answer: str
    onset: float
    duration: float


def participant_values(participants: pd.DataFrame | None, column: str) -> dict[str, object]:
    """Subject label -> value of ``column`` (missing values left out)."""
    if participants is None or column not in participants:
        return {}
    if "participant_id" not in participants:
        raise ValueError("participants.tsv has no participant_id column; BIDS requires it "
                         "as the first column.")
    labels = participants["participant_id"].astype(str).str.removeprefix("sub-")
    return {label: value for label, value in zip(labels, participants[column], strict=True)
            if _present(value)}


def task_items(task: TaskSpec, runs: Sequence[LMRun], participants: pd.DataFrame | None,
               window_context: int, run_segment_windows: int) -> list[TaskItem]:
    """Every labelled question of ``task`` in ``runs``."""
    items = []
    if task.level == "window":
        for index, run in enumerate(runs):
            for window, event in window_events(run).items():
                value = event.get(task.source)
                if _present(value):
                    start, stop = window_segment(window, window_context)
                    items.append(TaskItem(index, start, stop, str(value).strip(),
                                          float(event["onset"]), float(event["duration"])))
        return items
    values = participant_values(participants, task.source)
    for index, run in enumerate(runs):
        if task.source == "rest":
            answer = "rest" if run.is_rest else "task"
        elif run.subject in values:
            value = values[run.subject]
            answer = (task.bin_label(float(value)) if task.bins else
                      f"{float(value):g}" if task.kind == "number" else str(value).strip())
        else:
            continue
        for start, stop in run_segments(run.n_windows, run_segment_windows):
            items.append(TaskItem(index, start, stop, answer, float(run.onsets[start]),
                                  float(run.onsets[stop - 1] + run.durations[stop - 1]
                                        - run.onsets[start])))
    return items


def resolve_tasks(tasks: Sequence[TaskSpec], runs: Sequence[LMRun],
                  participants: pd.DataFrame | None, window_context: int,
                  run_segment_windows: int) -> tuple[list[TaskSpec], list[str]]:
    """Fix the answer set of each classification task from the (training) runs.

    Returns
    -------
    tasks : list of TaskSpec
        With :attr:`TaskSpec.classes` set (all bin labels for binned columns).
    skipped : list of str
        Tasks left out: no labelled item, or a single class.
    """
    resolved, skipped = [], []
    for task in tasks:
        answers = {item.answer for item in task_items(task, runs, participants,
                                                      window_context, run_segment_windows)}
        if task.kind == "class" and task.bins:
            edges = list(task.bins)
            classes = [task.bin_label(edges[0] - 1)] + [task.bin_label(e) for e in edges]
        else:
            classes = sorted(answers)
        if not answers or (task.kind == "class" and len(answers) < 2):
            skipped.append(task.name)
            continue
        resolved.append(replace(task, classes=tuple(classes) if task.kind == "class" else ()))
    return resolved, skipped


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


class Formatter:
    """Turns messages, answers, texts and fMRI segments into model ids.

    Parameters
    ----------
    tokenizer : transformers.PreTrainedTokenizerBase
        The extended tokenizer.
    vocab : FmriVocabulary
    system_prompt : str, optional
        System message of every prompt (keeps chat templates from adding a long default).
    """

    SENTINEL = "\u2063ANSWER\u2063"

    def __init__(self, tokenizer: object, vocab: FmriVocabulary,
                 system_prompt: str | None = None) -> None:
        self.tokenizer, self.vocab, self.system_prompt = tokenizer, vocab, system_prompt
        self.chat = bool(getattr(tokenizer, "chat_template", None))
        self.answer_prefix, self.stop_id = "", tokenizer.eos_token_id
        if self.chat:
            probe = [{"role": "user", "content": "?"}]
            prompt = self.prompt_text(probe)
            full = tokenizer.apply_chat_template(
                [*self._with_system(probe), {"role": "assistant", "content": self.SENTINEL}],
                tokenize=False)
            if not full.startswith(prompt) or self.SENTINEL not in full[len(prompt):]:
                raise ValueError("The backbone's chat template does not extend a prompt with "
                                 "the answer; fmrilm-bids cannot mask the prompt's loss.")
            self.answer_prefix, suffix = full[len(prompt):].split(self.SENTINEL, 1)
            suffix_ids = self.encode(suffix)
            if suffix_ids and suffix_ids[0] in tokenizer.all_special_ids:
                self.stop_id = suffix_ids[0]
        if self.stop_id is None:
            raise ValueError("The backbone's tokenizer has no end-of-sequence token.")

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` (no special tokens added)."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _with_system(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        if self.system_prompt and (not messages or messages[0]["role"] != "system"):
            return [{"role": "system", "content": self.system_prompt}, *messages]
        return list(messages)

    def prompt_text(self, messages: list[dict[str, str]]) -> str:
        """The prompt of a conversation, up to where the assistant starts answering."""
        messages = self._with_system(messages)
        if self.chat:
            return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                      add_generation_prompt=True)
        return "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages) \
            + "Assistant:"

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        return self.encode(self.prompt_text(messages))

    def answer_ids(self, answer: str) -> list[int]:
        """An answer as the assistant writes it, ending with the stop token."""
        text = self.answer_prefix + answer if self.chat else " " + answer
        return [*self.encode(text), self.stop_id]

    def text_ids(self, text: str) -> list[int]:
        """Plain text, ending with the end-of-sequence token."""
        return [*self.encode(text), self.tokenizer.eos_token_id]

    def user_message(self, run: LMRun, start: int, stop: int, question: str) -> dict[str, str]:
        """A user turn showing windows ``[start, stop)`` of ``run`` and asking ``question``."""
        segment = self.vocab.segment_text(run.token_ids[start:stop])
        return {"role": "user", "content": f"{segment}\n{question}"}

    def conversation(self, turns: Sequence[tuple[dict[str, str], str]],
                     query: dict[str, str]) -> list[dict[str, str]]:
        """Answered ``turns`` (few-shot examples), then the ``query`` user message."""
        messages = []
        for message, answer in turns:
            messages += [message, {"role": "assistant", "content": answer}]
        return [*messages, query]


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
    :func:`~fmrilm_bids.descriptors.build_corpus`) feed the text-only term; by default the
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
