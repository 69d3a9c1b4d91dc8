"""The acceptance step: native kernels against the numpy reference, and the statistics of sampling."""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from edgespec.core import verify
from stats_util import chi2_sf
from edgespec.core.verify import (
    SamplingParams,
    reference_greedy_accept,
    reference_probs_from_logits,
    reference_sample_accept,
    reference_sample_token,
)

native = verify._native  # None without the extension; the tests that need it are skipped
needs_native = pytest.mark.skipif(not verify.NATIVE, reason="edgespec native extension not built")

TEMPERATURES = (0.3, 0.8, 1.5)
TOP_PS = (1.0, 0.9, 0.5)
MIN_PS = (0.0, 0.05)
KINDS = ("normal", "ties", "neginf")


def top_ks(v: int) -> tuple[int, ...]:
    # 1000 exercises the nth_element path (top_k > 512), V means "off".
    return tuple(sorted({0, 1, 40, v} | ({1000} if v > 1000 else set())))


def all_params(v: int) -> list[tuple[float, int, float, float]]:
    return list(itertools.product(TEMPERATURES, top_ks(v), TOP_PS, MIN_PS))


def make_logits(rng: np.random.Generator, rows: int, v: int, kind: str) -> np.ndarray:
    """Random logits; "ties" draws from a few values, "neginf" masks a fifth of the tokens."""
    if kind == "ties":
        x = rng.integers(-3, 4, size=(rows, v)) * 0.5
    else:
        x = rng.normal(0.0, rng.uniform(0.5, 4.0), size=(rows, v))
    if kind == "neginf":
        x[rng.random((rows, v)) < 0.2] = -np.inf
        x[np.arange(rows), rng.integers(0, v, rows)] = rng.normal(size=rows)  # one finite per row
    return np.ascontiguousarray(x, dtype=np.float32)


def ref_probs(logits: np.ndarray, params) -> np.ndarray:
    out = np.empty_like(logits)
    reference_probs_from_logits(logits, out, *params)
    return out


def native_probs(logits: np.ndarray, params) -> np.ndarray:
    out = np.empty_like(logits)
    native.probs_from_logits(logits, out, *params)
    return out


def assert_probs_match(got: np.ndarray, want: np.ndarray, context) -> None:
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9, err_msg=str(context))
    # Same kept set (probabilities that underflow differently in float32 are not a decision).
    visible = (got > 1e-30) | (want > 1e-30)
    assert np.array_equal(got[visible] > 0, want[visible] > 0), context
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)


def sample_drafts(rng: np.random.Generator, q: np.ndarray) -> np.ndarray:
    """One draft token per row of q, drawn from q; sometimes a token q gives no mass (must be rejected)."""
    draft = np.array([reference_sample_token(row, rng.random()) for row in q], dtype=np.int32)
    wild = rng.random(len(draft)) < 0.1
    draft[wild] = rng.integers(0, q.shape[1], int(wild.sum()))
    return draft


# --------------------------------------------------------------------------------------------------
# Native against the reference


@needs_native
@pytest.mark.parametrize("v,seeds", [(2, 4), (7, 4), (259, 2), (32000, 1)])
@pytest.mark.parametrize("kind", KINDS)
def test_native_matches_reference(v: int, seeds: int, kind: str) -> None:
    combos = all_params(v)
    if v >= 32000:
        combos = combos[::4]  # the reference is slow here; a quarter of the grid still covers each value
    for seed, params in itertools.product(range(seeds), combos):
        rng = np.random.default_rng([v, seed, KINDS.index(kind), *(int(x * 100) for x in params)])
        k = int(rng.integers(0, 9))
        target = make_logits(rng, k + 1, v, kind)
        ctx = (v, kind, seed, params, k)

        p_ref = ref_probs(target, params)
        assert_probs_match(native_probs(target, params), p_ref, ctx)

        for row in p_ref:  # identical input: identical token
            for u in rng.random(4):
                assert native.sample_token(row, u) == reference_sample_token(row, u), (ctx, u)

        # The draft is a perturbed target under the same params, as in a real draft model.
        q = ref_probs(np.ascontiguousarray(target[:k] + rng.normal(0, 1.0, (k, v)).astype(np.float32)), params)
        draft = sample_drafts(rng, q)
        uniforms = rng.random(k + 1)
        want = reference_sample_accept(target, draft, q, uniforms, *params)
        assert native.sample_accept(target, draft, q, uniforms, *params) == want, ctx

        greedy_draft = np.argmax(target[:k], axis=1).astype(np.int32)
        if k:
            greedy_draft[rng.integers(0, k)] = rng.integers(0, v)  # sometimes a mismatch
        assert native.greedy_accept(target, greedy_draft) == reference_greedy_accept(target, greedy_draft), ctx


