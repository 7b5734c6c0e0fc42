"""Presigned CDN URLs: with --token, a /cdn/ URL is good for an hour, like the Hub's.

The key is derived from the token, so URLs outlive a restart of the mirror and every mirror
sharing the token agrees; the token itself never appears in a URL.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

EXPIRES_SECONDS = 3600  # the Hub's X-Amz-Expires


class Signer:
    def __init__(self, token: str, lifetime: float = EXPIRES_SECONDS) -> None:
        self._key = hashlib.sha256(b"lawchatd-mirror-cdn\0" + token.encode()).digest()
        self._lifetime = lifetime

    def _mac(self, path: str, expires: int) -> str:
        return hmac.new(self._key, f"{path}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def query(self, path: str, now: float | None = None) -> str:
        """The query string that lets `path` (the URL path, unquoted) be fetched for a while."""
        expires = int((now if now is not None else time.time()) + self._lifetime)
        return f"Expires={expires}&Signature={self._mac(path, expires)}"

    def valid(self, path: str, query: Mapping[str, str], now: float | None = None) -> bool:
        expires, signature = query.get("Expires", ""), query.get("Signature", "")
        if not expires.isdecimal() or len(expires) > 12:
            return False
        if int(expires) < (now if now is not None else time.time()):
            return False
        return hmac.compare_digest(signature.encode(), self._mac(path, int(expires)).encode())
