"""Settings: the only place that reads the environment."""

from __future__ import annotations

import ipaddress
import os
import ssl
from functools import cached_property
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from lawchatd.fetch.options import FetchOptions
from lawchatd.fetch.ratelimit import parse_rate
from lawchatd.fetch.schedule import parse_schedule

# LAWCHATD_AUTOLOAD: what a verified download does to the answering model (activation.py).
ALWAYS = "always"  # swap it in (the default: hot-swapping is what the daemon is for)
EMPTY = "empty"  # load it only when no model is loaded
NEVER = "never"  # leave it on disk until someone loads it
AUTOLOAD_WORDS = {
    "true": ALWAYS, "always": ALWAYS, "1": ALWAYS, "yes": ALWAYS, "on": ALWAYS,
    "empty": EMPTY, "false": NEVER, "never": NEVER, "0": NEVER, "no": NEVER, "off": NEVER,
}  # fmt: skip


def _default_data_dir() -> Path:
    # systemd's StateDirectory= hands us a writable folder in $STATE_DIRECTORY.
    state_dir = os.environ.get("STATE_DIRECTORY")
    if state_dir:
        return Path(state_dir.split(":")[0])
    return Path.home() / ".local" / "share" / "lawchatd"


def _default_hf_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


def _default_ssl_cert_file() -> Path | None:
    # OpenSSL's own variable; honoured on top of the system store, not instead of it.
    value = os.environ.get("SSL_CERT_FILE")
    return Path(value) if value else None


def _default_hf_token() -> SecretStr | None:
    token = os.environ.get("HF_TOKEN")
    return SecretStr(token) if token else None


def split_host(value: str) -> tuple[str, str]:
    """`Host`-style `name[:port]` or `[v6]:port` -> (lower-case name without dot, port)."""
    value = value.strip().lower()
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        return name, rest.removeprefix(":")
    name, _, port = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
    return name.rstrip("."), port


