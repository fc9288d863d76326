"""A run's ``events.tsv``, read once the same way everywhere (input checks and models).

Events that start at or after the end of their run (an onset of 500 s in a 240 s run: a
wrong unit, or the events of another run) cannot be aligned with any volume: they are named
in a warning (file and rows) and left out of every model.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

LOGGER = logging.getLogger(__name__)


def read_events_table(path: Path) -> pd.DataFrame:
    """The table as written (``n/a`` read as missing in numeric columns only)."""
    return pd.read_csv(path, sep="\t", na_values="n/a", keep_default_na=False)


def rows_beyond_run(events: pd.DataFrame, run_duration: float) -> list[int]:
    """Row indices (0-based, after the header) of the events whose onset is at or after
    ``run_duration`` seconds."""
    onsets = pd.to_numeric(events["onset"], errors="coerce")
    return [int(i) for i in events.index[onsets >= run_duration]]


def warn_beyond_run(path: Path, events: pd.DataFrame, rows: list[int],
                    run_duration: float) -> None:
    """Log one warning naming the file, the rows (as line numbers of the file) and onsets."""
    if not rows:
        return
    shown = ", ".join(f"{row + 2} (onset {events['onset'][row]:g} s)" for row in rows[:5])
    more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
    LOGGER.warning(
        "%s: %d event(s) start after the end of the run (%g s), at line(s) %s%s; they are "
        "left out of every model (check the onsets' unit and run)", path, len(rows),
        run_duration, shown, more)


def read_events(path: Path, run_duration: float | None = None) -> pd.DataFrame:
    """Read a run's events, leaving out (with a warning) those after ``run_duration`` s.

    Parameters
    ----------
    path : Path
        The ``events.tsv``.
    run_duration : float, optional
        Number of volumes times the repetition time; ``None`` keeps every event.

    Returns
    -------
    DataFrame
        The events that start within the run, re-indexed from 0.
    """
    events = read_events_table(path)
    if run_duration is None or "onset" not in events:
        return events
    rows = rows_beyond_run(events, run_duration)
    warn_beyond_run(path, events, rows, run_duration)
    return events.drop(index=rows).reset_index(drop=True)
