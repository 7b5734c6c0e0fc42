"""Settings: the only place that reads the environment."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    # systemd's StateDirectory= hands us a writable folder in $STATE_DIRECTORY.
    state_dir = os.environ.get("STATE_DIRECTORY")
    if state_dir:
        return Path(state_dir.split(":")[0])
    return Path.home() / ".local" / "share" / "lawchatd"


def _default_hf_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


def _default_hf_token() -> SecretStr | None:
    token = os.environ.get("HF_TOKEN")
    return SecretStr(token) if token else None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LAWCHATD_",
        env_file=os.environ.get("LAWCHATD_ENV_FILE", ".env"),
        env_file_encoding="utf-8",
        extra="ignore",
    )

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    data_dir: Path = Field(default_factory=_default_data_dir)
    api_key: SecretStr | None = None
    hf_endpoint: str = Field(default_factory=_default_hf_endpoint)
    hf_token: SecretStr | None = Field(default_factory=_default_hf_token)
    catalog: Path | None = None
    autoload: bool = True
    resume_on_start: bool = True
    connections: int = Field(4, ge=1, le=16)
    stall_timeout: float = Field(20.0, gt=0)
    n_ctx: int | None = Field(None, ge=0)
    n_threads: int | None = Field(None, ge=1)
    n_gpu_layers: int | None = None

    # Beyond the contract: tuning knobs with sensible defaults.
    max_retries: int = Field(8, ge=0)
    retry_backoff: float = Field(0.5, ge=0)
    chat_queue_limit: int = Field(16, ge=1)
    log_level: str = "INFO"
    # Security knobs (README "Security"): extra names the Host header may carry (a reverse
    # proxy's), comma-separated; `*` turns the Host check off.
    allowed_hosts: str = ""
    header_timeout: float = Field(15.0, gt=0)  # to send a request's head (and idle keep-alive)
    body_timeout: float = Field(30.0, gt=0)  # to send a JSON body
    max_connections: int = Field(256, ge=8)  # open client connections; idle ones make room
    session_idle: float = Field(12 * 3600.0, gt=0)  # a browser session ends after this idle
    # Where `lawchatd pull` and `lawchatd status` find the daemon.
    url: str | None = None

    @field_validator("hf_endpoint")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("api_key", "hf_token", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @property
    def extra_hosts(self) -> frozenset[str]:
        """LAWCHATD_ALLOWED_HOSTS as lower-case names, without ports, brackets or final dot."""
        names = set()
        for entry in self.allowed_hosts.lower().split(","):
            entry = entry.strip()
            if entry.startswith("["):  # [v6] or [v6]:port
                entry = entry[1:].partition("]")[0]
            elif entry.count(":") == 1:  # name:port
                entry = entry.partition(":")[0]
            if entry := entry.rstrip("."):
                names.add(entry)
        return frozenset(names)

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

    def refuse_unsafe_bind(self) -> None:
        """An open port without a key would let anyone on the network fill the disk."""
        if self.api_key is None and not self.bind_is_loopback():
            raise SystemExit(
                f"lawchatd: refusing to listen on {self.host} without an API key; "
                "set LAWCHATD_API_KEY (or bind LAWCHATD_HOST=127.0.0.1)"
            )
