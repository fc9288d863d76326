"""Stage 1 on a BIDS derivatives tree: group training, participant application, files."""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from fmrilm_bids.dataset.derivatives import write_derivatives_skeleton
from fmrilm_bids.dataset.layout import Selection, index_dataset, select_runs
from fmrilm_bids.dataset.validator import validate_dataset
from fmrilm_bids.errors import InputDataError
from fmrilm_bids.fmrilm.descriptors import compute_run_features, load_network_table
from fmrilm_bids.fmrilm.tokenizer import TokenizerConfig, TrainConfig
from fmrilm_bids.fmrilm.tokenizer.model import weights_hash
from fmrilm_bids.interfaces.bids import DerivativesDataSink
from fmrilm_bids.resources.text_encoder import EMBEDDING_DIM, MODEL_NAME
from fmrilm_bids.simulate.config import SimulationConfig
from fmrilm_bids.simulate.regions import assign_networks, network_correlation
from fmrilm_bids.simulate.signals import (
    bandlimited_noise,
    network_time_courses,
    parcel_fluctuations,
)
from fmrilm_bids.simulate.simulator import Parcels
from fmrilm_bids.stages.bundle import TOKENIZER_FOLDER, Stage1Model, Stage1Settings
from fmrilm_bids.stages.outputs import CORPUS_FILE
from fmrilm_bids.stages.stage1 import apply_stage1, run_stage1_group

TR = 2.0
N_VOLUMES = 120
ATLAS = "AAL3"
#: sub-01..06, alternately control and patient (the simulator's group effect).
GROUPS = {f"{i:02d}": "control" if i % 2 else "patient" for i in range(1, 7)}
#: Run -> how its participant-level output departs from a plain run.
MISSING_PARCEL = ("sub-03_task-rest", "Vermis_10")  # outside the field of view
EMPTY_PARCEL = ("sub-05_task-rest", "Cerebellum_10_L")  # a column of n/a
SCRUBBED = ("sub-04_task-rest", [40, 41, 42, 43, 44])  # censored, with 2 dummy volumes
EVENTS = pd.DataFrame({"onset": [10.0, 50.0, 90.0], "duration": [1.0, 1.0, 1.0],
                       "trial_type": ["face", "place", "face"],
                       "caption": ["A smiling woman.", "A quiet beach at dawn.", "n/a"]})
SETTINGS = Stage1Settings(
    tokenizer=TokenizerConfig(target_tr=TR, patch_length=4, parcel_dim=8, n_groups=4,
                              group_pools=2, d_model=32, code_dim=16, codebook_size=32,
                              n_basis=4, llm_hidden=48, text_dim=EMBEDDING_DIM),
    training=TrainConfig(steps=30, batch_size=8, sequence_windows=8, learning_rate=1e-2,
                         min_learning_rate=1e-3, warmup_steps=5, eval_interval=15,
                         checkpoint_interval=15),
    n_paraphrases=2, reference_group="control")
