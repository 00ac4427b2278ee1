"""Prometheus metrics, one collector registry per app instance (no global state)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from .providers.base import AppInfo


class Metrics:
    def __init__(self, default_provider: str = "") -> None:
        """``default_provider``: the ``provider`` label of an app that carries no account (one provider)."""
        self.default_provider = default_provider
        # The provider of an app known by its key alone (WebSockets): set by the wiring, from the directory.
        self.provider_of_key: Callable[[str], str] = lambda key: self.default_provider
        self.registry = CollectorRegistry()
        r = self.registry
        self.proxied_requests = Counter(
            "paastis_proxied_requests",
            "Requests answered for apps, by app and status",
            ["app", "status", "provider"],
            registry=r,
        )
        self.wakes = Counter(
            "paastis_wakes", "App starts, by app and outcome", ["app", "outcome", "provider"], registry=r
        )
        self.wake_duration = Histogram(
            "paastis_wake_duration_seconds",
            "Time from start request to app ready",
            ["app", "provider"],
            buckets=(0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120),
            registry=r,
        )
        self.idle_stops = Counter("paastis_idle_stops", "Apps stopped for idleness", ["app", "provider"], registry=r)
        self.provider_calls = Counter(
            "paastis_provider_api_calls",
            "Provider API calls, by provider, operation and outcome",
            ["provider", "operation", "outcome"],
            registry=r,
        )
        self.provider_calls_by_class = Counter(
            "paastis_provider_calls",
            "Provider API calls let through by the account's scheduler, by provider and class "
            "(wake, operator, stop, background)",
            ["provider", "class"],
            registry=r,
        )
        self.provider_budget_remaining = Gauge(
            "paastis_provider_budget_remaining",
            "Provider API calls that could go now within the account's budget",
            ["provider"],
            registry=r,
        )
        self.hook_runs = Counter("paastis_hook_runs", "Hook runs, by hook and outcome", ["hook", "outcome"], registry=r)
        self.registry_size = Gauge("paastis_registry_size", "Apps in the registry", registry=r)
        self.websockets_open = Gauge(
            "paastis_websockets_open",
            "Upgraded connections (WebSockets) open here, by app",
            ["app", "provider"],
            registry=r,
        )
        self.last_reload_successful = Gauge(
            "paastis_config_last_reload_successful",
            "0 when the last configuration reload was refused (paastis serves the previous one), else 1",
            registry=r,
        )
        self.last_reload_successful.set(1)
        self.leader = Gauge("paastis_leader", "1 while this worker holds the supervisor lock", registry=r)
        self.passive_requests = Counter(
            "paastis_passive_requests",
            "Requests from passive visitors (monitors, crawlers, passive paths), by app and outcome",
            ["app", "outcome", "provider"],
            registry=r,
        )
        self.idle_check_duration = Histogram(
            "paastis_idle_check_duration_seconds",
            "Duration of one idle check: the provider listing and the decisions (stops run after, concurrently)",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
            registry=r,
        )
        self.idle_check_listings = Counter(
            "paastis_idle_check_listings",
            "Idle checks that listed the provider (listed) or decided from the last list while stops "
            "spent a short API budget (skipped)",
            ["outcome"],
            registry=r,
        )
        self.idle_check_apps = Gauge(
            "paastis_idle_check_apps",
            "Apps seen by the last idle check, by state: listed, running, idle, stopping (queued or under way)",
            ["state"],
            registry=r,
        )

        self.events_spooled = Gauge(
            "paastis_events_spooled", "Events waiting in the spool for the event store to answer", registry=r
        )
        self.events_dropped = Counter(
            "paastis_events_dropped", "Events dropped because the spool was full (EVENTS_SPOOL_MAX)", registry=r
        )
        self.queued_requests = Gauge(
            "paastis_queued_requests",
            "Requests waiting in their app's queue for a thread (this worker), by app",
            ["app", "provider"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "paastis_queue_wait_seconds",
            "Time an app request waited for a thread (0 when one was free)",
            buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
            registry=r,
        )
        self.refused_requests = Counter(
            "paastis_refused_requests",
            "Requests refused with 503, by reason: queue_timeout, queue_full, max_websockets, "
            "max_websockets_per_client",
            ["reason"],
            registry=r,
        )

    def provider_of(self, app: AppInfo) -> str:
        """The ``provider`` label of an app's series: its account's name."""
        return app.provider or self.default_provider

    def provider_call(self, provider: str, operation: str, outcome: str) -> None:
        self.provider_calls.labels(provider, operation, outcome).inc()

    def hook_result(self, hook: str, ok: bool) -> None:
        self.hook_runs.labels(hook, "success" if ok else "failure").inc()

    def forget_apps(self, gone: Callable[[str], bool]) -> int:
        """Drop every label set of the apps that are ``gone``: review apps come and go, their series must not stay.

        prometheus_client offers ``remove`` but no public list of label sets, hence ``_metrics``
        (stable across its releases); returns how many label sets were dropped.
        """
        removed = 0
        for metric in vars(self).values():
            if not isinstance(metric, MetricWrapperBase) or "app" not in metric._labelnames:
                continue
            index = metric._labelnames.index("app")
            for labels in list(metric._metrics):
                if gone(labels[index]):
                    metric.remove(*labels)
                    removed += 1
        return removed

    def render(self) -> bytes:
        return generate_latest(self.registry)
