"""How far batch splits alone move the target's top-2 margin at one position of a recorded answer.

    python scripts/batch_split_margin.py traces.json PROMPT_ID POSITION [--splits 10]

traces.json comes from `scripts/replay_policy.py record`. The history (the prompt and the recorded
plain answer up to POSITION) is fed to the target one token at a time, then again in random batch
splits (sizes 1-5 and 1-64 in turn): no drafting, the same tokens, only the batches differ. For each
it prints the margin between the one-token top-2 tokens and the argmax. This is what the near-tie
bound of edgespec.bench.matching rests on.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from edgespec.llama.model import Model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("traces")
    ap.add_argument("prompt_id")
    ap.add_argument("position", type=int, help="index in the answer of the token whose margin is measured")
    ap.add_argument("--splits", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    data = json.load(open(args.traces))
    p = next(p for p in data["prompts"] if p["id"] == args.prompt_id)
    prompt, answer = p["prompt"], p["answer"]
    seq = prompt[-1:] + answer[: args.position]  # the last row predicts answer[position]
    with Model(data["target"], n_ctx=len(prompt) + args.position + 64, n_threads=2) as m:
        m.advance_to(prompt[:-1])
        base = len(prompt) - 1
        for t in seq:
            row = m.eval([t], logits="last")[0]
        top = np.argsort(-row)[:2]
        print(f"one token at a time: top-2 {top.tolist()}, margin {row[top[0]] - row[top[1]]:.3f}")
        rng = np.random.default_rng(args.seed)
        for i in range(args.splits):
            m.rollback(base)
            hi, j = (6 if i % 2 == 0 else 65), 0
            while j < len(seq):
                n = min(int(rng.integers(1, hi)), len(seq) - j)
                rows = m.eval(seq[j : j + n], logits="all")
                j += n
            r = rows[-1]
            print(f"split {i} (batches of 1-{hi - 1}): margin {r[top[0]] - r[top[1]]:+.3f}, argmax {int(np.argmax(r))}")


if __name__ == "__main__":
    main()