WINDOW = SETTINGS.tokenizer.window_seconds


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models and matrices: one torch and BLAS thread avoids oversubscribing shared CI
    cores (restored after)."""
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(threads)


def word_piece_embedder(texts: list[str]) -> np.ndarray:
    """Mean of the all-MiniLM-L6-v2 word-piece embeddings of each text: a real text embedding
    without the transformer pass, so the tests stay fast (the default embedder runs in
    :func:`test_one_participant_trains_without_validation`)."""
    from fmrilm_bids.resources.text_encoder import load_text_encoder

    tokenizer, model = load_text_encoder()
    batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    mask = batch["attention_mask"][..., None].float()
    with torch.no_grad():
        vectors = model.embeddings.word_embeddings(batch["input_ids"])
    return ((vectors * mask).sum(dim=1) / mask.sum(dim=1)).numpy()


def simulated_signals(names: list[str], group: str, seed: int) -> np.ndarray:
    """Parcel fluctuations of the simulator, with its planted group effect (patients' default
    mode parcels share less variance with their network)."""
    rng = np.random.default_rng(seed)
    networks = assign_networks(names)
    parcels = Parcels(labels=list(range(1, len(names) + 1)), names=names, networks=networks,
                      n_voxels=np.ones(len(names)), fluctuation_sd=np.ones(len(names)))
    latent = network_time_courses(N_VOLUMES, TR, network_correlation(), rng)
    return parcel_fluctuations(latent, parcels.network_index,
                               parcels.shared_fraction(SimulationConfig(), group),
                               rng.uniform(0.6, 1.0, len(names)),
                               bandlimited_noise(N_VOLUMES, TR, len(names), rng))


def write_raw(root: Path) -> Path:
    """Raw BIDS: tiny BOLD images (only their names and metadata matter here), events."""
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "stage1", "BIDSVersion": "1.10.0", "DatasetType": "raw", "License": "CC0",
         "Authors": ["fmrilm-bids tests"]}))
    (root / "README.md").write_text("Stage-1 test dataset.\n")
    (root / "participants.tsv").write_text("participant_id\tgroup\n" + "".join(
        f"sub-{s}\t{g}\n" for s, g in GROUPS.items()))
    for task in ("rest", "faces"):
        (root / f"task-{task}_bold.json").write_text(json.dumps(
            {"RepetitionTime": TR, "TaskName": task}))
    image = nib.Nifti1Image(np.ones((2, 2, 2, N_VOLUMES), dtype=np.int16), np.eye(4))
    image.header.set_xyzt_units("mm", "sec")
    for subject in GROUPS:
        func = root / f"sub-{subject}" / "func"
        func.mkdir(parents=True)
        for task in ("rest", "faces") if subject in ("01", "02") else ("rest",):
            image.to_filename(func / f"sub-{subject}_task-{task}_bold.nii.gz")
        if subject in ("01", "02"):
            EVENTS.to_csv(func / f"sub-{subject}_task-faces_events.tsv", sep="\t",
                          index=False)
    return root


def write_participant_outputs(bids: Path, out: Path) -> Path:
    """What the participant level writes per run: denoised series + sidecar, confounds."""
    write_derivatives_skeleton(out, bids)
    names = load_network_table(ATLAS)["name"].tolist()
    for index, bold in enumerate(sorted(bids.glob("sub-*/func/*_bold.nii.gz"))):
        stem = bold.name.removesuffix("_bold.nii.gz")
        subject = stem[4:6]
        signals = pd.DataFrame(simulated_signals(names, GROUPS[subject], index), columns=names)
        rng = np.random.default_rng(100 + index)
        confounds = pd.DataFrame(rng.normal(0, 0.05, (N_VOLUMES, 6)),
                                 columns=["trans_x", "trans_y", "trans_z", "rot_x", "rot_y",
                                          "rot_z"])
        confounds.insert(0, "framewise_displacement",
                         np.r_[np.nan, rng.gamma(2.0, 0.06, N_VOLUMES - 1)])
        metadata = {"Atlas": ATLAS, "AtlasSource": ATLAS, "RepetitionTime": TR,
                    "StartTime": 0.0, "NonSteadyStateVolumes": 0, "CensoredVolumes": [],
                    "MissingParcels": [], "MissingParcelReasons": {}}
        if stem == MISSING_PARCEL[0]:
            signals = signals.drop(columns=MISSING_PARCEL[1])
            metadata["MissingParcels"] = [MISSING_PARCEL[1]]
            metadata["MissingParcelReasons"] = {MISSING_PARCEL[1]: "outside the BOLD brain mask"}
        if stem == EMPTY_PARCEL[0]:
            signals[EMPTY_PARCEL[1]] = np.nan
        if stem == SCRUBBED[0]:
            kept = np.setdiff1d(np.arange(2, N_VOLUMES), SCRUBBED[1])
            signals = signals.iloc[kept].reset_index(drop=True)
            metadata |= {"NonSteadyStateVolumes": 2, "CensoredVolumes": SCRUBBED[1],
                         "StartTime": 2 * TR}
        for table, extra, meta in (
                (signals, {"desc": "denoised", "segmentation": ATLAS}, metadata),
                (confounds, {"desc": "confounds"}, {})):
            path = out / f"{stem}_{extra['desc']}.tsv"
            table.to_csv(path, sep="\t", index=False, na_rep="n/a", float_format="%.6g")
            DerivativesDataSink(base_directory=str(out), in_file=str(path), source_file=str(bold),
                                suffix="timeseries", **extra,
                                Sources=[f"bids:raw:{bold.relative_to(bids).as_posix()}"],
                                **meta).run()
            path.unlink()
    return out


def selection_of(bids: Path, work: Path, participants: list[str] | None = None) -> Selection:
    return select_runs(index_dataset(bids, work / "bids_db"), participant_label=participants)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """Raw dataset, participant-level derivatives (pristine), work folder."""
    root = tmp_path_factory.mktemp("stage1")
    bids = write_raw(root / "bids")
    return bids, write_participant_outputs(bids, root / "participant"), root / "work"


def fresh_derivatives(dataset: tuple[Path, Path, Path], target: Path) -> Path:
    """A copy of the participant-level derivatives, for one test to write into."""
    return Path(shutil.copytree(dataset[1], target))


def run_group(dataset: tuple[Path, Path, Path], out: Path, **kwargs):
    """The group level on every participant, into the derivatives ``out``."""
    bids, _, work = dataset
    return run_stage1_group(selection_of(bids, work), out, bids, out / "models" / "fmrilm",
                            atlas=ATLAS, settings=SETTINGS, text_embedder=word_piece_embedder,
                            text_embedder_name="MiniLM word pieces", seed=3,
                            **kwargs)


@pytest.fixture(scope="module")
def group(dataset: tuple[Path, Path, Path], tmp_path_factory: pytest.TempPathFactory):
    """Group level on all participants."""
    out = fresh_derivatives(dataset, tmp_path_factory.mktemp("group") / "out")
    return out, run_group(dataset, out)


def assert_same_sidecar(first: object, second: object, where: str = "") -> None:
    """Equal JSON content, floats to 1e-9 (BLAS may round the last bits differently)."""
    if isinstance(first, dict):
        assert isinstance(second, dict) and first.keys() == second.keys(), where
        for key in first:
            assert_same_sidecar(first[key], second[key], f"{where}.{key}")
    elif isinstance(first, list):
        assert isinstance(second, list) and len(first) == len(second), where
        for index, (a, b) in enumerate(zip(first, second, strict=True)):
            assert_same_sidecar(a, b, f"{where}[{index}]")
    elif isinstance(first, float):
        assert second == pytest.approx(first, rel=1e-9, abs=1e-12), where
    else:
        assert first == second, where


def read_tsv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", na_values="n/a", keep_default_na=False)


def sidecar(path: Path) -> dict:
    return json.loads(path.with_suffix(".json").read_text())


def test_group_level_writes_every_run_and_the_model(group) -> None:
    out, result = group
    model = result.model
    assert model.directory == out / "models" / "fmrilm"
    assert sorted(result.train_subjects + result.test_subjects) == sorted(GROUPS)
    assert len(result.test_subjects) == 2  # a quarter of 6, rounded
    assert not set(result.train_subjects) & set(result.test_subjects)
    assert not (out / "models" / ".fmrilm.training").exists()

    # Model folder: settings, embedder, hash of the weights, cards.
    info = json.loads((model.directory / "stage1.json").read_text())
    assert info["TextEmbedder"] == "MiniLM word pieces"
    assert info["TokenizerHash"] == weights_hash(model.directory / TOKENIZER_FOLDER)
    assert info["TokenizerHash"].startswith("sha256:") and len(info["TokenizerHash"]) == 71
    assert info["DescriptorSettings"]["window_length"] == WINDOW
    assert set(info["Metrics"]) >= {"reconstruction_r2", "perplexity", "retrieval_top1"}
    assert "MiniLM word pieces" in (model.directory / "README.md").read_text()
    assert "MiniLM word pieces" in (model.directory / TOKENIZER_FOLDER / "README.md").read_text()
    assert not list((model.directory / TOKENIZER_FOLDER).glob("trainer_state*"))

    # Every run: descriptors and tokens beside its series.
    stems = sorted(p.name.split("_seg-")[0] for p in out.glob("sub-*/func/*_desc-denoised_*.tsv"))
    assert sorted(r.run.key for r in result.runs) == stems
    for run in result.runs:
        func = out / f"sub-{run.run.bold.subject}" / "func"
        tokens_file = func / f"{run.run.key}_seg-{ATLAS}_desc-fmrilm_tokens.tsv"
        text_file = func / f"{run.run.key}_seg-{ATLAS}_desc-descriptors_text.tsv"
        assert run.files == {"descriptors": text_file, "tokens": tokens_file}
        tokens, meta = read_tsv(tokens_file), sidecar(tokens_file)
        n_windows = int(len(run.run.timeseries) * TR // WINDOW)
        assert list(tokens.columns) == ["onset", "duration", "token_1", "token_2", "token_3",
                                        "token_4"]
        assert len(tokens) == n_windows
        start = meta["StartTime"]
        np.testing.assert_allclose(tokens["onset"], start + WINDOW * np.arange(n_windows))
        assert (tokens["duration"] == WINDOW).all()
        assert tokens.filter(like="token_").stack().between(
            0, SETTINGS.tokenizer.codebook_size - 1).all()
        assert meta["ModelHash"] == info["TokenizerHash"]
        assert meta["CodebookSize"] == 32 and meta["PatchLength"] == 4
        assert meta["TokensPerWindow"] == 4
        assert meta["Sources"][:2] == [
            f"bids:raw:sub-{run.run.bold.subject}/func/{run.run.key}_bold.nii.gz",
            f"bids::sub-{run.run.bold.subject}/func/{run.run.key}_seg-{ATLAS}"
            "_desc-denoised_timeseries.tsv"]
        assert "bids::models/fmrilm/tokenizer" in meta["Sources"]

        text, meta = read_tsv(text_file), sidecar(text_file)
        assert text["scope"].tolist() == ["run"] + ["window"] * n_windows
        np.testing.assert_allclose(text["onset"][1:], tokens["onset"])
        assert meta["ReferenceFile"] == "bids::models/fmrilm/descriptor_reference.json"
        assert meta["reference"]["n_runs"] == 4  # the controls' runs (reference_group)
        assert set(meta["features"]["graph.modularity"]) == {"value", "z"}


def test_descriptor_tables_state_the_features_and_the_delayed_events(group) -> None:
    _, result = group
    table = load_network_table(ATLAS)
    for run in result.runs:
        text_file = run.files["descriptors"]
        text, meta = read_tsv(text_file), sidecar(text_file)
        # The numbers in the run paragraph are the features recomputed from the series.
        features = compute_run_features(run.run.timeseries, TR,
                                        table.set_index("name").loc[run.run.timeseries.columns,
                                                                    "network"].tolist(),
                                        run.run.confounds,
                                        result.model.reference.gradient_template,
                                        result.model.descriptor_settings.features).values
        for fact in meta["facts"]:
            assert fact["sentence"] in text.loc[0, "text"]
            stated = float(re.search(r"=(-?\d+(?:\.\d+)?)", fact["sentence"]).group(1))
            assert stated == pytest.approx(features[fact["feature"]], rel=5e-3, abs=5e-4)
        if run.run.bold.task == "faces":
            # Events shifted by the 5 s haemodynamic delay: 10-11 s -> 15-16 s (window 1
            # of 8 s, row 2), 50 s -> 55 s (window 6), 90 s -> 95 s (window 11; no caption,
            # so its trial type).
            events = text["events"]
            assert events[2] == "A smiling woman." and events[7] == "A quiet beach at dawn."
            assert events[12] == "a face trial"
            assert events.drop([2, 7, 12]).isna().all()
            assert "A smiling woman" in text.loc[2, "text"]
            assert meta["Sources"][-2] == (f"bids:raw:sub-{run.run.bold.subject}/func/"
                                           f"{run.run.key}_events.tsv")
        else:
            assert "events" not in text


def test_planted_group_effect_is_stated_in_the_patients_descriptors(group) -> None:
    """Against the controls, patients' default mode coupling is reduced, in numbers and words."""
    _, result = group
    key = "fc.Default~Default"
    for run in result.runs:
        metadata = run.descriptors.metadata
        z = metadata["features"][key]["z"]
        stated = {fact["feature"]: fact for fact in metadata["facts"]}
        if GROUPS[run.run.bold.subject] == "patient":
            assert z < -3
            assert key in stated, f"{run.run.key}: the reduced coupling is not stated"
            assert stated[key]["grade"] in ("low", "markedly_low")
            assert "default mode" in stated[key]["sentence"]
        else:
            assert abs(z) < 3
            assert stated.get(key, {}).get("grade") not in ("low", "markedly_low")


