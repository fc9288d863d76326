"""Stage-3 questions: what the data themselves can answer (:class:`TaskSpec`).

The condition (``trial_type``) or stimulus caption of a window, rest versus task, and
columns of ``participants.tsv`` (sex, age as a number or in bins, group or diagnosis); each
has several phrasings, and classification questions list their answers
(:func:`resolve_tasks` fixes them from the training runs). :func:`task_items` gives every
labelled question of a task in a set of runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from fmrilm_bids.config import settings_from_dict
from fmrilm_bids.fmrilm.llm.runs import (
    LMRun,
    is_present,
    run_segments,
    window_events,
    window_segment,
)

if TYPE_CHECKING:

    pass


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
    calibration : tuple of float
        Per class, the trained model's mean log-probability of that answer over prompts of
        training subjects, subtracted from its scores before the softmax (contextual
        calibration; :func:`~.inference.calibrate_tasks`). Empty: scores as they are.
    bounds : tuple of float
        Of a number task: the lowest and highest answer of the training runs (set by
        :func:`resolve_tasks`); see :meth:`plausible`.
    """

    name: str
    source: str
    level: str
    kind: str
    questions: tuple[str, ...]
    bins: tuple[float, ...] = ()
    classes: tuple[str, ...] = ()
    calibration: tuple[float, ...] = ()
    bounds: tuple[float, ...] = ()

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

    def plausible(self, value: float) -> float:
        """``value`` as an answer to a number task: NaN (no answer) when it lies further
        outside :attr:`bounds` than half their range (an age of 150 read from a generated
        text is not an answer); unchanged without bounds."""
        if not self.bounds:
            return value
        low, high = self.bounds
        margin = (high - low) / 2
        return value if low - margin <= value <= high + margin else float("nan")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, object]) -> TaskSpec:
        """A question written by :meth:`to_dict` (unknown keys refused)."""
        return settings_from_dict(cls, values, "question")


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
                       and run.events[column].map(is_present).any() for run in runs)
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
            values = participants[column][participants[column].map(is_present)]
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
            if is_present(value)}


def task_items(task: TaskSpec, runs: Sequence[LMRun], participants: pd.DataFrame | None,
               window_context: int, run_segment_windows: int) -> list[TaskItem]:
    """Every labelled question of ``task`` in ``runs``."""
    items = []
    if task.level == "window":
        for index, run in enumerate(runs):
            for window, event in window_events(run).items():
                value = event.get(task.source)
                if is_present(value):
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


def answer_texts(tasks: Sequence[TaskSpec], runs: Sequence[LMRun],
                 participants: pd.DataFrame | None, window_context: int,
                 run_segment_windows: int) -> dict[tuple[int, int, int], str]:
    """What is known about each segment that a question asks about, in words.

    Returns
    -------
    dict
        ``(run_index, start, stop)`` -> the answers of every task about that segment, in
        task order, joined by ``"; "`` (a picture window: ``"animals; A red fox sniffs the
        snow."``; a run segment: ``"task; F; 34; patient"``).
    """
    answers: dict[tuple[int, int, int], list[str]] = {}
    for task in tasks:
        for item in task_items(task, runs, participants, window_context, run_segment_windows):
            answers.setdefault((item.run_index, item.start, item.stop), []).append(item.answer)
    return {segment: "; ".join(parts) for segment, parts in answers.items()}


def resolve_tasks(tasks: Sequence[TaskSpec], runs: Sequence[LMRun],
                  participants: pd.DataFrame | None, window_context: int,
                  run_segment_windows: int) -> tuple[list[TaskSpec], list[str]]:
    """Fix the answer set of each classification task from the (training) runs.

    Returns
    -------
    tasks : list of TaskSpec
        With :attr:`TaskSpec.classes` set (all bin labels for binned columns), and the
        :attr:`TaskSpec.bounds` of number tasks.
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
        numbers = [float(a) for a in answers] if task.kind == "number" else []
        resolved.append(replace(task, classes=tuple(classes) if task.kind == "class" else (),
                                bounds=(min(numbers), max(numbers)) if numbers else ()))
    return resolved, skipped
