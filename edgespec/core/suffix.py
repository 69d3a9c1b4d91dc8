"""An incremental index of everything seen so far, for drafts taken from the context.

A suffix automaton over token ids, extended one token at a time (amortised constant work per token:
no rescan of the history per step). It answers, after every token:

- the longest suffix of the text that also occurred earlier (`match_len`), in constant time, kept
  up to date as tokens arrive (the matching-statistics walk);
- what followed that suffix before: each state knows how often its strings occurred and where they
  occurred last, so a draft can follow the most frequent continuation, token by token, and stop where
  earlier occurrences disagree (as SuffixDecoding walks its suffix tree).

A state's occurrence count and last end position are updated along the suffix-link path of each new
token, the longest suffixes first, for at most `depth` states: short strings deep in that path may have
stale counts, which only matters for matches of a few tokens.
"""

from __future__ import annotations

from typing import Sequence


class SuffixIndex:
    """Suffix automaton of `tokens`, with occurrence counts and the matcher for the current end."""

    def __init__(self, depth: int = 48):
        self.depth = depth
        self.reset()

    def reset(self) -> None:
        """Forget everything (the owner keeps the same object)."""
        self.tokens: list[int] = []
        self.next: list[dict[int, int]] = [{}]
        self.link: list[int] = [-1]
        self.length: list[int] = [0]
        self.count: list[int] = [0]  # end positions of the state's strings (occurrences)
        self.last_end: list[int] = [-1]  # the most recent end position
        self.prev_end: list[int] = [-1]  # the one before it
        self._last = 0  # the state of the whole text
        self.match_state = 0  # the longest suffix of the text that occurred earlier: its state ...
        self.match_len = 0  # ... and its length

    def __len__(self) -> int:
        return len(self.tokens)

    def extend(self, tokens: Sequence[int]) -> None:
        for t in tokens:
            self._append(int(t))

    def _append(self, c: int) -> None:
        nxt, link, length = self.next, self.link, self.length
        # The matcher first reads c against the text so far: what it finds occurred before this token.
        s, n = _match_step(nxt, link, length, self.match_state, self.match_len, c)
        pos = len(self.tokens)
        self.tokens.append(c)
        cur = self._new(length[self._last] + 1, pos)
        p = self._last
        while p != -1 and c not in nxt[p]:
            nxt[p][c] = cur
            p = link[p]
        if p == -1:
            link[cur] = 0
        else:
            q = nxt[p][c]
            if length[p] + 1 == length[q]:
                link[cur] = q
            else:
                clone = self._new(length[p] + 1, self.last_end[q])
                nxt[clone] = dict(nxt[q])
                link[clone] = link[q]
                self.count[clone], self.prev_end[clone] = self.count[q], self.prev_end[q]
                while p != -1 and nxt[p].get(c) == q:
                    nxt[p][c] = clone
                    p = link[p]
                link[q] = link[cur] = clone
        self._last = cur
        # every suffix of the text now also ends at pos
        v, steps = cur, 0
        while v > 0 and steps < self.depth:
            self.count[v] += 1
            if self.last_end[v] != pos:
                self.prev_end[v], self.last_end[v] = self.last_end[v], pos
            v = link[v]
            steps += 1
        # a split may have moved the matched string into the clone
        while s and n <= length[link[s]]:
            s = link[s]
        self.match_state, self.match_len = s, n

    def _new(self, n: int, end: int) -> int:
        self.next.append({})
        self.link.append(-1)
        self.length.append(n)
        self.count.append(0)
        self.last_end.append(end)
        self.prev_end.append(-1)
        return len(self.length) - 1

    def earlier_end(self, s: int) -> int:
        """The most recent end position of state s before the text's own end (-1: none)."""
        end = self.last_end[s]
        return self.prev_end[s] if end == len(self.tokens) - 1 else end

    def continuation(self, k: int, min_share: float = 0.0) -> tuple[list[int], list[float]]:
        """Up to k tokens that followed the current match before, and each one's share of the
        occurrences at its point (1.0: every earlier occurrence went on this way).

        Token by token, the most frequent continuation; equal counts go to the most recent occurrence.
        Stops at the end of what was seen, or where the best share falls below min_share.
        """
        if not self.match_len:
            return [], []
        return walk(self, self.match_state, k, min_share)


def _match_step(nxt, link, length, s: int, n: int, c: int) -> tuple[int, int]:
    """Matching statistics: from the state of the longest match so far (length n), read token c."""
    while s and c not in nxt[s]:
        s = link[s]
        n = length[s]
    if c in nxt[s]:
        return nxt[s][c], n + 1
    return 0, 0


def walk(index: SuffixIndex, s: int, k: int, min_share: float) -> tuple[list[int], list[float]]:
    """The most frequent continuation from state s, token by token (see SuffixIndex.continuation)."""
    out: list[int] = []
    shares: list[float] = []
    toks, nxt, count, last_end = index.tokens, index.next, index.count, index.last_end
    while len(out) < k:
        trans = nxt[s]
        if not trans:
            break
        if len(trans) == 1:
            (t, child), = trans.items()
            share = 1.0
        else:
            t, child = max(trans.items(), key=lambda tc: (count[tc[1]], last_end[tc[1]]))
            total = sum(count[c] for c in trans.values())
            share = count[child] / total if total else 0.0
            if share < min_share:
                break
        if t < 0:  # a separator between texts (see Matcher): nothing follows across it
            break
        out.append(t)
        shares.append(share)
        s = child
    return out, shares


class Matcher:
    """The longest suffix of a growing text that occurs in a SuffixIndex of other texts, without
    adding the text to it: drafts from earlier requests' outputs (agents repeat themselves)."""

    def __init__(self, index: SuffixIndex):
        self.index = index
        self.state, self.length, self.fed = 0, 0, 0

    def feed(self, tokens) -> None:
        nxt, link, length = self.index.next, self.index.link, self.index.length
        s, n = self.state, self.length
        for c in tokens:
            s, n = _match_step(nxt, link, length, s, n, int(c))
        self.state, self.length = s, n
        self.fed += len(tokens)

    def continuation(self, k: int, min_share: float = 0.0) -> tuple[list[int], list[float]]:
        return walk(self.index, self.state, k, min_share) if self.length else ([], [])


class OutputMemory:
    """Earlier outputs (each followed by a separator), indexed for context drafts, within a bound:
    past `limit` tokens the index is rebuilt from the most recent half."""

    def __init__(self, limit: int = 32768):
        self.limit = limit
        self.index = SuffixIndex()
        self.texts: list[list[int]] = []

    def add(self, tokens) -> None:
        tokens = [int(t) for t in tokens]
        if not tokens:
            return
        self.texts.append(tokens[-max(self.limit // 2 - 1, 1):])  # a reply longer than half the bound: its end
        if len(self.index) + len(self.texts[-1]) + 1 > self.limit:
            kept, total = [], 0
            for t in reversed(self.texts):
                if total + len(t) + 1 > self.limit // 2:
                    break
                kept.append(t)
                total += len(t) + 1
            self.texts = kept[::-1]
            self.index = SuffixIndex()
            for t in self.texts:
                self.index.extend(t + [-1])
        else:
            self.index.extend(self.texts[-1] + [-1])
