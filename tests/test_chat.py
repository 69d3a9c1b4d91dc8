"""`edgespec chat`: the conversation's token bookkeeping in-process, and the real program driven
through a pseudo-terminal (pexpect) and through a pipe, on tiny models and on SmolLM2.

The tiny models have a byte vocabulary: one token per byte of text, so the number of tokens a
turn must evaluate can be counted from the text alone, independently of the code under test.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgespec.session import runner
from edgespec.session.chat import Session, _DraftChars
from edgespec.session.conversation import Conversation, tokenize_continuation
from edgespec.core.engine import Step
from edgespec.errors import EdgespecError
from edgespec.core.verify import SamplingParams

try:
    import pexpect
except ImportError:  # no pty on Windows: the in-process tests still run
    pexpect = None
pty = pytest.mark.skipif(pexpect is None, reason="the pty-driven tests need pexpect")

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 180  # per expected line: generous, the machines are slow and shared
STATUS = r"tok/s[^\n]*\n"  # the status line after each reply
PROMPT = r">(?:\x1b\[0m)? "  # the input prompt (coloured unless NO_COLOR)
END_OF_TURN = "<|im_end|>\n"  # what the ChatML template puts after a reply


def user_turn(text: str) -> str:
    """The ChatML text of a new user message and the assistant header after it."""
    return f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"


def tiny_tokens(text: str) -> int:
    """Tokens of `text` for the tiny models: SentencePiece writes each space as U+2581 (3 bytes in
    UTF-8), then the byte vocabulary has one token per byte."""
    return len(text.replace(" ", "\u2581").encode())


def gen_options(**kw) -> runner.GenOptions:
    kw.setdefault("mode", "model")
    kw.setdefault("k", 3)
    kw.setdefault("max_tokens", 16)
    kw.setdefault("ignore_eos", True)
    return runner.GenOptions(sampling=SamplingParams(), **kw)


# ------------------------------------------------------------------ in-process: token bookkeeping
def test_second_turn_evaluates_only_the_new_tokens(load):
    target, draft = load("target"), load("draft")
    s = Session(target, draft, gen_options())
    t1 = s.send("hello")
    t2 = s.send("and a second question")
    assert t1.stats.cached_tokens == 0 and t1.stats.generated == 16
    # Everything before the new message comes from the cache: the first prompt and the reply
    # (less its last token, which is fed with the next batch).
    assert t2.stats.cached_tokens == t1.stats.prompt_tokens + t1.stats.generated - 1
    # Evaluated: the template's end-of-turn text, the new user turn (one token per byte), and the
    # reply's last token, less the prompt's last token (it goes with the first decode step).
    new_bytes = tiny_tokens(END_OF_TURN + user_turn("and a second question"))
    assert t2.stats.prefill_tokens == new_bytes
    assert t2.stats.prompt_tokens == t1.stats.prompt_tokens + t1.stats.generated + new_bytes
    # The draft model's cache is reused the same way (it may lag the target by a token).
    # (It can lag the target by a few tokens: the last draft of a step is never fed to it.)
    assert t2.draft_reused + t2.draft_evaluated == t2.stats.prompt_tokens - 1
    assert t2.draft_reused >= t1.stats.prompt_tokens + t1.stats.generated - 1 - 4
    assert t2.draft_evaluated <= new_bytes + 4
    # And the token list says exactly what the template renders for the whole conversation.
    full = s.conv.render(s.conv.messages[:3], True)
    prompt2 = s.conv.tokens[: t2.stats.prompt_tokens]
    shown = target.detokenize(prompt2).replace(" ", "\u2581")  # (the reply's spaces are 0x20 tokens)
    assert shown == "\u2581" + full.replace(" ", "\u2581")  # SentencePiece's word-start mark, then the text


def test_tokenize_continuation_adds_no_word_start_mark(load):
    m = load("target")
    assert m.detokenize(m.tokenize(END_OF_TURN, add_special=False)).startswith("\u2581")
    toks = tokenize_continuation(m, END_OF_TURN)
    assert m.detokenize(toks) == END_OF_TURN and len(toks) == len(END_OF_TURN.encode())


def write_tiny(tmp_path: Path, name: str, template: str | None) -> Path:
    import tiny_models

    tokens, types = tiny_models.byte_vocab()
    w = tiny_models.make_weights(1234, len(tokens))
    return tiny_models.write_model(tmp_path / f"{name}.gguf", w, tokens, types, chat_template=template, name=name)


# Numbers the turns from the end: every earlier message renders differently once a new one is added.
COUNTDOWN = (
    "{% for m in messages %}[{{ messages|length - loop.index }}:{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}"
)


def test_the_context_index_grows_with_the_conversation(load, monkeypatch):
    """Context drafts come from every earlier turn; the index is extended per turn, never rebuilt."""
    from edgespec.core.suffix import SuffixIndex

    resets = []
    monkeypatch.setattr(SuffixIndex, "reset", lambda self, _orig=SuffixIndex.reset: (resets.append(1), _orig(self))[1])
    target = load("target")
    s = Session(target, None, gen_options(mode="ngram", k=None))
    s.send("say something")
    n1 = len(s.context)
    before = resets.count(1)
    s.send("say it again")
    assert len(s.context) > n1 and resets.count(1) == before
    assert s.context.tokens == list(s.conv.tokens[: len(s.context)])


def test_template_that_rewrites_earlier_turns_falls_back_to_a_full_render(tmp_path, load):
    m = load(write_tiny(tmp_path, "countdown", COUNTDOWN))
    s = Session(m, None, gen_options(mode="none", k=None))
    s.send("one")
    t2 = s.send("two")
    expected = m.tokenize_prompt(s.conv.render(s.conv.messages[:3], True))
    assert t2.stats.prompt_tokens == len(expected)
    assert 0 < t2.stats.cached_tokens < len(expected) - 20  # only the common start is reused


def test_model_without_a_template_gets_chatml(tmp_path, load):
    m = load(write_tiny(tmp_path, "bare", None))
    conv = Conversation(m)
    toks = conv.prompt_for("hi")
    assert m.detokenize(toks) == "\u2581" + user_turn("hi")


def test_stop_string_reply_keeps_only_the_text_shown(load):
    target = load("target")
    s = Session(target, None, gen_options(mode="none", k=None, max_tokens=40))
    first = s.send("hello")
    text = s.conv.messages[1]["content"]
    s2 = Session(load("target"), None, gen_options(mode="none", k=None, max_tokens=40, stop=(text[5:8],)))
    s2.send("hello")
    cut = s2.conv.messages[1]["content"]
    assert cut == text[: text.index(text[5:8])] and first.stats.generated == 40
    assert target.detokenize(s2.conv.tokens).endswith(cut + END_OF_TURN)


def test_overflow_drops_the_oldest_turns_and_keeps_the_system_prompt(load):
    m = load("target", n_ctx=256)
    s = Session(m, None, gen_options(mode="none", k=None, max_tokens=40), system="Be brief.")
    notes: list[str] = []
    turns = [s.send(f"message number {i}", on_notice=notes.append) for i in range(4)]
    assert turns[0].dropped == 0 and sum(t.dropped for t in turns) >= 2
    assert notes and "dropped the oldest" in notes[0] and "256-token context" in notes[0]
    assert all(t.stats.prompt_tokens + s.reserve <= 256 for t in turns)
    assert s.conv.system == "Be brief." and s.conv.messages[-2]["content"] == "message number 3"
    assert "message number 0" not in [msg["content"] for msg in s.conv.messages]
    assert "<|im_start|>system\nBe\u2581brief." in m.detokenize(s.conv.tokens)


def test_a_message_too_long_for_the_context_is_refused_and_the_history_kept(load):
    m = load("target", n_ctx=128)  # (llama.cpp may round the context up)
    s = Session(m, None, gen_options(mode="none", k=None, max_tokens=8))
    s.send("hi")
    with pytest.raises(EdgespecError, match=f"the context holds {m.n_ctx}"):
        s.send("x" * 2 * m.n_ctx)
    assert len(s.conv.messages) == 2


def test_interrupted_reply_keeps_what_was_shown(load):
    target = load("target")
    s = Session(target, load("draft"), gen_options(max_tokens=200))
    shown: list[str] = []

    def on_piece(piece, flags):
        shown.append(piece)
        if len(shown) == 5:
            raise KeyboardInterrupt  # what Ctrl-C does in the middle of a reply

    t1 = s.send("hello", on_piece)
    assert t1.finish == "interrupted" and s.conv.messages[1]["content"] == "".join(shown)
    t2 = s.send("go on")
    assert t2.stats.cached_tokens >= t1.stats.prompt_tokens + t1.stats.generated - 4
    assert t2.stats.prefill_tokens <= tiny_tokens(END_OF_TURN + user_turn("go on")) + 4


def test_draft_chars_follow_step_acceptance():
    piece = {i: bytes([i]) for i in range(256)}.__getitem__
    chars = _DraftChars(piece)
    chars.add(Step([ord("a"), ord("b"), ord("c")], accepted=2, drafted=3))
    chars.add(Step([0xC3, 0xA9, ord("d")], accepted=1, drafted=1))  # 'é' is completed by a target token
    assert chars.take(3) == [True, True, False]
    assert chars.take(2) == [False, False] and chars.take(1) == [False]


def test_slash_commands(load, tmp_path):
    s = Session(load("target"), load("draft"), gen_options())
    assert "/save FILE" in s.command("/help").text
    for bad in ("/mode fast", "/k 99", "/k x", "/temp -1", "/nope", "/save", "/stats everything"):
        assert s.command(bad).error, bad
    assert s.command("/mode none").text == "mode plain"  # "none" is accepted for plain decoding
    assert s.send("hi").stats.drafted == 0
    assert s.command("/mode model").text == "mode model" and s.command("/k 2").text == "k 2"
    t = s.send("again")
    assert t.stats.drafted > 0 and t.max_k <= 2 and t.drafters == {"model": t.stats.draft_steps}
    assert s.command("/temp 0.7").text.startswith("temperature 0.7") and s.gen.sampling.temperature == 0.7
    s.command("/system Answer in French.")
    assert s.conv.system == "Answer in French." and s.conv.tokens is None
    assert "conversation: 2 turns" in s.command("/stats").text
    assert s.command("/reset").text == "new conversation (system prompt kept)" and not s.conv.messages
    assert s.command("/exit").exit and s.command("/quit").exit


def test_save_and_load_round_trip(load, tmp_path):
    s = Session(load("target"), None, gen_options(mode="none", k=None), system="sys")
    s.send("one")
    s.send("two")
    a = tmp_path / "a.json"
    assert "saved 2 turns" in s.command(f"/save {a}").text
    other = Session(load("target"), None, gen_options(mode="none", k=None))
    assert "loaded 2 turns" in other.command(f"/load {a}").text
    assert other.conv.system == "sys" and other.conv.messages == s.conv.messages
    t3 = other.send("three")  # the loaded turns are in the prompt
    assert t3.stats.prompt_tokens > len(other.conv.bare_prompt("three")) + 30


@pytest.mark.parametrize(
    "content,needle",
    [
        ("not json", "is not JSON"),
        ('{"messages": [{"role": "assistant", "content": "x"}]}', "expected user"),
        ('{"messages": [{"role": "user", "content": "x"}]}', "has no reply"),
        ('{"messages": [{"role": "user"}]}', "needs a role"),
        ("[]", "not a saved chat"),
    ],
)
def test_load_rejects_bad_files_in_one_line(load, tmp_path, content, needle):
    s = Session(load("target"), None, gen_options(mode="none", k=None))
    (tmp_path / "bad.json").write_text(content)
    out = s.command(f"/load {tmp_path / 'bad.json'}")
    assert out.error and needle in out.text and "\n" not in out.text
    assert s.command(f"/load {tmp_path / 'missing.json'}").error


# --------------------------------------------------------------------------- the real program
def spawn(args, env, color=False, columns=250):
    env = dict(env, TERM="xterm")
    if not color:
        env["NO_COLOR"] = "1"
    p = pexpect.spawn(
        sys.executable, ["-m", "edgespec", "chat", *map(str, args)], env=env, cwd=str(REPO),
        encoding="utf-8", codec_errors="replace", timeout=TIMEOUT, dimensions=(50, columns),
    )
    p.expect(PROMPT)
    return p


def say(p, text, expect=STATUS):
    """Send a line; wait for what it prints (a reply's status line, a command's answer), then the prompt."""
    p.sendline(text)
    p.expect_exact(text)  # the terminal's echo, so that `expect` cannot match the line we typed
    p.expect(expect)
    found = p.match.group(0) if hasattr(p.match, "group") else p.after
    p.expect(PROMPT)
    return found


def stats_json(p) -> dict:
    return json.loads(say(p, "/stats json", r"\{\"turns\".*\}\r?\n"))


def finish(p, how="/exit"):
    if how == "eof":
        p.sendeof()
    else:
        p.sendline(how)
    p.expect(pexpect.EOF)
    p.close()
    return p.exitstatus


def tiny_args(tiny, *extra):
    return ["-m", tiny["target"], "-d", tiny["draft"], "--k", "3", "-n", "16", "--ignore-eos", *extra]


@pty
def test_pty_two_turns_only_new_tokens_then_slash_commands(tiny, cli_env):
    p = spawn(tiny_args(tiny), cli_env)
    say(p, "hello")
    say(p, "and a second question")
    st = stats_json(p)
    t1, t2 = st["turns"]
    assert t2["cached_tokens"] == t1["prompt_tokens"] + t1["generated_tokens"] - 1
    assert t2["prefill_tokens"] == tiny_tokens(END_OF_TURN + user_turn("and a second question"))
    assert t2["draft_evaluated"] <= t2["prefill_tokens"] + 4 and t2["draft_reused"] >= t2["cached_tokens"] - 4
    # a slash command changes what the next reply does
    assert "mode plain" in say(p, "/mode none", "mode plain")  # "none": another name for plain decoding
    line = say(p, "third")
    assert "no drafts (mode plain" in line
    assert stats_json(p)["turns"][2]["drafted"] == 0
    assert "unknown command /bogus" in say(p, "/bogus", "unknown command[^\n]*\n")
    assert finish(p) == 0


@pty
@pytest.mark.parametrize("columns", [80, 120])
def test_pty_status_lines_fit_the_terminal(tiny, cli_env, columns):
    """The status after a reply breaks between its parts, never inside a word or a figure."""
    p = spawn(tiny_args(tiny), cli_env, columns=columns)
    p.sendline("hello")
    p.expect_exact("hello")
    p.expect(r"\d+ tokens · [\s\S]*?cached[^\n]*\n")
    import re

    plain = re.sub(r"\x1b\[[0-9;]*m", "", p.match.group(0))  # NO_COLOR still allows dim text
    status = [ln.rstrip("\r") for ln in plain.splitlines() if ln.strip()]
    p.expect(PROMPT)
    assert finish(p) == 0
    assert all(len(ln) <= columns for ln in status), status
    joined = " · ".join(status)
    for part in ("tok/s", "accepted", "mean accepted length", "prompt"):
        assert part in joined
    assert all(not ln.startswith(" ") and not ln.endswith("·") for ln in status)


def test_panel_names_model_sizes_from_their_metadata(smollm2, tmp_path):
    from edgespec.llama.model import Model

    with Model(smollm2, n_ctx=256) as m:
        assert m.describe() == "llama, 135M parameters, Q4_1"


def interrupt_reply(p, text):
    """Send a message, Ctrl-C once the reply is streaming, wait for the prompt."""
    p.sendline(text)
    p.expect_exact(text)
    p.expect(r"[\s\S]{200}")  # the reply is streaming
    time.sleep(0.5)
    p.sendintr()
    p.expect(r"tok/s[^\n]*interrupted[^\n]*\n")
    p.expect(PROMPT)


@pty
def test_pty_ctrl_c_mid_reply_keeps_the_partial_reply(tiny, cli_env, tmp_path):
    p = spawn(tiny_args(tiny, "--ctx", "60000", "-n", "50000"), cli_env)
    interrupt_reply(p, "write forever")
    say(p, "/k 2", "k 2")
    interrupt_reply(p, "go on")  # the chat goes on after Ctrl-C (and this reply is endless too)
    t1, t2 = stats_json(p)["turns"]
    assert t1["finish"] == t2["finish"] == "interrupted" and 0 < t1["generated_tokens"] < 50000
    # the partial reply stayed in the conversation and in the KV cache: only the new turn is evaluated
    assert t2["cached_tokens"] >= t1["prompt_tokens"] + t1["generated_tokens"] - 8
    assert t2["prefill_tokens"] <= tiny_tokens(END_OF_TURN + user_turn("go on")) + 8
    saved = tmp_path / "c.json"
    say(p, f"/save {saved}", "saved 2 turns")
    reply = json.loads(saved.read_text())["messages"][1]["content"]
    assert len(reply) >= 20
    assert finish(p) == 0


@pty
def test_pty_ctrl_c_at_the_prompt(tiny, cli_env):
    p = spawn(tiny_args(tiny), cli_env)
    p.send("typed but not sent")
    p.expect("typed but not sent")
    p.sendintr()  # clears the line, does not exit
    p.expect(PROMPT)
    say(p, "/stats", "conversation: 0 turns")
    p.sendintr()  # at an empty prompt: exit
    p.expect(pexpect.EOF)
    p.close()
    assert p.exitstatus == 0


@pty
def test_pty_ctrl_d_exits_and_multiline_input(tiny, cli_env, tmp_path):
    p = spawn(tiny_args(tiny), cli_env)
    p.sendline("first line \\")
    p.expect(r"\. ")  # the continuation prompt
    say(p, "second line")
    saved = tmp_path / "m.json"
    say(p, f"/save {saved}", "saved 1 turn")
    assert json.loads(saved.read_text())["messages"][0]["content"] == "first line \nsecond line"
    assert finish(p, "eof") == 0


@pty
def test_pty_context_overflow_drops_the_oldest_turn(tiny, cli_env, tmp_path):
    p = spawn(["-m", tiny["target"], "--draft-mode", "none", "--ctx", "256", "-n", "40", "--ignore-eos", "--system", "Be brief."], cli_env)
    say(p, "the first message")
    p.sendline("the second message")
    p.expect(r"dropped the oldest 1 turn to fit the 256-token context")
    p.expect(STATUS)
    p.expect(PROMPT)
    saved = tmp_path / "o.json"
    say(p, f"/save {saved}", "saved 1 turn")
    data = json.loads(saved.read_text())
    assert data["system"] == "Be brief."
    assert [m["content"] for m in data["messages"] if m["role"] == "user"] == ["the second message"]
    assert stats_json(p)["turns"][1]["dropped_turns"] == 1
    assert finish(p) == 0


@pty
def test_pty_save_then_load_round_trips(tiny, cli_env, tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    p = spawn(tiny_args(tiny, "--system", "You are terse."), cli_env)
    say(p, "hello")
    say(p, "more")
    say(p, f"/save {a}", "saved 2 turns")
    say(p, "/reset", "new conversation")
    assert stats_json(p)["messages"] == 0
    say(p, f"/load {a}", "loaded 2 turns")
    say(p, f"/save {b}", "saved 2 turns")
    da, db = json.loads(a.read_text()), json.loads(b.read_text())
    assert da["messages"] == db["messages"] and da["system"] == db["system"] == "You are terse."
    assert len(da["messages"]) == 4 and da["messages"][2] == {"role": "user", "content": "more"}
    say(p, "and now")  # the loaded conversation is the context of the next reply
    turn = stats_json(p)["turns"][-1]
    assert turn["prompt_tokens"] > len(user_turn("and now")) + 2 * 16 + len("hellomore")
    assert finish(p) == 0


@pty
def test_pty_show_draft_colours_accepted_drafts(tiny, cli_env):
    p = spawn(["-m", tiny["target"], "-d", tiny["self_draft"], "--k", "4", "-n", "24", "--ignore-eos", "--show-draft"], cli_env, color=True)
    p.sendline("hello")
    p.expect(STATUS)
    assert "\x1b[36m" in p.before  # cyan: text from accepted drafts (a self-draft is always accepted)
    assert "model drafts k=4" in p.match.group(0)
    p.expect(PROMPT)
    assert finish(p) == 0


def run_piped(args, env, text, timeout=TIMEOUT * 2):
    return subprocess.run(
        [sys.executable, "-m", "edgespec", "chat", *map(str, args)], input=text.encode(), env=env, cwd=str(REPO),
        capture_output=True, timeout=timeout,
    )


def replies_as_printed(messages: list[dict]) -> bytes:
    """What piped mode must write: each reply, ended by a newline unless it ends with one."""
    out = ""
    for m in messages:
        if m["role"] == "assistant":
            out += m["content"] + ("" if m["content"].endswith("\n") else "\n")
    return out.encode()


def test_piped_mode_writes_only_the_replies(tiny, cli_env, tmp_path):
    saved = tmp_path / "p.json"
    args = ["-m", tiny["target"], "--draft-mode", "none", "-n", "16", "--ignore-eos"]
    proc = run_piped(args, cli_env, f"hello\n\n/system -\nsecond \\\nmessage\n/save {saved}\n")
    assert proc.returncode == 0, proc.stderr.decode()
    data = json.loads(saved.read_text())
    assert [m["content"] for m in data["messages"] if m["role"] == "user"] == ["hello", "second \nmessage"]
    assert proc.stdout == replies_as_printed(data["messages"])
    # the first reply is exactly what `edgespec run` gives for the same prompt
    ref = subprocess.run([sys.executable, "-m", "edgespec", "run", *map(str, args), "hello"], env=cli_env, cwd=str(REPO), capture_output=True, timeout=TIMEOUT)
    assert ref.returncode == 0 and proc.stdout.startswith(ref.stdout)
    assert b"edgespec chat" in proc.stderr and b"saved 2 turns" in proc.stderr  # the panel and notes: stderr


INJECT_FAILURE = """
import sys
from edgespec.session import runner
from edgespec.errors import EdgespecError

