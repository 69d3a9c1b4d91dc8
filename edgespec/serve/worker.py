"""One generation at a time on the loaded pair, a bounded FIFO queue in front of it.

Requests become Jobs. The worker thread owns the models: for each job it puts the best saved KV
cache back (edgespec.serve.prompt_cache), streams the reply through the same session layer as
`edgespec run` and chat (edgespec.session.runner), and hands events to the job's consumer (the HTTP
handler, on the event loop). A job whose client went away is stopped within one engine step.
"""

from __future__ import annotations

import asyncio
import copy
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from edgespec.core.kinds import Finish
from edgespec.core.suffix import OutputMemory
from edgespec.errors import Interrupted
from edgespec.serve.protocol import ApiError
from edgespec.session import runner
from edgespec.session.options import GenOptions


class Cancelled(Exception):
    """Raised inside a generation whose consumer is gone."""


@dataclass
class Job:
    tokens: list[int]
    gen: GenOptions
    emit: Callable[[tuple], None]  # ("started", None) | ("text", str) | ("done", Reply) | ("error", ApiError); thread-safe
    timeout: float = 600.0  # seconds the generation may take once started; past it it ends with finish "length"
    cancelled: threading.Event = field(default_factory=threading.Event)
    queued_at: float = field(default_factory=time.monotonic)


SHUTTING_DOWN = ApiError(503, "the server is shutting down", "server_error", "shutting_down")


class Worker:
    def __init__(self, target, draft, controller_template, cache, metrics, *, queue_size: int = 16,
                 queue_timeout: float = 300.0, memory: OutputMemory | None = None):
        self.target, self.draft = target, draft
        self.template = controller_template  # each request gets a copy: what one learns never leaks into the next
        self.cache, self.metrics, self.memory = cache, metrics, memory
        self.queue: queue.Queue[Job | None] = queue.Queue()  # bounded by submit(): jobs whose client left do not count
        self.queue_size = queue_size
        self.queue_timeout = queue_timeout  # the handlers enforce it (they answer 503 and cancel the job)
        self.running: Job | None = None
        self.stopping = False
        self._guard = threading.Lock()  # running, stopping and the queue's bound
        self.thread = threading.Thread(target=self._loop, name="edgespec-worker", daemon=True)
        self.thread.start()

    # ------------------------------------------------------------------------------- the queue
    def waiting(self) -> int:
        """Jobs waiting whose client is still there."""
        with self.queue.mutex:
            jobs = list(self.queue.queue)
        return sum(1 for j in jobs if j is not None and not j.cancelled.is_set())

    def submit(self, job: Job) -> None:
        with self._guard:
            if self.stopping:
                raise SHUTTING_DOWN
            if self.waiting() >= self.queue_size:
                raise ApiError(503, f"the server is busy: {self.queue_size} requests are waiting; try again shortly",
                               "server_error", "queue_full", headers={"Retry-After": "5"})
            self.queue.put(job)
        self.metrics.queue.set(self.waiting())

    def stop(self, timeout: float = 30.0) -> bool:
        """Cancel what is running and waiting, end the thread; False if it is still inside llama.cpp
        after `timeout` seconds (the models must then not be freed)."""
        with self._guard:
            self.stopping = True
            if self.running is not None:
                self.running.cancelled.set()
        while True:
            try:
                job = self.queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.emit(("error", SHUTTING_DOWN))
        self.queue.put(None)
        self.thread.join(timeout=timeout)
        return not self.thread.is_alive()

    def _loop(self) -> None:
        while True:
            job = self.queue.get()
            self.metrics.queue.set(self.waiting())
            if job is None:
                return
            with self._guard:
                if job.cancelled.is_set():
                    continue
                if self.stopping:
                    job.emit(("error", SHUTTING_DOWN))
                    continue
                self.running = job
            try:
                job.emit(("started", None))
                self._run(job)
            except Exception as e:  # a failure is this request's, never the server's
                job.emit(("error", ApiError(500, f"generation failed: {type(e).__name__}: {e}", "server_error")))
            finally:
                with self._guard:
                    self.running = None

    # --------------------------------------------------------------------------- a generation
    def _run(self, job: Job) -> None:
        t0 = time.monotonic()
        deadline = t0 + job.timeout
        models = [m for m in (self.target, self.draft) if m is not None]
        for m in models:  # a long prompt's prefill stops between batches when the client leaves
            m.should_stop = job.cancelled.is_set
        reply = runner.Reply()
        first = [None]

        def on_step(step) -> Finish | None:
            if job.cancelled.is_set():
                raise Cancelled()
            if step.tokens and first[0] is None:
                first[0] = time.monotonic() - t0
            return Finish.LENGTH if time.monotonic() > deadline else None

        try:
            self.cache.prepare(self.target, self.draft, job.tokens)
            ctl = copy.deepcopy(self.template)
            # A seeded sampled reply is repeatable only if its drafts depend on the request alone.
            seeded = job.gen.seed is not None and not job.gen.sampling.greedy
            pieces = runner.stream(self.target, self.draft, job.tokens, job.gen, reply, ctl, on_step=on_step,
                                   memory=None if seeded else self.memory)
            try:
                for piece in pieces:
                    job.emit(("text", piece))
            finally:
                pieces.close()
        except (Cancelled, Interrupted):
            reply.finish = Finish.INTERRUPTED
        finally:
            for m in models:
                m.should_stop = None
        self.metrics.observe(reply, first[0])
        if reply.finish != Finish.INTERRUPTED:
            job.emit(("done", reply))  # the client has its answer before the cache is saved
        self.cache.store(self.target, self.draft)
        if self.memory is not None and reply.tokens:
            self.memory.add(reply.tokens)


def threadsafe_emitter(loop: asyncio.AbstractEventLoop, q: asyncio.Queue) -> Callable[[tuple], None]:
    """An emit() for a Job whose consumer awaits `q` on `loop`."""

    def emit(event: tuple) -> None:
        try:
            loop.call_soon_threadsafe(q.put_nowait, event)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    return emit
