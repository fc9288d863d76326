"""Issue #14 item 8: the outputs the validator cannot check are checked by the app."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fmrilm_bids.dataset.output_checks import check_outputs

SERIES = "sub-01/func/sub-01_task-faces_seg-AAL3_desc-denoised_timeseries"


def _copy(outputs: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(outputs, tmp_path / "copy", symlinks=True))


def test_the_outputs_pass_the_apps_own_checks(tiny_participant_outputs: tuple[Path, Path]) -> None:
    out, _ = tiny_participant_outputs
    assert check_outputs(out) == []
    description = json.loads((out / "dataset_description.json").read_text())
    assert "fmriprep" in description["DatasetLinks"]  # Sources name bids:fmriprep:...
    report = (out / "sub-01.html").read_text()
    assert "Validation of the outputs" in report and "_timeseries.tsv" in report


def _set_first_cell(tsv: Path, value: str) -> None:
    header, first, *rest = tsv.read_text().splitlines()
    tsv.write_text("\n".join([header, "\t".join([value, *first.split("\t")[1:]]), *rest])
                   + "\n")


@pytest.mark.parametrize(("breaker", "expected"), [
    (lambda tsv, meta: tsv.write_text(tsv.read_text().replace("\t", "\t\t", 1)),
     "fields for"),
    (lambda tsv, meta: tsv.write_text("\n".join(tsv.read_text().splitlines()[:-1]) + "\n"),
     "rows for a run of 40 volumes"),
    (lambda tsv, meta: _set_first_cell(tsv, "nan"), "must be written n/a"),
    (lambda tsv, meta: _set_first_cell(tsv, "high"), "is not a number"),
    (lambda tsv, meta: meta.write_text(json.dumps(
        {**json.loads(meta.read_text()), "MissingParcelReasons": "{'Cingulate_Ant_L': 'x'}"})),
     "MissingParcelReasons holds Python text"),
    (lambda tsv, meta: meta.write_text(json.dumps(
        {k: v for k, v in json.loads(meta.read_text()).items() if k != "RepetitionTime"})),
     "RepetitionTime is None"),
    (lambda tsv, meta: meta.write_text(json.dumps(
        {**json.loads(meta.read_text()), "RepetitionTime": 2000})),
     "number of seconds"),
    (lambda tsv, meta: meta.write_text(json.dumps(
        {**json.loads(meta.read_text()), "Sources": ["bids:nowhere:x.nii.gz"]})),
     "DatasetLinks does not define"),
])
def test_the_checks_find_broken_outputs(breaker: object, expected: str,
                                        tiny_participant_outputs: tuple[Path, Path],
                                        tmp_path: Path) -> None:
    out = _copy(tiny_participant_outputs[0], tmp_path)
    breaker(out / f"{SERIES}.tsv", out / f"{SERIES}.json")
    problems = check_outputs(out)
    assert problems and all(p.startswith(str(out / SERIES)) for p in problems), problems
    assert any(expected in p for p in problems), problems
