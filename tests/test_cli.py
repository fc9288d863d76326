"""The command-line contract: flags, guards, config files, exit codes, the output skeleton."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from bids_app.parser import build_parser
from bids_app.run import build_config, main
from fmrilm_bids import __version__
from fmrilm_bids.config import Config
from fmrilm_bids.dataset.validator import validate_dataset
from fmrilm_bids.errors import EXIT_USAGE


def run_cli(*args: str | Path) -> int:
    return main([str(a) for a in args])


def saved_config(output_dir: Path) -> dict:
    (config_file,) = sorted((output_dir / "logs").glob("*/config.toml"))
    return tomllib.loads(config_file.read_text())


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--version"])
    assert exit_info.value.code == 0
    assert __version__ in capsys.readouterr().out


@pytest.mark.parametrize("spelling", ["--participant-label", "--participant_label"])
def test_dash_and_underscore_spellings(spelling: str) -> None:
    opts = build_parser().parse_args(["in", "out", "participant", spelling, "sub-01", "02"])
    assert opts.participant_label == ["sub-01", "02"]


def test_flags_not_given_stay_unset() -> None:
    opts = build_parser().parse_args(["in", "out", "group"])
    assert not hasattr(opts, "nprocs") and not hasattr(opts, "seed")


def test_decoding_folds_default_to_one_held_out_block_of_twelve(tmp_path: Path) -> None:
    parser = build_parser()
    args = [str(tmp_path / "in"), str(tmp_path / "out"), "participant"]
    assert build_config(parser.parse_args(args), parser).workflow.decoding_folds == 12
    opts = parser.parse_args([*args, "--decoding-folds", "4"])
    assert build_config(opts, parser).workflow.decoding_folds == 4


def test_adapter_folds_set_the_few_shot_test_alone(tmp_path: Path) -> None:
    parser = build_parser()
    args = [str(tmp_path / "in"), str(tmp_path / "out"), "group"]
    assert build_config(parser.parse_args(args), parser).workflow.adapter_folds == 4
    config = build_config(parser.parse_args([*args, "--adapter-folds", "6"]), parser)
    assert (config.workflow.adapter_folds, config.workflow.decoding_folds) == (6, 12)


def test_participant_run_writes_outputs_and_saves_config(
        tiny_bids: Path, tiny_fmriprep: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FMRILM_CONTAINER", "docker")
    out = tmp_path / "out"
    code = run_cli(tiny_bids, out, "participant", "--participant-label", "sub-01",
                   "-w", tmp_path / "work", "--nprocs", "1", "--seed", "7",
                   "--derivatives", f"fmriprep={tiny_fmriprep}")
    assert code == 0
    assert sorted(p.name for p in (out / "sub-01" / "func").glob("*_timeseries.tsv")) == [
        "sub-01_task-faces_seg-AAL3_desc-denoised_timeseries.tsv",
        "sub-01_task-rest_seg-AAL3_desc-denoised_timeseries.tsv"]
    assert (out / "sub-01.html").is_file() and not (out / "sub-02").exists()
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    generated = description["GeneratedBy"][0]
    assert generated["Name"] == "fmrilm-bids" and generated["Version"] == __version__
    assert generated["CodeURL"].startswith("https://")
    assert generated["Container"] == {"Type": "docker",
                                      "Tag": f"fmrilm/fmrilm-bids:{__version__}"}
    assert description["DatasetLinks"]["raw"] == tiny_bids.as_uri()
    assert "*_tokens.*" in (out / ".bidsignore").read_text().splitlines()
    settings = saved_config(out)
    assert settings["execution"]["participant_label"] == ["sub-01"]
    assert settings["seeds"]["master"] == 7
    assert settings["nipype"]["nprocs"] == 1 and settings["nipype"]["omp_nthreads"] == 1
    report = validate_dataset(out)
    assert report.ok, report.describe_errors()


def test_config_file_layers_under_the_flags(tiny_bids: Path, tiny_fmriprep: Path,
                                           tmp_path: Path) -> None:
    config_file = tmp_path / "settings.toml"
    config_file.write_text(
        '[workflow]\natlases = ["AAL"]\nhigh_pass = 0.01\n[seeds]\nmaster = 3\n'
        '[nipype]\nnprocs = 2\n'
    )
    out = tmp_path / "out"
    assert run_cli(tiny_bids, out, "participant", "-w", tmp_path / "work", "--task-id", "rest",
                   "--config-file", config_file, "--high-pass", "0.02",
                   "--derivatives", f"fmriprep={tiny_fmriprep}") == 0
    settings = saved_config(out)
    assert settings["workflow"]["atlases"] == ["AAL"]
    assert settings["workflow"]["high_pass"] == 0.02  # the flag wins over the file
    assert settings["seeds"]["master"] == 3
    assert settings["nipype"]["nprocs"] == 2
    sidecar = json.loads((out / "sub-02" / "func" / (
        "sub-02_task-rest_seg-AAL_desc-denoised_timeseries.json")).read_text())
    assert sidecar["HighPass"] == 0.02  # the settings reach the workflow


def test_saved_config_repeats_a_run(tiny_bids: Path, tiny_fmriprep: Path,
                                   tmp_path: Path) -> None:
    first = tmp_path / "first"
    assert run_cli(tiny_bids, first, "participant", "-w", tmp_path / "work", "--seed", "11",
                   "--task-id", "rest", "--atlas", "AAL", "--sloppy",
                   "--derivatives", f"fmriprep={tiny_fmriprep}") == 0
    (saved,) = sorted((first / "logs").glob("*/config.toml"))
    second = tmp_path / "second"
    assert run_cli(tiny_bids, second, "participant", "--config-file", saved) == 0
    a, b = Config.load(saved).to_dict(), saved_config(second)
    for section in ("nipype", "workflow", "seeds"):
        assert a[section] == b[section]
    for key in ("task_id", "work_dir", "participant_label", "derivatives"):
        assert a["execution"][key] == b["execution"][key]
    name = "sub-01/func/sub-01_task-rest_seg-AAL_desc-denoised_timeseries.tsv"
    assert (first / name).read_text() == (second / name).read_text()


def test_plugin_derivatives_and_filter_files(tiny_bids: Path, tiny_fmriprep: Path,
                                            tmp_path: Path) -> None:
    plugin = tmp_path / "plugin.yml"
    plugin.write_text("plugin: Linear\nplugin_args: {}\n")
    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({"bold": {"task": "rest"}}))
    fmriprep = tiny_fmriprep
    out = tmp_path / "out"
    assert run_cli(tiny_bids, out, "participant", "-w", tmp_path / "work", "--use-plugin",
                   plugin, "--bids-filter-file", filters, "--derivatives",
                   f"fmriprep={fmriprep}") == 0
    settings = saved_config(out)
    assert settings["nipype"]["plugin"] == "Linear"
    assert settings["execution"]["bids_filters"] == {"bold": {"task": "rest"}}
    assert settings["execution"]["derivatives"] == {"fmriprep": str(fmriprep)}
    assert {p.name for p in out.glob("sub-*/func/*_desc-denoised_timeseries.tsv")} == {
        f"sub-{s}_task-rest_seg-AAL3_desc-denoised_timeseries.tsv" for s in ("01", "02")}


def test_output_dir_equal_to_bids_dir_is_a_usage_error(tiny_bids: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(tiny_bids, tiny_bids, "participant")
    assert exit_info.value.code == EXIT_USAGE


def test_work_dir_inside_bids_dir_is_a_usage_error(tiny_bids: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(tiny_bids, tmp_path / "out", "participant", "-w", tiny_bids / "work")
    assert exit_info.value.code == EXIT_USAGE
    assert not (tmp_path / "out").exists()


def test_console_script_reports_one_line_and_exit_code(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("fmrilm-bids")
    proc = subprocess.run([str(script), str(tmp_path / "nothing"), str(tmp_path / "out"),
                           "participant", "-w", str(tmp_path / "work")],
                          capture_output=True, text=True, env=dict(os.environ), check=False)
    assert proc.returncode == 66
    assert proc.stderr.strip().splitlines() == [
        f"fmrilm-bids: error: {tmp_path / 'nothing'}: not a folder; give the root of a BIDS "
        "dataset as BIDS_DIR."
    ]
    assert not (tmp_path / "out").exists()


def test_a_failing_step_exits_1_with_its_crash_file_in_the_log_folder(
        tiny_bids: Path, tiny_fmriprep: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    confounds = tiny_fmriprep / "sub-01/func/sub-01_task-rest_desc-confounds_timeseries.tsv"
    confounds.write_text("\n".join(confounds.read_text().splitlines()[:-5]) + "\n")
    out = tmp_path / "out"
    code = run_cli(tiny_bids, out, "participant", "--participant-label", "01", "--task-id",
                   "rest", "-w", tmp_path / "work", "--derivatives", f"fmriprep={tiny_fmriprep}")
    assert code == 1
    (log_dir,) = (out / "logs").iterdir()
    (crash,) = log_dir.glob("crash-*.txt")
    assert "has 35 rows for a run of 40 volumes" in crash.read_text()
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("fmrilm-bids: error: 1 step(s) failed")
    assert crash.name in message
    assert not list(out.glob("sub-01/func/*_desc-denoised_timeseries.tsv"))
