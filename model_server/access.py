"""Who may call what (docs/serving.md, "Access"): API keys with scopes, the admin
token, open reads on a loopback bind, an audit line for every admin action and
every refused credential, and a bounded rate limit on refused credentials.

A key is sent as `Authorization: Bearer <key>` or `X-API-Key: <key>`; the server
holds only its SHA-256 (`STREAMREC_API_KEYS`). Scopes: `read` (/recommend,
/score, /similar, /model, /versions), `explain` (explain=true: a user's history),
`write` (POST /v1/events), `admin` (/admin/*, and what /model tells operators
only). The admin token (`STREAMREC_ADMIN_TOKEN`) has every scope.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

from starlette.requests import Request

from model_server.serving import Problem
from streamrec.settings import Settings

Scope = Literal["read", "explain", "write", "admin"]
SCOPES: tuple[Scope, ...] = ("read", "explain", "write", "admin")

audit = logging.getLogger("streamrec.audit")

# Refused credentials per client address are counted in windows of this length:
# past `serve_refusals_per_window`, that address's requests are a 429 until the
# window ends.
REFUSAL_WINDOW_S = 10.0
# Client addresses tracked at once (the oldest is forgotten first).
REFUSAL_CLIENTS_HELD = 10_000


@dataclass(frozen=True)
class Caller:
    """Who a request came from: a key's id ("admin-token" for the token), or None
    for a request without a credential."""

    key_id: str | None
    scopes: frozenset[str]


ANONYMOUS = Caller(None, frozenset())
ADMIN_TOKEN = Caller("admin-token", frozenset(SCOPES))


def key_digest(secret: str) -> str:
    """What `STREAMREC_API_KEYS` stores of a key: its SHA-256, hex."""
    return hashlib.sha256(secret.encode()).hexdigest()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Access:
    def __init__(self, settings: Settings) -> None:
        # Each key's caller made once, by its SHA-256 (the secret itself is not held).
        self._callers = {
            key.sha256: Caller(key.id, frozenset(key.scopes)) for key in settings.api_keys
        }
        self._admin_token = settings.admin_token.encode()  # b"": none
        open_reads = settings.serve_open_reads
        self.open_reads = is_loopback(settings.serve_host) if open_reads is None else open_reads
        self.refusals_per_window = settings.serve_refusals_per_window
        self._refusals: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def caller(self, request: Request) -> Caller:
        """The request's credential checked; a wrong one is a 401 (logged, counted
        against its address)."""
        secret = _credential(request)
        if secret is None:
            return ANONYMOUS
        if self._admin_token and hmac.compare_digest(secret.encode(), self._admin_token):
            return ADMIN_TOKEN
        caller = self._callers.get(key_digest(secret))
        if caller is None:
            self._refused(request, _client(request), None, "unknown credential")
            raise Problem(401, "unauthorized", "unknown API key", {"WWW-Authenticate": "Bearer"})
        return caller

    def require(self, request: Request, scope: Scope) -> Caller:
        """The caller, when it may use `scope`; else a 401 (no or a wrong credential)
        or a 403 (a key without the scope). Reads and explain need none while reads
        are open (`STREAMREC_SERVE_OPEN_READS`, by default on a loopback bind only);
        admin always does."""
        if self._refusals:  # no address is near the limit while none was refused
            self._check_rate(_client(request), request)
        caller = self.caller(request)
        if scope in caller.scopes:
            return caller
        if caller.key_id is None:
            if self.open_reads and scope != "admin":
                return caller
            detail = (
                "admin endpoints are disabled (no admin token or admin key configured)"
                if scope == "admin" and not (self._admin_token or self._has_scope("admin"))
                else f"this endpoint needs an API key with the {scope!r} scope "
                "('Authorization: Bearer <key>' or 'X-API-Key: <key>')"
            )
            self._refused(request, _client(request), None, f"no credential for {scope}")
            raise Problem(401, "unauthorized", detail, {"WWW-Authenticate": "Bearer"})
        self._refused(request, _client(request), caller.key_id, f"no {scope} scope")
        raise Problem(403, "forbidden", f"the key {caller.key_id!r} lacks the {scope!r} scope")

    def admitted(self, request: Request, action: str, outcome: str, caller: Caller) -> None:
        """The audit line of an admin action."""
        _audit("admin", request, caller.key_id, action=action, outcome=outcome)

    def _has_scope(self, scope: str) -> bool:
        return any(scope in caller.scopes for caller in self._callers.values())

    def _refused(self, request: Request, client: str, key_id: str | None, reason: str) -> None:
        _audit("refused", request, key_id, reason=reason)
        started, count = self._refusals.pop(client, (time.monotonic(), 0))
        if time.monotonic() - started >= REFUSAL_WINDOW_S:
            started, count = time.monotonic(), 0
        self._refusals[client] = (started, count + 1)
        while len(self._refusals) > REFUSAL_CLIENTS_HELD:
            self._refusals.popitem(last=False)

    def _check_rate(self, client: str, request: Request) -> None:
        held = self._refusals.get(client)
        if held is None or not self.refusals_per_window:
            return
        started, count = held
        left_s = REFUSAL_WINDOW_S - (time.monotonic() - started)
        if count >= self.refusals_per_window and left_s > 0:
            raise Problem(
                429,
                "too_many_refusals",
                f"{count} refused credentials from this address; ask again later",
                {"Retry-After": str(max(1, round(left_s)))},
            )


def _credential(request: Request) -> str | None:
    # The first of each header, as `request.headers.get` would give it, from the
    # scope's list: the `Headers` object and a KeyError for each missing header
    # were 4 µs of a read that sends no credential.
    authorization: str | None = None
    api_key: str | None = None
    for name, value in request.scope["headers"]:
        if name == b"authorization" and authorization is None:
            authorization = value.decode("latin-1")
        elif name == b"x-api-key" and api_key is None:
            api_key = value.decode("latin-1")
    if authorization is not None:
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() == "bearer" and given.strip():
            return given.strip()
    key = (api_key or "").strip()
    return key or None


def _client(request: Request) -> str:
    client = request.scope.get("client")  # `request.client` made an `Address` of it
    if client is None:
        return "unknown"
    host: str = client[0]
    return host


def _audit(event: str, request: Request, key_id: str | None, **fields: str) -> None:
    """One JSON line: who (key id), what, when, outcome."""
    line = {
        "audit": event,
        "ts": round(time.time(), 3),
        "key_id": key_id,
        "client": _client(request),
        "method": request.method,
        "path": request.url.path,
        **fields,
    }
    audit.warning(json.dumps(line, sort_keys=True))
