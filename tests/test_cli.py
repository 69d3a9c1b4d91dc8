"""The `edgespec` command as a user runs it: a real subprocess, its stdout, stderr and exit code."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from edgespec import __version__


def edgespec(args, env, timeout=120, **kw):
    return subprocess.run(
        [sys.executable, "-m", "edgespec", *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout, **kw
    )


def assert_one_line_error(proc, *needles):
    """Non-zero exit, no traceback, one non-empty line on stderr that names the problem."""
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_version(cli_env):
    proc = edgespec(["--version"], cli_env)
    assert proc.returncode == 0 and proc.stdout.strip() == f"edgespec {__version__}"


def test_help_lists_run(cli_env):
    proc = edgespec(["run", "--help"], cli_env)
    assert proc.returncode == 0
    for flag in ("--target", "--draft", "--k", "--temp", "--seed", "--max-tokens", "--stats", "--json", "--n-gpu-layers", "--draft-gpu-layers"):
        assert flag in proc.stdout


def test_run_json_with_draft(tiny, cli_env):
    proc = edgespec(["run", "--target", tiny["target"], "--draft", tiny["draft"], "--k", "3", "--max-tokens", "24", "--json", "--raw", "Hello"], cli_env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["generated_tokens"] == 24 and out["finish_reason"] == "length"
    assert out["drafted"] > 0 and 0 <= out["accepted"] <= out["drafted"]
    assert 0.0 <= out["acceptance_rate"] <= 1.0 and out["decode_tokens_per_s"] > 0
    assert isinstance(out["text"], str)


def test_run_streams_text_and_stats(tiny, cli_env):
    plain = edgespec(["run", "-m", tiny["target"], "-n", "20", "--raw", "Hello"], cli_env)
    spec = edgespec(["run", "-m", tiny["target"], "-d", tiny["self_draft"], "--k", "3", "-n", "20", "--stats", "--raw", "Hello"], cli_env)
    assert plain.returncode == 0 and spec.returncode == 0, spec.stderr
    assert spec.stdout == plain.stdout and spec.stdout.strip()
    assert "Drafted" in spec.stderr and "accepted" in spec.stderr and "tok/s" in spec.stderr


def test_stats_read_as_sentences_that_fit_80_columns(tiny, cli_env):
    import re

    env = dict(cli_env, COLUMNS="80")
    proc = edgespec(["run", "-m", tiny["target"], "-d", tiny["draft"], "--k", "3", "-n", "20", "--stats", "--raw", "Hello"], env)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("measuring")]
    assert len(lines) == 3, proc.stderr
    assert all(len(ln) <= 80 and ln.endswith(".") for ln in lines), lines
    assert "{" not in proc.stderr and "}" not in proc.stderr  # no Python dict
    assert re.match(r"Generated 20 tokens in \d+\.\d\d s \(\d+\.\d tok/s\); prompt: \d+ tokens in", lines[0])
    assert re.match(r"Drafted \d+ tokens, accepted \d+ \(\d+\.\d%\), \d+\.\d\d per drafting step\.", lines[1])
    assert re.match(r"Target passes: \d+ draft model(, \d+ plain)?; stopped at --max-tokens\.", lines[2])


def test_prompt_from_stdin(tiny, cli_env):
    a = edgespec(["run", "-m", tiny["target"], "-n", "8", "--raw", "-"], cli_env, input="from stdin")
    b = edgespec(["run", "-m", tiny["target"], "-n", "8", "--raw", "from stdin"], cli_env)
    assert a.returncode == 0 and a.stdout == b.stdout


@pytest.mark.parametrize(
    "case,needles",
    [
        ("missing", ["not found", "nope.gguf"]),
        ("not_gguf", ["not a GGUF file"]),
        ("truncated", ["could not load", "truncated.gguf"]),
        ("vocab", ["tokenizers differ at token 100"]),
        ("k", ["--k must be >= 0"]),
        ("max_tokens", ["plus --max-tokens 5000 exceed the", "-token context"]),
        ("empty", ["prompt is empty"]),
        ("bad_utf8_stdin", ["standard input is not valid UTF-8: byte 0xff at offset 0"]),
        ("bad_utf8_arg", ["the prompt is not valid UTF-8: byte 0xff at offset 4"]),
    ],
)
def test_bad_input_is_one_clear_line(tiny, cli_env, tmp_path, case, needles):
    t = tiny["target"]
    args = {
        "missing": ["run", "-m", tmp_path / "nope.gguf", "hi"],
        "not_gguf": ["run", "-m", tiny["not_gguf"], "hi"],
        "truncated": ["run", "-m", tiny["truncated"], "hi"],
        "vocab": ["run", "-m", t, "-d", tiny["other_vocab"], "hi"],
        "k": ["run", "-m", t, "-d", tiny["draft"], "--k", "-1", "hi"],
        "max_tokens": ["run", "-m", t, "--ctx", "64", "--max-tokens", "5000", "hi"],
        "empty": ["run", "-m", t, "   "],
        "bad_utf8_stdin": ["run", "-m", t, "-"],
        "bad_utf8_arg": ["run", "-m", t, b"bad \xff\xfe prompt \xc3"],
    }[case]
    if case == "bad_utf8_stdin":
        proc = subprocess.run([sys.executable, "-m", "edgespec", *map(str, args)], env=cli_env, capture_output=True,
                              input=b"\xff\xfe bad \xc3", timeout=120)
        proc.stderr = proc.stderr.decode("utf-8", "replace")
    elif case == "bad_utf8_arg":
        proc = subprocess.run([sys.executable.encode(), b"-m", b"edgespec", *(a if isinstance(a, bytes) else str(a).encode() for a in args)],
                              env=cli_env, capture_output=True, timeout=120)
        proc.stderr = proc.stderr.decode("utf-8", "replace")
    else:
        proc = edgespec(args, cli_env)
    assert_one_line_error(proc, *needles)


def test_debug_env_shows_the_traceback(tiny, cli_env):
    env = dict(cli_env, EDGESPEC_DEBUG="1")
    proc = edgespec(["run", "-m", tiny["not_gguf"], "hi"], env)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_ctrl_c_mid_generation_keeps_the_partial_reply(tiny, cli_env):
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgespec", "run", "-m", str(tiny["target"]), "-d", str(tiny["draft"]),
         "--ctx", "100000", "--max-tokens", "90000", "--ignore-eos", "--raw", "Go on forever"],
        env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        first = proc.stdout.read(16)  # generation has started and text is streaming
        assert first
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        out, errs = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    errs = errs.decode()
    assert proc.returncode == 130, errs
    assert "Traceback" not in errs and "interrupted" in errs
    assert len(first + out) > 16  # what was shown stays shown


def test_ctrl_c_with_json_still_prints_the_partial_result(tiny, cli_env):
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgespec", "run", "-m", str(tiny["target"]), "--ctx", "100000", "--max-tokens", "90000",
         "--ignore-eos", "--draft-mode", "none", "--json", "--raw", "Go on"],
        env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    time.sleep(8)  # nothing streams in --json mode: give start-up time on a loaded machine
    proc.send_signal(signal.SIGINT)
    out, errs = proc.communicate(timeout=30)
    assert proc.returncode == 130, errs.decode()
    data = json.loads(out)
    assert data["finish_reason"] == "interrupted" and data["generated_tokens"] > 0
