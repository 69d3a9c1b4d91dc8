"""The controller and the n-gram drafter, without models: simulated costs and acceptance."""

from __future__ import annotations

import numpy as np
import pytest

from edgespec.bench.replay import replay
from edgespec.core.drafters import ContextDrafter
from edgespec.core.kinds import Drafter
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


def test_costs_below_the_smallest_size_measured_take_its_cost():
    assert Costs({2: 0.01, 4: 0.02}).verify_cost(1) == pytest.approx(0.01)


def test_acceptance_buckets_are_the_last_lower_bound_at_or_below():
    from edgespec.core.policy import NGRAM_EDGES, NGRAM_PRIOR, Acceptance

    acc = Acceptance(edges=NGRAM_EDGES, prior=NGRAM_PRIOR)
    for conf in [0, 1, 2, 2.5, 3, 5, 63, 64, 200, 999, 1000, 1002, 1003, 1064, 5000, -1]:
        linear = max([i for i, e in enumerate(NGRAM_EDGES) if conf >= e], default=0)
        assert acc.bucket(conf) == linear, conf


def test_a_machine_that_slows_down_slows_every_batch_size():
    """Only one size is observed (plain steps), 20% slower than calibrated: every size's cost follows,
    so the ratios that decide whether to draft stay as measured."""
    c = Costs({1: 1.0, 4: 2.5, 8: 4.5}, draft_token=0.5)
    for _ in range(20):
        c.observe_verify(1, 1.2)
    assert c.verify_cost(1) == pytest.approx(1.2)
    assert c.verify_cost(4) / c.verify_cost(1) == pytest.approx(2.5)
    assert c.draft_cost() == pytest.approx(0.6)


def test_a_mismeasured_point_corrects_itself_in_a_few_steps():
    c = Costs({1: 1.0, 4: 2.5, 8: 4.5})
    for _ in range(10):  # the machine runs as calibrated (the scale stays 1) ...
        c.observe_verify(1, 1.0)
        c.observe_verify(8, 4.5)
    for i in range(c.settle):  # ... but size 4 is cheaper than measured
        assert c.verify_cost(4) == pytest.approx(2.5)  # one step, or four, are not enough to move it
        c.observe_verify(4, 1.5)
    assert c.scale == pytest.approx(1.0) and c.verify_cost(4) == pytest.approx(1.5)
    for _ in range(c.settle):  # and back when it is slow again
        c.observe_verify(4, 2.5)
    assert c.verify_cost(4) == pytest.approx(2.5)


def test_noisy_steps_of_one_size_leave_the_curve_in_shape():
    """The drift that stopped all drafting: with noise that only adds time, a correction that
    believed fast steps more than slow ones walked the one size in use down, step after step, until
    every batch looked a hundred times dearer than a plain step. Hundreds of noisy plain steps (and
    of noisy 2-position steps) must leave the ratios between sizes as they were."""
    rng = np.random.default_rng(0)
    c = Costs({1: 0.04, 2: 0.076, 16: 0.34, 64: 0.95})
    for n in (1, 2):
        for _ in range(600):
            c.observe_verify(n, 0.04 * (1.9 if n == 2 else 1.0) * (1 + rng.exponential(0.08)))
        assert c.verify_cost(16) / c.verify_cost(1) == pytest.approx(0.34 / 0.04, rel=0.1)
        assert c.verify_cost(64) / c.verify_cost(2) == pytest.approx(0.95 / 0.076, rel=0.1)
    ctl = Controller(c, mode="ngram", has_model=False)
    ctl.ngram_acc.hits[-12], ctl.ngram_acc.tries[-12] = 990, 1000  # long copies: nearly always right
    assert ctl.choose(64, 1064).k > 8


def test_catching_up_the_draft_model_is_charged():
    """A draft model that sat out plain steps must first read what it missed: the decision counts it."""
    c = Costs({n: 1.0 + 0.1 * (n - 1) for n in range(1, 18)}, draft_token=0.05)
    ctl = Controller(c, mode="auto")
    assert ctl.choose().drafter == "model"  # caught up: cheap on this GPU-like curve
    assert ctl.choose(draft_lag=3000).drafter == "none"  # 3000 tokens to read first: not for one step's gain
    c.observe_catch_up(100, 0.5)  # measured: 5 ms a token here
    assert c.catch_up_cost(200) == pytest.approx(1.0)


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
    d = ContextDrafter(min_match=2, max_match=8)
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
    cont, match = ContextDrafter().lookup(hist, 16)
    assert match == 5 and cont == text[5:21]


