"""Replaying the controller against recorded greedy outputs, without models.

Under greedy decoding the target's output does not depend on how it was drafted, so one plain run
per prompt (prompt tokens + generated tokens) and a measured cost curve say what any n-gram policy
would do: each step the controller chooses k, the draft is accepted as far as it agrees with the
recorded output, and the step costs verify_cost(k + 1). That makes policy changes testable in
seconds (scripts/replay_policy.py), and gives a ceiling: `oracle` is the best any policy could do
with the same drafter if it knew in advance how far each lookup would be right.

It ignores the batched-numerics near-ties (a replay never diverges) and the few tenths of a
millisecond the lookup and the controller cost per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from edgespec.core.drafters import NgramDrafter
from edgespec.core.policy import Controller, Costs
from edgespec.core.prefix import common_prefix
from edgespec.core.verify import SamplingParams

_GREEDY = SamplingParams()


@dataclass
class Replay:
    speedup: float  # plain time / replayed time
    k_hist: dict[int, int] = field(default_factory=dict)
    drafted: int = 0
    accepted: int = 0


def replay(prompt: Sequence[int], output: Sequence[int], costs: Costs,
           make_controller: Callable[[Costs], Controller] | None = None) -> Replay:
    """Run the controller (auto mode, no draft model) over a recorded greedy output."""
    true = Costs(dict(costs.verify))  # what steps cost; the controller gets its own copy to refresh
    ctl = (make_controller or (lambda c: Controller(c, mode="auto", has_model=False)))(Costs(dict(costs.verify)))
    drafter = NgramDrafter()
    history, i, spent, r = list(prompt), 0, 0.0, Replay(0.0)
    n = len(output)
    while i < n:
        limit = min(n - i - 1, ctl.k_max)
        avail, conf = drafter.peek(history, limit)
        choice = ctl.choose(avail, conf, limit)
        draft = drafter.propose(history, choice.k, _GREEDY, None, None, lambda c: True) if choice.k else None
        tokens = draft.tokens if draft else []
        acc = common_prefix(tokens, output[i:])
        t = true.verify_cost(len(tokens) + 1)
        ctl.update(choice.drafter if tokens else "none", draft.confidence if draft else [], acc, 0.0, t)
        new = list(output[i : i + acc + 1])
        history += new
        i += len(new)
        ctl.observe_lookups(drafter.outcomes(history))
        spent += t
        r.k_hist[len(tokens)] = r.k_hist.get(len(tokens), 0) + 1
        r.drafted += len(tokens)
        r.accepted += acc
    r.speedup = n * true.verify_cost(1) / spent if spent else 1.0
    return r


def oracle(prompt: Sequence[int], output: Sequence[int], costs: Costs, k_max: int = 16) -> float:
    """The best speed-up over plain decoding any choice of k (0..k_max) per step could reach with
    the n-gram drafter, knowing how far each lookup will be right (dynamic programming)."""
    drafter = NgramDrafter()
    n = len(output)
    right = []
    for i in range(n):
        cont, _ = drafter.lookup(list(prompt) + list(output[:i]), k_max)
        right.append(common_prefix(cont, output[i:]))
    best = [0.0] * (n + 1)  # best[i]: least time to produce output[i:]
    for i in range(n - 1, -1, -1):
        b = costs.verify_cost(1) + best[i + 1]
        for k in range(1, min(right[i], n - i - 1) + 1):
            b = min(b, costs.verify_cost(k + 1) + best[i + k + 1])
        best[i] = b
    return n * costs.verify_cost(1) / best[0] if n else 1.0
