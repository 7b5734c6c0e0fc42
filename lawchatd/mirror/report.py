"""/_mirror/status per repo: the commit recorded, the files held and missing, the upstream's
last error. What an office's IT reads to know whether a repo is complete before carrying DIR."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from lawchatd.mirror.pull import PullThrough


async def repos_report(pull: PullThrough) -> list[dict[str, Any]]:
    repos = await asyncio.to_thread(_recorded_repos, pull.revisions.folder)
    answer = []
    for repo_id in repos:
        record = await pull.revisions.record(repo_id)
        tree = record.at("main") or max(
            record.trees.values(), key=lambda t: t.recorded_at, default=None
        )
        held: list[str] = []
        missing: list[str] = []
        for path, listed in sorted(tree.files.items()) if tree else []:
            (held if await pull.held(repo_id, path, listed) else missing).append(path)
        trouble = pull.revisions.trouble.get(repo_id)
        answer.append(
            {
                "repo": repo_id,
                "commit": tree.commit if tree else None,
                "refs": dict(record.refs),
                "held": held,
                "missing": missing,
                "upstream": "down" if trouble else "answering",
                "last_error": trouble.message if trouble else None,
                "last_error_at": trouble.at if trouble else None,
                "fetching": pull.fetching(repo_id),
            }
        )
    return answer


def _recorded_repos(folder: Path) -> list[str]:
    """Blocking: the repos with a recorded tree (trees/<org>/<name>.json)."""
    if not folder.is_dir():
        return []
    return sorted(
        f"{p.parent.name}/{p.stem}" for p in folder.glob("*/*.json") if not p.name.startswith(".")
    )