def _occurrences(hist, s):
    """End positions of every occurrence of s in hist."""
    n, m = len(hist), len(s)
    return [e for e in range(m - 1, n) if hist[e - m + 1 : e + 1] == s]


def _naive_lookup(hist, k, min_match=2, max_match=64, min_share=0.3):
    """The definition, spelled out: the longest suffix of hist that also ends earlier; then, token by
    token, the continuation most occurrences of the text so far agree on (equal counts: the one seen
    last), stopping where fewer than min_share of them agree."""
    n = len(hist)
    m = max((m for m in range(1, n) if any(e < n - 1 for e in _occurrences(hist, hist[n - m :]))), default=0)
    if m < min_match:
        return [], 0
    s, out = hist[n - m :], []
    while len(out) < k:
        follow = [e for e in _occurrences(hist, s) if e + 1 < n]
        if not follow:
            break
        nxt = {}
        for e in follow:  # counts of s + t (all its occurrences), and where s + t was seen last
            t = hist[e + 1]
            nxt[t] = (len(_occurrences(hist, s + [t])), max(_occurrences(hist, s + [t])))
        t = max(nxt, key=lambda t: nxt[t])
        if len(nxt) > 1 and nxt[t][0] / sum(c for c, _ in nxt.values()) < min_share:
            break
        out.append(t)
        s = s + [t]
    return out, min(m, max_match)


@pytest.mark.parametrize("seed", range(40))
def test_ngram_lookup_matches_its_definition(seed):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 6, size=int(rng.integers(3, 40))).tolist()
    hist = base * int(rng.integers(1, 4)) + rng.integers(0, 6, size=int(rng.integers(0, 8))).tolist()
    for max_match in (3, 8, 64):
        d = ContextDrafter(max_match=max_match)
        d.index.depth = 10**9  # exact occurrence counts (the default walk is bounded)
        got = d.lookup(hist, 16)
        assert got == _naive_lookup(hist, 16, max_match=max_match), (hist, max_match)


def test_ngram_lookup_is_incremental_and_agrees_with_a_fresh_index():
    rng = np.random.default_rng(1)
    hist = (rng.integers(0, 9, size=300)).tolist()
    live = ContextDrafter()
    for i in range(3, len(hist)):
        assert live.lookup(hist[:i], 8) == ContextDrafter().lookup(hist[:i], 8), i


def test_ngram_match_length_counts_a_long_copy():
    text = list(range(100, 200))
    hist = text + [1] + text[:70]
    cont, match = ContextDrafter().lookup(hist, 4)
    assert match == 64 and cont == text[70:74]
    assert ContextDrafter(max_match=8).lookup(hist, 4)[1] == 8


def test_ngram_outcomes_settle_each_position_once():
    d = ContextDrafter()
    hist = [1, 2, 3, 4, 5, 9, 1, 2]
    assert d.peek(hist, 3) == (3, 2.0)  # proposes 3 4 5
    assert d.outcomes(hist) == []  # nothing generated yet
    hist += [3, 4]
    assert d.outcomes(hist) == [([2.0, 3.0], 2)]  # 3 and 4 are known to match as soon as they arrive
    hist += [7]
    assert d.outcomes(hist) == [([4.0], 0)]  # 5 did not
    assert d.outcomes(hist) == []
    d.peek(hist, 2)  # "7" was never seen before: no lookup recorded
    hist2 = [1, 2, 3, 1, 2]
    d2 = ContextDrafter()
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


def test_a_slower_machine_than_at_calibration_does_not_buy_the_draft_model():
    """Replays what happened on an Intel Xeon (2 cores, no AMX): calibrated there at 76 ms a token, the
    machine then ran 20% slower; refreshing only the one-token cost made the draft model look cheap and
    auto fell to 0.81x on a code-generation prompt. Every cost here runs 1.2x the calibrated one."""
    calibrated = {1: 0.076, 2: 0.115, 4: 0.173, 8: 0.279, 16: 0.305, 17: 0.406}
    agreement = [[2, 10], [6, 14], [8, 12], [12, 16], [14, 16], [33, 36]]  # 75 of 104 sample positions
    costs = Costs(dict(calibrated), draft_token=0.044, draft_agreement=agreement)
    slower = Costs({n: 1.2 * v for n, v in calibrated.items()}, draft_token=1.2 * 0.044)
    prompt, answer = world(0.0, 96, seed=4)
    for seed in range(4):
        r = replay(prompt, answer, slower, make_controller=lambda _: Controller(Costs(dict(costs.verify), draft_token=costs.draft_token,
                   draft_agreement=agreement), mode="auto", k_max=16), draft_accept=0.78, seed=seed)
        assert r.stats.drafter_steps.get("model", 0) == 0, r.stats.drafter_steps
        assert r.speedup >= 0.97


