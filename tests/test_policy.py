"""The controller and the n-gram drafter, without models: simulated costs and acceptance."""

from __future__ import annotations

import numpy as np
import pytest

from edgespec.bench.replay import replay
from edgespec.core.drafters import NgramDrafter
from edgespec.core.policy import Acceptance, Controller, Costs, expected_tokens

# Relative costs measured on a 2-core x86-64 CPU (AMD EPYC): verification is compute-bound.
CPU = {1: 1.0, 2: 1.75, 3: 2.3, 4: 2.9, 5: 3.2, 6: 3.7, 8: 4.8, 12: 5.8, 16: 5.5, 17: 5.9}
CPU_DRAFT = 0.57
# A GPU-like profile: extra verified positions are nearly free, the draft model is cheap.
GPU = {n: 1.0 + 0.02 * (n - 1) for n in range(1, 18)}
GPU_DRAFT = 0.15


def world(accept_ngram: float, n: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """A prompt holding a source text, and an answer of n tokens. With accept_ngram > 0 the answer copies
    the source, breaking off after each token with probability 1 - accept_ngram into a token of its
    own and going on from another place in the source; with 0 it copies nothing."""
    rng = np.random.default_rng(seed)
    source = rng.permutation(np.arange(1000, 1600)).tolist()
    prompt = [1, 2] + source + [3]
    if accept_ngram <= 0:
        return prompt, (5000 + np.arange(n)).tolist()
    out, at, fresh = [], int(rng.integers(0, 100)), 5000
    while len(out) < n:
        out.append(source[at % len(source)])
        at += 1
        if rng.random() > accept_ngram:
            out.append(fresh)
            fresh += 1
            at = int(rng.integers(0, len(source)))
    return prompt, out[:n]


def simulate(ctl: Controller, accept_model: float, accept_ngram: float, n: int, seed: int = 0, hist: dict | None = None) -> float:
    """Drive the real engine with `ctl` over a synthetic answer (world), with stand-in models whose steps
    cost what ctl's costs say (edgespec.bench.replay); a draft model right with probability
    accept_model per token when ctl has one. Returns the speed relative to plain decoding."""
    prompt, answer = world(accept_ngram, n, seed)
    truth = Costs(dict(ctl.costs.verify), draft_token=ctl.costs.draft_token)
    draft = accept_model if ctl.has_model else None
    r = replay(prompt, answer, truth, make_controller=lambda _: ctl, draft_accept=draft, seed=seed)
    if hist is not None:
        hist.update(r.k_hist)  # drafted tokens per step -> steps
    return r.speedup


def test_expected_tokens_is_the_geometric_sum():
    assert expected_tokens([]) == 1
    assert expected_tokens([0.5, 0.5]) == pytest.approx(1.75)
    assert expected_tokens([1.0] * 4) == 5


def test_costs_interpolate_and_extrapolate():
    c = Costs({1: 1.0, 4: 2.5, 8: 4.5})
    assert c.verify_cost(2) == pytest.approx(1.5)
    assert c.verify_cost(10) == pytest.approx(5.5)
    c.observe_verify(4, 3.5)  # slower: believed a little
    assert c.verify_cost(4) == pytest.approx(2.5 + 0.03 * 1.0)
    c.observe_verify(4, 1.5)  # faster: believed a lot
    assert c.verify_cost(4) == pytest.approx(2.53 - 0.3 * 1.03)


def test_a_calibration_taken_under_load_is_corrected_by_real_steps():
    """Plain decoding was timed while the machine was busy (30x), so speculation looked like a
    bargain. Real steps correct the sizes it uses; plain probes correct the baseline."""
    true = Costs(dict(CPU), draft_token=CPU_DRAFT)
    stale = Costs({**CPU, 1: 30.0}, draft_token=CPU_DRAFT)
    ctl = Controller(stale, mode="auto")
    assert ctl.choose().drafter == "model"  # fooled at first
    for _ in range(200):
        c = ctl.choose()
        ctl.update(c.drafter, [0.9] * c.k, int(0.7 * c.k), c.k * CPU_DRAFT, true.verify_cost(c.k + 1))
    assert ctl.costs.verify_cost(1) == pytest.approx(1.0, rel=0.1)
    assert ctl.choose().drafter == "none"


def test_a_burst_of_slow_plain_steps_does_not_buy_the_draft_model():
    """Another process takes the CPU for a moment: plain steps run 3x slower. Against the calibrated
    (unchanged) batch costs that would make the draft model look like a bargain; it must not."""
    ctl = Controller(Costs(dict(CPU), draft_token=CPU_DRAFT), mode="auto")
    for _ in range(8):
        assert ctl.choose().drafter == "none"
        ctl.update("none", [], 0, 0.0, 3.0)
    assert ctl.choose().drafter == "none"
    for _ in range(200):  # a lasting slowdown of everything is believed in the end
        ctl.update("none", [], 0, 0.0, 3.0)
    assert ctl.costs.verify_cost(1) > 2.5


def test_on_a_compute_bound_cpu_the_draft_model_is_never_chosen():
    ctl = Controller(Costs(dict(CPU), draft_token=CPU_DRAFT), mode="auto")
    speed = simulate(ctl, accept_model=0.92, accept_ngram=0.0, n=300)
    assert ctl.choose().drafter == "none"
    assert speed == pytest.approx(1.0)


def test_on_a_gpu_the_draft_model_pays_and_k_follows_acceptance():
    ctl = Controller(Costs(dict(GPU), draft_token=GPU_DRAFT), mode="auto")
    hist: dict = {}
    speed = simulate(ctl, accept_model=0.85, accept_ngram=0.0, n=400, hist=hist)
    drafting = {k: n for k, n in hist.items() if k}
    assert sum(k * n for k, n in drafting.items()) / sum(drafting.values()) >= 3  # long drafts at 85% acceptance
    assert ctl.choose().drafter == "model" or ctl.since_plain >= ctl.probe_every
    assert speed > 1.5
    bad = Controller(Costs(dict(GPU), draft_token=GPU_DRAFT), mode="auto")
    speed_bad = simulate(bad, accept_model=0.05, accept_ngram=0.0, n=400)
    assert bad.choose().drafter == "none"
    assert speed_bad > 0.9  # it found out and stopped drafting


def test_ngram_is_used_when_it_pays_and_dropped_when_it_does_not():
    good = Controller(Costs(dict(CPU), draft_token=CPU_DRAFT), mode="auto")
    assert simulate(good, 0.0, accept_ngram=0.95, n=600) > 1.5
    c = good.choose(ngram_len=16, ngram_conf=6.0)
    if good.since_plain >= good.probe_every:  # this step is the periodic plain probe: take the next
        assert c.drafter == "none"
        good.update("none", [], 0, 0.0, good.costs.verify_cost(1))
        c = good.choose(ngram_len=16, ngram_conf=6.0)
    assert c.drafter == "ngram" and c.k >= 8
    bad = Controller(Costs(dict(CPU), draft_token=CPU_DRAFT), mode="auto")
    assert simulate(bad, 0.0, accept_ngram=0.1, n=300) > 0.9
    assert bad.choose(ngram_len=16, ngram_conf=6.0).drafter == "none"


@pytest.mark.parametrize("a_model,a_ngram", [(0.0, 0.0), (0.5, 0.3), (0.9, 0.6), (1.0, 1.0), (0.3, 0.9)])
@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_auto_is_never_much_slower_than_plain(profile, a_model, a_ngram):
    costs = Costs(dict(CPU), draft_token=CPU_DRAFT) if profile == "cpu" else Costs(dict(GPU), draft_token=GPU_DRAFT)
    speed = simulate(Controller(costs, mode="auto"), a_model, a_ngram, n=500, seed=3)
    assert speed >= 0.97


def test_keep_going_stops_at_low_confidence():
    ctl = Controller(Costs(dict(GPU), draft_token=GPU_DRAFT), mode="model")
    more = ctl.keep_going("model")
    assert more([0.99, 0.99])
    assert not more([0.99, 0.05, 0.05])
    fixed = Controller(Costs(dict(GPU), draft_token=GPU_DRAFT), mode="model", k=4)
    assert fixed.keep_going("model")([0.01])  # a fixed k is honoured


def test_fixed_modes():
    costs = Costs(dict(CPU), draft_token=CPU_DRAFT)
    assert Controller(costs, mode="none").choose(ngram_len=5).drafter == "none"
    assert Controller(costs, mode="model", k=4).choose().k == 4
    c = Controller(costs, mode="ngram", k=8).choose(ngram_len=3, ngram_conf=3)
    assert (c.drafter, c.k) == ("ngram", 3)
    assert Controller(costs, mode="ngram", k=8).choose(ngram_len=0).drafter == "none"
    assert Controller(costs, mode="model", k=6).choose(k_limit=2).k == 2
    with pytest.raises(ValueError):
        Controller(costs, mode="fast")


def test_low_acceptance_warns_once():
    ctl = Controller(Costs(dict(GPU), draft_token=GPU_DRAFT), mode="model", k=4)
    for _ in range(10):
        ctl.update("model", [0.5] * 4, 0, 0.1, 0.1)
    assert "not helping" in ctl.warning()
    assert ctl.warning() is None


def test_acceptance_buckets_learn():
    a = Acceptance(edges=[0.0, 0.5], prior=[0.5, 0.5], weight=2)
    for _ in range(50):
        a.update([0.9, 0.9, 0.2], 2)  # high-confidence tokens accepted, the low one rejected
    assert a.p(0.95) > 0.9 and a.p(0.1) < 0.1


def test_ngram_lookup_prefers_the_longest_match_then_agreement():
    d = NgramDrafter(min_match=2, max_match=8)
    #        0  1  2  3  4  5  6  7  8  9 10 11
    hist = [5, 6, 7, 1, 9, 6, 7, 2, 8, 5, 6, 7]
    cont, match = d.lookup(hist, 3)
    assert match == 3 and cont == [1, 9, 6]  # "5 6 7" matched at 0..2
    assert d.lookup([1, 2, 3, 4], 4) == ([], 0)
    # two continuations of "3 4": 8 twice, 9 once (most recent) -> the agreed-on 8 wins
    hist = [3, 4, 8, 0, 3, 4, 8, 1, 3, 4, 9, 2, 3, 4]
    cont, match = d.lookup(hist, 2)
    assert match == 2 and cont[0] == 8


def test_ngram_copies_a_long_span():
    text = list(range(100, 140))
    hist = text + [1, 2] + text[:5]
    cont, match = NgramDrafter().lookup(hist, 16)
    assert match == 5 and cont == text[5:21]


def _naive_lookup(hist, k, min_match=2, max_match=64):
    """The definition, spelled out: longest suffix match, then agreement on the next token, then recency."""
    n = len(hist)
    best, found = 0, []
    for e in range(n - 1):
        m = 0
        while m < max_match and e - m >= 0 and hist[e - m] == hist[n - 1 - m]:
            m += 1
        if m > best:
            best, found = m, [e]
        elif m == best and m:
            found.append(e)
    if best < min_match:
        return [], 0
    nxt = [hist[e + 1] for e in found]
    top = max(nxt.count(t) for t in nxt)
    e = [e for e in found if nxt.count(hist[e + 1]) == top][-1]
    return hist[e + 1 : e + 1 + k], best


@pytest.mark.parametrize("seed", range(40))
def test_ngram_lookup_matches_its_definition(seed):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 6, size=int(rng.integers(3, 40))).tolist()
    hist = base * int(rng.integers(1, 4)) + rng.integers(0, 6, size=int(rng.integers(0, 8))).tolist()
    for max_match in (3, 8, 64):
        got = NgramDrafter(max_match=max_match).lookup(hist, 16)
        assert got == _naive_lookup(hist, 16, max_match=max_match), (hist, max_match)


