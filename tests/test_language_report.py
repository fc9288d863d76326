"""Report sections of the language outputs, from the tables the language stages write."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import matplotlib.image as mpimg
import pandas as pd

from fmrilm_bids.reports.html import publish_subject_report, report_part_file, section
from fmrilm_bids.reports.language import events_during, metrics_figures, run_language_section

TOKENS = pd.DataFrame({"onset": [0.0, 12.0, 24.0], "duration": [12.0] * 3,
                       "token": [3, 3, 7]})
EVENTS = pd.DataFrame({"onset": [2.0, 26.0], "duration": [4.0, 4.0],
                       "trial_type": ["faces", "houses"]})
CAPTIONS = pd.DataFrame({"onset": [0.0, 12.0, 24.0, 26.0], "duration": [12.0, 12.0, 12.0, 4.0],
                         "scope": ["window", "window", "window", "event"],
                         "trial_type": ["n/a", "n/a", "n/a", "houses"],
                         "caption": ["a face", "rest", "a house", "a red house"]})
ANSWERS = pd.DataFrame({"question": ["condition", "condition", "condition", "sex"],
                        "onset": [0.0, 12.0, 24.0, 0.0], "duration": [12.0, 12.0, 12.0, 36.0],
                        "answer": ["faces", "rest", "houses", "F"]})


def _png(uri: str) -> tuple[int, ...]:
    return mpimg.imread(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).shape


def test_events_overlapping_a_patch() -> None:
    assert events_during(EVENTS, 0.0, 12.0) == "faces"
    assert events_during(EVENTS, 12.0, 12.0) == "none"
    assert events_during(None, 0.0, 12.0) == "n/a"


def test_run_section_puts_captions_and_answers_beside_the_events() -> None:
    content = run_language_section("sub-01_task-x", TOKENS, CAPTIONS, ANSWERS, EVENTS, 16)
    (table,) = content["tables"]
    assert table["rows"] == [
        ["0.0", "12.0", "faces", 3, "a face", "condition: faces"],
        ["12.0", "12.0", "none", 3, "rest", "condition: rest"],
        ["24.0", "12.0", "houses", 7, "a house", "condition: houses"],
        ["26.0", "4.0", "houses (event)", "", "a red house", ""]]
    assert "2 distinct tokens of 16" in content["paragraphs"][0]
    assert content["paragraphs"][1] == "Answers about the whole run: sex: F."
    (figure,) = content["figures"]
    height, width, _ = _png(figure["uri"])
    assert width > 2 * height  # a time axis, wider than tall
    before_stage2 = run_language_section("sub-01_task-x", TOKENS, None, None, None, 16)
    assert [row[4:] for row in before_stage2["tables"][0]["rows"]] == [["", ""]] * 3


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