def test_parcels_without_signal_are_left_out_and_recorded(group, dataset, tmp_path) -> None:
    _, result = group
    info = result.model.info
    assert set(info["ExcludedParcels"]) == {MISSING_PARCEL[1], EMPTY_PARCEL[1]}
    assert info["ExcludedParcels"][MISSING_PARCEL[1]] == (
        f"{MISSING_PARCEL[0]}: outside the BOLD brain mask")
    assert info["ExcludedParcels"][EMPTY_PARCEL[1]] == (
        f"{EMPTY_PARCEL[0]}: no signal (every value is n/a)")
    assert len(info["Parcels"]) == len(load_network_table(ATLAS)) - 2
    assert all(list(r.run.timeseries.columns) == info["Parcels"] for r in result.runs)
    # Each parcel's MNI centre, the tokenizer's position features (left precentral gyrus:
    # left, central, high).
    coordinates = dict(zip(info["Parcels"], info["ParcelCoordinates"], strict=True))
    x, y, z = coordinates["Precentral_L"]
    assert x < -30 and -20 < y < 5 and z > 40
    missing_meta = sidecar(next(r for r in result.runs
                                if r.run.key == MISSING_PARCEL[0]).files["tokens"])
    assert missing_meta["MissingParcels"] == [MISSING_PARCEL[1]]

    # A run without signal in a model parcel cannot be applied: one line, file and parcel.
    bids, _, work = dataset
    copy = fresh_derivatives(dataset, tmp_path / "out")
    series = copy / "sub-01" / "func" / f"sub-01_task-rest_seg-{ATLAS}_desc-denoised_timeseries.tsv"
    parcel = info["Parcels"][0]
    read_tsv(series).drop(columns=parcel).to_csv(series, sep="\t", index=False, na_rep="n/a")
    metadata = sidecar(series)
    metadata |= {"MissingParcels": [parcel],
                 "MissingParcelReasons": {parcel: "outside the BOLD brain mask"}}
    series.with_suffix(".json").write_text(json.dumps(metadata))
    with pytest.raises(InputDataError,
                       match=rf"{re.escape(str(series))}.*{parcel} \(outside the BOLD"):
        apply_stage1(selection_of(bids, work, ["01"]), copy, bids, result.model.directory)

    # n/a in some rows only is refused, never filled.
    values = read_tsv(series)
    values.iloc[5, 3] = np.nan
    values.to_csv(series, sep="\t", index=False, na_rep="n/a")
    series.with_suffix(".json").write_text(json.dumps(metadata | {"MissingParcels": []}))
    with pytest.raises(InputDataError, match="n/a values in some rows only"):
        apply_stage1(selection_of(bids, work, ["01"]), copy, bids, result.model.directory)
    assert not list(copy.glob("sub-*/func/*_tokens.tsv"))