def test_plain_steps_on_a_slower_machine_keep_the_cost_ratios():
    """The cause behind that: plain steps refresh the one-token cost, the batch sizes not in use keep
    their calibrated cost, and drafting looks cheaper than it is. A draft just short of paying at the
    calibrated costs must stay short of paying after 60 plain steps on a machine 20% slower."""
    calibrated = {1: 0.076, 2: 0.115, 3: 0.144, 4: 0.173, 8: 0.279, 16: 0.305, 17: 0.406}
    ctl = Controller(Costs(dict(calibrated), draft_token=0.03), mode="auto", k_max=16)
    ctl.model_rate = 0.74  # a draft model that almost pays here
    assert ctl.choose().drafter == "none"
    for _ in range(60):
        assert ctl.choose().drafter == "none"
        ctl.update(Drafter.NONE, [], 0, 0.0, 1.2 * calibrated[1])
    assert ctl.costs.verify_cost(1) == pytest.approx(1.2 * calibrated[1])
    assert ctl.costs.verify_cost(3) == pytest.approx(1.2 * calibrated[3])


def test_earlier_outputs_draft_where_the_text_itself_cannot():
    """A server remembers earlier replies: a new request that repeats one drafts from that memory."""
    from edgespec.core.suffix import OutputMemory

    reply = list(range(500, 560))
    memory = OutputMemory()
    memory.add(reply)
    history = [1, 2, 3] + reply[:5]  # the text itself has never seen this reply
    assert ContextDrafter().lookup(history, 16) == ([], 0)
    cont, match = ContextDrafter(memory=memory).lookup(history, 16)
    assert match == 5 and cont == reply[5:21]
    # a separator ends every remembered text: nothing is drafted across it
    cont, _ = ContextDrafter(memory=memory).lookup([1] + reply[-4:], 16)
    assert cont == []


def test_a_remembered_reply_that_ends_there_leaves_the_texts_own_match():
    """The memory matches the text's end better but has nothing after it (that reply ended): the
    text's own index, with a shorter match that does go on, drafts instead."""
    from edgespec.core.suffix import OutputMemory

    memory = OutputMemory()
    memory.add([1, 2, 3, 4, 5])
    history = [9, 2, 3, 4, 5, 7, 8, 1, 2, 3, 4, 5]
    cont, match = ContextDrafter(memory=memory).lookup(history, 4)
    assert cont == [7, 8, 1, 2] and match == 4


def test_one_reply_longer_than_half_the_bound_keeps_its_end():
    from edgespec.core.suffix import OutputMemory

    memory = OutputMemory(limit=100)
    for n, base in ((30, 1000), (60, 2000), (55, 3000)):
        memory.add(list(range(base, base + n)))
    assert memory.texts and memory.texts[-1] == list(range(3006, 3055))
    assert 0 < len(memory.index) <= 100


def test_output_memory_is_bounded():
    from edgespec.core.suffix import OutputMemory

    memory = OutputMemory(limit=1000)
    for i in range(50):
        memory.add(list(range(10000 + 100 * i, 10000 + 100 * i + 90)))
    assert len(memory.index) <= 1000 and memory.texts[-1][0] == 10000 + 100 * 49


def test_a_copy_that_resumes_after_an_edit_is_rated_apart():
    """After an inserted line the answer comes back to the source where it left it: a short match
    there resumes the copy (confidence ALIGNED + m), the same short match elsewhere does not."""
    from edgespec.core.drafters import ALIGNED

    rng = np.random.default_rng(3)
    source = rng.integers(100, 900, size=200).tolist()
    prompt = [1] + source + [2]
    d = ContextDrafter()
    answer = source[:60] + [7, 8, 9] + source[60:62]  # 60 copied, 3 inserted, and back: 2 tokens matched
    for i in range(1, len(answer)):
        d.lookup(prompt + answer[:i], 16)
    cont, conf = d.lookup(prompt + answer, 16)
    assert conf == ALIGNED + 2 and cont == source[62:78]


