"""`edgespec chat`: an interactive chat in the terminal, or one message per line when stdin is piped.

The conversation logic (tokens, slash commands, save/load) is edgespec/session/chat.py; this module is the
terminal: options, the start-up panel, line input with history, streamed output, status lines.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Iterable, Iterator, List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from edgespec.commands.options import DRAFTING, LOADING, MODELS, SAMPLING, close, err, load_models, takes
from edgespec.core.kinds import Finish
from edgespec.errors import ContextOverflowError, EdgespecError

COMMANDS = ["/help", "/reset", "/system", "/stats", "/mode", "/k", "/temp", "/save", "/load", "/exit"]

# Model output must not drive the terminal: C0 controls (but tab and newline), DEL and C1 controls
# are shown as symbols. One character for one, so the --show-draft flags stay aligned.
_CONTROLS = {c: 0x2400 + c for c in range(32) if c not in (9, 10)} | {127: 0x2421} | {c: 0xFFFD for c in range(0x80, 0xA0)}


@takes(MODELS, DRAFTING, SAMPLING, LOADING)
def chat(
    max_tokens: Annotated[int, typer.Option("--max-tokens", "-n", help="Most tokens per reply.")] = 1024,
    stop: Annotated[Optional[List[str]], typer.Option("--stop", help="End a reply when this text appears (repeatable).", show_default=False)] = None,
    ignore_eos: Annotated[bool, typer.Option("--ignore-eos", help="Never end a reply at an end-of-generation token (for benchmarks).")] = False,
    system: Annotated[Optional[str], typer.Option("--system", help="System prompt.", show_default=False)] = None,
    show_draft: Annotated[bool, typer.Option("--show-draft", help="Colour the text that came from accepted drafts.")] = False,
    *, models, drafting, sampling, load,
) -> None:
    """Chat with a model; replies stream as they are generated.

    On a terminal: line editing and history, a line ending in \\ continues, /help lists the commands,
    Ctrl-C stops a reply, Ctrl-D quits. With stdin piped: one message per line, only the replies on
    stdout.
    """
    from edgespec.models import cache
    from edgespec.session.chat import Session
    from edgespec.session.options import GenOptions

    gen = GenOptions(mode=drafting.mode, k=drafting.k, k_max=drafting.k_max, sampling=sampling.params, seed=sampling.seed,
                     max_tokens=max_tokens, stop=tuple(stop or ()), ignore_eos=ignore_eos)
    gen.check_draft(models.has_draft)
    if sys.stdin.isatty() and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # Started from a shell that ignores Ctrl-C for it (a background job, nohup): on its own
        # terminal, Ctrl-C must still stop a reply.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    tmodel, dmodel = load_models(models, load)
    code = 0
    try:
        session = Session(tmodel, dmodel, gen, system=system, on_calibrate=_calibrating)
        err.print(_panel(session))
        with err.status("getting ready", spinner="dots"):
            session.controller()  # may measure this machine's costs: now, not in the first reply
        interactive = sys.stdin.isatty()
        reader = _TerminalInput(cache.cache_dir() / "chat_history") if interactive else None
        try:
            messages = reader.messages() if reader else _piped_messages(sys.stdin)
            code = _converse(session, messages, _ReplyPrinter(show_draft, interactive), interactive)
        except Exception as e:
            failure = _failed(session, e, cache.cache_dir() / "chats")
            if failure is e:
                raise
            raise failure from e
        finally:
            if reader:
                reader.close()
    finally:
        close(tmodel, dmodel)
    if code:
        raise typer.Exit(code)


def _calibrating() -> None:
    err.print("[dim]measuring this machine's costs (once per pair and setting)...[/]")


def _converse(session, messages: Iterable[str], show, interactive: bool) -> int:
    """The chat loop: slash commands and messages until the input ends or /exit. Returns the exit code."""
    for text in messages:
        if not text.strip():
            continue
        try:
            if text.startswith("/") and not text.startswith("//"):
                outcome = session.command(text)
                if outcome.raw:
                    sys.stderr.write(outcome.text + "\n")
                    sys.stderr.flush()
                elif outcome.text:
                    err.print(escape(outcome.text), style="red" if outcome.error else "dim", soft_wrap=True)
                if outcome.exit:
                    return 0
                continue
            if text.startswith("//"):
                text = text[1:]
            try:
                turn = session.send(text, show, lambda note: err.print(escape(note), style="dim"))
            except ContextOverflowError as e:  # this message alone does not fit: say so, keep chatting
                err.print(f"[bold red]error:[/] {escape(e.line())}", soft_wrap=True)
                continue
            finally:
                show.end()
            if interactive:
                for line in fit_parts(_status_parts(session, turn), err.size.width):
                    err.print(escape(line), style="dim", soft_wrap=True)
            for w in turn.warnings:
                err.print(f"[yellow]warning:[/] {escape(w)}", soft_wrap=True)
            if not interactive and turn.finish == Finish.INTERRUPTED:
                err.print("[yellow]interrupted[/]")
                return 130
        except KeyboardInterrupt:  # outside a reply (a status line, a slow command): back to the prompt
            if not interactive:
                raise
            err.print()
    return 0


def fit_parts(parts: list[str], width: int, sep: str = " · ") -> list[str]:
    """Join parts into lines no wider than `width`, breaking only between parts (a part wider than
    the terminal gets a line of its own and the terminal's wrapping)."""
    lines: list[str] = []
    for p in parts:
        if lines and len(lines[-1]) + len(sep) + len(p) <= width:
            lines[-1] += sep + p
        else:
            lines.append(p)
    return lines


def _status_parts(session, turn) -> list[str]:
    """What the status after each reply says: tokens, speed, drafting, what the prompt cost."""
    s = turn.stats
    parts = [f"{s.generated} tokens", f"{s.tokens_per_s:.1f} tok/s"]
    if s.drafted:
        k = f"k={turn.max_k}" if session.gen.k is not None else f"k≤{turn.max_k} (auto)"
        drafters = "+".join(sorted(turn.drafters, key=turn.drafters.get, reverse=True))
        parts.append(f"{drafters} drafts {k}: {s.accepted}/{s.drafted} accepted ({100 * s.acceptance_rate:.0f}%)")
        parts.append(f"mean accepted length {s.mean_accepted:.2f}")
    else:
        parts.append(f"no drafts (mode {session.gen.mode}, k {session.k_text()})")
    parts.append(f"prompt {s.prompt_tokens - s.cached_tokens} new + {s.cached_tokens} cached")
    note = {Finish.INTERRUPTED: "interrupted", Finish.LENGTH: "cut at --max-tokens", Finish.CONTEXT: "context full"}.get(turn.finish)
    if note:
        parts.append(note)
    return parts


def _panel(session) -> Panel:
    """What was loaded, in a few lines."""
    import llama_cpp

    t, d, gen = session.target, session.draft, session.gen
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("target", f"{escape(t.path.name)} [dim]({escape(t.describe())})[/]")
    grid.add_row("draft", f"{escape(d.path.name)} [dim]({escape(d.describe())})[/]" if d else "[dim]none (n-gram lookup only)[/]")
    ngl = t.n_gpu_layers
    gpu = ngl != 0 and llama_cpp.llama_supports_gpu_offload()
    backend = f"GPU offload ({'all' if ngl < 0 else ngl} target layers)" if gpu else "CPU"
    grid.add_row("backend", f"{backend}, {t.n_threads} threads")
    grid.add_row("context", f"{session.n_ctx} tokens")
    grid.add_row("memory", _memory_line(session))
    sampling = "greedy" if gen.sampling.temperature <= 0 else f"temperature {gen.sampling.temperature:g}"
    grid.add_row("drafting", f"mode {gen.mode}, k {session.k_text()}, {sampling}")
    if session.conv.system:
        grid.add_row("system", escape(_clip(session.conv.system, 60)))
    return Panel(grid, title="edgespec chat", subtitle="/help · Ctrl-D quits", title_align="left", expand=False, border_style="dim")


def _memory_line(session) -> str:
    """The memory plan the pair was loaded with: what it needs against what is free."""
    from edgespec.machine import estimate
    p = session.target.plan
    if p is None:
        return "not planned"
    line = f"{estimate.fmt_bytes(p.ram)} RAM, KV cache {p.type_k}"
    line += f" + {estimate.fmt_bytes(p.vram)} GPU" if p.vram else ""
    return line + f", {estimate.fmt_bytes(p.system.available)} available"


def _clip(s: str, n: int) -> str:
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n - 1] + "…"


