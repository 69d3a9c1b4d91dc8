"""The OpenAI HTTP API as edgespec serves it: request bodies checked and turned into generation
settings, and the response and stream-chunk shapes clients expect. No web framework here."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field

from edgespec.core.kinds import Finish, Mode
from edgespec.core.stats import Stats
from edgespec.errors import UsageError
from edgespec.session.options import GenOptions, sampling_params

ROLES = ("system", "user", "assistant")
# Accepted and ignored at these values, refused otherwise: the OpenAI defaults that change nothing.
NEUTRAL = {"frequency_penalty": 0, "presence_penalty": 0, "logprobs": False, "echo": False, "best_of": 1,
           "logit_bias": {}, "parallel_tool_calls": None, "top_logprobs": None, "suffix": None}
UNSUPPORTED = ("tools", "tool_choice", "functions", "function_call", "audio", "modalities", "prediction")
IGNORED = ("user", "metadata", "store", "service_tier", "stream_options", "reasoning_effort")


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, code=code, param=param)


def parse_body(raw: bytes) -> dict:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise bad(f"the request body is not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})") from None
    try:
        body = json.loads(text)
    except json.JSONDecodeError as e:
        raise bad(f"the request body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    if not isinstance(body, dict):
        raise bad(f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def _number(body: dict, key: str, default, lo: float, hi: float, integer: bool = False):
    v = body.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
        raise bad(f"'{key}' must be {'an integer' if integer else 'a number'}, got {json.dumps(v)[:40]}", key)
    if not lo <= v <= hi:
        shown = (f"{lo} and {hi}" if integer else f"{lo:g} and {hi:g}")
        raise bad(f"'{key}' must be between {shown}, got {v}", key)
    return v


def _stop(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,)
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= 16:
        return tuple(stop)
    raise bad("'stop' must be a string or a list of up to 16 strings", "stop")


def _common(body: dict) -> None:
    for key in UNSUPPORTED:
        if body.get(key):
            raise bad(f"'{key}' is not supported by this server", key, "unsupported_parameter")
    for key, neutral in NEUTRAL.items():
        if key in body and body[key] not in (neutral, None):
            raise bad(f"'{key}' is not supported by this server (only {json.dumps(neutral)})", key, "unsupported_parameter")
    n = _number(body, "n", 1, 1, 128, integer=True)
    if n != 1:
        raise bad(f"'n' must be 1 here (one completion per request), got {n}", "n", "unsupported_parameter")
    fmt = body.get("response_format")
    if fmt not in (None, {"type": "text"}):
        raise bad("'response_format' other than {\"type\": \"text\"} is not supported by this server", "response_format",
                  "unsupported_parameter")
    if not isinstance(body.get("stream", False), bool):
        raise bad("'stream' must be true or false", "stream")
    opts = body.get("stream_options")
    if opts is not None and (not isinstance(opts, dict) or not isinstance(opts.get("include_usage", False), bool)):
        raise bad("'stream_options' must be an object like {\"include_usage\": true}", "stream_options")


@dataclass
class Request:
    """A checked request: what to render, how to generate, how to answer."""

    kind: str  # chat | completion
    model: str | None
    messages: list[dict] | None = None
    prompt: str | None = None
    max_tokens: int | None = None
    gen: GenOptions = field(default_factory=GenOptions)
    stream: bool = False
    include_usage: bool = False


def _gen(body: dict, defaults: GenOptions, max_key: str) -> tuple[GenOptions, int | None]:
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    top_k = _number(body, "top_k", 0, 0, 1 << 20, integer=True)
    min_p = _number(body, "min_p", 0.0, 0.0, 1.0)
    seed = _number(body, "seed", None, -(1 << 63), (1 << 64) - 1, integer=True)
    max_tokens = _number(body, max_key, None, 1, 1 << 31, integer=True)
    if max_key == "max_completion_tokens" and max_tokens is None:
        max_tokens = _number(body, "max_tokens", None, 1, 1 << 31, integer=True)
    try:
        sampling = sampling_params(temperature, top_k, top_p, min_p)
        ignore_eos = body.get("ignore_eos", False)  # an extension llama.cpp's and vLLM's servers have too
        if not isinstance(ignore_eos, bool):
            raise bad("'ignore_eos' must be true or false", "ignore_eos")
        gen = defaults.replace(sampling=sampling, seed=None if seed is None else seed % (1 << 63), stop=_stop(body),
                               ignore_eos=ignore_eos)
    except UsageError as e:
        raise bad(e.message) from None
    return gen, max_tokens


def chat_request(body: dict, defaults: GenOptions) -> Request:
    _common(body)
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise bad("'messages' must be a non-empty list of {\"role\", \"content\"} objects", "messages")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES + ("developer",):
            raise bad(f"messages[{i}] needs a role: system, user or assistant", f"messages[{i}].role")
        content = m.get("content")
        if isinstance(content, list):  # parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
                raise bad(f"messages[{i}].content: only text parts are supported", f"messages[{i}].content", "unsupported_parameter")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise bad(f"messages[{i}].content must be a string", f"messages[{i}].content")
        role = "system" if m["role"] == "developer" else m["role"]
        out.append({"role": role, "content": content})
    if out[-1]["role"] == "assistant":
        raise bad("the last message must be from the user (or system), not the assistant", "messages")
    gen, max_tokens = _gen(body, defaults, "max_completion_tokens")
    return Request("chat", body.get("model"), messages=out, max_tokens=max_tokens, gen=gen,
                   stream=body.get("stream", False), include_usage=bool((body.get("stream_options") or {}).get("include_usage")))


def completion_request(body: dict, defaults: GenOptions) -> Request:
    _common(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise bad("'prompt' must be a string (one prompt per request)", "prompt")
    if not prompt:
        raise bad("'prompt' is empty", "prompt")
    gen, max_tokens = _gen(body, defaults, "max_tokens")
    return Request("completion", body.get("model"), prompt=prompt, max_tokens=16 if max_tokens is None else max_tokens,
                   gen=gen, stream=body.get("stream", False),
                   include_usage=bool((body.get("stream_options") or {}).get("include_usage")))


# ------------------------------------------------------------------------------------------ answers
FINISH = {Finish.STOP: "stop", Finish.LENGTH: "length", Finish.CONTEXT: "length"}


def new_id(kind: str) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]


def usage(stats: Stats) -> dict:
    return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.generated,
            "total_tokens": stats.prompt_tokens + stats.generated,
            "prompt_tokens_details": {"cached_tokens": stats.cached_tokens}}


def speculation(stats: Stats) -> dict:
    """edgespec's own figures for one response, in a field clients may ignore."""
    s = stats.as_dict()
    return {k: s[k] for k in ("prefill_tokens", "drafted", "accepted", "acceptance_rate", "mean_accepted_length",
                              "drafter_steps", "decode_tokens_per_s", "time_to_first_token_s", "lookup_us_per_step")}


