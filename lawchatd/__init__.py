"""lawchatd: download, verify, hot-swap and serve the law-chat GGUF models."""

__version__ = "0.1.0"
