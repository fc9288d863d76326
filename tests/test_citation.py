"""Citation boilerplate: logs/CITATION.md, .html and .bib say what ran and cite every tool."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from bids_app.run import main
from fmrilm_bids import __version__
from fmrilm_bids.config import Config
from fmrilm_bids.reports.citation import (
    REFERENCES,
    RunFacts,
    cited_keys,
    group_paragraphs,
    participant_paragraphs,
    to_html,
)

VERSIONS = {"fmrilm-bids": "9.9.9", "antspyx": "0.6.3", "nipype": "1.11.0",
            "nilearn": "0.14.1", "templateflow": "25.1.2", "torch": "2.13.0",
            "transformers": "5.24.0", "peft": "0.21.2", "sentence-transformers": "6.2.0"}
FACTS = RunFacts(participants=3, runs=5, slice_timed=2, denoising="the 24 motion regressors")


def make_config(tmp_path: Path, **workflow: object) -> Config:
    return Config.from_dict({"execution": {
        "bids_dir": str(tmp_path / "bids"), "output_dir": str(tmp_path / "out"),
        "analysis_level": "participant", "work_dir": str(tmp_path / "work")},
        "workflow": workflow, "seeds": {"master": 5}})


def test_participant_text_follows_the_settings(tmp_path: Path) -> None:
    text = "\n".join(p for _, p in participant_paragraphs(
        make_config(tmp_path, atlases=["AAL", "HCPEx"], sloppy=True, scrub=True,
                    fd_threshold=0.3, high_pass=0.01, denoise_strategy="24P"),
        FACTS, VERSIONS))
    for fragment in ("fmrilm-bids* 9.9.9", "antspyx 0.6.3", "MNI152NLin2009aSym",
                     "--sloppy", "above 0.3 mm", "0.01 Hz", "the 24 motion regressors",
                     "to the 2 run(s) with a known", "3 participant(s) and 5 BOLD run(s)",
                     "AAL [@tzouriomazoyer2002], HCPEx [@huang2022]", "[@tustison2010]",
                     "[@avants2008]", "[@power2014]"):
        assert fragment in text, fragment
    plain = "\n".join(p for _, p in participant_paragraphs(make_config(tmp_path), FACTS,
                                                          VERSIONS))
    assert "--sloppy" not in plain and "[@power2014]" not in plain  # no scrubbing by default
    assert "AAL3 [@rolls2020]" in plain


def test_fmriprep_inputs_and_group_text(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    config.execution.derivatives = {"fmriprep": tmp_path / "fmriprep"}
    paragraphs = participant_paragraphs(config, FACTS, VERSIONS)
    assert "[@tustison2010]" not in str(paragraphs) and "[@esteban2019]" in str(paragraphs)
    config.workflow.zero_shot = ["sex"]
    # Stage 1's length as the model recorded it (stage1.json's Training).
    trained = replace(FACTS, tokenizer_training={"steps": 123, "epochs": 400.0,
                                                 "min_steps": 300})
    group = " ".join(p for _, p in group_paragraphs(config, trained, VERSIONS))
    assert "(123 steps)" in group and "The questions sex were kept out" in group
    trained = replace(FACTS, tokenizer_training={"steps": None, "epochs": 2.5,
                                                 "min_steps": 7})
    group = " ".join(p for _, p in group_paragraphs(config, trained, VERSIONS))
    assert "(2.5 passes over the training windows, at least 7 steps)" in group
    assert "continuous Stage-1 features" in group and "1 and 2 epochs" in group
    assert "SmolLM2-135M-Instruct [@allal2025]" in group and "PEFT* 0.21.2" in group
    config.workflow.atlases = ["AAL", "HCPEx"]
    group = " ".join(p for _, p in group_paragraphs(config, FACTS, VERSIONS))
    assert "AAL [@tzouriomazoyer2002] atlas" in group and "HCPEx" not in group


def test_every_cited_key_has_one_reference(tmp_path: Path) -> None:
    config = make_config(tmp_path, scrub=True, atlases=["AAL3", "AAL", "HCPEx"],
                         model_dir=str(tmp_path / "model"))
    paragraphs = participant_paragraphs(config, FACTS, VERSIONS) + group_paragraphs(
        config, FACTS, VERSIONS)
    keys = cited_keys(paragraphs)
    assert set(keys) <= set(REFERENCES) and len(keys) >= 15
    for key, entry in REFERENCES.items():
        assert entry.startswith("@") and re.match(r"@\w+\{" + key + ",", entry), key
    page = to_html(paragraphs)
    assert "[@" not in page and page.count('<li id="ref-') == len(keys)


def test_participant_run_writes_the_boilerplate(tiny_bids: Path, tiny_fmriprep: Path,
                                                tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main([str(tiny_bids), str(out), "participant", "-w", str(tmp_path / "work"),
                 "--task-id", "rest", "--nprocs", "1", "--atlas", "AAL",
                 "--derivatives", f"fmriprep={tiny_fmriprep}"]) == 0
    logs = out / "logs"
    markdown = (logs / "CITATION.md").read_text()
    assert f"fmrilm-bids* {__version__}" in markdown
    assert "2 participant(s) and 2 BOLD run(s)" in markdown and "AAL [@tzouriomazoyer2002]" \
        in markdown
    bib = (logs / "CITATION.bib").read_text()
    assert bib.count("\n@") + 1 == len(cited_keys([("", markdown)]))
    assert "@article{esteban2019," in bib
    assert "<h1>Methods</h1>" in (logs / "CITATION.html").read_text()


def test_susceptibility_distortion_correction_text(tmp_path: Path) -> None:
    facts = RunFacts(participants=2, runs=5, slice_timed=0, denoising="6P",
                     sdc={"phasediff": 2, "pepolar": 1})
    paragraphs = participant_paragraphs(make_config(tmp_path), facts, VERSIONS)
    sdc = dict(paragraphs)["Susceptibility distortion correction"]
    for fragment in ("for 2 run(s), from a phase-difference map", "for 1 run(s), from EPI",
                     "[@herraez2002]", "[@andersson2003]", "[@jezzard1995; @hutton2002]",
                     "The other 2 run(s) had no usable field map"):
        assert fragment in sdc, fragment
    assert "the unwarped reference" in dict(paragraphs)["Functional data"]
    html = to_html(paragraphs)  # several keys in one bracket: each numbered and linked
    assert re.search(r'\[<a href="#ref-jezzard1995">\d+</a>, <a href="#ref-hutton2002">', html)
    assert {"jezzard1995", "hutton2002", "herraez2002", "vanderwalt2014",
            "andersson2003"} <= set(cited_keys(paragraphs)) <= set(REFERENCES)
    ignored = dict(participant_paragraphs(make_config(tmp_path, ignore=["fieldmaps"]),
                                          FACTS, VERSIONS))
    assert "field maps were ignored (`--ignore fieldmaps`)" in ignored[
        "Susceptibility distortion correction"]
