"""The model host's errors, on lawchatd's one tree; each message is fit to show a user."""

from __future__ import annotations

from lawchatd.errors import (
    Conflict,
    LawchatdError,
    TooManyRequests,
    TransientError,
    UserError,
)


class ModelHostError(LawchatdError):
    """The model failed while answering (HTTP 500)."""


class ModelLoadError(ModelHostError):
    """The model file could not be loaded (the old model, if any, still serves)."""

    code = "model_load_failed"


class ModelTooLarge(ModelLoadError):
    """Even alone the model does not fit in the memory the daemon may use (HTTP 507).

    ``needed`` and ``available`` are bytes; the message spells them out."""

    status = 507
    code = "model_too_large"

    def __init__(self, message: str, *, needed: int, available: int) -> None:
        super().__init__(message)
        self.needed = needed
        self.available = available


class LoadInProgress(Conflict):
    """Another load is running (HTTP 409)."""


class QueueFull(TooManyRequests):
    """Too many chat requests are waiting for the model (HTTP 429, retry after 1 s)."""


class KeyLimitReached(TooManyRequests):
    """A key is over its own chat limit: requests in flight or tokens per minute (HTTP 429
    with ``Retry-After``)."""

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, retry_after=retry_after)


class NoModelLoaded(UserError):
    """No model is loaded (HTTP 503; retrying will not help until one is loaded)."""

    status = 503
    code = "model_not_loaded"


class ModelWaitTimeout(TransientError):
    """A request waited longer than allowed for a model being (re)loaded (HTTP 503 with
    ``Retry-After: retry_after`` seconds)."""

    code = "model_not_ready"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, retry_after=retry_after)


class PromptTooLong(UserError):
    """The prompt does not fit the context window (HTTP 400)."""

    code = "context_length_exceeded"
    param = "messages"


class InvalidRequest(UserError):
    """A request the loaded model cannot take, e.g. a logit_bias token outside its vocabulary
    (HTTP 400); ``param`` names the request's field."""

    code = "invalid_value"

    def __init__(self, message: str, *, param: str) -> None:
        super().__init__(message, param=param)