def test_an_edit_seen_twice_is_applied_to_later_copies():
    """A rename: the answer writes Y where the source has X; once seen twice, copies carry Y."""
    rng = np.random.default_rng(4)
    chunks = [rng.integers(100, 900, size=30).tolist() for _ in range(5)]
    X, Y = [50, 51], [60]
    source = chunks[0] + X + chunks[1] + X + chunks[2] + X + chunks[3] + X + chunks[4]
    renamed = chunks[0] + Y + chunks[1] + Y + chunks[2] + Y + chunks[3] + Y + chunks[4]
    prompt = [1] + source + [2]
    d = ContextDrafter()
    upto = len(chunks[0] + Y + chunks[1] + Y + chunks[2]) - 5  # two renames seen, the third ahead
    for i in range(1, upto):
        d.lookup(prompt + renamed[:i], 16)
    cont, _ = d.lookup(prompt + renamed[:upto], 16)
    assert cont[:8] == renamed[upto : upto + 8]  # ... Y, not X
    assert d.edits[tuple(X)][tuple(Y)] == 2


def test_lookup_cost_is_reported_per_step():
    """The context index's cost per step is measured on the real clock (a replay's clock is virtual)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from fake_lm import BigramLM

    from edgespec.core.engine import generate
    from edgespec.core.stats import Stats

    table = np.eye(8, k=1, dtype=np.float32) * 5  # 0 -> 1 -> ... -> 7: a cycle the index learns
    stats = Stats()
    ctl = Controller(Costs(dict(CPU)), mode="ngram", has_model=False)
    for step in generate(BigramLM(table), None, [0, 1, 2, 3, 4, 5, 6, 7, 0, 1], max_tokens=40, controller=ctl):
        stats.add(step)
    assert stats.t_lookup > 0 and 0 < stats.as_dict()["lookup_us_per_step"] < 10_000


def test_an_implausible_saved_curve_is_measured_again():
    from edgespec.machine.calibrate import plausible

    assert plausible({1: 0.04, 2: 0.076, 16: 0.34})
    assert not plausible({1: 0.06, 2: 1.05, 16: 4.8})  # what the old refresh could leave behind
    assert not plausible({1: 0.0, 2: 0.07})


def _ngram_choice(ctl: Controller, conf: float = 10.0) -> tuple[Drafter, int]:
    c = ctl.choose(ngram_len=32, ngram_conf=conf)
    return c.drafter, c.k


def test_context_drafts_that_keep_failing_make_the_estimates_more_careful():
    # Estimates learnt from lookups say a 10-token match goes on, but every draft chosen on them fails at
    # once (short rows copied from a table): the next choices must ask for more before drafting.
    fresh = Controller(Costs(dict(CPU)), mode="auto", has_model=False)
    burnt = Controller(Costs(dict(CPU)), mode="auto", has_model=False)
    for ctl in (fresh, burnt):
        for _ in range(12):
            ctl.observe_lookups([([10.0 + i for i in range(16)], 16)])
    for _ in range(8):
        burnt.update(Drafter.NGRAM, [10.0 + i for i in range(4)], 0, 0.0, CPU[5])
    assert fresh.ngram_calibration == 1.0 and burnt.ngram_calibration < 0.7
    assert _ngram_choice(fresh)[0] == Drafter.NGRAM
    assert _ngram_choice(burnt) == (Drafter.NONE, 0)


def test_context_drafts_that_outrun_their_estimates_are_drafted_longer():
    fresh = Controller(Costs(dict(CPU)), mode="auto", has_model=False)
    lucky = Controller(Costs(dict(CPU)), mode="auto", has_model=False)
    for _ in range(8):
        lucky.update(Drafter.NGRAM, [6.0 + i for i in range(4)], 4, 0.0, CPU[5])
    assert lucky.ngram_calibration > 1.0
    assert _ngram_choice(lucky, 6.0)[1] > _ngram_choice(fresh, 6.0)[1]


# ---------------------------------------------------------------------- costs at the context in use
# A 2-core Xeon's shape: 16 positions cost about 4 single steps after 256 tokens of context, and each
# 1,000 more tokens add about 6 ms per batch position (a single step about 80 ms).
XEON = {1: 0.08, 2: 0.11, 4: 0.15, 8: 0.25, 16: 0.33, 32: 0.60, 64: 1.0}


def test_a_batch_costs_more_after_a_longer_context():
    c = Costs(dict(XEON), position=256, attend=0.006, attend_base=0.002)
    assert c.verify_cost(16) == pytest.approx(0.33)  # at the calibration's context
    c.context = 1256
    assert c.verify_cost(1) == pytest.approx(0.08 + 0.002 + 0.006)
    assert c.verify_cost(32) == pytest.approx(0.60 + 0.002 + 32 * 0.006)
    assert c.verify_cost(32, context=256) == pytest.approx(0.60)  # asked for another context explicitly
    # relative to a plain step, long batches get dearer as the context grows
    assert c.verify_cost(32) / c.verify_cost(1) > XEON[32] / XEON[1]
    c.context = 0
    assert c.verify_cost(64) >= 0.5 * XEON[64]  # shorter than calibration: cheaper, within bounds
    assert Costs(dict(XEON)).verify_cost(32, context=5000) == pytest.approx(0.60)  # growth not measured: none


def test_steps_at_a_long_context_leave_the_scale_at_the_machines_speed():
    """Steps after 2,000 tokens that cost what the context says: the machine runs as calibrated, so
    the scale stays 1 and no size's point moves (a context-blind curve would read them as a slower
    machine, and the big batches' extra cost as a mis-measured curve)."""
    truth = Costs(dict(XEON), position=256, attend=0.006)
    c = Costs(dict(XEON), position=256, attend=0.006)
    for i in range(60):
        n = (1, 16, 32)[i % 3]
        c.context = truth.context = 2000 + i
        c.observe_verify(n, truth.verify_cost(n))
    assert c.scale == pytest.approx(1.0)
    assert c.verify == XEON


