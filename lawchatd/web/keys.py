"""Typed keys for what the application holds: one place, so modules agree on names."""

from __future__ import annotations

from aiohttp import web

from lawchatd.activation import Activator
from lawchatd.config import Settings
from lawchatd.downloads.bandwidth import Bandwidth
from lawchatd.downloads.catalog import Catalog
from lawchatd.downloads.manager import DownloadManager
from lawchatd.modelhost import ModelHost
from lawchatd.state.histograms import ChatTimings
from lawchatd.state.progress import ProgressHub
from lawchatd.state.store import Store
from lawchatd.web.wscap import SocketCap

SETTINGS = web.AppKey("settings", Settings)
CATALOG = web.AppKey("catalog", Catalog)
STORE = web.AppKey("store", Store)
PROGRESS = web.AppKey("progress", ProgressHub)
MANAGER = web.AppKey("manager", DownloadManager)
WEBSOCKETS = web.AppKey("websockets", set)
WEBSOCKET_CAP = web.AppKey("websocket_cap", SocketCap)
ACTIVATOR = web.AppKey("activator", Activator)
MODEL_HOST = web.AppKey("model_host", ModelHost)
BANDWIDTH = web.AppKey("bandwidth", Bandwidth)
CHAT_TIMINGS = web.AppKey("chat_timings", ChatTimings)
