"""Decoding on a derivatives tree: the participant level's own decoders (``DecodingModel``),
the group level's shared decoder, and ``participant --model``'s adapter.

The participant level's LSS betas are written directly (template grid at 8 mm): every event
drives the voxels of AAL3's visual network (1 % on average) and modulates them through one
fixed random map of its caption's embedding (the same in every participant, as template
space promises), plus noise in every voxel; a tiny random Llama stands in for the language
model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from test_group_level import save_tiny_llama

from fmrilm_bids.config import Config, ExecutionConfig, NipypeConfig, WorkflowConfig
from fmrilm_bids.dataset.derivatives import write_derivatives_skeleton
from fmrilm_bids.dataset.layout import BoldRun, Selection, SubjectSelection
from fmrilm_bids.dataset.output_checks import check_outputs
from fmrilm_bids.fmrilm.descriptors.networks import load_network_table
from fmrilm_bids.interfaces.decoding import UNIT_COLUMNS, DecodingModel
from fmrilm_bids.resources.atlases import load_atlas
from fmrilm_bids.resources.text_encoder import encode_sentences
from fmrilm_bids.simulate.events import CAPTIONS
from fmrilm_bids.stages.decoding import apply_shared_decoder, run_decoding_group

SPACE = "MNI152NLin2009aSym"
SUBJECTS = ("01", "02", "03")
#: Pictures of each of the 6 categories per participant.
PER_CATEGORY = 6


def _grid() -> tuple[np.ndarray, np.ndarray]:
    affine = np.diag([8.0, 8.0, 8.0, 1.0])
    affine[:3, 3] = (-96, -132, -78)
    inside = np.zeros((25, 29, 25), dtype=bool)
    inside[6:-6, 4:-10, 6:-6] = True  # occipital and temporal cortex and more
    return affine, inside


def _write_participant(bids: Path, out: Path, subject: str, weights: np.ndarray,
                       visual: np.ndarray, rng: np.random.Generator) -> BoldRun:
    affine, inside = _grid()
    func = bids / f"sub-{subject}" / "func"
    func.mkdir(parents=True)
    bold = func / f"sub-{subject}_task-images_bold.nii.gz"
    nib.Nifti1Image(np.zeros((2, 2, 2, 4), np.float32), affine).to_filename(bold)
    rows = [(category, caption) for category, captions in CAPTIONS.items()
            for caption in rng.permutation(captions)[:PER_CATEGORY]]
    rows = [rows[i] for i in rng.permutation(len(rows))]
    events = pd.DataFrame({"onset": 10.0 * np.arange(len(rows)), "duration": 3.0,
                           "trial_type": [c for c, _ in rows], "caption": [t for _, t in rows]})
    events.to_csv(func / f"sub-{subject}_task-images_events.tsv", sep="\t", index=False)
    embeddings = encode_sentences(events["caption"].tolist())
    signal = np.zeros((len(rows), int(inside.sum())))
    signal[:, visual] = 1.0 + (embeddings - embeddings.mean(0)) @ weights  # % signal change
    responses = signal + rng.normal(0, 0.5, signal.shape)
    volume = np.zeros((*inside.shape, len(rows)), np.float32)
    volume[inside] = responses.T
    derivatives = out / f"sub-{subject}" / "func"
    derivatives.mkdir(parents=True)
    stem = derivatives / f"sub-{subject}_task-images_space-{SPACE}_desc-lss_betas"
    nib.Nifti1Image(volume, affine).to_filename(f"{stem}.nii.gz")
    events.assign(block=np.arange(len(rows)), n_events=1, unit="event").to_csv(
        f"{stem}.tsv", sep="\t", index=False)
    sources = {"Sources": [f"bids:raw:sub-{subject}/func/{bold.name}"]}
    Path(f"{stem}.json").write_text(json.dumps(sources))
    return BoldRun(path=bold, subject=subject, task="images",
                   metadata={"RepetitionTime": 2.0},
                   events=func / f"sub-{subject}_task-images_events.tsv")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("decoding")
    bids, out = root / "bids", root / "out"
    bids.mkdir()
    (bids / "dataset_description.json").write_text(json.dumps(
        {"Name": "decoding", "BIDSVersion": "1.10.0", "DatasetType": "raw"}))
    write_derivatives_skeleton(out, bids)
    affine, inside = _grid()
    labels = np.asarray(load_atlas("AAL3", reference=nib.Nifti1Image(
        inside.astype(np.uint8), affine)).image.dataobj)[inside]
    table = load_network_table("AAL3")
    visual_labels = table.loc[table["network"] == "Visual", "index"].to_numpy()
    visual = np.flatnonzero(np.isin(labels, visual_labels))
    rng = np.random.default_rng(0)
    weights = rng.normal(0, 2.0, (384, len(visual)))
    runs = {s: _write_participant(bids, out, s, weights, visual, rng) for s in SUBJECTS}
    llm = save_tiny_llama(root / "llm")
    config = Config(execution=ExecutionConfig(bids_dir=bids, output_dir=out,
                                              analysis_level="group", work_dir=root / "work",
                                              run_uuid="x"),
                    workflow=WorkflowConfig(llm_dir=llm, device="cpu", decoding_folds=5),
                    nipype=NipypeConfig(nprocs=2))  # the group's fits on two processes
    # The participant level's decoders (the interface the participant workflow runs).
    for subject in runs:
        stem = out / f"sub-{subject}" / "func" / f"sub-{subject}_task-images_space-{SPACE}"
        (root / f"work-{subject}").mkdir()
        result = DecodingModel(betas_files=[f"{stem}_desc-lss_betas.nii.gz"],
                               betas_tables=[f"{stem}_desc-lss_betas.tsv"], llm_dir=str(llm),
                               n_folds=5, seed=42).run(cwd=str(root / f"work-{subject}"))
        shutil.copy(result.outputs.captions_files[0], f"{stem}_desc-decoded_captions.tsv")
        shutil.copy(f"{stem}_desc-lss_betas.json", f"{stem}_desc-decoded_captions.json")
    return {"bids": bids, "out": out, "runs": runs, "config": config, "root": root,
            "interface": result}


def _selection(tree: dict, subjects: tuple[str, ...]) -> Selection:
    return Selection(subjects=tuple(SubjectSelection(s, (), (tree["runs"][s],))
                                    for s in subjects))


@pytest.mark.slow
def test_participant_decoders_write_what_each_event_saw(tree) -> None:
    outputs = tree["interface"].outputs
    units = pd.read_csv(outputs.captions_files[0], sep="\t", na_values="n/a",
                        keep_default_na=False)
    assert list(units.columns[:len(UNIT_COLUMNS)]) == list(UNIT_COLUMNS)
    assert [c for c in units.columns if c.startswith("p_")] == [
        f"p_{c}" for c in sorted(CAPTIONS)]
    assert len(units) == 6 * PER_CATEGORY and units["fold"].nunique() == 5
    assert np.allclose(units.filter(like="p_").sum(axis=1), 1.0, atol=1e-3)
    assert units["zero_shot_category"].notna().all()
    assert (units["category"] == units["trial_type"]).mean() > 0.5  # chance 1/6
    retrieved = pd.read_csv(outputs.retrieval_files[0], sep="\t")
    assert list(retrieved.columns) == ["onset", "duration", "rank", "caption", "score",
                                       "source"]
    assert len(retrieved) == 5 * len(units) and set(retrieved["source"]) <= {"pool", "dataset"}
    # A unit never retrieves its own caption: it was in no training fold of its decoder.
    first = retrieved[retrieved["rank"] == 1].reset_index(drop=True)
    assert not (first["caption"] == units["seen_caption"]).any()
    assert np.load(outputs.embeddings_files[0]).shape == (len(units), 384)
    metrics = pd.read_csv(outputs.metrics_file, sep="\t").set_index(["metric", "decoder"])
    assert metrics.loc[("retrieval_top5", "contrastive"), "p_value"] < 0.01
    assert metrics.loc[("zero_shot_accuracy", "ridge"), "chance"] == pytest.approx(0.5)
    assert outputs.metadata["CrossValidation"] == "5 folds by block"
    section = json.loads(Path(outputs.section).read_text())
    assert section["figures"][0]["uri"].startswith("data:image/png;base64,")


@pytest.mark.slow
def test_group_trains_the_shared_decoder_and_a_new_participant_adapts_it(tree) -> None:
    out, config = tree["out"], tree["config"]
    model_dir = out / "models" / "fmrilm"
    sections = run_decoding_group(_selection(tree, ("01", "02")), config, torch.device("cpu"),
                                  model_dir)
    assert [s["title"] for s in sections] == ["Decoding: task-images"]
    metrics = pd.read_csv(out / "group" / "task-images_desc-decoding_metrics.tsv",
                          sep="\t").set_index(["metric", "decoder"])
    assert metrics.loc[("retrieval_top1", "contrastive"), "n"] == 2 * 6 * PER_CATEGORY
    assert metrics.loc[("retrieval_top5", "ridge"), "p_value"] < 0.01
    assert ("caption_similarity", "generated") in metrics.index
    few_shot = pd.read_csv(out / "group" / "task-images_desc-fewshot_metrics.tsv", sep="\t")
    assert set(few_shot["setting"]) == {"own", "adapted", "shared", "own_fraction"}
    assert few_shot["adapter_fraction"].iloc[0] == pytest.approx(0.25, abs=0.03)
    attribution = pd.read_csv(out / "group" / "task-images_desc-decoding_attribution.tsv",
                              sep="\t")
    assert attribution["network"].iloc[0] == "Visual"  # the only network with a signal
    decoder = model_dir / "decoding" / "task-images"
    info = json.loads((decoder / "decoder.json").read_text())
    assert info["participants"] == ["01", "02"] and info["space"] == SPACE
    assert int(np.asarray(nib.load(decoder / "mask.nii.gz").dataobj).sum()) == info["n_voxels"]
    assert json.loads((model_dir / "decoding" / "metrics.json").read_text())["images"][
        "few_shot"]
    # participant --model: sub-03 (never trained on) through its own adapter.
    participant = Config(execution=ExecutionConfig(**{
        **vars(config.execution), "analysis_level": "participant"}),
        workflow=config.workflow)
    apply_shared_decoder(_selection(tree, ("03",)), participant, model_dir,
                         torch.device("cpu"))
    func = out / "sub-03" / "func"
    adapted = pd.read_csv(func / f"sub-03_task-images_space-{SPACE}_desc-adapted_captions.tsv",
                          sep="\t", na_values="n/a", keep_default_na=False)
    assert len(adapted) == 6 * PER_CATEGORY and (adapted["category"]
                                                 == adapted["trial_type"]).mean() > 0.5
    sidecar = json.loads((func / f"sub-03_task-images_space-{SPACE}_desc-adapted_captions"
                                 ".json").read_text())
    assert sidecar["Sources"] == ["bids:raw:sub-03/func/sub-03_task-images_bold.nii.gz",
                                  "bids:raw:sub-03/func/sub-03_task-images_events.tsv"]
    scores = pd.read_csv(func / f"sub-03_task-images_space-{SPACE}_desc-adapted_metrics.tsv",
                         sep="\t").set_index(["metric", "decoder"])
    assert scores.loc[("retrieval_top5", "adapted"), "p_value"] < 0.01
    assert "Decoding with the shared decoder" in (out / "sub-03.html").read_text()
    assert check_outputs(out, folders=["group", "sub-01", "sub-02", "sub-03"]) == []