class _ReplyPrinter:
    """Writes reply text to stdout as it streams; on a terminal, control characters are defused
    and (--show-draft) text from accepted drafts is coloured."""

    def __init__(self, show_draft: bool, interactive: bool):
        self.interactive = interactive
        self.console = Console(highlight=False, soft_wrap=True) if show_draft else None
        self.open = False  # a reply is on the current line

    def __call__(self, piece: str, from_draft: list[bool]) -> None:
        if self.interactive:
            piece = piece.translate(_CONTROLS)
        if self.console is not None and any(from_draft):
            text = Text()
            start = 0
            for i in range(1, len(piece) + 1):
                if i == len(piece) or from_draft[i] != from_draft[start]:
                    text.append(piece[start:i], style="cyan" if from_draft[start] else None)
                    start = i
            self.console.print(text, end="")
        else:
            sys.stdout.write(piece)
        sys.stdout.flush()
        self.open = not piece.endswith("\n") if piece else self.open

    def end(self) -> None:
        """Finish the reply's line."""
        if self.open:
            sys.stdout.write("\n")
            sys.stdout.flush()
        self.open = False


def _piped_messages(stream) -> Iterator[str]:
    """One message per line; a line ending in a backslash continues on the next."""
    if hasattr(stream, "reconfigure"):
        stream.reconfigure(errors="replace")
    parts: list[str] = []
    for raw in stream:
        line = raw.rstrip("\r\n")
        if line.endswith("\\"):
            parts.append(line[:-1])
            continue
        parts.append(line)
        yield "\n".join(parts)
        parts = []
    if parts:
        yield "\n".join(parts)


