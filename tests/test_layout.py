"""Indexing the input once (cached, concurrency-safe) and resolving the selection."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest
from conftest import write_tiny_bids

from bids_app.run import main
from fmrilm_bids.dataset.layout import (
    INDEX_FILE,
    dataset_fingerprint,
    index_dataset,
    reuse_index,
    select_runs,
)
from fmrilm_bids.errors import EXIT_DATA, InputDataError, MissingInputError


def test_metadata_is_inherited_from_top_level_sidecars(tiny_bids: Path, tmp_path: Path) -> None:
    layout = index_dataset(tiny_bids, tmp_path / "db")
    selection = select_runs(layout)
    runs = {run.name: run for run in selection.bold_runs}
    assert set(runs) == {f"sub-{s}_task-{t}" for s in ("01", "02") for t in ("faces", "rest")}
    rest = runs["sub-01_task-rest"]
    assert rest.repetition_time == 2.0
    assert rest.metadata["SliceTiming"] == [0.0, 1.0, 0.5, 1.5]
    assert rest.events is None
    assert runs["sub-01_task-faces"].events == (
        tiny_bids / "sub-01/func/sub-01_task-faces_events.tsv")


def test_run_sidecar_overrides_top_level(tiny_bids: Path, tmp_path: Path) -> None:
    (tiny_bids / "sub-02/func/sub-02_task-rest_bold.json").write_text(
        json.dumps({"RepetitionTime": 1.5}))
    selection = select_runs(index_dataset(tiny_bids, tmp_path / "db"), ["02"], task_id=["rest"])
    (run,) = selection.bold_runs
    assert run.repetition_time == 1.5
    assert run.metadata["TaskName"] == "rest"


def test_selection_by_label_with_and_without_prefix(tiny_bids: Path, tmp_path: Path) -> None:
    layout = index_dataset(tiny_bids, tmp_path / "db")
    a = select_runs(layout, ["sub-02"], task_id=["task-faces"])
    b = select_runs(layout, ["02"], task_id=["faces"])
    assert [r.path for r in a.bold_runs] == [r.path for r in b.bold_runs]
    assert [s.subject for s in a.subjects] == ["02"]
    assert "sub-02: sessions [-], tasks [faces]" in a.summary()


def test_unknown_task_names_what_exists(tiny_bids: Path, tmp_path: Path) -> None:
    layout = index_dataset(tiny_bids, tmp_path / "db")
    with pytest.raises(MissingInputError, match=r"unknown task.*movie.*faces, rest"):
        select_runs(layout, task_id=["movie"])


def test_index_is_built_once_and_rebuilt_when_the_dataset_changes(tiny_bids: Path,
                                                                 tmp_path: Path) -> None:
    db = tmp_path / "db"
    index_dataset(tiny_bids, db)
    (cached,) = [p for p in db.iterdir() if p.is_dir()]
    stamp = (cached / "layout_index.sqlite").stat().st_mtime_ns
    index_dataset(tiny_bids, db)
    assert (cached / "layout_index.sqlite").stat().st_mtime_ns == stamp
    before = dataset_fingerprint(tiny_bids)
    (tiny_bids / "sub-01/func/sub-01_task-faces_events.tsv").write_text(
        "onset\tduration\n0\t1\n")
    assert dataset_fingerprint(tiny_bids) != before
    index_dataset(tiny_bids, db)
    assert len([p for p in db.iterdir() if p.is_dir()]) == 2


def _index_in_child(args: tuple[str, str]) -> int:
    bids_dir, db = args
    return len(index_dataset(Path(bids_dir), Path(db)).get(suffix="bold", extension=".nii.gz"))


def test_two_participants_indexing_at_once_share_one_index(tiny_bids: Path,
                                                           tmp_path: Path) -> None:
    db = tmp_path / "db"
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        counts = pool.map(_index_in_child, [(str(tiny_bids), str(db))] * 2)
    assert counts == [4, 4]
    assert len([p for p in db.iterdir() if p.is_dir()]) == 1


def test_bids_database_dir_is_built_once_then_reused_as_it_is(tiny_bids: Path,
                                                              tmp_path: Path) -> None:
    db = tmp_path / "shared" / "bids_db"
    first = reuse_index(tiny_bids, db)
    stamp = (db / INDEX_FILE).stat().st_mtime_ns
    assert len(first.get(suffix="bold", extension=".nii.gz")) == 4
    # A run added afterwards is not seen: the index is trusted, the dataset not walked again.
    (tiny_bids / "sub-01/func/sub-01_task-rest_bold.nii.gz").rename(
        tiny_bids / "sub-01/func/sub-01_task-rest_run-2_bold.nii.gz")
    again = reuse_index(tiny_bids, db)
    assert (db / INDEX_FILE).stat().st_mtime_ns == stamp
    assert "sub-01_task-rest" in {r.name for r in select_runs(again).bold_runs}


def test_bids_database_dir_of_another_dataset_or_other_files_is_refused(
        tiny_bids: Path, tmp_path: Path) -> None:
    other = write_tiny_bids(tmp_path / "other", subjects=("03",))
    db = tmp_path / "db_other"
    reuse_index(other, db)
    with pytest.raises(InputDataError, match=r"built for .*other, not .*; point"):
        reuse_index(tiny_bids, db)
    cluttered = tmp_path / "cluttered"
    cluttered.mkdir()
    (cluttered / "notes.txt").write_text("x")
    with pytest.raises(InputDataError, match=r"cluttered: not a pybids index"):
        reuse_index(tiny_bids, cluttered)
    (cluttered / INDEX_FILE).write_text("not sqlite")
    with pytest.raises(InputDataError, match=r"index cannot be used .*; empty .*cluttered"):
        reuse_index(tiny_bids, cluttered)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert reuse_index(tiny_bids, empty).get_subjects() == ["01", "02"]


def test_cli_bids_database_dir_saved_and_checked_before_writing(
        tiny_bids: Path, tiny_fmriprep: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "db_other"
    reuse_index(write_tiny_bids(tmp_path / "other", subjects=("03",)), db)
    out = tmp_path / "out"
    args = [str(tiny_bids), str(out), "participant", "-w", str(tmp_path / "work"),
            "--skip-bids-validation", "--derivatives", f"fmriprep={tiny_fmriprep}",
            "--bids-database-dir"]
    assert main([*args, str(db)]) == EXIT_DATA
    (line,) = [e for e in capsys.readouterr().err.splitlines() if "error:" in e]
    assert "db_other: this pybids index was built for" in line and not out.exists()
    db = tmp_path / "db"
    assert main([*args, str(db), "--task-id", "rest", "--atlas", "AAL", "--nprocs", "1"]) == 0
    assert (db / INDEX_FILE).is_file() and not (tmp_path / "work" / "bids_db").exists()
    (saved,) = (out / "logs").glob("*/config.toml")
    assert f'bids_database_dir = "{db}"' in saved.read_text()