def test_censored_volumes_are_put_back_on_the_time_grid(group) -> None:
    _, result = group
    run = next(r for r in result.runs if r.run.key == SCRUBBED[0])
    kept_rows = N_VOLUMES - 2 - len(SCRUBBED[1])
    assert len(run.run.timeseries) == kept_rows + len(SCRUBBED[1])
    meta = sidecar(run.files["tokens"])
    assert meta["InterpolatedVolumes"] == SCRUBBED[1]
    assert meta["StartTime"] == 2 * TR
    tokens = read_tsv(run.files["tokens"])
    assert tokens["onset"].iloc[0] == 2 * TR
    assert len(tokens) == int((N_VOLUMES - 2) * TR // WINDOW)
    # Interpolated rows lie on the line between their kept neighbours (volumes 39 and 45).
    series = run.run.timeseries.to_numpy()
    rows = np.array(SCRUBBED[1]) - 2
    expected = series[rows[0] - 1] + np.outer(np.arange(1, 6) / 6,
                                              series[rows[-1] + 1] - series[rows[0] - 1])
    np.testing.assert_allclose(series[rows], expected)


def test_participant_level_reproduces_the_group_outputs(group, dataset, tmp_path) -> None:
    out, result = group
    bids, _, work = dataset
    copy = fresh_derivatives(dataset, tmp_path / "out")
    model_dir = Path(shutil.copytree(result.model.directory, copy / "models" / "fmrilm"))
    applied = apply_stage1(selection_of(bids, work, ["02", "04"]), copy, bids, model_dir)
    by_key = {r.run.key: r for r in result.runs}
    assert sorted(r.run.key for r in applied) == [
        "sub-02_task-faces", "sub-02_task-rest", "sub-04_task-rest"]
    for run in applied:
        for kind in ("descriptors", "tokens"):
            group_file = by_key[run.run.key].files[kind]
            assert run.files[kind] == copy / group_file.relative_to(out)
            assert run.files[kind].read_text() == group_file.read_text()
            assert_same_sidecar(sidecar(run.files[kind]), sidecar(group_file))


def test_group_training_is_deterministic_and_resumable(group, dataset, tmp_path, monkeypatch,
                                                        caplog) -> None:
    """A run killed during training, resumed, writes the files of an uninterrupted run."""
    from fmrilm_bids.stages import stage1 as pipeline

    out, result = group
    copy = fresh_derivatives(dataset, tmp_path / "out")
    checkpoints = tmp_path / "work"

    train = pipeline.train_tokenizer

    def killed_halfway(*args, **kwargs):
        train(*args, **kwargs, until_step=15)
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "train_tokenizer", killed_halfway)
    with pytest.raises(KeyboardInterrupt):
        run_group(dataset, copy, work_dir=checkpoints)
    monkeypatch.undo()
    state = json.loads((checkpoints / "tokenizer" / "trainer_state.json").read_text())
    assert state["step"] == 15 and not (copy / "models" / "fmrilm").exists()

    with caplog.at_level(logging.INFO, logger="fmrilm_bids"):
        again = run_group(dataset, copy, work_dir=checkpoints, resume=True)
    assert "at step 15" in caplog.text
    assert again.model.tokenizer_hash == result.model.tokenizer_hash
    for first, second in zip(result.runs, again.runs, strict=True):
        for kind in ("descriptors", "tokens"):
            assert second.files[kind].read_text() == first.files[kind].read_text()
    assert (copy / CORPUS_FILE).read_text() == (out / CORPUS_FILE).read_text()


