"""The speculative loop: draft, verify in one batched target pass, accept, roll back.

Invariant between steps: both KV caches hold `history[:-1]` (the last emitted token is fed with the
next verification batch), so a step decodes only new tokens and plain decoding (k = 0) is the same
loop with an empty draft. The draft model's cache may lag behind (it sat out plain steps); it is
brought up to date when it drafts next.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np

from edgespec.core import verify
from edgespec.core.drafters import ContextDrafter, Draft, ModelDrafter
from edgespec.core.kinds import Drafter, Finish, Phase
from edgespec.core.policy import Controller
from edgespec.core.prefix import common_prefix
from edgespec.core.suffix import OutputMemory, SuffixIndex
from edgespec.core.verify import SamplingParams
from edgespec.errors import ContextOverflowError, UsageError


class LM(Protocol):
    """What the loop needs from a model (edgespec.llama.model.Model, or a stand-in)."""

    n_vocab: int
    n_ctx: int
    tokens: list[int]

    def eval(self, tokens: Sequence[int], logits: str = "last") -> np.ndarray | None: ...
    def advance_to(self, tokens: Sequence[int], logits: str = "none") -> np.ndarray | None: ...
    def rollback(self, n_past: int) -> None: ...
    def is_eog(self, token: int) -> bool: ...


@dataclass
class Step:
    """One iteration of the loop, or the prefill (phase PREFILL, no tokens)."""

    tokens: list[int]
    phase: Phase = Phase.DECODE
    drafted: int = 0
    accepted: int = 0
    t_draft: float = 0.0
    t_verify: float = 0.0
    t_lookup: float = 0.0  # of t_draft and t_verify: the context index's lookup and settling
    prompt: int = 0  # prefill: the prompt's length
    cached: int = 0  # prefill: prompt tokens found in the target's KV cache
    prefill: int = 0  # prefill: prompt tokens the target evaluated now
    finish: Finish | None = None
    drafter: Drafter = Drafter.NONE
    note: str | None = None  # prefill: why drafting is limited for this generation, when it is


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
    context: SuffixIndex | None = None,
    memory: OutputMemory | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> Iterator[Step]:
    """Yield a prefill Step, then one Step per target pass until EOG, max_tokens or a full context.

    Greedy: every token is the target's argmax given the tokens before it. Sampling: the emitted
    sequence has the target's distribution (speculative rejection sampling). `controller` picks the
    drafter and k for each step; without one the draft model drafts a fixed k (k = 0 or no draft
    model: plain decoding, through the same code). `suppress` lists tokens neither model may produce
    (end-of-generation tokens, for --ignore-eos). `context`: the index the context drafts come from,
    kept across generations by the caller (chat, server); it is brought up to date with the prompt.
    `memory`: earlier outputs drafts may also come from (a server's earlier requests).
    `clock` times the steps (a replay passes its own).
    """
    if not prompt:
        raise UsageError("the prompt is empty", "give some text to continue")
    if len(prompt) >= target.n_ctx:
        raise ContextOverflowError(
            f"the prompt is {len(prompt)} tokens but the context holds {target.n_ctx}", "use a larger --ctx or a shorter prompt"
        )
    ctl = controller or Controller.fixed(k, has_model=draft is not None)
    ctl, draft, note = _limits(ctl, target, draft)
    ctl.begin(max_tokens)
    ban = np.asarray(suppress, dtype=np.int64) if len(suppress) else None
    ngram = ContextDrafter(context, memory=memory)
    model = ModelDrafter(draft, ban, target.n_vocab) if draft is not None and ctl.uses(Drafter.MODEL) else None
    drafters = {Drafter.NGRAM: ngram, Drafter.MODEL: model}
    rng = np.random.default_rng(seed)
    history = list(prompt)
    n_ctx = min(target.n_ctx, draft.n_ctx) if model else target.n_ctx
    # proposal rows, for sampling (greedy acceptance never reads them)
    q = np.zeros((max(ctl.k_cap, 1) if not sampling.greedy else 1, target.n_vocab), dtype=np.float32)
    k_cap = max(ctl.k_cap, 1)

    cached = common_prefix(target.tokens, history[:-1])
    t0 = clock()
    target.advance_to(history[:-1])
    t1 = clock()
    if ctl.uses(Drafter.NGRAM):
        ngram.sync(history)
    if model and ctl.might_use_model() and model.usable(history):
        draft.advance_to(history[:-1])  # else it catches up when first chosen
    yield Step([], Phase.PREFILL, prompt=len(history), cached=cached, prefill=len(history) - 1 - cached,
               t_verify=t1 - t0, t_draft=clock() - t1, note=note)

    emitted = 0
    while True:
        room = n_ctx - len(history)  # positions left once history[-1] is in the cache
        if room < 0:
            yield Step([], finish=Finish.CONTEXT)  # nothing emitted: the context is full
            return
        limit = min(max_tokens - emitted - 1, room, k_cap)

        t0 = clock()
        if model and not model.usable(history):
            ctl.disable(Drafter.MODEL)  # a token the draft model lacks is in the history now
        n_gram, conf = ngram.peek(history, limit) if ctl.uses(Drafter.NGRAM) else (0, 0.0)
        t_lookup = clock() - t0
        choice = ctl.choose(n_gram, conf, limit, draft_lag=len(history) - len(draft.tokens) if model else 0,
                            context=len(history) - 1)
        d, catch_up, t_propose = Draft(), 0.0, 0.0
        if choice.k > 0:
            if choice.drafter == Drafter.MODEL and len(history) - len(draft.tokens) > 2:
                # The draft model sat out earlier steps: bring its cache up to date, timed apart so the
                # controller's per-token draft cost is not inflated by it.
                tc, lag = clock(), len(history) - 1 - len(draft.tokens)
                draft.advance_to(history[:-1])
                catch_up = clock() - tc
                ctl.observe_catch_up(lag, catch_up)
            tp = clock()
            d = drafters[choice.drafter].propose(history, choice.k, sampling, rng, q, ctl.keep_going(choice.drafter))
            t_propose = clock() - tp  # the drafting alone: not the lookup, the choice or the catch-up
        drafts = np.asarray(d.tokens, dtype=np.int32)
        t1 = clock()

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
        if model:
            model.rollback(len(history) + n_acc)
        t2 = clock()
        ctl.update(choice.drafter, d.confidence, n_acc, t_propose, t2 - t1)

        finish = None
        for i, t in enumerate(new):
            if target.is_eog(t):
                new, finish = new[: i + 1], Finish.STOP
                break
        if finish is None and emitted + len(new) >= max_tokens:
            new, finish = new[: max_tokens - emitted], Finish.LENGTH
        history.extend(new)
        emitted += len(new)
        if ctl.uses(Drafter.NGRAM):
            tl = clock()
            ctl.observe_lookups(ngram.outcomes(history))
            t_lookup += clock() - tl
        # The step's time includes the bookkeeping above (the controller learnt from t2 - t1 alone).
        yield Step(new, drafted=len(drafts), accepted=n_acc, t_draft=t1 - t0, t_verify=clock() - t1, t_lookup=t_lookup,
                   finish=finish, drafter=choice.drafter if len(drafts) else Drafter.NONE)
        if finish:
            return


def _limits(ctl: Controller, target: LM, draft: LM | None) -> tuple[Controller, LM | None, str | None]:
    """What the models allow: speculation needs caches that can drop rejected tokens."""
    if not getattr(target, "can_rollback", True):
        # Verification would leave rejected drafts in the target's state: decode plainly.
        note = "the target cannot drop rejected draft tokens from its cache (a recurrent or hybrid model): decoding plainly"
        return Controller.fixed(0, has_model=False), None, note
    if draft is not None and not getattr(draft, "can_rollback", True):
        ctl.disable(Drafter.MODEL)
        note = "the draft model cannot drop rejected tokens from its cache (a recurrent or hybrid model): drafting from the context only"
        return ctl, None, note
    return ctl, draft, None
