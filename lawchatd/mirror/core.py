"""What every mirror route shares: DIR, the repo named in the URL, errors, the token."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from lawchatd.errors import UserError
from lawchatd.mirror.answers import Refusal
from lawchatd.mirror.digests import Digests
from lawchatd.mirror.index import RepoIndex
from lawchatd.mirror.paths import BadPath, is_hidden, segments
from lawchatd.mirror.repo import Repo
from lawchatd.mirror.signing import Signer
from lawchatd.web.errors import hub_response

if TYPE_CHECKING:
    from lawchatd.mirror.pull import PullThrough  # pull.py imports nothing of the routes

MAIN = "main"


class Refused(UserError):
    """The mirror's refusal in the Hub's words: a status, the Hub's X-Error-Code (None for
    none) and a message; `reason` replaces the status line's phrase, for clients that show
    only that. Raised anywhere in a route, answered by the app's hub_errors middleware."""

    def __init__(
        self,
        status: int,
        code: str | None,
        message: str,
        headers: Mapping[str, str] | None = None,
        *,
        reason: str | None = None,
    ) -> None:
        super().__init__(message, status=status, headers=headers)
        self.code, self.reason = code, reason


def error(
    status: int,
    code: str | None,
    message: str,
    headers: Mapping[str, str] | None = None,
    *,
    reason: str | None = None,
) -> web.Response:
    """A Refused as the response to return (the Hub's JSON body and X-Error-* headers)."""
    return hub_response(Refused(status, code, message, headers, reason=reason))


def refusal(answer: Refusal) -> web.Response:
    return error(answer.status, answer.code, answer.message, reason=answer.reason)


@dataclass
class Core:
    root: Path  # real path of DIR
    token: str | None
    signer: Signer | None
    cdn_base: str | None
    digests: Digests
    index: RepoIndex
    pull: PullThrough | None = None

    def repo_id(self, request: web.Request) -> tuple[str, str]:
        try:
            org = segments(request.match_info["org"], single=True)[0]
            name = segments(request.match_info["repo"], single=True)[0]
        except BadPath:
            raise Refused(400, None, "Invalid path") from None
        if is_hidden(f"{org}/{name}"):
            raise Refused(404, "RepoNotFound", "Repository not found")
        return org, name

    async def repo(self, request: web.Request) -> Repo:
        """The repo named in the URL, scanned afresh, or Refused with the Hub's 404."""
        repo = await self.index.scan(*self.repo_id(request))
        if repo is None:
            raise Refused(404, "RepoNotFound", "Repository not found")
        return repo

    def check_revision(self, repo: Repo, revision: str, org: str, name: str) -> None:
        if revision in (MAIN, repo.commit):
            return
        if self.pull is not None and self.pull.knows_commit(f"{org}/{name}", revision):
            return
        raise Refused(404, "RevisionNotFound", f"Invalid rev id: {revision}")

    def authorized(self, request: web.Request) -> bool:
        if self.token is None:
            return True
        given = request.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode())

    def require_token(self, request: web.Request) -> None:
        if self.authorized(request):
            return
        repo_id = f"{request.match_info.get('org')}/{request.match_info.get('repo')}"
        message = (
            f"Access to model {repo_id} is restricted. You must have access to it "
            "and be authenticated to access it. Please log in."
        )
        raise Refused(401, "GatedRepo", message)
