"""Response bodies about the model, built from the host's plain `Snapshot`.

`model_status` is lawchatd's own shape (`loaded_model` in /ws/progress and in
`POST /models/load`'s answer); `loaded_models` and `health` are the old app's shapes, as its
page reads them, with lawchatd's fields beside them. The old app could hold several models;
lawchatd holds one, so `loaded_models` has at most one entry and it is the active one.
"""

from __future__ import annotations

from typing import Any

from lawchatd.modelhost import Snapshot


def model_status(s: Snapshot) -> dict[str, Any]:
    """status: "loading" while a load runs, else "ready" when a model answers or sleeps
    (``idle``: unloaded by keep-alive, woken by a request), else "error" after a failed
    load, else "none"."""
    if s.loading is not None:
        status = "loading"
    elif s.variant is not None:
        status = "ready"
    elif s.error is not None:
        status = "error"
    else:
        status = "none"
    return {
        "model_variant": s.variant,
        "path": str(s.path) if s.path else None,
        "status": status,
        "loaded_at": s.loaded_at.isoformat(timespec="seconds") if s.loaded_at else None,
        "error": s.error,
        "loading_variant": s.loading,
        "n_ctx": s.n_ctx,
        "memory_usage": s.memory_usage,
        "parallel": s.parallel,
        "idle": s.asleep,
    }


def loaded_models(s: Snapshot) -> dict[str, Any]:
    """GET /models/loaded: the old shape, with lawchatd's status fields beside it."""
    status = model_status(s)
    models = []
    if s.variant is not None:
        models.append(
            {
                "model_variant": s.variant,
                "model_path": status["path"],
                "loaded_at": status["loaded_at"],
                "memory_usage": s.memory_usage,
                "is_active": True,
            }
        )
    return {
        "loaded_models": models,
        "active_model": s.variant,
        "total_memory_usage": s.memory_usage if s.variant else 0,
        **status,
    }


def health(s: Snapshot, variants: list[str]) -> dict[str, Any]:
    """GET /health: the old app's, where ``variants`` are the catalog's."""
    return {
        "status": "healthy",
        "ai_engine_loaded": s.variant is not None,
        "loaded_models_count": 0 if s.variant is None else 1,
        "active_model": s.variant,
        "available_models": variants,
    }