def test_fit_of_the_context_cost_is_a_nonnegative_line():
    from edgespec.machine.calibrate import fit_attend

    a, b = fit_attend({1: 0.004 + 0.006, 4: 0.004 + 0.024, 16: 0.004 + 0.096, 32: 0.004 + 0.192})
    assert a == pytest.approx(0.004) and b == pytest.approx(0.006)
    assert fit_attend({1: 0.02, 4: 0.01, 16: 0.0, 32: -0.01}) == (pytest.approx(0.005), 0.0)  # noise: no per-position part
    a, b = fit_attend({1: -0.01, 4: 0.02, 16: 0.1, 32: 0.2})  # a negative intercept: a line through 0
    assert a == 0.0 and b > 0


def _long_copy(prompt_len: int = 1800, n: int = 400, seed: int = 3):
    """A long document and an answer that copies it in runs of 20-120 tokens, each run starting at
    a random place and followed by a fresh token (an edit)."""
    rng = np.random.default_rng(seed)
    doc = [int(t) for t in rng.integers(0, 4000, size=prompt_len)]
    out, fresh = [], 10_000
    while len(out) < n:
        at = int(rng.integers(0, prompt_len - 130))
        out += doc[at : at + int(rng.integers(20, 120))] + [fresh]
        fresh += 1
    return doc, out[:n]


def test_the_controller_prices_batches_at_the_context_in_use():
    """A long document copied back, on a machine where long contexts make big batches dearer: the
    controller that knows how much predicts every step's cost (its scale stays the machine's speed,
    1), drafts, and does about as well as one that prices every batch at the calibration's context;
    that one reads the long context as a machine 15% or more slower than calibrated."""
    prompt, answer = _long_copy()
    truth = Costs(dict(XEON), position=256, attend=0.008)
    seen = {}

    def make(name, costs):
        seen[name] = Controller(costs, mode="auto", has_model=False)
        return seen[name]

    knows = replay(prompt, answer, truth, make_controller=lambda c: make("knows", c))
    blind = replay(prompt, answer, truth, make_controller=lambda c: make("blind", Costs(dict(c.verify), position=c.position)))
    assert seen["knows"].costs.scale == pytest.approx(1.0, abs=0.01)
    assert seen["blind"].costs.scale > 1.15
    assert knows.speedup > 1.5 and knows.speedup >= 0.95 * blind.speedup


