"""Long steps keep a log file alive: a line at least every interval, with rate and time left."""

from __future__ import annotations

import logging
import time

import pytest

from fmrilm_bids.utils.progress import Heartbeat


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("Captions")]


def _wait_for(condition, seconds: float = 10.0) -> bool:
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def test_heartbeat_logs_while_the_work_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="fmrilm_bids"), \
            Heartbeat("Captions", total=4, unit="runs", interval=0.05, show=False) as beat:
        # Nothing done yet, but the log is not silent.
        assert _wait_for(lambda: len(_lines(caplog)) >= 2)
        assert _lines(caplog)[0].startswith("Captions: 0/4 runs done")
        beat.advance()
        assert _wait_for(lambda: "1/4 runs done" in _lines(caplog)[-1])
    last = _lines(caplog)[-1]
    assert "runs/s" in last and "s left" in last
    count = len(_lines(caplog))
    time.sleep(0.2)
    assert len(_lines(caplog)) == count  # the thread stops with the block


def test_heartbeat_shows_a_bar_on_a_terminal(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="fmrilm_bids"), \
            Heartbeat("Captions", total=2, unit="runs", interval=0.01, show=True) as beat:
        time.sleep(0.1)
        beat.advance(2)
        assert beat.bar.n == 2
    assert not _lines(caplog)  # the bar, not log lines
