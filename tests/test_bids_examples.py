"""The official bids-examples collection: every dataset is refused or run with one line and
a documented exit code, never a traceback or exit 70, nothing written on refusal.

The collection comes as ``/work/shared/peer-suites/bids-examples.tar.gz`` (or
``$BIDS_EXAMPLES_TARBALL``); the test is skipped without it. Most of its images are
header-only placeholders, so the datasets are refused by the input checks in well under a
second each; the validator is skipped (``--skip-bids-validation``) to keep the test short.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

from bids_app.run import main
from fmrilm_bids.errors import (
    EXIT_CANT_CREATE,
    EXIT_DATA,
    EXIT_NO_INPUT,
    EXIT_OK,
    EXIT_RUN_FAILED,
)

TARBALL = Path(os.environ.get("BIDS_EXAMPLES_TARBALL",
                              "/work/shared/peer-suites/bids-examples.tar.gz"))
DOCUMENTED = {EXIT_OK, EXIT_RUN_FAILED, EXIT_DATA, EXIT_NO_INPUT, EXIT_CANT_CREATE}


def _top_level_folders() -> list[str]:
    if not TARBALL.is_file():
        return []
    with tarfile.open(TARBALL) as archive:
        names = {m.name.split("/", 1)[0] for m in archive.getmembers()
                 if "/" in m.name.strip("/") or m.isdir()}
    return sorted(n for n in names if n and not n.startswith("."))


FOLDERS = _top_level_folders()


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bids-examples")
    with tarfile.open(TARBALL) as archive:
        archive.extractall(root, filter="data")
    return root


@pytest.mark.slow
@pytest.mark.skipif(not FOLDERS, reason=f"{TARBALL} is not here")
@pytest.mark.parametrize("folder", FOLDERS or ["none"])
def test_bids_example_is_refused_or_run_cleanly(folder: str, examples: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = main([str(examples / folder), str(out), "participant", "-w", str(tmp_path / "work"),
                 "--skip-bids-validation", "--nprocs", "1"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("fmrilm-bids:")]
    assert code in DOCUMENTED, (code, lines)
    assert "Traceback" not in err
    if code != EXIT_OK:
        assert len(lines) >= 1 and all(" error: " in line for line in lines), lines
    if code in (EXIT_DATA, EXIT_NO_INPUT):
        assert len(lines) == 1, lines
        assert not out.exists(), "nothing may be written to the output on refusal"
    print(f"bids-examples outcome: {folder} -> {code}: {lines[-1] if lines else ''}")
