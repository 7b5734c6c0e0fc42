"""What every mirror route shares: DIR, the repo named in the URL, errors, the token."""

from __future__ import annotations

import hashlib
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


def refused(answer: Refusal) -> Refused:
    headers = {} if answer.retry_after is None else {"Retry-After": str(answer.retry_after)}
    return Refused(answer.status, answer.code, answer.message, headers, reason=answer.reason)


def refusal(answer: Refusal) -> web.Response:
    return hub_response(refused(answer))


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

    async def commit_of(self, repo: Repo) -> str:
        """A folder's commit, from its content: a hash of the sorted paths and sha256s, so
        the same files always give the same commit (a static mirror has no other history)."""
        digest = hashlib.sha1()
        for relpath in sorted(repo.entries):
            sha = await self.digests.sha256(repo.entries[relpath])  # kept beside, or hashed once
            digest.update(f"{relpath}\0{sha}\n".encode())
        return digest.hexdigest()

    async def check_revision(self, repo: Repo, revision: str) -> str:
        """The commit of `revision` (main or the folder's commit itself), else RevisionNotFound."""
        commit = await self.commit_of(repo)
        if revision in (MAIN, commit):
            return commit
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