def broken(target, draft, tokens, opts, reply, controller=None, on_step=None, context=None):
    reply.text = "partial"
    yield "partial"
    raise EdgespecError("llama_decode failed with code -3 on target.gguf at position 60")

runner.stream = broken
sys.argv = ["edgespec", *sys.argv[1:]]
from edgespec.cli import main
main()
"""


def test_error_mid_reply_ends_in_one_line_and_saves_the_conversation(tiny, cli_env):
    proc = subprocess.run(
        [sys.executable, "-c", INJECT_FAILURE, "chat", "-m", str(tiny["target"]), "--draft-mode", "none", "-n", "8"],
        input=b"hello\nnever sent\n", env=cli_env, cwd=str(REPO), capture_output=True, timeout=TIMEOUT,
    )
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: llama_decode failed") and "the conversation is saved in " in last
    path = Path(last.split("the conversation is saved in ", 1)[1].rstrip(")").strip())
    data = json.loads(path.read_text())
    assert data["messages"] == [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "partial"}]
    assert proc.stdout == b"partial\n"


def test_chat_bad_options_are_one_line(tiny, cli_env):
    for args, needle in ((["--draft-mode", "fast"], "--draft-mode must be one of"), (["--draft-mode", "model"], "needs a draft model")):
        proc = subprocess.run([sys.executable, "-m", "edgespec", "chat", "-m", str(tiny["target"]), *args], env=cli_env, cwd=str(REPO), capture_output=True, text=True, timeout=TIMEOUT, input="")
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and needle in lines[0], proc.stderr


# --------------------------------------------------------------------------------- SmolLM2
@pytest.mark.slow
@pty
def test_smollm2_pty_second_turn_decodes_only_new_tokens(smollm2, cli_env):
    from edgespec.llama.model import Model

    p = spawn(["-m", smollm2, "-d", smollm2, "--draft-mode", "model", "--k", "4", "-n", "48", "--ctx", "2048"], cli_env)
    say(p, "What is the capital of France?")
    say(p, "And of Italy?")
    t1, t2 = stats_json(p)["turns"]
    assert finish(p) == 0
    with Model(smollm2, n_ctx=256, n_threads=1) as m:  # counted with the model's own tokenizer
        new = len(m.tokenize(END_OF_TURN + user_turn("And of Italy?"), add_special=False, parse_special=True))
    # The reply's <|im_end|> was generated (and is already counted) when the reply ended by itself.
    assert t2["prefill_tokens"] == new - (1 if t1["finish"] == "stop" else 0), (t1, t2)
    assert t2["cached_tokens"] == t1["prompt_tokens"] + t1["generated_tokens"] - 1
    assert t2["draft_evaluated"] is not None and t2["draft_evaluated"] <= t2["prefill_tokens"] + 5
    assert t1["acceptance_rate"] == 1.0 and t1["drafted"] > 0  # its own draft: every draft accepted


@pytest.mark.slow
def test_smollm2_piped_replies_are_exactly_the_replies(smollm2, cli_env, tmp_path):
    saved = tmp_path / "s.json"
    args = ["-m", smollm2, "--draft-mode", "none", "-n", "40"]
    proc = run_piped(args, cli_env, f"Name a colour.\nName another one.\n/save {saved}\n")
    assert proc.returncode == 0, proc.stderr.decode()
    data = json.loads(saved.read_text())
    assert len(data["messages"]) == 4 and all(m["content"].strip() for m in data["messages"])
    assert proc.stdout == replies_as_printed(data["messages"])
    ref = subprocess.run([sys.executable, "-m", "edgespec", "run", *map(str, args), "Name a colour."], env=cli_env, cwd=str(REPO), capture_output=True, timeout=TIMEOUT)
    assert ref.returncode == 0 and proc.stdout.startswith(ref.stdout)