class _TerminalInput:
    """Reads messages at a prompt, with readline's editing and history when Python has it."""

    def __init__(self, history: Path):
        self.history = history
        try:
            import readline
        except ImportError:  # Windows without pyreadline: plain input() still works
            readline = None
        self.readline = readline
        color = not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"
        # \001 and \002 tell readline that the colour codes take no room on the line.
        self.prompt, self.more = ("\001\033[1;36m\002>\001\033[0m\002 ", "\001\033[2m\002.\001\033[0m\002 ") if color else ("> ", ". ")
        if readline is None:
            self.prompt, self.more = self.prompt.replace("\001", "").replace("\002", ""), self.more.replace("\001", "").replace("\002", "")
            return
        readline.set_history_length(1000)
        try:
            readline.read_history_file(history)
        except OSError:
            pass
        readline.set_completer(self._complete)
        readline.set_completer_delims(" \t\n")
        if "libedit" in (readline.__doc__ or ""):
            readline.parse_and_bind("bind ^I rl_complete")
        else:
            readline.parse_and_bind("tab: complete")

    def _complete(self, text: str, state: int) -> str | None:
        options = [c + " " for c in COMMANDS if c.startswith(text)] if text.startswith("/") else []
        return options[state] if state < len(options) else None

    def messages(self) -> Iterator[str]:
        while True:
            text = self.read()
            if text is None:
                return
            yield text

    def read(self) -> str | None:
        """One message; None at Ctrl-D, or Ctrl-C at an empty prompt (Ctrl-C on typed text clears it)."""
        parts: list[str] = []
        while True:
            try:
                line = self._input(self.more if parts else self.prompt)
            except EOFError:
                sys.stdout.write("\n")
                return None
            except KeyboardInterrupt:
                typed = self.readline.get_line_buffer() if self.readline else ""
                sys.stdout.write("\n")
                if parts or typed:
                    parts = []
                    continue
                return None
            # A paste without bracketed-paste mode arrives as several lines at once: keep them together.
            text = "\n".join([line] + self._pending_lines())
            if text.endswith("\\"):
                parts.append(text[:-1])
                continue
            parts.append(text)
            return "\n".join(parts)

    def _input(self, prompt: str) -> str:
        if sys.stdout.isatty():
            return input(prompt)
        # stdout is a file: it gets the replies only, the prompt goes to the terminal through stderr.
        sys.stderr.write(prompt.replace("\001", "").replace("\002", ""))
        sys.stderr.flush()
        return input()

    def _pending_lines(self) -> list[str]:
        lines: list[str] = []
        try:
            while select.select([sys.stdin], [], [], 0.02)[0]:
                lines.append(input(""))
        except (OSError, ValueError, EOFError):  # no select() on this stream (Windows), or input ended
            pass
        return lines

    def close(self) -> None:
        if self.readline is None:
            return
        try:
            self.history.parent.mkdir(parents=True, exist_ok=True)
            self.readline.write_history_file(self.history)
        except OSError:
            pass  # history is a convenience; never fail the exit for it


def _failed(session, e: BaseException, folder: Path) -> EdgespecError:
    """The error to end with: one line that says where the conversation was saved."""
    saved = None
    if session.conv.messages:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            saved = session.save(folder / f"chat-{time.strftime('%Y%m%d-%H%M%S')}.json")
        except (EdgespecError, OSError):
            saved = None
    where = f"the conversation is saved in {saved}" if saved else None
    if isinstance(e, EdgespecError):
        e.hint = "; ".join(h for h in (e.hint, where) if h)
        return e
    hint = "; ".join(h for h in (where, "set EDGESPEC_DEBUG=1 for the traceback") if h)
    return EdgespecError(f"internal error: {type(e).__name__}: {e}", hint)
