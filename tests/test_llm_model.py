"""fMRI-LM Stages 2 and 3 on a tiny random Llama: vocabulary, data, training, inference, I/O.

The backbone is a 2-layer ``LlamaForCausalLM`` (hidden 64) with a word-level tokenizer built
here from the words the tests use; nothing is downloaded. The synthetic runs make every
question learnable from the tokens: a picture window's token says faces (0-1) or places
(2-3); a rest run's tokens say control (8-11) or patient (12-15).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
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
    Example,
    collate,
    instruction_examples,
    stage2_examples,
)
from fmrilm_bids.fmrilm.llm.inference import generate, score_candidates, task_prompts
from fmrilm_bids.fmrilm.llm.metrics import auroc, softmax, words
from fmrilm_bids.fmrilm.llm.prompts import RUN_DESCRIBE, WINDOW_DESCRIBE, Formatter
from fmrilm_bids.fmrilm.llm.runs import event_windows, window_events
from fmrilm_bids.fmrilm.llm.tasks import resolve_tasks, task_items
from fmrilm_bids.fmrilm.llm.train import CHECKPOINT_DIR, STATE_FILE
from fmrilm_bids.utils.files import publish_directory

CODEBOOK = 16
SUBJECTS = [f"{i:02d}" for i in range(1, 7)]
TRAIN, TEST = SUBJECTS[:4], SUBJECTS[4:]
CAPTIONS = {"faces": "A smiling face.", "places": "A quiet beach at dawn."}
CONFIG = FmriLMConfig(codebook_size=CODEBOOK, lora_r=8, lora_alpha=16, lora_dropout=0.1,
                      window_context=0, run_segment_windows=6, max_length=96,
                      system_prompt="You read fMRI.")
STAGE = LMTrainConfig(steps=40, batch_size=8, learning_rate=1e-2, min_learning_rate=1e-3,
                      warmup_steps=5, checkpoint_interval=20, progress=False)
STAGE3 = LMTrainConfig(**{**STAGE.__dict__, "steps": 400, "learning_rate": 5e-3,
                          "min_learning_rate": 5e-4, "checkpoint_interval": 200})


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
        picture_tokens = np.where(kinds == "faces", 0, 2) + rng.integers(0, 2, n_windows)
        rest_tokens = (12 if patient else 8) + rng.integers(0, 4, n_windows)
        for task, tokens in (("images", picture_tokens), ("rest", rest_tokens)):
            texts = [f"The visual network is above baseline. The participant sees: "
                     f"{CAPTIONS[k]}" for k in kinds] if task == "images" else [
                "The default mode network is " + ("below" if patient else "above")
                + " baseline."] * n_windows
            runs.append(LMRun(
                subject, task, tokens, onsets, 12.0, window_texts=texts,
                run_text=f"This {task} scan shows typical coupling.",
                events=events if task == "images" else None,
                token_features=np.eye(CODEBOOK)[tokens][:, :4] + 0.1 * rng.standard_normal(
                    (n_windows, 4)),
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


def build(folder: Path, config: FmriLMConfig = CONFIG, projection: torch.Tensor | None = None
          ) -> FmriLM:
    tokenizer, backbone = load_backbone(folder)
    return FmriLM.build(tokenizer, backbone, config, projection, str(folder))


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
def test_only_adapters_and_new_rows_train(backbones, data, tmp_path, tied: bool) -> None:
    runs, _ = data
    model = build(backbones["tied" if tied else "untied"])
    names = set(model.trainable_parameters())
    assert any("trainable_tokens_delta" in n for n in names)
    assert all("lora_" in n or "trainable_tokens_delta" in n for n in names)
    frozen = {n: p.detach().clone() for n, p in model.model.named_parameters()
              if not p.requires_grad}
    rows = model.model.get_input_embeddings()(torch.tensor(model.vocab.new_ids)).detach()
    train_fmrilm(model, stage2_examples(model.formatter, runs[:2], CONFIG), tmp_path,
                 LMTrainConfig(**{**STAGE.__dict__, "steps": 3}))
    for name, parameter in model.model.named_parameters():
        if name in frozen:
            assert torch.equal(parameter, frozen[name]), name
    after = model.model.get_input_embeddings()(torch.tensor(model.vocab.new_ids)).detach()
    assert not torch.allclose(rows, after)
    full = build(backbones["tied"], FmriLMConfig(**{**CONFIG.__dict__, "full_finetune": True}))
    assert len(full.trainable_parameters()) == len(list(full.model.parameters()))


# Data ---------------------------------------------------------------------------------------

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
    fmri = next(e for e in examples if e.kind == "fmri")
    assert fmri.input_ids == model.vocab.segment_ids(runs[0].token_ids)
    describe = next(e for e in examples if e.group == "describe")
    target = formatter.answer_ids(runs[0].window_texts[0])
    assert describe.input_ids[-len(target):] == target and target[-1] == formatter.stop_id
    assert describe.labels == [IGNORE_INDEX] * (len(describe) - len(target)) + target
    text = next(e for e in examples if e.kind == "text")
    assert text.labels == text.input_ids
    prompt = formatter.prompt_text([formatter.user_message(runs[0], 0, 2, "Why?")])
    assert prompt.startswith("System: You read fMRI.\nUser: <fmri><fmri_")
    assert prompt.endswith("</fmri>\nWhy?\nAssistant:")

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
    binned = participant_task("age", bins=[30, 40])
    assert [binned.bin_label(v) for v in (25, 30, 35, 45)] == [
        "under 30", "30 to 40", "30 to 40", "40 or more"]
    assert resolve_tasks([binned], runs, participants, 1, 6)[0][0].classes == (
        "under 30", "30 to 40", "40 or more")
    one_class = participants.assign(group="control")
    assert resolve_tasks([by_name["group"]], runs, one_class, 1, 6) == ([], ["group"])


# Training -----------------------------------------------------------------------------------

def test_stage2_and_stage3_losses_decrease(trained) -> None:
    for stage, kinds, config in (("stage2", ("fmri", "describe", "text"), STAGE),
                                 ("stage3", ("answer",), STAGE3)):
        history = trained[stage].history
        for kind in kinds:
            values = [entry[kind] for entry in history if kind in entry]
            assert np.mean(values[-5:]) < 0.6 * np.mean(values[:5]), (stage, kind)
        # Linear warm-up to the peak, cosine decay to the floor.
        assert history[config.warmup_steps - 1]["lr"] == config.learning_rate
        assert history[-1]["lr"] == pytest.approx(config.min_learning_rate, rel=0.05)


def test_resumed_training_matches_uninterrupted_training(backbones, data, tmp_path) -> None:
    runs, _ = data
    settings = LMTrainConfig(**{**STAGE.__dict__, "steps": 6, "checkpoint_interval": 3,
                                "grad_accum": 2, "batch_size": 4})

    def run(folder: Path, **kwargs: object) -> tuple[FmriLM, object]:
        model = build(backbones["tied"])
        examples = stage2_examples(model.formatter, runs[:4], CONFIG)
        return model, train_fmrilm(model, examples, folder, settings, **kwargs)

    straight, straight_result = run(tmp_path / "straight")
    run(tmp_path / "split", until_step=4)  # checkpoints at 3 and 4 ("killed" after 4)
    state = json.loads((tmp_path / "split" / CHECKPOINT_DIR / STATE_FILE).read_text())
    assert state["step"] == 4
    resumed, resumed_result = run(tmp_path / "split", resume=True)
    for name, value in straight.trainable_parameters().items():
        assert torch.equal(value, resumed.trainable_parameters()[name]), name
    assert [h["loss"] for h in straight_result.history] == \
        [h["loss"] for h in resumed_result.history]
    fresh, _ = run(tmp_path / "fresh", until_step=2)
    assert not all(torch.equal(v, fresh.trainable_parameters()[k])
                   for k, v in straight.trainable_parameters().items())


def test_gradient_checkpointing_gives_the_same_training(backbones, data, tmp_path) -> None:
    runs, _ = data
    trained = []
    for checkpointing in (False, True):
        model = build(backbones["tied"])
        settings = LMTrainConfig(**{**STAGE.__dict__, "steps": 3,
                                    "gradient_checkpointing": checkpointing})
        train_fmrilm(model, stage2_examples(model.formatter, runs[:2], CONFIG),
                     tmp_path / str(checkpointing), settings)
        assert model.model.get_decoder().gradient_checkpointing == checkpointing
        trained.append(model.trainable_parameters())
    for name, value in trained[0].items():
        torch.testing.assert_close(value, trained[1][name], rtol=1e-4, atol=1e-6)


# Inference ----------------------------------------------------------------------------------

def test_constrained_answers_are_sequence_log_probs_and_give_auroc(trained) -> None:
    model, test = trained["model"], trained["test"]
    task = next(t for t in model.tasks if t.name == "condition")
    items = task_items(task, test, None, CONFIG.window_context, CONFIG.run_segment_windows)
    prompts = [task_prompts(model, task, test[i.run_index], [(i.start, i.stop)])[0]
               for i in items]
    log_probs = score_candidates(model, prompts, task.classes, batch_size=5)
    # Against a direct computation from the full logits of one prompt + answer.
    answer = model.formatter.answer_ids(task.classes[1])
    ids = torch.tensor([prompts[0] + answer])
    with torch.no_grad():
        logits = model.logits(ids, torch.ones_like(ids))[0].log_softmax(-1)
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
    assert accuracy >= 0.9  # the token tells the condition (chance: 0.5)
    assert probabilities.min() > 0.0 and probabilities.max() < 1.0


def full_forward_scores(model: FmriLM, prompts: list[list[int]],
                        candidates: list[str]) -> np.ndarray:
    """Each answer's log-probability from a forward pass of its own over prompt + answer."""
    scores = np.zeros((len(prompts), len(candidates)))
    for row, prompt in enumerate(prompts):
        for column, candidate in enumerate(candidates):
            answer = model.formatter.answer_ids(candidate)
            ids = torch.tensor([prompt + answer])
            with torch.no_grad():
                logits = model.logits(ids, torch.ones_like(ids))[0, len(prompt) - 1:-1]
            scores[row, column] = float(logits.log_softmax(-1)[range(len(answer)), answer].sum())
    return scores


