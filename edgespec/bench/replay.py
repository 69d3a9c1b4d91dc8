"""Replaying the real engine against recorded greedy outputs, without models.

Under greedy decoding the target's output does not depend on how it was drafted, so one plain run
per prompt (prompt tokens + generated tokens) and a measured cost curve say what any policy would do.
`replay` drives edgespec.core.engine.generate itself through stand-in models: a target whose argmax
after each position is the recorded token, and, to simulate a draft model, a draft that proposes the
recorded token with a given probability. Their decodes advance a virtual clock by what the cost
curve says at the context they attend to, so the controller sees the step times it would see on
that machine. That makes policy changes testable in seconds (scripts/replay_policy.py), and gives
a ceiling: `oracle` is the best any policy could do with the same n-gram drafter if it knew in
advance how far each lookup would be right.

It ignores the batched-numerics near-ties (a replay never diverges) and the few tenths of a
millisecond the lookup and the controller cost per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from edgespec.core.drafters import ContextDrafter
from edgespec.core.engine import generate
from edgespec.core.policy import Controller, Costs
from edgespec.core.prefix import common_prefix
from edgespec.core.stats import Stats


class VirtualClock:
    """Seconds that pass only when a stand-in model decodes."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class ScriptedLM:
    """A stand-in model over a compact vocabulary: after position p its logits favour script[p + 1]
    (with `accept` < 1, only with that probability, fixed per position: a simulated draft model),
    giving its choice the probability `confidence`. Each decode of n positions after c cached tokens
    advances the clock by cost(n, c)."""

    def __init__(self, script: Sequence[int], n_vocab: int, cost: Callable[[int, int], float], clock: VirtualClock,
                 accept: float = 1.0, seed: int = 0, confidence: float = 0.9):
        self.script = list(script)
        self.n_vocab = n_vocab
        self.top = float(np.log(confidence / (1 - confidence) * max(n_vocab - 1, 1)))  # softmax gives it `confidence`
        self.n_ctx = len(self.script) + 4096
        self.tokens: list[int] = []
        self.cost, self.clock = cost, clock
        self.right = np.random.default_rng(seed).random(len(self.script) + 1) < accept  # per position

    def _next(self, p: int) -> int:
        want = self.script[p + 1] if p + 1 < len(self.script) else 0
        return want if self.right[min(p, len(self.right) - 1)] else (want + 1) % self.n_vocab

    def eval(self, tokens: Sequence[int], logits: str = "last") -> np.ndarray | None:
        start = len(self.tokens)
        self.tokens.extend(int(t) for t in tokens)
        self.clock.now += self.cost(len(tokens), start)
        if logits == "none":
            return None
        positions = range(start, len(self.tokens)) if logits == "all" else [len(self.tokens) - 1]
        rows = np.zeros((len(positions), self.n_vocab), dtype=np.float32)
        for i, p in enumerate(positions):
            rows[i, self._next(p)] = self.top
        return rows

    def advance_to(self, tokens: Sequence[int], logits: str = "none") -> np.ndarray | None:
        p = common_prefix(self.tokens, tokens)
        if logits != "none":
            p = min(p, len(tokens) - 1)
        self.rollback(p)
        return self.eval(tokens[p:], logits) if p < len(tokens) else None

    def rollback(self, n_past: int) -> None:
        del self.tokens[n_past:]

    def is_eog(self, token: int) -> bool:
        return False


def compact(*seqs: Sequence[int]) -> tuple[list[list[int]], int]:
    """The sequences over ids 0..V-1 (V distinct tokens): equality, all the drafters look at, is kept."""
    ids: dict[int, int] = {}
    out = [[ids.setdefault(int(t), len(ids)) for t in s] for s in seqs]
    return out, len(ids) + 1


@dataclass
class Replay:
    speedup: float  # plain time / replayed time
    k_hist: dict[int, int] = field(default_factory=dict)
    drafted: int = 0
    accepted: int = 0
    stats: Stats = field(default_factory=Stats)


