"""fMRI-LM Stages 2 and 3 on a tiny random Llama: vocabulary, data, training, inference, I/O.

The backbone is a 2-layer ``LlamaForCausalLM`` (hidden 64) with a word-level tokenizer built
here from the words the tests use; nothing is downloaded. The synthetic runs have two tokens
per window (two Stage-1 parcel groups), each with continuous features (a Stage-1 latent near
its code's, :data:`CODES`), and make every question learnable from the features alone: group
1 says faces (codes 0-1), places (2-3) or rest (4-7); group 2 says control (8-11) or patient
(12-15).
"""

from __future__ import annotations

import inspect
import itertools
import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from fmrilm_bids.fmrilm.llm import (
    DecodingConfig,
    FmriLM,
    FmriLMConfig,
    LMRun,
    LMTrainConfig,
    apply_fmrilm,
    default_tasks,
    extend_vocabulary,
    fit_fmrilm,
    llm_text_embedder,
    load_backbone,
    participant_task,
    train_fmrilm,
)
from fmrilm_bids.fmrilm.llm.examples import (
    IGNORE_INDEX,
    EpochSampler,
    Example,
    instruction_examples,
    pack,
    stage2_examples,
    text_examples,
)
from fmrilm_bids.fmrilm.llm.inference import (
    CONFIDENT,
    answer_tasks,
    calibrate_tasks,
    class_scores,
    confidence_sentence,
    generate,
    number_answer,
    run_captions,
    score_candidates,
    task_prompts,
    user_message,
    whole_sentences,
)
from fmrilm_bids.fmrilm.llm.metrics import auroc, softmax, words
from fmrilm_bids.fmrilm.llm.model import PROJECTOR_FILE, RIDGE_ALPHAS, FeatureProjector
from fmrilm_bids.fmrilm.llm.pipeline import align_projector, with_inputs
from fmrilm_bids.fmrilm.llm.prompts import RUN_DESCRIBE, WINDOW_DESCRIBE, Formatter, Prompt
from fmrilm_bids.fmrilm.llm.runs import (
    event_windows,
    feature_moments,
    group_connectivity,
    window_events,
)
from fmrilm_bids.fmrilm.llm.tasks import TaskSpec, answer_texts, resolve_tasks, task_items
from fmrilm_bids.fmrilm.llm.train import CHECKPOINT_DIR, STATE_FILE, weighted_loss
from fmrilm_bids.fmrilm.tokenizer import TokenizedRun
from fmrilm_bids.utils.files import publish_directory

CODEBOOK = 16
GROUPS = 2  # tokens per window
LATENT = 4  # width of a token's Stage-1 features
FEATURES = LATENT + GROUPS  # what the model reads at an fMRI position (with the group one-hot)
SUBJECTS = [f"{i:02d}" for i in range(1, 7)]
TRAIN, TEST = SUBJECTS[:4], SUBJECTS[4:]
CAPTIONS = {"faces": "A smiling face.", "places": "A quiet beach at dawn."}
#: What each code stands for, and the Stage-1 latent of each code: the meaning's direction
#: plus an offset of its own (the features of a token lie near its code's latent).
MEANINGS = ["faces"] * 2 + ["places"] * 2 + ["rest"] * 4 + ["control"] * 4 + ["patient"] * 4
DIRECTIONS = {"faces": [2, 0, 0, 0], "places": [-2, 0, 0, 0], "rest": [0, 2, 0, 0],
              "control": [0, 0, 2, 0], "patient": [0, 0, -2, 0]}
CODES = (np.array([DIRECTIONS[m] for m in MEANINGS], dtype=float)
         + 0.3 * np.random.default_rng(7).standard_normal((CODEBOOK, LATENT)))
CONFIG = FmriLMConfig(codebook_size=CODEBOOK, tokens_per_window=GROUPS, feature_dim=FEATURES,
                      lora_r=8, lora_alpha=16, lora_dropout=0.1, window_context=0,
                      run_segment_windows=6, fmri_sequence_windows=6, max_length=96,
                      system_prompt="You read fMRI.",
                      connectivity_inputs=False)  # the runs carry no time courses
DISCRETE = replace(CONFIG, fmri_inputs="discrete", feature_dim=0)
STAGE = LMTrainConfig(steps=40, batch_tokens=256, grad_accum=2, learning_rate=1e-2,
                      min_learning_rate=1e-3, warmup_steps=5, checkpoint_interval=20,
                      progress=False)
STAGE3 = replace(STAGE, steps=400, learning_rate=5e-3, min_learning_rate=5e-4,
                 checkpoint_interval=200)