@pytest.mark.parametrize("kind", ["tied", "untied", "full"])
def test_cached_constrained_answers_equal_full_forward_passes(backbones, data,
                                                              kind: str) -> None:
    """Prompts read once, answers from their cache: the scores of a pass per pair."""
    runs, _ = data
    config = FmriLMConfig(**{**CONFIG.__dict__, "full_finetune": kind == "full"})
    model = build(backbones["untied" if kind == "untied" else "tied"], config)
    torch.manual_seed(1)
    with torch.no_grad():  # LoRA updates and new rows that change the outputs (both start at 0)
        for name, parameter in model.trainable_parameters().items():
            if "lora_B" in name or "trainable_tokens_delta" in name:
                parameter.normal_(0.0, 0.3)
    formatter, question = model.formatter, WINDOW_DESCRIBE[0]
    turns = [(formatter.user_message(runs[1], 0, 3, question), "faces"),
             (formatter.user_message(runs[2], 2, 4, question), "a quiet beach at dawn.")]
    prompts = [formatter.prompt_ids(formatter.conversation(
        turns if few_shot else (), formatter.user_message(runs[index], 0, stop, question)))
        for few_shot in (False, True)
        for index, stop in ((0, 1), (3, 1), (4, 2), (5, 6), (2, 2), (1, 2))]
    prompts.append(prompts[1])  # read once
    candidates = ["faces", "rest", "a quiet beach at dawn.", ""]
    assert [len(formatter.answer_ids(c)) for c in candidates] == [2, 2, 7, 1]
    assert len({len(prompt) for prompt in prompts}) == 6
    expected = full_forward_scores(model, prompts, candidates)
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
    # Right-padded pairs through FmriLM.__call__ (the loss path) agree too.
    pairs = [Example(prompt + formatter.answer_ids(c),
                     [IGNORE_INDEX] * len(prompt) + formatter.answer_ids(c), "answer", "")
             for prompt in prompts for c in candidates]
    with torch.no_grad():
        nll, _ = model(**collate(pairs, model.tokenizer.pad_token_id))
    np.testing.assert_allclose(-nll.numpy().reshape(expected.shape), expected, rtol=1e-5,
                               atol=1e-4)
    # No token in common (nothing read once for all), one-token prompts.
    raw = [[5, *prompts[0]], [6, 7], [8]]
    np.testing.assert_allclose(score_candidates(model, raw, candidates, 4),
                               full_forward_scores(model, raw, candidates), rtol=1e-5,
                               atol=1e-4)


