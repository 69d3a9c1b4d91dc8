"""A chat session: turns on a loaded pair (edgespec.session.conversation keeps their tokens), the slash
commands, the counters behind the status line and /stats, save and load. The terminal around it
lives in edgespec/commands/chat.py.
"""

from __future__ import annotations

import codecs
import collections
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from edgespec.core.engine import Step
from edgespec.core.kinds import Drafter, Finish, Mode, Phase
from edgespec.core.prefix import common_prefix
from edgespec.core.stats import Stats
from edgespec.core.suffix import SuffixIndex
from edgespec.errors import ContextOverflowError, EdgespecError, UsageError
from edgespec.session import runner
from edgespec.session.conversation import Conversation, message
from edgespec.session.options import K_LIMIT, GenOptions, sampling_params

FORMAT = "edgespec-chat"

HELP = """\
/help             this list
/reset            start a new conversation (keeps the system prompt)
/system [TEXT]    show the system prompt, or set it ('/system -' removes it)
/stats [json]     counters for the whole conversation
/mode MODE        drafter: auto, model, ngram or plain
/k N|auto         tokens to draft per step, or let the controller choose
/temp X           temperature; 0 is greedy
/save FILE        write the conversation as JSON
/load FILE        read a conversation written by /save
/exit             quit (also Ctrl-D, or Ctrl-C at an empty prompt)
A line ending in \\ continues on the next line; start a message with // to send a literal /."""


class _DraftChars:
    """Which characters of the streamed text came from accepted draft tokens (for --show-draft).

    Decodes the steps' tokens the way the text stream does, one flag per character, and hands the
    flags out as the printable pieces arrive.
    """

    def __init__(self, piece: Callable[[int], bytes]):
        self._piece = piece
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._flags: collections.deque[bool] = collections.deque()

    def add(self, step: Step) -> None:
        for i, t in enumerate(step.tokens):
            self._flags.extend([i < step.accepted] * len(self._decoder.decode(self._piece(t))))

    def take(self, n: int) -> list[bool]:
        return [self._flags.popleft() if self._flags else False for _ in range(n)]


@dataclass
class Turn:
    """What one reply did: its statistics, and what only a chat turn has."""

    dropped: int = 0  # oldest turns dropped to fit the context first
    stats: Stats = field(default_factory=Stats)
    draft_evaluated: Optional[int] = None  # None: the draft model was not used for this prompt
    draft_reused: Optional[int] = None
    finish: Optional[Finish] = None
    warnings: list = field(default_factory=list)

    @property
    def drafters(self) -> dict:
        """Drafter name -> steps that drafted with it."""
        return {name: n for name, n in self.stats.drafter_steps.items() if name != Drafter.NONE}

    @property
    def max_k(self) -> int:
        """Most tokens drafted in one step."""
        return max(self.stats.k_hist or [0])

    def as_dict(self) -> dict:
        return {**self.stats.as_dict(), "draft_evaluated": self.draft_evaluated, "draft_reused": self.draft_reused,
                "drafters": self.drafters, "max_k": self.max_k, "dropped_turns": self.dropped, "finish": self.finish}


@dataclass
class Outcome:
    """What a slash command has to say; `exit` ends the chat."""

    text: str = ""
    error: bool = False
    exit: bool = False
    raw: bool = False  # machine-readable (JSON): print as it is


