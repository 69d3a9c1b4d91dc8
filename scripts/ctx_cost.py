"""Time batched target decodes (logits at every position) after contexts of different lengths.

`edgespec calibrate` fits what context adds to a batch from two contexts (256 and 1,024 tokens);
long copy-heavy answers verify their drafts after 1,000-2,000. This times the sizes at each context
directly, with llama.cpp's flash-attention kernel on, off or both: with both, two contexts on the
same weights take turns, so the machine's drift falls on both alike (median of --reps).

    python scripts/ctx_cost.py [--pair NAME] [--contexts 256,1400,2000] [--sizes 1,4,16,32,64]
                               [--flash-attn on,off] [--reps 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

FLASH = {"on": True, "off": False, "auto": None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pair", default=None)
    ap.add_argument("--contexts", default="256,1400,2000")
    ap.add_argument("--sizes", default="1,4,16,32,64")
    ap.add_argument("--flash-attn", default="on,off", help="comma-separated: on, off, auto (llama.cpp's choice)")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    contexts = [int(x) for x in args.contexts.split(",")]
    sizes = [int(x) for x in args.sizes.split(",")]
    kernels = args.flash_attn.split(",")
    if any(k not in FLASH for k in kernels):
        sys.exit("--flash-attn takes on, off and auto")

    from edgespec.llama.model import Model
    from edgespec.models import registry

    models = registry.resolve(registry.load_registry(), args.pair, None, None)
    if models.missing:
        sys.exit(f"missing models: {', '.join(m.name for m in models.missing)} (run `edgespec models pull NAME` first)")
    n_ctx = max(contexts) + max(sizes) + 256
    loaded = {k: Model(models.target, n_ctx=n_ctx, flash_attn=FLASH[k]) for k in kernels}
    filler = [int(t) for t in np.random.default_rng(0).integers(1000, 30000, size=max(contexts) + max(sizes))]

    times: dict[tuple[int, int, str], list[float]] = {}
    for ctx in contexts:
        for m in loaded.values():
            m.rollback(0)
            m.eval(filler[:ctx], logits="last")
        for _ in range(args.reps):
            for k, m in loaded.items():
                for n in sizes:
                    m.rollback(ctx)
                    t0 = time.perf_counter()
                    m.eval(filler[ctx : ctx + n], logits="all")
                    times.setdefault((ctx, n, k), []).append(time.perf_counter() - t0)

    print(f"ms, median of {args.reps}; flash attention " + " / ".join(kernels))
    print(f"{'context':>8s} " + " ".join(f"{n:>14d}" for n in sizes))
    for ctx in contexts:
        cells = ["/".join(f"{statistics.median(times[(ctx, n, k)]) * 1000:.0f}" for k in kernels) for n in sizes]
        print(f"{ctx:8d} " + " ".join(f"{c:>14s}" for c in cells))
    for m in loaded.values():
        m.close()


if __name__ == "__main__":
    main()
