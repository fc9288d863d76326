"""The derivatives writer: our suffixes, sidecars with BIDS URIs, atomic files, validator-clean."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fmrilm_bids.dataset.derivatives import bids_uri, write_derivatives_skeleton
from fmrilm_bids.dataset.validator import validate_dataset
from fmrilm_bids.interfaces.bids import STAGING_DIR, DerivativesDataSink
from fmrilm_bids.utils.files import atomic_write_text


@pytest.fixture
def table(tmp_path: Path) -> Path:
    path = tmp_path / "table.tsv"
    pd.DataFrame({"onset": [0.0, 2.0], "duration": [2.0, 2.0], "value": [1, 2]}).to_csv(
        path, sep="\t", index=False)
    return path


def test_every_fmrilm_suffix_is_written_with_its_sidecar(tiny_bids: Path, tmp_path: Path,
                                                         table: Path) -> None:
    out = write_derivatives_skeleton(tmp_path / "derivatives", tiny_bids)
    source = tiny_bids / "sub-01/func/sub-01_task-faces_bold.nii.gz"
    vectors = tmp_path / "vectors.npy"
    np.save(vectors, np.ones((3, 4), dtype=np.float32))
    uri = bids_uri(source, tiny_bids)
    assert uri == "bids:raw:sub-01/func/sub-01_task-faces_bold.nii.gz"
    written = {}
    for suffix, extra, in_file in (
        ("timeseries", {"segmentation": "AAL3", "desc": "denoised"}, table),
        ("timeseries", {"desc": "confounds"}, table),
        ("tokens", {"desc": "fmrilm"}, table),
        ("captions", {"desc": "fmrilm"}, table),
        ("embeddings", {"desc": "fmrilm"}, vectors),
        ("text", {"desc": "descriptors"}, table),
    ):
        result = DerivativesDataSink(base_directory=str(out), in_file=str(in_file),
                                     source_file=str(source), suffix=suffix, Sources=[uri],
                                     **extra).run()
        written[(suffix, extra.get("desc"))] = Path(result.outputs.out_file)
        meta = json.loads(Path(result.outputs.out_meta).read_text())
        assert meta["Sources"] == [uri]
    func = out / "sub-01" / "func"
    assert written[("timeseries", "denoised")] == (
        func / "sub-01_task-faces_seg-AAL3_desc-denoised_timeseries.tsv")
    assert written[("tokens", "fmrilm")] == func / "sub-01_task-faces_desc-fmrilm_tokens.tsv"
    assert written[("embeddings", "fmrilm")].suffix == ".npy"
    assert np.load(written[("embeddings", "fmrilm")]).shape == (3, 4)
    assert not (out / STAGING_DIR).exists()
    report = validate_dataset(out)
    assert report.ok, report.describe_errors()


def test_staged_files_never_appear_half_written(tiny_bids: Path, tmp_path: Path,
                                                table: Path) -> None:
    """The final path is created by one rename: its inode is the staged file's."""
    out = write_derivatives_skeleton(tmp_path / "derivatives", tiny_bids)
    seen: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src: str, dst: str) -> None:
        seen.append((str(src), str(dst)))
        real_replace(src, dst)

    source = tiny_bids / "sub-02/func/sub-02_task-rest_bold.nii.gz"
    sink = DerivativesDataSink(base_directory=str(out), in_file=str(table),
                               source_file=str(source), suffix="captions", desc="fmrilm",
                               Model="test")
    os_replace, os.replace = os.replace, spy
    try:
        result = sink.run()
    finally:
        os.replace = os_replace
    finals = {dst for _, dst in seen}
    assert str(result.outputs.out_file) in finals and str(result.outputs.out_meta) in finals
    assert all(STAGING_DIR in src for src, _ in seen)
    assert seen[-1][1] == str(result.outputs.out_meta), "sidecar moves last"


def test_skeleton_keeps_other_bidsignore_lines(tiny_bids: Path, tmp_path: Path) -> None:
    out = tmp_path / "derivatives"
    out.mkdir()
    (out / ".bidsignore").write_text("extra/\n")
    write_derivatives_skeleton(out, tiny_bids)
    write_derivatives_skeleton(out, tiny_bids)
    lines = (out / ".bidsignore").read_text().splitlines()
    assert lines[0] == "extra/" and lines.count("*_tokens.*") == 1


def test_atomic_write_leaves_no_temporary_files(tmp_path: Path) -> None:
    target = tmp_path / "a" / "file.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["file.txt"]


def test_captions_the_model_left_empty_are_missing_not_blank() -> None:
    """A caption the model did not write is n/a in the table (BIDS), never an empty cell."""
    import pandas as pd

    from fmrilm_bids.stages.outputs import captions_table

    windows = pd.DataFrame({"onset": [0.0, 12.0, 24.0, 36.0], "duration": 12.0,
                            "caption": ["A dog on a beach.", "", "  ", None]})
    events = pd.DataFrame({"onset": [3.0], "duration": 2.0, "trial_type": ["animal"],
                           "caption": ["A cat\non a\tmat. \n"]})
    table = captions_table(windows, events)
    assert table["caption"].isna().tolist() == [False, False, True, True, True]
    written = table.to_csv(sep="\t", index=False, na_rep="n/a").splitlines()
    assert len(written) == 6  # one line per caption: a TSV cell holds no line break
    assert [line.rsplit("\t", 1)[1] for line in written[1:]] == [
        "A dog on a beach.", "A cat on a mat.", "n/a", "n/a", "n/a"]


def test_text_answers_are_written_on_one_line() -> None:
    import pandas as pd

    from fmrilm_bids.stages.outputs import answers_table

    table = answers_table({"stimulus": pd.DataFrame({"onset": [0.0, 12.0], "duration": 12.0,
                                                      "answer": ["A red\nfox.", None]}),
                           "age": pd.DataFrame({"onset": [0.0], "duration": 60.0,
                                                "answer": [34.0]})})
    assert table["answer"].tolist()[:1] == ["A red fox."] and table["answer"].isna()[1]
    assert table["answer"].tolist()[2] == 34.0
    assert len(table.to_csv(sep="\t", index=False, na_rep="n/a").splitlines()) == 4
