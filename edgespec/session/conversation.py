"""A conversation as messages and as the token ids the models have already seen.

Each new turn appends only the tokens of the new user message, rendered by the model's chat template,
to the tokens of everything before it (prompts, generated replies, the end-of-turn markers the
template adds). The engine's `advance_to` then finds all of that in the target's and the draft's KV
caches and evaluates only what is new.
"""

from __future__ import annotations

from typing import Sequence

from edgespec.session.loading import render


def _word_start_mark(model) -> list[int]:
    """Tokens a SentencePiece tokenizer puts before text it tokenizes on its own ([] for most BPE ones)."""
    probe = model.tokenize("\n", add_special=False, parse_special=True)
    return probe[:-1]


def tokenize_continuation(model, text: str) -> list[int]:
    """Tokens for text that continues a sequence: no BOS, special tokens parsed.

    Some tokenizers (SentencePiece with a space prefix) put a word-start mark in front of text that
    is tokenized on its own; it is not in the text, so it is taken out again when it is made of
    tokens of its own.
    """
    if not text:
        return []
    toks = model.tokenize(text, add_special=False, parse_special=True)
    mark = _word_start_mark(model)
    if mark and toks[: len(mark)] == mark and not text.startswith((" ", "\u2581")):
        return toks[len(mark):]
    return toks


class Conversation:
    """Messages (alternating user/assistant, the system prompt apart) and their token ids.

    `tokens` is what the models have seen for `messages`, each reply as it was generated; it is None
    when it must be rebuilt from a full render (after a change the template cannot append to).
    """

    def __init__(self, model, system: str | None = None):
        self.model = model
        self.system = system or None
        self.messages: list[dict] = []
        self.tokens: list[int] | None = []

    def render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        full = ([{"role": "system", "content": self.system}] if self.system else []) + messages
        return render(self.model, full, add_generation_prompt)

    @property
    def n_turns(self) -> int:
        return len(self.messages) // 2

    def prompt_for(self, text: str) -> list[int]:
        """The tokens to generate the reply to user message `text` from.

        The template renders the conversation with and without the new message; when the longer
        text extends the shorter one, only the difference is tokenized and appended. Templates that
        rewrite earlier turns fall back to a full render (advance_to still reuses the common prefix).
        """
        after = self.render(self.messages + [message("user", text)], True)
        if self.tokens:
            before = self.render(self.messages, False)
            if after.startswith(before):
                return self.tokens + tokenize_continuation(self.model, after[len(before):])
        return self.model.tokenize_prompt(after)

    def bare_prompt(self, text: str) -> list[int]:
        """The prompt for `text` with no earlier turns (the least any prompt for it can be)."""
        return self.model.tokenize_prompt(self.render([message("user", text)], True))

    def add_reply(self, text: str, prompt: Sequence[int], reply_text: str, reply_tokens: Sequence[int]) -> None:
        """Record a finished (or interrupted) turn: the reply as shown, and the tokens to keep.

        The kept tokens are the prompt, the generated tokens and the end-of-turn text the template
        puts after the reply (minus an end-of-generation token the model already produced).
        """
        user, reply = message("user", text), message("assistant", reply_text)
        before = self.render(self.messages + [user], True)
        after = self.render(self.messages + [user, reply], False)
        self.messages += [user, reply]
        head = before + reply_text
        if not after.startswith(head):  # the template rewrites the reply (trims it, say): re-render next time
            self.tokens = None
            return
        gen = _shown_tokens(self.model, reply_tokens, reply_text)
        tail = after[len(head):]
        if gen and self.model.is_eog(gen[-1]):
            mark = self.model.token_text(gen[-1]).decode("utf-8", "replace")
            if mark and tail.startswith(mark):
                tail = tail[len(mark):]  # the model wrote the template's end-of-turn token itself
            else:
                gen.pop()
        self.tokens = list(prompt) + gen + tokenize_continuation(self.model, tail)

    def drop_oldest_turn(self) -> bool:
        """Forget the oldest user/assistant exchange (the system prompt stays). False if none is left."""
        if len(self.messages) < 2:
            return False
        del self.messages[:2]
        self.tokens = None
        return True

    def reset(self) -> None:
        self.messages, self.tokens = [], []

    def set_system(self, text: str | None) -> None:
        self.system = text or None
        self.tokens = None if self.messages else []


def _shown_tokens(model, tokens: Sequence[int], text: str) -> list[int]:
    """The generated tokens that make up `text`, the part of the reply that was shown.

    Usually all of them. Ctrl-C can leave a few whose bytes were held back (half a character),
    and a stop string cuts the text inside a token: then the longest prefix that matches, or failing
    that the text tokenized anew (the cache is then re-evaluated from where they differ).
    """
    for n in range(len(tokens), max(len(tokens) - 8, 0) - 1, -1):
        if model.detokenize(tokens[:n]) == text:
            return list(tokens[:n])
    return tokenize_continuation(model, text)


def message(role: str, content: str) -> dict:
    return {"role": role, "content": content}