def test_generation_is_greedy_and_batch_independent(trained) -> None:
    model, test = trained["model"], trained["test"]
    task = next(t for t in model.tasks if t.name == "stimulus")
    prompts = task_prompts(model, task, test[0], [(0, 1), (1, 2), (4, 5)])
    decoding = DecodingConfig(max_new_tokens=8, batch_size=3)
    batched = generate(model, prompts, decoding)
    single = [generate(model, [p], decoding)[0] for p in prompts]
    assert batched == single
    ids = list(prompts[1])
    with torch.no_grad():
        for _ in range(8):
            tensor = torch.tensor([ids])
            token = int(model.logits(tensor, torch.ones_like(tensor))[0, -1].argmax())
            if token == model.formatter.stop_id:
                break
            ids.append(token)
    assert batched[1] == model.tokenizer.decode(ids[len(prompts[1]):],
                                                skip_special_tokens=True).strip()
    truth = test[0].events["caption"].iloc[1]  # the caption of window 1
    assert words(batched[1]) == words(truth)  # learnt from the tokens


@pytest.mark.parametrize("kind", ["tied", "untied", "full"])
def test_save_load_round_trip_gives_the_same_logits(backbones, data, tmp_path,
                                                    kind: str) -> None:
    runs, participants = data
    config = FmriLMConfig(**{**CONFIG.__dict__, "full_finetune": kind == "full"})
    model = build(backbones["untied" if kind == "untied" else "tied"], config,
                  torch.randn(CODEBOOK, 64))
    train_fmrilm(model, stage2_examples(model.formatter, runs[:2], CONFIG), tmp_path / "t",
                 LMTrainConfig(**{**STAGE.__dict__, "steps": 3}))
    model.tasks = resolve_tasks(default_tasks(runs, participants), runs, participants, 1, 6)[0]
    model.card = {"data": {"runs": 2}}
    saved = model.save_pretrained(tmp_path / "model")
    loaded = FmriLM.from_pretrained(saved)
    ids = torch.tensor([[*model.vocab.segment_ids(runs[0].token_ids), 5, 6, 7]])
    with torch.no_grad():
        assert torch.equal(model.logits(ids, torch.ones_like(ids)),
                           loaded.logits(ids, torch.ones_like(ids)))
    assert loaded.vocab == model.vocab and loaded.tasks == model.tasks
    assert loaded.config == model.config
    weights = {"model.safetensors", "config.json"} if kind == "full" else {
        "adapter_model.safetensors", "adapter_config.json"}
    assert weights | {"fmrilm.json", "tokenizer.json", "README.md"} <= {
        p.name for p in saved.iterdir()}
    card = (saved / "README.md").read_text()
    assert "| runs | 2 |" in card and "| transformers |" in card and "condition" in card
    assert not list(tmp_path.glob(".model*"))  # no staging folder left behind
    if kind != "full":
        with pytest.raises(ValueError, match="pass the backbone"):
            FmriLM.from_pretrained(saved, llm_dir=_other_width_backbone(tmp_path))


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


