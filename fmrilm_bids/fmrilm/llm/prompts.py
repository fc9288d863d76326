"""Prompts: messages, answers, texts and fMRI segments turned into model inputs
(:class:`Formatter`, :class:`Prompt`).

Prompts use the backbone's chat template when it has one (a plain ``User:/Assistant:``
layout otherwise), with a short system prompt so that the template adds no long default.
A user message that shows an fMRI segment carries, beside its text, the features of the
segment's tokens (key ``"fmri"``, :meth:`~.runs.LMRun.segment_features`); a
:class:`Prompt` holds the ids and those features in the order the tokens appear.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from transformers import PreTrainedTokenizerBase

from fmrilm_bids.fmrilm.llm.runs import LMRun
from fmrilm_bids.fmrilm.llm.vocabulary import FmriVocabulary

#: Message key of the features of the fMRI segment a message shows.
FEATURES_KEY = "fmri"


@dataclass
class Prompt:
    """Model input: token ids, and the features read at its fMRI token positions.

    Attributes
    ----------
    ids : list of int
    features : ndarray of shape (n_fmri_tokens, feature_dim), optional
        One row per fMRI token of ``ids`` (``<fmri_k>``), in order; None when the model
        reads the tokens' own embeddings (or the prompt shows no segment).
    """

    ids: list[int]
    features: np.ndarray | None = field(default=None, repr=False)

    def key(self) -> tuple[tuple[int, ...], bytes]:
        """Identifies the input: equal keys, equal model outputs."""
        return tuple(self.ids), b"" if self.features is None else self.features.tobytes()

    def __len__(self) -> int:
        return len(self.ids)


WINDOW_DESCRIBE = ("Describe the brain activity in the last window.",
                   "What happens in the brain during the last window of this recording?",
                   "Summarise the last window of this fMRI recording in words.")


RUN_DESCRIBE = ("Describe this fMRI scan.",
                "Summarise the functional organisation seen in this recording.",
                "What is notable about this scan compared with other scans?")


class Formatter:
    """Turns messages, answers, texts and fMRI segments into model ids.

    Parameters
    ----------
    tokenizer : transformers.PreTrainedTokenizerBase
        The extended tokenizer.
    vocab : FmriVocabulary
    system_prompt : str, optional
        System message of every prompt (keeps chat templates from adding a long default).
    connectivity : bool, default=False
        Segment features with the groups' connectivity rows
        (:meth:`~.runs.LMRun.segment_features`).
    """

    SENTINEL = "\u2063ANSWER\u2063"

    def __init__(self, tokenizer: PreTrainedTokenizerBase, vocab: FmriVocabulary,
                 system_prompt: str | None = None, connectivity: bool = False) -> None:
        self.tokenizer, self.vocab, self.system_prompt = tokenizer, vocab, system_prompt
        self.connectivity = connectivity
        self.chat = bool(getattr(tokenizer, "chat_template", None))
        self.answer_prefix, self.stop_id = "", tokenizer.eos_token_id
        if self.chat:
            probe = [{"role": "user", "content": "?"}]
            prompt = self.prompt_text(probe)
            full = tokenizer.apply_chat_template(
                [*self._with_system(probe), {"role": "assistant", "content": self.SENTINEL}],
                tokenize=False)
            if not full.startswith(prompt) or self.SENTINEL not in full[len(prompt):]:
                raise ValueError("The backbone's chat template does not extend a prompt with "
                                 "the answer; fmrilm-bids cannot mask the prompt's loss.")
            self.answer_prefix, suffix = full[len(prompt):].split(self.SENTINEL, 1)
            suffix_ids = self.encode(suffix)
            if suffix_ids and suffix_ids[0] in tokenizer.all_special_ids:
                self.stop_id = suffix_ids[0]
        if self.stop_id is None:
            raise ValueError("The backbone's tokenizer has no end-of-sequence token.")

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` (no special tokens added)."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _with_system(self, messages: list[dict[str, object]]) -> list[dict[str, str]]:
        """The messages as the template takes them: text only, the system prompt first."""
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
        if self.system_prompt and (not messages or messages[0]["role"] != "system"):
            return [{"role": "system", "content": self.system_prompt}, *messages]
        return messages

    def prompt_text(self, messages: list[dict[str, object]]) -> str:
        """The prompt of a conversation, up to where the assistant starts answering."""
        messages = self._with_system(messages)
        if self.chat:
            return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                      add_generation_prompt=True)
        return "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages) \
            + "Assistant:"

    def prompt_ids(self, messages: list[dict[str, object]]) -> list[int]:
        return self.encode(self.prompt_text(messages))

    def prompt(self, messages: list[dict[str, object]]) -> Prompt:
        """Ids of the conversation up to the answer, with the features of its segments."""
        parts = [m[FEATURES_KEY] for m in messages if m.get(FEATURES_KEY) is not None]
        return Prompt(self.prompt_ids(messages), np.concatenate(parts) if parts else None)

    def answer_ids(self, answer: str) -> list[int]:
        """An answer as the assistant writes it, ending with the stop token."""
        text = self.answer_prefix + answer if self.chat else " " + answer
        return [*self.encode(text), self.stop_id]

    def text_ids(self, text: str) -> list[int]:
        """Plain text, ending with the end-of-sequence token."""
        return [*self.encode(text), self.tokenizer.eos_token_id]

    def segment_features(self, run: LMRun, start: int, stop: int) -> np.ndarray | None:
        """Features of the tokens of windows ``[start, stop)`` as this model reads them
        (:meth:`~.runs.LMRun.segment_features`, with connectivity rows when ``connectivity``).
        """
        return run.segment_features(start, stop, self.connectivity)

    def user_message(self, run: LMRun, start: int, stop: int,
                     question: str) -> dict[str, object]:
        """A user turn showing windows ``[start, stop)`` of ``run`` and asking ``question``
        (with the segment's features under :data:`FEATURES_KEY`)."""
        segment = self.vocab.segment_text(run.token_ids[start:stop])
        return {"role": "user", "content": f"{segment}\n{question}",
                FEATURES_KEY: self.segment_features(run, start, stop)}

    def conversation(self, turns: Sequence[tuple[dict[str, object], str]],
                     query: dict[str, object]) -> list[dict[str, object]]:
        """Answered ``turns`` (few-shot examples), then the ``query`` user message."""
        messages = []
        for message, answer in turns:
            messages += [message, {"role": "assistant", "content": answer}]
        return [*messages, query]