def test_group_corpus_lists_every_text_in_every_wording(group) -> None:
    out, result = group
    corpus = read_tsv(out / CORPUS_FILE)
    assert list(corpus.columns) == ["run", "sub", "task", "split", "paraphrase", "scope",
                                    "onset", "duration", "text"]
    n_texts = sum(len(r.descriptors.records) for r in result.runs)
    assert len(corpus) == SETTINGS.n_paraphrases * n_texts
    held_out = corpus.loc[corpus["split"] == "test", "sub"].astype(str).str.zfill(2)
    assert set(held_out) == set(result.test_subjects) and set(corpus["split"]) == {
        "train", "test"}
    first = corpus[corpus["paraphrase"] == 0].groupby("run")["text"].apply(list)
    for run in result.runs:
        assert first[run.run.key] == read_tsv(run.files["descriptors"])["text"].tolist()
    meta = sidecar(out / CORPUS_FILE)
    assert meta["NParaphrases"] == 2 and len(meta["Sources"]) == len(result.runs)


def test_stage1_outputs_pass_the_bids_validator(group) -> None:
    out, _ = group
    report = validate_dataset(out)
    assert report.ok, report.describe_errors()


def test_one_participant_trains_without_validation(dataset, tmp_path, caplog) -> None:
    bids, _, work = dataset
    copy = fresh_derivatives(dataset, tmp_path / "out")
    single = Stage1Settings(tokenizer=SETTINGS.tokenizer, training=TrainConfig(
        steps=5, batch_size=4, sequence_windows=8, warmup_steps=1))
    with caplog.at_level(logging.WARNING, logger="fmrilm_bids"):
        result = run_stage1_group(selection_of(bids, work, ["06"]), copy, bids,
                                  copy / "models" / "fmrilm", atlas=ATLAS, settings=single)
    assert "single participant" in caplog.text
    assert result.test_subjects == [] and result.training.metrics == {}
    assert "No validation participant" in (result.model.directory / "README.md").read_text()
    # The default text embedder, named in the model cards.
    assert result.model.info["TextEmbedder"] == MODEL_NAME
    assert MODEL_NAME in (result.model.directory / "README.md").read_text()
    assert MODEL_NAME in (result.model.directory / TOKENIZER_FOLDER / "README.md").read_text()
    # One run is its own reference: nothing is graded.
    assert all(f["z"] is None for f in result.runs[0].descriptors.metadata["facts"])


