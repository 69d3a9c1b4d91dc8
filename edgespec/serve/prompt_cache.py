"""Several conversations' KV caches kept in host memory, so that clients taking turns (an editor and a
chat window) do not evict each other.

The models hold one sequence at a time (the live context). After each request its state (the
target's KV cache, and the draft's when it has one) is saved here under the tokens it holds; before
the next one, the entry (or the live context) that shares the longest prefix with the new prompt is
put back, and only the tokens after that prefix are evaluated. Least recently used entries go first
when the budget is exceeded.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from edgespec.core.prefix import common_prefix


@dataclass
class Entry:
    tokens: list[int]
    target_state: object  # a ctypes byte array from Model.save_state
    draft_tokens: list[int] = field(default_factory=list)
    draft_state: object | None = None
    used: float = 0.0

    @property
    def nbytes(self) -> int:
        return len(self.target_state) + (len(self.draft_state) if self.draft_state is not None else 0)


class PromptCache:
    def __init__(self, budget: int):
        self.budget = budget  # bytes of saved state
        self.entries: list[Entry] = []
        self.lock = threading.Lock()
        self.hits = 0

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.entries)

    def prepare(self, target, draft, tokens: list[int]) -> int:
        """Put the best saved state for `tokens` into the models; returns the prefix they now share."""
        live = common_prefix(target.tokens, tokens)
        with self.lock:
            best, n = None, live
            for e in self.entries:
                m = common_prefix(e.tokens, tokens)
                if m > n:
                    best, n = e, m
            if best is None:
                return live
            best.used = time.monotonic()
            self.hits += 1
        target.restore_state(best.tokens, best.target_state)
        if draft is not None:
            if best.draft_state is not None:
                draft.restore_state(best.draft_tokens, best.draft_state)
            else:
                draft.reset()
        return n

    def store(self, target, draft) -> None:
        """Save the live context; an entry it extends (the same conversation, earlier) is replaced."""
        if self.budget <= 0 or not target.tokens:
            return
        size = target.state_size() + (draft.state_size() if draft is not None and draft.tokens else 0)
        if size > self.budget:  # would not fit: do not copy it at all
            return
        entry = Entry(list(target.tokens), target.save_state(), used=time.monotonic())
        if draft is not None and draft.tokens:
            entry.draft_tokens, entry.draft_state = list(draft.tokens), draft.save_state()
        if entry.nbytes > self.budget:
            return
        with self.lock:
            keep = [e for e in self.entries if common_prefix(e.tokens, entry.tokens) < len(e.tokens)]
            keep.append(entry)
            keep.sort(key=lambda e: e.used, reverse=True)
            total, self.entries = 0, []
            for e in keep:
                if total + e.nbytes <= self.budget:
                    self.entries.append(e)
                    total += e.nbytes

    def describe(self) -> dict:
        with self.lock:
            return {"entries": len(self.entries), "bytes": self.nbytes, "budget": self.budget, "hits": self.hits}
