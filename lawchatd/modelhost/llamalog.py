"""llama.cpp's own log, routed into `logging`.

llama-cpp-python silences llama.cpp by pointing the process's fds 1 and 2 at /dev/null
while a model loads, which would also swallow the daemon's own log lines from other
threads. So we install llama.cpp's log callback instead; ERROR lines are also kept per
thread to explain a failed load.
"""

from __future__ import annotations

import ctypes
import logging
import threading

import llama_cpp

llama_log = logging.getLogger("lawchatd.llama")
_LEVELS = {3: logging.WARNING, 4: logging.ERROR}  # ggml.h; info/debug chatter -> DEBUG
_state = threading.local()
_installed = False


@llama_cpp.llama_log_callback
def _on_llama_log(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    if level == 5:  # GGML_LOG_LEVEL_CONT: continues the previous line
        py_level = getattr(_state, "last_level", logging.DEBUG)
    else:
        py_level = _LEVELS.get(level, logging.DEBUG)
    _state.last_level = py_level
    msg = text.decode("utf-8", "replace").rstrip()
    if not msg:
        return
    errors = getattr(_state, "errors", None)
    if py_level >= logging.ERROR and errors is not None:
        errors.append(msg)
    llama_log.log(py_level, "%s", msg)


def install() -> None:
    global _installed
    if not _installed:
        llama_cpp.llama_log_set(_on_llama_log, ctypes.c_void_p(0))
        _installed = True


def collect_errors() -> list[str]:
    """Start keeping this thread's ERROR lines; returns the list they go into."""
    _state.errors = []
    return _state.errors


def stop_collecting() -> None:
    _state.errors = None
