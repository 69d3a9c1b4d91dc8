"""`edgespec serve`'s HTTP side: the OpenAI-compatible routes on FastAPI (Starlette, run by uvicorn).

FastAPI brings the routing, request and streaming plumbing, exception handlers and the CORS
middleware; the request bodies are read and checked here (edgespec.serve.protocol), so that every
error, a wrong type as much as a missing key, gets OpenAI's error shape and a 400.
"""

from __future__ import annotations

import asyncio
import hmac
import threading
import time
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from edgespec.errors import EdgespecError
from edgespec.serve import protocol as P
from edgespec.serve.metrics import CONTENT_TYPE, Metrics
from edgespec.serve.worker import Job, threadsafe_emitter
from edgespec.session.loading import render
from edgespec.session.options import GenOptions

MAX_BODY = 8 << 20  # bytes: a whole repository's worth of pasted files, and not a 20 MB accident


@dataclass
class ServerState:
    """What the routes share: the loaded pair (once ready), its names, the worker, the settings."""

    defaults: GenOptions
    api_key: str | None = None
    max_tokens: int = 4096  # when a chat request gives none (capped by the context left)
    request_timeout: float = 600.0
    status: str = "loading"  # loading | ready | failed
    error: str | None = None
    target: object = None
    worker: object = None
    names: list[str] = field(default_factory=list)  # what clients may call the model: the first is its id
    metrics: Metrics = field(default_factory=Metrics)
    created: int = field(default_factory=lambda: int(time.time()))
    ready: threading.Event = field(default_factory=threading.Event)


ROUTES = ("/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions")
DISCONNECT_POLL = 0.25  # seconds between checks that a waiting client is still there