# Entry points -------------------------------------------------------------------------------

def test_fit_and_apply_end_to_end(backbones, data, tmp_path) -> None:
    runs, participants = data
    quick = LMTrainConfig(**{**STAGE.__dict__, "steps": 40})
    result = fit_fmrilm(runs, participants, tmp_path / "fmrilm", CONFIG, quick, STAGE3,
                        llm_dir=backbones["tied"], held_out_tasks=["group"], test_subjects=TEST,
                        few_shot_k=1, decoding=DecodingConfig(max_new_tokens=10))
    assert result.train_subjects == TRAIN and result.test_subjects == TEST
    metrics = json.loads((tmp_path / "fmrilm" / "metrics.json").read_text())
    assert metrics["test_subjects"] == TEST
    tasks = metrics["tasks"]
    assert tasks["group"]["setting"] == "zero-shot" and "few_shot" in tasks["group"]
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
    assert set(tasks["stimulus"]["fmrilm"]) == {"minilm_cosine", "bleu", "rouge_l", "n",
                                                "minilm_cosine_ci_low", "minilm_cosine_ci_high"}
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
    condition = images.answers["condition"]
    assert len(condition) == 12 and {"p_faces", "p_places"} <= set(condition.columns)
    np.testing.assert_allclose(condition[["p_faces", "p_places"]].sum(axis=1), 1.0)
    assert len(images.answers["rest_vs_task"]) == 1 and "group" not in images.answers
    assert outputs[test_runs[1].key].event_captions is None
    assert images.settings["decoding"]["max_new_tokens"] == 10
    with pytest.raises(ValueError, match="Held-out tasks"):
        fit_fmrilm(runs, participants, tmp_path / "x", CONFIG, quick, quick,
                   llm_dir=backbones["tied"], held_out_tasks=["handedness"])


DATA_PARALLEL_SCRIPT = """
import json, os, sys, torch
from safetensors.torch import save_file
sys.path.insert(0, {tests!r})
from test_llm_model import CONFIG, STAGE, build, synthetic_runs
from fmrilm_bids.fmrilm.llm import LMTrainConfig, train_fmrilm
from fmrilm_bids.fmrilm.llm.examples import stage2_examples
torch.set_num_threads(1)
runs, _ = synthetic_runs()
model = build({backbone!r})
config = LMTrainConfig(**{{**STAGE.__dict__, "steps": 4, "batch_size": 2}})
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
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]), name  # in step after every update
    assert not all(torch.equal(v, single.trainable_parameters()[k].detach())
                   for k, v in weights[0].items())  # and they did train
    losses = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert losses[0] != losses[1]  # each process saw its own share of the batch
    assert (tmp_path / CHECKPOINT_DIR / STATE_FILE).is_file()
