"""The model host's errors; each message is fit to show a user."""

from __future__ import annotations


class ModelHostError(Exception):
    """Base of the model host's errors."""


class ModelLoadError(ModelHostError):
    """The model file could not be loaded (the old model, if any, still serves)."""


class ModelTooLarge(ModelLoadError):
    """Even alone the model does not fit in the memory the daemon may use (HTTP 507).

    ``needed`` and ``available`` are bytes; the message spells them out."""

    def __init__(self, message: str, *, needed: int, available: int) -> None:
        super().__init__(message)
        self.needed = needed
        self.available = available


class LoadInProgress(ModelHostError):
    """Another load is running (HTTP 409)."""


class QueueFull(ModelHostError):
    """Too many chat requests are waiting for the model (HTTP 429)."""


class NoModelLoaded(ModelHostError):
    """No model is loaded (HTTP 503)."""


class ModelWaitTimeout(ModelHostError):
    """A request waited longer than allowed for a model being (re)loaded (HTTP 503 with
    ``Retry-After: retry_after`` seconds)."""

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PromptTooLong(ModelHostError):
    """The prompt does not fit the context window (HTTP 400)."""


class InvalidRequest(ModelHostError, ValueError):
    """A request the loaded model cannot take, e.g. a logit_bias token outside its vocabulary
    (HTTP 400); ``param`` names the request's field."""

    def __init__(self, message: str, *, param: str) -> None:
        super().__init__(message)
        self.param = param