@needs_native
@pytest.mark.parametrize(
    "params",
    [(0.8, 0, 1.0, 0.0), (0.8, 40, 0.9, 0.0), (0.8, 0, 0.9, 0.0), (1.0, 0, 0.5, 0.05), (0.6, 0, 1.0, 0.05)],
)
def test_native_matches_reference_full_vocab(params) -> None:
    """Qwen-sized rows: a peaked one (a few tokens dominate) and flat ones (the nucleus is huge)."""
    v = 151936
    rng = np.random.default_rng(7)
    peaked = rng.normal(0.0, 2.0, v)
    peaked[rng.choice(v, 20, replace=False)] = rng.uniform(8.0, 16.0, 20)
    target = np.stack([peaked, rng.normal(0.0, 1.0, v), rng.normal(0.0, 2.5, v)]).astype(np.float32)
    p_ref = ref_probs(target, params)
    assert_probs_match(native_probs(target, params), p_ref, params)
    q = ref_probs(np.ascontiguousarray(target[:2] + rng.normal(0, 0.5, (2, v)).astype(np.float32)), params)
    for seed in range(3):
        r = np.random.default_rng(seed)
        draft, uniforms = sample_drafts(r, q), r.random(3)
        want = reference_sample_accept(target, draft, q, uniforms, *params)
        assert native.sample_accept(target, draft, q, uniforms, *params) == want


# --------------------------------------------------------------------------------------------------
# Semantics on hand-made cases (both implementations)

IMPLS = [
    pytest.param(
        (reference_probs_from_logits, reference_sample_token, reference_greedy_accept, reference_sample_accept),
        id="reference",
    ),
    pytest.param(
        (verify.probs_from_logits, verify.sample_token, verify.greedy_accept, verify.sample_accept),
        id="native" if verify.NATIVE else "dispatch",
    ),
]


def f32(*rows) -> np.ndarray:
    return np.array(rows, dtype=np.float32)


@pytest.mark.parametrize("impl", IMPLS)
def test_filters_keep_expected_tokens(impl) -> None:
    probs_from_logits = impl[0]

    def kept(logits, **kw):
        params = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0) | kw
        out = np.empty_like(logits)
        probs_from_logits(logits, out, params["temperature"], params["top_k"], params["top_p"], params["min_p"])
        return [int(i) for i in np.flatnonzero(out[0])]

    tied = f32([1.0, 3.0, 3.0, 3.0, 2.0])
    assert kept(tied, top_k=2) == [1, 2]  # ties at the boundary go to the lower ids
    assert kept(tied, top_k=4) == [1, 2, 3, 4]
    assert kept(tied, top_k=1) == [1]
    assert kept(tied, top_k=5) == [0, 1, 2, 3, 4]  # top_k = V is off
    # Weights 1, 1, 1, e^-1, e^-2: one tied token holds 0.285 of the mass, two hold 0.571.
    assert kept(tied, top_p=0.25) == [1]
    assert kept(tied, top_p=0.3) == [1, 2]  # ties in the nucleus also go to the lower ids
    assert kept(tied, top_p=0.0) == [1]  # always at least one token
    # min_p is relative to the top token: exp(-1) = 0.37 of it survives 0.3, exp(-2) does not.
    assert kept(tied, min_p=0.3) == [1, 2, 3, 4]
    assert kept(tied, min_p=0.4) == [1, 2, 3]
    # top_p runs on what top_k left: of the top 2 (equal), one is enough for 0.5.
    assert kept(tied, top_k=2, top_p=0.5) == [1]
    masked = f32([0.0, -np.inf, 1.0, -np.inf])
    assert kept(masked) == [0, 2]
    assert kept(masked, top_k=3) == [0, 2]  # a kept -inf still gets probability 0


