"""The speculative loop on tiny GGUF models and on exact bigram stand-ins."""

from __future__ import annotations

import numpy as np
import pytest

from edgespec.core import verify
from edgespec.core.engine import generate
from edgespec.core.stats import Stats
from edgespec.errors import ContextOverflowError, UsageError
from edgespec.core.verify import SamplingParams
from fake_lm import BigramLM
from stats_util import chi2_test

# On CPU a batched llama.cpp evaluation is not bit-identical to a one-token one.
# For the tiny F32 models the difference measured ~6e-6; a divergence is accepted only where the
# target's top-2 logit margin (one-token evaluation) is below this bound.
NEAR_TIE = 1e-3

PROMPTS = [
    "Hello world",
    "def fib(n):",
    "The quick brown fox jumps over the lazy dog.",
    "a",
    "1, 2, 3, 4, 5,",
    "Speculative decoding drafts tokens and verifies them.",
    "{\"key\": [1, 2, 3]}",
    "Ünïcödé — ✓ 日本語",
]


def reference_greedy(model, prompt: list[int], n: int) -> tuple[list[int], list[float]]:
    """Plain greedy decoding written directly against the model (not through the engine): tokens and top-2 margins."""
    model.rollback(0)
    logits = model.advance_to(prompt, logits="last")
    out, margins = [], []
    for _ in range(n):
        row = logits[-1]
        top2 = np.partition(row, -2)[-2:]
        t = int(np.argmax(row))
        out.append(t)
        margins.append(float(top2[1] - top2[0]))
        if model.is_eog(t):
            break
        logits = model.eval([t], logits="last")
    return out, margins


def run(target, draft, prompt, **kw) -> tuple[list[int], Stats]:
    stats = Stats()
    toks = []
    for step in generate(target, draft, prompt, **kw):
        stats.add(step)
        toks.extend(step.tokens)
    return toks, stats


