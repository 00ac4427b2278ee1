"""What child processes may see, and what logs may print: paastis's secrets stay in paastis.

Local apps and hooks are not paastis: a hook that runs ``env`` or an app that is compromised
must not learn the admin token, the secret key that signs dashboard sessions, the provider's
credentials or the URLs (with passwords) of Redis and PostgreSQL. So they get an explicit
environment: a small documented base (:data:`BASE_VARIABLES`), the ``PAASTIS_*`` variables
that describe their app and occasion, and what the operator names on purpose (an app's
``env:``, ``hooks_env:``, ``HOOKS_ENV_PASSTHROUGH``), never the rest of paastis's environment.
And whatever a child prints, or a driver says, is scrubbed of the secret values paastis knows.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from urllib.parse import unquote

# The documented base every child gets from paastis's own environment (docs/security.md).
BASE_VARIABLES = ("PATH", "HOME", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TZ", "USER", "LOGNAME", "SHELL", "TMPDIR")
# Variables whose values are secrets: never given to a child unless named on purpose, never logged.
SECRET_VARIABLE = re.compile(
    r"ROUTING_SYSTEM_API_TOKEN|PAASTIS_SECRET_KEY|DATABASE_URL|\w*REDIS_URL|"
    r"PROVIDER_\w*(TOKEN|SECRET|KEY|PASSWORD)|\w*(PASSWORD|SECRET|API_TOKEN|API_KEY)\w*"
)
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MASK = "***"
MIN_SECRET = 4  # shorter values would redact half of every line; they are no secret anyway
URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:)(?P<password>[^@\s/]+)(?=@)")


def is_secret_name(name: str) -> bool:
    return bool(SECRET_VARIABLE.fullmatch(name))


def secret_values(environ: Mapping[str, str]) -> tuple[str, ...]:
    """The values of secret variables, and the passwords inside secret URLs, longest first."""
    found: set[str] = set()
    for name, raw in environ.items():
        value = (raw or "").strip()
        if not is_secret_name(name) or len(value) < MIN_SECRET:
            continue
        found.add(value)
        found.update(url_secrets(value))
    return tuple(sorted(found, key=len, reverse=True))


def url_secrets(url: str) -> set[str]:
    """What of a URL must never be printed: the URL itself, its password, as written and decoded."""
    found = {url} if len(url) >= MIN_SECRET else set()
    password = url_password(url)
    if password and len(password) >= MIN_SECRET:
        found.update({password, unquote(password)})
    return found


def url_password(url: str) -> str | None:
    """The password of ``scheme://user:password@host`` as written, or None; lenient, for malformed URLs too.

    A URL a driver refuses (a space in its password, a bad port) must still have its password
    known, so that the driver's error quoting it can be masked.
    """
    rest = url.split("://", 1)[1] if "://" in url else url
    userinfo, at, _ = rest.split("?", 1)[0].rpartition("@")
    if not at or ":" not in userinfo:
        return None
    return userinfo.split(":", 1)[1] or None


def mask_url(url: str | None) -> str | None:
    """``redis://user:***@host:6379/0``: a URL fit to print (the password, if any, masked)."""
    if url is None:
        return None
    password = url_password(url)
    return url.replace(f":{password}@", f":{MASK}@", 1) if password else url


def mask_passwords(text: str) -> str:
    """Every ``scheme://user:password@`` in ``text`` with its password masked (driver errors quote URLs)."""
    return URL_PASSWORD.sub(lambda m: m.group("head") + MASK, text)


class Redactor:
    """Replaces every known secret value in a line of text; one per instance, built from its settings."""

    def __init__(self, values: Iterable[str]):
        self.values = tuple(sorted({v for v in values if len(v) >= MIN_SECRET}, key=len, reverse=True))

    @classmethod
    def of(cls, environ: Mapping[str, str]) -> Redactor:
        return cls(secret_values(environ))

    def __call__(self, text: str) -> str:
        for value in self.values:
            if value in text:
                text = text.replace(value, MASK)
        return mask_passwords(text)


def base_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The documented base (PATH, HOME, LANG, TZ…) from paastis's own process environment."""
    source = os.environ if environ is None else environ
    return {name: source[name] for name in BASE_VARIABLES if source.get(name)}


def passthrough(names: Iterable[str], environ: Mapping[str, str]) -> dict[str, str]:
    """The variables named on purpose (``HOOKS_ENV_PASSTHROUGH``), those that are set."""
    return {name: environ[name] for name in names if environ.get(name) is not None}
