"""Report sections of the language outputs: tokens over time, captions and answers beside the
events (``sub-<label>.html``), held-out metrics against their baselines (``group.html``).

Pure functions of the tables the language stages write (``desc-fmrilm_tokens.tsv``,
``desc-fmrilm_captions.tsv``, ``desc-answers_text.tsv``), the run's ``events.tsv`` and
``metrics.json``; the stages find the files and publish the reports.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from fmrilm_bids.reports.figures import metrics_figure, token_figure
from fmrilm_bids.reports.html import section

#: The systems a held-out metric is shown for, in order: the model, then its baselines.
SYSTEMS = ("fmrilm", "few_shot", "baseline_fc", "baseline_tokens")
#: The metric shown per kind of question (lower is better for ``mae``), and the chance level
#: beside it (a key of the model's scores, or of the task's result).
MAIN_METRIC = {"class": ("accuracy", "chance_accuracy"), "number": ("mae", "chance_mae"),
               "text": ("minilm_cosine", None)}


def events_during(events: pd.DataFrame | None, onset: float, duration: float) -> str:
    """The trial types of the events overlapping ``[onset, onset + duration)``."""
    if events is None or events.empty:
        return "n/a"
    ends = events["onset"] + events["duration"].fillna(0)
    overlap = events[(events["onset"] < onset + duration) & (ends > onset)]
    column = "trial_type" if "trial_type" in events else None
    names = overlap[column].astype(str).unique().tolist() if column else \
        ["event"] * (len(overlap) > 0)
    return ", ".join(names) or "none"


def run_language_section(name: str, tokens: pd.DataFrame, captions: pd.DataFrame | None,
                         answers: pd.DataFrame | None, events: pd.DataFrame | None,
                         codebook_size: int) -> dict[str, object]:
    """The report section of one run's language outputs.

    Parameters
    ----------
    name : str
        The run, e.g. ``sub-01_task-faces``.
    tokens : DataFrame
        ``onset``, ``duration``, ``token_1`` .. ``token_<G>`` (``desc-fmrilm_tokens.tsv``).
    captions, answers : DataFrame or None
        ``desc-fmrilm_captions.tsv`` and ``desc-answers_text.tsv`` (absent before Stages
        2-3 ran).
    events : DataFrame or None
        The run's ``events.tsv``.
    codebook_size : int

    Returns
    -------
    dict
        A :func:`~fmrilm_bids.reports.html.section`: the token figure, and one table row per
        time patch with the events, the caption and the answers of that patch.
    """
    codes = tokens.filter(regex=r"^token_\d+$").to_numpy(int)
    used = len(np.unique(codes))
    paragraphs = [f"{len(tokens)} time patches of {codes.shape[1]} tokens (one per learned "
                  f"parcel group), {used} distinct codes of {codebook_size} (the codebook's "
                  f"usage in this run: {used / codebook_size:.0%})."]
    window_captions = (captions[captions["scope"] == "window"] if captions is not None
                       else pd.DataFrame(columns=["onset", "caption"]))
    patch = float(np.median(tokens["duration"])) if len(tokens) else 0.0
    answers = answers if answers is not None else pd.DataFrame(
        columns=["question", "onset", "duration", "answer"])
    per_window = answers["duration"].astype(float) <= 1.5 * patch  # the others: whole run
    rows = []
    for row, row_codes in zip(tokens.itertuples(index=False), codes, strict=True):
        caption = window_captions.loc[np.isclose(window_captions["onset"].astype(float),
                                                 row.onset), "caption"]
        answered = [f"{a.question}: {a.answer}" for a in
                    answers[per_window].itertuples(index=False)
                    if np.isclose(float(a.onset), row.onset)]
        rows.append([f"{row.onset:.1f}", f"{row.duration:.1f}",
                     events_during(events, row.onset, row.duration),
                     " ".join(str(code) for code in row_codes),
                     caption.iloc[0] if len(caption) else "", "; ".join(answered)])
    if captions is not None:
        for event in captions[captions["scope"] == "event"].itertuples(index=False):
            rows.append([f"{event.onset:.1f}", f"{event.duration:.1f}",
                         f"{getattr(event, 'trial_type', 'event')} (event)", "",
                         event.caption, ""])
    run_answers = [f"{a.question}: {a.answer}"
                   for a in answers[~per_window].itertuples(index=False)]
    if run_answers:
        paragraphs.append("Answers about the whole run: " + "; ".join(run_answers) + ".")
    event_spans = [] if events is None else [
        (float(e.onset), float(0 if pd.isna(e.duration) else e.duration),
         str(getattr(e, "trial_type", "event"))) for e in events.itertuples(index=False)]
    figure = token_figure(tokens["onset"].to_numpy(float), tokens["duration"].to_numpy(float),
                          codes, codebook_size, event_spans, name)
    return section(
        f"Language outputs: {name}", paragraphs,
        [("fMRI tokens over time (a row per parcel group, coloured by code) under the run's "
          "events (shaded by trial type).", figure)],
        [("Time patches: the events they overlap, their tokens, caption and answers",
          ["onset (s)", "duration (s)", "events", "tokens", "caption", "answers"], rows)])


def metrics_figures(metrics: Mapping[str, object]) -> list[tuple[str, str]]:
    """The group report's figures: per kind of question, the main metric of the model and of
    its baselines on the held-out participants (``metrics.json``'s ``tasks``)."""
    tasks = metrics.get("tasks") or {}
    figures = []
    for kind, (metric, chance) in MAIN_METRIC.items():
        values: dict[str, dict[str, float]] = {}
        for task, result in tasks.items():
            if not isinstance(result, dict) or result.get("kind") != kind:
                continue
            label = f"{task} ({result['setting']})" if result.get("setting") else task
            scores = {system: result[system] for system in SYSTEMS
                      if isinstance(result.get(system), dict)}
            values[label] = {system: float(value[metric]) for system, value in scores.items()
                             if isinstance(value.get(metric), int | float)}
            level = scores.get("fmrilm", {}).get(chance, result.get(chance)) if chance else None
            if isinstance(level, int | float):
                values[label]["chance"] = float(level)
        if any(values.values()):
            better = "lower" if metric == "mae" else "higher"
            figures.append((f"Held-out {metric.replace('_', ' ')} of the model and its "
                            f"baselines, per question ({better} is better).",
                            metrics_figure(values, metric)))
    return figures