KINDS = ["answer", "describe", "fmri", "text"]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models: one thread avoids oversubscribing shared CI cores (restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def synthetic_runs(n_windows: int = 12) -> tuple[list[LMRun], pd.DataFrame]:
    """A rest and a picture run per subject (module docstring), and participants.tsv."""
    rng = np.random.default_rng(0)
    runs = []
    for index, subject in enumerate(SUBJECTS):
        patient = index % 2 == 1
        onsets = np.arange(n_windows) * 12.0
        kinds = rng.choice(["faces", "places"], n_windows)
        events = pd.DataFrame({"onset": onsets + 1.0, "duration": 3.0, "trial_type": kinds,
                               "caption": [CAPTIONS[k] for k in kinds]})
        picture = np.where(kinds == "faces", 0, 2) + rng.integers(0, 2, n_windows)
        for task, first in (("images", picture), ("rest", 4 + rng.integers(0, 4, n_windows))):
            tokens = np.stack([first, (12 if patient else 8) + rng.integers(0, 4, n_windows)],
                              axis=1)
            texts = [f"The visual network is above baseline. The participant sees: "
                     f"{CAPTIONS[k]}" for k in kinds] if task == "images" else [
                "The default mode network is " + ("below" if patient else "above")
                + " baseline."] * n_windows
            runs.append(LMRun(
                subject, task, tokens, onsets, 12.0, window_texts=texts,
                run_text=f"This {task} scan shows typical coupling.",
                events=events if task == "images" else None,
                token_features=CODES[tokens] + 0.1 * rng.standard_normal(
                    (n_windows, GROUPS, LATENT)),
                timeseries=rng.standard_normal((n_windows * 6, 5)), tr=2.0))
    participants = pd.DataFrame({"participant_id": [f"sub-{s}" for s in SUBJECTS],
                                 "age": [20 + 5 * i for i in range(len(SUBJECTS))],
                                 "group": ["control", "patient"] * (len(SUBJECTS) // 2)})
    return runs, participants


def tiny_tokenizer(texts: list[str]) -> object:
    """A word-level tokenizer (lower case, punctuation split) knowing ``texts``' words."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocabulary = ["<pad>", "<unk>", "<eos>", *sorted({w for t in texts for w in words(t)})]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocabulary)},
                                         unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(),
                                                     pre_tokenizers.Punctuation()])
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>",
                                   pad_token="<pad>", eos_token="<eos>")


def vocabulary_texts(runs: list[LMRun], participants: pd.DataFrame) -> list[str]:
    """Every text a prompt or target of these tests holds."""
    tasks, _ = resolve_tasks(default_tasks(runs, participants, bins={"age": [32.0]}), runs,
                             participants, CONFIG.window_context, CONFIG.run_segment_windows)
    texts = [CONFIG.system_prompt, "System: User: Assistant:", *WINDOW_DESCRIBE, *RUN_DESCRIBE,
             *CAPTIONS, *CAPTIONS.values(), "rest task 0 1 2 3 4 5 6 7 8 9"]
    texts += [text for run in runs for text in [*run.window_texts, run.run_text]]
    texts += [task.question(i) for task in tasks for i in range(len(task.questions))]
    texts += [q for task in default_tasks(runs, participants) for q in task.questions]
    return texts


def save_backbone(folder: Path, tied: bool = True) -> Path:
    """A random 2-layer Llama and its tokenizer, as a local Hugging Face folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    runs, participants = synthetic_runs()
    tokenizer = tiny_tokenizer(vocabulary_texts(runs, participants))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=tied, initializer_range=0.2, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=None))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def backbones(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("backbones")
    return {"tied": save_backbone(root / "tied"),
            "untied": save_backbone(root / "untied", tied=False)}


@pytest.fixture(scope="module")
def data() -> tuple[list[LMRun], pd.DataFrame]:
    return synthetic_runs()


def build(folder: Path, config: FmriLMConfig = CONFIG,
          token_embeddings: torch.Tensor | None = None,
          projection: tuple[torch.Tensor, torch.Tensor] | None = None) -> FmriLM:
    tokenizer, backbone = load_backbone(folder)
    return FmriLM.build(tokenizer, backbone, config, token_embeddings, str(folder), projection)


def perturb(model: FmriLM, seed: int = 1) -> FmriLM:
    """LoRA updates, new rows and group maps that change the outputs (all start at 0; the
    group maps also fill each segment's summary at its ``</fmri>``)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.trainable_parameters().items():
            if "lora_B" in name or "trainable_tokens_delta" in name or "group_weight" in name:
                parameter.normal_(0.0, 0.3)
    return model


def tensor(features: np.ndarray | None) -> torch.Tensor | None:
    return None if features is None else torch.from_numpy(features)


@pytest.fixture(scope="module")
def trained(backbones, data, tmp_path_factory) -> dict[str, object]:
    """Stage 2 then Stage 3 on the training subjects (group held out of tuning)."""
    runs, participants = data
    train = [run for run in runs if run.subject in TRAIN]
    model = build(backbones["tied"])
    tasks, _ = resolve_tasks([t for t in default_tasks(train, participants) if t.name != "group"],
                             train, participants, CONFIG.window_context,
                             CONFIG.run_segment_windows)
    out = tmp_path_factory.mktemp("trained")
    stage2 = train_fmrilm(model, stage2_examples(model.formatter, train, CONFIG), out / "s2",
                          STAGE)
    examples = instruction_examples(model.formatter, tasks, train, participants, CONFIG)
    stage3 = train_fmrilm(model, examples, out / "s3", STAGE3)
    model.tasks = tasks
    return {"model": model, "stage2": stage2, "stage3": stage3, "train": train,
            "test": [run for run in runs if run.subject in TEST]}


# Backbone and vocabulary --------------------------------------------------------------------

def test_load_backbone_reads_a_local_folder_and_names_a_bad_one(backbones, tmp_path) -> None:
    tokenizer, model = load_backbone(backbones["tied"])
    assert not model.training and model.config.num_hidden_layers == 2
    assert tokenizer.pad_token == "<pad>"
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_backbone(tmp_path)


def test_default_backbone_cache_must_be_writable(read_only_dir) -> None:
    with pytest.raises(OSError, match=f"{read_only_dir}.*FMRILM_MODELS_DIR"):
        load_backbone(cache_dir=read_only_dir)


def test_published_folders_appear_whole(tmp_path) -> None:
    target = publish_directory(tmp_path / "model", lambda d: (d / "a.txt").write_text("1"))
    assert (target / "a.txt").read_text() == "1"
    publish_directory(target, lambda d: (d / "b.txt").write_text("2"))
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]  # replaced, not merged

    def fail(folder: Path) -> None:
        (folder / "c.txt").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        publish_directory(target, fail)
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no staging left


@pytest.mark.parametrize("tied", [True, False])
def test_vocabulary_extension_ids_and_initialisation(backbones, tied: bool) -> None:
    tokenizer, model = load_backbone(backbones["tied" if tied else "untied"])
    base = model.get_input_embeddings().weight.detach().clone()
    base_out = model.get_output_embeddings().weight.detach().clone()
    projection = torch.randn(CODEBOOK, 64) * 7.0
    vocab = extend_vocabulary(tokenizer, model, CODEBOOK, projection)
    assert vocab.first_id == vocab.base_vocab_size == len(base)
    assert (vocab.open_id, vocab.close_id) == (len(base) + CODEBOOK, len(base) + CODEBOOK + 1)
    assert len(tokenizer) == len(base) + CODEBOOK + 2
    segment = vocab.segment_text([3, 0, 15])
    assert tokenizer(segment + " the", add_special_tokens=False)["input_ids"][:5] == \
        vocab.segment_ids([3, 0, 15])
    # Windows of several tokens: in order, window by window, group by group.
    assert vocab.segment_ids(np.array([[3, 0], [15, 1]])) == vocab.segment_ids([3, 0, 15, 1])
    assert tokenizer.decode([*vocab.segment_ids([3]), tokenizer.eos_token_id],
                            skip_special_tokens=True) == ""

    weight = model.get_input_embeddings().weight.detach()
    rows = weight[vocab.first_id:vocab.first_id + CODEBOOK]
    torch.testing.assert_close(torch.cosine_similarity(rows, projection), torch.ones(CODEBOOK))
    torch.testing.assert_close(rows.norm(dim=1).mean(), base.norm(dim=1).mean())
    torch.testing.assert_close(rows.norm(dim=1) / projection.norm(dim=1),
                               torch.full((CODEBOOK,), float(rows.norm(dim=1)[0]
                                                              / projection.norm(dim=1)[0])))
    torch.testing.assert_close(weight[vocab.open_id], base.mean(dim=0))
    assert torch.equal(weight[:len(base)], base)
    output = model.get_output_embeddings().weight.detach()
    if tied:
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    else:
        new = output[vocab.first_id:vocab.first_id + CODEBOOK]
        torch.testing.assert_close(torch.cosine_similarity(new, projection),
                                   torch.ones(CODEBOOK))
        torch.testing.assert_close(new.norm(dim=1).mean(), base_out.norm(dim=1).mean())
        torch.testing.assert_close(output[vocab.close_id], base_out.mean(dim=0))
    # Extending again (a saved tokenizer) reuses the ids.
    assert extend_vocabulary(tokenizer, model, CODEBOOK, projection) == vocab
    with pytest.raises(ValueError, match="llm_hidden=64"):
        extend_vocabulary(tokenizer, model, CODEBOOK, torch.zeros(CODEBOOK, 32))
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        vocab.segment_ids([16])


@pytest.mark.parametrize("tied", [True, False])
def test_only_adapters_new_rows_and_the_projector_train(backbones, data, tmp_path,
                                                        tied: bool) -> None:
    runs, _ = data
    model = build(backbones["tied" if tied else "untied"])
    names = set(model.trainable_parameters())
    assert any("trainable_tokens_delta" in n for n in names)
    assert {"projector.linear.weight", "projector.linear.bias"} <= names
    assert all("lora_" in n or "trainable_tokens_delta" in n or n.startswith("projector.")
               for n in names)
    frozen = {n: p.detach().clone() for n, p in model.model.named_parameters()
              if not p.requires_grad}
    rows = model.model.get_input_embeddings()(torch.tensor(model.vocab.new_ids)).detach()
    projector = model.projector.linear.weight.detach().clone()
    # Steps from the data: 3/4 of an epoch's draws (the text corpus a quarter of its tokens).
    examples = stage2_examples(model.formatter, runs[:2], CONFIG)
    settings = replace(STAGE, steps=None, epochs=0.75, grad_accum=1)
    assert CONFIG.sampling_weights["text"] == 0.25
    lengths: dict[str, list[int]] = {}
    for example in examples:
        lengths.setdefault(example.group, []).append(len(example))
    shares = {group: math.sqrt(len(sizes)) * CONFIG.sampling_weights.get(group, 1.0)
              for group, sizes in lengths.items()}
    # Draws in proportion to share / mean length: an epoch's tokens per draw are sum/sum.
    epoch = len(examples) * sum(shares.values()) / sum(
        shares[group] / np.mean(sizes) for group, sizes in lengths.items())
    expected_steps = math.ceil(0.75 * epoch / settings.batch_tokens)
    sampler = EpochSampler(examples, settings.batch_tokens, np.random.default_rng(0),
                           CONFIG.sampling_weights)
    assert sampler.steps_for(0.75, 1) == expected_steps >= 3
    result = train_fmrilm(model, examples, tmp_path, settings)
    assert result.steps == len(result.history) == expected_steps
    for name, parameter in model.model.named_parameters():
        if name in frozen:
            assert torch.equal(parameter, frozen[name]), name
    after = model.model.get_input_embeddings()(torch.tensor(model.vocab.new_ids)).detach()
    assert not torch.allclose(rows, after)
    assert not torch.allclose(projector, model.projector.linear.weight)  # it reads features
    full = build(backbones["tied"], replace(CONFIG, full_finetune=True))
    assert len(full.trainable_parameters()) == len(list(full.model.parameters())) + 3
    discrete = build(backbones["tied"], DISCRETE)
    assert discrete.projector is None
    assert not any(n.startswith("projector.") for n in discrete.trainable_parameters())


# Data ---------------------------------------------------------------------------------------

def test_runs_hold_groups_of_tokens_and_their_features(backbones, data) -> None:
    runs, _ = data
    run = runs[0]
    assert run.token_ids.shape == (12, GROUPS) and run.tokens_per_window == GROUPS
    assert run.token_features.shape == (12, GROUPS, LATENT)
    segment = run.segment_features(3, 5)  # window 3 group 1, window 3 group 2, window 4 ...
    assert segment.shape == (4, FEATURES) and segment.dtype == np.float32
    for row, (window, group) in enumerate([(3, 0), (3, 1), (4, 0), (4, 1)]):
        np.testing.assert_array_equal(segment[row, :LATENT], run.token_features[window, group])
        np.testing.assert_array_equal(segment[row, LATENT:], np.eye(GROUPS)[group])
    # One token per window: a 1-D array of ids, 2-D features.
    single = LMRun("01", "rest", [1, 2, 3], [0.0, 12.0, 24.0], 12.0,
                   token_features=np.ones((3, 5)))
    assert single.token_ids.shape == (3, 1) and single.token_features.shape == (3, 1, 5)
    np.testing.assert_array_equal(single.segment_features(0, 2), np.ones((2, 6)))
    assert LMRun("01", "rest", [1, 2], [0.0, 12.0], 12.0).segment_features(0, 2) is None
    with pytest.raises(ValueError, match=r"token_features has shape \(2, 3, 4\), tokens "
                                         r"\(2, 2\)"):
        LMRun("01", "rest", [[1, 2], [3, 4]], [0.0, 12.0], 12.0,
              token_features=np.zeros((2, 3, 4)))
    # The projector's standardisation: every token of every run, run by run.
    stacked = np.concatenate([r.segment_features(0, r.n_windows) for r in runs[:3]])
    mean, std = feature_moments(runs[:3])
    np.testing.assert_allclose(mean, stacked.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(std, stacked.std(axis=0), atol=1e-6)
    with pytest.raises(ValueError, match="No run carries Stage-1 features"):
        feature_moments([LMRun("01", "rest", [1, 2], [0.0, 12.0], 12.0)])

    model = build(backbones["tied"])
    formatter = model.formatter
    message = formatter.user_message(run, 3, 5, "Why?")
    assert message["content"] == model.vocab.segment_text(run.token_ids[3:5]) + "\nWhy?"
    np.testing.assert_array_equal(message["fmri"], segment)
    turn = formatter.user_message(runs[1], 0, 1, "Why?")
    prompt = formatter.prompt(formatter.conversation([(turn, "rest")], message))
    assert prompt.ids == formatter.prompt_ids(formatter.conversation([(turn, "rest")], message))
    assert int(model.fmri_positions(torch.tensor(prompt.ids)).sum()) == len(prompt.features)
    np.testing.assert_array_equal(prompt.features, np.concatenate([turn["fmri"], segment]))
    # Equal ids with other features are another input.
    other = Prompt(prompt.ids, prompt.features + 1.0)
    assert other.key() != prompt.key() and Prompt(prompt.ids, prompt.features.copy()).key() \
        == prompt.key()
    assert formatter.prompt([{"role": "user", "content": "hi"}]).features is None
    # The discrete ablation's messages carry no features.
    discrete = build(backbones["tied"], DISCRETE)
    assert "fmri" not in user_message(discrete, run, 3, 5, "Why?")
    np.testing.assert_array_equal(user_message(model, run, 3, 5, "Why?")["fmri"], segment)
    assert all(e.features is None for e in stage2_examples(discrete.formatter, runs[:1],
                                                           DISCRETE))


def test_prompts_mask_everything_but_the_target(backbones, data) -> None:
    runs, _ = data
    model = build(backbones["tied"])
    formatter = model.formatter
    assert not formatter.chat and formatter.stop_id == model.tokenizer.eos_token_id
    examples = stage2_examples(formatter, runs[:2], CONFIG)
    assert {e.group for e in examples} == {"fmri", "describe", "text"}
    paragraph = formatter.answer_ids(runs[0].run_text)
    segments = [e for e in examples if e.kind == "describe"
                and e.input_ids[-len(paragraph):] == paragraph]
    assert len(segments) == 3  # windows 0-6, 3-9 and 6-12
    np.testing.assert_array_equal(segments[1].features, runs[0].segment_features(3, 9))
    # Next-token sequences: segments of at most fmri_sequence_windows windows.
    fmri = [e for e in examples if e.kind == "fmri"][:3]
    for example, (start, stop) in zip(fmri, [(0, 6), (3, 9), (6, 12)], strict=True):
        assert example.input_ids == model.vocab.segment_ids(runs[0].token_ids[start:stop])
        assert example.labels == example.input_ids and len(example) == 2 + 6 * GROUPS
        np.testing.assert_array_equal(example.features, runs[0].segment_features(start, stop))
    describe = next(e for e in examples if e.group == "describe")
    target = formatter.answer_ids(runs[0].window_texts[0])
    assert describe.input_ids[-len(target):] == target and target[-1] == formatter.stop_id
    assert describe.labels == [IGNORE_INDEX] * (len(describe) - len(target)) + target
    np.testing.assert_array_equal(describe.features, runs[0].segment_features(0, 1))
    text = next(e for e in examples if e.kind == "text")
    assert text.labels == text.input_ids and text.features is None
    prompt = formatter.prompt_text([formatter.user_message(runs[0], 0, 2, "Why?")])
    assert prompt.startswith("System: You read fMRI.\nUser: <fmri><fmri_")
    assert prompt.endswith("</fmri>\nWhy?\nAssistant:")
    assert prompt.count("<fmri_") == 2 * GROUPS
    assert FmriLMConfig().system_prompt == "You describe fMRI scans."

    # A chat template: the prompt ends where the assistant speaks; the stop token ends it.
    model.tokenizer.chat_template = (
        "{% for m in messages %}<eos>{{ m['role'] }}: {{ m['content'] }}<pad>{% endfor %}"
        "{% if add_generation_prompt %}<eos>assistant:{% endif %}")
    chat = Formatter(model.tokenizer, model.vocab, "You read fMRI.")
    assert chat.chat and chat.answer_prefix == " "  # the template's "role: content"
    assert chat.stop_id == model.tokenizer.pad_token_id
    assert chat.prompt_text([{"role": "user", "content": "hi"}]) == \
        "<eos>system: You read fMRI.<pad><eos>user: hi<pad><eos>assistant:"
    assert chat.answer_ids("rest") == [*chat.encode("rest"), model.tokenizer.pad_token_id]
    # The features never reach the template.
    shown = chat.prompt([chat.user_message(runs[0], 0, 1, "Why?")])
    assert shown.ids == chat.encode(
        "<eos>system: You read fMRI.<pad><eos>user: "
        f"{model.vocab.segment_text(runs[0].token_ids[:1])}\nWhy?<pad><eos>assistant:")
    np.testing.assert_array_equal(shown.features, runs[0].segment_features(0, 1))


def test_tasks_come_from_events_and_participants(data) -> None:
    runs, participants = data
    tasks = {t.name: t for t in default_tasks(runs, participants)}
    assert list(tasks) == ["condition", "stimulus", "rest_vs_task", "age", "group"]
    assert tasks["age"].kind == "number" and tasks["group"].kind == "class"
    assert default_tasks(runs, participants, bins={"age": [30, 40]})[3].kind == "class"
    images = runs[0]
    assert event_windows(images).tolist() == list(range(12))  # response mid 7.5 s in
    events = window_events(images)
    assert events[3]["trial_type"] == images.events["trial_type"].iloc[3]
    late = LMRun("01", "images", [0, 1], [0.0, 12.0], 12.0,
                 events=pd.DataFrame({"onset": [1.0, 3.0, 30.0], "duration": [2.0, 2.0, 2.0],
                                      "trial_type": ["a", "b", "c"]}))
    # Responses at 7 s and 9 s fall in window 0 (centre 6 s): the nearer one labels it.
    assert event_windows(late).tolist() == [0, 0, -1]
    assert window_events(late)[0]["trial_type"] == "a" and 1 not in window_events(late)
    resolved, skipped = resolve_tasks(list(tasks.values()), runs, participants, 1, 6)
    by_name = {t.name: t for t in resolved}
    assert by_name["condition"].classes == ("faces", "places")
    assert by_name["rest_vs_task"].question(0).endswith("Answer with one of: rest, task.")
    windows = task_items(by_name["condition"], runs[:1], None, 1, 6)
    assert [(i.start, i.stop) for i in windows[:3]] == [(0, 1), (0, 2), (1, 3)]
    assert [i.answer for i in windows] == images.events["trial_type"].tolist()
    items = task_items(by_name["group"], runs, participants, 1, 6)
    assert len(items) == len(runs) * 3 and {i.answer for i in items} == {"control", "patient"}
    assert by_name["age"].classes == () and not skipped
    # A number answer is taken within the training answers' range widened by half of it.
    ages = sorted(float(i.answer) for i in task_items(by_name["age"], runs, participants, 1, 6))
    assert by_name["age"].bounds == (ages[0], ages[-1]) and ages[0] < ages[-1]
    margin = (ages[-1] - ages[0]) / 2
    assert by_name["age"].plausible(ages[0] - margin) == ages[0] - margin
    assert np.isnan(by_name["age"].plausible(ages[-1] + margin + 1))
    assert np.isnan(number_answer(by_name["age"], "About 150 years."))  # not an answer
    assert number_answer(by_name["age"], f"About {ages[1]} years.") == ages[1]
    assert number_answer(by_name["group"], "35") == 35.0  # no bounds: as written
    binned = participant_task("age", bins=[30, 40])
    assert [binned.bin_label(v) for v in (25, 30, 35, 45)] == [
        "under 30", "30 to 40", "30 to 40", "40 or more"]
    assert resolve_tasks([binned], runs, participants, 1, 6)[0][0].classes == (
        "under 30", "30 to 40", "40 or more")
    one_class = participants.assign(group="control")
    assert resolve_tasks([by_name["group"]], runs, one_class, 1, 6) == ([], ["group"])


def test_model_inputs_are_set_from_the_runs(data) -> None:
    runs, _ = data
    blank = FmriLMConfig(codebook_size=CODEBOOK)
    assert (blank.tokens_per_window, blank.feature_dim) == (1, 0)
    assert with_inputs(blank, runs) == replace(blank, tokens_per_window=GROUPS,
                                               feature_dim=FEATURES, connectivity_inputs=False)
    coupled, _ = coupling_runs()  # with time courses: a connectivity row per token
    assert with_inputs(blank, coupled) == replace(blank, tokens_per_window=GROUPS,
                                                  feature_dim=2 + 6 + 2 * GROUPS)
    without = [replace(run, token_features=None) for run in runs]
    discrete = with_inputs(replace(blank, fmri_inputs="discrete"), without)
    assert (discrete.tokens_per_window, discrete.feature_dim) == (GROUPS, 0)
    with pytest.raises(ValueError, match=r"no Stage-1 features.*fmri_inputs='discrete'"):
        with_inputs(blank, without)
    with pytest.raises(ValueError, match=r"differ in tokens.*\(2, 6\), \(2, None\)"):
        with_inputs(blank, [runs[0], without[1]])
    narrow = LMRun("09", "rest", np.zeros(3, dtype=int), [0.0, 12.0, 24.0], 12.0,
                   token_features=np.zeros((3, LATENT)))
    with pytest.raises(ValueError, match=r"differ in tokens per window.*\(1, 5\), \(2, 6\)"):
        with_inputs(blank, [*runs, narrow])
    wider = replace(runs[0], token_features=np.zeros((12, GROUPS, LATENT + 1)))
    with pytest.raises(ValueError, match="differ in tokens per window or feature width"):
        with_inputs(blank, [*runs, wider])
    with pytest.raises(ValueError, match="one of continuous, discrete"):
        FmriLMConfig(fmri_inputs="both")


# Model inputs -------------------------------------------------------------------------------

def test_continuous_inputs_replace_the_fmri_rows_with_projected_features(backbones,
                                                                          data) -> None:
    runs, _ = data
    model = perturb(build(backbones["tied"]))
    vocab, pad = model.vocab, model.tokenizer.pad_token_id
    text = model.formatter.encode("A smiling face.")
    rows = [vocab.segment_ids(runs[0].token_ids[:1]) + text,
            text + vocab.segment_ids(runs[1].token_ids[2:4]) + text]
    width = max(len(row) for row in rows)
    ids = torch.tensor([row + [pad] * (width - len(row)) for row in rows])
    mask = (torch.arange(width) < torch.tensor([[len(row)] for row in rows])).long()
    features = torch.from_numpy(np.concatenate([runs[0].segment_features(0, 1),
                                                runs[1].segment_features(2, 4)]))
    positions = model.fmri_positions(ids)
    assert positions.sum(dim=1).tolist() == [GROUPS, 2 * GROUPS]
    with torch.no_grad():
        embedded = model.embed(ids, features)
        rows_of_ids = model.model.get_input_embeddings()(ids)
        # The fMRI positions, row by row, read the projected features in order ...
        torch.testing.assert_close(embedded[positions], model.projector(features))
        # ... and only they: text, <fmri> and padding keep their embedding rows (</fmri>
        # adds the segment's summary, tested below).
        kept = ~positions & (ids != vocab.close_id)
        assert torch.equal(embedded[kept], rows_of_ids[kept])
        assert not torch.allclose(embedded[positions], rows_of_ids[positions])
        # The model reads them: other features change what follows them, not what precedes.
        before = model.hidden_states(ids, mask, features=features)
        after = model.hidden_states(ids, mask, features=features + 1.0)
    first = len(text) + 1  # row 1's first fMRI token (after its text and "<fmri>")
    assert positions[1, first] and not positions[1, :first].any()
    torch.testing.assert_close(before[1, :first], after[1, :first])
    assert (before[1, first:len(rows[1])] - after[1, first:len(rows[1])]).abs().amax(
        dim=-1).min() > 1e-3
    for wrong in (None, features[:-1], torch.cat([features, features[:1]])):
        with pytest.raises(ValueError, match=f"{3 * GROUPS} fMRI tokens but"):
            model.embed(ids, wrong)
    plain = torch.tensor([text])  # text alone needs no features
    assert torch.equal(model.embed(plain), model.model.get_input_embeddings()(plain))

    # The discrete ablation reads the tokens' own rows (and has no projector).
    discrete = build(backbones["tied"], DISCRETE)
    assert discrete.projector is None
    with torch.no_grad():
        rows_of_ids = discrete.model.get_input_embeddings()(ids)
        assert torch.equal(discrete.embed(ids), rows_of_ids)
        assert torch.equal(discrete.embed(ids, features), rows_of_ids)
    with pytest.raises(ValueError, match="needs feature_dim"):
        build(backbones["tied"], replace(CONFIG, feature_dim=0))


def test_each_segment_closes_with_the_mean_of_its_group_terms(backbones, data) -> None:
    """The segment summary: ``</fmri>`` holds its row plus the mean group term of its own
    segment's tokens (two segments in one packed row, one in another); nothing else
    changes, and the ablation keeps the delimiter's row."""
    runs, _ = data
    vocab = build(backbones["tied"]).vocab
    text = build(backbones["tied"]).formatter.encode("A smiling face.")
    segments = [(runs[0], 0, 1), (runs[1], 2, 4), (runs[2], 5, 6)]
    pieces = [vocab.segment_ids(run.token_ids[a:b]) for run, a, b in segments]
    rows = [pieces[0] + text + pieces[1], [vocab.close_id] + text + pieces[2]]
    ids = torch.tensor([rows[0], rows[1] + [0] * (len(rows[0]) - len(rows[1]))])
    parts = [torch.from_numpy(run.segment_features(a, b)) for run, a, b in segments]
    features = torch.cat(parts)
    closing = [(0, len(pieces[0]) - 1, 0), (0, len(rows[0]) - 1, 1),
               (1, len(rows[1]) - 1, 2)]
    generator = torch.Generator().manual_seed(11)
    embedded = {}
    for summary in (True, False):
        model = build(backbones["tied"], replace(CONFIG, segment_summary=summary))
        with torch.no_grad():
            model.projector.group_weight.normal_(generator=generator)
            embedded[summary] = model.embed(ids, features)
            rows_of_ids = model.model.get_input_embeddings()(ids)
            others = torch.ones_like(ids, dtype=torch.bool)
            for row, column, segment in closing:
                extra = model.projector.group_terms(parts[segment]).mean(dim=0) if summary \
                    else 0.0
                torch.testing.assert_close(embedded[summary][row, column],
                                           rows_of_ids[row, column] + extra)
                others[row, column] = False
            positions = model.fmri_positions(ids)
            torch.testing.assert_close(embedded[summary][positions], model.projector(features))
            # A </fmri> before its row's first <fmri> (read in an earlier call) gets
            # nothing.
            assert torch.equal(embedded[summary][others & ~positions],
                               rows_of_ids[others & ~positions])
    assert not torch.allclose(embedded[True], embedded[False])


def test_the_projector_starts_as_the_stage1_projection(backbones) -> None:
    """The first code_dim columns: Stage 1's to_llm, scaled as the token embeddings are."""
    tokenizer, backbone = load_backbone(backbones["tied"])
    base = backbone.get_input_embeddings().weight.detach().clone()
    generator = torch.Generator().manual_seed(3)
    token_embeddings = 5.0 * torch.randn(CODEBOOK, 64, generator=generator)
    weight = torch.randn(64, LATENT, generator=generator)
    bias = torch.randn(64, generator=generator)
    model = FmriLM.build(tokenizer, backbone, CONFIG, token_embeddings,
                         str(backbones["tied"]), (weight, bias))
    scale = float(base.norm(dim=1).mean() / token_embeddings.norm(dim=1).mean())
    assert scale < 0.1  # the Stage-1 vectors are far longer than the backbone's rows
    projector = model.projector.linear
    torch.testing.assert_close(projector.weight[:, :LATENT], weight * scale)
    assert torch.equal(projector.weight[:, LATENT:], torch.zeros(64, GROUPS))  # group one-hot
    torch.testing.assert_close(projector.bias, bias * scale)
    with torch.no_grad():  # the same scale as the fMRI tokens' rows
        rows = model.model.get_input_embeddings()(torch.tensor(model.vocab.new_ids[:CODEBOOK]))
    torch.testing.assert_close(rows, token_embeddings * scale)
    # Without Stage-1 token embeddings there is nothing to scale to.
    unscaled = build(backbones["tied"], projection=(weight, bias))
    assert torch.equal(unscaled.projector.linear.weight[:, :LATENT], weight)
    assert torch.equal(unscaled.projector.linear.bias, bias)
    # Standardised features: the same map of the raw latents at the start.
    mean = torch.randn(FEATURES, generator=generator).numpy()
    std = (0.1 + torch.rand(FEATURES, generator=generator)).numpy()
    std[-1] = 0.0  # a constant feature (a group one-hot column in a one-group model)
    tokenizer, backbone = load_backbone(backbones["tied"])
    standardised = FmriLM.build(tokenizer, backbone, CONFIG, token_embeddings,
                                str(backbones["tied"]), (weight, bias), (mean, std))
    assert standardised.projector.std[-1] == 1.0
    features = torch.randn(5, FEATURES, generator=generator)
    with torch.no_grad():
        torch.testing.assert_close(standardised.projector(features),
                                   model.projector(features), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(standardised.projector.linear(torch.zeros(FEATURES)),
                                   model.projector(torch.from_numpy(mean)))
    with pytest.raises(ValueError, match=rf"reads {FEATURES} features; got means of shape "
                                         rf"\({FEATURES - 1},\)"):
        standardised.projector.standardise(mean[:-1], std[:-1])
    for shape in ((32, LATENT), (64, FEATURES + 1)):
        with pytest.raises(ValueError, match=rf"Stage-1 projection is \({shape[0]}, "
                                             rf"{shape[1]}\).*reads {FEATURES} features"):
            build(backbones["tied"], projection=(torch.zeros(shape), torch.zeros(shape[0])))


def test_each_group_has_a_map_of_its_own(backbones) -> None:
    model = build(backbones["tied"])
    projector = model.projector
    assert projector.groups == GROUPS and projector.group_weight.shape == (GROUPS, LATENT, 64)
    assert torch.equal(projector.group_weight, torch.zeros(GROUPS, LATENT, 64))  # starts at 0
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        projector.group_weight.normal_(generator=generator)
        projector.standardise(torch.randn(FEATURES, generator=generator).numpy(),
                              (0.5 + torch.rand(FEATURES, generator=generator)).numpy())
        latents = torch.randn(2 * GROUPS, LATENT, generator=generator)
        features = torch.cat([latents, torch.eye(GROUPS).repeat(2, 1)], dim=1)
        standard = (features - projector.mean) / projector.std
        expected = torch.stack([projector.linear(standard[i]) + standard[i, :LATENT]
                                @ projector.group_weight[i % GROUPS] for i in range(len(features))])
        torch.testing.assert_close(projector(features), expected)
        # The same latent read in another group's slot gives another vector.
        swapped = torch.cat([latents, torch.eye(GROUPS).flip(0).repeat(2, 1)], dim=1)
        assert not torch.allclose(projector.group_terms(swapped), projector.group_terms(features))
    shared = build(backbones["tied"], replace(CONFIG, group_projection=False))
    assert shared.projector.group_weight is None
    assert not any("group_weight" in name for name in shared.trainable_parameters())
    with pytest.raises(ValueError, match="has group maps to align"):
        shared.align_projector([np.zeros((GROUPS, FEATURES))] * 2, ["a", "b"])
    with pytest.raises(ValueError, match="cannot have 6 groups"):
        FeatureProjector(FEATURES, 64, groups=FEATURES)


def test_aligned_group_maps_read_what_held_out_windows_showed(backbones, data) -> None:
    """The ridge start: a window's tokens, averaged through their group maps, land nearest
    to the LLM's embedding of the answers about that window, for held-out subjects."""
    runs, participants = data
    model = build(backbones["tied"])
    train = [run for run in runs if run.subject in TRAIN]
    model.projector.standardise(*feature_moments(train))
    tasks, _ = resolve_tasks(default_tasks(train, participants), train, participants,
                             CONFIG.window_context, CONFIG.run_segment_windows)
    texts = answer_texts(tasks, runs, participants, CONFIG.window_context,
                         CONFIG.run_segment_windows)
    picture = runs.index(next(run for run in runs if run.task == "images"))
    shown = {key[1]: text for key, text in texts.items()
             if key[0] == picture and key[2] == key[1] + 1}
    assert sorted(shown) == sorted(window_events(runs[picture]))
    assert set(shown.values()) == {f"{kind}; {caption}" for kind, caption in CAPTIONS.items()}
    # A run segment: rest or task, then the participant's answers (sub-01: 20, control).
    assert texts[(picture, 0, 6)] == "task; 20; control"
    assert texts[(picture + 1, 6, 12)] == "rest; 20; control"
    assert align_projector(model, [], train, participants) is None
    assert torch.equal(model.projector.group_weight, torch.zeros_like(
        model.projector.group_weight))
    alpha = align_projector(model, tasks, train, participants)
    assert alpha in RIDGE_ALPHAS
    references = model.text_embeddings([f"{kind}; {caption}" for kind, caption in
                                        CAPTIONS.items()])
    correct = total = 0
    with torch.no_grad():
        for (index, start, stop), text in texts.items():
            run = runs[index]
            if run.subject in TRAIN or stop != start + 1:
                continue
            read = model.projector.group_terms(torch.from_numpy(
                run.segment_features(start, stop))).mean(dim=0)
            similarity = F.cosine_similarity(read[None], references - references.mean(0))
            correct += int(list(CAPTIONS)[int(similarity.argmax())] == text.split(";")[0])
            total += 1
    assert total >= 10 and correct / total >= 0.9
    with pytest.raises(ValueError, match="one text per segment"):
        model.align_projector(np.zeros((3, GROUPS, FEATURES)), ["a", "b"])
    with pytest.raises(ValueError, match=rf"shape \(n_tokens, {FEATURES}\); got \(3,\)"):
        model.align_projector(np.zeros((2, 3)), ["a", "b"])


def coupling_runs(subjects: int = 12, n_windows: int = 12, samples: int = 6,
                  ) -> tuple[list[LMRun], pd.DataFrame]:
    """Resting runs of two groups whose tokens differ only in how the groups' signals move
    together: a control's group 2 follows group 1 (r about 0.9), a patient's does not; the
    latents and each signal's own scale are alike."""
    rng = np.random.default_rng(3)
    runs = []
    for index in range(subjects):
        first = rng.standard_normal((n_windows, samples))
        own = rng.standard_normal((n_windows, samples))
        second = 0.9 * first + 0.45 * own if index % 2 == 0 else own
        latents = rng.standard_normal((n_windows, 2, 2))
        features = np.concatenate([latents, np.stack([first, second], axis=1)], axis=-1)
        runs.append(LMRun(f"{index + 1:02d}", "rest", rng.integers(0, CODEBOOK, (n_windows, 2)),
                          np.arange(n_windows) * 12.0, 12.0, token_features=features,
                          timecourse_length=samples))
    participants = pd.DataFrame({"participant_id": [f"sub-{i + 1:02d}" for i in range(subjects)],
                                 "group": ["control", "patient"] * (subjects // 2)})
    return runs, participants


def test_connectivity_rows_are_the_groups_correlations_over_the_segment() -> None:
    runs, _ = coupling_runs()
    run = runs[0]
    segment = run.segment_features(2, 6, connectivity=True)
    width = 2 + 6 + GROUPS + GROUPS  # latent, time course, connectivity row, one-hot
    assert segment.shape == (4 * GROUPS, width) and segment.dtype == np.float32
    series = run.token_features[2:6, :, -6:].transpose(1, 0, 2).reshape(GROUPS, -1)
    correlation = np.corrcoef(series)
    np.fill_diagonal(correlation, 0.0)
    expected = np.arctanh(correlation)
    for row in range(len(segment)):
        group = row % GROUPS
        np.testing.assert_array_equal(segment[row, :8], run.token_features[2 + row // GROUPS,
                                                                           group])
        np.testing.assert_allclose(segment[row, 8:10], expected[group], rtol=1e-5)
        np.testing.assert_array_equal(segment[row, 10:], np.eye(GROUPS)[group])
    assert expected[0, 1] > 1.0  # a control's groups move together
    np.testing.assert_array_equal(run.segment_features(2, 6), np.delete(segment, [8, 9], 1))
    # A constant signal and one window (6 samples) are read without error.
    flat = np.zeros((1, 3, 6))
    flat[0, 1] = np.arange(6)
    flat[0, 2] = -np.arange(6)
    np.testing.assert_allclose(group_connectivity(flat), [[0, 0, 0], [0, 0, np.arctanh(-0.999)],
                                                          [0, np.arctanh(-0.999), 0]], rtol=1e-5)
    # Without time courses there are no rows to add.
    plain = LMRun("01", "rest", [[1, 2]], [0.0], 12.0, token_features=np.ones((1, 2, 4)))
    assert plain.segment_features(0, 1, connectivity=True).shape == (2, 4 + GROUPS)
    with pytest.raises(ValueError, match="timecourse_length is 5, but tokens carry 4 features"):
        LMRun("01", "rest", [[1, 2]], [0.0], 12.0, token_features=np.ones((1, 2, 4)),
              timecourse_length=5)
    tokenized = TokenizedRun(np.zeros((12, GROUPS), dtype=np.int64), run.onsets, 12.0,
                             run.token_features, timecourse_length=6)
    assert LMRun.from_tokenized(tokenized, "01", "rest").timecourse_length == 6
    # The standardisation reads the connectivity rows of consecutive segments.
    stacked = np.concatenate([r.segment_features(start, start + 4, True) for r in runs[:3]
                              for start in (0, 4, 8)])
    mean, std = feature_moments(runs[:3], connectivity=True, segment_windows=4)
    np.testing.assert_allclose(mean, stacked.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(std, stacked.std(axis=0), atol=1e-5)


def test_connectivity_rows_let_the_maps_read_a_coupling_difference(backbones) -> None:
    """Patients and controls differ only in how two groups' signals move together: with
    the connectivity rows, the aligned group maps read held-out subjects' run segments
    nearest to their own group's answer; from the tokens' own features they cannot."""
    runs, participants = coupling_runs()
    train = [run for run in runs if int(run.subject) <= 8]
    accuracy = {}
    for connectivity in (True, False):
        config = replace(CONFIG, connectivity_inputs=connectivity,
                         feature_dim=runs[0].segment_features(0, 1, connectivity).shape[1])
        model = build(backbones["tied"], config)
        assert model.formatter.connectivity == connectivity
        model.projector.standardise(*feature_moments(train, connectivity,
                                                     config.run_segment_windows))
        tasks, _ = resolve_tasks([participant_task("group")], train, participants,
                                 config.window_context, config.run_segment_windows)
        align_projector(model, tasks, train, participants)
        references = model.text_embeddings(["control", "patient"])
        answers = answer_texts(tasks, runs, participants, config.window_context,
                               config.run_segment_windows)
        correct = total = 0
        with torch.no_grad():
            for (index, start, stop), answer in answers.items():
                if int(runs[index].subject) <= 8:
                    continue
                message = model.formatter.user_message(runs[index], start, stop, "?")
                read = model.projector.group_terms(torch.from_numpy(message["fmri"])).mean(0)
                similarity = F.cosine_similarity(read[None], references - references.mean(0))
                correct += int(["control", "patient"][int(similarity.argmax())] == answer)
                total += 1
        accuracy[connectivity] = correct / total
    assert total == 12
    assert accuracy[True] >= 0.9 and accuracy[False] < 0.75, accuracy



def test_the_connectivity_map_reads_run_segments_and_only_them(backbones, tmp_path) -> None:
    """``connectivity_summary``: the summary at the closing ``</fmri>`` of a run segment is
    a map of its groups' connectivity, aligned to the answers about run segments (held-out
    subjects read nearest to their own group); a window's stays its mean group term; the
    map trains, saves and loads with the projector, and the ablation has none."""
    runs, participants = coupling_runs()
    train = [run for run in runs if int(run.subject) <= 8]
    config = with_inputs(replace(CONFIG, connectivity_inputs=True), runs)
    assert config.connectivity_inputs and config.connectivity_summary
    model = build(backbones["tied"], config)
    projector = model.projector
    assert projector.pair_weight.shape == (1, 64)  # two groups: one pair
    assert "projector.pair_weight" in model.trainable_parameters()
    assert not projector.pair_weight.any()  # zero at the start
    projector.standardise(*feature_moments(train, True, config.run_segment_windows))
    tasks, _ = resolve_tasks([participant_task("group")], train, participants,
                             config.window_context, config.run_segment_windows)
    align_projector(model, tasks, train, participants)
    assert projector.pair_weight.abs().sum() > 0
    correlations = [group_connectivity(run.token_features[start:start + 6, :, -6:])[0, 1]
                    for run in train for start in (0, 3, 6)]  # half overlap
    torch.testing.assert_close(projector.pair_mean, torch.tensor([np.mean(correlations)]))
    torch.testing.assert_close(projector.pair_std, torch.tensor([np.std(correlations)]))
    references = model.text_embeddings(["control", "patient"])
    correct = total = 0
    with torch.no_grad():
        for run in runs[8:]:
            for start in (0, 3, 6):
                window = torch.from_numpy(run.segment_features(start, start + 6, True)[:GROUPS])
                read = projector.pair_terms(window)
                similarity = F.cosine_similarity(read[None], references - references.mean(0))
                answer = "control" if int(run.subject) % 2 else "patient"
                correct += int(["control", "patient"][int(similarity.argmax())] == answer)
                total += 1
    assert total == 12 and correct >= 11
    # At the closing </fmri>: a run segment gets the map, a window its mean group term.
    run, vocab = runs[9], model.vocab
    pieces = [vocab.segment_ids(run.token_ids[0:6]), vocab.segment_ids(run.token_ids[6:7])]
    ids = torch.tensor([pieces[0] + model.formatter.encode("A face.") + pieces[1]])
    parts = [torch.from_numpy(run.segment_features(a, b, True)) for a, b in ((0, 6), (6, 7))]
    with torch.no_grad():
        embedded = model.embed(ids, torch.cat(parts))
        rows = model.model.get_input_embeddings()(ids)
        closing = [len(pieces[0]) - 1, ids.shape[1] - 1]
        torch.testing.assert_close(embedded[0, closing[0]], rows[0, closing[0]]
                                   + projector.pair_terms(parts[0][:GROUPS]))
        torch.testing.assert_close(embedded[0, closing[1]], rows[0, closing[1]]
                                   + projector.group_terms(parts[1]).mean(dim=0))
    loaded = FmriLM.from_pretrained(model.save_pretrained(tmp_path / "model"))
    with torch.no_grad():
        assert torch.equal(loaded.embed(ids, torch.cat(parts)), embedded)
    ablation = build(backbones["tied"], replace(config, connectivity_summary=False))
    assert ablation.projector.pair_weight is None
    assert ablation.projector.pair_mean is None
    assert not any(name.startswith("pair") for name in ablation.projector.state_dict())
    with pytest.raises(ValueError, match="cannot have 2 groups and their connectivity"):
        FeatureProjector(2 * GROUPS - 1, 64, groups=GROUPS, pairs=True)

# Packing and sampling -----------------------------------------------------------------------

def packed_losses(examples: list[Example], packed: dict[str, torch.Tensor],
                  nll: torch.Tensor, keep: torch.Tensor, pad_id: int
                  ) -> tuple[list[np.ndarray], list[list[int]]]:
    """The packed loss of each example (in the order of ``examples``) and the examples of
    each row; checks that each example lies whole in one row, its positions from 0 and its
    first label ignored."""
    losses = torch.full(keep.shape, float("nan"))
    losses[keep] = nll
    found: list[np.ndarray | None] = [None] * len(examples)
    rows = []
    for row, (ids, positions) in enumerate(zip(packed["input_ids"], packed["position_ids"],
                                               strict=True)):
        starts = [*(positions == 0).nonzero()[:, 0].tolist(), len(ids)]
        rows.append([])
        for start, end in itertools.pairwise(starts):
            assert torch.equal(positions[start:end], torch.arange(end - start))
            index = next((i for i, example in enumerate(examples) if found[i] is None
                          and example.input_ids == ids[start:end].tolist()), None)
            if index is None:  # the padding that ends the row
                assert end == len(ids) and (ids[start:] == pad_id).all()
                assert not keep[row, start - 1:].any()
                assert (packed["kind_ids"][row, start:] == -1).all()
                continue
            assert start == 0 or not keep[row, start - 1]  # nothing before it predicts it
            assert (packed["kind_ids"][row, start:end] == KINDS.index(examples[index].kind)).all()
            found[index] = losses[row, start:end - 1][keep[row, start:end - 1]].numpy()
            rows[-1].append(index)
    assert all(loss is not None for loss in found)
    return found, rows


def test_packed_rows_give_the_loss_of_each_example_alone(backbones, data) -> None:
    runs, participants = data
    model = perturb(build(backbones["tied"]))
    pad = model.tokenizer.pad_token_id
    tasks, _ = resolve_tasks(default_tasks(runs[:4], participants), runs[:4], participants,
                             CONFIG.window_context, CONFIG.run_segment_windows)
    pool = (stage2_examples(model.formatter, runs[:2], CONFIG)
            + instruction_examples(model.formatter, tasks, runs[:4], participants, CONFIG))
    groups: dict[str, list[Example]] = {}
    for example in pool:
        groups.setdefault(example.group, []).append(example)
    examples = [e for group in groups.values() for e in group[:2]] + groups["describe"][-1:]
    examples += text_examples(model.formatter, [" ".join(runs[0].window_texts)], CONFIG)
    assert {e.kind for e in examples} == set(KINDS)
    row_length = 48
    assert [len(e) > row_length for e in examples].count(True) == 1  # a row of its own
    assert any(e.labels[0] != IGNORE_INDEX for e in examples)  # fmri and text examples
    packed = pack(examples, pad, row_length, KINDS)
    n_fmri = int(model.fmri_positions(packed["input_ids"]).sum())
    assert packed["features"].shape == (n_fmri, FEATURES)
    assert n_fmri == sum(len(e.features) for e in examples if e.features is not None)
    with torch.no_grad():
        nll, keep = model(packed["input_ids"], packed["labels"], packed["position_ids"],
                          features=packed["features"])
        alone = [model(torch.tensor([e.input_ids]), torch.tensor([e.labels]),
                       features=tensor(e.features))[0].numpy() for e in examples]
    found, rows = packed_losses(examples, packed, nll, keep, pad)
    for example, packed_loss, own in zip(examples, found, alone, strict=True):
        assert len(packed_loss) == len(own) == sum(
            label != IGNORE_INDEX for label in example.labels[1:])
        np.testing.assert_allclose(packed_loss, own, rtol=1e-5, atol=1e-5)
    # First fit, longest first: rows of at most row_length tokens (or one longer example),
    # each opened by an example that fitted in no earlier row.
    lengths = [[len(examples[i]) for i in members] for members in rows]
    assert all(len(row) == 1 or sum(row) <= row_length for row in lengths)
    assert all(row == sorted(row, reverse=True) for row in lengths)
    for later, row in enumerate(lengths):
        assert all(sum(earlier) + row[0] > row_length for earlier in lengths[:later])
    assert sum(len(row) > 1 for row in lengths) >= 4
    # The weighted loss: each kind's token mean, weighted.
    loss, parts = weighted_loss(nll, packed["kind_ids"][:, 1:][keep], KINDS,
                                CONFIG.loss_weights)
    means = {kind: np.concatenate([own for e, own in zip(examples, alone, strict=True)
                                   if e.kind == kind]).mean() for kind in KINDS}
    assert parts == pytest.approx(means, rel=1e-5)
    weights = CONFIG.loss_weights
    assert float(loss) == pytest.approx(sum(weights[k] * means[k] for k in KINDS)
                                        / sum(weights[k] for k in KINDS), rel=1e-5)
    assert pack(groups["text"], pad, row_length, KINDS)["features"] is None


def test_epoch_sampler_gives_groups_tokens_by_the_square_root_of_their_size() -> None:
    sizes = {"one": 1, "four": 4, "sixteen": 16}
    examples = [Example(list(range(length)), list(range(length)), "answer", group)
                for group, n in sizes.items()
                for length in ([100] if n == 1 else range(5, 5 + n))]
    mean_length = {"one": 100.0, "four": 6.5, "sixteen": 12.5}

    def token_shares(sampler: EpochSampler, draws: int) -> dict[str, float]:
        batches = sampler.batches()
        stream = [next(batches) for _ in range(draws)]
        assert all(len(batch) == 1 for batch in stream)  # one example a batch
        tokens = {group: sum(len(b[0]) for b in stream if b[0].group == group)
                  for group in sizes}
        return {group: count / sum(tokens.values()) for group, count in tokens.items()}

    # One example a batch (the first always goes in): the groups' shares of the tokens,
    # so the single 100-token example is drawn far less often than the short ones.
    sampler = EpochSampler(examples, 1, np.random.default_rng(0))
    assert token_shares(sampler, 20000) == pytest.approx(
        {"one": 1 / 7, "four": 2 / 7, "sixteen": 4 / 7}, abs=0.02)
    draws = {group: 2 ** i / mean_length[group] for i, group in enumerate(sizes)}
    assert sampler.weights == pytest.approx(
        [draws[name] / sum(draws.values()) for name in sampler.names])
    # Within a group, every example once before any repeats; a new order each time.
    batches = EpochSampler(examples, 1, np.random.default_rng(0)).batches()
    drawn = [next(batches)[0] for _ in range(7000)]
    sixteen = [id(e) for e in drawn if e.group == "sixteen"]
    members = {id(e) for e in examples if e.group == "sixteen"}
    passes = [sixteen[i:i + 16] for i in range(0, len(sixteen) - 15, 16)]
    assert len(passes) > 100 and all(set(p) == members for p in passes)
    assert len({tuple(p) for p in passes}) == len(passes)

    # A group's weight multiplies its share.
    weighted = EpochSampler(examples, 1, np.random.default_rng(2), {"sixteen": 0.25})
    assert token_shares(weighted, 20000) == pytest.approx(
        {"one": 1 / 4, "four": 1 / 2, "sixteen": 1 / 4}, abs=0.02)

    # An epoch: as many draws as there are examples, each group's at its mean length.
    sampler = EpochSampler(examples, 40, np.random.default_rng(1))
    per_draw = 7 / sum(2 ** i / mean_length[group] for i, group in enumerate(sizes))
    assert sampler.tokens == pytest.approx(21 * per_draw) == pytest.approx(230.5, abs=0.1)
    assert sampler.steps_for(2.0, 3) == math.ceil(2 * 230.5 / (40 * 3)) == 4
    assert sampler.steps_for(1e-6, 1) == 1
    # Batches of at most batch_tokens, unless one example alone is longer.
    batches = sampler.batches()
    stream = [next(batches) for _ in range(300)]
    sizes_of = [sum(len(e) for e in batch) for batch in stream]
    assert all(size <= 40 or len(batch) == 1 for size, batch in zip(sizes_of, stream,
                                                                      strict=True))
    assert any(len(batch) == 1 and size == 100 for size, batch in zip(sizes_of, stream,
                                                                       strict=True))
    assert np.mean([len(batch) for batch in stream]) > 2
    # The queues and the generator are the whole state: restored, the same batches follow.
    queues = {name: list(queue) for name, queue in sampler.queues.items()}
    state = sampler.rng.bit_generator.state
    following = [[id(e) for e in next(batches)] for _ in range(50)]
    restored = EpochSampler(examples, 40, np.random.default_rng(99))
    restored.rng.bit_generator.state = state
    restored.queues = queues
    batches = restored.batches()
    assert [[id(e) for e in next(batches)] for _ in range(50)] == following


# Training -----------------------------------------------------------------------------------

def test_stage2_and_stage3_losses_decrease(trained) -> None:
    for stage, kinds, config in (("stage2", ("fmri", "describe", "text"), STAGE),
                                 ("stage3", ("answer",), STAGE3)):
        history = trained[stage].history
        assert len(history) == config.steps
        for kind in kinds:
            values = [entry[kind] for entry in history if kind in entry]
            assert np.mean(values[-5:]) < 0.6 * np.mean(values[:5]), (stage, kind)
        # Linear warm-up to the peak (at most a tenth of the steps), cosine to the floor.
        warmup = min(config.warmup_steps, config.steps // 10)
        assert warmup == (4 if stage == "stage2" else 5)
        assert history[warmup - 1]["lr"] == config.learning_rate
        assert history[warmup - 2]["lr"] < config.learning_rate
        assert history[-1]["lr"] == pytest.approx(config.min_learning_rate, rel=0.05)
        # Steps of grad_accum micro-batches of about batch_tokens tokens.
        tokens = np.diff([0] + [entry["tokens"] for entry in history])
        per_step = config.batch_tokens * config.grad_accum
        assert tokens.max() <= per_step and tokens.mean() > 0.8 * per_step
    with pytest.raises(ValueError, match="number of steps"):
        LMTrainConfig().learning_rate_at(0)


def test_resumed_training_matches_uninterrupted_training(backbones, data, tmp_path) -> None:
    runs, _ = data
    settings = replace(STAGE, steps=6, checkpoint_interval=3, grad_accum=2, batch_tokens=128)

    def run(folder: Path, **kwargs: object) -> tuple[FmriLM, object]:
        model = build(backbones["tied"])
        examples = stage2_examples(model.formatter, runs[:4], CONFIG)
        return model, train_fmrilm(model, examples, folder, settings, **kwargs)

    straight, straight_result = run(tmp_path / "straight")
    run(tmp_path / "split", until_step=4)  # checkpoints at 3 and 4 ("killed" after 4)
    state = json.loads((tmp_path / "split" / CHECKPOINT_DIR / STATE_FILE).read_text())
    assert state["step"] == 4
    assert set(state["sampler"]) == {"describe", "fmri", "text"}  # where each group stands
    resumed, resumed_result = run(tmp_path / "split", resume=True)
    for name, value in straight.trainable_parameters().items():
        assert torch.equal(value, resumed.trainable_parameters()[name]), name
    assert straight_result.history == resumed_result.history  # losses, tokens seen, ...
    fresh, _ = run(tmp_path / "fresh", until_step=2)
    assert not all(torch.equal(v, fresh.trainable_parameters()[k])
                   for k, v in straight.trainable_parameters().items())


def test_gradient_checkpointing_gives_the_same_training(backbones, data, tmp_path) -> None:
    runs, _ = data
    trained = []
    for checkpointing in (False, True):
        model = build(backbones["tied"])
        settings = replace(STAGE, steps=3, gradient_checkpointing=checkpointing)
        train_fmrilm(model, stage2_examples(model.formatter, runs[:2], CONFIG),
                     tmp_path / str(checkpointing), settings)
        assert model.model.get_decoder().gradient_checkpointing == checkpointing
        trained.append(model.trainable_parameters())
    assert "projector.linear.weight" in trained[0]
    for name, value in trained[0].items():
        torch.testing.assert_close(value, trained[1][name], rtol=1e-4, atol=1e-6)


# Inference ----------------------------------------------------------------------------------

def test_constrained_answers_are_sequence_log_probs_and_give_auroc(trained) -> None:
    model, test = trained["model"], trained["test"]
    task = next(t for t in model.tasks if t.name == "condition")
    items = task_items(task, test, None, CONFIG.window_context, CONFIG.run_segment_windows)
    prompts = [task_prompts(model, task, test[i.run_index], [(i.start, i.stop)])[0]
               for i in items]
    assert all(p.features.shape == (GROUPS, FEATURES) for p in prompts)
    log_probs = score_candidates(model, prompts, task.classes, batch_size=5)
    # Against a direct computation from the full logits of one prompt + answer.
    answer = model.formatter.answer_ids(task.classes[1])
    ids = torch.tensor([prompts[0].ids + answer])
    with torch.no_grad():
        logits = model.logits(ids, torch.ones_like(ids), tensor(prompts[0].features))
    logits = logits[0].log_softmax(-1)
    manual = sum(float(logits[len(prompts[0]) - 1 + j, token]) for j, token in
                 enumerate(answer))
    assert log_probs[0, 1] == pytest.approx(manual, abs=1e-4)
    probabilities = softmax(log_probs)
    truth = [item.answer for item in items]
    positive = [t == task.classes[1] for t in truth]
    assert auroc(truth, probabilities, task.classes) == pytest.approx(
        roc_auc_score(positive, probabilities[:, 1]))
    accuracy = np.mean([task.classes[k] == t for k, t in zip(probabilities.argmax(1), truth,
                                                             strict=True)])
    assert accuracy >= 0.9  # the features tell the condition (chance: 0.5)
    assert probabilities.min() > 0.0 and probabilities.max() < 1.0


def full_forward_scores(model: FmriLM, prompts: list[Prompt],
                        candidates: list[str]) -> np.ndarray:
    """Each answer's log-probability from a forward pass of its own over prompt + answer."""
    scores = np.zeros((len(prompts), len(candidates)))
    for row, prompt in enumerate(prompts):
        for column, candidate in enumerate(candidates):
            answer = model.formatter.answer_ids(candidate)
            ids = torch.tensor([prompt.ids + answer])
            with torch.no_grad():
                logits = model.logits(ids, torch.ones_like(ids), tensor(prompt.features))
            logits = logits[0, len(prompt) - 1:-1]
            scores[row, column] = float(logits.log_softmax(-1)[range(len(answer)), answer].sum())
    return scores


def shared_inputs(model: FmriLM, prompts: list[Prompt]) -> int:
    """Tokens all ``prompts`` begin with, ids and fMRI features alike (one left to each),
    not ending inside a segment (then: up to its ``<fmri>``)."""
    seen, opened = 0, None
    for position in range(min(len(p) for p in prompts) - 1):
        token = prompts[0].ids[position]
        if len({p.ids[position] for p in prompts}) > 1:
            return position if opened is None else opened
        if prompts[0].features is not None and model.fmri_positions(torch.tensor(token)):
            if any(not np.array_equal(p.features[seen], prompts[0].features[seen])
                   for p in prompts):
                return position if opened is None else opened
            seen += 1
        opened = position if token == model.vocab.open_id else (
            None if token == model.vocab.close_id else opened)
    return min(len(p) for p in prompts) - 1 if opened is None else opened


@pytest.mark.parametrize("kind", ["tied", "untied", "full", "discrete"])
def test_cached_constrained_answers_equal_full_forward_passes(backbones, data,
                                                              kind: str) -> None:
    """Prompts read once, answers from their cache: the scores of a pass per pair."""
    runs, _ = data
    config = {"full": replace(CONFIG, full_finetune=True), "discrete": DISCRETE}.get(kind,
                                                                                    CONFIG)
    model = perturb(build(backbones["untied" if kind == "untied" else "tied"], config))
    formatter, question = model.formatter, WINDOW_DESCRIBE[0]
    turns = [(user_message(model, runs[1], 0, 3, question), "faces"),
             (user_message(model, runs[2], 2, 4, question), "a quiet beach at dawn.")]
    prompts = [formatter.prompt(formatter.conversation(
        turns if few_shot else (), user_message(model, runs[index], 0, stop, question)))
        for few_shot in (False, True)
        for index, stop in ((0, 1), (3, 1), (4, 2), (5, 6), (2, 2), (1, 2))]
    assert all((p.features is None) == (kind == "discrete") for p in prompts)
    prompts.append(prompts[1])  # read once
    if kind != "discrete":  # the same ids, other features: scored apart
        prompts.append(Prompt(prompts[2].ids, prompts[2].features + 0.5))
    candidates = ["faces", "rest", "a quiet beach at dawn.", ""]
    assert [len(formatter.answer_ids(c)) for c in candidates] == [2, 2, 7, 1]
    assert len({len(prompt) for prompt in prompts}) == 6
    expected = full_forward_scores(model, prompts, candidates)
    assert kind == "discrete" or np.abs(expected[2] - expected[-1]).max() > 1e-3
    for batch_size in (1, 8, 64):  # prompts a pass: one, two, all of one length
        np.testing.assert_allclose(score_candidates(model, prompts, candidates, batch_size),
                                   expected, rtol=1e-5, atol=1e-4)
        # Few-shot prompts alone share their turns too (a long prefix read once).
        np.testing.assert_allclose(score_candidates(model, prompts[6:12], candidates,
                                                    batch_size), expected[6:12],
                                   rtol=1e-5, atol=1e-4)
    with model.merged():
        np.testing.assert_allclose(score_candidates(model, prompts, candidates), expected,
                                   rtol=1e-5, atol=1e-4)
    # What is read: the few-shot turns once, then each prompt's own tokens and the answers.
    few_shot = prompts[6:12]
    shared = shared_inputs(model, few_shot)
    turn_tokens = len(formatter.prompt_ids(formatter.conversation(turns, {
        "role": "user", "content": ""})))
    assert shared >= turn_tokens - 3  # up to the query's segment
    read: list[int] = []
    hook = model.model.get_input_embeddings().register_forward_hook(
        lambda module, inputs, output: read.append(inputs[0].numel()))
    try:
        score_candidates(model, few_shot, candidates, 64)
    finally:
        hook.remove()
    answers = sum(len(formatter.answer_ids(c)) - 1 for c in candidates)
    assert sum(read) == shared + sum(len(p) - shared + answers for p in few_shot)
    # Packed pairs through FmriLM.__call__ (the loss path) agree too.
    pairs = [Example(prompt.ids + formatter.answer_ids(c),
                     [IGNORE_INDEX] * len(prompt) + formatter.answer_ids(c), "answer", "",
                     prompt.features)
             for prompt in prompts for c in candidates]
    packed = pack(pairs, model.tokenizer.pad_token_id, 256, KINDS)
    with torch.no_grad():
        nll, keep = model(packed["input_ids"], packed["labels"], packed["position_ids"],
                          features=packed["features"])
    losses, _ = packed_losses(pairs, packed, nll, keep, model.tokenizer.pad_token_id)
    np.testing.assert_allclose(-np.array([loss.sum() for loss in losses]).reshape(
        expected.shape), expected, rtol=1e-5, atol=1e-4)
    # No token in common (nothing read once for all), one-token prompts.
    raw = [Prompt([5, *prompts[0].ids], prompts[0].features), Prompt([6, 7]), Prompt([8])]
    np.testing.assert_allclose(score_candidates(model, raw, candidates, 4),
                               full_forward_scores(model, raw, candidates), rtol=1e-5,
                               atol=1e-4)


def test_prompts_with_equal_ids_and_other_features_are_scored_apart(trained) -> None:
    """Two windows with the same codes, one showing faces and one places: the answers follow
    the features (a cache keyed by ids alone would give both the first one's)."""
    model, test = trained["model"], trained["test"]
    task = next(t for t in model.tasks if t.name == "condition")
    run = test[0]
    faces = [w for w in range(run.n_windows) if run.events["trial_type"].iloc[w] == "faces"]
    places = [w for w in range(run.n_windows) if run.events["trial_type"].iloc[w] == "places"]
    prompts = task_prompts(model, task, run, [(faces[0], faces[0] + 1),
                                              (places[0], places[0] + 1)])
    lookalike = Prompt(prompts[0].ids, prompts[1].features)  # faces' codes, places' features
    assert lookalike.key() != prompts[0].key()
    log_probs = score_candidates(model, [prompts[0], lookalike, prompts[0]], task.classes)
    np.testing.assert_allclose(log_probs[:2], full_forward_scores(
        model, [prompts[0], lookalike], list(task.classes)), rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(log_probs[0], log_probs[2])
    answers = [task.classes[i] for i in log_probs.argmax(axis=1)]
    assert answers == ["faces", "places", "faces"]


def greedy(model: FmriLM, prompt: Prompt, max_new: int, min_new: int) -> str:
    """Greedy decoding by full forward passes (the stop token barred for ``min_new``)."""
    ids = list(prompt.ids)
    with torch.no_grad():
        for step in range(max_new):
            tokens = torch.tensor([ids])
            logits = model.logits(tokens, torch.ones_like(tokens), tensor(prompt.features))
            logits = logits[0, -1]
            if step < min_new:
                logits[model.formatter.stop_id] = -float("inf")
            token = int(logits.argmax())
            if token == model.formatter.stop_id:
                break
            ids.append(token)
    return model.tokenizer.decode(ids[len(prompt):], skip_special_tokens=True).strip()


def test_generation_is_greedy_and_batch_independent(backbones, trained) -> None:
    model, test = trained["model"], trained["test"]
    task = next(t for t in model.tasks if t.name == "stimulus")
    decoding = DecodingConfig(max_new_tokens=8, batch_size=3)
    assert decoding.min_new_tokens == 3
    # Left-padded batches of prompts with their features: the texts of each prompt alone.
    # An untrained model's texts follow every input (features in the wrong place show).
    untrained = perturb(build(backbones["tied"]))
    for lm in (untrained, model):
        prompts = task_prompts(lm, task, test[0], [(0, 1), (1, 2), (2, 5)])
        assert len(prompts[2]) == len(prompts[0]) + 2 * GROUPS
        batched = generate(lm, prompts, decoding)
        assert batched == [generate(lm, [p], decoding)[0] for p in prompts]
    # Greedy: the argmax of full forward passes.
    assert batched == [greedy(model, p, 8, 3) for p in prompts]
    truth = test[0].events["caption"].iloc[1]  # the caption of window 1
    assert words(batched[1]) == words(truth)  # learnt from the features
    # A one-word answer: min_new_tokens holds the stop back.
    condition = next(t for t in model.tasks if t.name == "condition")
    short = task_prompts(model, condition, test[0], [(1, 2)])[0]
    one = generate(model, [short], DecodingConfig(max_new_tokens=6, min_new_tokens=1))[0]
    assert one == test[0].events["trial_type"].iloc[1]
    held = generate(model, [short], DecodingConfig(max_new_tokens=6))[0]
    assert held == greedy(model, short, 6, 3) and held.startswith(one) and held != one
    # The one-word answer leaves the batch at its stop token; the others run on unchanged.
    mixed = generate(model, [short, *prompts], DecodingConfig(max_new_tokens=8,
                                                              min_new_tokens=1))
    assert mixed == [one, *(greedy(model, p, 8, 1) for p in prompts)]
    # A repetition penalty (below 1, a bonus) weighs the answer's tokens as generate() does.
    penalised = DecodingConfig(max_new_tokens=8, repetition_penalty=0.05)
    with torch.inference_mode():
        reference = model.model.generate(
            inputs_embeds=model.embed(torch.tensor([prompts[1].ids]),
                                      torch.from_numpy(prompts[1].features)),
            attention_mask=torch.ones((1, len(prompts[1])), dtype=torch.long),
            max_new_tokens=8, min_new_tokens=3, do_sample=False, repetition_penalty=0.05,
            eos_token_id=model.formatter.stop_id, pad_token_id=model.tokenizer.pad_token_id,
            temperature=None, top_p=None, top_k=None)[0]
    text = generate(model, prompts[1:2], penalised)[0]
    assert text == model.tokenizer.decode(reference, skip_special_tokens=True).strip()
    assert text != batched[1]  # the penalty changed the answer


def test_captions_end_with_a_finished_sentence() -> None:
    cut = ("Activity rises in the visual network. Network signals are tightly coupled (r=0.06). "
           "The default mode network is below baseline and the")
    assert whole_sentences(cut) == ("Activity rises in the visual network. Network signals "
                                    "are tightly coupled (r=0.06).")
    assert whole_sentences("Is it a face? Yes! And") == "Is it a face? Yes!"
    # No finished sentence: kept whole (a caption is never emptied); decimals are no end.
    assert whole_sentences("faces") == "faces"
    assert whole_sentences("coupled (r=0.06") == "coupled (r=0.06"


def test_captions_say_how_sure_the_model_is(trained) -> None:
    assert CONFIDENT == 0.5
    assert confidence_sentence(np.array([0.8, 0.2]), ["faces", "places"]) == \
        "Most likely faces (p = 0.80)."
    assert confidence_sentence(np.array([0.25, 0.5, 0.25]), ["a", "b", "c"]) == \
        "Most likely b (p = 0.50)."
    assert confidence_sentence(np.array([0.3, 0.45, 0.25]), ["faces", "places", "houses"]) \
        == "Unsure what was shown: perhaps places (p = 0.45) or faces (p = 0.30)."

    model, test = trained["model"], trained["test"]
    images, rest = test[:2]
    late = pd.DataFrame({"onset": [images.onsets[-1] + 8.0], "duration": [3.0],
                         "trial_type": ["faces"], "caption": [CAPTIONS["faces"]]})
    images = replace(images, events=pd.concat([images.events, late], ignore_index=True))
    assert event_windows(images)[-1] == -1  # its response falls after the run
    classes = ["faces", "places", "houses"]
    probabilities = np.array([[0.9, 0.05, 0.05] if w % 3 else [0.3, 0.45, 0.25]
                              for w in range(12)])
    condition = pd.DataFrame({"onset": images.onsets, "duration": images.durations,
                              "answer": [classes[i] for i in probabilities.argmax(1)]}
                             | {f"p_{c}": probabilities[:, i] for i, c in enumerate(classes)})
    decoding = DecodingConfig(max_new_tokens=8)
    windows, events = run_captions(model, images, decoding, condition)
    described, _ = run_captions(model, images, decoding)
    assert len(windows) == 12 and len(events) == 12  # the late event left out
    assert events["onset"].tolist() == images.events["onset"].iloc[:12].tolist()
    for window, (caption, plain) in enumerate(zip(windows["caption"], described["caption"],
                                                  strict=True)):
        sentence = confidence_sentence(probabilities[window], classes)
        assert plain and caption == f"{plain} {sentence}"
        assert sentence.startswith("Unsure" if window % 3 == 0 else "Most likely")
    for window, caption in enumerate(events["caption"]):
        assert caption.endswith("(uncertain)") == (window % 3 == 0)
        assert words(caption.removesuffix(" (uncertain)")) == words(
            images.events["caption"].iloc[window])
    # A run without events: its captions alone, no confidence, no events.
    rest_windows, rest_events = run_captions(model, rest, decoding, condition)
    assert rest_events is None and all(rest_windows["caption"])
    assert not rest_windows["caption"].str.contains("likely|Unsure").any()


def test_calibration_evens_out_the_classes_over_training_prompts(trained, data) -> None:
    model, train, test = trained["model"], trained["train"], trained["test"]
    participants = data[1]
    tasks = calibrate_tasks(model, model.tasks, train, participants, n_prompts=10**6)
    assert all(bool(t.calibration) == (t.kind == "class") for t in tasks)
    condition = next(t for t in tasks if t.name == "condition")
    assert len(condition.calibration) == len(condition.classes)
    items = task_items(condition, train, participants, CONFIG.window_context,
                       CONFIG.run_segment_windows)
    prompts = [task_prompts(model, condition, train[i.run_index], [(i.start, i.stop)])[0]
               for i in items]

    def mean_log_softmax(scores: np.ndarray) -> np.ndarray:
        return (scores - np.logaddexp.reduce(scores, axis=1, keepdims=True)).mean(axis=0)

    # Uncalibrated, the classes differ in mean log-probability; calibrated, over the prompts
    # it was fitted on, they have the same (to float32 rounding: a prompt's score moves by
    # about 1e-6 with the prompts it is batched with).
    raw = score_candidates(model, prompts, condition.classes)
    assert np.ptp(mean_log_softmax(raw)) > 1e-3
    assert np.ptp(mean_log_softmax(class_scores(model, condition, prompts))) < 1e-5
    np.testing.assert_allclose(mean_log_softmax(raw), condition.calibration, atol=1e-5)
    # The favoured class is the one marked down.
    assert np.argmax(condition.calibration) == np.argmax(mean_log_softmax(raw))
    # It travels with the model folder's task list, and the app's answers use it.
    assert TaskSpec.from_dict(json.loads(json.dumps(condition.to_dict()))) == condition
    tuned = model.tasks
    try:
        model.tasks = [replace(condition, calibration=(0.0, 50.0))]  # against "places"
        answers = answer_tasks(model, test[0])["condition"]
    finally:
        model.tasks = tuned
    assert set(answers["answer"]) == {condition.classes[0]}


@pytest.mark.parametrize("kind", ["tied", "untied", "full", "discrete"])
def test_save_load_round_trip_gives_the_same_logits(backbones, data, tmp_path,
                                                    kind: str) -> None:
    runs, participants = data
    config = {"full": replace(CONFIG, full_finetune=True), "discrete": DISCRETE}.get(kind,
                                                                                    CONFIG)
    generator = torch.Generator().manual_seed(0)
    model = build(backbones["untied" if kind == "untied" else "tied"], config,
                  torch.randn(CODEBOOK, 64, generator=generator),
                  (torch.randn(64, LATENT, generator=generator), torch.zeros(64)))
    train_fmrilm(model, stage2_examples(model.formatter, runs[:2], config), tmp_path / "t",
                 replace(STAGE, steps=3))
    model.tasks = resolve_tasks(default_tasks(runs, participants), runs, participants, 1, 6)[0]
    model.card = {"data": {"runs": 2}}
    saved = model.save_pretrained(tmp_path / "model")
    loaded = FmriLM.from_pretrained(saved)
    ids = torch.tensor([[*model.vocab.segment_ids(runs[0].token_ids), 5, 6, 7]])
    features = None if kind == "discrete" else torch.from_numpy(
        runs[0].segment_features(0, runs[0].n_windows))
    with torch.no_grad():
        logits = model.logits(ids, torch.ones_like(ids), features)
        assert torch.equal(logits, loaded.logits(ids, torch.ones_like(ids), features))
    assert loaded.vocab == model.vocab and loaded.tasks == model.tasks
    assert loaded.config == model.config
    weights = {"model.safetensors", "config.json"} if kind == "full" else {
        "adapter_model.safetensors", "adapter_config.json"}
    files = {p.name for p in saved.iterdir()}
    assert weights | {"fmrilm.json", "tokenizer.json", "README.md"} <= files
    assert (PROJECTOR_FILE in files) == (kind != "discrete")
    if kind == "discrete":
        assert loaded.projector is None
    else:
        for name, value in model.projector.state_dict().items():  # standardisation too
            assert torch.equal(loaded.projector.state_dict()[name], value), name
    card = (saved / "README.md").read_text()
    assert "| runs | 2 |" in card and "| transformers |" in card and "condition" in card
    assert f"{GROUPS} per window" in card
    assert ("own embedding" in card) == (kind == "discrete")
    assert not list(tmp_path.glob(".model*"))  # no staging folder left behind
    if kind in ("tied", "untied"):
        with pytest.raises(ValueError, match="pass the backbone"):
            FmriLM.from_pretrained(saved, llm_dir=_other_width_backbone(tmp_path))
    if kind == "tied":  # a model saved before the group maps: the shared map only
        old = replace(config, group_projection=False)
        shared = build(backbones["tied"], old)
        folder = shared.save_pretrained(tmp_path / "old")
        metadata = json.loads((folder / "fmrilm.json").read_text())
        del metadata["config"]["group_projection"]
        (folder / "fmrilm.json").write_text(json.dumps(metadata))
        loaded = FmriLM.from_pretrained(folder)
        assert loaded.config == old and loaded.projector.group_weight is None


def _other_width_backbone(tmp_path: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path / "other"
    tokenizer, _ = load_backbone(save_backbone(tmp_path / "base"))
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32,
                                 intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_llm_text_embedder_pools_the_backbone(backbones) -> None:
    texts = ["The visual network is above baseline.", "A smiling face."]
    hidden = llm_text_embedder(backbones["tied"])(texts)
    inputs = llm_text_embedder(backbones["tied"], pooling="input")(texts)
    assert hidden.shape == inputs.shape == (2, 64) and hidden.dtype == np.float32
    tokenizer, model = load_backbone(backbones["tied"])
    ids = tokenizer(texts[1:], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = model.get_input_embeddings()(ids)[0].mean(dim=0).numpy()
    np.testing.assert_allclose(inputs[1], expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(hidden, inputs)
    with pytest.raises(ValueError, match="pooling"):
        llm_text_embedder(backbones["tied"], pooling="max")


def test_input_pooling_keeps_only_the_embedding_matrix(backbones) -> None:
    # Stage 1's embedder lives through Stages 2-3: with input pooling it must not hold a
    # second copy of the whole backbone (hundreds of MB for SmolLM2).
    embed = llm_text_embedder(backbones["tied"], pooling="input")
    held = [cell.cell_contents for cell in inspect.unwrap(embed).__closure__]
    modules = [value for value in held if isinstance(value, torch.nn.Module)]
    assert [type(module) for module in modules] == [torch.nn.Embedding]


# Entry points -------------------------------------------------------------------------------

def test_fit_and_apply_end_to_end(backbones, data, tmp_path) -> None:
    runs, participants = data
    quick = replace(STAGE, steps=40)
    blank = replace(CONFIG, tokens_per_window=1, feature_dim=0)  # set from the runs
    result = fit_fmrilm(runs, participants, tmp_path / "fmrilm", blank, quick, STAGE3,
                        llm_dir=backbones["tied"], held_out_tasks=["group"], test_subjects=TEST,
                        few_shot_k=1, decoding=DecodingConfig(max_new_tokens=10))
    assert result.model.config == CONFIG
    assert result.train_subjects == TRAIN and result.test_subjects == TEST
    moments = feature_moments([run for run in runs if run.subject in TRAIN])
    for name, value in zip(("mean", "std"), moments, strict=True):
        torch.testing.assert_close(getattr(result.model.projector, name),
                                   torch.from_numpy(value))
    metrics = json.loads((tmp_path / "fmrilm" / "metrics.json").read_text())
    assert metrics["test_subjects"] == TEST
    tasks = metrics["tasks"]
    assert tasks["group"]["setting"] == "zero-shot" and "few_shot" in tasks["group"]
    assert next(t for t in result.model.tasks if t.name == "condition").calibration
    assert tasks["condition"]["setting"] == "tuned"
    for name in ("condition", "rest_vs_task", "group"):
        assert {"fmrilm", "baseline_fc", "baseline_tokens"} <= set(tasks[name]), name
    assert tasks["condition"]["fmrilm"]["accuracy"] >= 0.9
    # The amplitude baseline for window questions, chance, intervals over held-out subjects.
    assert {"baseline_amplitude", "chance"} <= set(tasks["condition"])
    assert "baseline_amplitude" not in tasks["rest_vs_task"]
    fmrilm = tasks["condition"]["fmrilm"]
    assert fmrilm["accuracy_ci_low"] <= fmrilm["accuracy"] <= fmrilm["accuracy_ci_high"]
    assert fmrilm["p_vs_chance"] < 0.05
    assert tasks["condition"]["baseline_tokens"]["accuracy"] >= 0.75
    stimulus = tasks["stimulus"]["fmrilm"]
    assert set(stimulus) == {"minilm_cosine", "bleu", "rouge_l", "n", "minilm_cosine_ci_low",
                             "minilm_cosine_ci_high", "shuffled_cosine", "p_vs_shuffled"}
    # The captions follow their windows: closer to their own truth than to the others'.
    assert stimulus["minilm_cosine"] > stimulus["shuffled_cosine"]
    assert stimulus["p_vs_shuffled"] < 0.05
    assert "mae" in tasks["age"]["fmrilm"] and "chance_mae" in tasks["age"]
    assert set(result.throughput) == {"stage2", "stage3"}

    test_runs = [run for run in runs if run.subject in TEST]
    outputs = apply_fmrilm(result.model_dir, test_runs, DecodingConfig(max_new_tokens=10))
    images = outputs[test_runs[0].key]
    assert list(images.window_captions.columns) == ["onset", "duration", "caption"]
    assert len(images.window_captions) == 12
    assert list(images.event_captions.columns) == ["onset", "duration", "trial_type",
                                                   "caption"]
    assert images.patch_embeddings.shape == (12, 64) and images.run_embedding.shape == (64,)
    np.testing.assert_allclose(images.run_embedding, images.patch_embeddings.mean(axis=0),
                               rtol=1e-5)
    # A patch: the mean last hidden state of its window's tokens, the run read at once.
    run = test_runs[0]
    ids = torch.tensor([result.model.vocab.segment_ids(run.token_ids)])
    with torch.no_grad():
        hidden = result.model.hidden_states(ids, torch.ones_like(ids), features=torch.from_numpy(
            run.segment_features(0, run.n_windows)))[0, 1:-1]
    np.testing.assert_allclose(images.patch_embeddings,
                               hidden.reshape(12, GROUPS, -1).mean(dim=1).numpy(), rtol=1e-3,
                               atol=1e-4)
    condition = images.answers["condition"]
    assert len(condition) == 12 and {"p_faces", "p_places"} <= set(condition.columns)
    np.testing.assert_allclose(condition[["p_faces", "p_places"]].sum(axis=1), 1.0)
    # The window captions end with what the model thinks was shown.
    for caption, row in zip(images.window_captions["caption"],
                            condition[["p_faces", "p_places"]].to_numpy(), strict=True):
        assert caption.endswith(" " + confidence_sentence(row, ["faces", "places"]))
    assert (condition["answer"] == test_runs[0].events["trial_type"]).mean() >= 0.9
    assert len(images.answers["rest_vs_task"]) == 1 and "group" not in images.answers
    assert outputs[test_runs[1].key].event_captions is None
    assert images.settings["decoding"]["max_new_tokens"] == 10
    # The same answers from the model in memory.
    direct = answer_tasks(result.model, test_runs[0])["condition"]
    np.testing.assert_allclose(direct["p_faces"], condition["p_faces"], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="Held-out tasks"):
        fit_fmrilm(runs, participants, tmp_path / "x", CONFIG, quick, quick,
                   llm_dir=backbones["tied"], held_out_tasks=["handedness"])


DATA_PARALLEL_SCRIPT = """
import json, os, sys, torch
from dataclasses import replace
from safetensors.torch import save_file
sys.path.insert(0, {tests!r})
from test_llm_model import CONFIG, STAGE, build, synthetic_runs
from fmrilm_bids.fmrilm.llm import train_fmrilm
from fmrilm_bids.fmrilm.llm.examples import stage2_examples
torch.set_num_threads(1)
runs, _ = synthetic_runs()
model = build({backbone!r})
config = replace(STAGE, steps=4, batch_tokens=64)
result = train_fmrilm(model, stage2_examples(model.formatter, runs[:2], CONFIG), {out!r},
                      config)
rank = os.environ["RANK"]
save_file({{k: v.detach().contiguous() for k, v in model.trainable_parameters().items()}},
          os.path.join({out!r}, f"rank{{rank}}.safetensors"))
with open(os.path.join({out!r}, f"rank{{rank}}.json"), "w") as f:
    json.dump([h["loss"] for h in result.history], f)
"""


def test_data_parallel_training_keeps_processes_in_step(backbones, tmp_path) -> None:
    """Two processes under torchrun (gloo on the CPU): same weights, different batches."""
    from safetensors.torch import load_file

    script = tmp_path / "train.py"
    script.write_text(DATA_PARALLEL_SCRIPT.format(tests=str(Path(__file__).parent),
                                                  backbone=str(backbones["tied"]),
                                                  out=str(tmp_path)))
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node=2", str(script)], check=True, timeout=300,
                   env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True)
    weights = [load_file(tmp_path / f"rank{rank}.safetensors") for rank in (0, 1)]
    single = build(backbones["tied"])
    assert set(weights[0]) == set(single.trainable_parameters())
    assert "projector.linear.weight" in weights[0]
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]), name  # in step after every update
    assert not all(torch.equal(v, single.trainable_parameters()[k].detach())
                   for k, v in weights[0].items())  # and they did train
    losses = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert losses[0] != losses[1]  # each process saw its own share of the batch
    assert (tmp_path / CHECKPOINT_DIR / STATE_FILE).is_file()
