"""`GET /metrics`: Prometheus text, read from the objects that hold the state (never kept twice)."""

from __future__ import annotations

from aiohttp import web

from lawchatd.web.keys import MANAGER, MODEL_HOST, WEBSOCKETS

routes = web.RouteTableDef()


def _family(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    # repr keeps every digit: a byte counter must not round (6760832, not 6.76083e+06).
    lines += [f"{name}{labels} {value!r}" for labels, value in samples]
    return lines


def render(app: web.Application) -> str:
    manager, host = app[MANAGER], app[MODEL_HOST]
    running = manager.current if manager.running else None
    fetched = manager.finished_bytes + (running.fetched if running else 0)
    retries = manager.finished_retries + (running.retries if running else 0)
    outcomes = [(f'{{outcome="{o}"}}', n) for o, n in sorted(manager.outcomes.items())]
    chat = [
        ('{outcome="accepted"}', host.chat_requests),
        ('{outcome="rejected"}', host.chat_rejected),
        ('{outcome="failed"}', host.chat_failures),
        ('{outcome="cancelled"}', host.chat_cancelled),
    ]
    lines = [
        *_family("lawchatd_download_bytes_total", "counter",
                 "Bytes received from upstream and written to partial files.", [("", fetched)]),
        *_family("lawchatd_downloads_total", "counter",
                 "Finished download runs by outcome.", outcomes),
        *_family("lawchatd_download_seconds_total", "counter",
                 "Seconds spent in finished download runs.", [("", manager.finished_seconds)]),
        *_family("lawchatd_download_retries_total", "counter",
                 "Connection attempts retried after an error or a stall.", [("", retries)]),
        *_family("lawchatd_download_running", "gauge",
                 "1 while a download runs.", [("", 1 if running else 0)]),
        *_family("lawchatd_websocket_clients", "gauge",
                 "Connected /ws/progress clients.", [("", len(app[WEBSOCKETS]))]),
        *_family("lawchatd_model_loads_total", "counter",
                 "Model loads attempted.", [("", host.loads_total)]),
        *_family("lawchatd_model_load_failures_total", "counter",
                 "Model loads that failed.", [("", host.load_failures)]),
        *_family("lawchatd_model_load_seconds", "gauge",
                 "Duration of the last model load.", [("", host.load_seconds or 0)]),
        *_family("lawchatd_model_loaded", "gauge",
                 "1 while a model answers chat.", [("", 1 if host.model_variant else 0)]),
        *_family("lawchatd_chat_requests_total", "counter",
                 "Chat completion requests by outcome.", chat),
        *_family("lawchatd_chat_seconds_total", "counter",
                 "Seconds spent answering accepted chat requests.", [("", host.chat_seconds)]),
        *_family("lawchatd_chat_queue_waiting", "gauge",
                 "Chat requests waiting for the model.", [("", host.queue_waiting)]),
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    return web.Response(
        text=render(request.app),
        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
    )
