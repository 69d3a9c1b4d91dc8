"""Greedy outputs against plain decoding: where two replies first differ, and whether that is a near-tie.

llama.cpp's batched CPU evaluation is not bit-identical to one-token evaluation, so a speculative
greedy reply may differ from the plain one where the target's top two logits are nearly tied. A
difference is a near-tie when the target's top-2 margin there, from a one-token evaluation, is below
the bound; anything else would be a bug.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

# Logits. Measured with the Qwen2.5-Coder 1.5B Q4_K_M target on a 2-core AMD EPYC: at a position of the
# edit suite whose one-token margin is 0.505, feeding the same history in ten different batch splits
# (sizes 1-5 and 1-64) moved the margin between -0.02 and +0.94; one split flipped the argmax.
NEAR_TIE = 1.0


def first_divergence(ref: Sequence[int], out: Sequence[int], prefix_only: bool = False) -> int | None:
    """Index of the first differing token; None when equal (or, prefix_only, when one is a prefix of the other)."""
    n = min(len(ref), len(out))
    for i in range(n):
        if ref[i] != out[i]:
            return i
    if prefix_only or len(ref) == len(out):
        return None
    return n


def text_divergence(pieces: Sequence[bytes], out: bytes) -> int | None:
    """For a reply known only as printed bytes (llama.cpp's): the index of the reference token whose bytes
    first differ from it, or None when one is a prefix of the other."""
    ref = b"".join(pieces)
    n = min(len(ref), len(out))
    j = next((i for i in range(n) if ref[i] != out[i]), None)
    if j is None:
        return None
    end = 0
    for i, piece in enumerate(pieces):
        end += len(piece)
        if end > j:
            return i
    return len(pieces)


def top2_margin(target, context: Sequence[int], banned: Sequence[int] = ()) -> float:
    """The target's top-2 logit margin for the token after `context`, from a one-token evaluation."""
    target.advance_to(list(context[:-1]))
    row = np.array(target.eval([context[-1]], logits="last")[-1], dtype=np.float32)
    if len(banned):
        row[np.asarray(banned, dtype=np.int64)] = -np.inf
    top2 = np.partition(row, -2)[-2:]
    return float(top2[1] - top2[0])
