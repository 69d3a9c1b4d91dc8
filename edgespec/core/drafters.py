"""Drafters: where proposed tokens come from. One small interface, two sources.

- ModelDrafter: the small draft model, one decode per proposed token.
- ContextDrafter: the continuation of the longest earlier occurrence of the text's end, from an
  incremental suffix index over everything seen so far; costs microseconds.

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
from edgespec.core.suffix import Matcher, OutputMemory, SuffixIndex
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


ALIGNED = 1000.0  # added to the confidence of a draft that resumes the copy in progress (see ContextDrafter)
ALIGN_BACK, ALIGN_AHEAD = 4, 64  # how far from where a copy stopped it may resume
EDIT_MAX, EDIT_CONFIRM = 8, 2  # edits learnt: source spans up to 8 tokens, applied once seen twice


class ContextDrafter:
    """Drafts taken from the context: the continuation of the longest earlier occurrence of the text's
    end (edgespec.core.suffix), the most frequent one where it was seen several times.

    The index is updated incrementally as the history grows (pass a SuffixIndex to keep it across
    generations: chat turns, server requests). Confidence of the i-th proposed token is the match
    length it would extend, m + i: a copy that has run for 40 tokens is likelier to go on than a
    2-token coincidence, and the controller learns per position how that maps to acceptance.

    A copy in progress is followed by a cursor: the place in the text it copies from. Where the
    answer leaves the copy (an edit: a renamed identifier, an inserted line), it usually comes back
    a little further on: a short match near the cursor is far likelier to be right than the same
    short match elsewhere (on the edit suite, the first token 89% against 61% after 3 matching
    tokens), so such drafts resume the copy and are rated apart (confidence ALIGNED + m + i).
    """

    name = DrafterName.NGRAM

    def __init__(self, index: SuffixIndex | None = None, min_match: int = 2, max_match: int = 64, min_share: float = 0.3,
                 memory: OutputMemory | None = None):
        self.index = index if index is not None else SuffixIndex()
        # earlier requests' outputs (a server's): consulted where they match the text's end better
        self.memory = Matcher(memory.index) if memory is not None and len(memory.index) else None
        self.min_match = min_match
        self.max_match = max_match  # confidences are capped here (acceptance is learnt per length up to it)
        self.min_share = min_share  # stop a draft where earlier occurrences disagree more than this
        self.cursor: int | None = None  # where in the text the copy in progress continues
        self._gap: tuple[int, int] | None = None  # (source, text) positions where the text left the copy
        self.cursor_tail = 0
        self.edits: dict[tuple, dict[tuple, int]] = {}  # source tokens -> what the text wrote instead -> times
        self.rules: dict[tuple, tuple] = {}  # the edits applied to copies: each source's most frequent, once confirmed
        self._last: tuple[int, list[int], float] = (-1, [], 0.0)
        self._pending: list[tuple[int, list[int], float, int]] = []  # (history length, continuation, confidence, positions settled)

    def sync(self, history: Sequence[int]) -> None:
        """Make the index hold exactly `history`: extended when it continues what is indexed, else rebuilt."""
        have = self.index.tokens
        if len(have) > len(history) or common_prefix(have, history) < len(have):
            self.index.reset()
            self.cursor, self._gap, self.edits, self.rules = None, None, {}, {}
        self._extend(history[len(self.index) :])
        if self.memory is not None:
            self.memory.state, self.memory.length, self.memory.fed = 0, 0, 0
            self.memory.feed(history[-self.max_match:])  # only the end can matter
            self.memory.fed = len(history)

    def _catch_up(self, history: Sequence[int]) -> None:
        # Between calls the engine only appends to the history; a caller that hands over another one
        # (a test, a new text) is caught by its ends differing from what is indexed, and rebuilt.
        have = self.index.tokens
        n = len(have)
        if n <= len(history) and (n == 0 or (have[-1] == history[n - 1] and have[0] == history[0])):
            self._extend(history[n:])
            if self.memory is not None:
                self.memory.feed(history[self.memory.fed :])
        else:
            self.sync(history)

    def _extend(self, tokens: Sequence[int]) -> None:
        toks = self.index.tokens
        for t in tokens:
            if self.cursor is not None and self.cursor < len(toks) and toks[self.cursor] == t:
                self.cursor += 1  # the copy goes on
            elif self.cursor is not None and self._gap is None:
                self._gap = (self.cursor, len(toks))  # the text leaves the copy here
            self.index.extend((t,))

    def _learn_edit(self, resume: int) -> None:
        """The text came back to the copy at source position `resume` (and its own end less what matched
        there): what it wrote in between replaced the source tokens it skipped. Renames, changed
        constants and the like repeat, so later copies of those source tokens get the same change."""
        if self._gap is None:
            return
        (c0, a0), self._gap = self._gap, None
        toks = self.index.tokens
        src, new = toks[c0:resume], toks[a0 : len(toks) - (self.cursor_tail or 0)]
        if 0 < len(src) <= EDIT_MAX and len(new) <= 2 * EDIT_MAX:
            seen = self.edits.setdefault(tuple(src), {})
            seen[tuple(new)] = seen.get(tuple(new), 0) + 1
            best = max(seen, key=seen.get)
            if seen[best] >= EDIT_CONFIRM:
                self.rules[tuple(src)] = best

    def _copy(self, start: int, k: int) -> list[int]:
        """Up to k tokens copied from position `start` on, with the edits seen so far applied."""
        toks = self.index.tokens
        rules = self.rules
        if not rules:
            return list(toks[start : start + k])
        firsts = {src[0] for src in rules}
        out, i, end = [], start, len(toks)
        while len(out) < k and i < end:
            if toks[i] in firsts:
                hit = next((src for src in rules if tuple(toks[i : i + len(src)]) == src), None)
                if hit is not None:
                    out.extend(rules[hit])
                    i += len(hit)
                    continue
            out.append(toks[i])
            i += 1
        return out[:k]

    def _near_cursor(self) -> tuple[int, int]:
        """(match length, end position) of the longest earlier occurrence of the text's end that lies
        where the copy in progress would resume; (0, -1) if none does."""
        h, n = self.index.tokens, len(self.index.tokens)
        best = (0, -1)
        if self.cursor is None or n < 2:
            return best
        last, cap = h[-1], self.max_match
        for q in range(max(self.cursor - ALIGN_BACK, 1), min(self.cursor + ALIGN_AHEAD, n - 1)):
            if h[q] != last:
                continue
            m = 1
            while m < cap and q - m >= 0 and h[q - m] == h[n - 1 - m]:
                m += 1
            if m > best[0]:
                best = (m, q)
        return best

    def lookup(self, history: Sequence[int], k: int) -> tuple[list[int], float]:
        """(continuation of up to k tokens, confidence of its first token); ([], 0) when nothing matches.

        The confidence is the match length (capped at max_match), plus ALIGNED where the draft
        resumes the copy in progress."""
        self._catch_up(history)
        if k <= 0:
            return [], 0.0
        idx = self.index
        m = idx.match_len
        am, aq = self._near_cursor()
        if am >= self.min_match and am >= min(m, self.max_match) - 8:  # resume the copy (as long a match, or nearly)
            self.cursor_tail = am
            self._learn_edit(aq - am + 1)
            self.cursor = aq + 1
            return self._copy(aq + 1, k), ALIGNED + min(am, self.max_match)
        if self.memory is not None and self.memory.length > m and self.memory.length >= self.min_match:
            cont, _ = self.memory.continuation(k, self.min_share)
            if cont:  # else (an earlier reply ended there) the text's own index may still go on
                return cont, float(min(self.memory.length, self.max_match))
        if m < self.min_match:
            return [], 0.0
        if m >= 16:  # a long match: the copy in progress is now from there
            end = idx.earlier_end(idx.match_state)
            self.cursor = end + 1 if end >= 0 else self.cursor
        cont, _ = idx.continuation(k, self.min_share)
        return cont, float(min(m, self.max_match))

    def peek(self, history: Sequence[int], k: int) -> tuple[int, float]:
        """(tokens available, confidence) for the controller; the lookup is kept for propose() and
        recorded, drafted or not, so that `outcomes` can say later how far it would have been right."""
        cont, conf = self.lookup(history, k)
        self._last = (len(history), cont, conf)
        if cont:
            self._pending.append((len(history), cont, conf, 0))
        return len(cont), conf

    def outcomes(self, history: Sequence[int]) -> list[tuple[list[float], int]]:
        """(confidences, tokens that matched) for the positions of recorded lookups that the history
        has settled since the last call: a lookup's i-th token is settled once the token at its place
        is known, so a 64-token proposal teaches from its first token on, not 64 steps later.

        The tokens that followed a lookup are what verification would have accepted: under greedy
        decoding exactly; under sampling with the same probability (the proposal is deterministic).
        So the controller learns from every step, including those it decided not to draft in, and
        a match length that looks unpromising still gets measured without paying for a draft.

        Consecutive lookups along one copy propose the same tokens, and each of them counts them: a
        position deep in a long copy is counted by every lookup that covered it, so long copies weigh
        more than their token count. Replays of both shipped suites with each position counted once
        (prior weights 2-32, caution margins of 0-1 standard error) came out slower on the edit suite or below
        0.97x plain on some short prompt, so the overlap is kept as it is.
        """
        done, keep = [], []
        for start, cont, match, seen in self._pending:
            got = history[start + seen : start + len(cont)]
            n = common_prefix(got, cont[seen:])
            new = min(len(got), n + 1)  # positions settled now: the matches, and the first miss
            if new:
                done.append(([match + i for i in range(seen, seen + new)], n))  # as propose() rates them
            if n == len(got) and seen + n < len(cont):
                keep.append((start, cont, match, seen + n))
        self._pending = keep
        return done

    def propose(self, history, k, sp, rng, q, keep_going) -> Draft:
        n, cont, match = self._last
        if n != len(history) or len(cont) < k:
            cont, match = self.lookup(history, k)
        d = Draft()
        for i, t in enumerate(cont[:k]):
            d.tokens.append(int(t))
            d.confidence.append(match + i)
            if not sp.greedy:
                q[i].fill(0.0)  # a deterministic proposal: q is one-hot
                q[i, t] = 1.0
            if not keep_going(d.confidence):
                break
        return d

    def rollback(self, n_past: int) -> None:
        pass
