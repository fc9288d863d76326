"""Report sections of the language outputs, from the tables the language stages write."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from fmrilm_bids.reports.figures import token_figure
from fmrilm_bids.reports.html import publish_subject_report, report_part_file, section
from fmrilm_bids.reports.language import events_during, metrics_figures, run_language_section

TOKENS = pd.DataFrame({"onset": [0.0, 12.0, 24.0], "duration": [12.0] * 3,
                       "token_1": [3, 3, 7], "token_2": [12, 3, 12]})
EVENTS = pd.DataFrame({"onset": [2.0, 26.0], "duration": [4.0, 4.0],
                       "trial_type": ["faces", "houses"]})
CAPTIONS = pd.DataFrame({"onset": [0.0, 12.0, 24.0, 26.0], "duration": [12.0, 12.0, 12.0, 4.0],
                         "scope": ["window", "window", "window", "event"],
                         "trial_type": ["n/a", "n/a", "n/a", "houses"],
                         "caption": ["a face", "rest", "a house", "a red house"]})
ANSWERS = pd.DataFrame({"question": ["condition", "condition", "condition", "sex"],
                        "onset": [0.0, 12.0, 24.0, 0.0], "duration": [12.0, 12.0, 12.0, 36.0],
                        "answer": ["faces", "rest", "houses", "F"]})


def _image(uri: str) -> np.ndarray:
    return mpimg.imread(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def _png(uri: str) -> tuple[int, ...]:
    return _image(uri).shape


def test_events_overlapping_a_patch() -> None:
    assert events_during(EVENTS, 0.0, 12.0) == "faces"
    assert events_during(EVENTS, 12.0, 12.0) == "none"
    assert events_during(None, 0.0, 12.0) == "n/a"


def test_run_section_puts_captions_and_answers_beside_the_events() -> None:
    content = run_language_section("sub-01_task-x", TOKENS, CAPTIONS, ANSWERS, EVENTS, 16)
    (table,) = content["tables"]
    assert table["columns"][3] == "tokens"
    assert table["rows"] == [
        ["0.0", "12.0", "faces", "3 12", "a face", "condition: faces"],
        ["12.0", "12.0", "none", "3 3", "rest", "condition: rest"],
        ["24.0", "12.0", "houses", "7 12", "a house", "condition: houses"],
        ["26.0", "4.0", "houses (event)", "", "a red house", ""]]
    assert content["paragraphs"][0].startswith(
        "3 time patches of 2 tokens (one per learned parcel group), 3 distinct codes of 16 "
        "(the codebook's usage in this run: 19%)")
    assert content["paragraphs"][1] == "Answers about the whole run: sex: F."
    (figure,) = content["figures"]
    height, width, _ = _png(figure["uri"])
    assert width > 2 * height  # a time axis, wider than tall
    before_stage2 = run_language_section("sub-01_task-x", TOKENS, None, None, None, 16)
    assert [row[4:] for row in before_stage2["tables"][0]["rows"]] == [["", ""]] * 3


def test_token_figure_is_a_raster_of_groups_over_time() -> None:
    """Each cell of the figure's raster has its code's colour: rows are parcel groups (the
    first at the bottom), columns time patches."""
    codes = np.array([[0, 0, 15], [0, 0, 15], [0, 15, 0], [0, 15, 0]])  # 4 patches, 3 groups
    uri = token_figure(np.arange(4) * 12.0, np.full(4, 12.0), codes, 16,
                       [(2.0, 4.0, "faces")], "sub-01_task-x")
    image = _image(uri)[..., :3]
    turbo = plt.get_cmap("turbo")
    near = [np.abs(image - np.array(turbo(value)[:3])).max(axis=-1) < 0.02
            for value in (0.0, 1.0)]
    rows, columns = np.nonzero(near[0] | near[1])
    top, bottom, left, right = rows.min(), rows.max(), columns.min(), columns.max()
    assert right - left > 3 * (bottom - top)  # time runs along the wide axis
    seen = np.zeros((3, 4), dtype=int)
    for group in range(3):
        for patch in range(4):
            y = int(bottom - (group + 0.5) * (bottom - top) / 3)
            x = int(left + (patch + 0.5) * (right - left) / 4)
            (colour,) = [index for index in (0, 1) if near[index][y, x]]
            seen[group, patch] = 15 * colour
    np.testing.assert_array_equal(seen, codes.T)
    # Code 0 covers 8 cells, code 15 four: their areas in the raster say so.
    assert near[0].sum() / near[1].sum() == pytest.approx(2.0, rel=0.05)


def test_metrics_figures_show_the_model_against_its_baselines() -> None:
    metrics = {"tasks": {
        "condition": {"kind": "class", "setting": "tuned",
                      "fmrilm": {"accuracy": 0.6, "chance_accuracy": 0.5},
                      "baseline_fc": {"accuracy": 0.55}, "baseline_tokens": {"accuracy": 0.4}},
        "age": {"kind": "number", "setting": "tuned", "fmrilm": {"mae": 4.0},
                "chance_mae": 5.0},
        "skipped": {"kind": "class", "skipped": "no labelled test item"}}}
    figures = metrics_figures(metrics)
    assert [caption.split(" of ")[0] for caption, _ in figures] == [
        "Held-out accuracy", "Held-out mae"]
    assert "lower is better" in figures[1][0]
    assert all(_png(uri)[0] > 50 for _, uri in figures)
    assert metrics_figures({"tasks": {}}) == []


def test_each_level_adds_its_part_to_the_subject_report(tmp_path: Path) -> None:
    publish_subject_report(tmp_path, "01", "preproc", [section("Anatomical", ["n4"])])
    out = publish_subject_report(tmp_path, "01", "language", [section("Language", ["tok"])])
    page = out.read_text()
    assert out == tmp_path / "sub-01.html" and page.index("Anatomical") < page.index("Language")
    publish_subject_report(tmp_path, "01", "preproc", [section("Anatomical again")])
    page = out.read_text()
    assert "Anatomical again" in page and "Language" in page  # the other part is kept
    saved = json.loads(report_part_file(tmp_path, "01", "language").read_text())
    assert saved[0]["title"] == "Language"
