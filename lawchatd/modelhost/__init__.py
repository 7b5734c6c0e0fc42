"""The model host: loads GGUF models into llama.cpp and answers chat with parallel slots.

Modules: ``host`` (puts the parts together: load, snapshot, close), ``load_lock`` (one load
at a time), ``swap`` (the models in memory, hot swap), ``keepalive``, ``admission`` (chat
requests in, pieces out), ``fairshare`` (per-key limits and usage), ``fairqueue`` (slots
shared round robin between keys), ``counters``, ``engine`` (continuous batching over
llama_batch/llama_decode), ``sampling`` (sampler chains, text and stop strings), ``prompt``
(Llama-2 turns), ``memory`` (model cost and the room the daemon has), ``loader``,
``ggufmeta``.
"""

from lawchatd.modelhost.chat_types import Conversation, Sampling
from lawchatd.modelhost.errors import (
    InvalidRequest,
    KeyLimitReached,
    LoadInProgress,
    ModelHostError,
    ModelLoadError,
    ModelTooLarge,
    ModelWaitTimeout,
    NoModelLoaded,
    PromptTooLong,
    QueueFull,
)
from lawchatd.modelhost.fairshare import Limits
from lawchatd.modelhost.host import ModelHost, Snapshot

__all__ = [
    "Conversation",
    "InvalidRequest",
    "KeyLimitReached",
    "Limits",
    "LoadInProgress",
    "ModelHost",
    "ModelHostError",
    "ModelLoadError",
    "ModelTooLarge",
    "ModelWaitTimeout",
    "NoModelLoaded",
    "PromptTooLong",
    "QueueFull",
    "Sampling",
    "Snapshot",
]
