"""Providers: where apps live and how to start and stop them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import Settings
from .accounts import Account, Accounts, ProviderSpec, build_accounts, read_specs
from .base import (
    FAILED,
    RUNNING,
    STARTING,
    STOPPED,
    UNKNOWN,
    AppInfo,
    AppNotFound,
    Provider,
    ProviderAuthError,
    ProviderError,
    ProviderTimeout,
)

if TYPE_CHECKING:  # prometheus_client is not needed to build a provider (gunicorn's master checks one)
    from ..metrics import Metrics

__all__ = [
    "Account",
    "Accounts",
    "ProviderSpec",
    "account_of",
    "read_specs",
    "FAILED",
    "RUNNING",
    "STARTING",
    "STOPPED",
    "UNKNOWN",
    "AppInfo",
    "AppNotFound",
    "Provider",
    "ProviderAuthError",
    "ProviderError",
    "ProviderTimeout",
    "build_provider",
]


def build_provider(settings: Settings, config: dict, metrics: Metrics | None, redis_link: object = None) -> Accounts:
    """Every account of this instance (``providers:`` in paastis.yml, else the one of ``PROVIDER_NAME``).

    Only the modules of the types in use are imported; each provider validates its settings.
    ``redis_link`` is the instance's :class:`~paastis.redis_link.RedisLink`, if it uses Redis:
    a provider that shares its API budget across processes counts calls through it.
    """
    return build_accounts(read_specs(settings, config), config, metrics, redis_link)


def account_of(provider: Provider, app: AppInfo) -> Provider:
    """The provider that serves ``app``: its account among several, else ``provider`` itself."""
    of = getattr(provider, "of", None)
    return of(app) if of is not None else provider
