"""The one small interface every provider implements, and the errors it may raise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .scheduler import CallScheduler

RUNNING = "running"
STOPPED = "stopped"
STARTING = "starting"
FAILED = "failed"
UNKNOWN = "unknown"


@dataclass(frozen=True)
class AppInfo:
    """One app as the provider lists it.

    ``key`` is what clients put in front of the proxy's domain (the first Host label);
    ``name`` is the provider's own identifier for API calls. They differ for Clever
    Cloud (``app-<uuid>`` vs ``app_<uuid>``) and when a rule maps a key to an app.
    ``status`` is filled when the listing already tells it (saves one call per app).
    ``aliases`` are other host labels the app answers to (Clever Cloud: a slug of its
    name); the registry, rules and events only ever see ``key``.
    """

    key: str
    name: str
    upstream_url: str | None = None
    status: str | None = None
    region: str | None = None
    aliases: tuple[str, ...] = ()
    provider: str = ""  # the account that lists it (its name in providers:); stamped by the account


class ProviderError(Exception):
    """A provider call failed; ``status`` is the HTTP status the proxy should answer."""

    status = 502

    def __init__(self, provider: str, app: str | None, message: str):
        self.provider = provider
        self.app = app
        self.message = message
        where = f" for app {app!r}" if app else ""
        super().__init__(f"{provider}: {message}{where}")


class AppNotFound(ProviderError):
    """The provider does not know this app (any more)."""

    status = 404


class ProviderTimeout(ProviderError):
    """The operation's deadline came before the provider answered (see :mod:`paastis.deadlines`)."""

    status = 504


class ProviderAuthError(ProviderError):
    """Credentials were refused: retrying will not help, the operator must act."""


class Provider(Protocol):
    """What paastis needs from a platform; everything else is the lifecycle's business."""

    name: str
    poll_interval: float  # seconds between status calls while waking an app (its API budget decides)
    probe_upstream: bool  # after the platform says "running", probe the app's URL until its router lets it through
    # The account's API budget, spent by priority (paastis.providers.scheduler); None without an API.
    scheduler: CallScheduler | None

    def list_apps(self) -> list[AppInfo]:
        """Every app of the account, in one call or one paged sequence."""

    def status(self, app: AppInfo) -> str:
        """One of RUNNING, STOPPED, STARTING, FAILED, UNKNOWN."""

    def start(self, app: AppInfo, memo: dict | None) -> dict | None:
        """Ask the platform to start ``app``; ``memo`` is what :meth:`stop` returned for it.

        May return the memo of what now runs (e.g. the formation the platform answered with), so that
        the next stop need not read it again; None when the platform did not say.
        """

    def stop(self, app: AppInfo, memo: dict | None = None) -> dict | None:
        """Stop ``app``; return what is needed to start it exactly as it was (e.g. a formation).

        ``memo`` is what is known of what runs (remembered at the last start or stop), which a
        provider may trust to save the read it would otherwise make first. The stop need not
        be followed to its end: the next listing tells whether it happened.
        """

    def failure(self, app: AppInfo) -> str | None:
        """Why ``app`` is FAILED, when the platform can say more than the status (exit code, output)."""

    def abandon_start(self, app: AppInfo) -> str | None:
        """Undo what a start that failed or timed out left running; say what was done (for the event).

        PaaS providers leave the platform's own operation alone (a scale-up cannot be cancelled,
        and a second call could fight it); the idle check then stops the app once idle.
        """

    def upstream_url(self, app: AppInfo) -> str:
        """Base URL requests for ``app`` are sent to; never derived from request data."""

    def ready_path(self, app: AppInfo) -> str | None:
        """Path to probe for readiness once started, or None for "any non-router-error answer"."""

    def close(self) -> None:
        """Release sessions and threads."""
