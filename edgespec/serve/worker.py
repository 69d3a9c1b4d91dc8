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
from edgespec.serve.protocol import ApiError
from edgespec.session import runner
from edgespec.session.options import GenOptions


class Cancelled(Exception):
    """Raised inside a generation whose consumer is gone."""


@dataclass
class Job:
    tokens: list[int]
    gen: GenOptions
    emit: Callable[[tuple], None]  # ("text", str) | ("done", Reply) | ("error", ApiError); thread-safe
    cancelled: threading.Event = field(default_factory=threading.Event)
    queued_at: float = field(default_factory=time.monotonic)
    deadline: float = 0.0  # monotonic seconds; past it the generation stops with finish "length"


class Worker:
    def __init__(self, target, draft, controller_template, cache, metrics, *, queue_size: int = 16,
                 queue_timeout: float = 300.0, memory: OutputMemory | None = None):
        self.target, self.draft = target, draft
        self.template = controller_template  # each request gets a copy: what one learns never leaks into the next
        self.cache, self.metrics, self.memory = cache, metrics, memory
        self.queue: queue.Queue[Job | None] = queue.Queue(maxsize=queue_size)
        self.queue_timeout = queue_timeout
        self.running: Job | None = None
        self.lock = threading.Lock()  # the models: the worker thread, and shutdown
        self.thread = threading.Thread(target=self._loop, name="edgespec-worker", daemon=True)
        self.thread.start()

    # ------------------------------------------------------------------------------- the queue
    def submit(self, job: Job) -> None:
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            raise ApiError(503, f"the server is busy: {self.queue.maxsize} requests are waiting; try again shortly",
                           "server_error", "queue_full", headers={"Retry-After": "5"}) from None
        self.metrics.queue.set(self.queue.qsize())

    def stop(self) -> None:
        """Cancel what is running and waiting, end the thread."""
        if self.running is not None:
            self.running.cancelled.set()
        while True:
            try:
                job = self.queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.emit(("error", ApiError(503, "the server is shutting down", "server_error", "shutting_down")))
        self.queue.put(None)
        self.thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            job = self.queue.get()
            self.metrics.queue.set(self.queue.qsize())
            if job is None:
                return
            if job.cancelled.is_set():
                continue
            if time.monotonic() - job.queued_at > self.queue_timeout:
                job.emit(("error", ApiError(503, f"the request waited more than {self.queue_timeout:.0f} s in the queue",
                                            "server_error", "queue_timeout", headers={"Retry-After": "5"})))
                continue
            self.running = job
            try:
                with self.lock:
                    self._run(job)
            except Exception as e:  # a failure is this request's, never the server's
                job.emit(("error", ApiError(500, f"generation failed: {type(e).__name__}: {e}", "server_error")))
            finally:
                self.running = None

    # --------------------------------------------------------------------------- a generation
    def _run(self, job: Job) -> None:
        t0 = time.monotonic()
        self.cache.prepare(self.target, self.draft, job.tokens)
        reply = runner.Reply()
        first = [None]

        def on_step(step) -> None:
            if job.cancelled.is_set():
                raise Cancelled()
            if step.tokens and first[0] is None:
                first[0] = time.monotonic() - t0
            if job.deadline and time.monotonic() > job.deadline:
                raise TimeoutError

        ctl = copy.deepcopy(self.template)
        # A seeded sampled reply is repeatable only if its drafts depend on the request alone.
        seeded = job.gen.seed is not None and not job.gen.sampling.greedy
        pieces = runner.stream(self.target, self.draft, job.tokens, job.gen, reply, ctl, on_step=on_step,
                               memory=None if seeded else self.memory)
        try:
            for piece in pieces:
                job.emit(("text", piece))
        except Cancelled:
            reply.finish = Finish.INTERRUPTED
        except TimeoutError:
            reply.finish = Finish.LENGTH
        finally:
            pieces.close()
            self.cache.store(self.target, self.draft)
            if self.memory is not None and reply.tokens:
                self.memory.add(reply.tokens)
        self.metrics.observe(reply, first[0])
        if reply.finish != Finish.INTERRUPTED:
            job.emit(("done", reply))


def threadsafe_emitter(loop: asyncio.AbstractEventLoop, q: asyncio.Queue) -> Callable[[tuple], None]:
    """An emit() for a Job whose consumer awaits `q` on `loop`."""

    def emit(event: tuple) -> None:
        try:
            loop.call_soon_threadsafe(q.put_nowait, event)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    return emit
