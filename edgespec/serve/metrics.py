"""The server's Prometheus metrics (prometheus_client, in a registry of its own)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from edgespec.core.kinds import Finish

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("edgespec_requests", "HTTP requests answered, by endpoint and status", ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("edgespec_prompt_tokens", "Prompt tokens of completed generations", registry=r)
        self.cached_tokens = Counter("edgespec_cached_prompt_tokens", "Prompt tokens found in the KV cache", registry=r)
        self.completion_tokens = Counter("edgespec_completion_tokens", "Generated tokens", registry=r)
        self.drafted = Counter("edgespec_drafted_tokens", "Tokens drafted (model or context)", registry=r)
        self.accepted = Counter("edgespec_accepted_tokens", "Drafted tokens the target accepted", registry=r)
        self.cancelled = Counter("edgespec_cancelled_generations", "Generations stopped because the client went away", registry=r)
        self.queue = Gauge("edgespec_queue_length", "Requests waiting for the models", registry=r)
        self.ttft = Histogram("edgespec_time_to_first_token_seconds", "From the start of a generation to its first token",
                              buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120), registry=r)
        self.decode_speed = Histogram("edgespec_decode_tokens_per_second", "Decode speed of each generation",
                                      buckets=(1, 2, 5, 10, 20, 30, 50, 75, 100, 200, 500), registry=r)

    def observe(self, reply, ttft: float | None) -> None:
        s = reply.stats
        self.prompt_tokens.inc(s.prompt_tokens)
        self.cached_tokens.inc(s.cached_tokens)
        self.completion_tokens.inc(s.generated)
        self.drafted.inc(s.drafted)
        self.accepted.inc(s.accepted)
        if reply.finish == Finish.INTERRUPTED:
            self.cancelled.inc()
        if ttft is not None:
            self.ttft.observe(ttft)
        if s.generated and s.t_decode > 0:
            self.decode_speed.observe(s.tokens_per_s)

    def text(self) -> bytes:
        return generate_latest(self.registry)
