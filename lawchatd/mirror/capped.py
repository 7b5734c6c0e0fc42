"""An upstream's /api/ answer read with a ceiling.

A model_info, a page of a tree or a list of refs is kilobytes (the Hub pages its trees); an
upstream that answers hundreds of MB (broken or hostile) used to be read whole into memory
(300 MB took the mirror from 52 MB to 948 MB RSS). Past the ceiling the read stops, the
connection is dropped and the mirror answers from DIR instead.
"""

from __future__ import annotations

import aiohttp

API_ANSWER_LIMIT = 8 << 20  # bytes: far above any Hub JSON answer, far below harm


async def read_capped(
    response: aiohttp.ClientResponse, limit: int = API_ANSWER_LIMIT
) -> bytes | None:
    """The body, or None when it is longer than `limit` (only `limit` bytes are ever held)."""
    if (response.content_length or 0) > limit:
        return None
    chunks: list[bytes] = []
    held = 0
    async for chunk in response.content.iter_chunked(64 << 10):
        held += len(chunk)
        if held > limit:
            response.close()  # the rest is never read
            return None
        chunks.append(chunk)
    return b"".join(chunks)