# ---------------------------------------------------------------------- what one answer may lose
# A steep 2-core EPYC's shape (edgespec calibrate there): a 16-position batch costs 6 single steps.
EPYC = {1: 1.0, 2: 2.15, 3: 2.75, 4: 3.27, 5: 4.08, 6: 4.29, 8: 5.64, 10: 6.27, 12: 6.66, 16: 6.13, 24: 10.9,
        32: 10.4, 48: 16.5, 64: 20.2}


def _restated(copied: int, n: int = 64) -> tuple[list[int], list[int]]:
    """A short answer that opens by restating `copied` tokens of the question, then writes its own."""
    q = np.random.default_rng(0).permutation(np.arange(100, 200)).tolist()[:40]
    return [1, 2] + q + [3], q[:copied] + list(range(500, 500 + n - copied))


def test_a_long_draft_that_fails_cannot_sink_a_short_answer():
    # Seen on the short suite (chat-float, 0.93x plain): after 18 tokens copied from the question, a
    # 15-token draft on a 16-position batch, 1 token accepted, in a 64-token answer.
    prompt, answer = _restated(18)
    reckless = replay(prompt, answer, Costs(dict(EPYC)), make_controller=lambda c: Controller(c, mode="auto", has_model=False, risk=1e9))
    assert reckless.speedup < 0.95 and max(reckless.k_hist) >= 12  # the choice by expected speed alone
    safe = replay(prompt, answer, Costs(dict(EPYC)), make_controller=lambda c: Controller(c, mode="auto", has_model=False))
    assert safe.speedup >= 0.98


def test_the_loss_allowance_grows_with_what_drafts_have_won():
    ctl = Controller(Costs(dict(EPYC)), mode="auto", has_model=False)
    ctl.begin(64)
    start = ctl.loss_room
    assert start == pytest.approx(0.02 * 64)
    ctl.update(Drafter.NGRAM, [20.0, 21.0, 22.0], 3, 0.0, EPYC[4])  # 4 tokens for 3.27 steps
    assert ctl.loss_room == pytest.approx(start + 4 - 3.27)
    ctl.update(Drafter.NGRAM, [20.0] * 15, 0, 0.0, EPYC[16])  # 1 token for 6.13 steps
    assert ctl.loss_room == pytest.approx(start + 4 - 3.27 + 1 - 6.13)
    ctl.begin(1000)  # a new answer: its own allowance, up to RISK_HORIZON tokens
    assert ctl.loss_room == pytest.approx(0.02 * 512)


def test_catching_the_draft_model_up_is_lost_from_the_allowance():
    """Reading what the draft model missed is paid whatever its drafts then win: the allowance loses it."""
    c = Costs({n: 1.0 + 0.1 * (n - 1) for n in range(1, 18)}, draft_token=0.05, catch_up_token=0.01)
    ctl = Controller(c, mode="auto")
    ctl.begin(512)
    start = ctl.loss_room
    ctl.observe_catch_up(300, 3.0)  # priced by the model as the choice saw it: 300 x 0.01 s = 3 plain steps
    assert ctl.loss_room == pytest.approx(start - 3.0)
    assert c.catch_up_token == pytest.approx(0.01)  # one observation does not move it (it settles over several)
    ctl.observe_catch_up(0, 0.0)  # nothing read: nothing lost
    assert ctl.loss_room == pytest.approx(start - 3.0)


def test_a_draft_is_chosen_only_within_the_allowance():
    ctl = Controller(Costs(dict(EPYC)), mode="auto", has_model=False)
    for _ in range(40):  # lookups of this length have always gone on
        ctl.observe_lookups([([30.0 + i for i in range(16)], 16)])
    ctl.begin(64)  # 1.28 plain steps may be lost: no draft longer than one token fits this curve
    assert ctl.choose(ngram_len=16, ngram_conf=30.0, context=256).k <= 1
    ctl.begin(256)  # 5.12: a 16-position batch (6.13 steps, 5.13 beyond a plain one) does not fit yet
    c = ctl.choose(ngram_len=16, ngram_conf=30.0, context=256)
    assert c.drafter == Drafter.NGRAM and 1 < c.k < 15
    for _ in range(3):  # three 3-token drafts accepted: 0.73 steps won each
        ctl.update(Drafter.NGRAM, [30.0, 31.0, 32.0], 3, 0.0, EPYC[4])
    assert ctl.choose(ngram_len=16, ngram_conf=30.0, context=256).k == 15