def test_settings_refuse_descriptor_windows_that_miss_the_patches() -> None:
    from fmrilm_bids.fmrilm.descriptors import DescriptorSettings

    settings = Stage1Settings(tokenizer=SETTINGS.tokenizer,
                              descriptors=DescriptorSettings(window_length=12.0))
    with pytest.raises(ValueError, match="window_length=8"):
        settings.descriptor_settings()
    assert Stage1Settings(tokenizer=SETTINGS.tokenizer).descriptor_settings().window_length == 8


def test_a_folder_that_is_not_a_model_is_refused(tmp_path) -> None:
    from fmrilm_bids.errors import MissingInputError

    with pytest.raises(MissingInputError, match="not an fmrilm-bids model"):
        Stage1Model.load(tmp_path)


def test_a_checkpoint_of_other_inputs_is_not_resumed(tmp_path, caplog) -> None:
    from fmrilm_bids.stages.stage1 import INPUTS_FILE, prepare_checkpoint

    folder = tmp_path / "tokenizer"
    prepare_checkpoint(folder, {"data": "a"}, resume=True)
    (folder / "trainer_state.json").write_text("{}")
    prepare_checkpoint(folder, {"data": "a"}, resume=True)
    assert (folder / "trainer_state.json").is_file()
    with caplog.at_level(logging.WARNING, logger="fmrilm_bids"):
        prepare_checkpoint(folder, {"data": "b"}, resume=True)
    assert "training anew" in caplog.text
    assert sorted(p.name for p in folder.iterdir()) == [INPUTS_FILE]
    (folder / "trainer_state.json").write_text("{}")
    prepare_checkpoint(folder, {"data": "b"}, resume=False)
    assert not (folder / "trainer_state.json").exists()