def test_ngram_match_length_counts_a_long_copy():
    text = list(range(100, 200))
    hist = text + [1] + text[:70]
    cont, match = NgramDrafter().lookup(hist, 4)
    assert match == 64 and cont == text[70:74]
    assert NgramDrafter(max_match=8).lookup(hist, 4)[1] == 8


def test_ngram_outcomes_settle_each_lookup_once():
    d = NgramDrafter()
    hist = [1, 2, 3, 4, 5, 9, 1, 2]
    assert d.peek(hist, 3) == (3, 2.0)  # proposes 3 4 5
    assert d.outcomes(hist) == []  # nothing generated yet
    hist += [3, 4]
    assert d.outcomes(hist) == []  # right so far, not settled
    hist += [7]
    assert d.outcomes(hist) == [([2.0, 3.0, 4.0], 2)]  # 3 and 4 matched, 5 did not
    assert d.outcomes(hist) == []
    d.peek(hist, 2)  # "7" was never seen before: no lookup recorded
    hist2 = [1, 2, 3, 1, 2]
    d2 = NgramDrafter()
    d2.peek(hist2, 1)
    assert d2.outcomes(hist2 + [3]) == [([2.0], 1)]  # all proposed tokens matched


def test_the_controller_learns_from_lookups_it_did_not_draft():
    ctl = Controller(Costs(dict(CPU)), mode="auto", has_model=False)
    assert ctl.choose(ngram_len=16, ngram_conf=2.0).drafter == "none"  # a 2-token match: a coin flip
    for _ in range(60):
        ctl.observe_lookups([([2.0 + i for i in range(16)], 16)])  # ... that turned out to be copies
    c = ctl.choose(ngram_len=16, ngram_conf=2.0)
    assert c.drafter == "ngram" and c.k >= 8


def test_the_draft_models_prior_comes_from_calibration():
    generic = Controller(Costs(dict(GPU), draft_token=GPU_DRAFT), mode="auto")
    assert generic.choose().drafter == "model"  # a typical draft would pay on a GPU
    poor = [[0, 10], [1, 10], [1, 10], [1, 10], [0, 0], [0, 0]]  # agreed on 3 of 40 sample positions
    measured = Controller(Costs(dict(GPU), draft_token=GPU_DRAFT, draft_agreement=poor), mode="auto")
    assert measured.model_rate == pytest.approx(3 / 40)
    assert measured.model_acc.p(0.6) < generic.model_acc.p(0.6)
    assert measured.choose().drafter == "none"  # this one is not worth trying