def first_divergence(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def test_greedy_speculative_equals_plain_greedy(load):
    target, draft = load("target"), load("draft")
    n = 48
    exact = total = 0
    drafted = accepted = 0
    for prompt_text in PROMPTS:
        prompt = target.tokenize(prompt_text)
        ref, margins = reference_greedy(target, prompt, n)
        for k in range(1, 9):
            out, stats = run(target, draft, prompt, k=k, max_tokens=n)
            total += 1
            drafted += stats.drafted
            accepted += stats.accepted
            i = first_divergence(ref, out)
            if i is None:
                exact += 1
                continue
            assert i < len(ref) and margins[i] < NEAR_TIE, (
                f"prompt {prompt_text!r} k={k}: diverged at token {i} where the target's margin is {margins[i]:.4g}"
            )
    print(f"greedy exact-match rate {exact}/{total}; acceptance {accepted}/{drafted}")
    assert exact / total >= 0.9
    # The perturbed draft must be partly right: the test exercises both accept and reject.
    assert 0.2 < accepted / drafted < 0.98


def test_plain_decoding_is_the_same_loop(load):
    target = load("target")
    prompt = target.tokenize("plain decoding")
    ref, _ = reference_greedy(target, prompt, 30)
    for draft in (None, load("draft")):
        out, stats = run(target, draft, prompt, k=0, max_tokens=30)
        assert out == ref
        assert stats.drafted == 0 and stats.steps == len(out)


def test_self_draft_accepts_everything(load):
    target, draft = load("target"), load("self_draft")
    prompt = target.tokenize("The same weights draft and verify")
    ref, margins = reference_greedy(target, prompt, 40)
    out, stats = run(target, draft, prompt, k=4, max_tokens=40)
    assert out == ref
    assert stats.drafted > 0 and stats.accepted == stats.drafted
    assert stats.mean_accepted == pytest.approx(4.0, abs=0.5)


def test_caches_stay_in_step_without_reprefill(load):
    target, draft = load("target"), load("draft")
    counts = {}
    for name, m in (("target", target), ("draft", draft)):
        orig = m.eval

        def counting(tokens, logits="last", _orig=orig, _name=name):
            counts[_name] = counts.get(_name, 0) + len(tokens)
            return _orig(tokens, logits)

        m.eval = counting
    prompt = target.tokenize("Keep both caches in step " * 4)
    out, stats = run(target, draft, prompt, k=5, max_tokens=60)
    # Target: the prompt once, then 1 + drafted tokens per pass. Draft: the prompt once, then at most
    # one token per drafted token plus a catch-up of two after a fully accepted draft.
    assert counts["target"] == len(prompt) - 1 + stats.steps + stats.drafted
    assert counts["draft"] <= len(prompt) - 1 + stats.drafted + 2 * stats.steps
    history = prompt + out
    assert target.tokens == history[: len(target.tokens)] and len(target.tokens) >= len(history) - 2


def test_max_tokens_and_finish_reasons(load):
    target, draft = load("target"), load("draft")
    prompt = target.tokenize("count")
    for n in (1, 2, 7, 33):
        steps = list(generate(target, draft, prompt, k=6, max_tokens=n))
        assert sum(len(s.tokens) for s in steps) == n
        assert steps[-1].finish == "length"


def test_stops_at_end_of_generation_token():
    rng = np.random.default_rng(0)
    table = rng.standard_normal((8, 8)).astype(np.float32)
    table[:, 7] = -50.0
    table[3, 7] = 50.0  # after token 3 the model always ends
    table[:, 3] += 5.0
    target = BigramLM(table, eog=7)
    draft = BigramLM(table, eog=7)
    steps = list(generate(target, draft, [0], k=4, max_tokens=50))
    toks = [t for s in steps for t in s.tokens]
    assert toks[-1] == 7 and 7 not in toks[:-1]
    assert steps[-1].finish == "stop"
    # --ignore-eos: the end token is suppressed in both models and generation runs to max_tokens
    steps = list(generate(BigramLM(table, eog=7), BigramLM(table, eog=7), [0], k=4, max_tokens=50, suppress=[7]))
    toks = [t for s in steps for t in s.tokens]
    assert len(toks) == 50 and 7 not in toks and steps[-1].finish == "length"


def test_context_limit_ends_generation():
    rng = np.random.default_rng(1)
    table = rng.standard_normal((16, 16)).astype(np.float32)
    target, draft = BigramLM(table, n_ctx=20), BigramLM(table, n_ctx=20)
    steps = list(generate(target, draft, [1, 2, 3], k=4, max_tokens=100))
    toks = [t for s in steps for t in s.tokens]
    assert steps[-1].finish == "context"
    assert len(toks) == 20 - 3 + 1  # the last token needs no cache slot


def test_bad_arguments(load):
    """Settings are checked once, where they are made (GenOptions); the loop refuses what only it can see."""
    from edgespec.session.options import GenOptions

    target = load("target")
    with pytest.raises(UsageError):
        next(generate(target, None, [], max_tokens=4))
    with pytest.raises(UsageError, match="--k must be >= 0"):
        GenOptions(k=-1)
    with pytest.raises(UsageError, match="--max-tokens must be >= 1"):
        GenOptions(max_tokens=0)
    with pytest.raises(ValueError):  # a programming error below the options layer
        next(generate(target, None, [1, 2], k=-1))
    with pytest.raises(ContextOverflowError):
        next(generate(target, None, list(range(3, 3 + 1024)), max_tokens=4))


# ----------------------------------------------------------------------------------- sampling
def _bigram_pair(v: int, seed: int):
    rng = np.random.default_rng(seed)
    p_table = rng.standard_normal((v, v)).astype(np.float32) * 1.5
    q_table = (p_table + rng.standard_normal((v, v)).astype(np.float32) * 1.0).astype(np.float32)
    return BigramLM(p_table), BigramLM(q_table)


def _sample_counts(target, draft, n_samples, length, sp, k, seed0=0):
    v = target.n_vocab
    counts = np.zeros((v,) * length, dtype=np.int64)
    stats = Stats()
    for s in range(n_samples):
        toks = []
        for step in generate(target, draft, [0], k=k, sampling=sp, max_tokens=length, seed=seed0 + s):
            stats.add(step)
            toks.extend(step.tokens)
        counts[tuple(toks)] += 1
    return counts, stats


def _exact_joint(target, length, temperature):
    """P(t1..tL) = prod p(t_i | t_{i-1}), t_0 = 0, as an array with one axis per position."""
    cond = np.stack([target.probs(a, temperature) for a in range(target.n_vocab)])  # [prev, next]
    joint = target.probs(0, temperature)
    for _ in range(length - 1):
        joint = joint[..., None] * cond  # joint[..., a, b] = joint[..., a] * cond[a, b]
    return joint


@pytest.mark.parametrize("k", [1, 3])
def test_speculative_sampling_has_the_target_distribution(k):
    target, draft = _bigram_pair(5, seed=11)
    sp = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    counts, stats = _sample_counts(target, draft, 6000, 3, sp, k)
    p = chi2_test(counts, _exact_joint(target, 3, 1.0))
    print(f"k={k}: chi-square p={p:.3g}, acceptance {stats.acceptance_rate:.2f}")
    assert 0.2 < stats.acceptance_rate < 0.95  # both branches of the rule are exercised
    assert p > 1e-4


def test_sampling_test_catches_a_wrong_acceptance_rule(monkeypatch):
    """Accept-always gives the draft's distribution: the same test must reject it."""

    def accept_always(target_logits, draft, q, u, temperature, top_k, top_p, min_p):
        k = len(draft)
        p = np.zeros_like(target_logits[k : k + 1])
        verify.probs_from_logits(target_logits[k : k + 1], p, temperature, top_k, top_p, min_p)
        return k, verify.sample_token(p[0], float(u[k]))

    monkeypatch.setattr(verify, "sample_accept", accept_always)
    target, draft = _bigram_pair(5, seed=11)
    sp = SamplingParams(temperature=1.0)
    counts, _ = _sample_counts(target, draft, 6000, 3, sp, k=3)
    assert chi2_test(counts, _exact_joint(target, 3, 1.0)) < 1e-6


def test_sampling_on_tiny_gguf_has_the_target_distribution(load):
    """First two tokens under speculative sampling against the target's exact distribution of them."""
    target, draft = load("target"), load("draft")
    prompt = target.tokenize("Sample me")
    sp = SamplingParams(temperature=1.0, top_k=6, top_p=1.0, min_p=0.0)
    v = target.n_vocab

    def probs_after(tokens):
        target.rollback(0)
        row = np.ascontiguousarray(target.advance_to(tokens, logits="last")[-1:])
        p = np.zeros((1, v), dtype=np.float32)
        verify.probs_from_logits(row, p, sp.temperature, sp.top_k, sp.top_p, sp.min_p)
        return p[0].astype(np.float64)

    p1 = probs_after(prompt)
    exact = np.zeros((v, v))
    for t1 in np.flatnonzero(p1):
        exact[t1] = p1[t1] * probs_after(prompt + [int(t1)])
    counts = np.zeros((v, v), dtype=np.int64)
    stats = Stats()
    for s in range(1500):
        toks = []
        for st in generate(target, draft, prompt, k=4, sampling=sp, max_tokens=3, seed=s):
            stats.add(st)
            toks.extend(st.tokens)
        counts[toks[0], toks[1]] += 1
    assert stats.drafted > 0 and 0 < stats.accepted < stats.drafted
    assert chi2_test(counts, exact) > 1e-4


@pytest.mark.parametrize("mode,k", [("ngram", 8), ("ngram", None), ("auto", None)])
def test_ngram_and_auto_modes_keep_greedy_output(load, mode, k):
    """Whatever drafts (n-gram lookup, draft model, nothing), greedy output stays the target's."""
    from edgespec.core.policy import Controller, Costs

    target, draft = load("target"), load("self_draft")
    text = "one two three four five six seven eight nine ten. " * 3
    prompt = target.tokenize(text)
    ref, margins = reference_greedy(target, prompt, 64)
    # Cheap verification so that drafting is attractive and the drafters actually run.
    costs = Costs({n: 1.0 + 0.05 * n for n in range(1, 18)}, draft_token=0.1)
    stats = Stats()
    out = []
    for step in generate(target, draft, prompt, max_tokens=64, controller=Controller(costs, mode=mode, k=k)):
        stats.add(step)
        out.extend(step.tokens)
    i = first_divergence(ref, out)
    assert i is None or margins[i] < NEAR_TIE
    assert stats.drafted > 0
    if mode == "ngram":
        assert set(stats.drafter_steps) <= {"ngram", "none"} and stats.drafter_steps.get("ngram")


# ------------------------------------------------------------------- vocabularies of different size
def _shared_vocab_pair(vt: int, vd: int, seed: int):
    """A bigram target over vt ids and a draft over vd ids that agree on the ids both have. Where the
    draft is wider, it puts most of its weight on ids the target lacks."""
    rng = np.random.default_rng(seed)
    n = max(vt, vd)
    base = rng.standard_normal((n, n)).astype(np.float32) * 1.5
    p = np.ascontiguousarray(base[:vt, :vt])
    q = np.ascontiguousarray((base[:vd, :vd] + rng.standard_normal((vd, vd)).astype(np.float32) * 0.8))
    if vd > vt:
        q[:, vt:] += 4.0  # the draft's favourite tokens do not exist in the target
    return BigramLM(p), BigramLM(q)


@pytest.mark.parametrize("vt,vd", [(6, 8), (8, 6)])
def test_greedy_with_vocabularies_of_different_size(vt, vd):
    target, draft = _shared_vocab_pair(vt, vd, seed=3)
    ref = []
    prev = 0
    for _ in range(30):
        prev = int(np.argmax(target.table[prev]))
        ref.append(prev)
    out, stats = run(target, draft, [0], k=3, max_tokens=30)
    assert out == ref
    assert stats.drafted > 0


@pytest.mark.parametrize("vt,vd", [(5, 7), (7, 5)])
def test_sampling_with_vocabularies_of_different_size_has_the_target_distribution(vt, vd):
    target, draft = _shared_vocab_pair(vt, vd, seed=5)
    sp = SamplingParams(temperature=1.0)
    counts, stats = _sample_counts(target, draft, 5000, 3, sp, k=3)
    p = chi2_test(counts, _exact_joint(target, 3, 1.0))
    print(f"target {vt} ids, draft {vd}: chi-square p={p:.3g}, acceptance {stats.acceptance_rate:.2f}")
    assert stats.drafted > 0 and 0 < stats.accepted < stats.drafted
    assert p > 1e-4


def test_tiny_gguf_pair_with_vocabularies_of_different_size(load):
    from edgespec.llama.pairing import check_pairing as check_compatible

    target, draft = load("wide_target"), load("narrow_draft")
    assert target.n_vocab == draft.n_vocab + 32
    check_compatible(target, draft)
    prompt = target.tokenize("different widths")
    ref, margins = reference_greedy(target, prompt, 24)
    out, stats = run(target, draft, prompt, k=4, max_tokens=24)
    i = first_divergence(ref, out)
    assert i is None or margins[i] < NEAR_TIE
    assert stats.accepted > 0
    sp = SamplingParams(temperature=0.9, top_k=20)
    out, stats = run(target, draft, prompt, k=4, max_tokens=24, sampling=sp, seed=1)
    assert len(out) == 24 and stats.drafted > 0


# ------------------------------------------------------------------------ models that cannot roll back
def test_a_long_evaluation_stops_between_batches_when_asked(load):
    """What a server's cancelled request needs during a long prompt: the evaluation ends at a batch
    boundary, the cache holding exactly the batches done, and the model stays usable."""
    from edgespec.errors import Interrupted

    m = load("target", n_batch=16)
    asked = []

    def stop() -> bool:  # no at the first batch boundary, yes at the second
        asked.append(len(m.tokens))
        return len(asked) == 2

    m.should_stop = stop
    prompt = [5 + i % 200 for i in range(50)]
    with pytest.raises(Interrupted):
        m.eval(prompt, logits="none")
    assert asked == [16, 32] and m.tokens == prompt[:32]  # two batches of 16 done, asked before each next one
    m.should_stop = None
    rows = m.advance_to(prompt, logits="last")  # only the rest is evaluated
    assert m.n_past == 50 and rows.shape == (1, m.n_vocab)
    assert m.state_size() == len(m.save_state())


def test_recurrent_model_cannot_drop_a_tail(load):
    from edgespec.errors import RollbackError

    m = load("mamba")
    assert not m.can_rollback
    prompt = m.tokenize("a state, not positions")
    m.eval(prompt, logits="none")
    with pytest.raises(RollbackError):
        m.rollback(len(prompt) - 2)
    m.rollback(len(prompt))  # nothing to drop: fine
    # advance_to starts over instead of keeping a state it cannot cut
    fresh = np.array(load("mamba").advance_to(prompt[:5], logits="last"))
    again = m.advance_to(prompt[:5], logits="last")
    assert np.allclose(again, fresh, atol=1e-5)


def test_recurrent_target_decodes_plainly_with_a_note(load):
    target, draft = load("mamba"), load("target")  # same byte vocabulary; the draft's guesses are mostly wrong
    prompt = target.tokenize("one two three one two three one two")
    ref, _ = reference_greedy(target, prompt, 24)
    steps = list(generate(target, draft, prompt, k=4, max_tokens=24))
    assert [t for s in steps for t in s.tokens] == ref
    assert "decoding plainly" in (steps[0].note or "")
    assert sum(s.drafted for s in steps) == 0


def test_recurrent_draft_leaves_context_drafts(load):
    from edgespec.core.policy import Controller, Costs

    target, draft = load("target"), load("mamba")
    text = "one two three four five six seven eight nine ten. " * 3
    prompt = target.tokenize(text)
    ref, margins = reference_greedy(target, prompt, 40)
    costs = Costs({n: 1.0 + 0.05 * n for n in range(1, 18)}, draft_token=0.01)
    steps = list(generate(target, draft, prompt, max_tokens=40, controller=Controller(costs, mode="auto")))
    out = [t for s in steps for t in s.tokens]
    i = first_divergence(ref, out)
    assert i is None or margins[i] < NEAR_TIE
    assert "context only" in (steps[0].note or "")
    assert {s.drafter for s in steps} <= {"ngram", "none"} and draft.n_evaluated == 0


# ------------------------------------------------------------------------------- k = 0 costs nothing
@pytest.mark.parametrize("mode", ["auto", "model"])
def test_k0_never_touches_the_draft_model(load, mode):
    from edgespec.core.policy import Controller, Costs

    target, draft = load("target"), load("draft")
    prompt = target.tokenize("k = 0 is plain decoding " * 3)
    ref, _ = reference_greedy(target, prompt, 30)
    before = draft.n_evaluated
    ctl = Controller(Costs({1: 1.0}), mode=mode, k=0, k_max=1)
    out, stats = run(target, draft, prompt, max_tokens=30, controller=ctl)
    assert out == ref and stats.drafted == 0
    assert draft.n_evaluated == before and draft.tokens == []


def test_k0_from_the_command_line_options(load):
    from edgespec.session.options import GenOptions
    from edgespec.session.runner import make_controller

    target, draft = load("target"), load("draft")
    ctl = make_controller(target, draft, GenOptions(mode="auto", k=0))
    prompt = target.tokenize("plain " * 10)
    run(target, draft, prompt, max_tokens=20, controller=ctl)
    assert draft.n_evaluated == 0


# --------------------------------------------------------------- sampling with context (n-gram) drafts
def _cyclic_bigram(v: int, seed: int) -> np.ndarray:
    """Random logits with a bias towards 0 -> 1 -> ... -> v-1 -> 0, so a repeating prompt's n-gram
    lookup is right about half the time."""
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((v, v)).astype(np.float32)
    for a in range(v):
        table[a, (a + 1) % v] += 1.5
    return table


@pytest.mark.parametrize("mode,k", [("ngram", 3), ("ngram", None), ("auto", None)])
def test_sampling_with_context_drafts_has_the_target_distribution(mode, k):
    from edgespec.core.policy import Controller, Costs

    v, length = 4, 3
    table = _cyclic_bigram(v, seed=8)
    prompt = [0, 1, 2, 3] * 4 + [0, 1, 2, 3, 0]
    sp = SamplingParams(temperature=1.0)
    counts = np.zeros((v,) * length, dtype=np.int64)
    stats = Stats()
    costs = Costs({n: 1.0 + 0.01 * n for n in range(1, 18)}, draft_token=0.05)  # drafting always looks worth it
    for s in range(5000):
        target = BigramLM(table)
        draft = BigramLM(table + 0.7 * np.random.default_rng(100 + s % 7).standard_normal((v, v)).astype(np.float32)) if mode == "auto" else None
        ctl = Controller(Costs(dict(costs.verify), draft_token=costs.draft_token), mode=mode, k=k, has_model=draft is not None)
        toks = []
        for step in generate(target, draft, prompt, sampling=sp, max_tokens=length, seed=s, controller=ctl):
            stats.add(step)
            toks.extend(step.tokens)
        counts[tuple(toks)] += 1
    start = BigramLM(table)
    cond = np.stack([start.probs(a) for a in range(v)])
    joint = cond[0]  # the prompt ends in token 0
    for _ in range(length - 1):
        joint = joint[..., None] * cond
    p = chi2_test(counts, joint)
    print(f"{mode} k={k}: chi-square p={p:.3g}, drafted {stats.drafted}, accepted {stats.accepted}, steps {stats.drafter_steps}")
    assert stats.drafter_steps.get("ngram", 0) > 1000 and 0 < stats.accepted < stats.drafted
    assert p > 1e-4