def normal_origin(value: str) -> str | None:
    """`scheme://host:port` in lower case with the scheme's default port written out; None
    for anything that is not an http(s) origin."""
    parts = urlsplit(value.strip().lower())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host.rstrip('.')}:{port}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LAWCHATD_",
        env_file=os.environ.get("LAWCHATD_ENV_FILE", ".env"),
        env_file_encoding="utf-8",
        extra="ignore",
        hide_input_in_errors=True,  # a proxy URL or key in an error would end up in a log
    )

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    data_dir: Path = Field(default_factory=_default_data_dir)
    api_key: SecretStr | None = None
    hf_endpoint: str = Field(default_factory=_default_hf_endpoint)
    hf_token: SecretStr | None = Field(default_factory=_default_hf_token)
    catalog: Path | None = None
    autoload: str = "always"  # always (true) | empty | never (false): lawchatd/activation.py
    resume_on_start: bool = True
    # The download engine's knobs start from its own defaults (lawchatd.fetch.FetchOptions).
    connections: int = Field(FetchOptions.connections, ge=1, le=16)
    stall_timeout: float = Field(FetchOptions.stall_timeout, gt=0)
    n_ctx: int | None = Field(None, ge=0)
    n_threads: int | None = Field(None, ge=1)
    n_gpu_layers: int | None = None
    # Serving at real size (see lawchatd/modelhost): slots decoding at once (None: from the
    # cores), seconds without chat before the model is unloaded (None: never), and how long
    # a request waits for a model being (re)loaded before a 503 with Retry-After.
    parallel: int | None = Field(None, ge=1, le=64)
    keep_alive: float | None = Field(None, gt=0)
    load_wait: float = Field(120.0, gt=0)
    # Test and benchmark only: a memory limit in bytes read like the cgroup's memory.max.
    memory_max: int | None = Field(None, gt=0)

    # Beyond the contract: tuning knobs with sensible defaults.
    max_retries: int = Field(FetchOptions.max_retries, ge=0)
    retry_backoff: float = Field(FetchOptions.retry_backoff, ge=0)
    chat_queue_limit: int = Field(16, ge=1)
    # A `user` key's chat limits unless the key sets its own (README "Sharing the model").
    user_max_concurrent: int | None = Field(4, ge=1)
    user_tokens_per_minute: int | None = Field(None, ge=1)
    log_level: str = "INFO"
    # Security knobs (README "Security"): extra names the Host header may carry (a reverse
    # proxy's), comma-separated; `*` turns the Host check off.
    allowed_hosts: str = ""
    header_timeout: float = Field(15.0, gt=0)  # to send a request's head (and idle keep-alive)
    body_timeout: float = Field(30.0, gt=0)  # to send a JSON body
    max_connections: int = Field(256, ge=8)  # open client connections; idle ones make room
    session_idle: float = Field(12 * 3600.0, gt=0)  # a browser session ends after this idle
    # Extra browser origins, exact `scheme://host:port`, comma-separated (a reverse proxy's page).
    allowed_origins: str = ""
    # The audit trail (README "For the firm's administrator"): chat text only when asked for,
    # and events older than this many days pruned (unset: kept for ever).
    audit_content: bool = False
    audit_retention_days: float | None = Field(None, gt=0)
    # Where `lawchatd pull` and `lawchatd status` find the daemon.
    url: str | None = None

    # Networks firms sit behind (lawchatd/http.py, lawchatd/ratelimit.py).
    proxy: SecretStr | None = None  # may carry a user and password: never logged
    ca_bundle: Path | None = None
    ssl_cert_file: Path | None = Field(default_factory=_default_ssl_cert_file)
    max_rate: int | None = None
    rate_schedule: str | None = None

    @field_validator("proxy", mode="before")
    @classmethod
    def _proxy_url(cls, value: object) -> object:
        if value in ("", None):
            return None
        text = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        if "://" not in text:
            text = "http://" + text  # `host:3128`, as curl accepts it
        if not text.startswith("http://"):
            # The message never repeats the value: it may hold a password.
            raise ValueError("must be an http:// proxy URL (https:// proxies are not supported)")
        return text

    @field_validator("ca_bundle", "ssl_cert_file")
    @classmethod
    def _readable_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        # SSL_CERT_FILE is read without the prefix: say so, or the message names the wrong variable.
        origin = " (from SSL_CERT_FILE)" if info.field_name == "ssl_cert_file" else ""
        if not value.is_file():
            raise ValueError(f"{value}{origin} is not a file (a PEM file of CA certificates)")
        try:
            ssl.create_default_context(cafile=str(value))
        except ssl.SSLError:
            raise ValueError(
                f"{value}{origin} holds no PEM CA certificate OpenSSL can read"
            ) from None
        return value

    @field_validator("max_rate", mode="before")
    @classmethod
    def _rate(cls, value: object) -> int | None:
        return parse_rate(value)  # type: ignore[arg-type]

    @field_validator("rate_schedule")
    @classmethod
    def _schedule(cls, value: str | None) -> str | None:
        if parse_schedule(value) is None:  # raises on a rule it cannot read
            return None
        return value.strip() if value else None

    @field_validator("autoload", mode="before")
    @classmethod
    def _autoload_word(cls, value: object) -> str:
        word = str(value).strip().lower()
        if word not in AUTOLOAD_WORDS:
            raise ValueError("must be always (or true), empty, or never (or false)")
        return AUTOLOAD_WORDS[word]

    @field_validator("hf_endpoint")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator(
        "n_ctx",
        "keep_alive",
        "memory_max",
        "parallel",
        "user_max_concurrent",
        "user_tokens_per_minute",
        mode="before",
    )
    @classmethod
    def _unset_words(cls, value: object) -> object:
        return None if value in ("", "max", "none", "never") else value

    @field_validator("api_key", "hf_token", "audit_retention_days", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @cached_property
    def extra_hosts(self) -> frozenset[str]:
        """LAWCHATD_ALLOWED_HOSTS as lower-case names, without ports, brackets or final dot
        (read on every request: parsed once)."""
        names = (split_host(entry)[0] for entry in self.allowed_hosts.split(","))
        return frozenset(name for name in names if name)

    @cached_property
    def extra_origins(self) -> frozenset[str]:
        """LAWCHATD_ALLOWED_ORIGINS as normalised `scheme://host:port` (default ports filled)."""
        return frozenset(
            o for o in (normal_origin(entry) for entry in self.allowed_origins.split(",")) if o
        )

    @property
    def sessions_path(self) -> Path:
        """Browser sessions (an HMAC of each token), apart from the download state."""
        return self.data_dir / "sessions.sqlite3"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "lawchatd.sqlite3"

    @property
    def daemon_url(self) -> str:
        if self.url:
            return self.url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def bind_is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False  # a host name: assume it can be reached from outside
