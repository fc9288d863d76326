"""Issue #14: bad input that used to crash (exit 70) or pass silently."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_app.run import main
from fmrilm_bids.dataset.checks import check_selection
from fmrilm_bids.dataset.layout import index_dataset, select_runs
from fmrilm_bids.errors import EXIT_DATA, EXIT_NO_INPUT, InputDataError


def _break_link(path: Path) -> Path:
    """Replace ``path`` by a symbolic link to an absent git-annex object (datalad, no get)."""
    path.unlink(missing_ok=True)
    os.symlink(f"../../.git/annex/objects/Xx/MD5E-s1--0{path.suffix}/x{path.suffix}", path)
    return path


def _error_lines(err: str) -> list[str]:
    return [line for line in err.strip().splitlines() if line.startswith("fmrilm-bids:")]


def test_broken_link_of_a_selected_participant_names_the_file_and_datalad_get(
        tiny_bids: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = _break_link(tiny_bids / "sub-01/func/sub-01_task-rest_bold.nii.gz")
    out = tmp_path / "out"
    code = main([str(tiny_bids), str(out), "participant", "-w", str(tmp_path / "work"),
                 "--skip-bids-validation", "--participant-label", "01"])
    (line,) = _error_lines(capsys.readouterr().err)
    assert code == EXIT_NO_INPUT
    assert line.startswith("fmrilm-bids: error:") and str(broken) in line
    assert "datalad get" in line and "git annex get" in line
    assert not out.exists()


def test_broken_links_of_other_participants_are_not_read(tiny_bids: Path,
                                                          tmp_path: Path) -> None:
    for name in ("sub-02_task-rest_bold.nii.gz", "sub-02_task-faces_events.tsv"):
        _break_link(tiny_bids / "sub-02/func" / name)
    _break_link(tiny_bids / "sub-02/func/sub-02_task-rest_bold.json")
    _break_link(tiny_bids / "sub-02/anat/sub-02_T1w.nii.gz")
    layout = index_dataset(tiny_bids, tmp_path / "db")
    selection = select_runs(layout, ["01"])
    check_selection(selection, bids_dir=tiny_bids)  # no error: sub-02 is not read
    assert [s.subject for s in selection.subjects] == ["01"]


@pytest.mark.parametrize(("content", "hint"), [
    ('{"bold": "rest"}', "'bold' must map to an object"),
    ('["bold"]', "must be a JSON object"),
    ('{"bold": {"task": {"$in": ["rest"]}}}', "an entity takes a value"),
])
def test_filter_file_of_the_wrong_shape(content: str, hint: str, tiny_bids: Path,
                                        tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    filters = tmp_path / "filters.json"
    filters.write_text(content)
    out = tmp_path / "out"
    code = main([str(tiny_bids), str(out), "participant", "-w", str(tmp_path / "work"),
                 "--skip-bids-validation", "--bids-filter-file", str(filters)])
    (line,) = _error_lines(capsys.readouterr().err)
    assert code == EXIT_DATA
    assert line.startswith("fmrilm-bids: error:") and str(filters) in line and hint in line
    assert not out.exists()


def test_filter_file_with_an_unknown_entity(tiny_bids: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    filters = tmp_path / "filters.json"
    filters.write_text('{"bold": {"tsk": "rest"}}')
    out = tmp_path / "out"
    code = main([str(tiny_bids), str(out), "participant", "-w", str(tmp_path / "work"),
                 "--skip-bids-validation", "--bids-filter-file", str(filters)])
    (line,) = _error_lines(capsys.readouterr().err)
    assert code == EXIT_DATA and "tsk" in line and "task" in line
    assert not out.exists()


@pytest.mark.parametrize(("content", "hint"), [
    ("workflow = 3\n", "'workflow' must be a section [workflow]"),
    ('atlases = ["AAL"]\n', "unknown top-level key 'atlases'; settings go in a section"),
    ("[flow]\nscrub = true\n", "unknown section [flow]"),
    ("[workflow]\natlas = ['AAL']\n", "unknown key(s) in [workflow]: atlas"),
    ('[nipype]\nnprocs = "four"\n', "nprocs = 'four' should be of type int"),
    ('[workflow]\natlases = "AAL"\n', "atlases = 'AAL' should be of type list[str]"),
    ("[workflow]\nscrub = 1\n", "should be of type bool"),
])
def test_config_file_schema(content: str, hint: str, tiny_bids: Path, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    config_file = tmp_path / "settings.toml"
    config_file.write_text(content)
    out = tmp_path / "out"
    code = main([str(tiny_bids), str(out), "participant", "-w", str(tmp_path / "work"),
                 "--skip-bids-validation", "--config-file", str(config_file)])
    (line,) = _error_lines(capsys.readouterr().err)
    assert code == EXIT_DATA
    assert line.startswith("fmrilm-bids: error:") and str(config_file) in line
    assert hint in line, line
    assert not out.exists()


@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize("compressed", [True, False])
def test_non_finite_bold_values_are_refused_before_any_work(
        value: float, compressed: bool, tiny_bids: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    src = tiny_bids / "sub-02/func/sub-02_task-rest_bold.nii.gz"
    img = nib.load(src)
    data = np.asarray(img.dataobj).copy()
    data[2, 3, 1, 7] = value
    path = src if compressed else src.with_name(src.name[:-3])
    src.unlink()
    nib.Nifti1Image(data, img.affine, img.header).to_filename(path)
    out = tmp_path / "out"
    code = main([str(tiny_bids), str(out), "participant", "-w", str(tmp_path / "work"),
                 "--skip-bids-validation"])
    (line,) = _error_lines(capsys.readouterr().err)
    assert code == EXIT_DATA
    assert str(path) in line and "1 NaN or infinite value(s)" in line
    assert "(first in volume 7)" in line
    assert not out.exists()


def test_finite_scan_reads_values_across_chunk_boundaries(tmp_path: Path) -> None:
    from fmrilm_bids.dataset import checks

    data = np.ones((40, 40, 41, 5), dtype=np.float64)  # 2.6 MB: 3 chunks, odd offsets
    data[-1, -1, -1, -1] = np.nan
    path = tmp_path / "big_bold.nii.gz"
    nib.Nifti1Image(data, np.eye(4)).to_filename(path)
    with pytest.raises(InputDataError, match=r"1 NaN .* \(first in volume 4\)"):
        checks.check_nifti_complete(path)
    data[-1, -1, -1, -1] = 1
    nib.Nifti1Image(data, np.eye(4)).to_filename(path)
    checks.check_nifti_complete(path)


def _late_events(tiny_bids: Path) -> Path:
    """sub-01's faces events with two events after the end of the 80 s run (lines 3, 5)."""
    path = tiny_bids / "sub-01/func/sub-01_task-faces_events.tsv"
    path.write_text("onset\tduration\ttrial_type\n0\t2\tface\n500\t2\tplace\n10\t2\tface\n"
                    "80\t2\tplace\n")
    return path


