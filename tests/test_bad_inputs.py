"""Every bad input ends with one line naming the file and the fix, an exit code, no output."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_app.run import main
from fmrilm_bids.errors import EXIT_CANT_CREATE, EXIT_DATA, EXIT_NO_INPUT

BOLD = "sub-01/func/sub-01_task-rest_bold.nii.gz"


def _drop_description(root: Path) -> tuple[Path, list[str]]:
    (root / "dataset_description.json").unlink()
    return root / "dataset_description.json", []


def _three_d_bold(root: Path) -> tuple[Path, list[str]]:
    path = root / BOLD
    img = nib.load(path)
    nib.Nifti1Image(np.asarray(img.dataobj)[..., 0], img.affine).to_filename(path)
    return path, ["--skip-bids-validation"]


def _no_repetition_time(root: Path) -> tuple[Path, list[str]]:
    sidecar = root / "task-rest_bold.json"
    sidecar.write_text(json.dumps({"TaskName": "rest"}))
    return root / BOLD, ["--skip-bids-validation"]


def _truncated_gzip(root: Path) -> tuple[Path, list[str]]:
    path = root / BOLD
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path, ["--skip-bids-validation"]


def _truncated_uncompressed(root: Path) -> tuple[Path, list[str]]:
    src = root / BOLD
    path = src.with_name(src.name.replace(".nii.gz", ".nii"))
    path.write_bytes(gzip.decompress(src.read_bytes())[:-400])
    src.unlink()
    return path, ["--skip-bids-validation"]


def _corrupt_nifti(root: Path) -> tuple[Path, list[str]]:
    path = root / BOLD
    path.write_bytes(gzip.compress(b"this is not a NIfTI file" * 20))
    return path, ["--skip-bids-validation"]


def _events_without_onset(root: Path) -> tuple[Path, list[str]]:
    path = root / "sub-02/func/sub-02_task-faces_events.tsv"
    path.write_text("start\tlength\ttrial_type\n0\t2\tface\n")
    return path, ["--skip-bids-validation"]


def _unknown_participant(root: Path) -> tuple[Path, list[str]]:
    return root, ["--participant-label", "sub-99"]


def _no_bold_matched(root: Path) -> tuple[Path, list[str]]:
    filters = root.parent / "filters.json"
    filters.write_text(json.dumps({"bold": {"acquisition": "multiband"}}))
    return root, ["--bids-filter-file", str(filters)]


def _validator_error(root: Path) -> tuple[Path, list[str]]:
    (root / "task-rest_bold.json").write_text(json.dumps({"TaskName": "rest"}))
    return root, []


CASES: dict[str, tuple[Callable[[Path], tuple[Path, list[str]]], int, str]] = {
    "not a BIDS dir": (lambda root: (root / "missing", []), EXIT_NO_INPUT, "not a folder"),
    "no dataset_description.json": (_drop_description, EXIT_DATA, "BIDS_DIR at the folder"),
    "unknown participant": (_unknown_participant, EXIT_NO_INPUT, "sub-01, sub-02"),
    "no BOLD runs matched": (_no_bold_matched, EXIT_NO_INPUT, "--bids-filter-file"),
    "BOLD not 4-D": (_three_d_bold, EXIT_DATA, "must be 4-D"),
    "missing RepetitionTime": (_no_repetition_time, EXIT_DATA, "task-rest_bold.json"),
    "truncated .nii.gz": (_truncated_gzip, EXIT_DATA, "truncated"),
    "truncated .nii": (_truncated_uncompressed, EXIT_DATA, "truncated"),
    "corrupt NIfTI": (_corrupt_nifti, EXIT_DATA, "not a readable NIfTI"),
    "events.tsv without onset/duration": (_events_without_onset, EXIT_DATA,
                                          "'onset' and 'duration'"),
    "BIDS validator errors": (_validator_error, EXIT_DATA, "--skip-bids-validation"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input(case: str, tiny_bids: Path, tmp_path: Path,
                   capsys: pytest.CaptureFixture[str]) -> None:
    breaker, expected_code, fix_hint = CASES[case]
    named_file, extra = breaker(tiny_bids)
    bids_dir = named_file if case == "not a BIDS dir" else tiny_bids
    out = tmp_path / "out"
    code = main([str(bids_dir), str(out), "participant", "-w", str(tmp_path / "work"), *extra])
    lines = capsys.readouterr().err.strip().splitlines()
    error_lines = [line for line in lines if line.startswith("fmrilm-bids: error:")]
    assert code == expected_code
    assert len(error_lines) == 1, lines
    assert str(named_file) in error_lines[0]
    assert fix_hint in error_lines[0]
    assert not out.exists(), "nothing may be written to the output on bad input"


def test_read_only_output_dir(tiny_bids: Path, tmp_path: Path, read_only_dir: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    out = read_only_dir / "derivatives"
    code = main([str(tiny_bids), str(out), "participant", "-w", str(tmp_path / "work")])
    (line,) = capsys.readouterr().err.strip().splitlines()[-1:]
    assert code == EXIT_CANT_CREATE
    assert str(out) in line and "writable OUTPUT_DIR" in line
    assert not out.exists()
