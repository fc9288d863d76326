"""Issue #14 item 9: sidecars hold JSON objects (not Python text), and the parcels AAL3
lists but its image does not contain are said to be absent from the atlas image."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fmrilm_bids.dataset.layout import BoldRun
from fmrilm_bids.resources.atlases import ABSENT_FROM_ATLAS, load_atlas

SERIES = "sub-01/func/sub-01_task-faces_seg-AAL3_desc-denoised_timeseries"


def test_sidecars_hold_json_objects(tiny_participant_outputs: tuple[Path, Path]) -> None:
    out, _ = tiny_participant_outputs
    sidecar = json.loads((out / f"{SERIES}.json").read_text())
    assert isinstance(sidecar["MissingParcelReasons"], dict)
    assert isinstance(sidecar["ParcelVoxelCounts"], dict)
    columns = pd.read_csv(out / f"{SERIES}.tsv", sep="\t", nrows=0).columns
    assert sorted(sidecar["ParcelVoxelCounts"]) == sorted(columns)


def test_aal3_labels_absent_from_its_image_are_said_to_be_absent(
        tiny_participant_outputs: tuple[Path, Path]) -> None:
    out, _ = tiny_participant_outputs
    atlas = load_atlas("AAL3")
    absent = {atlas.labels[v] for v in (35, 36, 81, 82)}
    assert {atlas.labels[v] for v in atlas.absent_labels()} == absent
    reasons = json.loads((out / f"{SERIES}.json").read_text())["MissingParcelReasons"]
    assert {name for name, why in reasons.items() if why == ABSENT_FROM_ATLAS} == absent


def test_parcels_absent_from_the_atlas_are_not_reported_as_lacking_signal(
        caplog: pytest.LogCaptureFixture) -> None:
    from fmrilm_bids.stages.inputs import DerivativeRun, common_parcels

    runs = [DerivativeRun(
        bold=BoldRun(path=Path(f"sub-0{i}_task-rest_bold.nii.gz"), subject=f"0{i}",
                     task="rest"),
        timeseries=pd.DataFrame({"a": np.arange(5.0), "b": np.ones(5) * i + np.arange(5)}),
        metadata={"RepetitionTime": 2.0, "MissingParcels": ["gone"],
                  "MissingParcelReasons": {"gone": ABSENT_FROM_ATLAS}},
        timeseries_file=Path(f"sub-0{i}.tsv")) for i in (1, 2)]
    with caplog.at_level(logging.INFO, logger="fmrilm_bids"):
        parcels, excluded = common_parcels(runs, ["a", "gone", "b"])
    assert parcels == ["a", "b"] and excluded == {"gone": ABSENT_FROM_ATLAS}
    assert not [r for r in caplog.records if "without signal" in r.getMessage()]
    assert any(ABSENT_FROM_ATLAS in r.getMessage() for r in caplog.records)
