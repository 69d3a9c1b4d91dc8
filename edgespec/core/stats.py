"""Step statistics: one type, one schema, for `run --json`, the bench JSON, chat's /stats and the server.

Token counts, with one meaning each:
  prompt_tokens   the prompts handed to the engine, whole
  cached_tokens   of those, the ones already in the target's KV cache (not evaluated again)
  prefill_tokens  evaluated in the prefill pass (the rest but each prompt's last token, which the
                  first decode step evaluates with its draft)
  generated_tokens  emitted by decode steps
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from edgespec.core.kinds import Drafter, Phase


@dataclass
class Stats:
    """Running totals over the steps of one or more generations (engine Steps go in through add)."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    prefill_tokens: int = 0
    generated: int = 0
    drafted: int = 0
    accepted: int = 0
    steps: int = 0  # target passes in decode steps
    draft_steps: int = 0  # of those, the ones that verified a draft
    t_prefill: float = 0.0
    t_decode: float = 0.0
    t_lookup: float = 0.0  # of t_decode: the context index (lookups and their settling)
    t_first_step: float = 0.0  # the first decode step of each generation (it emits the first token)
    generations: int = 0
    accepted_hist: dict[int, int] = field(default_factory=dict)  # accepted drafts per step -> steps
    k_hist: dict[int, int] = field(default_factory=dict)  # drafted tokens per step -> steps
    drafter_steps: dict[str, int] = field(default_factory=dict)  # drafter -> steps

    def __post_init__(self) -> None:
        self._first = False  # the next decode step is a generation's first

    def add(self, s) -> None:
        """Count one engine Step."""
        if s.phase == Phase.PREFILL:
            self.generations += 1
            self._first = True
            self.prompt_tokens += s.prompt
            self.cached_tokens += s.cached
            self.prefill_tokens += s.prefill
            self.t_prefill += s.t_draft + s.t_verify
            return
        if not s.tokens:
            return
        if self._first:
            self.t_first_step += s.t_draft + s.t_verify
            self._first = False
        self.generated += len(s.tokens)
        self.steps += 1
        _bump(self.k_hist, s.drafted)
        _bump(self.drafter_steps, str(s.drafter if s.drafted else Drafter.NONE))
        self.t_decode += s.t_draft + s.t_verify
        self.t_lookup += s.t_lookup
        if s.drafted:
            self.draft_steps += 1
            self.drafted += s.drafted
            self.accepted += s.accepted
            _bump(self.accepted_hist, s.accepted)

    def merge(self, other: "Stats") -> None:
        """self += other, field by field (histograms key by key)."""
        for f in dataclasses.fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, dict):
                for k, v in b.items():
                    a[k] = a.get(k, 0) + v
            else:
                setattr(self, f.name, a + b)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def mean_accepted(self) -> float:
        """Drafted tokens accepted per verification that had a draft."""
        return self.accepted / self.draft_steps if self.draft_steps else 0.0

    @property
    def tokens_per_s(self) -> float:
        """Decode speed: generated tokens over decode time (prefill excluded)."""
        return self.generated / self.t_decode if self.t_decode > 0 else 0.0

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prefill_tokens / self.t_prefill if self.t_prefill > 0 else 0.0

    def as_dict(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "prefill_tokens": self.prefill_tokens,
            "generated_tokens": self.generated,
            "drafted": self.drafted,
            "accepted": self.accepted,
            "acceptance_rate": round(self.acceptance_rate, 4),
            "mean_accepted_length": round(self.mean_accepted, 3),
            "target_passes": self.steps,
            "draft_steps": self.draft_steps,
            "tokens_per_target_pass": round(self.generated / self.steps, 3) if self.steps else 0.0,
            "prefill_s": round(self.t_prefill, 5),
            "prefill_tokens_per_s": round(self.prefill_tokens_per_s, 2),
            "time_to_first_token_s": round((self.t_prefill + self.t_first_step) / max(self.generations, 1), 5),
            "decode_s": round(self.t_decode, 5),
            "decode_tokens_per_s": round(self.tokens_per_s, 3),
            "lookup_us_per_step": round(1e6 * self.t_lookup / self.steps, 1) if self.steps else 0.0,
            "accepted_histogram": {str(k): v for k, v in sorted(self.accepted_hist.items())},
            "k_histogram": {str(k): v for k, v in sorted(self.k_hist.items())},
            "drafter_steps": dict(sorted(self.drafter_steps.items())),
        }


def _bump(d: dict, key) -> None:
    d[key] = d.get(key, 0) + 1
