"""The acceptance step of speculative decoding, and the sampling transform shared by draft and target.

Every function has a pure-numpy reference (``reference_*``) that defines its semantics; the native
extension (``edgespec._native``) implements the same signatures and is used when it is built.

Sampling follows llama.cpp's sampler order: top_k, top_p, min_p (both on the temperature-1 softmax of
what is left), then the temperature softmax. Ties between equal logits go to the lower token id, so
the kept set is deterministic. Acceptance is standard speculative rejection sampling (Leviathan et al.
2023, Chen et al. 2023): the emitted tokens have exactly the target's distribution.

Arrays: logits/probabilities float32, tokens int32, uniforms float64, all C-contiguous; anything else
raises TypeError (the native functions refuse to copy, and the reference checks the same).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

__all__ = [
    "NATIVE",
    "SamplingParams",
    "greedy_accept",
    "probs_from_logits",
    "sample_token",
    "sample_accept",
    "reference_greedy_accept",
    "reference_probs_from_logits",
    "reference_sample_token",
    "reference_sample_accept",
]


@dataclass(frozen=True)
class SamplingParams:
    """Sampler settings; temperature <= 0 means greedy decoding. top_k <= 0 and top_p >= 1 and
    min_p <= 0 each switch their filter off."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.top_p <= 1.0:
            raise ValueError(f"top_p must be in [0, 1], got {self.top_p}")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.temperature != self.temperature:
            raise ValueError("temperature is NaN")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


# --------------------------------------------------------------------------------------------------
# Reference implementations (the specification of the native kernels)


def _check_array(name: str, a: np.ndarray, dtype: type, ndim: int, writable: bool = False) -> None:
    """Mirror the native binding's strictness so code tested without the extension behaves the same."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(a).__name__}")
    if a.dtype != dtype or a.ndim != ndim or not a.flags.c_contiguous or (writable and not a.flags.writeable):
        want = f"a {'writable ' if writable else ''}C-contiguous {ndim}-d {np.dtype(dtype).name} array"
        raise TypeError(f"{name} must be {want}, got {a.dtype}, ndim={a.ndim}, contiguous={a.flags.c_contiguous}")


def _check_params(temperature: float, top_k: int, top_p: float, min_p: float) -> None:
    if not temperature > 0.0:
        raise ValueError("temperature must be > 0 (use greedy_accept for greedy decoding)")
    if top_p != top_p or min_p != min_p:
        raise ValueError("top_p/min_p is NaN")


def _check_verify_shapes(logits: np.ndarray, draft: np.ndarray) -> int:
    _check_array("logits", logits, np.float32, 2)
    _check_array("draft", draft, np.int32, 1)
    if logits.shape[0] < 1 or logits.shape[1] < 1:
        raise ValueError("logits must have shape [k+1, n_vocab]")
    k = logits.shape[0] - 1
    if draft.shape[0] != k:
        raise ValueError("draft must have k = logits.shape[0] - 1 tokens")
    if np.any((draft < 0) | (draft >= logits.shape[1])):
        raise ValueError("a draft token is outside the vocabulary")
    return k


def _kept(l: np.ndarray, lmax: float, top_k: int, top_p: float, min_p: float) -> np.ndarray | None:
    """Token ids kept by top_k, top_p, min_p (in that order); None when all are kept."""
    n = l.size
    idx = None
    if 0 < top_k < n:
        kth = np.partition(l, n - top_k)[n - top_k]
        above = np.flatnonzero(l > kth)
        ties = np.flatnonzero(l == kth)[: top_k - above.size]  # ties at the boundary: lowest ids
        idx = np.sort(np.concatenate([above, ties]))
    if top_p < 1.0:
        if idx is None:
            idx = np.arange(n)
        idx = idx[np.argsort(-l[idx], kind="stable")]  # larger logit first, ties by lower id
        cum = np.cumsum(np.exp(l[idx].astype(np.float64) - lmax))
        keep = int(np.searchsorted(cum, top_p * cum[-1], side="left")) + 1
        idx = idx[: min(keep, idx.size)]
    if min_p > 0.0:
        # p / p_max on the temperature-1 softmax; the top token (weight 1) always stays.
        ids = np.arange(n) if idx is None else idx
        idx = ids[np.exp(l[ids].astype(np.float64) - lmax) >= min(min_p, 1.0)]
    return idx


def _probs_row(l: np.ndarray, out: np.ndarray, temperature: float, top_k: int, top_p: float, min_p: float) -> None:
    lmax = float(l.max())
    if not np.isfinite(lmax):
        raise ValueError("a row of logits has no finite maximum")
    idx = _kept(l, lmax, top_k, top_p, min_p)
    z = l.astype(np.float64) if idx is None else l[idx].astype(np.float64)
    with np.errstate(under="ignore"):
        e = np.exp((z - lmax) / temperature)
    e /= e.sum()
    if idx is None:
        out[:] = e
    else:
        out[:] = 0.0
        out[idx] = e


def reference_probs_from_logits(
    logits: np.ndarray, out: np.ndarray, temperature: float, top_k: int, top_p: float, min_p: float
) -> None:
    """Write each row's sampling distribution (top_k, top_p, min_p, then temperature) into out."""
    _check_array("logits", logits, np.float32, 2)
    _check_array("out", out, np.float32, 2, writable=True)
    if out.shape != logits.shape:
        raise ValueError("out must have the shape of logits")
    if np.shares_memory(out, logits):
        raise ValueError("out must not alias logits")
    _check_params(temperature, top_k, top_p, min_p)
    for l, o in zip(logits, out):
        _probs_row(l, o, temperature, top_k, top_p, min_p)


