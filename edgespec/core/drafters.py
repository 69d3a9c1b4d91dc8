"""Drafters: where proposed tokens come from. One small interface, two sources.

- ModelDrafter: the small draft model, one decode per proposed token.
- NgramDrafter: prompt lookup over everything seen so far; costs almost nothing.

A drafter proposes tokens after `history` and, for sampling, fills the proposal distribution q
(one row per token) that the rejection-sampling acceptance needs. It also reports a confidence per
token: the controller turns it into an acceptance estimate and stops drafting when the next token
is not worth its verification cost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np

from edgespec.core import verify
from edgespec.core.kinds import Drafter as DrafterName
from edgespec.core.prefix import common_prefix
from edgespec.core.verify import SamplingParams

# Should another token be drafted? Called with the confidences so far; the policy supplies it.
KeepGoing = Callable[[Sequence[float]], bool]


@dataclass
class Draft:
    tokens: list[int] = field(default_factory=list)
    confidence: list[float] = field(default_factory=list)  # model: draft prob; n-gram: match length + position


class Drafter(Protocol):
    name: DrafterName

    def propose(self, history: list[int], k: int, sp: SamplingParams, rng, q: np.ndarray, keep_going: KeepGoing) -> Draft: ...

    def rollback(self, n_past: int) -> None: ...


class ModelDrafter:
    """Proposes with a draft model whose KV cache follows the accepted history."""

    name = DrafterName.MODEL

    def __init__(self, model, suppress: np.ndarray | None = None, target_vocab: int | None = None):
        self.model = model
        # Draft and target vocabularies may differ in size (padding rows): draft only over the ids
        # both have. A draft id the target lacks could never be accepted; a target id the draft
        # lacks has proposal probability 0 (q is zero there).
        self.n_shared = min(model.n_vocab, target_vocab or model.n_vocab)
        self.suppress = suppress[suppress < self.n_shared] if suppress is not None else None
        self._q = np.zeros((1, self.n_shared), dtype=np.float32)
        self._seen = 0  # history tokens checked by usable()
        self._usable = True

    def usable(self, history: Sequence[int]) -> bool:
        """False once the history holds a token the draft model does not have (a target-only id):
        it could not be fed to the draft, so the draft model sits out the rest of the generation."""
        if self._usable and len(history) > self._seen:
            self._usable = int(np.max(np.asarray(history[self._seen :]))) < self.model.n_vocab
            self._seen = len(history)
        return self._usable

    def propose(self, history, k, sp, rng, q, keep_going) -> Draft:
        d = Draft()
        logits = self.model.advance_to(history, logits="last")
        n = self.n_shared
        for i in range(k):
            row = logits[-1][:n]
            if self.suppress is not None:
                row[self.suppress] = -np.inf
            if sp.greedy:
                t = int(np.argmax(row))
                conf = 1.0 / float(np.exp(row - row[t]).sum())  # the draft's own probability of t
            else:
                verify.probs_from_logits(row[None, :], self._q, sp.temperature, sp.top_k, sp.top_p, sp.min_p)
                q[i, :n] = self._q[0]
                q[i, n:] = 0.0
                t = verify.sample_token(self._q[0], float(rng.random()))
                conf = float(self._q[0, t])
            d.tokens.append(t)
            d.confidence.append(conf)
            if i + 1 == k or self.model.is_eog(t) or not keep_going(d.confidence):
                break  # the last token is never fed to the draft model: the target may reject it
            logits = self.model.eval([t], logits="last")
        return d

    def rollback(self, n_past: int) -> None:
        if len(self.model.tokens) > n_past:
            self.model.rollback(n_past)


class NgramDrafter:
    """Prompt lookup: find the longest earlier occurrence of the last tokens and propose what followed.

    Among earlier occurrences with the longest suffix match (min_match..max_match tokens),
    continuations are ranked by how many occurrences agree on the next token, then by recency.
    Confidence of the i-th proposed token is the match length it would extend, m + i: a copy that
    has run for 40 tokens is likelier to go on than a 2-token coincidence, and the controller
    learns per position how that maps to acceptance.
    """

    name = DrafterName.NGRAM

    def __init__(self, min_match: int = 2, max_match: int = 64):
        self.min_match = min_match
        self.max_match = max_match
        self._last: tuple[int, list[int], int] = (-1, [], 0)
        self._pending: list[tuple[int, list[int], int]] = []  # (history length, continuation, match): not yet settled

    def lookup(self, history: Sequence[int], k: int) -> tuple[list[int], int]:
        """(continuation of up to k tokens, match length); ([], 0) when nothing matches."""
        arr = np.asarray(history, dtype=np.int32)
        n = len(arr)
        if n < self.min_match + 1 or k <= 0:
            return [], 0
        ends = np.flatnonzero(arr[: n - 1] == arr[n - 1])  # earlier positions holding the last token
        if ends.size == 0:
            return [], 0
        length = np.ones(ends.size, dtype=np.int32)
        for d in range(1, self.max_match):
            back = ends - d
            ok = (length == d) & (back >= 0)
            ok[ok] = arr[back[ok]] == arr[n - 1 - d]
            live = np.flatnonzero(ok)
            if live.size == 0:
                break
            length[live] += 1
            if live.size == 1:  # one candidate left (a long copy): measure it in one comparison
                i, e = int(live[0]), int(ends[live[0]])
                span = min(self.max_match, e + 1)  # suffix lengths it can still reach
                a = arr[e - span + 1 : e + 1][::-1]
                b = arr[n - span : n][::-1]
                diff = np.flatnonzero(a != b)
                length[i] = int(diff[0]) if diff.size else span
                break
        best = int(length.max())
        if best < self.min_match:
            return [], 0
        cands = ends[length == best]
        nxt = arr[cands + 1]
        values, counts = np.unique(nxt, return_counts=True)
        top = values[counts == counts.max()]
        # most recent occurrence whose next token is among the most agreed-on ones
        pos = int(cands[np.isin(nxt, top)][-1])
        cont = arr[pos + 1 : min(pos + 1 + k, n)].tolist()
        return cont, best

    def peek(self, history: Sequence[int], k: int) -> tuple[int, float]:
        """(tokens available, confidence) for the controller; the lookup is kept for propose() and
        recorded, drafted or not, so that `outcomes` can say later how far it would have been right."""
        cont, match = self.lookup(history, k)
        self._last = (len(history), cont, match)
        if cont:
            self._pending.append((len(history), cont, match))
        return len(cont), float(match)

    def outcomes(self, history: Sequence[int]) -> list[tuple[list[float], int]]:
        """(confidences, tokens that matched) for each recorded lookup the history now settles.

        The tokens that followed a lookup are what verification would have accepted: under greedy
        decoding exactly; under sampling with the same probability (the proposal is deterministic).
        So the controller learns from every step, including those it decided not to draft in, and
        a match length that looks unpromising still gets measured without paying for a draft.
        """
        done, keep = [], []
        for start, cont, match in self._pending:
            got = history[start : start + len(cont)]
            n = common_prefix(got, cont)
            if n < len(got) or len(got) == len(cont):
                done.append(([float(match + i) for i in range(len(cont))], n))  # as propose() rates them
            else:
                keep.append((start, cont, match))
        self._pending = keep
        return done

    def propose(self, history, k, sp, rng, q, keep_going) -> Draft:
        n, cont, match = self._last
        if n != len(history) or len(cont) < k:
            cont, match = self.lookup(history, k)
        d = Draft()
        for i, t in enumerate(cont[:k]):
            d.tokens.append(int(t))
            d.confidence.append(float(match + i))
            if not sp.greedy:
                q[i].fill(0.0)  # a deterministic proposal: q is one-hot
                q[i, t] = 1.0
            if not keep_going(d.confidence):
                break
        return d

    def rollback(self, n_past: int) -> None:
        pass