def _error(e: P.ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


class CountResponses:
    """ASGI middleware: every response counted by endpoint (other paths pooled) and status."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"] if scope["path"] in ROUTES else "other"

        async def counted(message):
            if message["type"] == "http.response.start":
                self.metrics.requests.labels(path, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counted)


def create_app(state: ServerState, cors: list[str] | None = None) -> FastAPI:
    app = FastAPI(title="edgespec", docs_url=None, redoc_url=None, openapi_url=None)
    if cors:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=cors, allow_methods=["*"], allow_headers=["*"])
    app.add_middleware(CountResponses, metrics=state.metrics)

    @app.exception_handler(P.ApiError)
    async def api_error(request: Request, e: P.ApiError):
        return _error(e)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, e: Exception):  # a bug: still an answer in OpenAI's shape
        state.metrics.requests.labels(request.url.path if request.url.path in ROUTES else "other", "500").inc()
        return _error(P.ApiError(500, f"internal error: {type(e).__name__}: {e}", "server_error"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return _error(P.ApiError(e.status_code, f"{request.method} {request.url.path}: {e.detail}", code=code))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError):
        return _error(P.bad(str(e.errors()[:1])))

    def authorize(request: Request) -> None:
        if state.api_key is None:
            return
        given = request.headers.get("authorization", "")
        token = given[7:] if given.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(token.encode(), state.api_key.encode()):
            raise P.ApiError(401, "missing or wrong API key (send Authorization: Bearer KEY)" if token or given
                             else "this server needs an API key (send Authorization: Bearer KEY)", code="invalid_api_key")

    def ensure_ready() -> None:
        if state.status == "failed":
            raise P.ApiError(503, f"the models failed to load: {state.error}", "server_error", "model_load_failed")
        if state.status != "ready":
            raise P.ApiError(503, "the models are still loading", "server_error", "loading", headers={"Retry-After": "5"})

    async def read_body(request: Request) -> dict:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > MAX_BODY:
            raise P.ApiError(413, f"the request body is {int(declared)} bytes; the limit is {MAX_BODY}", code="body_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY:
                raise P.ApiError(413, f"the request body is over the {MAX_BODY}-byte limit", code="body_too_large")
            chunks.append(chunk)
        return P.parse_body(b"".join(chunks))

    def check_model(name: str | None) -> str:
        if name is None or name in state.names:
            return state.names[0]
        raise P.ApiError(404, f"model {name!r} is not loaded here; this server runs {', '.join(repr(n) for n in state.names)}",
                         code="model_not_found", param="model")

    @app.get("/health")
    async def health():
        body = {"status": state.status, "model": state.names[0] if state.names else None}
        if state.status == "failed":
            body["error"] = state.error
        if state.status == "ready":
            body["queue"] = state.worker.waiting()
        return JSONResponse(body, status_code=200 if state.status == "ready" else 503)

    @app.get("/metrics")
    async def metrics(request: Request):
        authorize(request)
        return Response(state.metrics.text(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        ensure_ready()
        data = [{"id": n, "object": "model", "created": state.created, "owned_by": "edgespec"} for n in state.names]
        return {"object": "list", "data": data}

    async def complete(request: Request, kind: str):
        authorize(request)
        body = await read_body(request)
        ensure_ready()
        req = (P.chat_request if kind == "chat" else P.completion_request)(body, state.defaults)
        model = check_model(req.model)
        target = state.target
        try:
            tokens = await run_in_threadpool(_tokens, target, req)
        except EdgespecError as e:  # the model's chat template refused these messages
            raise P.bad(e.message, "messages") from None
        room = target.n_ctx - len(tokens)
        if room < 1:
            raise P.bad(f"the prompt is {len(tokens)} tokens; this model's context holds {target.n_ctx}", "messages",
                        "context_length_exceeded")
        max_tokens = req.max_tokens if req.max_tokens is not None else min(state.max_tokens, room)
        if max_tokens > room:
            raise P.bad(f"the prompt is {len(tokens)} tokens and {max_tokens} more were asked for; this model's context "
                        f"holds {target.n_ctx}", "max_tokens", "context_length_exceeded")
        gen = req.gen.replace(max_tokens=max_tokens)
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        job = Job(tokens, gen, threadsafe_emitter(loop, q), timeout=state.request_timeout)
        state.worker.submit(job)
        try:
            refused = await _started(request, job, q, state.worker.queue_timeout)
        except BaseException:  # the handler itself was cancelled
            job.cancelled.set()
            raise
        if refused is not None:
            return refused
        answer = P.Answer(kind, model, include_usage=req.stream and req.include_usage)
        if req.stream:
            return StreamingResponse(_events(job, q, answer, req), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await _collect(request, job, q, answer)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await complete(request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await complete(request, "completion")

    return app


def _tokens(target, req: P.Request) -> list[int]:
    if req.kind == "chat":
        return target.tokenize_prompt(render(target, req.messages))
    return target.tokenize(req.prompt)


async def _next(request: Request, job: Job, q: asyncio.Queue, checked: list[float], until: float | None = None) -> tuple | None:
    """The job's next event; None once the client has hung up (the job is then cancelled), or
    ("timeout", None) past `until`. Checks the connection every DISCONNECT_POLL seconds whether or
    not events arrive."""
    while True:
        now = time.monotonic()
        if until is not None and now > until:
            return ("timeout", None)
        if now - checked[0] >= DISCONNECT_POLL:
            checked[0] = now
            if await request.is_disconnected():
                job.cancelled.set()
                return None
        try:
            return await asyncio.wait_for(q.get(), timeout=DISCONNECT_POLL)
        except asyncio.TimeoutError:
            continue


async def _started(request: Request, job: Job, q: asyncio.Queue, queue_timeout: float) -> Response | None:
    """Wait in the queue until the worker takes the job: None then, else the answer to send instead
    (503 past the queue time limit or at shutdown, 499 if the client left). Streamed or not, a request
    refused before its generation started gets a proper status."""
    checked = [time.monotonic()]
    while True:
        event = await _next(request, job, q, checked, until=job.queued_at + queue_timeout)
        if event is None:
            return Response(status_code=499)
        kind, payload = event
        if kind == "started":
            return None
        if kind == "timeout":
            job.cancelled.set()
            return _error(P.ApiError(503, f"the request waited more than {queue_timeout:.0f} s in the queue",
                                     "server_error", "queue_timeout", headers={"Retry-After": "5"}))
        if kind == "error":
            return _error(payload)


async def _collect(request: Request, job: Job, q: asyncio.Queue, answer: P.Answer):
    """A non-streamed answer; a client that hangs up cancels the generation."""
    parts, checked = [], [time.monotonic()]
    try:
        while True:
            event = await _next(request, job, q, checked)
            if event is None:
                return Response(status_code=499)
            kind, payload = event
            if kind == "text":
                parts.append(payload)
            elif kind == "done":
                return JSONResponse(answer.body(payload.text, payload.finish, payload.stats))
            else:
                return _error(payload)
    finally:
        job.cancelled.set()  # done already (harmless), or the handler itself was cancelled


async def _events(job: Job, q: asyncio.Queue, answer: P.Answer, req: P.Request):
    """The stream: a role delta (chat), content deltas, the finish chunk, usage if asked, [DONE]."""
    try:
        if answer.kind == "chat":
            yield P.sse(answer.chunk(role=True))
        while True:
            kind, payload = await q.get()
            if kind == "text":
                yield P.sse(answer.chunk(payload))
            elif kind == "done":
                yield P.sse(answer.chunk(finish=payload.finish or P.Finish.STOP))
                if req.include_usage:
                    yield P.sse(answer.usage_chunk(payload.stats))
                yield P.DONE
                return
            else:
                yield P.sse(payload.body())
                yield P.DONE
                return
    finally:
        job.cancelled.set()  # the client went away mid-stream: stop within a step
