"""Progress of long steps: a bar on a terminal, otherwise a log line at least every 30 s.

Long steps that would report nothing for minutes (captioning every run, the held-out
evaluation) run inside a :class:`Heartbeat`: the caller counts what is done with
:meth:`Heartbeat.advance`. On a terminal a progress bar shows it; otherwise (a log file, a
cluster job) a background thread logs the count, the rate and the time left at a fixed
interval, so the log never goes silent while the work goes on.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from types import TracebackType

from tqdm.auto import tqdm

LOGGER = logging.getLogger(__name__)


class Heartbeat:
    """Log ``what``'s progress every ``interval`` seconds while the block runs.

    Parameters
    ----------
    what : str
        The step, as the log line names it (``"Captions"``).
    total : int
        Units in all (runs, questions).
    unit : str
        What a unit is, for the line.
    interval : float
        Seconds between lines.
    logger : logging.Logger, optional
        Where the lines go (default this module's logger).
    show : bool, optional
        Force the bar (True) or the log lines (False); default: the bar on a terminal.

    Examples
    --------
    >>> with Heartbeat("Captions", total=len(runs), unit="runs") as beat:  # doctest: +SKIP
    ...     for run in runs:
    ...         caption(run)
    ...         beat.advance()
    """

    def __init__(self, what: str, total: int, unit: str = "items", interval: float = 30.0,
                 logger: logging.Logger | None = None, show: bool | None = None) -> None:
        self.what, self.total, self.unit, self.interval = what, total, unit, interval
        self.logger = logger or LOGGER
        self.done = 0
        terminal = sys.stderr.isatty() if show is None else show
        self.bar = tqdm(total=total, desc=what, unit=unit, disable=not terminal,
                        dynamic_ncols=True)
        self.log_lines = not terminal
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._started = time.perf_counter()

    def line(self) -> str:
        """The progress line: done of total, rate, time left."""
        elapsed = time.perf_counter() - self._started
        text = f"{self.what}: {self.done}/{self.total} {self.unit} done, {elapsed:.0f} s"
        if self.done:
            rate = self.done / elapsed
            text += (f", {rate:.3g} {self.unit}/s, about "
                     f"{(self.total - self.done) / rate:.0f} s left")
        return text

    def advance(self, amount: int = 1) -> None:
        """``amount`` more units are done."""
        self.done += amount
        self.bar.update(amount)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            self.logger.info("%s", self.line())

    def __enter__(self) -> Heartbeat:
        self._started = time.perf_counter()
        if self.log_lines:
            self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.bar.close()
