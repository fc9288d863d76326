"""fMRI tokens in the language model's vocabulary.

:func:`extend_vocabulary` adds one token per codebook entry, ``<fmri_0> .. <fmri_{K-1}>``,
and the delimiters ``<fmri>`` / ``</fmri>`` to the tokenizer (as special tokens, so text
never splits them), grows the embedding matrices, and initialises the new rows:

* fMRI tokens from Stage 1: the tokenizer's codebook projected to the LLM width
  (:meth:`~fmrilm_bids.fmrilm.tokenizer.NeuralTokenizer.token_embeddings_for_llm`), scaled as a
  whole so that its mean row norm equals the mean norm of the backbone's embedding rows
  (relative norms and directions are kept);
* delimiters from the mean embedding row.

With tied input and output embeddings (SmolLM2) the output rows are the input rows; an
untied output matrix gets the same initial rows, scaled to its own mean norm (delimiters:
its mean row), so a new token is predicted from the first step as it is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from transformers import AddedToken, PreTrainedTokenizerBase

FMRI_OPEN = "<fmri>"
FMRI_CLOSE = "</fmri>"


def fmri_token(code: int) -> str:
    """The text of the token of codebook entry ``code``."""
    return f"<fmri_{code}>"


@dataclass(frozen=True)
class FmriVocabulary:
    """Where the fMRI tokens are in an extended vocabulary.

    Attributes
    ----------
    codebook_size : int
        Number of fMRI tokens (``K``).
    first_id : int
        Id of ``<fmri_0>``; token ``k`` has id ``first_id + k``.
    open_id, close_id : int
        Ids of ``<fmri>`` and ``</fmri>``.
    base_vocab_size : int
        Embedding rows of the backbone before the extension.
    """

    codebook_size: int
    first_id: int
    open_id: int
    close_id: int
    base_vocab_size: int

    @property
    def new_ids(self) -> list[int]:
        """Ids of every added token (fMRI tokens, then the delimiters)."""
        return [*range(self.first_id, self.first_id + self.codebook_size), self.open_id,
                self.close_id]

    def check_tokens(self, tokens: Sequence[int] | np.ndarray) -> np.ndarray:
        """Token ids as a flat int array (windows by groups: in token order); raises for ids
        outside the codebook."""
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.codebook_size):
            raise ValueError(f"fMRI token ids must lie in [0, {self.codebook_size}); got "
                             f"{tokens.min()}..{tokens.max()}. Use the tokenizer whose "
                             "codebook the model was built with.")
        return tokens

    def segment_ids(self, tokens: Sequence[int] | np.ndarray) -> list[int]:
        """``<fmri> t1 ... tn </fmri>`` as model ids (``tokens`` flattened in order)."""
        return [self.open_id, *(self.check_tokens(tokens) + self.first_id).tolist(),
                self.close_id]

    def segment_text(self, tokens: Sequence[int] | np.ndarray) -> str:
        """``<fmri> t1 ... tn </fmri>`` as text (for prompts; each token stays one id)."""
        return FMRI_OPEN + "".join(fmri_token(int(t)) for t in self.check_tokens(tokens)) \
            + FMRI_CLOSE

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def _scaled(rows: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``rows`` scaled as a whole to the mean row norm of ``reference``."""
    scale = reference.norm(dim=1).mean() / rows.norm(dim=1).mean().clamp(min=1e-12)
    return rows * scale


def extend_vocabulary(tokenizer: PreTrainedTokenizerBase, model: torch.nn.Module,
                      codebook_size: int,
                      token_embeddings: torch.Tensor | np.ndarray | None = None,
                      seed: int = 0) -> FmriVocabulary:
    """Add the fMRI tokens to a tokenizer and its model, initialised as the module says.

    Parameters
    ----------
    tokenizer : transformers.PreTrainedTokenizerBase
        Changed in place. Tokens it already has (a saved fMRI-LM tokenizer) are reused.
    model : transformers.PreTrainedModel
        Its embeddings are resized in place.
    codebook_size : int
    token_embeddings : Tensor or ndarray of shape (codebook_size, hidden_size), optional
        Stage-1 token embeddings (``NeuralTokenizer.token_embeddings_for_llm()``). Without
        them the fMRI rows are random directions (seeded) at the backbone's mean norm.
    seed : int, default=0

    Returns
    -------
    FmriVocabulary
    """

    if codebook_size < 1:
        raise ValueError(f"codebook_size must be at least 1, not {codebook_size}.")
    input_embeddings = model.get_input_embeddings()
    base_rows, hidden = input_embeddings.weight.shape
    texts = [fmri_token(k) for k in range(codebook_size)] + [FMRI_OPEN, FMRI_CLOSE]
    vocabulary = tokenizer.get_vocab()
    missing = [text for text in texts if text not in vocabulary]
    tokenizer.add_tokens([AddedToken(text, special=True, normalized=False) for text in missing],
                         special_tokens=True)
    ids = tokenizer.convert_tokens_to_ids(texts)
    first = ids[0]
    if ids[:codebook_size] != list(range(first, first + codebook_size)):
        raise ValueError("The tokenizer holds some fMRI tokens but not as one contiguous "
                         "block; start from the backbone's own tokenizer.")
    vocab = FmriVocabulary(codebook_size=codebook_size, first_id=first, open_id=ids[-2],
                           close_id=ids[-1], base_vocab_size=min(base_rows, first))
    model.resize_token_embeddings(max(len(tokenizer), base_rows), mean_resizing=False)

    if token_embeddings is None:
        generator = torch.Generator().manual_seed(seed)
        fmri_rows = torch.randn(codebook_size, hidden, generator=generator)
    else:
        fmri_rows = torch.as_tensor(np.asarray(token_embeddings), dtype=torch.float32)
        if fmri_rows.shape != (codebook_size, hidden):
            raise ValueError(f"token_embeddings has shape {tuple(fmri_rows.shape)}; this "
                             f"backbone needs ({codebook_size}, {hidden}): train the Stage-1 "
                             f"tokenizer with llm_hidden={hidden} and this codebook size.")
    input_weight = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    matrices = [input_weight]
    if output is not None and output.weight is not input_weight:
        matrices.append(output.weight)
    with torch.no_grad():
        for weight in matrices:
            old = weight[:vocab.base_vocab_size].float()
            weight[first:first + codebook_size] = _scaled(fmri_rows, old).to(weight)
            weight[[vocab.open_id, vocab.close_id]] = old.mean(dim=0).to(weight)
    return vocab
