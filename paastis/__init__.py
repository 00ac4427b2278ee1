"""paastis: a reverse proxy that puts idle PaaS apps to sleep and wakes them on the first request.

The package itself stays light on purpose: gunicorn's master imports ``paastis.config`` and
``paastis.worker``, and that must not load Flask, requests and the whole app into the master
(an idle instance would weigh about 15 MB more). ``create_app`` and the object graph live in
:mod:`paastis.wiring`, loaded on first use by ``from paastis import create_app``.
"""

from __future__ import annotations

from importlib import import_module
from importlib.util import find_spec
from types import ModuleType
from typing import TYPE_CHECKING, Any

from .config import ConfigError, Settings

if TYPE_CHECKING:
    from .wiring import Paastis, build_event_store, build_redis_link, build_registry, create_app

__all__ = [
    "ConfigError",
    "Paastis",
    "Settings",
    "build_event_store",
    "build_redis_link",
    "build_registry",
    "create_app",
]


def __getattr__(name: str) -> Any:
    """``from paastis import create_app`` (or any other name of :mod:`paastis.wiring`) loads the wiring then."""
    if name.startswith("__") or find_spec(f"{__name__}.{name}") is not None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")  # a submodule: imported as such
    value = getattr(import_module(".wiring", __name__), name, None)
    if value is None or isinstance(value, ModuleType):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return value
