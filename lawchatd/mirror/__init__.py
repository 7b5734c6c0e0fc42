"""`lawchatd mirror DIR`: a Hugging-Face-Hub-compatible server for DIR/<org>/<repo>/<file>.

Offices without internet point LAWCHATD_HF_ENDPOINT (or huggingface_hub's HF_ENDPOINT) at it;
with --upstream it fills DIR from the Hub on first request (pull.py). The modules:
paths (nothing outside DIR), repo (files, LFS; core derives a static commit from them),
index (each repo's scan, kept while it holds), digests, ranges, signing (presigned /cdn/
URLs), body (streaming bytes), files (resolve and /cdn/), api (model_info, tree, refs,
paths-info, commits), core (what routes share), app (the aiohttp application); for
pull-through: revisions (what the upstream says a revision is: its commit and tree, recorded
by trees.py, answered offline too), pull (one shared fetch per file, waiting out an upstream
outage; it answers with answers.py's data, which files.py and api.py render), report
(/_mirror/status per repo), inflight (serving a fetch as it arrives), upstream (the
upstream's session, and what a file is), landing (what enters DIR) and engine_fetch (the one
adapter to lawchatd's download engine, for every file).
"""

from lawchatd.mirror.app import create_mirror_app, run_mirror

__all__ = ["create_mirror_app", "run_mirror"]
