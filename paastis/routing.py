"""From a ``Host`` header to an app key, refusing anything that is not a plain hostname."""

from __future__ import annotations

import ipaddress
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # routes imports this module
    from .routes import Routes

LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOST_RE = re.compile(rf"^({LABEL})((?:\.{LABEL})*)\.?(?::(\d{{1,5}}))?$")
APP_KEY_RE = re.compile(rf"^{LABEL}$")


# Host names that name a machine, never an app: requests to them carry no app key.
MACHINE_NAMES = {"localhost", "localhost.localdomain"}
IPV6_HOST_RE = re.compile(r"^\[([0-9A-Fa-f:.]+)\](?::\d{1,5})?$")


class BadHost(ValueError):
    """The Host header is missing or is not ``label(.label)*[:port]``."""


class NoAppKey(ValueError):
    """The Host names the machine (``localhost``, an IP address), not an app behind paastis."""

    def __init__(self, host: str):
        self.host = host
        super().__init__(f"no app in Host {host!r}")


def app_key_from_host(host: str | None) -> str:
    """The first DNS label, lower-cased: ``demo.proxy.example.com`` and ``demo.localhost:3000`` give ``demo``."""
    if not host:
        raise BadHost("missing Host header")
    if _names_the_machine(host):
        raise NoAppKey(host)
    match = HOST_RE.match(host)
    if not match or len(host) > 260:
        raise BadHost("Host header is not a valid hostname")
    port = match.group(3)
    if port is not None and not 0 < int(port) < 65536:
        raise BadHost("Host header has an invalid port")
    return match.group(1).lower()


def host_name(host: str | None) -> str:
    """The Host's name, lower-cased, without port or final dot (``Shop.Client.test.:8080`` gives ``shop.client.test``).

    Raises :class:`BadHost` for anything that is not ``label(.label)*[:port]``; a Host naming the
    machine (``localhost``, an IP address) gives its name too, routes may not name it.
    """
    if not host:
        raise BadHost("missing Host header")
    match = HOST_RE.match(host)
    if not match or len(host) > 260:
        if _names_the_machine(host):
            raise NoAppKey(host)
        raise BadHost("Host header is not a valid hostname")
    return (match.group(1) + match.group(2)).lower()


class NotServed(ValueError):
    """The Host is under none of the domains paastis serves (``PAASTIS_DOMAINS``): never proxied."""

    def __init__(self, host: str, domains: tuple[str, ...]):
        self.host = host
        self.domains = domains
        served = ", ".join(f"<app>.{domain}" for domain in domains)
        super().__init__(f"Host {host!r} is not served here: paastis serves {served} (PAASTIS_DOMAINS)")


def route_key(host: str | None, domains: tuple[str, ...] = (), routes: Routes | None = None) -> tuple[str, bool]:
    """The app key a request's Host names, if paastis serves that Host, and whether a route named it.

    The one place that decides which hosts reach an app. A route (``routes:``) names full host
    names, served whatever the domains. Otherwise the first label is the app; with
    ``PAASTIS_DOMAINS`` (``domains``) only for ``<app>.<domain>`` of one of them:
    ``demo.attacker.example`` is :class:`NotServed`, so an app never receives a Host (nor an
    ``X-Forwarded-Host``) of someone else's choosing. Without it, any domain routes by its first
    label, as paastis always did.
    """
    name = host_name(host)
    routed = routes.app_for(name) if routes else None
    if routed is not None:
        return routed, True
    key = app_key_from_host(host)
    if domains and not served_under(name, key, domains):
        raise NotServed(name, domains)
    return key, False


def served_under(name: str, key: str, domains: tuple[str, ...]) -> bool:
    """``name`` is exactly ``<key>.<domain>`` for one of ``domains``."""
    return any(name == f"{key}.{domain}" for domain in domains)


def is_valid_app_key(key: str) -> bool:
    """App keys must be usable as a DNS label; anything else never reaches a provider or a hook."""
    return bool(APP_KEY_RE.match(key))


def _names_the_machine(host: str) -> bool:
    bracketed = IPV6_HOST_RE.match(host)
    name = bracketed.group(1) if bracketed else host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    name = name.rstrip(".").lower()
    if name in MACHINE_NAMES:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def routing_help(host: str, example_app: str) -> str:
    """What a request that names no app is told: how paastis routes, with an example that works here."""
    port = ""
    if not IPV6_HOST_RE.match(host) and host.count(":") == 1:
        port = ":" + host.rsplit(":", 1)[1]
    return (
        f"no app in Host {host!r}: paastis routes each request by the first label of its host name, "
        f"<app>.<your domain>. For the app {example_app!r}, use {example_app}.localhost{port} on this machine "
        f"(curl -H 'Host: {example_app}.localhost{port}' ...), or {example_app}.proxy.example.com once a "
        "wildcard DNS record *.proxy.example.com points at paastis"
    )