def replay(prompt: Sequence[int], output: Sequence[int], costs: Costs,
           make_controller: Callable[[Costs], Controller] | None = None, draft_accept: float | None = None,
           seed: int = 0) -> Replay:
    """Run the engine with a fresh controller (auto mode) over a recorded greedy output.

    draft_accept: also give it a draft model that proposes the recorded token with this probability
    (its tokens cost costs.draft_token each); None: no draft model, drafts come from the context only.
    """
    (p, out), n_vocab = compact(prompt, output)
    clock = VirtualClock()
    target = ScriptedLM(p + out, n_vocab, costs.verify_cost, clock)
    draft = None
    if draft_accept is not None:
        draft = ScriptedLM(p + out, n_vocab, lambda n, _: n * costs.draft_token, clock, accept=draft_accept, seed=seed)
    own = Costs(dict(costs.verify), draft_token=costs.draft_token, draft_agreement=costs.draft_agreement,
                position=costs.position, attend=costs.attend, attend_base=costs.attend_base)
    ctl = (make_controller or (lambda c: Controller(c, mode="auto", has_model=draft is not None)))(own)
    stats = Stats()
    for step in generate(target, draft, p, max_tokens=len(out), controller=ctl, clock=clock):
        stats.add(step)
    r = Replay(plain_seconds(len(p), len(out), costs) / stats.t_decode if stats.t_decode else 1.0, stats=stats)
    r.k_hist, r.drafted, r.accepted = dict(stats.k_hist), stats.drafted, stats.accepted
    return r


def plain_seconds(prompt: int, n: int, costs: Costs) -> float:
    """Plain decoding's time for n tokens after a prompt of `prompt` tokens: the i-th token's step
    attends to prompt + i - 1 cached tokens."""
    return sum(costs.verify_cost(1, prompt + i - 1) for i in range(n))


def oracle(prompt: Sequence[int], output: Sequence[int], costs: Costs, k_max: int = 64) -> float:
    """The best speed-up over plain decoding any choice of k (0..k_max) per step could reach with
    the n-gram drafter, knowing how far each lookup will be right (dynamic programming)."""
    drafter = ContextDrafter()
    n = len(output)
    right = []
    for i in range(n):
        cont, _ = drafter.lookup(list(prompt) + list(output[:i]), k_max)
        right.append(common_prefix(cont, output[i:]))
    best = [0.0] * (n + 1)  # best[i]: least time to produce output[i:]
    for i in range(n - 1, -1, -1):
        ctx = len(prompt) + i - 1  # cached before the step that starts at output[i]
        b = costs.verify_cost(1, ctx) + best[i + 1]
        for k in range(1, min(right[i], n - i - 1) + 1):
            b = min(b, costs.verify_cost(k + 1, ctx) + best[i + k + 1])
        best[i] = b
    return plain_seconds(len(prompt), n, costs) / best[0] if n else 1.0


def traces_from_bench(doc: dict) -> dict:
    """A bench JSON (`edgespec bench --json`, greedy) as replay traces: each prompt's token ids and its
    plain reply from the first repeat, the calibrated cost curve the run used, and every mode's measured
    speed-up per prompt (median over repeats) to set beside the replay."""
    if not doc.get("settings", {}).get("greedy", True):
        raise ValueError("a sampling run cannot be replayed: its output depends on how it was drafted")
    calib = doc.get("calibration") or {}
    if "verify_s" not in calib:
        raise ValueError("this bench JSON has no calibrated cost curve (no adaptive mode ran)")
    plain: dict[str, list[int]] = {}
    measured: dict[str, dict[str, list[float]]] = {}
    for r in doc["runs"]:
        if r["mode"] == "plain" and r.get("token_ids") is not None:
            plain.setdefault(r["prompt"], r["token_ids"])
        if r.get("speedup") is not None and r["mode"] != "plain":
            measured.setdefault(r["prompt"], {}).setdefault(r["mode"], []).append(r["speedup"])
    prompts = []
    for p in doc["prompts"]:
        if p.get("token_ids") is None or p["id"] not in plain:
            raise ValueError(f"prompt {p['id']!r} has no token ids (a bench JSON written before they were recorded?)")
        prompts.append({"id": p["id"], "category": p["category"], "prompt": p["token_ids"], "answer": plain[p["id"]],
                        "measured": {m: float(np.median(v)) for m, v in measured.get(p["id"], {}).items()}})
    target = (doc.get("models") or {}).get("target") or {}
    return {"target": target.get("path", "?"), "verify_s": calib["verify_s"], "position": calib.get("position", 256),
            "attend_s": calib.get("attend_s"), "attend_base_s": calib.get("attend_base_s", 0.0), "prompts": prompts, "machine": doc.get("machine")}


def costs_from_traces(data: dict, context: bool = True) -> Costs:
    """The cost curve a trace file (or traces_from_bench) holds; context=False leaves out how batches
    grow with the context (every batch costs what it did at calibration)."""
    return Costs({int(n): v for n, v in data["verify_s"].items()}, position=int(data.get("position", 256)),
                 attend=data.get("attend_s") if context else None, attend_base=(data.get("attend_base_s") or 0.0) if context else 0.0)
