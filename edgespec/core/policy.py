"""How much to speculate: a measured cost model, acceptance estimates, and the controller.

The controller picks, before each step, the drafter and draft length k that maximise expected
tokens per second, with plain decoding (k = 0) always a candidate:

    E[tokens | k, a] = 1 + a + a^2 + ... + a^k      (the target always adds one token)
    T(k)             = k * draft_cost + verify_cost(k + 1)   (at the context the batch attends to)

On a compute-bound CPU verify_cost grows almost linearly with k, so a draft model rarely pays; on a
GPU verification is nearly free and it does. Nothing here assumes which case it is: the costs are
measured (edgespec.machine.calibrate) and refreshed from the real step timings.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Sequence

from edgespec.core.kinds import Drafter, Mode
MODEL_EDGES = (0.0, 0.3, 0.5, 0.7, 0.85, 0.95)  # the draft model's own probability of its token
MODEL_PRIOR = (0.2, 0.4, 0.6, 0.75, 0.85, 0.92)  # a calibrated draft is accepted about that often
_LENGTHS = (0, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
_ALIGNED = 1000  # edgespec.core.drafters.ALIGNED: drafts that resume the copy in progress are rated apart
NGRAM_EDGES = _LENGTHS + tuple(_ALIGNED + e for e in _LENGTHS)
NGRAM_PRIOR = ((0.45, 0.6, 0.7, 0.75, 0.85, 0.87, 0.88, 0.9, 0.93, 0.95, 0.98)
               + (0.7, 0.85, 0.88, 0.9, 0.92, 0.94, 0.96, 0.97, 0.98, 0.985, 0.99))
CATCH_UP_STEPS = 16  # steps a draft model that was brought up to date is expected to serve
RISK_HORIZON = 512  # tokens of an answer the loss allowance is reckoned over (at most its budget)


@dataclass
class Costs:
    """What steps cost here: seconds per target decode of n positions (logits at each), per draft-model
    token, per n-gram lookup; and how fast the machine runs now compared with when they were measured.

    The measured curve is a shape; `scale` is the machine's speed now relative to it. Real steps
    refresh both: the scale from the median of the last observations' ratios to the curve, whatever
    their size (a machine that slows down slows every batch size alike, so drafting never looks
    cheaper than it is because only the sizes in use were refreshed), and each size's own point only
    with what is left once the scale is taken out, and only while other sizes are being observed too
    (else nothing tells the point from the scale): where the median of a size's last `settle`
    residuals says it is off the curve by more than 5%, the point moves there (a mis-measured point
    corrects itself in a few steps). A median, not a running blend: a blend that believed faster
    steps more than slower ones (noise only ever adds time) walked the size in use down step after
    step even on a steady machine, until, after a few hundred plain steps, a 16-position batch looked
    like 100 single steps and nothing was drafted any more.

    A batch costs more after a long context than after a short one: each of its positions attends to
    every cached one. Calibration times the curve at `position` tokens of context and a few sizes
    again after a longer one; what that adds is a line in the batch size: `attend_base` per batch
    plus `attend` per position, seconds per 1,000 tokens of context (a line fitted over the sizes,
    as each size's own difference is a small one between two noisy timings). `context` (set by the controller each
    step) is the context the next batch attends to. Real steps are compared with the curve at their
    own context, so the scale measures the machine's speed, not the answer's length.
    """

    verify: dict[int, float]
    draft_token: float | None = None
    ngram_lookup: float = 5e-5
    # How often the draft model's greedy token was the target's, per MODEL_EDGES bucket of its own
    # probability: [hits, tries] each, measured by calibration on a sample text. The acceptance prior.
    draft_agreement: list[list[int]] | None = None
    scale: float = 1.0
    window: int = 15  # observations the scale's median is taken over
    settle: int = 5  # a size's own observations its correction waits for
    # Bringing a lagging draft model up to date: seconds per lagging token, in the curve's units
    # (None: not seen yet; estimated from the draft's token cost and the target's batch efficiency).
    catch_up_token: float | None = None
    frozen: bool = False  # no refresh from real steps: choices then depend on nothing timed (seeded sampling)
    position: int = 256  # tokens in the cache before the batches `verify` was measured with
    attend: float | None = None  # seconds per batch position per 1,000 tokens of context beyond `position` (None: not measured)
    attend_base: float = 0.0  # ... and per batch
    context: int | None = None  # tokens in the cache before the next batch (None: `position`)
    _ratios: list[tuple[float, int]] = field(default_factory=list, repr=False)  # (seconds / curve, size), latest last
    _residuals: dict[int, list[float]] = field(default_factory=dict, repr=False)
    _sizes: list[int] = field(default_factory=list, repr=False, compare=False)

    def shape(self, n: int) -> float:
        """The measured curve: linear interpolation between sizes, linear extrapolation past the last one."""
        v = self.verify
        if n in v:
            return v[n]
        if len(self._sizes) != len(v):  # sizes are only ever added (a refreshed batch size new to the curve)
            self._sizes = sorted(v)
        sizes = self._sizes
        i = bisect.bisect_left(sizes, n)  # sizes[i - 1] < n < sizes[i]
        if i == 0:  # below the smallest size measured: that one's cost
            return v[sizes[0]]
        lo = sizes[i - 1]
        if i == len(sizes):
            prev = sizes[i - 2] if i >= 2 else None
            slope = (v[lo] - v[prev]) / (lo - prev) if prev else v[lo] / lo
            return v[lo] + slope * (n - lo)
        hi = sizes[i]
        w = (n - lo) / (hi - lo)
        return v[lo] * (1 - w) + v[hi] * w

    def growth_at(self, n: int, context: int | None = None) -> float:
        """How much more a batch of n costs after `context` tokens (default: `self.context`) than at
        calibration, as a factor (never below half: a context far shorter than `position`)."""
        context = self.context if context is None else context
        if not (self.attend or self.attend_base) or context is None or context == self.position:
            return 1.0
        extra = (self.attend_base + (self.attend or 0.0) * n) * (context - self.position) / 1000.0
        return max(0.5, 1.0 + extra / self.shape(n))

    def verify_cost(self, n: int, context: int | None = None) -> float:
        """Seconds for a batch of n positions now, after `context` tokens (default: `self.context`)."""
        return self.scale * self.shape(n) * self.growth_at(n, context)

    def draft_cost(self) -> float | None:
        return None if self.draft_token is None else self.scale * self.draft_token

    def catch_up_cost(self, lag: int) -> float:
        """Seconds to feed `lag` tokens the draft model has not seen (one batch)."""
        if lag <= 0 or self.draft_token is None:
            return 0.0
        per = self.catch_up_token
        if per is None:  # the draft in one batch, as efficient as the target's batches of that size
            per = self.draft_token * self.shape(min(lag, max(self.verify))) / (self.shape(1) * min(lag, max(self.verify)))
        return self.scale * per * lag

    @staticmethod
    def _median(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    def _settle(self, key, old: float, residual: float) -> float:
        """The value after one more observation `residual` (observed / old): unchanged until `settle`
        of them agree on a change of more than 5% (their median), then that change."""
        res = self._residuals.setdefault(key, [])
        res.append(residual)
        if len(res) < self.settle:
            return old
        m = self._median(res)
        self._residuals[key] = []
        return old * m if abs(m - 1) > 0.05 else old

    def observe_verify(self, n: int, seconds: float) -> None:
        if seconds <= 0 or self.frozen:
            return
        point = self.shape(n)
        seconds /= self.growth_at(n)  # as if at the calibration's context
        self._ratios = (self._ratios + [(seconds / point, n)])[-self.window :]
        self.scale = self._median([r for r, _ in self._ratios])
        if len({size for _, size in self._ratios}) < 2:
            return  # only this size seen lately: the scale says it all, and nothing says its point is off
        new = self._settle(n, point, seconds / self.scale / point)
        if new != point:
            self.verify[n] = new

    def observe_draft(self, per_token: float) -> None:
        if self.frozen:
            return
        new = per_token / self.scale
        self.draft_token = new if self.draft_token is None else self._settle("draft", self.draft_token, new / self.draft_token)

    def observe_catch_up(self, lag: int, seconds: float) -> None:
        if lag > 0 and seconds > 0 and not self.frozen:
            new = seconds / self.scale / lag
            self.catch_up_token = new if self.catch_up_token is None else self._settle("catch-up", self.catch_up_token, new / self.catch_up_token)

    def snapshot(self) -> dict:
        """The curve at the machine's current speed (at `position`), to be saved as the new calibration."""
        return {"verify": {n: self.scale * self.shape(n) for n in sorted(self.verify)}, "draft_token": self.draft_cost(),
                "position": self.position, "attend": None if self.attend is None else self.scale * self.attend,
                "attend_base": self.scale * self.attend_base}


