"""The template served through a local TemplateFlow home."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fmrilm_bids.resources.templates import TEMPLATE, ensure_template, get_template


@pytest.fixture
def empty_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "templateflow"
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(home))
    return home / f"tpl-{TEMPLATE}"


def test_files_are_written_on_first_use_and_found_by_templateflow(empty_home: Path) -> None:
    mask = get_template(2, suffix="mask", desc="brain")
    assert mask == empty_home / f"tpl-{TEMPLATE}_res-02_desc-brain_mask.nii.gz"
    t1w = nib.load(get_template(2, suffix="T1w"))
    assert t1w.shape == nib.load(mask).shape and np.allclose(t1w.affine, nib.load(mask).affine)
    csf = nib.load(get_template(2, suffix="probseg", label="CSF")).get_fdata()
    assert csf.min() >= 0 and csf.max() <= 1 and csf[nib.load(mask).get_fdata() == 0].max() == 0
    description = json.loads((empty_home / "template_description.json").read_text())
    assert description["Identifier"] == "MNI152NLin2009aSym"
    assert set(description["res"]) == {"1", "2"}
    from bids.layout import parse_file_entities

    assert parse_file_entities(str(mask))["suffix"] == "mask"


def test_a_real_templateflow_file_is_used_and_not_duplicated(empty_home: Path) -> None:
    empty_home.mkdir(parents=True)
    ours = nib.load(get_template(1, suffix="T1w"))  # writes the whole set in a scratch home
    real = empty_home.parent.parent / "real" / f"tpl-{TEMPLATE}"
    real.mkdir(parents=True)
    # A real TemplateFlow home names 1 mm files res-1, and may hold empty placeholders.
    nib.Nifti1Image(np.asarray(ours.dataobj) * 2, ours.affine).to_filename(
        real / f"tpl-{TEMPLATE}_res-1_T1w.nii.gz")
    (real / f"tpl-{TEMPLATE}_res-1_desc-brain_mask.nii.gz").touch()
    os.environ["TEMPLATEFLOW_HOME"] = str(real.parent)
    assert get_template(1, suffix="T1w") == real / f"tpl-{TEMPLATE}_res-1_T1w.nii.gz"
    ensure_template()
    assert not (real / f"tpl-{TEMPLATE}_res-01_T1w.nii.gz").exists()
    mask = get_template(1, suffix="mask", desc="brain")  # ours, beside the empty placeholder
    assert mask.stat().st_size > 0


def test_unknown_image_is_a_clear_error(empty_home: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no res-3 T1w image"):
        get_template(3, suffix="T1w")
    with pytest.raises(FileNotFoundError, match="label-GM_probseg"):
        get_template(2, suffix="probseg", label="grey")
