"""The speculative loop: draft, verify in one batched target pass, accept, roll back.

Invariant between steps: both KV caches hold `history[:-1]` (the last emitted token is fed with the
next verification batch), so a step decodes only new tokens and plain decoding (k = 0) is the same
loop with an empty draft.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator, Protocol, Sequence

import numpy as np

from edgespec import verify
from edgespec.errors import ContextOverflowError, UsageError
from edgespec.verify import SamplingParams


class LM(Protocol):
    """What the loop needs from a model (edgespec.llama.Model, or a fake in tests)."""

    n_vocab: int
    n_ctx: int
    tokens: list[int]

    def eval(self, tokens: Sequence[int], logits: str = "last") -> np.ndarray | None: ...
    def advance_to(self, tokens: Sequence[int], logits: str = "none") -> np.ndarray | None: ...
    def rollback(self, n_past: int) -> None: ...
    def is_eog(self, token: int) -> bool: ...


@dataclass
class Step:
    """One iteration of the loop, or the prefill (phase "prefill", no tokens)."""

    tokens: list[int]
    phase: str = "decode"
    drafted: int = 0
    accepted: int = 0
    t_draft: float = 0.0
    t_verify: float = 0.0
    prefill: int = 0  # prompt tokens the target evaluated (not counting those already cached)
    reused: int = 0  # prompt tokens found in the target's KV cache
    finish: str | None = None  # "stop" (end-of-generation token), "length", "context"


@dataclass
class Stats:
    """Running totals over the steps of one or more generations."""

    prompt_tokens: int = 0  # evaluated in prefill
    reused_tokens: int = 0  # found already in the KV cache
    generated: int = 0
    drafted: int = 0
    accepted: int = 0
    steps: int = 0
    draft_steps: int = 0
    t_prefill: float = 0.0
    t_decode: float = 0.0
    accepted_hist: dict[int, int] = field(default_factory=dict)

    def add(self, s: Step) -> None:
        if s.phase == "prefill":
            self.prompt_tokens += s.prefill
            self.reused_tokens += s.reused
            self.t_prefill += s.t_draft + s.t_verify
            return
        if not s.tokens:
            return
        self.generated += len(s.tokens)
        self.steps += 1
        self.t_decode += s.t_draft + s.t_verify
        if s.drafted:
            self.draft_steps += 1
            self.drafted += s.drafted
            self.accepted += s.accepted
            self.accepted_hist[s.accepted] = self.accepted_hist.get(s.accepted, 0) + 1

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def mean_accepted(self) -> float:
        """Drafted tokens accepted per verification that had a draft."""
        return self.accepted / self.draft_steps if self.draft_steps else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.generated / self.t_decode if self.t_decode > 0 else 0.0

    def as_dict(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "reused_prompt_tokens": self.reused_tokens,
            "generated_tokens": self.generated,
            "drafted": self.drafted,
            "accepted": self.accepted,
            "acceptance_rate": round(self.acceptance_rate, 4),
            "mean_accepted_length": round(self.mean_accepted, 3),
            "target_passes": self.steps,
            "tokens_per_target_pass": round(self.generated / self.steps, 3) if self.steps else 0.0,
            "prefill_s": round(self.t_prefill, 4),
            "decode_s": round(self.t_decode, 4),
            "tokens_per_s": round(self.tokens_per_s, 2),
            "accepted_histogram": {str(k): v for k, v in sorted(self.accepted_hist.items())},
        }


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    if list(a[:n]) == list(b[:n]):
        return n
    return next(i for i in range(n) if a[i] != b[i])


def _draft(model: LM, history: list[int], k: int, sp: SamplingParams, rng, q: np.ndarray, suppress) -> list[int]:
    """Propose up to k tokens after `history`; with sampling, q[i] receives the draft distribution."""
    out: list[int] = []
    logits = model.advance_to(history, logits="last")
    for i in range(k):
        row = logits[-1]
        if suppress is not None:
            row[suppress] = -np.inf
        if sp.greedy:
            t = int(np.argmax(row))
        else:
            verify.probs_from_logits(row[None, :], q[i : i + 1], sp.temperature, sp.top_k, sp.top_p, sp.min_p)
            t = verify.sample_token(q[i], float(rng.random()))
        out.append(t)
        if i + 1 == k or model.is_eog(t):
            break  # the last draft token is never fed to the draft: the target may reject it
        logits = model.eval([t], logits="last")
    return out


def generate(
    target: LM,
    draft: LM | None,
    prompt: Sequence[int],
    *,
    k: int = 4,
    sampling: SamplingParams = SamplingParams(),
    max_tokens: int = 256,
    seed: int | None = None,
    suppress: Sequence[int] = (),
) -> Iterator[Step]:
    """Yield a prefill Step, then one Step per target pass until EOG, max_tokens or a full context.

    Greedy: every token is the target's argmax given the tokens before it. Sampling: the emitted
    sequence has the target's distribution (speculative rejection sampling). Without a draft
    model, or with k = 0, this is plain decoding through the same code. `suppress` lists tokens that
    neither model may produce (e.g. end-of-generation tokens, for --ignore-eos).
    """
    if k < 0:
        raise UsageError(f"k must be >= 0, got {k}")
    if max_tokens < 1:
        raise UsageError(f"max-tokens must be >= 1, got {max_tokens}")
    if not prompt:
        raise UsageError("the prompt is empty", "give some text to continue")
    if len(prompt) >= target.n_ctx:
        raise ContextOverflowError(
            f"the prompt is {len(prompt)} tokens but the context holds {target.n_ctx}", "use a larger --ctx or a shorter prompt"
        )
    if draft is None:
        k = 0
    rng = np.random.default_rng(seed)
    ban = np.asarray(suppress, dtype=np.int64) if len(suppress) else None
    history = list(prompt)
    n_ctx = min(target.n_ctx, draft.n_ctx) if draft is not None and k else target.n_ctx
    q = np.zeros((max(k, 1), target.n_vocab if draft is None else draft.n_vocab), dtype=np.float32)

    reused = _common_prefix(target.tokens, history[:-1])
    t0 = time.perf_counter()
    target.advance_to(history[:-1])
    t1 = time.perf_counter()
    if draft is not None and k:
        draft.advance_to(history[:-1])
    yield Step([], "prefill", prefill=len(history) - 1 - reused, reused=reused, t_verify=t1 - t0, t_draft=time.perf_counter() - t1)

    emitted = 0
    while True:
        room = n_ctx - len(history)  # positions left once history[-1] is in the cache
        if room < 0:
            yield Step([], finish="context")  # nothing emitted: the context is full
            return
        k_step = min(k, max_tokens - emitted - 1, room)

        t0 = time.perf_counter()
        drafts = _draft(draft, history, k_step, sampling, rng, q, ban) if k_step > 0 else []
        t1 = time.perf_counter()

        rows = target.eval([history[-1]] + drafts, logits="all")
        if ban is not None:
            rows[:, ban] = -np.inf
        if sampling.greedy:
            n_acc, token = verify.greedy_accept(rows, np.asarray(drafts, dtype=np.int32))
        else:
            u = rng.random(len(drafts) + 1)
            n_acc, token = verify.sample_accept(
                rows, np.asarray(drafts, dtype=np.int32), q[: len(drafts)], u,
                sampling.temperature, sampling.top_k, sampling.top_p, sampling.min_p,
            )
        new = drafts[:n_acc] + [int(token)]
        target.rollback(len(history) + n_acc)  # keep history[-1] and the accepted drafts
        if draft is not None:
            draft.rollback(len(history) + n_acc)
        t2 = time.perf_counter()

        finish = None
        for i, t in enumerate(new):
            if target.is_eog(t):
                new, finish = new[: i + 1], "stop"
                break
        if finish is None and emitted + len(new) >= max_tokens:
            new, finish = new[: max_tokens - emitted], "length"
        history.extend(new)
        emitted += len(new)
        yield Step(new, drafted=len(drafts), accepted=n_acc, t_draft=t1 - t0, t_verify=t2 - t1, finish=finish)
        if finish:
            return
