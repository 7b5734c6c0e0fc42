"""`GET /metrics`: Prometheus text written by prometheus_client.

Counters and gauges are read from the objects that hold the state when scraped (never kept
twice); the histograms (`state/histograms.py`) are held by whoever observes them. Each app
has its own registry, so two apps in one process do not share or collide.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import Metric

from lawchatd.modelhost.fairshare import KeyUsage
from lawchatd.web.keys import CHAT_TIMINGS, MANAGER, MODEL_HOST, WEBSOCKETS

routes = web.RouteTableDef()
_REGISTRY = web.AppKey("metrics_registry", CollectorRegistry)


def setup(app: web.Application) -> None:
    registry = CollectorRegistry()
    registry.register(_Live(app))  # no describe(): nothing is read before a scrape
    app[_REGISTRY] = registry
    app.add_routes(routes)


def _counter(name: str, help_text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, help_text, value=value)


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=value)


def _by_outcome(name: str, help_text: str, counts: Iterable[tuple[str, int]]) -> Metric:
    family = CounterMetricFamily(name, help_text, labels=["outcome"])
    for outcome, n in counts:
        family.add_metric([outcome], n)
    return family


def _per_key(usage: Mapping[str, KeyUsage]) -> Iterable[Metric]:
    """Chat usage per key (GET /keys/usage has the same figures)."""
    requests = CounterMetricFamily(
        "lawchatd_key_chat_requests_total", "Chat requests per key.", labels=["key", "outcome"]
    )
    tokens = CounterMetricFamily(
        "lawchatd_key_tokens_total", "Chat tokens per key.", labels=["key", "kind"]
    )
    for key, u in sorted(usage.items()):
        requests.add_metric([key, "accepted"], u.requests)
        requests.add_metric([key, "refused"], u.refused)
        tokens.add_metric([key, "prompt"], u.prompt_tokens)
        tokens.add_metric([key, "completion"], u.completion_tokens)
    return (requests, tokens)


class _Live:
    """A custom collector: reads the download manager, the model host and the sockets."""

    def __init__(self, app: web.Application) -> None:
        self._app = app

    def collect(self) -> Iterable[Metric]:
        app = self._app
        manager, host = app[MANAGER], app[MODEL_HOST]
        counters = host.counters
        running = manager.current if manager.running else None
        fetched = manager.finished_bytes + (running.fetched if running else 0)
        retries = manager.finished_retries + (running.retries if running else 0)
        chat = [
            ("accepted", counters.chat_requests),
            ("rejected", counters.chat_rejected),
            ("failed", counters.chat_failures),
            ("cancelled", counters.chat_cancelled),
        ]
        yield from (
            _counter("lawchatd_download_bytes_total",
                     "Bytes received from upstream and written to partial files.", fetched),
            _by_outcome("lawchatd_downloads_total",
                        "Finished download runs by outcome.", sorted(manager.outcomes.items())),
            _counter("lawchatd_download_seconds_total",
                     "Seconds spent in finished download runs.", manager.finished_seconds),
            _counter("lawchatd_download_retries_total",
                     "Connection attempts retried after an error or a stall.", retries),
            _gauge("lawchatd_download_running", "1 while a download runs.", 1 if running else 0),
            _gauge("lawchatd_websocket_clients",
                   "Connected /ws/progress clients.", len(app[WEBSOCKETS])),
            _counter("lawchatd_model_loads_total", "Model loads attempted.", counters.loads_total),
            _counter("lawchatd_model_load_failures_total",
                     "Model loads that failed.", counters.load_failures),
            _gauge("lawchatd_model_load_seconds",
                   "Duration of the last model load.", counters.load_seconds or 0),
            _gauge("lawchatd_model_loaded",
                   "1 while a model answers chat.", 1 if host.model_variant else 0),
            _by_outcome("lawchatd_chat_requests_total", "Chat completion requests by outcome.", chat),
            _counter("lawchatd_chat_seconds_total",
                     "Seconds spent answering accepted chat requests.", counters.chat_seconds),
            _gauge("lawchatd_chat_queue_waiting",
                   "Chat requests waiting for the model.", host.queue_waiting),
        )  # fmt: skip
        yield from manager.download_seconds.collect()
        yield from app[CHAT_TIMINGS].collect()
        yield from _per_key(host.usage)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    # Rendering reads plain attributes, no I/O: quick enough for the event loop.
    body = generate_latest(request.app[_REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})
