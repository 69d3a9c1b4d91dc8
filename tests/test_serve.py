"""`edgespec serve` as clients see it: a real server process on 127.0.0.1, the official `openai` client
(sync and async) and plain HTTP (httpx)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

openai = pytest.importorskip("openai")

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 240


class Server:
    """A running `edgespec serve` subprocess; its stderr is collected as it goes."""

    def __init__(self, args, env):
        self.proc = subprocess.Popen([sys.executable, "-m", "edgespec", "serve", "--port", "0", *map(str, args)],
                                     env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.url = None
        listening = threading.Event()

        def read():
            for line in self.proc.stderr:
                self.lines.append(line.rstrip("\n"))
                if "listening on http://" in line:
                    self.url = line.split("listening on ", 1)[1].split()[0]
                    listening.set()
            listening.set()

        threading.Thread(target=read, daemon=True).start()
        assert listening.wait(START_TIMEOUT) and self.url, "\n".join(self.lines)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            r = httpx.get(self.url + "/health", timeout=5)
            if r.status_code == 200:
                break
            assert r.json()["status"] in ("loading", "ready"), r.text
            time.sleep(0.2)
        else:
            raise AssertionError("not ready: " + "\n".join(self.lines))
        self.base = self.url + "/v1"

    def client(self, **kw):
        return openai.OpenAI(base_url=self.base, api_key=kw.pop("api_key", "none"), max_retries=0, timeout=120, **kw)

    def rss(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self, sig=signal.SIGTERM, timeout=60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def start(tiny, env, *extra, draft=True):
    args = ["-m", tiny["target"], *(["-d", tiny["draft"]] if draft else []), "--ctx", "1024", *extra]
    return Server(args, env)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = dict(os.environ, EDGESPEC_CACHE=str(tmp_path_factory.mktemp("cache")), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    e.pop("EDGESPEC_DEBUG", None)
    e.pop("EDGESPEC_API_KEY", None)
    return e


@pytest.fixture(scope="module")
def server(tiny, env):
    s = start(tiny, env)
    yield s
    assert s.stop() == 0, "\n".join(s.lines)


def run_cli(args, env) -> str:
    p = subprocess.run([sys.executable, "-m", "edgespec", "run", *map(str, args)], env=env, capture_output=True, timeout=180)
    assert p.returncode == 0, p.stderr
    out = p.stdout.decode("utf-8")  # as bytes: a reply may hold a \r that text mode would turn into \n
    return out[:-1] if out.endswith("\n") else out  # run ends the reply with a newline


QUESTION = "Write a haiku about caches."


# --------------------------------------------------------------------------------- the API itself
def test_chat_equals_edgespec_run_and_counts_usage(server, tiny, env):
    args = ["-m", tiny["target"], "-d", tiny["draft"], "--ctx", "1024", "-n", "24", "--temp", "0"]
    expected = run_cli([*args, QUESTION], env)
    counts = json.loads(run_cli([*args, "--json", QUESTION], env))
    r = server.client().chat.completions.create(model="target", messages=[{"role": "user", "content": QUESTION}],
                                                max_tokens=24, temperature=0)
    assert r.choices[0].message.content == expected and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length") and r.object == "chat.completion"
    u = r.usage
    assert u.prompt_tokens == counts["prompt_tokens"] and u.completion_tokens == counts["generated_tokens"] == 24
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    spec = r.model_extra["edgespec"]  # what a client may ignore
    assert {"drafted", "accepted", "drafter_steps", "decode_tokens_per_s"} <= set(spec)


def test_stream_has_the_openai_shape(server):
    text = server.client().chat.completions.create(
        model="target", messages=[{"role": "user", "content": QUESTION}], max_tokens=24, temperature=0).choices[0].message.content
    chunks = list(server.client().chat.completions.create(
        model="target", messages=[{"role": "user", "content": QUESTION}], max_tokens=24, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 24
    assert all(c.usage is None for c in chunks[:-1])
    # and the raw bytes: events, then [DONE]
    with httpx.stream("POST", server.base + "/chat/completions", timeout=60,
                      json={"model": "target", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)
    assert json.loads(events[-2][6:])["choices"][0]["finish_reason"] in ("stop", "length")
    assert all("usage" not in json.loads(e[6:]) for e in events[:-1])  # not asked for: no usage field at all
    with httpx.stream("POST", server.base + "/chat/completions", timeout=60,
                      json={"model": "target", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": True,
                            "stream_options": {"include_usage": True}}) as r:
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line and line != "data: [DONE]"]
    assert all(c["usage"] is None for c in chunks[:-1]) and chunks[-1]["usage"]["completion_tokens"] > 0  # as OpenAI sends them


def test_completions_sync_and_async_equal_run_raw(server, tiny, env):
    prompt = "The quick brown fox"
    expected = run_cli(["-m", tiny["target"], "-d", tiny["draft"], "--ctx", "1024", "-n", "20", "--temp", "0", "--raw", prompt], env)
    r = server.client().completions.create(model="target", prompt=prompt, max_tokens=20, temperature=0)
    assert r.choices[0].text == expected and r.object == "text_completion" and r.usage.completion_tokens == 20

    async def both():
        client = openai.AsyncOpenAI(base_url=server.base, api_key="none", max_retries=0, timeout=120)
        plain = await client.completions.create(model="target", prompt=prompt, max_tokens=20, temperature=0)
        streamed = await client.completions.create(model="target", prompt=prompt, max_tokens=20, temperature=0, stream=True)
        text = "".join([c.choices[0].text async for c in streamed if c.choices])
        chat = await client.chat.completions.create(model="target", messages=[{"role": "user", "content": prompt}],
                                                    max_tokens=10, temperature=0)
        await client.close()
        return plain.choices[0].text, text, chat.choices[0].message.content

    plain, streamed, chat = asyncio.run(both())
    assert plain == streamed == expected and chat


def test_sampling_with_a_seed_is_repeatable(server):
    kw = dict(model="target", messages=[{"role": "user", "content": "Tell me something."}], max_tokens=24, temperature=0.9, seed=7)
    a, b = (server.client().chat.completions.create(**kw).choices[0].message.content for _ in range(2))
    assert a == b


def test_a_follow_up_evaluates_only_its_new_tokens(server):
    c = server.client()
    first = [{"role": "user", "content": "Count with me: one two three"}]
    r1 = c.chat.completions.create(model="target", messages=first, max_tokens=16, temperature=0)
    follow = first + [{"role": "assistant", "content": r1.choices[0].message.content}, {"role": "user", "content": "and again"}]
    r2 = c.chat.completions.create(model="target", messages=follow, max_tokens=16, temperature=0)
    cached = r2.usage.prompt_tokens_details.cached_tokens
    # The tiny model's reply is random bytes, not always valid UTF-8, so its text need not tokenize back
    # to the same tokens: the first turn at least is reused (the real-model test below checks the reply too).
    assert cached >= r1.usage.prompt_tokens
    assert r2.model_extra["edgespec"]["prefill_tokens"] <= r2.usage.prompt_tokens - cached


def test_two_conversations_taking_turns_keep_their_caches(server):
    c = server.client()
    a = [{"role": "user", "content": "Conversation A: " + "alpha " * 40}]
    b = [{"role": "user", "content": "Conversation B: " + "beta " * 40}]
    ra = c.chat.completions.create(model="target", messages=a, max_tokens=8, temperature=0)
    c.chat.completions.create(model="target", messages=b, max_tokens=8, temperature=0)  # B takes the live context
    a2 = a + [{"role": "assistant", "content": ra.choices[0].message.content}, {"role": "user", "content": "more"}]
    r = c.chat.completions.create(model="target", messages=a2, max_tokens=8, temperature=0)
    assert r.usage.prompt_tokens_details.cached_tokens >= ra.usage.prompt_tokens  # A's cache came back from host memory


def test_models_health_and_metrics(server):
    models = server.client().models.list()
    ids = [m.id for m in models.data]
    assert ids[0] == "target"
    assert httpx.get(server.url + "/health").json()["status"] == "ready"
    text = httpx.get(server.url + "/metrics").text
    for name in ("edgespec_requests_total", "edgespec_completion_tokens_total", "edgespec_drafted_tokens_total",
                 "edgespec_accepted_tokens_total", "edgespec_queue_length", "edgespec_time_to_first_token_seconds_bucket"):
        assert name in text, name


# ------------------------------------------------------------------------------------------- load
def test_eight_clients_five_requests_each(server):
    prompts = [f"Client {i}: say something about the number {i}." for i in range(8)]
    c = server.client()
    expected = {p: c.chat.completions.create(model="target", messages=[{"role": "user", "content": p}], max_tokens=12,
                                             temperature=0).choices[0].message.content for p in prompts}

    def client(i):
        cl = server.client()
        p = prompts[i]
        got = []
        for j in range(5):
            if (i + j) % 2:
                s = cl.chat.completions.create(model="target", messages=[{"role": "user", "content": p}], max_tokens=12,
                                               temperature=0, stream=True)
                got.append("".join(ch.choices[0].delta.content or "" for ch in s if ch.choices))
            else:
                got.append(cl.chat.completions.create(model="target", messages=[{"role": "user", "content": p}], max_tokens=12,
                                                      temperature=0).choices[0].message.content)
        return p, got

    t0 = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(client, range(8)))
    assert time.monotonic() - t0 < 300
    for p, got in results:
        assert got == [expected[p]] * 5, p


def test_a_client_that_hangs_up_mid_stream_frees_the_models(server):
    before = _metric(server, "edgespec_cancelled_generations_total")
    body = {"model": "target", "messages": [{"role": "user", "content": "Go on forever."}], "max_tokens": 900, "stream": True}
    with httpx.stream("POST", server.base + "/chat/completions", json=body, timeout=60) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i >= 3:
                break  # and hang up
    t0 = time.monotonic()
    r = server.client().chat.completions.create(model="target", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert r.choices[0].message.content is not None and time.monotonic() - t0 < 20  # not behind 900 tokens
    deadline = time.monotonic() + 20
    while _metric(server, "edgespec_cancelled_generations_total") <= before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _metric(server, "edgespec_cancelled_generations_total") == before + 1


def _metric(server, name) -> float:
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


LONG = {"model": "target", "messages": [{"role": "user", "content": "long"}], "max_tokens": 1900}  # the tiny model never stops on it
ENDLESS = {**LONG, "max_tokens": 8000, "ignore_eos": True}  # seconds of work for the tiny model, whatever it writes


@pytest.fixture(scope="module")
def wide(tiny, env):
    """A server with a context for 8000-token replies (seconds of work for the tiny model) and a
    short queue time limit."""
    s = start(tiny, env, "--ctx", "8192", "--queue-timeout", "0.5", draft=False)
    yield s
    assert s.stop() == 0, "\n".join(s.lines)


def test_a_non_streamed_client_that_hangs_up_frees_the_models(wide):
    before = _metric(wide, "edgespec_cancelled_generations_total")
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
        httpx.post(wide.base + "/chat/completions", json=ENDLESS, timeout=httpx.Timeout(30, read=0.5))
    deadline = time.monotonic() + 20
    while _metric(wide, "edgespec_cancelled_generations_total") <= before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _metric(wide, "edgespec_cancelled_generations_total") == before + 1
    r = wide.client().chat.completions.create(model="target", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert r.choices[0].message.content is not None


def test_the_queue_time_limit_holds_while_a_request_waits(wide):
    """A request queued behind a long one gets its 503 once it has waited --queue-timeout, not when
    the long one is done."""
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(httpx.post, wide.base + "/chat/completions", json=ENDLESS, timeout=120)
        time.sleep(0.3)  # the long one is generating
        r = httpx.post(wide.base + "/chat/completions", timeout=60,
                       json={"model": "target", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True})
        still_running = not first.done()
        assert first.result().status_code == 200
    assert r.status_code == 503 and r.json()["error"]["code"] == "queue_timeout" and r.headers.get("retry-after")
    assert still_running  # refused while the long one was still going


def test_a_generation_time_limit_ends_the_reply_cleanly(tiny, env):
    """Past --timeout the reply ends with finish_reason length: every token counted is in the text
    (it equals `edgespec run` for that many tokens), and the time spent queued does not count."""
    plain = ["--ctx", "2048", "--draft-mode", "plain"]  # one batch composition in both: the same tokens
    s = start(tiny, env, *plain, "--timeout", "0.1", draft=False)  # 1,900 tiny-model tokens took under 0.5 s on a 2-core AMD EPYC
    try:
        r = s.client().chat.completions.create(model="target", messages=LONG["messages"], max_tokens=1900, temperature=0)
        n = r.usage.completion_tokens
        assert r.choices[0].finish_reason == "length" and 0 < n < 1900
        expected = run_cli(["-m", tiny["target"], *plain, "-n", n, "--temp", "0", LONG["messages"][0]["content"]], env)
        assert r.choices[0].message.content == expected
    finally:
        assert s.stop() == 0


def test_a_template_that_refuses_the_messages_is_a_400(tiny, env):
    s = Server(["-m", tiny["strict_template"], "--ctx", "1024"], env)
    try:
        r = _post(s, "/chat/completions", json_body={"model": "strict_template", "messages": [
            {"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]})
        assert r.status_code == 400 and "System role not supported" in r.json()["error"]["message"], r.text
        ok = s.client().chat.completions.create(model="strict_template", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        assert ok.choices[0].message.content is not None
    finally:
        assert s.stop() == 0


def test_memory_stays_flat_over_200_requests(server):
    c = server.client()

    def ask(i):
        return c.chat.completions.create(model="target", messages=[{"role": "user", "content": f"request {i % 13} " * 5}],
                                         max_tokens=6, temperature=0)

    for i in range(40):
        ask(i)
    start = server.rss()
    for i in range(40, 200):
        ask(i)
    grown = server.rss() - start
    print(f"RSS {start / 2**20:.1f} MiB after 40 requests, {grown / 2**20:+.1f} MiB after 160 more")
    assert grown < 40 * 2**20


# -------------------------------------------------------------------------------------- bad input
def _post(server, path, content=None, json_body=None, headers=None):
    return httpx.post(server.base + path, content=content, json=json_body, headers=headers, timeout=60)


@pytest.mark.parametrize("case,status,needle", [
    ("invalid json", 400, "not valid JSON"),
    ("not an object", 400, "must be a JSON object"),
    ("wrong type", 400, "'temperature' must be a number"),
    ("unknown model", 404, "is not loaded here"),
    ("empty messages", 400, "'messages' must be a non-empty list"),
    ("n=2", 400, "'n' must be 1"),
    ("negative max_tokens", 400, "'max_tokens' must be between"),
    ("huge max_tokens", 400, "context holds"),
    ("prompt over the context", 400, "context holds"),
    ("invalid utf-8", 400, "not valid UTF-8"),
    ("tools", 400, "'tools' is not supported"),
    ("20 MB body", 413, "limit"),
    ("ignore_eos not a bool", 400, "'ignore_eos' must be true or false"),
])
def test_bad_requests_get_openai_errors(server, case, status, needle):
    msg = [{"role": "user", "content": "hi"}]
    content, body = None, None
    if case == "invalid json":
        content = b'{"model": "target", "messages": ['
    elif case == "not an object":
        content = b'["a"]'
    elif case == "wrong type":
        body = {"model": "target", "messages": msg, "temperature": "hot"}
    elif case == "unknown model":
        body = {"model": "gpt-9", "messages": msg}
    elif case == "empty messages":
        body = {"model": "target", "messages": []}
    elif case == "n=2":
        body = {"model": "target", "messages": msg, "n": 2}
    elif case == "negative max_tokens":
        body = {"model": "target", "messages": msg, "max_tokens": -5}
    elif case == "huge max_tokens":
        body = {"model": "target", "messages": msg, "max_tokens": 10**9}
    elif case == "prompt over the context":
        body = {"model": "target", "messages": [{"role": "user", "content": "x" * 3000}]}
    elif case == "invalid utf-8":
        content = b'{"model": "target", "messages": [{"role": "user", "content": "\xff\xfe"}]}'
    elif case == "tools":
        body = {"model": "target", "messages": msg, "tools": [{"type": "function", "function": {"name": "f"}}]}
    elif case == "ignore_eos not a bool":
        body = {"model": "target", "messages": msg, "ignore_eos": "yes"}
    elif case == "20 MB body":
        content = b'{"model": "target", "messages": [{"role": "user", "content": "' + b"a" * (20 << 20) + b'"}]}'
    r = _post(server, "/chat/completions", content=content, json_body=body,
              headers={"content-type": "application/json"} if content is not None else None)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert needle in err["message"] and err["type"] and set(err) >= {"message", "type", "param", "code"}
    if case in ("huge max_tokens", "prompt over the context"):
        assert err["code"] == "context_length_exceeded"
    if case == "unknown model":
        assert err["code"] == "model_not_found" and "'target'" in err["message"]
    # and the server is still fine
    assert httpx.get(server.url + "/health").json()["status"] == "ready"


def test_the_server_survives_all_of_that(server):
    r = server.client().chat.completions.create(model="target", messages=[{"role": "user", "content": "still there?"}], max_tokens=4)
    assert r.choices[0].message.content is not None


def test_metrics_count_answers_by_their_status(server):
    def count(endpoint, status):
        return _metric(server, f'edgespec_requests_total{{endpoint="{endpoint}",status="{status}"}}')

    bad, ok, other = count("/v1/chat/completions", "400"), count("/v1/chat/completions", "200"), count("other", "404")
    _post(server, "/chat/completions", json_body={"model": "target", "messages": []})
    server.client().chat.completions.create(model="target", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    httpx.get(server.url + "/no/such/path")
    assert (count("/v1/chat/completions", "400"), count("/v1/chat/completions", "200"), count("other", "404")) == (bad + 1, ok + 1, other + 1)


# ------------------------------------------------------------------------------------ own servers
def test_api_key_and_network_notice(tiny, env):
    s = start(tiny, env, "--api-key", "sekrit", "--host", "0.0.0.0", draft=False)
    try:
        assert any("reachable from the network" in ln for ln in s.lines)
        for key, status in ((None, 401), ("wrong", 401)):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            r = httpx.post(s.base + "/chat/completions", headers=headers, timeout=30,
                           json={"model": "target", "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == status and r.json()["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            s.client(api_key="wrong").models.list()
        ok = s.client(api_key="sekrit").chat.completions.create(model="target", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        assert ok.choices[0].message.content is not None
    finally:
        assert s.stop() == 0


def test_a_full_queue_answers_503_with_retry_after(tiny, env):
    s = start(tiny, env, "--queue", "1", draft=False)
    try:
        body = {"model": "target", "messages": [{"role": "user", "content": "long"}], "max_tokens": 900}
        with ThreadPoolExecutor(12) as pool:  # one generates, one waits, the rest are turned away
            answers = list(pool.map(lambda _: httpx.post(s.base + "/chat/completions", json=body, timeout=120), range(12)))
        busy = [r for r in answers if r.status_code == 503]
        assert busy and all(r.status_code in (200, 503) for r in answers), [r.status_code for r in answers]
        assert all(r.headers.get("retry-after") and r.json()["error"]["code"] == "queue_full" for r in busy)
        assert sum(r.status_code == 200 for r in answers) >= 2
    finally:
        assert s.stop() == 0


def test_sigterm_mid_request_exits_cleanly(tiny, env):
    s = start(tiny, env, draft=False)
    body = {"model": "target", "messages": [{"role": "user", "content": "long"}], "max_tokens": 900, "stream": True}
    with httpx.stream("POST", s.base + "/chat/completions", json=body, timeout=60) as r:
        next(r.iter_lines())
        t0 = time.monotonic()
        code = s.stop(signal.SIGTERM, timeout=30)
    assert code == 0 and time.monotonic() - t0 < 15, "\n".join(s.lines)
    assert not any("Traceback" in ln for ln in s.lines), "\n".join(s.lines)


def test_a_port_in_use_is_one_line(tiny, env):
    import socket

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    p = subprocess.run([sys.executable, "-m", "edgespec", "serve", "-m", tiny["target"], "--port", str(busy.getsockname()[1])],
                       env=env, capture_output=True, text=True, timeout=60)
    busy.close()
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 1 and len(lines) == 1 and "cannot listen on" in lines[0], p.stderr


@pytest.mark.slow
def test_a_real_model_through_the_server(smollm2, env):
    expected = run_cli(["-m", smollm2, "--ctx", "1024", "-n", "32", "--temp", "0", "What is a hash map?"], env)
    s = Server(["-m", smollm2, "--ctx", "1024"], env)
    try:
        first = [{"role": "user", "content": "What is a hash map?"}]
        r = s.client().chat.completions.create(model=Path(smollm2).stem, messages=first, max_tokens=32, temperature=0)
        assert r.choices[0].message.content == expected
        follow = first + [{"role": "assistant", "content": r.choices[0].message.content}, {"role": "user", "content": "Shorter."}]
        r2 = s.client().chat.completions.create(model=Path(smollm2).stem, messages=follow, max_tokens=8, temperature=0)
        cached = r2.usage.prompt_tokens_details.cached_tokens
        assert cached >= r.usage.prompt_tokens + r.usage.completion_tokens - 2  # the reply, re-sent as text, is in the cache
        assert r2.model_extra["edgespec"]["prefill_tokens"] <= r2.usage.prompt_tokens - cached
    finally:
        assert s.stop() == 0
