"""Prometheus metrics of the gateway (GET /metrics), in a registry of its own so the
exposition holds exactly these plus the process collector (RSS, CPU, open files)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE  # noqa: F401
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

P = "edge_llm_gateway_"


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)
        self.requests = Counter(P + "requests", "HTTP requests by route and status",
                                ["route", "status"], registry=r)
        self.ttft = Histogram(
            P + "time_to_first_token_seconds", "Time from request to first streamed token",
            ["route"], registry=r,
            buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60))
        self.decode_tps = Histogram(
            P + "decode_tokens_per_second", "Decode rate of a streamed reply after its "
            "first token", ["route"], registry=r,
            buckets=(0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500))
        self.completion_tokens = Counter(P + "completion_tokens", "Tokens generated",
                                         ["route"], registry=r)
        self.stream_errors = Counter(P + "stream_errors", "Streams ended by an engine "
                                     "failure after they started", registry=r)
        self.client_disconnects = Counter(P + "client_disconnects", "Requests the client "
                                          "abandoned (generation cancelled)", registry=r)
        self.rejected = Counter(P + "queue_rejections", "Requests refused with 429 "
                                "because the queue was full", registry=r)
        self.slot_assignments = Counter(
            P + "slot_assignments", "Requests given an engine slot by conversation "
            "(slot affinity): continued (the slot holds the conversation), fresh (an unused "
            "slot), other (the least recently used), client (the client named the slot)",
            ["kind"], registry=r)
        self.queue_depth = Gauge(P + "queue_depth", "Requests waiting for an engine slot",
                                 registry=r)
        self.in_flight = Gauge(P + "in_flight", "Requests holding an engine slot",
                               registry=r)
        self.engine_up = Gauge(P + "engine_up", "1 when the engine answered its last "
                               "probe (GET /metrics, through its task queue)", registry=r)
        self.engine_hung = Gauge(P + "engine_hung", "1 while the engine accepts "
                                 "connections but its probes get no answer", registry=r)
        self.connections = Gauge(P + "connections", "Open client connections", registry=r)
        self.connections_closed = Counter(
            P + "connections_closed", "Client connections the gateway closed, by reason "
            "(header_timeout, idle_timeout, body_timeout, write_timeout, evicted, refused)",
            ["reason"], registry=r)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
