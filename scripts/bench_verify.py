"""Time the native acceptance kernels against the numpy reference on Qwen-sized rows.

One verification step with k = 5 drafted tokens: target logits of shape 6 x 151936 (float32). Every
draft token is accepted (uniforms 0, draft = a likely token of q = p), so all 6 rows are transformed:
the worst case per call. Logits are LLM-shaped (a Gaussian bulk plus a few dominant tokens); the
"flat" row has no dominant tokens, so top_p keeps a large part of the vocabulary.

    python scripts/bench_verify.py [--runs 50] [--ref-runs 10] [--clock cpu|wall]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from edgespec.core import verify

N_VOCAB = 151936
K = 5


def make_logits(rng: np.random.Generator, flat: bool) -> np.ndarray:
    logits = rng.normal(0.0, 2.5, (K + 1, N_VOCAB))
    if not flat:
        for row in logits:
            row[rng.choice(N_VOCAB, 20, replace=False)] = rng.uniform(12.0, 22.0, 20)
    return logits.astype(np.float32)


def median_ms(fn, runs: int, clock) -> float:
    fn()  # warm-up (thread-local buffers, caches)
    times = []
    for _ in range(runs):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return 1e3 * statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50, help="timed calls of the native kernels")
    ap.add_argument("--ref-runs", type=int, default=10, help="timed calls of the numpy reference")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--clock", choices=("cpu", "wall"), default="cpu",
        help="cpu: this thread's CPU time (steady on a shared machine); wall: elapsed time",
    )
    args = ap.parse_args()
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    if not verify.NATIVE:
        print("edgespec._native is not built; nothing to compare", file=sys.stderr)
        return 1
    native = verify._native
    rng = np.random.default_rng(args.seed)
    peaked, flat = make_logits(rng, flat=False), make_logits(rng, flat=True)

    cases = [("greedy_accept", peaked, None)]
    for label, params in [
        ("sample top_k=40 top_p=0.9 T=0.8", (0.8, 40, 0.9, 0.0)),
        ("sample top_p=0.9 T=0.8", (0.8, 0, 0.9, 0.0)),
        ("sample top_p=0.9 T=0.8 (flat)", (0.8, 0, 0.9, 0.0)),
        ("sample T=0.8", (0.8, 0, 1.0, 0.0)),
    ]:
        cases.append((label, flat if "flat" in label else peaked, params))

    print(f"{K + 1} x {N_VOCAB} float32 logits, k={K}, all drafts accepted; kernels: {native.kernel_variant()}; "
          f"median {args.clock} time of {args.runs} native / {args.ref_runs} numpy calls")
    print(f"{'case':<34} {'native ms':>10} {'numpy ms':>10} {'speedup':>8}")
    for label, logits, params in cases:
        if params is None:
            draft = np.argmax(logits[:K], axis=1).astype(np.int32)
            calls = [lambda f=f: f(logits, draft) for f in (native.greedy_accept, verify.reference_greedy_accept)]
        else:
            q = np.empty((K, N_VOCAB), np.float32)
            native.probs_from_logits(logits[:K], q, *params)
            draft = np.argmax(q, axis=1).astype(np.int32)
            uniforms = np.zeros(K + 1)
            uniforms[K] = 0.5
            calls = [
                lambda f=f: f(logits, draft, q, uniforms, *params)
                for f in (native.sample_accept, verify.reference_sample_accept)
            ]
        results = [c() for c in calls]
        assert results[0] == results[1] and results[0][0] == K, (label, results)
        t_native, t_ref = median_ms(calls[0], args.runs, clock), median_ms(calls[1], args.ref_runs, clock)
        print(f"{label:<34} {t_native:>10.3f} {t_ref:>10.2f} {t_ref / t_native:>7.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
