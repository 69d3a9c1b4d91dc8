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

from edgespec.core import verify
from edgespec.core.drafters import Draft, ModelDrafter, NgramDrafter
from edgespec.errors import ContextOverflowError, UsageError
from edgespec.core.policy import Controller, Costs
from edgespec.core.prefix import common_prefix
from edgespec.core.verify import SamplingParams


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
    drafter: str = "none"  # where this step's drafts came from: "model", "ngram" or "none"
    note: str | None = None  # prefill: why drafting is limited for this generation, when it is


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
    accepted_hist: dict[int, int] = field(default_factory=dict)  # accepted drafts per step -> steps
    k_hist: dict[int, int] = field(default_factory=dict)  # drafted tokens per step -> steps
    drafter_steps: dict[str, int] = field(default_factory=dict)  # drafter -> steps

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
        self.k_hist[s.drafted] = self.k_hist.get(s.drafted, 0) + 1
        self.drafter_steps[s.drafter] = self.drafter_steps.get(s.drafter, 0) + 1
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
            "k_histogram": {str(k): v for k, v in sorted(self.k_hist.items())},
            "drafter_steps": dict(sorted(self.drafter_steps.items())),
        }


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
    controller: Controller | None = None,
) -> Iterator[Step]:
    """Yield a prefill Step, then one Step per target pass until EOG, max_tokens or a full context.

    Greedy: every token is the target's argmax given the tokens before it. Sampling: the emitted
    sequence has the target's distribution (speculative rejection sampling). `controller` picks the
    drafter (draft model, n-gram lookup, none) and k for each step; without one, the draft model
    drafts a fixed k (k = 0 or no draft model: plain decoding, through the same code). `suppress`
    lists tokens neither model may produce (end-of-generation tokens, for --ignore-eos).
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
    ctl = controller or Controller(Costs({1: 1.0}), mode="model" if draft is not None else "none", k=k, has_model=draft is not None)
    note = None
    if not getattr(target, "can_rollback", True):
        # Verification would leave rejected drafts in the target's state: decode plainly.
        ctl, draft = Controller(Costs({1: 1.0}), mode="none", k=0, has_model=False), None
        note = "the target cannot drop rejected draft tokens from its cache (a recurrent or hybrid model): decoding plainly"
    elif draft is not None and not getattr(draft, "can_rollback", True):
        ctl.has_model, draft = False, None
        note = "the draft model cannot drop rejected tokens from its cache (a recurrent or hybrid model): drafting from the context only"
    ban = np.asarray(suppress, dtype=np.int64) if len(suppress) else None
    drafters = {"ngram": NgramDrafter()}
    if draft is not None and ctl.mode in ("auto", "model"):
        drafters["model"] = ModelDrafter(draft, ban, target.n_vocab)
    rng = np.random.default_rng(seed)
    history = list(prompt)
    n_ctx = min(target.n_ctx, draft.n_ctx) if "model" in drafters else target.n_ctx
    q = np.zeros((ctl.k_max if ctl.k_fixed is None else max(ctl.k_fixed, 1), target.n_vocab), dtype=np.float32)

    reused = common_prefix(target.tokens, history[:-1])
    t0 = time.perf_counter()
    target.advance_to(history[:-1])
    t1 = time.perf_counter()
    if "model" in drafters and ctl.might_use_model() and drafters["model"].usable(history):
        draft.advance_to(history[:-1])  # else it catches up when first chosen
    yield Step([], "prefill", prefill=len(history) - 1 - reused, reused=reused, t_verify=t1 - t0, t_draft=time.perf_counter() - t1,
               note=note)

    emitted = 0
    while True:
        room = n_ctx - len(history)  # positions left once history[-1] is in the cache
        if room < 0:
            yield Step([], finish="context")  # nothing emitted: the context is full
            return
        limit = min(max_tokens - emitted - 1, room, len(q))

        t0 = time.perf_counter()
        if ctl.has_model and "model" in drafters and not drafters["model"].usable(history):
            ctl.has_model = False  # a token the draft model lacks is in the history now
        n_gram, conf = drafters["ngram"].peek(history, limit) if ctl.mode in ("auto", "ngram") else (0, 0.0)
        choice = ctl.choose(n_gram, conf, limit)
        d, catch_up = Draft(), 0.0
        if choice.drafter == "model" and choice.k > 0 and len(history) - len(draft.tokens) > 2:
            # The draft model sat out earlier steps: bring its cache up to date, timed apart so the
            # controller's per-token draft cost is not inflated by it.
            tc = time.perf_counter()
            draft.advance_to(history[:-1])
            catch_up = time.perf_counter() - tc
        if choice.k > 0:
            d = drafters[choice.drafter].propose(history, choice.k, sampling, rng, q, ctl.keep_going(choice.drafter))
        drafts = np.asarray(d.tokens, dtype=np.int32)
        t1 = time.perf_counter()

        rows = target.eval([history[-1]] + d.tokens, logits="all")
        if ban is not None:
            rows[:, ban] = -np.inf
        if sampling.greedy:
            n_acc, token = verify.greedy_accept(rows, drafts)
        else:
            u = rng.random(len(drafts) + 1)
            n_acc, token = verify.sample_accept(
                rows, drafts, q[: len(drafts)], u, sampling.temperature, sampling.top_k, sampling.top_p, sampling.min_p
            )
        new = d.tokens[:n_acc] + [int(token)]
        target.rollback(len(history) + n_acc)  # keep history[-1] and the accepted drafts
        if "model" in drafters:
            drafters["model"].rollback(len(history) + n_acc)
        t2 = time.perf_counter()
        ctl.update(choice.drafter, d.confidence, n_acc, t1 - t0 - catch_up, t2 - t1)

        finish = None
        for i, t in enumerate(new):
            if target.is_eog(t):
                new, finish = new[: i + 1], "stop"
                break
        if finish is None and emitted + len(new) >= max_tokens:
            new, finish = new[: max_tokens - emitted], "length"
        history.extend(new)
        emitted += len(new)
        if ctl.mode in ("auto", "ngram"):
            ctl.observe_lookups(drafters["ngram"].outcomes(history))
        # The step's time includes the bookkeeping above (the controller learnt from t2 - t1 alone).
        yield Step(new, drafted=len(drafts), accepted=n_acc, t_draft=t1 - t0, t_verify=time.perf_counter() - t1,
                   finish=finish, drafter=choice.drafter if len(drafts) else "none")
        if finish:
            return
