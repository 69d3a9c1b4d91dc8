"""The names the decoding core hands around: one type each, string-valued so JSON and f-strings show
the plain word."""

from __future__ import annotations

from enum import Enum


class _Name(str, Enum):
    def __str__(self) -> str:
        return str.__str__(self)

    __format__ = str.__format__


class Mode(_Name):
    """Which drafters may run: all of them with the cost model choosing (auto), one, or none (plain)."""

    AUTO = "auto"
    MODEL = "model"
    NGRAM = "ngram"
    PLAIN = "plain"

    @classmethod
    def parse(cls, text: "str | Mode") -> "Mode":
        """A mode from what a user typed; "none" is accepted for plain decoding."""
        if isinstance(text, Mode):
            return text
        t = str(text).strip().lower()
        if t == "none":
            return cls.PLAIN
        try:
            return cls(t)
        except ValueError:
            raise ValueError(f"must be one of {', '.join(m.value for m in cls)}, got {text!r}") from None

    def allows(self, drafter: "Drafter") -> bool:
        return self is Mode.AUTO or self.value == drafter.value


class Drafter(_Name):
    """Where a step's draft came from (NONE: nothing was drafted)."""

    MODEL = "model"
    NGRAM = "ngram"
    NONE = "none"


class Phase(_Name):
    PREFILL = "prefill"
    DECODE = "decode"


class Finish(_Name):
    STOP = "stop"  # an end-of-generation token, or a stop string
    LENGTH = "length"  # max_tokens
    CONTEXT = "context"  # the context is full
    INTERRUPTED = "interrupted"  # Ctrl-C, or a client that went away
    ERROR = "error"  # generation failed (a chat turn records it before the error surfaces)
