"""A pure-numpy stand-in for edgespec.llama.Model: a bigram table gives the logits.

Its exact sequence probabilities are known in closed form, so the engine's sampling can be tested
against them with many draws in little time.
"""

from __future__ import annotations

import numpy as np


class BigramLM:
    def __init__(self, table: np.ndarray, n_ctx: int = 4096, eog: int | None = None):
        self.table = np.ascontiguousarray(table, dtype=np.float32)
        self.n_vocab = self.table.shape[1]
        self.n_ctx = n_ctx
        self.eog = eog
        self.tokens: list[int] = []
        self.evaluated = 0  # tokens pushed through eval, to check the cache is reused

    def eval(self, tokens, logits="last"):
        assert len(self.tokens) + len(tokens) <= self.n_ctx
        self.tokens.extend(int(t) for t in tokens)
        self.evaluated += len(tokens)
        rows = self.table[np.asarray(tokens, dtype=np.int64)]
        if logits == "none":
            return None
        return np.ascontiguousarray(rows if logits == "all" else rows[-1:])

    def advance_to(self, tokens, logits="none"):
        p = 0
        for a, b in zip(self.tokens, tokens):
            if a != b:
                break
            p += 1
        if logits != "none":
            p = min(p, len(tokens) - 1)
        self.rollback(p)
        return self.eval(tokens[p:], logits) if p < len(tokens) else None

    def rollback(self, n_past):
        del self.tokens[n_past:]

    def is_eog(self, token):
        return token == self.eog

    def probs(self, prev: int, temperature: float = 1.0) -> np.ndarray:
        z = self.table[prev].astype(np.float64) / temperature
        e = np.exp(z - z.max())
        return e / e.sum()