@dataclass
class Acceptance:
    """Acceptance probability by confidence bucket, Beta-smoothed towards a prior."""

    edges: Sequence[float]  # bucket lower bounds, ascending
    prior: Sequence[float]  # prior mean per bucket
    weight: float = 4.0  # prior strength, in observations
    hits: list[float] = field(default_factory=list)
    tries: list[float] = field(default_factory=list)

    def __post_init__(self):
        self.hits = self.hits or [0.0] * len(self.edges)
        self.tries = self.tries or [0.0] * len(self.edges)

    def bucket(self, conf: float) -> int:
        """The last bucket whose lower bound is <= conf (the first for anything below it)."""
        return max(bisect.bisect_right(self.edges, conf) - 1, 0)

    def p(self, conf: float) -> float:
        return self._mean(self.bucket(conf))

    def _mean(self, b: int) -> float:
        return (self.hits[b] + self.weight * self.prior[b]) / (self.tries[b] + self.weight)

    def cautious(self, conf: float) -> float:
        """The estimate less one standard error: what a choice that risks a long batch should rely on.
        It approaches the mean as observations accumulate (evidence, not exploration, buys long drafts)."""
        return self._cautious(self.bucket(conf))

    def _cautious(self, b: int) -> float:
        m = self._mean(b)
        return max(0.0, m - (m * (1 - m) / (self.tries[b] + self.weight + 1)) ** 0.5)

    def cautious_run(self, conf: float, n: int) -> list[float]:
        """cautious(conf + i) for i < n, each bucket computed once (a choice asks this every step)."""
        out: list[float] = []
        edges, b = self.edges, self.bucket(conf)
        v = self._cautious(b)
        nxt = edges[b + 1] if b + 1 < len(edges) else float("inf")
        for i in range(n):
            if conf + i >= nxt:
                b = self.bucket(conf + i)
                v = self._cautious(b)
                nxt = edges[b + 1] if b + 1 < len(edges) else float("inf")
            out.append(v)
        return out

    def update(self, confidence: Sequence[float], accepted: int) -> None:
        """Tokens before `accepted` were accepted, the one at `accepted` rejected, later ones unseen."""
        for i, c in enumerate(confidence[: accepted + 1]):
            b = self.bucket(c)
            self.tries[b] += 1
            self.hits[b] += 1.0 if i < accepted else 0.0


