"""Which role may call which route: the one table, read by the auth middleware.

Three permissions: READ (what the dashboard shows), CHAT (the OpenAI API) and ADMIN (anything
that changes the daemon: downloads, the model, the bandwidth, keys). A route missing from the
table needs ADMIN, so a new route is closed until someone decides otherwise.
"""

from __future__ import annotations

from enum import StrEnum

from aiohttp import web

from lawchatd.web.caller import Role


class Permission(StrEnum):
    OPEN = "open"  # no key at all (the page, its files, the health check, the login)
    READ = "read"
    CHAT = "chat"
    ADMIN = "admin"


GRANTS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    Role.USER: frozenset({Permission.OPEN, Permission.READ, Permission.CHAT}),
    Role.VIEWER: frozenset({Permission.OPEN, Permission.READ}),
}

# (method, route pattern) -> what it needs. Patterns as aiohttp writes them.
ROUTES: dict[tuple[str, str], Permission] = {
    ("GET", "/"): Permission.OPEN,
    ("GET", "/healthz"): Permission.OPEN,
    ("GET", "/favicon.ico"): Permission.OPEN,
    ("POST", "/session"): Permission.OPEN,  # the login (its own failed-key limit)
    ("DELETE", "/session"): Permission.OPEN,  # ends only the session it is sent with
    ("GET", "/session"): Permission.READ,  # who is logged in, and their role
    ("GET", "/models/available"): Permission.READ,
    ("GET", "/models/download-progress"): Permission.READ,
    ("GET", "/models/loaded"): Permission.READ,
    ("GET", "/health"): Permission.READ,
    ("GET", "/ws/progress"): Permission.READ,
    ("GET", "/downloads"): Permission.READ,
    ("GET", "/downloads/history"): Permission.READ,  # the dashboard reads it on every refresh
    ("GET", "/downloads/bandwidth"): Permission.READ,
    ("GET", "/keys/usage"): Permission.READ,  # a user's own usage (the route filters)
    # Everything else, /metrics, /keys and every state-changing route included: ADMIN.
}
OPENAI_PREFIX = "/v1/"
STATIC_PREFIX = "/static/"

WHAT_ROLES_DO = {
    Role.ADMIN: "everything",
    Role.USER: "chat (/v1) and read the models, downloads and progress",
    Role.VIEWER: "read the models, downloads and progress",
}


def route_pattern(request: web.Request) -> str:
    """The matched route's pattern (/downloads/{variant}), or the path when none matched."""
    info = request.match_info
    route = getattr(info, "route", None)
    resource = getattr(route, "resource", None) if route is not None else None
    if resource is not None and info.http_exception is None:
        return resource.canonical
    return request.path


def needed(request: web.Request) -> Permission:
    path = request.path
    method = "GET" if request.method == "HEAD" else request.method
    if path.startswith(STATIC_PREFIX):
        return Permission.OPEN
    if path.startswith(OPENAI_PREFIX):
        # Every /v1 route, the ones other modules add included: reading the model list is a
        # read, anything else is the chat.
        return Permission.READ if method == "GET" else Permission.CHAT
    found = ROUTES.get((method, route_pattern(request)))
    if found is not None:
        return found
    if request.match_info.http_exception is not None:
        # No such route (404/405): a known caller gets aiohttp's answer, not a 403.
        return Permission.READ
    return Permission.ADMIN


def allows(role: Role, permission: Permission) -> bool:
    return permission in GRANTS[role]


def refusal(role: Role, request: web.Request) -> str:
    """The 403's words: what was refused, the role, and what the role may do."""
    return (
        f"A key with the role '{role}' may not use {request.method} {request.path}: "
        f"it may {WHAT_ROLES_DO[role]}. Ask the firm's administrator for an admin key"
    )
