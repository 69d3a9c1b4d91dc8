"""The benchmark's modes: ways to decode a prompt, named as on the command line (plain, model-k4, auto,
llama.cpp-spec-k3, ...)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from edgespec.core.kinds import Mode
from edgespec.errors import UsageError

PLAIN = "plain"
DEFAULT_MODES = ("plain", "model-k2", "model-k4", "model-k6", "ngram", "auto")


@dataclass(frozen=True)
class BenchMode:
    """A way to decode: `engine` is the engine's mode, or None for llama.cpp's own
    llama-speculative-simple binary; `k` a fixed draft length, None: chosen per step."""

    name: str
    engine: Mode | None
    k: int | None = None
    llama_spec: str | None = None  # llama.cpp rows: its --spec-type (draft-simple, ngram-mod, ngram-map-k)

    @property
    def external(self) -> bool:
        return self.engine is None

    @property
    def needs_draft(self) -> bool:
        return self.llama_spec == "draft-simple" or self.engine is Mode.MODEL

    @property
    def uses_draft(self) -> bool:
        """Whether the engine gets the draft model (the other modes decode without it)."""
        return self.engine in (Mode.MODEL, Mode.AUTO)


_MODE_RE = re.compile(r"^(plain|none|model|ngram|auto|llama\.cpp-spec|llama\.cpp-ngram-mod|llama\.cpp-ngram-map-k)(?:-k(\d+))?$")
MODE_HELP = ("plain, model-kN, model (k chosen per step), ngram, ngram-kN, auto, llama.cpp-spec[-kN], "
             "llama.cpp-ngram-mod, llama.cpp-ngram-map-k")


def parse_mode(text: str, llama_cpp_k: int = 4) -> BenchMode:
    m = _MODE_RE.match(text.strip().lower())
    if not m:
        raise UsageError(f"unknown mode {text!r}", f"modes: {MODE_HELP}")
    kind, k = m.group(1), (int(m.group(2)) if m.group(2) is not None else None)
    if kind in ("plain", "none"):
        if k is not None:
            raise UsageError(f"mode {text!r}: plain decoding has no draft length", "use plain")
        return BenchMode(PLAIN, Mode.PLAIN, 0)
    if kind == "auto" and k is not None:
        raise UsageError(f"mode {text!r}: auto chooses k itself", "use auto, or model-kN for a fixed k")
    if k is not None and not 1 <= k <= 64:
        raise UsageError(f"mode {text!r}: k must be between 1 and 64")
    if kind == "llama.cpp-spec":
        k = llama_cpp_k if k is None else k
        return BenchMode(f"llama.cpp-spec-k{k}", None, k, "draft-simple")
    if kind.startswith("llama.cpp-ngram"):  # llama.cpp's own context drafting, at its defaults
        if k is not None:
            raise UsageError(f"mode {text!r}: llama.cpp's n-gram modes use their own draft lengths", f"use {kind}")
        return BenchMode(kind, None, None, kind[len("llama.cpp-"):])
    return BenchMode(kind if k is None else f"{kind}-k{k}", Mode(kind), k)


def parse_modes(values: Sequence[str], llama_cpp_k: int = 4) -> list[BenchMode]:
    """Comma-separated and/or repeated; duplicates dropped; plain added first when missing
    (speedups and the match check are relative to it)."""
    modes: list[BenchMode] = []
    for v in values:
        for part in v.split(","):
            if part.strip():
                mode = parse_mode(part, llama_cpp_k)
                if mode.name not in {m.name for m in modes}:
                    modes.append(mode)
    if not modes:
        raise UsageError("--modes is empty", f"modes: {MODE_HELP}")
    if PLAIN not in {m.name for m in modes}:
        modes.insert(0, BenchMode(PLAIN, Mode.PLAIN, 0))
    return modes
