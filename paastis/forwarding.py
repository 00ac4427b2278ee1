"""Who may tell paastis where a request came from: the fronts in ``FORWARDED_ALLOW_IPS``, nobody else.

``X-Forwarded-For``, ``-Proto``, ``-Host``, ``-Port``, ``Forwarded`` and ``X-Real-IP`` are what a
front proxy (a PaaS router, nginx) says about the client. From anyone else they are the client
talking about itself: an app that builds links from them (password resets) could be fed an
attacker's domain, and a throttle keyed on them could be dodged. So paastis believes them, and
passes them on, only from a trusted front, using gunicorn's own setting (``FORWARDED_ALLOW_IPS``,
default ``127.0.0.1,::1``), which also decides whether gunicorn believes ``X-Forwarded-Proto``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

# What fronts say about the client; from an untrusted peer these are dropped, or replaced by what paastis saw.
FORWARDING_HEADERS = frozenset(
    {
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-forwarded-ssl",
        "x-forwarded-protocol",
        "x-forwarded-scheme",
        "x-forwarded-server",
        "x-real-ip",
    }
)


class TrustedFronts:
    """The addresses and networks of ``FORWARDED_ALLOW_IPS`` (``*``: every peer is a trusted front)."""

    def __init__(self, entries: Iterable[str]):
        entries = tuple(entries)
        self.any = "*" in entries
        self.networks = tuple(ipaddress.ip_network(entry, strict=False) for entry in entries if entry != "*")

    def trusts(self, address: str | None) -> bool:
        """A peer without an IP address (a UNIX socket) is trusted, as gunicorn does."""
        if self.any or not address:
            return True
        try:
            ip = ipaddress.ip_address(address.strip("[]"))
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.networks)

    def trusts_peer(self, environ: Mapping[str, Any]) -> bool:
        return self.trusts(environ.get("REMOTE_ADDR"))

    def client_address(self, environ: Mapping[str, Any]) -> str:
        """The client's address: the peer's, or, from a trusted front, the nearest untrusted hop it names.

        ``X-Forwarded-For`` is read from the right (the hops nearest paastis, which fronts append)
        past the trusted ones, so a client cannot pick its address by writing the left of it. With
        ``*``, the rightmost hop is the one the front itself saw.
        """
        peer = str(environ.get("REMOTE_ADDR") or "")
        if not self.trusts(peer):
            return peer
        hops = [hop.strip() for hop in str(environ.get("HTTP_X_FORWARDED_FOR", "")).split(",") if hop.strip()]
        if not hops:
            return peer or "-"
        if self.any:
            return hops[-1]
        for hop in reversed(hops):
            if not self.trusts(hop):
                return hop
        return hops[0]
