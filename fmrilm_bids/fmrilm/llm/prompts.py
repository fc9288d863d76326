"""Prompts: messages, answers, texts and fMRI segments turned into model ids (:class:`Formatter`).

Prompts use the backbone's chat template when it has one (a plain ``User:/Assistant:``
layout otherwise), with a short system prompt so that the template adds no long default.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from transformers import PreTrainedTokenizerBase

from fmrilm_bids.fmrilm.llm.runs import LMRun
from fmrilm_bids.fmrilm.llm.vocabulary import FmriVocabulary

if TYPE_CHECKING:

    pass


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
    """

    SENTINEL = "\u2063ANSWER\u2063"

    def __init__(self, tokenizer: PreTrainedTokenizerBase, vocab: FmriVocabulary,
                 system_prompt: str | None = None) -> None:
        self.tokenizer, self.vocab, self.system_prompt = tokenizer, vocab, system_prompt
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

    def _with_system(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        if self.system_prompt and (not messages or messages[0]["role"] != "system"):
            return [{"role": "system", "content": self.system_prompt}, *messages]
        return list(messages)

    def prompt_text(self, messages: list[dict[str, str]]) -> str:
        """The prompt of a conversation, up to where the assistant starts answering."""
        messages = self._with_system(messages)
        if self.chat:
            return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                      add_generation_prompt=True)
        return "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages) \
            + "Assistant:"

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        return self.encode(self.prompt_text(messages))

    def answer_ids(self, answer: str) -> list[int]:
        """An answer as the assistant writes it, ending with the stop token."""
        text = self.answer_prefix + answer if self.chat else " " + answer
        return [*self.encode(text), self.stop_id]

    def text_ids(self, text: str) -> list[int]:
        """Plain text, ending with the end-of-sequence token."""
        return [*self.encode(text), self.tokenizer.eos_token_id]

    def user_message(self, run: LMRun, start: int, stop: int, question: str) -> dict[str, str]:
        """A user turn showing windows ``[start, stop)`` of ``run`` and asking ``question``."""
        segment = self.vocab.segment_text(run.token_ids[start:stop])
        return {"role": "user", "content": f"{segment}\n{question}"}

    def conversation(self, turns: Sequence[tuple[dict[str, str], str]],
                     query: dict[str, str]) -> list[dict[str, str]]:
        """Answered ``turns`` (few-shot examples), then the ``query`` user message."""
        messages = []
        for message, answer in turns:
            messages += [message, {"role": "assistant", "content": answer}]
        return [*messages, query]
