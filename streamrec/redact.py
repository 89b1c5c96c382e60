"""Addresses as logs and error messages may show them: credentials replaced by ***.

Every URL streamrec logs or puts in an error goes through `redacted` first; a
Redis URL carries its password (`redis://user:PASSWORD@host:6379/0`, or
`?password=` in the query).
"""

from __future__ import annotations

from urllib.parse import urlsplit

HIDDEN = "***"
# Query parameters that carry a secret (redis-py reads `password` from the query).
SECRET_PARAMETERS = frozenset({"password", "pass", "passwd", "pwd", "token", "secret"})


def redacted(url: str) -> str:
    """`url` without its secrets: a password in the user part or the query shows as
    ***; a user name, host, port and path stay. Anything else (a bootstrap list
    like `host:9092,host2:9092`) is returned unchanged."""
    if "@" not in url and "?" not in url:
        return url
    try:
        parts = urlsplit(url)
        has_password = parts.password is not None
    except ValueError:
        return f"<a URL that does not parse, {len(url)} characters>"
    # Replaced in place: urlunsplit would rewrite the rest (`unix:///x` to `unix:/x`).
    shown = url
    if has_password:
        userinfo, host = parts.netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        shown = shown.replace(parts.netloc, f"{user}:{HIDDEN}@{host}", 1)
    if parts.query:
        query = "&".join(_redacted_parameter(p) for p in parts.query.split("&"))
        shown = shown.replace(f"?{parts.query}", f"?{query}", 1)
    return shown


def _redacted_parameter(parameter: str) -> str:
    name, equals, _ = parameter.partition("=")
    if equals and name.lower() in SECRET_PARAMETERS:
        return f"{name}={HIDDEN}"
    return parameter
