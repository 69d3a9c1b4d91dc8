"""Time batched target decodes (logits at every position) after contexts of different lengths.

`edgespec calibrate` times its batches after 256 tokens of context; long copy-heavy answers verify
their drafts after 1,000-2,000. This shows how much more a batch costs there (min of --reps).

    python scripts/ctx_cost.py [--pair NAME] [--contexts 256,1000] [--sizes 1,16,32,64] [--reps 3]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pair", default=None)
    ap.add_argument("--contexts", default="256,1000")
    ap.add_argument("--sizes", default="1,16,32,64")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    contexts = [int(x) for x in args.contexts.split(",")]
    sizes = [int(x) for x in args.sizes.split(",")]

    from edgespec.models import registry
    from edgespec.session.loading import load_pair
    from edgespec.session.options import LoadOptions

    models = registry.resolve(registry.load_registry(), args.pair, None, None)
    if models.missing:
        sys.exit(f"missing models: {', '.join(m.name for m in models.missing)} (run `edgespec models pull NAME` first)")
    target, _ = load_pair(models.target, None, LoadOptions())
    if max(contexts) + max(sizes) > target.n_ctx:
        sys.exit(f"the longest context plus the largest batch ({max(contexts) + max(sizes)}) exceeds n_ctx {target.n_ctx}")
    filler = [int(t) for t in np.random.default_rng(0).integers(1000, 30000, size=max(contexts) + max(sizes))]

    def seconds(ctx: int, n: int) -> float:
        best = float("inf")
        for _ in range(args.reps):
            target.rollback(0)
            target.eval(filler[:ctx], logits="last")
            t0 = time.perf_counter()
            target.eval(filler[ctx : ctx + n], logits="all")
            best = min(best, time.perf_counter() - t0)
        return best

    print(f"{'context':>8s} " + " ".join(f"{n:>9d}" for n in sizes) + "   (ms, min of %d)" % args.reps)
    for ctx in contexts:
        print(f"{ctx:8d} " + " ".join(f"{seconds(ctx, n) * 1000:9.1f}" for n in sizes), flush=True)
    target.close()


if __name__ == "__main__":
    main()
