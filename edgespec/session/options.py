"""Settings for loading a pair and for generating, each built and checked once, here.

Every command that loads models builds a LoadOptions; every command that generates builds a
GenOptions. Both refuse bad values with a UsageError when they are made, so the layers below
(memory planner, runner, engine, benchmark) can trust them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from edgespec.core.kinds import Mode
from edgespec.core.verify import SamplingParams
from edgespec.errors import UsageError

KV_TYPES = ("f16", "q8_0", "q4_0")
FLASH_ATTN_SETTINGS = ("auto", "on", "off")  # llama.cpp's flash-attention kernel (edgespec.machine.planner.flash_attention)
K_LIMIT = 64  # the longest fixed draft a user may ask for
CTX_FLOOR = 16  # the smallest context anyone may ask for


@dataclass
class LoadOptions:
    """How to load the pair. None leaves the choice to the memory planner (edgespec.machine.planner)."""

    n_ctx: int | None = None
    n_threads: int | None = None
    n_gpu_layers: int | None = None
    draft_gpu_layers: int | None = None
    kv_type: str | None = None
    budget: str | None = None  # "6GB", "75%"
    gpu_budget: str | None = None
    use_mlock: bool | None = None
    amx: str | None = None  # auto | on | off (None: $EDGESPEC_AMX, else auto)
    flash_attn: str | None = None  # auto | on | off (edgespec.machine.planner.flash_attention)

    def __post_init__(self) -> None:
        from edgespec.machine.cpu_paths import setting_from

        if self.kv_type is not None and self.kv_type not in KV_TYPES:
            raise UsageError(f"unknown --kv-type {self.kv_type!r}", f"use one of {', '.join(KV_TYPES)}")
        if self.n_ctx is not None and self.n_ctx < CTX_FLOOR:
            raise UsageError(f"--ctx must be at least {CTX_FLOOR} tokens, got {self.n_ctx}")
        if self.n_threads is not None and self.n_threads < 1:
            raise UsageError(f"--threads must be >= 1, got {self.n_threads}")
        if self.flash_attn is not None and self.flash_attn not in FLASH_ATTN_SETTINGS:
            raise UsageError(f"unknown --flash-attn {self.flash_attn!r}", f"use one of {', '.join(FLASH_ATTN_SETTINGS)}")
        if self.flash_attn == "off" and self.kv_type not in (None, "f16"):
            raise UsageError(f"--kv-type {self.kv_type} needs flash attention", "drop --flash-attn off or use --kv-type f16")
        setting_from(self.amx)  # refuses a value that is not auto, on or off (also in $EDGESPEC_AMX)


@dataclass
class GenOptions:
    """How to generate. `mode` picks the drafters (auto, model, ngram, plain); `k` fixes the draft
    length (None lets the controller choose, up to k_max)."""

    mode: Mode = Mode.AUTO
    k: int | None = None
    k_max: int = 64
    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_tokens: int = 256
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        try:
            self.mode = Mode.parse(self.mode)
        except ValueError as e:
            raise UsageError(f"--draft-mode {e}") from None
        if self.k is not None and not 0 <= self.k <= K_LIMIT:
            raise UsageError(f"--k must be >= 0, got {self.k}" if self.k < 0 else f"--k must be at most {K_LIMIT}, got {self.k}")
        if not 1 <= self.k_max <= K_LIMIT:
            raise UsageError(f"--k-max must be from 1 to {K_LIMIT}, got {self.k_max}")
        if self.max_tokens < 1:
            raise UsageError(f"--max-tokens must be >= 1, got {self.max_tokens}")
        self.stop = tuple(s for s in self.stop if s)
        if self.k is not None and self.k > self.k_max:
            self.k_max = self.k

    def check_draft(self, has_draft: bool) -> None:
        """The draft-model mode needs a draft model."""
        if self.mode is Mode.MODEL and not has_draft:
            raise UsageError("--draft-mode model needs a draft model", "pass --draft or --pair")

    def replace(self, **changes) -> "GenOptions":
        """A copy with some settings changed, checked like a new one."""
        return dataclasses.replace(self, **changes)


def sampling_params(temperature: float = 0.0, top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05) -> SamplingParams:
    """Sampler settings from user input; an out-of-range value is a usage error."""
    if temperature < 0:
        raise UsageError(f"--temp must be >= 0, got {temperature}")
    try:
        return SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    except ValueError as e:
        raise UsageError(str(e)) from e
