"""Shared fixtures. Every test runs offline, with caches in a per-session temporary folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_SESSION_ROOT = Path(os.environ.get("FMRILM_TEST_ROOT", "")) if os.environ.get(
    "FMRILM_TEST_ROOT") else None


def pytest_configure(config: pytest.Config) -> None:
    """Configure caches before any test module imports templateflow/niworkflows."""
    import tempfile

    from fmrilm_bids.environment import configure_environment

    root = _SESSION_ROOT or Path(tempfile.mkdtemp(prefix="fmrilm-tests-"))
    # The template cache is shared between test sessions (written once, read-only after).
    cache = Path(os.environ.get("FMRILM_TEST_CACHE", Path.home() / ".cache" / "fmrilm-tests"))
    configure_environment(work_dir=root / "work", cache_dir=cache)
    config.fmrilm_root = root  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def session_root(pytestconfig: pytest.Config) -> Path:
    return pytestconfig.fmrilm_root  # type: ignore[attr-defined]
