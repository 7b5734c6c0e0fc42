"""Start-up failures as one clear line and an exit code per kind (README "Exit codes").

`preflight` runs before the heavy imports and the event loop, so a daemon that cannot work
says so within a second; `classify` names whatever still fails later in start-up (the same
kinds can appear there: a disk that fills between the two, a port already taken).
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import logging
import os
import socket
import sqlite3
from collections.abc import Mapping
from pathlib import Path

from lawchatd.config import Settings
from lawchatd.downloads.catalog import CatalogError

# sysexits.h numbers, so `systemctl status` shows a code that means something.
EX_CONFIG = 78  # settings, catalog or an unsafe bind address
EX_NOINPUT = 66  # the data folder is missing and cannot be created
EX_CANTCREAT = 73  # the data folder is read-only or not writable
EX_IOERR = 74  # the disk is full
EX_DATAERR = 65  # the database is not a SQLite database (or is damaged)
EX_PROTOCOL = 76  # the database was written by a newer lawchatd
EX_UNAVAILABLE = 69  # the address or port cannot be listened on
PROBE_BYTES = 64 * 1024
log = logging.getLogger(__name__)
FULL = (errno.ENOSPC, errno.EDQUOT)
READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


class StartupError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def preflight(settings: Settings) -> None:
    """Refuse to start, in words, when the daemon would be open to anyone or could not
    keep its state."""
    refuse_unsafe_bind(settings)
    _data_dir(settings.data_dir)
    _writable(settings.data_dir, PROBE_BYTES)  # the database must be able to grow
    # Only writable: a full models disk still serves chat, and a download says 507.
    _writable(settings.models_dir, 0)
    from lawchatd.state.store import SCHEMA_VERSION

    _database(settings.db_path, SCHEMA_VERSION)
    _database(settings.sessions_path, None)
    _can_listen(settings)


def refuse_unsafe_bind(settings: Settings) -> None:
    """An open port without a key would let anyone on the network fill the disk."""
    if settings.api_key is None and not settings.bind_is_loopback():
        raise StartupError(
            EX_CONFIG,
            f"refusing to listen on {settings.host} without an API key; "
            "set LAWCHATD_API_KEY (or bind LAWCHATD_HOST=127.0.0.1)",
        )


def _can_listen(settings: Settings) -> None:
    """Bind (and let go of) the address now, so a taken port is told before anything starts.
    The real bind follows in a moment; losing a race there is still classified."""
    if settings.port == 0:
        return
    try:
        found = socket.getaddrinfo(
            settings.host or None, settings.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        for family, kind, proto, _, address in found:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio does
                if family == socket.AF_INET6:
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                probe.bind(address)
    except OSError as exc:
        raise listen_error(exc, settings) from None


def _data_dir(path: Path) -> None:
    if path.is_dir():
        return
    if path.exists():
        raise StartupError(EX_NOINPUT, f"the data folder {path} is not a folder")
    try:
        path.mkdir(parents=True)
    except OSError as exc:
        if exc.errno in FULL:
            raise StartupError(EX_IOERR, f"the disk holding {path} is full") from None
        raise StartupError(
            EX_NOINPUT, f"the data folder {path} is missing and cannot be created: {exc.strerror}"
        ) from None


def _writable(folder: Path, size: int) -> None:
    """Create `folder` and write (and sync) `size` bytes in it: read-only and full disks show."""
    probe = folder / f".lawchatd-probe-{os.getpid()}"
    try:
        folder.mkdir(exist_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            if size:
                os.write(fd, b"\0" * size)
                os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise _os_error(exc, folder) from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


def _os_error(exc: OSError, folder: Path) -> StartupError:
    if exc.errno in FULL:
        return StartupError(EX_IOERR, f"the disk holding {folder} is full")
    if exc.errno in READ_ONLY:
        reason = "read-only" if exc.errno == errno.EROFS else "not writable by this user"
        return StartupError(EX_CANTCREAT, f"the data folder {folder} is {reason}")
    return StartupError(EX_CANTCREAT, f"cannot write in {folder}: {exc.strerror}")


def _database(path: Path, newest: int | None) -> None:
    if not path.exists():
        return
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=1)) as db:
            (version,) = db.execute("PRAGMA user_version").fetchone()
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        raise _database_error(exc, path) from None
    if newest is not None and version > newest:
        raise StartupError(
            EX_PROTOCOL,
            f"{path} was written by a newer lawchatd (schema {version}, this one knows "
            f"{newest}); run that version or move the file away",
        )


def _database_error(exc: sqlite3.DatabaseError, path: Path) -> StartupError:
    text = str(exc).lower()
    if "full" in text:
        return StartupError(EX_IOERR, f"the disk holding {path} is full")
    if "readonly" in text or "read-only" in text:
        return StartupError(EX_CANTCREAT, f"{path} is read-only")
    return StartupError(EX_DATAERR, f"{path} is not a usable SQLite database ({exc})")


def listen_error(exc: OSError, settings: Settings) -> StartupError:
    where = f"{settings.host}:{settings.port}"
    if exc.errno == errno.EADDRINUSE:
        return StartupError(EX_UNAVAILABLE, f"{where} is already in use by another program")
    return StartupError(EX_UNAVAILABLE, f"cannot listen on {where}: {exc.strerror or exc}")


def classify(exc: BaseException, settings: Settings) -> StartupError | None:
    """A StartupError for a failure during start-up that has a known kind, else None."""
    if isinstance(exc, StartupError):
        return exc
    if isinstance(exc, CatalogError):
        return StartupError(EX_CONFIG, str(exc))
    if isinstance(exc, sqlite3.DatabaseError):
        return _database_error(exc, settings.db_path)
    if isinstance(exc, OSError) and exc.errno in FULL + READ_ONLY:
        return _os_error(exc, settings.data_dir)
    from lawchatd.state.store import SchemaTooNew  # here: preflight runs before heavy imports

    if isinstance(exc, SchemaTooNew):
        return StartupError(EX_PROTOCOL, str(exc))
    return None


# LAWCHATD_* variables read outside Settings (the mirror's CLI, the env file's own name).
OTHER_VARIABLES = (  # read by the CLI or the mirror, not by Settings
    "LAWCHATD_ENV_FILE",
    "LAWCHATD_MIRROR_TOKEN",
    "LAWCHATD_MIRROR_UPSTREAM_TOKEN",
    "LAWCHATD_MIRROR_CLIENT_WAIT",
)


def known_variables() -> set[str]:
    return {f"LAWCHATD_{name.upper()}" for name in Settings.model_fields} | set(OTHER_VARIABLES)


def unknown_variables(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """Each LAWCHATD_* name that nothing reads, with the nearest known name (a typo such as
    LAWCHATD_APIKEY would otherwise leave the daemon without a key, silently)."""
    prefix = "LAWCHATD_"
    known = known_variables()
    tails = {name.removeprefix(prefix): name for name in known}  # the shared prefix misleads
    found = []
    for name in sorted(n for n in environ if n.upper().startswith(prefix) and n not in known):
        near = difflib.get_close_matches(name.upper().removeprefix(prefix), tails, 1, 0.6)
        found.append((name, tails[near[0]] if near else None))
    return found


def log_settings(settings: Settings, environ: Mapping[str, str] = os.environ) -> None:
    """At start: a warning per unknown LAWCHATD_* variable, then where things are."""
    for name, nearest in unknown_variables(environ):
        hint = f"; did you mean {nearest}?" if nearest else ""
        log.warning("%s is not a lawchatd setting and is ignored%s", name, hint)
    log.info("data folder %s (models in %s)", settings.data_dir, settings.models_dir)
    catalog = settings.catalog or "the built-in catalog (TheBloke/law-chat-GGUF)"
    log.info("catalog: %s; Hub endpoint: %s", catalog, settings.hf_endpoint)
