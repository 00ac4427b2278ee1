"""From a ``Host`` header to an app key, refusing anything that is not a plain hostname."""

from __future__ import annotations

import re

LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOST_RE = re.compile(rf"^({LABEL})((?:\.{LABEL})*)\.?(?::(\d{{1,5}}))?$")
APP_KEY_RE = re.compile(rf"^{LABEL}$")


class BadHost(ValueError):
    """The Host header is missing or is not ``label(.label)*[:port]``."""


def app_key_from_host(host: str | None) -> str:
    """The first DNS label, lower-cased: ``demo.proxy.example.com`` and ``demo.localhost:3000`` give ``demo``."""
    if not host:
        raise BadHost("missing Host header")
    match = HOST_RE.match(host)
    if not match or len(host) > 260:
        raise BadHost("Host header is not a valid hostname")
    port = match.group(3)
    if port is not None and not 0 < int(port) < 65536:
        raise BadHost("Host header has an invalid port")
    return match.group(1).lower()


def is_valid_app_key(key: str) -> bool:
    """App keys must be usable as a DNS label; anything else never reaches a provider or a hook."""
    return bool(APP_KEY_RE.match(key))
