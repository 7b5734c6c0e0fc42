"""HTTP Range requests (RFC 9110 14) and the CDN's own ETag."""

from __future__ import annotations

import hashlib

from lawchatd.errors import UserError


class Unsatisfiable(UserError):
    """A range outside the file (416)."""

    status = 416
    code = "range_not_satisfiable"


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end inclusive) of a single byte range; None to send the whole file."""
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None  # other units and multiple ranges may be ignored (RFC 9110 14.2)
    first, sep, last = (part.strip() for part in spec.partition("-"))
    if not sep or not (first or last) or not (first + last).isdecimal():
        return None  # syntactically invalid: ignore
    if not first:  # suffix: the last N bytes
        if int(last) == 0 or size == 0:
            raise Unsatisfiable
        return max(0, size - int(last)), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if start >= size:
        raise Unsatisfiable
    if end < start:
        return None
    return start, min(end, size - 1)


def cdn_etag(sha256: str, size: int) -> str:
    # Deliberately not the sha256: the Hub's CDN has its own ETag, and clients must not mix them.
    # Derived from the content, so it holds across a pull-through's end and a copy of DIR.
    return f'"{hashlib.sha1(f"cdn:{sha256}:{size}".encode()).hexdigest()}"'
