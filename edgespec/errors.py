"""User-facing errors: each one is printed as a single line by the CLI, never as a traceback."""

from __future__ import annotations


class EdgespecError(Exception):
    """A failure the user can act on. `hint` says what to do next."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def line(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ModelLoadError(EdgespecError):
    """The file is missing, not a GGUF, truncated, or llama.cpp refused it."""


class IncompatibleModelsError(EdgespecError):
    """Draft and target cannot be paired (different tokenizers)."""


class ContextOverflowError(EdgespecError):
    """The prompt plus the requested tokens do not fit the context."""


class UsageError(EdgespecError):
    """A bad option value."""

    exit_code = 2


class RollbackError(EdgespecError):
    """A model's cache could not drop rejected tokens (recurrent and hybrid models keep a state)."""


class Interrupted(Exception):
    """A long evaluation stopped between batches because its owner asked (Model.should_stop): a
    server's client went away during the prompt. Not an error of the user's."""
