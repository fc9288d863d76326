"""--output-spaces: fMRIPrep's grammar, templates from the TemplateFlow home, clear refusals."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from bids_app.parser import build_parser
from bids_app.run import main
from fmrilm_bids.config import Config, ExecutionConfig, Space, WorkflowConfig
from fmrilm_bids.dataset.layout import BoldRun, SubjectSelection
from fmrilm_bids.errors import EXIT_NO_INPUT, EXIT_USAGE, MissingInputError
from fmrilm_bids.resources.templates import (
    TEMPLATE,
    TEMPLATE_FILES,
    check_spaces,
    get_template,
    space_file,
)
from fmrilm_bids.workflows.base import init_single_subject_wf


@pytest.mark.parametrize(("text", "space"), [
    ("MNI152NLin2009cAsym:res-2", Space("MNI152NLin2009cAsym", 2)),
    ("MNI152NLin6Asym", Space("MNI152NLin6Asym", 2)),
    ("MNIPediatricAsym:cohort-1:res-1", Space("MNIPediatricAsym", 1, "1")),
])
def test_fmriprep_grammar(text: str, space: Space) -> None:
    assert Space.parse(text) == space
    assert Space.parse(space.label) == space


@pytest.mark.parametrize(("text", "message"), [
    ("T1w", "template spaces only"), ("MNI152NLin6Asym:res-native", "res-native"),
    ("fsaverage:den-10k", "template spaces only"), ("MNI152NLin6Asym:den-10k", "unknown"),
    ("MNI152NLin6Asym:res-0", "unknown modifier 'res-0'"), ("MNI-152", "TEMPLATE[:res-N]"),
])
def test_bad_spaces_are_usage_errors(text: str, message: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Space.parse(text)
    with pytest.raises(SystemExit) as refused:
        build_parser().parse_args(["in", "out", "participant", "--output-spaces", text])
    assert refused.value.code == EXIT_USAGE and message in capsys.readouterr().err


@pytest.fixture
def templateflow_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A TemplateFlow home with the bundled template and an MNI152NLin6Asym (res-02 only,
    TemplateFlow's names; its images are the bundled template's, as test data)."""
    bundled = get_template(2).parent
    home = tmp_path / "templateflow"
    home.mkdir()
    (home / f"tpl-{TEMPLATE}").symlink_to(bundled)
    other = home / "tpl-MNI152NLin6Asym"
    other.mkdir()
    sources = sorted(bundled.glob(f"tpl-{TEMPLATE}_res-02_*.nii.gz"))
    assert len(sources) == len(TEMPLATE_FILES)
    for source in sources:
        os.symlink(source, other / source.name.replace(TEMPLATE, "MNI152NLin6Asym"))
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(home))
    return home


def test_templates_of_the_home_are_found_and_missing_ones_explained(
        templateflow_home: Path) -> None:
    six = Space("MNI152NLin6Asym", 2)
    assert space_file(six, "mask", desc="brain").name == (
        "tpl-MNI152NLin6Asym_res-02_desc-brain_mask.nii.gz")
    assert space_file(Space(TEMPLATE, 2), "T1w") == get_template(2)
    check_spaces([six, Space(TEMPLATE, 1)])
    with pytest.raises(MissingInputError, match=(
            r"tpl-MNI152NLin6Asym_res-01_T1w.nii.gz: output space MNI152NLin6Asym:res-1 is "
            r"not in the TemplateFlow home .*api.get\('MNI152NLin6Asym', resolution=1\)")):
        check_spaces([six, Space("MNI152NLin6Asym", 1)])
    with pytest.raises(MissingInputError, match=r"cohort-1.*cohort='1'"):
        space_file(Space("MNIPediatricAsym", 2, "1"))


def _subject(tmp_path: Path) -> SubjectSelection:
    import nibabel as nib
    import numpy as np

    bold = tmp_path / "bids" / "sub-01" / "func" / "sub-01_task-rest_bold.nii.gz"
    bold.parent.mkdir(parents=True)
    nib.Nifti1Image(np.ones((6, 6, 4, 5), np.float32), np.eye(4)).to_filename(bold)
    run = BoldRun(path=bold, subject="01", task="rest", metadata={"RepetitionTime": 2.0})
    return SubjectSelection(subject="01", t1w=(tmp_path / "T1w.nii.gz",), bold=(run,))


def test_every_space_gets_a_registration_and_a_bold_output(templateflow_home: Path,
                                                          tmp_path: Path) -> None:
    config = Config(execution=ExecutionConfig(
        bids_dir=tmp_path / "bids", output_dir=tmp_path / "out",
        analysis_level="participant", work_dir=tmp_path / "work", run_uuid="x"),
        workflow=WorkflowConfig(output_spaces=["MNI152NLin6Asym:res-2", f"{TEMPLATE}:res-2"],
                                output_bold=True))
    workflow = init_single_subject_wf(_subject(tmp_path), config)
    names = set(workflow.list_node_names())
    bold = "bold_sub_01_task_rest_wf.bold_preproc_wf"
    assert {"anat_preproc_wf.register", f"anat_preproc_wf.register_{TEMPLATE}_res_2",
            f"{bold}.resample", f"{bold}.resample_{TEMPLATE}_res_2", f"{bold}.ds_bold",
            f"{bold}.ds_bold_{TEMPLATE}_res_2"} <= names
    register = workflow.get_node("anat_preproc_wf.register")
    assert Path(register.inputs.template).name == "tpl-MNI152NLin6Asym_res-02_T1w.nii.gz"
    confounds = workflow.get_node(f"{bold}.confounds")
    assert "MNI152NLin6Asym" in Path(confounds.inputs.wm_probseg).name
    first = workflow.get_node(f"{bold}.ds_bold").inputs
    second = workflow.get_node(f"{bold}.ds_bold_{TEMPLATE}_res_2").inputs
    assert (first.space, first.resolution) == ("MNI152NLin6Asym", "2")
    assert (second.space, second.resolution) == (TEMPLATE, "2")
    assert config.workflow.template == "MNI152NLin6Asym"


def test_cli_refuses_a_missing_template_before_writing(
        tiny_bids: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    args = [str(tiny_bids), str(out), "participant", "-w", str(tmp_path / "work"),
            "--skip-bids-validation", "--output-spaces"]
    assert main([*args, "MNI152NLin2009cAsym:res-2"]) == EXIT_NO_INPUT
    (line,) = [e for e in capsys.readouterr().err.splitlines() if "error:" in e]
    assert "output space MNI152NLin2009cAsym:res-2 is not in the TemplateFlow home" in line
    assert "api.get('MNI152NLin2009cAsym', resolution=2)" in line and not out.exists()
    with pytest.raises(SystemExit) as refused:
        main([*args, f"{TEMPLATE}:res-2", "MNI152NLin2009cAsym:res-2"])
    assert refused.value.code == EXIT_USAGE and "add --output-bold" in capsys.readouterr().err
    assert not out.exists()
