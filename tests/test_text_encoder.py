"""The sentence encoder: shapes, normalisation, meaning, batching, offline loading."""

from __future__ import annotations

import numpy as np
import pytest

from fmrilm_bids.resources.text_encoder import (
    EMBEDDING_DIM,
    encode_sentences,
    load_text_encoder,
    mean_pool,
)

SENTENCES = [
    "A dog runs across a grassy field.",
    "A puppy is running over the lawn.",
    "The central bank raised interest rates again.",
    "Stock markets fell after the interest rate decision.",
    "A slice of pizza with melted cheese.",
]


def test_embeddings_are_unit_vectors_of_the_model_width() -> None:
    vectors = encode_sentences(SENTENCES)
    assert vectors.shape == (len(SENTENCES), EMBEDDING_DIM) == (5, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_paraphrases_are_closer_than_unrelated_sentences() -> None:
    similarity = encode_sentences(SENTENCES) @ encode_sentences(SENTENCES).T
    assert similarity[0, 1] > 0.6  # two ways of saying a dog runs on grass
    assert similarity[2, 3] > similarity[2, 0] + 0.3  # finance vs dogs
    for unrelated in (2, 3, 4):
        assert similarity[0, 1] > similarity[0, unrelated] + 0.3


def test_batching_and_padding_do_not_change_embeddings() -> None:
    together = encode_sentences(SENTENCES, batch_size=64)
    one_by_one = encode_sentences(SENTENCES, batch_size=1)
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)
    assert np.array_equal(encode_sentences(SENTENCES), together)  # deterministic


def test_matches_sentence_transformers_reference() -> None:
    """The transformers-only pipeline reproduces sentence-transformers' own encoding."""
    pytest.importorskip("sentence_transformers")
    from sentence_transformers import SentenceTransformer

    from fmrilm_bids.resources.text_encoder import model_path

    reference = SentenceTransformer(str(model_path()), device="cpu").encode(SENTENCES)
    np.testing.assert_allclose(encode_sentences(SENTENCES), reference, atol=1e-5)


def test_model_is_loaded_once_per_process() -> None:
    encode_sentences(["warm up"])
    assert load_text_encoder("cpu") is load_text_encoder("cpu")


def test_mean_pool_ignores_padding() -> None:
    hidden = np.array([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    np.testing.assert_allclose(mean_pool(hidden, np.array([[1, 1, 0]])), [[2.0, 3.0]])


def test_edge_cases() -> None:
    assert encode_sentences([]).shape == (0, EMBEDDING_DIM)
    with pytest.raises(TypeError, match="list of sentences"):
        encode_sentences("one string")
    with pytest.raises(ValueError, match="batch_size"):
        encode_sentences(["a"], batch_size=0)
    long_text = " ".join(["word"] * 2000)  # longer than the model's 256 word pieces
    assert encode_sentences([long_text]).shape == (1, EMBEDDING_DIM)
