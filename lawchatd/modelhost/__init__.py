"""The model host: loads GGUF models into llama.cpp and answers chat with parallel slots.

Modules: ``host`` (swap, memory budget, keep-alive, the chat API), ``engine`` (continuous
batching over llama_batch/llama_decode), ``sampling`` (sampler chains, text and stop
strings), ``memory`` (model cost and the room the daemon has), ``loader``, ``ggufmeta``.
"""

from lawchatd.modelhost.chat_types import Sampling
from lawchatd.modelhost.errors import (
    InvalidRequest,
    LoadInProgress,
    ModelHostError,
    ModelLoadError,
    ModelTooLarge,
    ModelWaitTimeout,
    NoModelLoaded,
    PromptTooLong,
    QueueFull,
)
from lawchatd.modelhost.host import ModelHost

__all__ = [
    "InvalidRequest",
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
]
