"""One line per event, readable in journalctl; secrets never reach a log line."""

from __future__ import annotations

import logging
import os
import re
import sys

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

# Keys, and the parts of a presigned URL that let anyone fetch it within the hour (the
# mirror's and S3's/CloudFront's): masked in every access log line.
_TOKEN_IN_QUERY = re.compile(
    r"((?:^|[?&])(?:token|api_key|key|signature|x-amz-signature|x-amz-credential"
    r"|x-amz-security-token|policy|key-pair-id)=)[^&\s]*",
    re.IGNORECASE,
)


def mask_query(path_qs: str) -> str:
    return _TOKEN_IN_QUERY.sub(r"\1***", path_qs)


class MaskingAccessLogger(AbstractAccessLogger):
    """An access log line per request, with `?token=` masked (browsers put the key there), and
    a presigned URL's signature."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %d %.1fms',
            request.remote,
            request.method,
            mask_query(request.path_qs),
            response.status,
            time * 1000,
        )


def setup_logging(level: str) -> None:
    # journald stamps each line itself; elsewhere a timestamp helps.
    under_journal = "JOURNAL_STREAM" in os.environ or "INVOCATION_ID" in os.environ
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not under_journal:
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=level.upper(), format=fmt, stream=sys.stderr, force=True)
