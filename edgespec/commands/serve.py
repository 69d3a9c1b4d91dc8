"""`edgespec serve`: an OpenAI-compatible HTTP server on the loaded pair."""

from __future__ import annotations

import os
import signal
import socket
import threading
from typing import Annotated, List, Optional

import typer
from rich.markup import escape

from edgespec.commands.options import DRAFTING, LOADING, MODELS, close, err, load_models, takes
from edgespec.errors import EdgespecError, UsageError


@takes(MODELS, DRAFTING, LOADING)
def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on. Anything but 127.0.0.1/localhost is reachable from the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on (0: any free one, printed at start).")] = 8080,
    api_key: Annotated[Optional[str], typer.Option("--api-key", help="Require this key (Authorization: Bearer KEY) (default: $EDGESPEC_API_KEY, else none).", show_default=False)] = None,
    cors: Annotated[Optional[List[str]], typer.Option("--cors", metavar="ORIGIN", help="Allow browser requests from this origin (repeatable; '*' for any). Off by default.", show_default=False)] = None,
    queue: Annotated[int, typer.Option("--queue", min=1, help="Requests that may wait while one generates; more get 503 with Retry-After.")] = 16,
    queue_timeout: Annotated[float, typer.Option("--queue-timeout", min=0.1, help="Seconds a request may wait in the queue before it gets 503.")] = 300.0,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help="Seconds one generation may take; then it ends with finish_reason length.")] = 600.0,
    max_tokens: Annotated[int, typer.Option("--max-tokens", "-n", min=1, help="Tokens per reply when a request gives no max_tokens (capped by the context left).")] = 4096,
    cache_ram: Annotated[str, typer.Option("--cache-ram", help="Host memory for saved conversations' KV caches, e.g. 1GB (0: keep only the live one).")] = "1GB",
    *, models, drafting, load,
) -> None:
    """Serve the OpenAI API (chat and text completions, streamed or not) on the loaded pair.

    Point editors, chat front ends and agents at http://HOST:PORT/v1. One generation runs at a time;
    the others wait in a FIFO queue. Conversations' KV caches are kept in host memory, so a request
    that continues an earlier one evaluates only its new tokens.
    """
    import uvicorn

    from edgespec.commands.pulling import confirm_and_pull
    from edgespec.core.suffix import OutputMemory
    from edgespec.machine import estimate
    from edgespec.serve.app import ServerState, create_app
    from edgespec.serve.prompt_cache import PromptCache
    from edgespec.serve.worker import Worker
    from edgespec.session.options import GenOptions
    from edgespec.session.runner import make_controller

    defaults = GenOptions(mode=drafting.mode, k=drafting.k, k_max=drafting.k_max)
    defaults.check_draft(models.has_draft)
    budget = 0 if cache_ram.strip() in ("0", "0GB", "0B") else estimate.parse_size(cache_ram)
    key = api_key or os.environ.get("EDGESPEC_API_KEY") or None
    confirm_and_pull(models.resolved.missing, yes=models.yes, source=models.source, console=err)  # before listening

    sock = _bind(host, port)
    bound = sock.getsockname()[1]
    state = ServerState(defaults=defaults, api_key=key, max_tokens=max_tokens, request_timeout=timeout)
    state.names = _names(models)
    server = uvicorn.Server(uvicorn.Config(create_app(state, cors), log_level="warning", timeout_graceful_shutdown=5,
                                           lifespan="off"))
    loaded: dict = {}

    def load_in_background() -> None:
        try:
            t, d = load_models(models, load)
            loaded.update(target=t, draft=d)
            ctl = make_controller(t, d, defaults, on_calibrate=lambda: err.print("[dim]measuring this machine's costs (once per pair and setting)...[/]"))
            state.target = t
            state.worker = Worker(t, d, ctl, PromptCache(budget), state.metrics, queue_size=queue, queue_timeout=queue_timeout,
                                  memory=OutputMemory())
            state.status = "ready"
            err.print(f"ready: {escape(state.names[0])} at http://{_shown(host)}:{bound}/v1", soft_wrap=True)
        except BaseException as e:  # the server reports it on /health; the command exits with it
            state.status, state.error = "failed", e.line() if isinstance(e, EdgespecError) else f"{type(e).__name__}: {e}"
            loaded["error"] = e
            server.should_exit = True

    if host not in ("127.0.0.1", "localhost", "::1"):
        err.print(f"[yellow]note:[/] listening on {escape(host)}: the server is reachable from the network"
                  + ("" if key else " (and has no API key: --api-key)"), soft_wrap=True)
    err.print(f"listening on http://{_shown(host)}:{bound} (loading the models; /health says when they are ready)", soft_wrap=True)
    loader = threading.Thread(target=load_in_background, name="edgespec-load", daemon=True)
    loader.start()
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again for the handler that
    # was there before: ours, which lets the command finish its own clean-up and exit 0.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        loader.join(timeout=1 if state.status == "failed" else None)
        # Free the models only once the worker is out of llama.cpp (it stops between batches).
        if state.worker is None or state.worker.stop():
            close(loaded.get("target"), loaded.get("draft"))
    if "error" in loaded:
        e = loaded["error"]
        raise e if isinstance(e, (EdgespecError, KeyboardInterrupt)) else EdgespecError(f"loading failed: {state.error}")
    err.print("stopped")


def _bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UsageError(f"--host {host}: {e.strerror}") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise EdgespecError(f"cannot listen on {host}:{port}: {e.strerror}", "pick another --port") from None
    sock.listen(128)
    return sock


def _shown(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _names(models) -> list[str]:
    """What clients may call the loaded model: its file name without .gguf first, then the pair's name."""
    r = models.resolved
    names = [r.target.stem]
    if getattr(r, "pair", None):
        names.append(r.pair)
    return names
