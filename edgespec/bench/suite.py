"""Prompt suites: the shipped ones and a user's own JSONL, one prompt per line."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Sequence

from edgespec.errors import UsageError

SHORT_CATEGORIES = ("codegen", "edit", "chat", "extract", "json")
EDIT_CATEGORIES = ("file-edit", "quote", "convert", "follow-up")
CATEGORIES = SHORT_CATEGORIES + EDIT_CATEGORIES  # the order tables list them in
# The shipped suites: name -> (file in edgespec/prompts, what it measures)
SUITES = {
    "short": ("suite.jsonl", "25 short tasks (code generation, edits, chat, extraction, JSON), 64-token answers"),
    "edit": ("edit.jsonl", "copy-heavy work: whole-file edits, quotes, conversions, follow-up turns; 200-800-token answers"),
}
QUICK_CATEGORIES = ("codegen", "edit", "extract", "chat", "json")  # --quick: first prompt of the first three present
QUICK_PROMPTS = 3

_SUITE_KEYS = ("id", "category", "prompt", "system", "max_tokens", "turns")


@dataclass(frozen=True)
class Prompt:
    id: str
    category: str
    prompt: str
    system: str | None = None
    max_tokens: int | None = None  # this prompt's answer budget (--max-tokens can lower it)
    turns: tuple[dict, ...] = ()  # earlier messages of the conversation (user, assistant, ...)

    def messages(self) -> list[dict]:
        """The conversation to render: system message, earlier turns, this prompt."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + [dict(m) for m in self.turns] + [{"role": "user", "content": self.prompt}]


def shipped_suite_text(name: str = "short") -> str:
    if name not in SUITES:
        raise UsageError(f"unknown suite {name!r}", f"shipped suites: {', '.join(SUITES)}")
    return resources.files("edgespec").joinpath("prompts", SUITES[name][0]).read_text(encoding="utf-8")


def load_suite(path: str | os.PathLike | None = None, name: str = "short") -> list[Prompt]:
    """A shipped suite by name, or a user's JSONL file in the same format."""
    if path is None:
        return parse_suite(shipped_suite_text(name), f"edgespec/prompts/{SUITES.get(name, (name,))[0]}")
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"prompt file not found: {p}") from None
    except IsADirectoryError:
        raise UsageError(f"{p} is a directory, not a JSONL prompt file") from None
    except UnicodeDecodeError as e:
        raise UsageError(f"{p} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise UsageError(f"cannot read {p}: {e.strerror}") from None
    return parse_suite(text, str(p))


def parse_suite(text: str, name: str) -> list[Prompt]:
    """One JSON object per line: id, category, prompt (required), system, max_tokens, turns (optional;
    turns: the earlier messages, [{"role": "user"|"assistant", "content": ...}, ...], alternating from user).

    Blank lines are skipped; anything else that is wrong fails naming the file and line.
    """
    prompts: list[Prompt] = []
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue

        def bad(problem: str) -> UsageError:
            return UsageError(
                f"{name}:{lineno}: {problem}",
                'each line must be a JSON object like {"id": "...", "category": "...", "prompt": "..."}',
            )

        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise bad(f"not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise bad(f"expected a JSON object, got {type(obj).__name__}")
        unknown = sorted(set(obj) - set(_SUITE_KEYS))
        if unknown:
            raise bad(f"unknown key {unknown[0]!r} (allowed: {', '.join(_SUITE_KEYS)})")
        for key in ("id", "category", "prompt"):
            if key not in obj:
                raise bad(f'missing "{key}"')
            if not isinstance(obj[key], str) or not obj[key].strip():
                raise bad(f'"{key}" must be a non-empty string')
        system = obj.get("system")
        if system is not None and not isinstance(system, str):
            raise bad('"system" must be a string')
        mt = obj.get("max_tokens")
        if mt is not None and (isinstance(mt, bool) or not isinstance(mt, int) or mt < 1):
            raise bad(f'"max_tokens" must be a whole number >= 1, got {mt!r}')
        pid = obj["id"]
        if pid in first_line:
            raise bad(f"duplicate id {pid!r} (first on line {first_line[pid]})")
        first_line[pid] = lineno
        turns = obj.get("turns") or []
        if not isinstance(turns, list) or any(not isinstance(m, dict) or set(m) != {"role", "content"}
                                                 or not isinstance(m["content"], str) for m in turns):
            raise bad('"turns" must be a list of {"role": ..., "content": ...} messages')
        if [m["role"] for m in turns] != ["user", "assistant"] * (len(turns) // 2) or len(turns) % 2:
            raise bad('"turns" must alternate user and assistant, starting with user and ending with assistant')
        prompts.append(Prompt(pid, obj["category"], obj["prompt"], system or None, mt, tuple(turns)))
    if not prompts:
        raise UsageError(f"{name} has no prompts")
    return prompts


def select(prompts: Sequence[Prompt], categories: Sequence[str] = (), quick: bool = False) -> list[Prompt]:
    """Filter by category (in suite order); --quick keeps the first prompt of up to three categories."""
    out = list(prompts)
    if categories:
        present = sorted({p.category for p in prompts})
        for c in categories:
            if c not in present:
                raise UsageError(f"no prompts in category {c!r}", f"categories here: {', '.join(present)}")
        out = [p for p in out if p.category in set(categories)]
    if quick:
        firsts: dict[str, Prompt] = {}
        for p in out:
            firsts.setdefault(p.category, p)
        order = [c for c in QUICK_CATEGORIES if c in firsts] + [c for c in firsts if c not in QUICK_CATEGORIES]
        chosen = {firsts[c].id for c in order[:QUICK_PROMPTS]}
        for p in out:  # fewer categories than QUICK_PROMPTS: top up in suite order
            if len(chosen) >= QUICK_PROMPTS:
                break
            chosen.add(p.id)
        out = [p for p in out if p.id in chosen]
    return out