class Session:
    """A conversation with a loaded target (and draft) model: turns, slash commands, save/load."""

    def __init__(self, target, draft, gen: GenOptions, system: str | None = None, on_calibrate: Callable[[], None] | None = None):
        self.target, self.draft, self.gen = target, draft, gen
        self.conv = Conversation(target, system)
        self.turns: list[Turn] = []
        self.total = Stats()
        self.on_calibrate = on_calibrate
        self._controller = None
        self.context = SuffixIndex()  # what context drafts come from: the whole conversation, indexed once

    def controller(self):
        """The speculation controller, kept across turns so that what it learns carries over.

        Made anew after /mode or /k. Making one may measure this machine's costs first (once per
        pair and setting, cached); that empties the KV caches, which the next turn refills.
        """
        if self._controller is None:
            self._controller = runner.make_controller(self.target, self.draft, self.gen, on_calibrate=self.on_calibrate)
        return self._controller

    @property
    def n_ctx(self) -> int:
        return min(self.target.n_ctx, self.draft.n_ctx) if self.draft is not None else self.target.n_ctx

    @property
    def reserve(self) -> int:
        """Room kept free for a reply when fitting the conversation into the context."""
        return min(self.gen.max_tokens, self.n_ctx // 2)

    # ------------------------------------------------------------------ turns
    def _fit(self, text: str) -> tuple[list[int], int]:
        """The prompt for `text`, after dropping the oldest turns until it fits with room for a reply."""
        prompt = self.conv.prompt_for(text)
        if len(prompt) + self.reserve <= self.n_ctx:
            return prompt, 0
        bare = len(self.conv.bare_prompt(text))
        if bare >= self.n_ctx:
            raise ContextOverflowError(
                f"the message is {bare} tokens with the template; the context holds {self.n_ctx}",
                "send a shorter message, or start with a larger --ctx",
            )
        dropped = 0
        while len(prompt) + self.reserve > self.n_ctx and self.conv.drop_oldest_turn():
            dropped += 1
            prompt = self.conv.prompt_for(text)
        return prompt, dropped

    def send(
        self,
        text: str,
        on_piece: Callable[[str, list[bool]], None] | None = None,
        on_notice: Callable[[str], None] | None = None,
    ) -> Turn:
        """Generate the reply to user message `text`, streaming it through on_piece(text, from_draft).

        Ctrl-C (KeyboardInterrupt) stops the reply; what was shown stays in the conversation, and
        the KV caches stay consistent because the next advance_to compares and rolls back.
        """
        controller = self.controller()  # first: making it may empty the KV caches
        prompt, dropped = self._fit(text)
        if dropped and on_notice:
            on_notice(f"dropped the oldest {_plural(dropped, 'turn')} to fit the {self.n_ctx}-token context")
        turn = Turn(dropped=dropped)
        chars = _DraftChars(self.target.piece)
        draft_before = list(self.draft.tokens) if self.draft is not None else None

        def on_step(step: Step) -> None:
            if step.phase == Phase.PREFILL:
                # The draft's cache now holds the prompt (less its last token) if the engine prefilled it.
                if self.draft is not None and self.draft.tokens == list(prompt[:-1]):
                    turn.draft_reused = common_prefix(draft_before, prompt[:-1])
                    turn.draft_evaluated = len(prompt) - 1 - turn.draft_reused
                return
            chars.add(step)

        reply = runner.Reply()
        pieces = runner.stream(self.target, self.draft, prompt, self.gen, reply, controller, on_step=on_step,
                               context=self.context)
        try:
            for piece in pieces:
                if on_piece is not None:
                    on_piece(piece, chars.take(len(piece)))
        except KeyboardInterrupt:
            reply.finish = Finish.INTERRUPTED
        except BaseException:
            reply.finish = reply.finish or Finish.ERROR
            raise
        finally:
            pieces.close()  # fills reply.text even when we stopped reading early
            turn.stats, turn.finish, turn.warnings = reply.stats, reply.finish, list(reply.warnings)
            self.conv.add_reply(text, prompt, reply.text, reply.tokens)
            self.turns.append(turn)
            self.total.merge(reply.stats)
        return turn

    # --------------------------------------------------------------- commands
    def command(self, line: str) -> Outcome:
        """Run a slash command (`line` starts with '/')."""
        name, _, arg = line[1:].strip().partition(" ")
        arg = arg.strip()
        handler = {
            "help": lambda a: Outcome(HELP), "?": lambda a: Outcome(HELP),
            "reset": self._cmd_reset, "system": self._cmd_system, "stats": self._cmd_stats,
            "mode": self._cmd_mode, "k": self._cmd_k, "temp": self._cmd_temp,
            "save": self._cmd_save, "load": self._cmd_load,
            "exit": lambda a: Outcome(exit=True), "quit": lambda a: Outcome(exit=True),
        }.get(name.lower())
        if handler is None:
            return Outcome(f"unknown command /{name} (/help lists them; start with // to send a message that begins with /)", error=True)
        try:
            return handler(arg)
        except EdgespecError as e:
            return Outcome(e.line(), error=True)

    def _cmd_reset(self, arg: str) -> Outcome:
        self.conv.reset()
        self.turns, self.total = [], Stats()
        return Outcome("new conversation" + (" (system prompt kept)" if self.conv.system else ""))

    def _cmd_system(self, arg: str) -> Outcome:
        if not arg:
            return Outcome(f"system prompt: {self.conv.system}" if self.conv.system else "no system prompt (the template's default applies)")
        self.conv.set_system(None if arg == "-" else arg)
        return Outcome("system prompt removed" if arg == "-" else "system prompt set")

    def _set(self, usage: str, **changes) -> Outcome | None:
        """Change generation settings (checked by GenOptions); an Outcome when they are refused."""
        try:
            gen = self.gen.replace(**changes)
            gen.check_draft(self.draft is not None)
        except UsageError as e:
            return Outcome(f"{usage} ({e.message})", error=True)
        self.gen, self._controller = gen, None  # a new controller for new settings
        return None

    def _cmd_mode(self, arg: str) -> Outcome:
        refused = self._set(f"/mode takes one of {', '.join(m.value for m in Mode)} (now: {self.gen.mode})", mode=arg)
        return refused or Outcome(f"mode {self.gen.mode}")

    def _cmd_k(self, arg: str) -> Outcome:
        usage = f"/k takes a number from 0 to {K_LIMIT}, or auto (now: {self.k_text()})"
        if arg.lower() == "auto":
            return self._set(usage, k=None) or Outcome(f"k auto (up to {self.gen.k_max})")
        try:
            k = int(arg)
        except ValueError:
            return Outcome(usage, error=True)
        return self._set(usage, k=k) or Outcome(f"k {k}")

    def _cmd_temp(self, arg: str) -> Outcome:
        usage = f"/temp takes a number >= 0 (now: {self.gen.sampling.temperature:g})"
        try:
            t = float(arg)
            sampling = sampling_params(t, self.gen.sampling.top_k, self.gen.sampling.top_p, self.gen.sampling.min_p)
        except (ValueError, UsageError):
            return Outcome(usage, error=True)
        return self._set(usage, sampling=sampling) or Outcome(f"temperature {t:g}" + (" (greedy)" if t == 0 else ""))

    def _cmd_stats(self, arg: str) -> Outcome:
        if arg == "json":
            return Outcome(json.dumps(self.stats_dict()), raw=True)
        if arg:
            return Outcome("/stats takes no argument, or json", error=True)
        s = self.total
        used = len(self.target.tokens)
        lines = [
            f"conversation: {_plural(self.conv.n_turns, 'turn')}, {used}/{self.n_ctx} context tokens in use",
            f"generated {s.generated} tokens in {s.t_decode:.2f} s ({s.tokens_per_s:.1f} tok/s); "
            f"prompts: {s.prompt_tokens - s.cached_tokens} tokens evaluated, {s.cached_tokens} reused from the cache",
        ]
        steps = collections.Counter()
        for t in self.turns:
            steps.update(t.drafters)
        if s.drafted:
            by = ", ".join(f"{name} {_plural(n, 'step')}" for name, n in steps.most_common())
            lines.append(
                f"drafts: {by}; drafted {s.drafted}, accepted {s.accepted} ({100 * s.acceptance_rate:.1f}%), "
                f"mean accepted length {s.mean_accepted:.2f}"
            )
        else:
            lines.append("drafts: none")
        lines.append(f"settings: mode {self.gen.mode}, k {self.k_text()}, temperature {self.gen.sampling.temperature:g}")
        return Outcome("\n".join(lines))

    def stats_dict(self) -> dict:
        """Everything /stats json prints: totals, per-turn counters, settings."""
        return {
            "turns": [t.as_dict() for t in self.turns],
            "total": self.total.as_dict(),
            "messages": len(self.conv.messages),
            "context": {"used": len(self.target.tokens), "n_ctx": self.n_ctx},
            "mode": self.gen.mode, "k": self.gen.k, "temperature": self.gen.sampling.temperature,
        }

    def k_text(self) -> str:
        """The draft length setting as shown: a number, or auto."""
        return "auto" if self.gen.k is None else str(self.gen.k)

    # -------------------------------------------------------------- save/load
    def _cmd_save(self, arg: str) -> Outcome:
        if not arg:
            return Outcome("/save needs a file name", error=True)
        path = self.save(arg)
        return Outcome(f"saved {_plural(self.conv.n_turns, 'turn')} to {path}")

    def _cmd_load(self, arg: str) -> Outcome:
        if not arg:
            return Outcome("/load needs a file name", error=True)
        self.load(arg)
        return Outcome(f"loaded {_plural(self.conv.n_turns, 'turn')} from {arg}")

    def to_json(self) -> dict:
        return {
            "format": FORMAT, "version": 1,
            "system": self.conv.system,
            "messages": [dict(m) for m in self.conv.messages],
            "target": self.target.path.name if hasattr(self.target, "path") else None,
            "draft": self.draft.path.name if self.draft is not None and hasattr(self.draft, "path") else None,
            "settings": {"mode": self.gen.mode, "k": self.gen.k, "temperature": self.gen.sampling.temperature},
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the conversation as JSON (atomically: a crash never leaves half a file)."""
        p = Path(path).expanduser()
        tmp = p.with_name(p.name + ".tmp")
        try:
            tmp.write_text(json.dumps(self.to_json(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
            os.replace(tmp, p)
        except OSError as e:
            raise EdgespecError(f"cannot write {p}: {e.strerror or e}") from e
        return p

    def load(self, path: str | os.PathLike) -> None:
        """Replace the conversation with one written by save(); the models see it at the next turn."""
        p = Path(path).expanduser()
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except OSError as e:
            raise EdgespecError(f"cannot read {p}: {e.strerror or e}") from e
        except ValueError as e:
            raise EdgespecError(f"{p} is not JSON: {e}") from e
        system, messages = parse_conversation(data, p)
        self.conv.system = system
        self.conv.messages, self.conv.tokens = messages, None
        self.turns, self.total = [], Stats()


def parse_conversation(data, where) -> tuple[str | None, list[dict]]:
    """System prompt and messages from saved JSON; raises EdgespecError naming what is wrong."""
    if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
        raise EdgespecError(f"{where} is not a saved chat (no \"messages\" list)")
    system = data.get("system")
    messages = []
    for i, m in enumerate(data["messages"]):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ("system", "user", "assistant"):
            raise EdgespecError(f"{where}: message {i} needs a role (user/assistant) and a text content")
        if m["role"] == "system" and i == 0 and system is None:
            system = m["content"]  # OpenAI-style list with the system prompt first
            continue
        want = ("user", "assistant")[len(messages) % 2]
        if m["role"] != want:
            raise EdgespecError(f"{where}: message {i} is from {m['role']}, expected {want} (turns alternate, starting with user)")
        messages.append(message(m["role"], m["content"]))
    if len(messages) % 2:
        raise EdgespecError(f"{where}: the last user message has no reply")
    if system is not None and not isinstance(system, str):
        raise EdgespecError(f"{where}: \"system\" must be text")
    return system or None, messages


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")