@dataclass
class Answer:
    """One response being built: non-streamed body, or the stream's chunks."""

    kind: str
    model: str
    include_usage: bool = False  # a stream that ends with a usage chunk: the others then carry "usage": null
    id: str = ""
    created: int = 0

    def __post_init__(self):
        self.id = self.id or new_id(self.kind)
        self.created = self.created or int(time.time())

    def _head(self, chunk: bool) -> dict:
        obj = {"chat": ("chat.completion", "chat.completion.chunk"), "completion": ("text_completion", "text_completion")}[self.kind]
        return {"id": self.id, "object": obj[chunk], "created": self.created, "model": self.model}

    def body(self, text: str, finish: Finish | None, stats: Stats) -> dict:
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None}
                  if self.kind == "chat" else {"index": 0, "text": text, "logprobs": None})
        choice["finish_reason"] = FINISH.get(finish, "stop")
        return {**self._head(False), "choices": [choice], "usage": usage(stats), "edgespec": speculation(stats)}

    def chunk(self, text: str | None = None, finish: Finish | None = None, role: bool = False) -> dict:
        done = finish is not None
        if self.kind == "chat":
            delta = {"role": "assistant", "content": ""} if role else ({} if done else {"content": text})
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": FINISH.get(finish, "stop") if done else None}
        else:
            choice = {"index": 0, "text": "" if done else text, "logprobs": None,
                      "finish_reason": FINISH.get(finish, "stop") if done else None}
        return {**self._head(True), "choices": [choice], **({"usage": None} if self.include_usage else {})}

    def usage_chunk(self, stats: Stats) -> dict:
        return {**self._head(True), "choices": [], "usage": usage(stats), "edgespec": speculation(stats)}


def sse(obj) -> bytes:
    """One server-sent event, as OpenAI frames them."""
    return b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj, ensure_ascii=False).encode()) + b"\n\n"


DONE = sse(b"[DONE]")


def server_defaults(mode: Mode | str = Mode.AUTO, k: int | None = None, k_max: int = 64) -> GenOptions:
    return GenOptions(mode=mode, k=k, k_max=k_max)
