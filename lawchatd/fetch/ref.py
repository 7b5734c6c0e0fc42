"""FileRef: which file to fetch, and what it must be once fetched."""

from __future__ import annotations

from dataclasses import dataclass

from yarl import URL


@dataclass(frozen=True)
class FileRef:
    """A file on the Hub (`repo`, `revision`, `path`) or at a plain `url`; exactly one of the two.

    `size` is known beforehand (the parts are planned from it); `sha256`, when given, must match
    the bytes, and so must the Hub's own sha256 (X-Linked-Etag). `gguf`: the file must start
    with a GGUF header. `expected_by` names who expects `size`/`sha256`, in error messages.
    """

    size: int
    sha256: str | None = None
    repo: str | None = None
    path: str | None = None
    revision: str = "main"
    url: str | None = None
    gguf: bool = False
    expected_by: str = "caller"

    def __post_init__(self) -> None:
        on_hub = self.repo is not None and self.path is not None
        if on_hub == (self.url is not None):
            raise ValueError("a FileRef names either a Hub file (repo and path) or a url")
        if self.size < 0:
            raise ValueError("a FileRef's size cannot be negative")

    @property
    def on_hub(self) -> bool:
        return self.url is None

    @property
    def name(self) -> str:
        """The file's name in messages: its path in the repo, or the URL's last segment."""
        if self.path is not None:
            return self.path
        return URL(self.url or "").name or str(self.url)
