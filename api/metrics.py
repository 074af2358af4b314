"""Prometheus metrics: request counts and latencies per route, search time per stage.

Each app has its own registry (several apps can live in one process, as in the tests);
`GET /metrics` renders it in the text exposition format.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2.5, 5, 10, 30)
UNMATCHED = "unmatched"


class Metrics:
    """The collectors the API updates."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "roomlens_http_requests",
            "HTTP requests answered, by method, route template and status code",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "roomlens_http_request_duration_seconds",
            "Time to answer an HTTP request, by method and route template",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stages = Histogram(
            "roomlens_search_stage_duration_seconds",
            "Time spent per stage of a search (queue, decode, segment, embed, search, "
            "catalog, encode, ...), by endpoint",
            ["endpoint", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.instances = Histogram(
            "roomlens_search_instances",
            "Instances per searched photo",
            buckets=(0, 1, 2, 3, 5, 8, 13, 20, 50),
            registry=self.registry,
        )
        self.waiting = Gauge(
            "roomlens_inference_waiting",
            "Requests queued for an inference worker",
            registry=self.registry,
        )
        self.running = Gauge(
            "roomlens_inference_running",
            "Requests being served by an inference worker",
            registry=self.registry,
        )
        self.workers = Gauge(
            "roomlens_inference_workers", "Size of the inference pool", registry=self.registry
        )

    def observe_stages(self, endpoint: str, timings_ms: Mapping[str, float]) -> None:
        for stage, ms in timings_ms.items():
            self.stages.labels(endpoint=endpoint, stage=stage).observe(ms / 1000.0)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def route_label(scope: Scope) -> str:
    """The route template that served the request (bounded cardinality), e.g.
    `/v1/products/{sku}`; the static files mount as `static`."""
    route = scope.get("route")
    if route is None:
        return UNMATCHED
    if isinstance(route, Mount):
        return str(route.name or "mount")
    return str(getattr(route, "path_format", None) or getattr(route, "path", UNMATCHED))


class MetricsMiddleware:
    """Counts and times every HTTP request (pure ASGI, so streaming bodies are untouched)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route, method = route_label(scope), scope.get("method", "")
            self.metrics.requests.labels(method=method, route=route, status=str(status)).inc()
            elapsed = time.perf_counter() - start
            self.metrics.latency.labels(method=method, route=route).observe(elapsed)
