"""Providers: where apps live and how to start and stop them."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from ..config import Settings
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

MODULES = {
    "local": "local:LocalProvider",
    "scalingo": "scalingo:ScalingoProvider",
    "heroku": "heroku:HerokuProvider",
    "clever-cloud": "clever_cloud:CleverCloudProvider",
}


def build_provider(settings: Settings, config: dict, metrics: Metrics | None, redis_link: object = None) -> Provider:
    """Instantiate the provider named by ``PROVIDER_NAME`` (only its module is imported); it validates its settings.

    ``redis_link`` is the instance's :class:`~paastis.redis_link.RedisLink`, if it uses Redis:
    a provider that shares its API budget across processes counts calls through it.
    """
    module_name, class_name = MODULES[settings.provider_name].split(":")
    module = import_module(f"{__name__}.{module_name}")
    return getattr(module, class_name).from_settings(settings, config, metrics, redis_link=redis_link)
