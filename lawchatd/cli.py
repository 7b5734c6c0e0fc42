"""The command line: serve | mirror (and pull, status, keys, audit)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from pathlib import Path

from pydantic import ValidationError

from lawchatd import __version__
from lawchatd.config import Settings
from lawchatd.process.sdnotify import Notifier
from lawchatd.process.startup import EX_CONFIG, StartupError, log_settings, preflight


def _load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"LAWCHATD_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors()
        )
        raise StartupError(EX_CONFIG, f"invalid settings: {problems}") from None


def _settings() -> Settings:
    try:
        return _load_settings()
    except StartupError as exc:
        raise SystemExit(f"lawchatd: {exc.message}") from None


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        settings = _load_settings()
        preflight(settings)  # before the heavy imports: a broken start is told at once
        from lawchatd.process.logs import setup_logging
        from lawchatd.process.server import serve

        setup_logging(settings.log_level)
        log_settings(settings)
        asyncio.run(serve(settings))
    except StartupError as exc:
        _exit_at_once(exc)
    return 0


def _exit_at_once(exc: StartupError) -> None:
    """One line on stderr (the journal, so `systemctl status` shows it), then exit with its
    code without waiting for any thread a half-started daemon may have left behind."""
    line = f"lawchatd: cannot start: {exc.message}"
    print(line, file=sys.stderr, flush=True)
    Notifier().send(f"STATUS={line}")
    logging.shutdown()
    os._exit(exc.code)


def _cmd_mirror(args: argparse.Namespace) -> int:
    from lawchatd.mirror import run_mirror
    from lawchatd.process.logs import setup_logging

    setup_logging("INFO")
    if not args.dir.is_dir():
        raise SystemExit(f"lawchatd mirror: {args.dir} is not a folder")
    upstream = args.upstream
    if upstream and not upstream.startswith(("http://", "https://")):
        raise SystemExit(f"lawchatd mirror: --upstream {upstream!r} must start with http(s)://")
    # Tokens from the environment keep them out of `ps` listings.
    token = args.token or os.environ.get("LAWCHATD_MIRROR_TOKEN") or None
    upstream_token = args.upstream_token or os.environ.get("LAWCHATD_MIRROR_UPSTREAM_TOKEN") or None
    client_wait = args.client_wait or os.environ.get("LAWCHATD_MIRROR_CLIENT_WAIT") or "20"
    try:
        wait_s = float(client_wait)
        if not 0 < wait_s <= 3600:
            raise ValueError
    except ValueError:
        raise SystemExit(
            f"lawchatd mirror: --client-wait {client_wait!r} must be seconds, above 0 and at most 3600"
        ) from None
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            run_mirror(
                args.dir,
                args.host,
                args.port,
                cdn_base=args.cdn_base,
                token=token,
                upstream=upstream,
                upstream_token=upstream_token,
                upstream_repos=args.upstream_repo,
                # The daemon's proxy and CA settings (LAWCHATD_PROXY, LAWCHATD_CA_BUNDLE).
                network=_settings() if upstream else None,
                client_wait=wait_s,
            )
        )
    return 0


def _cmd_pull(args: argparse.Namespace) -> int:
    from lawchatd.client import pull

    return asyncio.run(pull(_settings(), args.variant, args.force, sys.stdout))


def _cmd_status(args: argparse.Namespace) -> int:
    from lawchatd.client import status

    return asyncio.run(status(_settings(), sys.stdout))


def _cmd_keys(args: argparse.Namespace) -> int:
    from lawchatd.people_cli import keys_command

    return asyncio.run(keys_command(_settings(), args, sys.stdout))


def _cmd_audit(args: argparse.Namespace) -> int:
    from lawchatd.people_cli import audit_command

    return asyncio.run(audit_command(_settings(), args, sys.stdout))


def _cmd_verify(args: argparse.Namespace) -> int:
    from lawchatd.client import verify

    return asyncio.run(verify(_settings(), args.variant, sys.stdout))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lawchatd", description="Download, verify, hot-swap and serve the law-chat models."
    )
    parser.add_argument("--version", action="version", version=f"lawchatd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the daemon in the foreground")
    serve.set_defaults(func=_cmd_serve)

    pull = commands.add_parser(
        "pull", help="ask the running daemon to download a variant; show a progress bar"
    )
    pull.add_argument("variant", help="a catalog variant, e.g. law-chat-q4_0")
    pull.add_argument("--force", action="store_true", help="download again even if present")
    pull.set_defaults(func=_cmd_pull)

    status = commands.add_parser("status", help="variants, download state and the loaded model")
    status.set_defaults(func=_cmd_status)

    keys = commands.add_parser("keys", help="the firm's keys: add, list, revoke")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    add = key_commands.add_parser("add", help="a new key for NAME; prints the key once")
    add.add_argument("name", help="who the key is for, e.g. anna.berg")
    add.add_argument("--role", choices=("admin", "user", "viewer"), default="user")
    add.add_argument("--expires", help="an ISO date or time after which the key stops working")
    add.add_argument("--max-concurrent", type=int, help="chat requests at once (default: role's)")
    add.add_argument("--tokens-per-minute", type=int, help="chat tokens a minute (default: role's)")
    key_commands.add_parser("list", help="names, roles, created, last used (never a key)")
    revoke = key_commands.add_parser("revoke", help="stop NAME's key at once")
    revoke.add_argument("name")
    keys.set_defaults(func=_cmd_keys)

    audit = commands.add_parser("audit", help="the audit trail as JSON Lines, or --verify it")
    audit.add_argument("--since", help="only events from this ISO date or time (UTC)")
    audit.add_argument(
        "--verify", action="store_true", help="check the hash chain; exit 1 naming the first break"
    )
    audit.set_defaults(func=_cmd_audit)

    verify = commands.add_parser(
        "verify", help="hash downloaded model files again now (exit 1 if one changed)"
    )
    verify.add_argument("variant", nargs="?", help="one variant (default: every downloaded one)")
    verify.set_defaults(func=_cmd_verify)

    mirror = commands.add_parser("mirror", help="serve a folder as a Hub-compatible endpoint")
    mirror.add_argument("dir", type=Path, help="folder laid out as DIR/<org>/<repo>/<file>")
    mirror.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    mirror.add_argument(
        "--port", type=int, default=8900, help="port to listen on (default: %(default)s)"
    )
    mirror.add_argument("--cdn-base", help="base URL the redirects point at (default: same host)")
    mirror.add_argument(
        "--token",
        help="require this Bearer token, as a gated repo would; /cdn/ URLs are presigned for an "
        "hour (or set LAWCHATD_MIRROR_TOKEN)",
    )
    mirror.add_argument(
        "--upstream",
        help="fill DIR on first request from this Hub, e.g. https://huggingface.co (pull-through)",
    )
    mirror.add_argument(
        "--upstream-repo",
        action="append",
        default=[],
        metavar="PATTERN",
        help="fill only repos matching this pattern, e.g. 'TheBloke/law-chat-*' (repeatable; "
        "default: any repo a client asks for)",
    )
    mirror.add_argument(
        "--upstream-token",
        help="Bearer token for the upstream (or set LAWCHATD_MIRROR_UPSTREAM_TOKEN)",
    )
    mirror.add_argument(
        "--client-wait",
        metavar="SECONDS",
        help="while the upstream is down, a client waiting for a file hears a 503 with "
        "Retry-After after this long (default 20; or set LAWCHATD_MIRROR_CLIENT_WAIT)",
    )
    mirror.set_defaults(func=_cmd_mirror)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