def expected_tokens(accept: Sequence[float]) -> float:
    """1 + P(first accepted) + P(first two accepted) + ..."""
    total, run = 1.0, 1.0
    for a in accept:
        run *= a
        total += run
    return total


def speedup(costs: Costs, k: int, accept: float, per_token: float) -> float:
    """Predicted speed relative to plain decoding for k drafts at a per-token acceptance rate
    (per_token: seconds per drafted token, at the costs' current scale)."""
    return expected_tokens([accept] * k) / (k * per_token + costs.verify_cost(k + 1)) * costs.verify_cost(1)


def break_even(costs: Costs, per_token: float, k_max: int) -> float | None:
    """The lowest per-token acceptance at which some k <= k_max beats plain decoding (None: none does)."""
    for a100 in range(0, 101):
        a = a100 / 100
        if any(speedup(costs, k, a, per_token) > 1.0 for k in range(1, k_max + 1)):
            return a
    return None


@dataclass
class Choice:
    drafter: Drafter
    k: int


class Controller:
    """Chooses drafter and k per step; learns acceptance and costs from the steps it sees.

    mode: auto (every drafter and plain decoding compete), model, ngram or plain. k: a fixed draft
    length (for comparisons) or None to let the cost model choose up to k_max.
    """

    def __init__(self, costs: Costs, *, mode: Mode | str = Mode.AUTO, k: int | None = None, k_max: int = 64,
                 has_model: bool = True, margin: float = 0.03, risk: float = 0.02):
        self.costs = costs
        self.mode = Mode.parse(mode)
        if k is not None and k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        self.k_fixed = k
        self.k_max = k_max
        self.has_model = has_model
        self.margin = margin  # speculation must beat plain decoding by this much to be chosen
        # Draft model: confidence is its own probability of the token. The prior is what calibration
        # measured for this pair, where it did (blended with a generic one by bucket size), else generic.
        prior, self.model_rate = list(MODEL_PRIOR), 0.6  # model_rate: per-token acceptance, for planning
        if costs.draft_agreement and sum(t for _, t in costs.draft_agreement):
            prior = [(h + 4 * p) / (t + 4) for (h, t), p in zip(costs.draft_agreement, MODEL_PRIOR)]
            self.model_rate = sum(h for h, _ in costs.draft_agreement) / sum(t for _, t in costs.draft_agreement)
        self.model_acc = Acceptance(edges=MODEL_EDGES, prior=prior)
        # N-gram: confidence of a drafted token is the match length it extends (2..64 + position).
        # Prior: per-token acceptance by that length over the greedy answers of the shipped bench
        # suite with the default pair (all categories pooled), rounded down: a 2-token match is a
        # coin flip, a copy that has run for 64 tokens almost always goes on. Every step settles a
        # lookup (observe_lookups), so estimates firm up fast; choices use a cautious estimate (one
        # standard error below the mean), so a few lucky matches early in an answer do not buy a
        # 16-position batch on a CPU where that costs nine plain steps.
        self.ngram_acc = Acceptance(edges=NGRAM_EDGES, prior=NGRAM_PRIOR, weight=16.0)
        # The estimates are per token and learnt over the whole answer, and a step is drafted exactly
        # when they look good: where they are too hopeful for this text (short rows copied from a
        # table: every match looks like a copy, few go on) the drafts that are chosen fail more often
        # than predicted, and where a long copy outruns them they succeed more often. So the drafted
        # tokens expected of each chosen context draft are compared with those accepted, and the
        # ratio (towards 1 by `calibration_weight` tokens) scales the drafted part of the next
        # estimates. On the edit suite's replay this lifts the lowest prompt from 0.968x to 0.998x
        # plain on the AMD curve, with the short suite unchanged.
        self.calibration_weight = 24.0
        self._ngram_expected = 0.0  # drafted tokens the estimates promised, over this controller's context drafts
        self._ngram_accepted = 0.0  # ... and those accepted
        self.drafted = 0
        self.accepted = 0
        self.warned = False
        # While it speculates, the controller never sees a plain step's cost again, and a one-token
        # point measured badly (a calibration taken on a busy machine) would stay wrong: a plain step
        # every `probe_every` speculative ones checks it. Each check that agrees doubles the interval
        # (up to 256 steps), so a long verbatim copy is hardly interrupted; one that does not resets it.
        self.probe_every = 16
        self.since_plain = 0
        self._probing = False
        # What drafting may lose in one answer. Choosing by expected speed is right on average, but
        # one long draft that fails costs a steep CPU many plain steps (16 positions: 6-9 of them on
        # the AMD machines), and a short answer has no time to win it back: a 15-token draft taken
        # on a 17-token match in a 64-token chat answer, 1 token accepted, made it 0.93x plain. So in
        # auto mode a draft is chosen only if, should it all be rejected, what drafting has lost in
        # this answer (in plain steps, by the cost model) stays within `risk` of the answer's plain
        # decoding time (over its budget, up to RISK_HORIZON tokens) plus what drafting has gained
        # in it so far. Once copies pay, gains buy longer drafts; until then drafts start short.
        self.risk = risk
        self._allowance = 0.0  # plain steps; begin() sets it from the answer's budget
        self._banked = 0.0  # plain steps drafting has saved (negative: lost) in this answer, by the cost model
        self.begin(RISK_HORIZON)

    @classmethod
    def fixed(cls, k: int, *, has_model: bool) -> "Controller":
        """The draft model at a fixed k (k = 0, or no draft model: plain decoding); no costs needed."""
        mode = Mode.MODEL if has_model and k > 0 else Mode.PLAIN
        return cls(Costs({1: 1.0}), mode=mode, k=k, k_max=max(k, 1), has_model=has_model)

    @property
    def k_cap(self) -> int:
        """The longest draft this controller can ask for."""
        return self.k_max if self.k_fixed is None else self.k_fixed

    @property
    def adaptive(self) -> bool:
        """Whether it chooses k from measured costs (and so refreshes them worth saving)."""
        return self.k_fixed is None and self.mode is not Mode.PLAIN

    def uses(self, drafter: Drafter) -> bool:
        """Whether this drafter may run at all in this mode (the loop skips what cannot be chosen)."""
        if drafter == Drafter.MODEL and not self.has_model:
            return False
        return self.mode.allows(drafter)

    def disable(self, drafter: Drafter) -> None:
        """Stop offering a drafter for the rest of the generation (the model cannot serve it)."""
        if drafter == Drafter.MODEL:
            self.has_model = False

    def begin(self, budget: int) -> None:
        """A new answer of at most `budget` tokens: its loss allowance starts afresh (what was learnt stays)."""
        self._allowance = self.risk * min(budget, RISK_HORIZON)
        self._banked = 0.0

    @property
    def loss_room(self) -> float:
        """Plain steps a draft chosen now may lose if it is all rejected."""
        return self._allowance + self._banked

    # ------------------------------------------------------------------ choosing
    def might_use_model(self) -> bool:
        """Whether the draft model can be chosen at all (else its prefill is wasted work)."""
        if not self.uses(Drafter.MODEL) or self.k_fixed == 0:
            return False
        if self.mode is Mode.MODEL or self.k_fixed is not None:
            return True
        # auto: worth preparing only if it could beat plain decoding at the acceptance it has shown
        return self.costs.draft_token is not None and self._best_k(Drafter.MODEL, [self.model_rate] * self.k_max, self.costs.draft_cost())[0] \
            >= (1 + self.margin) / self.costs.verify_cost(1)

    def choose(self, ngram_len: int = 0, ngram_conf: float = 0.0, k_limit: int | None = None, draft_lag: int = 0,
               context: int | None = None) -> Choice:
        """ngram_len: tokens the context lookup could propose now (0: no match); k_limit: room left;
        draft_lag: tokens the draft model would have to catch up on before it could draft; context:
        tokens in the target's cache before this step's batch (its costs, and the step's update, are
        taken there; None: where the last choice was)."""
        if context is not None:
            self.costs.context = context
        k_max = min(self.k_max, k_limit) if k_limit is not None else self.k_max
        none = Choice(Drafter.NONE, 0)
        if self.mode is Mode.PLAIN or k_max <= 0:
            return none
        if self.k_fixed is not None:
            k = min(self.k_fixed, k_max)
            if k == 0:
                return none
            if self.uses(Drafter.MODEL):
                return Choice(Drafter.MODEL, k)
            if self.uses(Drafter.NGRAM) and ngram_len:
                return Choice(Drafter.NGRAM, min(k, ngram_len))
            return none

        one = self.costs.verify_cost(1)
        plain = 1.0 / one
        # auto: the most a draft may cost beyond a plain step if it is all rejected (see `risk`)
        room = one * self.loss_room if self.mode is Mode.AUTO else float("inf")
        options: list[tuple[float, Choice]] = []
        if self.uses(Drafter.MODEL) and self.costs.draft_token is not None:
            # Catching up is paid once and then serves the steps after it: charged over CATCH_UP_STEPS
            # (all of it counts against the loss allowance: it is paid now).
            lag_cost = self.costs.catch_up_cost(draft_lag - 1) if draft_lag > 2 else 0.0
            options.append(self._best_k(Drafter.MODEL, [self.model_rate] * k_max, self.costs.draft_cost(),
                                        lag_cost / CATCH_UP_STEPS, max_loss=room - lag_cost))
        if self.uses(Drafter.NGRAM) and ngram_len:
            # Per position: the i-th drafted token extends the match to ngram_conf + i tokens.
            n = min(ngram_len, k_max)
            options.append(self._best_k(Drafter.NGRAM, self.ngram_acc.cautious_run(ngram_conf, n), 0.0,
                                        gain=self.ngram_calibration, max_loss=room))
        options = [o for o in options if o[0] > 0]  # rate 0: no k within the loss allowance
        if not options:
            return none
        if self.mode is Mode.AUTO and self.since_plain >= self.probe_every:
            self._probing = True
            return none
        rate, choice = max(options, key=lambda o: o[0])
        if self.mode is Mode.AUTO and rate < plain * (1 + self.margin):
            return none
        return choice

    @property
    def ngram_calibration(self) -> float:
        """Drafted tokens accepted per drafted token expected, over this controller's context drafts so
        far, shrunk towards 1 by `calibration_weight` expected tokens."""
        w = self.calibration_weight
        return (self._ngram_accepted + w) / (self._ngram_expected + w)

    def _best_k(self, drafter: Drafter, accept: list[float], per_token: float, fixed: float = 0.0,
                gain: float = 1.0, max_loss: float = float("inf")) -> tuple[float, Choice]:
        """The k with the most expected tokens per second; gain scales the drafted part of the expectation.
        max_loss: seconds a k may cost beyond a plain step (if every drafted token is rejected); none
        within it: rate 0."""
        fixed += self.costs.ngram_lookup if drafter == Drafter.NGRAM else 0.0
        one = self.costs.verify_cost(1)
        best = (0.0, Choice(drafter, 1))
        drafted, run = 0.0, 1.0  # expected_tokens(accept[:k]) - 1, kept as k grows
        for k, a in enumerate(accept, 1):
            run *= a
            drafted += run
            t = k * per_token + self.costs.verify_cost(k + 1)
            if t - one > max_loss:
                continue  # the curve need not rise: a longer k may still fit
            rate = (1.0 + gain * drafted) / (fixed + t)
            if rate > best[0]:
                best = (rate, Choice(drafter, k))
        return best

    def keep_going(self, drafter: Drafter):
        """For the model drafter: draft one more token only while its expected gain beats its cost.

        Gain: P(every token so far accepted) x P(next accepted), in tokens. Cost: one more draft
        step plus one more verified position, in the tokens plain decoding makes in that time.
        """
        if drafter != Drafter.MODEL or self.k_fixed is not None:
            return lambda conf: True
        per_plain = self.costs.verify_cost(1)

        def more(conf: Sequence[float]) -> bool:
            i = len(conf)
            p_all = 1.0
            for c in conf:
                p_all *= self.model_acc.p(c)
            extra = self.costs.draft_cost() + self.costs.verify_cost(i + 2) - self.costs.verify_cost(i + 1)
            return p_all * self.model_rate > extra / per_plain

        return more

    # ------------------------------------------------------------------ learning
    def update(self, drafter: Drafter, confidence: Sequence[float], accepted: int, t_draft: float, t_verify: float) -> None:
        n = len(confidence)
        if n == 0:
            if self._probing:  # the periodic check of the one-token cost: did it agree?
                agrees = abs(t_verify / self.costs.verify_cost(1) - 1) < 0.15
                self.probe_every = min(256, 2 * self.probe_every) if agrees else 16
                self._probing = False
            self.since_plain = 0
        else:
            self.since_plain += 1
            # what this step gained or lost against plain decoding, by the cost model (before it learns)
            spent = self.costs.verify_cost(n + 1) + (n * (self.costs.draft_cost() or 0.0) if drafter == Drafter.MODEL else 0.0)
            self._banked += accepted + 1 - spent / self.costs.verify_cost(1)
        self.costs.observe_verify(n + 1, t_verify)
        if drafter == Drafter.NGRAM and n:
            run = 1.0
            for c in confidence:  # what the choice expected of these tokens (before this step teaches anything)
                run *= self.ngram_acc.cautious(c)
                self._ngram_expected += run
            self._ngram_accepted += accepted
        if drafter == Drafter.MODEL and n:
            self.costs.observe_draft(t_draft / n)
            self.model_acc.update(confidence, accepted)
            seen = min(n, accepted + 1)
            self.model_rate += 0.1 * ((accepted / seen) - self.model_rate)
        if n:
            self.drafted += n
            self.accepted += accepted

    def observe_catch_up(self, lag: int, seconds: float) -> None:
        """The draft model read `lag` tokens it had missed: time plain decoding never spends, so it is
        lost from this answer's allowance (by the cost model, as the choice counted it), then learnt."""
        if lag > 0 and self.costs.draft_token is not None:
            self._banked -= self.costs.catch_up_cost(lag) / self.costs.verify_cost(1)
        self.costs.observe_catch_up(lag, seconds)

    def observe_lookups(self, outcomes: Sequence[tuple[Sequence[float], int]]) -> None:
        """Context-draft acceptance is learnt from every settled lookup, drafted or not (ContextDrafter.outcomes):
        no exploration needed, and a drafted lookup is counted once, here."""
        for confidence, matched in outcomes:
            self.ngram_acc.update(confidence, matched)

    def warning(self) -> str | None:
        """Once per controller: a line to show when drafts keep failing."""
        if not self.warned and self.drafted >= 32 and self.accepted / self.drafted < 0.3:
            self.warned = True
            return (f"acceptance is {100 * self.accepted / self.drafted:.0f}% over {self.drafted} drafted tokens: "
                    "the draft is not helping (try --draft-mode auto or plain)")
        return None