@pytest.mark.parametrize("impl", IMPLS)
def test_temperature_softmax(impl) -> None:
    probs_from_logits = impl[0]
    logits = f32([0.0, 1.0, 2.0], [5.0, 5.0, 5.0])
    out = np.empty_like(logits)
    probs_from_logits(logits, out, 0.5, 0, 1.0, 0.0)
    e = np.exp(np.array([0.0, 2.0, 4.0]))
    np.testing.assert_allclose(out[0], e / e.sum(), rtol=1e-6)
    np.testing.assert_allclose(out[1], 1 / 3, rtol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_sample_token_inverse_cdf(impl) -> None:
    sample_token = impl[1]
    p = np.array([0.0, 2.0, 0.0, 1.0, 1.0, 0.0], np.float32)  # unnormalised: CDF 0, .5, .5, .75, 1, 1
    assert sample_token(p, 0.0) == 1
    assert sample_token(p, 0.49) == 1
    assert sample_token(p, 0.5) == 3  # the first id whose cumulative sum *exceeds* u * total
    assert sample_token(p, 0.8) == 4
    assert sample_token(p, np.nextafter(1.0, 0.0)) == 4  # never a zero-probability id
    with pytest.raises(ValueError):
        sample_token(np.zeros(2, np.float32), 0.5)


@pytest.mark.parametrize("impl", IMPLS)
def test_greedy_accept_walk(impl) -> None:
    greedy_accept = impl[2]
    logits = f32([0, 5, 1], [2, 2, 1], [0, 0, 9], [7, 0, 0])  # argmaxes 1, 0 (tie), 2, 0
    assert greedy_accept(logits, np.array([1, 0, 2], np.int32)) == (3, 0)
    assert greedy_accept(logits, np.array([1, 1, 2], np.int32)) == (1, 0)
    assert greedy_accept(logits, np.array([2, 0, 2], np.int32)) == (0, 1)
    assert greedy_accept(logits[:1], np.zeros(0, np.int32)) == (0, 1)  # k = 0: plain greedy decoding


@pytest.mark.parametrize("impl", IMPLS)
def test_sample_accept_rules(impl) -> None:
    sample_accept = impl[3]
    target = f32([0.0, 1.0, 2.0, 3.0], [3.0, 2.0, 1.0, 0.0], [0.0, 0.0, 0.0, 9.0])
    p = np.exp(target.astype(np.float64)) / np.exp(target.astype(np.float64)).sum(axis=1, keepdims=True)
    params = (1.0, 0, 1.0, 0.0)
    q_same = p[:2].astype(np.float32)
    u = np.array([0.999, 0.999, 0.0])
    # p == q: every draft token is accepted; u[k] = 0 samples the first id with mass from p_k.
    assert sample_accept(target, np.array([2, 0], np.int32), q_same, u, *params) == (2, 0)
    # q gives the draft token no mass: rejected; the residual max(p - q, 0) (p without token 0) is
    # sampled with u[k] = 0.99, which lands on its last token.
    q_zero = f32([1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25])
    assert sample_accept(target, np.array([1, 0], np.int32), q_zero, np.array([0.0, 0.0, 0.99]), *params) == (0, 3)
    # Accepted at row 0 (u = 0), rejected at row 1 (u above p/q = 0.13): of max(p - q, 0) only token 0
    # (p = 0.64 against q = 0.25) has mass.
    q_flat = f32([0.1, 0.1, 0.1, 0.7], [0.25, 0.25, 0.25, 0.25])
    assert sample_accept(target, np.array([3, 3], np.int32), q_flat, np.array([0.0, 0.99, 0.9]), *params) == (1, 0)


@pytest.mark.parametrize("impl", IMPLS)
def test_invalid_input_raises(impl) -> None:
    probs_from_logits, sample_token, greedy_accept, sample_accept = impl
    logits = f32([0.0, 1.0], [1.0, 0.0])
    q = f32([0.5, 0.5])
    with pytest.raises(ValueError):
        greedy_accept(logits, np.zeros(2, np.int32))  # k does not match
    with pytest.raises(ValueError):
        greedy_accept(logits, np.array([2], np.int32))  # outside the vocabulary
    with pytest.raises(ValueError):
        sample_accept(logits, np.array([0], np.int32), q, np.zeros(2), 0.0, 0, 1.0, 0.0)  # greedy temperature
    with pytest.raises(ValueError):
        sample_accept(logits, np.array([0], np.int32), q, np.zeros(1), 1.0, 0, 1.0, 0.0)  # k+1 uniforms
    with pytest.raises(ValueError):
        sample_accept(logits, np.array([0], np.int32), q, np.array([0.5, 1.0]), 1.0, 0, 1.0, 0.0)  # u in [0, 1)
    with pytest.raises(ValueError):
        probs_from_logits(f32([-np.inf, -np.inf]), np.empty((1, 2), np.float32), 1.0, 0, 1.0, 0.0)
    with pytest.raises(ValueError):
        probs_from_logits(logits, logits, 1.0, 0, 1.0, 0.0)  # out aliases logits


@pytest.mark.parametrize("impl", IMPLS)
def test_wrong_dtypes_and_layouts_raise_type_error(impl) -> None:
    """The native functions refuse to copy (noconvert); the reference refuses the same inputs."""
    probs_from_logits, sample_token, greedy_accept, sample_accept = impl
    logits = np.zeros((2, 8), np.float32)
    draft = np.zeros(1, np.int32)
    q = np.full((1, 8), 0.125, np.float32)
    u = np.zeros(2)
    out = np.empty_like(logits)
    readonly = np.empty_like(logits)
    readonly.flags.writeable = False
    bad = [
        lambda: greedy_accept(logits.astype(np.float64), draft),
        lambda: greedy_accept(np.zeros((2, 16), np.float32)[:, ::2], draft),  # strided
        lambda: greedy_accept(logits, draft.astype(np.int64)),
        lambda: probs_from_logits(logits.astype(np.float64), out, 1.0, 0, 1.0, 0.0),
        lambda: probs_from_logits(logits, out.astype(np.float64), 1.0, 0, 1.0, 0.0),
        lambda: probs_from_logits(np.asfortranarray(np.zeros((8, 2), np.float32).T), out, 1.0, 0, 1.0, 0.0),
        lambda: probs_from_logits(logits, readonly, 1.0, 0, 1.0, 0.0),
        lambda: sample_token(np.ones(8), 0.5),
        lambda: sample_token(np.ones(16, np.float32)[::2], 0.5),
        lambda: sample_accept(logits, draft, q, u.astype(np.float32), 1.0, 0, 1.0, 0.0),
        lambda: sample_accept(logits, draft, q.astype(np.float64), u, 1.0, 0, 1.0, 0.0),
        lambda: sample_accept(logits.astype(np.float64), draft, q, u, 1.0, 0, 1.0, 0.0),
        lambda: sample_accept(logits, draft, q, u, 1.0, 0, 1.0, 0.0, np.zeros((2, 8))),  # float64 scratch
    ]
    for i, call in enumerate(bad):
        with pytest.raises(TypeError):
            call()
            pytest.fail(f"case {i} did not raise")


@needs_native
def test_scratch_is_only_a_workspace() -> None:
    rng = np.random.default_rng(3)
    target = make_logits(rng, 4, 300, "normal")
    q = ref_probs(np.ascontiguousarray(target[:3]), (0.9, 0, 0.9, 0.0))
    draft = sample_drafts(rng, q)
    for _ in range(20):
        u = rng.random(4)
        want = native.sample_accept(target, draft, q, u, 0.9, 0, 0.9, 0.0)
        scratch = np.full((4, 300), np.nan, np.float32)
        assert native.sample_accept(target, draft, q, u, 0.9, 0, 0.9, 0.0, scratch) == want
    with pytest.raises(ValueError):
        native.sample_accept(target, draft, q, u, 0.9, 0, 0.9, 0.0, np.zeros((1, 300), np.float32))


def test_sampling_params() -> None:
    assert SamplingParams().greedy
    assert not SamplingParams(temperature=0.7).greedy
    with pytest.raises(Exception):
        SamplingParams().temperature = 1.0  # frozen
    with pytest.raises(ValueError):
        SamplingParams(temperature=1.0, top_p=1.5)
    with pytest.raises(ValueError):
        SamplingParams(temperature=1.0, min_p=-0.1)


# --------------------------------------------------------------------------------------------------
# Statistics: the emitted tokens have the target's distribution


def test_chi2_sf_against_known_values() -> None:
    # chi-square(1) at 3.841459 and chi-square(5) at 11.0705 are the 5% points; chi-square(2) is exp(-x/2).
    assert chi2_sf(3.841459, 1) == pytest.approx(0.05, rel=1e-5)
    assert chi2_sf(11.0705, 5) == pytest.approx(0.05, rel=1e-4)
    for x in (0.1, 1.0, 10.0, 100.0):
        assert chi2_sf(x, 2) == pytest.approx(math.exp(-x / 2), rel=1e-10)


def chi2_pvalue(tokens: np.ndarray, p: np.ndarray) -> float:
    """Goodness of fit of the observed tokens to p; 0 if a token with p = 0 appears."""
    counts = np.bincount(tokens, minlength=p.size)
    if counts[p == 0].any():
        return 0.0
    support = p > 0
    if support.sum() == 1:
        return 1.0
    expected = tokens.size * p[support]
    stat = float(((counts[support] - expected) ** 2 / expected).sum())
    return chi2_sf(stat, int(support.sum()) - 1)


V_STATS = 6
STATS_CASES = [  # (k, params)
    (1, (1.0, 0, 1.0, 0.0)),
    (2, (0.7, 4, 1.0, 0.0)),  # top_k leaves target tokens the draft never proposes
    (3, (1.3, 0, 0.9, 0.05)),
]


def stats_setup(k: int, params, n_draws: int, seed: int):
    rng = np.random.default_rng(seed)
    target = rng.normal(0.0, 1.0, (k + 1, V_STATS)).astype(np.float32)
    q = np.empty((k, V_STATS), np.float32)  # a draft that roughly agrees with the target
    verify.probs_from_logits(target[:k] + rng.normal(0.0, 1.0, (k, V_STATS)).astype(np.float32), q, *params)
    p = ref_probs(target, params).astype(np.float64)
    p /= p.sum(axis=1, keepdims=True)
    cq = np.cumsum(q.astype(np.float64), axis=1)
    drafts = np.stack(
        [np.searchsorted(cq[i], rng.random(n_draws) * cq[i, -1], side="right") for i in range(k)], axis=1
    )
    drafts = np.minimum(drafts, V_STATS - 1).astype(np.int32)  # guards rounding at u * total
    uniforms = rng.random((n_draws, k + 1))
    return target, q, p, drafts, uniforms


@pytest.mark.parametrize("k,params", STATS_CASES)
def test_sample_accept_emits_target_distribution(k: int, params) -> None:
    n_draws = 200_000 if verify.NATIVE else 20_000  # the reference is ~50x slower per call
    target, q, p, drafts, uniforms = stats_setup(k, params, n_draws, seed=1)
    first = np.empty(n_draws, np.int64)
    second = []  # the token after the first, when the call emitted two or more
    n_acc_total = 0
    for d in range(n_draws):
        n, tok = verify.sample_accept(target, drafts[d], q, uniforms[d], *params)
        out = drafts[d, :n].tolist() + [tok]
        first[d] = out[0]
        if len(out) > 1:
            second.append(out[1])
        n_acc_total += n
    assert 0 < n_acc_total < n_draws * k  # both branches were exercised
    assert chi2_pvalue(first, p[0]) > 1e-3
    assert chi2_pvalue(np.array(second), p[1]) > 1e-3

    # The test has power: the same draws under deliberately wrong rules fail it decisively.
    x, u = drafts[:, 0], uniforms[:, 0]
    assert chi2_pvalue(x.astype(np.int64), p[0]) < 1e-6  # accept every draft token
    accepted = u < p[0][x] / q[0][x].astype(np.float64)
    resample_p = np.searchsorted(np.cumsum(p[0]), uniforms[:, k] * p[0].sum(), side="right")
    wrong = np.where(accepted, x, np.minimum(resample_p, V_STATS - 1))
    assert chi2_pvalue(wrong.astype(np.int64), p[0]) < 1e-6  # resample from p instead of max(p - q, 0)


# --------------------------------------------------------------------------------------------------
# Dispatch


def run_python(code: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    """Run code in a fresh interpreter that imports edgespec the way this one does."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p), **env)
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=120)


KERNEL_CHECK = """
import sys
import numpy as np
from edgespec import _native
from edgespec.core.verify import reference_greedy_accept, reference_probs_from_logits
if _native.kernel_variant() != sys.argv[1]:
    sys.exit(3)  # this CPU lacks the variant
rng = np.random.default_rng(0)
for v in (7, 37, 259, 32000):  # lengths that leave vector tails
    for params in [(0.8, 0, 1.0, 0.0), (1.0, 0, 0.9, 0.0), (0.5, 40, 1.0, 0.05), (1.5, 1000, 0.5, 0.0)]:
        logits = rng.normal(0.0, 2.0, (2, v)).astype(np.float32)
        logits[0, rng.integers(0, v)] = -np.inf
        got, want = np.empty_like(logits), np.empty_like(logits)
        _native.probs_from_logits(logits, got, *params)
        reference_probs_from_logits(logits, want, *params)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9, err_msg=str((v, params)))
    draft = np.argmax(logits[:1], axis=1).astype(np.int32)
    assert _native.greedy_accept(logits, draft) == reference_greedy_accept(logits, draft)
"""


@needs_native
@pytest.mark.parametrize("kernel", ["baseline", "avx2", "avx512"])
def test_every_kernel_variant_matches_reference(kernel: str) -> None:
    """The row kernels are picked by CPU at run time; force each variant this CPU can run."""
    proc = run_python(KERNEL_CHECK, kernel, EDGESPEC_KERNELS=kernel)
    if proc.returncode == 3:
        pytest.skip(f"this CPU cannot run the {kernel} kernels")
    assert proc.returncode == 0, proc.stderr


def test_falls_back_to_reference_without_native() -> None:
    code = """
import sys, warnings
sys.modules["edgespec._native"] = None  # makes `from edgespec import _native` raise ImportError
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import edgespec.core.verify as v
messages = [str(w.message) for w in caught]
assert any("native extension not built" in m and "numpy reference" in m for m in messages), messages
assert not v.NATIVE
assert v.greedy_accept is v.reference_greedy_accept
assert v.probs_from_logits is v.reference_probs_from_logits
assert v.sample_token is v.reference_sample_token
assert v.sample_accept is v.reference_sample_accept
import numpy as np
print(v.greedy_accept(np.array([[0, 2, 1]], np.float32), np.zeros(0, np.int32)))
"""
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "(0, 1)"