def test_data_driven_networks_cluster_the_parcels(dataset, tmp_path) -> None:
    """Networks from clustering the cohort's connectivity: named in the model, the
    descriptors and the tokens' parcel identities; applying the model reproduces the files."""
    bids, _, work = dataset
    copy = fresh_derivatives(dataset, tmp_path / "out")
    settings = replace(SETTINGS, networks="data-driven",
                       training=replace(SETTINGS.training, steps=5))
    result = run_stage1_group(selection_of(bids, work), copy, bids, copy / "models" / "fmrilm",
                              atlas=ATLAS, settings=settings,
                              text_embedder=word_piece_embedder,
                              text_embedder_name="MiniLM word pieces", seed=3)
    info = result.model.info
    assert info["NetworkSource"] == "data-driven"
    assert set(info["Networks"]) == {f"cluster {k}" for k in range(1, 8)}
    assert len(info["Networks"]) == len(info["Parcels"])
    texts = " ".join(read_tsv(result.runs[0].files["descriptors"])["text"])
    assert "cluster" in texts and "default mode" not in texts
    written = {kind: path.read_text() for kind, path in result.runs[0].files.items()}
    again = apply_stage1(selection_of(bids, work, [result.runs[0].run.bold.subject]), copy,
                         bids, result.model.directory)
    assert {kind: path.read_text() for kind, path in again[0].files.items()} == written


def test_one_seed_reaches_every_random_choice(dataset, tmp_path) -> None:
    """Two group runs with the same seed write byte-identical descriptors and tokens, with
    every random choice seeded by it: paraphrases, held-out split, Louvain and ICA
    (``FeatureSettings.seed``), data-driven networks, tokenizer training."""
    bids, _, work = dataset
    settings = replace(SETTINGS, networks="data-driven",
                       training=replace(SETTINGS.training, steps=5))
    results = []
    for name in ("first", "second"):
        copy = fresh_derivatives(dataset, tmp_path / name)
        results.append(run_stage1_group(
            selection_of(bids, work), copy, bids, copy / "models" / "fmrilm", atlas=ATLAS,
            settings=settings, text_embedder=word_piece_embedder, seed=11))
    first, second = results
    assert first.model.info["DescriptorSettings"]["features"]["seed"] == 11
    assert first.model.info["Training"]["seed"] == 11 and first.model.seed == 11
    assert first.model.info["Networks"] == second.model.info["Networks"]
    for one, other in zip(first.runs, second.runs, strict=True):
        for kind in ("descriptors", "tokens"):
            assert one.files[kind].read_bytes() == other.files[kind].read_bytes()


def test_data_driven_networks_fit_the_tokenizer_slots() -> None:
    from fmrilm_bids.fmrilm.descriptors import DescriptorSettings

    with pytest.raises(ValueError, match="at most that many"):
        Stage1Settings(tokenizer=SETTINGS.tokenizer, networks="data-driven",
                       descriptors=DescriptorSettings(window_length=WINDOW,
                                                      n_data_driven_networks=12))
    with pytest.raises(ValueError, match="networks must be one of"):
        Stage1Settings(networks="yeo")