def test_events_after_the_end_of_the_run_are_named_in_a_warning(
        tiny_bids: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _late_events(tiny_bids)
    selection = select_runs(index_dataset(tiny_bids, tmp_path / "db"), ["01"])
    with caplog.at_level("WARNING", logger="fmrilm_bids"):
        check_selection(selection, bids_dir=tiny_bids)
    (message,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert str(path) in message and "2 event(s) start after the end of the run (80 s)" in message
    assert "3 (onset 500 s), 5 (onset 80 s)" in message and "left out of every model" in message


def test_events_after_the_end_of_the_run_are_left_out_of_the_models(
        tiny_bids: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import json

    import pandas as pd

    from fmrilm_bids.stages.inputs import read_derivative_run, timeseries_path

    _late_events(tiny_bids)
    selection = select_runs(index_dataset(tiny_bids, tmp_path / "db"), ["01"], task_id=["faces"])
    (run,) = selection.bold_runs
    out = tmp_path / "out"
    series = timeseries_path(out, run, "AAL3")
    series.parent.mkdir(parents=True)
    pd.DataFrame({"a": np.zeros(37), "b": np.ones(37)}).to_csv(series, sep="\t", index=False)
    series.with_suffix(".json").write_text(json.dumps(
        {"RepetitionTime": 2.0, "NonSteadyStateVolumes": 2, "CensoredVolumes": [5]}))
    with caplog.at_level("WARNING", logger="fmrilm_bids"):
        derived = read_derivative_run(out, run, "AAL3")
    assert derived.events["onset"].tolist() == [0, 10]
    assert derived.events["trial_type"].tolist() == ["face", "face"]
    assert any("left out of every model" in r.getMessage() for r in caplog.records)


def test_strict_refuses_the_run_for_a_participant_without_t1w(
        tiny_bids: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tiny_bids / "sub-02/anat/sub-02_T1w.nii.gz").unlink()
    out = tmp_path / "out"
    code = main([str(tiny_bids), str(out), "participant", "-w", str(tmp_path / "work"),
                 "--skip-bids-validation", "--strict"])
    (line,) = _error_lines(capsys.readouterr().err)
    assert code == EXIT_NO_INPUT and "sub-02/anat: no T1w image" in line
    assert not out.exists()


def test_only_participant_without_t1w_refuses_the_run(
        tiny_bids: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tiny_bids / "sub-02/anat/sub-02_T1w.nii.gz").unlink()
    out = tmp_path / "out"
    code = main([str(tiny_bids), str(out), "participant", "-w", str(tmp_path / "work"),
                 "--skip-bids-validation", "--participant-label", "02"])
    (line,) = _error_lines(capsys.readouterr().err)
    assert code == EXIT_NO_INPUT and "sub-02/anat: no T1w image" in line
    assert not out.exists()


def test_participant_without_t1w_is_left_out_and_the_others_go_on(
        tiny_bids: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from bids_app.parser import build_parser
    from bids_app.run import build_config, prepare_run

    (tiny_bids / "sub-02/anat/sub-02_T1w.nii.gz").unlink()
    parser = build_parser()
    opts = parser.parse_args([str(tiny_bids), str(tmp_path / "out"), "participant", "-w",
                              str(tmp_path / "work"), "--skip-bids-validation"])
    with caplog.at_level("WARNING", logger="fmrilm_bids"):
        selection = prepare_run(build_config(opts, parser))
    assert [s.subject for s in selection.subjects] == ["01"]
    (line,) = selection.refused
    assert line.startswith("sub-02/anat: no T1w image") and "sub-02 was left out" in line
    assert any("Left out: sub-02/anat" in r.getMessage() for r in caplog.records)


def test_fmriprep_input_needs_only_the_raw_metadata_and_events(
        tiny_bids: Path, tiny_fmriprep: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Raw images as placeholders (empty files) or absent content (broken links): the run
    uses fMRIPrep's images and the raw sidecars and events only."""
    for image in sorted(tiny_bids.glob("sub-01/**/*.nii.gz")):
        image.write_bytes(b"")
    for image in sorted(tiny_bids.glob("sub-02/**/*.nii.gz")):
        _break_link(image)
    out = tmp_path / "out"
    code = main([str(tiny_bids), str(out), "participant", "-w", str(tmp_path / "work"),
                 "--skip-bids-validation", "--nprocs", "2", "--task-id", "faces",
                 "--derivatives", f"fmriprep={tiny_fmriprep}"])
    assert code == 0, capsys.readouterr().err
    assert {p.name for p in out.glob("sub-*/func/*_desc-denoised_timeseries.tsv")} == {
        f"sub-{s}_task-faces_seg-AAL3_desc-denoised_timeseries.tsv" for s in ("01", "02")}


def test_fmriprep_input_checks_the_fmriprep_images(
        tiny_bids: Path, tiny_fmriprep: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    (bold,) = tiny_fmriprep.glob("sub-02/func/sub-02_task-rest_*_desc-preproc_bold.nii.gz")
    bold.write_bytes(bold.read_bytes()[:200])
    out = tmp_path / "out"
    code = main([str(tiny_bids), str(out), "participant", "-w", str(tmp_path / "work"),
                 "--skip-bids-validation", "--derivatives", f"fmriprep={tiny_fmriprep}"])
    (line,) = _error_lines(capsys.readouterr().err)
    assert code == EXIT_DATA and str(bold) in line and "truncated" in line
    assert not out.exists()