def reference_sample_token(probs: np.ndarray, u: float) -> int:
    """Inverse-CDF sample (ascending ids) from possibly unnormalised probs with uniform u in [0, 1)."""
    _check_array("probs", probs, np.float32, 1)
    if probs.size == 0:
        raise ValueError("probs must not be empty")
    if not 0.0 <= u < 1.0:
        raise ValueError("u must be in [0, 1)")
    cum = np.cumsum(probs, dtype=np.float64)
    total = cum[-1]
    if not total > 0.0:
        raise ValueError("cannot sample: the probabilities sum to 0")
    i = int(np.searchsorted(cum, u * total, side="right"))  # first id with cum > u * total
    if i >= probs.size:  # rounding ran past the end
        i = int(np.flatnonzero(probs > 0)[-1])
    return i


def reference_greedy_accept(logits: np.ndarray, draft: np.ndarray) -> tuple[int, int]:
    """Accept draft tokens while they equal the target argmax; returns (n_accepted, token)."""
    k = _check_verify_shapes(logits, draft)
    for i in range(k):
        a = int(np.argmax(logits[i]))  # ties: lowest id
        if a != draft[i]:
            return i, a
    return k, int(np.argmax(logits[k]))


def reference_sample_accept(
    target_logits: np.ndarray,
    draft: np.ndarray,
    draft_probs: np.ndarray,
    uniforms: np.ndarray,
    temperature: float,
    top_k: int,
    top_p: float,
    min_p: float,
    scratch: np.ndarray | None = None,
) -> tuple[int, int]:
    """Speculative rejection sampling; returns (n_accepted, token).

    draft_probs[i] is the draft's distribution (same transform and params) that draft[i] was sampled
    from; uniforms[i] decides acceptance of draft[i] and uniforms[k] drives the final sample.
    scratch: None, or a float32 workspace of shape [rows >= 2, n_vocab] (e.g. [k+1, n_vocab] for
    k >= 1) that the native kernel uses instead of its thread-local buffer; contents unspecified
    on return. The reference only validates it.
    """
    k = _check_verify_shapes(target_logits, draft)
    n = target_logits.shape[1]
    _check_array("draft_probs", draft_probs, np.float32, 2)
    _check_array("uniforms", uniforms, np.float64, 1)
    if draft_probs.shape != (k, n):
        raise ValueError("draft_probs must have shape [k, n_vocab]")
    if uniforms.shape != (k + 1,):
        raise ValueError("uniforms must have k+1 entries")
    if np.any((uniforms < 0.0) | (uniforms >= 1.0)):
        raise ValueError("uniforms must be in [0, 1)")
    if scratch is not None:
        _check_array("scratch", scratch, np.float32, 2, writable=True)
        if scratch.shape[0] < 2 or scratch.shape[1] != n:
            raise ValueError("scratch must have shape [rows >= 2, n_vocab]")
    _check_params(temperature, top_k, top_p, min_p)

    p = np.empty(n, dtype=np.float32)
    for i in range(k):  # rows are transformed lazily: a rejection at i leaves i+1..k untouched
        _probs_row(target_logits[i], p, temperature, top_k, top_p, min_p)
        x = int(draft[i])
        q = draft_probs[i]
        if q[x] > 0.0 and uniforms[i] < float(p[x]) / float(q[x]):
            continue
        r = np.maximum(p - q, np.float32(0.0))  # rejected: resample from the residual ...
        return i, reference_sample_token(r if np.any(r > 0.0) else p, float(uniforms[k]))  # ... or p if p == q
    _probs_row(target_logits[k], p, temperature, top_k, top_p, min_p)
    return k, reference_sample_token(p, float(uniforms[k]))


# --------------------------------------------------------------------------------------------------
# Dispatch: the native kernels when built, else the reference.

try:
    from edgespec import _native
except ImportError:
    _native = None
    warnings.warn(
        "edgespec native extension not built; using the slower numpy reference",
        RuntimeWarning,
        stacklevel=2,
    )

NATIVE: bool = _native is not None

if _native is not None:
    greedy_accept = _native.greedy_accept
    probs_from_logits = _native.probs_from_logits
    sample_token = _native.sample_token
    sample_accept = _native.sample_accept
else:
    greedy_accept = reference_greedy_accept
    probs_from_logits = reference_probs_from_logits
    sample_token = reference_sample_token
    sample_accept = reference_sample_accept
