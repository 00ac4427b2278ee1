"""The object graph of one paastis instance: ``create_app`` wires it and keeps it in ``app.extensions``.

``from paastis import create_app`` reaches this module (see :mod:`paastis`), which is only
loaded when an app is built: gunicorn's master never imports Flask, requests and the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flask import Flask
from gunicorn.http.errors import NoMoreData, ParseException

from . import logs, startup
from .cli import cli
from .config import ConfigError, Settings
from .dashboard import Dashboard, init_dashboard
from .directories import SeveralDirectories
from .directory import Directory
from .dry_run import DryRun
from .events import EventStore, InMemoryEventStore
from .forwarding import TrustedFronts
from .hooks import HookRunner, hook_environment, parse_hooks_env
from .lifecycle import Lifecycle
from .marks import InMemoryMarks, Marks, RedisMarks
from .metrics import Metrics
from .passive import PassiveVisitors
from .places import LocalPlaces
from .providers import Accounts, build_accounts, read_specs
from .proxy import Proxy, client_body_failure
from .proxy import bp as proxy_blueprint
from .registry import InMemoryRegistry, Registry
from .relay import Relay
from .routes import Routes
from .rules import Rules, load_config_file
from .savings import Savings
from .schedule_runner import ScheduleRunner
from .secrecy import Redactor, base_environment, passthrough
from .sessions import Sessions, build_sessions
from .sleep_gate import SleepGate
from .supervisor import Leadership, SoleLeader, Supervisor
from .system_api import bp as system_api_blueprint
from .throttle import TokenThrottle
from .upgrade import Upgrades
from .waiting import WaitingRoom, duration
from .wake_times import WakeTimes
from .worker import ClientBodyTimeout

if TYPE_CHECKING:  # redis-py is only imported by instances that use Redis
    from .lifecycle.waker import ClusterLock
    from .redis_link import RedisLink

__all__ = ["ConfigError", "Paastis", "Settings", "create_app"]

log = logging.getLogger("paastis")

# What gunicorn raises into a route reading a broken request body (paastis.worker adds the silence timeout).
CLIENT_BODY_ERRORS = (ParseException, NoMoreData, ClientBodyTimeout)


@dataclass
class Paastis:
    """The object graph of one paastis instance, kept in ``app.extensions["paastis"]``."""

    settings: Settings
    metrics: Metrics
    rules: Rules
    provider: Accounts  # every account, as one provider that calls each app's own
    registry: Registry
    events: EventStore
    directory: Directory | SeveralDirectories
    lifecycle: Lifecycle
    supervisor: Supervisor
    proxy: Proxy
    upgrades: Upgrades
    waiting_room: WaitingRoom
    gate: SleepGate
    savings: Savings  # the dashboard calls savings.report(since, until, app)
    dashboard: Dashboard | None = None  # only with PAASTIS_DASHBOARD_HOST
    redis_link: RedisLink | None = None  # the one Redis connection state, shared by everything using Redis
    routes: Routes | None = None  # routes: in paastis.yml, looked at before first-label routing
    throttle: TokenThrottle = field(default_factory=TokenThrottle)  # one brake on guessing the admin token
    sessions: Sessions | None = None  # the dashboard's sessions, revocable (registry-side identity)

    def close(self) -> None:
        """Stop the supervisor and release sessions; tests build and close many instances."""
        self.upgrades.close()  # first: WebSockets get their Close frame (1001) at once, while the registry works
        self.supervisor.stop()
        self.proxy.close()
        self.lifecycle.close()
        self.directory.close()
        self.provider.close()
        self.registry.close()
        self.events.close()
        if self.redis_link is not None:
            self.redis_link.close()


def create_app(
    settings: Settings | None = None, *, start_supervisor: bool = False, config: dict[str, Any] | None = None
) -> Flask:
    """Wire one paastis instance.

    The supervisor thread is not started here: gunicorn starts it in each worker after
    fork (see ``gunicorn.conf.py``), and tests start it only when they need it. ``config``:
    ``paastis.yml`` as already read (a gunicorn worker gets its master's), else read here.
    """
    settings = settings or Settings.from_env()
    logs.configure(settings.log_level, settings.log_format)
    config = load_config_file(settings.config_file) if config is None else config
    specs = read_specs(settings, config)
    rules = Rules(settings, config.get("rules"), specs)
    metrics = Metrics(default_provider=specs[0].name)
    redis_link = build_redis_link(settings)
    provider = build_accounts(specs, config, metrics, redis_link)
    registry = build_registry(settings, redis_link)
    events = build_event_store(settings, redis_link, metrics)
    directory = build_directory(provider, rules, settings.directory_ttl)
    metrics.provider_of_key = lambda key: provider_of_key(directory, metrics, key)
    hooks = HookRunner(
        provider=provider.name,
        region=settings.env.get("PROVIDER_REGION"),
        timeout=settings.hooks_timeout,
        strict=settings.hooks_strict,
        on_result=metrics.hook_result,
        environment=hook_environment(
            base_environment(),
            parse_hooks_env(config, str(settings.config_file)),
            passthrough(settings.hooks_env_passthrough, settings.env.values),
        ),
        redact=redactor(settings, provider),
        accounts={a.name: (a.type, a.region) for a in provider} if provider.several else None,
    )
    marks = build_marks(registry)
    dry_run = DryRun(registry, events, marks) if settings.dry_run else None
    ca_bundle = settings.env.get("REQUESTS_CA_BUNDLE") or settings.env.get("CURL_CA_BUNDLE")
    places = LocalPlaces(settings.max_websockets, settings.max_websockets_per_client)  # shared: paastis.worker
    relay = Relay(registry, metrics, websocket_idle_timeout(settings, rules), settings.max_websockets, places)
    upgrades = Upgrades(relay, ca_bundle)
    leadership = build_leadership(settings, redis_link)
    lifecycle = Lifecycle(
        provider,
        registry,
        directory,
        rules,
        events,
        hooks,
        metrics,
        operation_timeout=provider.operation_timeout,
        timeout_of=provider.timeout_of,
        dry_run=dry_run,
        close_connections=upgrades.close_app,
        stop_concurrency=settings.stop_concurrency,
        leading=leadership.confirm,
        **({"cluster_lock": lock} if (lock := build_cluster_lock(settings, redis_link)) else {}),
    )
    savings = Savings(
        events,
        registry,
        rules,
        provider.first.type,
        settings.currency,
        settings.timezone,
        settings.dry_run,
        marks,
        accounts={account.name: account.type for account in provider},
        provider_of_key=metrics.provider_of_key,
    )
    metrics.registry.register(savings)  # paastis_app_asleep_seconds_total and friends, computed at scrape time
    runner = ScheduleRunner(lifecycle, provider, directory, rules, registry, marks)
    jobs = [("schedule", runner.tick), ("savings summary", savings.log_daily_summary)]
    if dry_run is not None:
        jobs.append(("dry run", dry_run.tick))
    supervisor = Supervisor(
        lifecycle, settings.checking_interval, leadership, metrics, jobs, cron=settings.checking_cron
    )
    ca_bundle = settings.env.get("REQUESTS_CA_BUNDLE") or settings.env.get("CURL_CA_BUNDLE")
    proxy = Proxy(
        metrics,
        lambda key: rules.policy(key).wake_strategy,
        ca_bundle,
        connect_timeout=settings.upstream_connect_timeout,
        read_timeout_of=lambda key: rules.policy(key).upstream_read_timeout,
        domains=settings.domains,
        trusted=TrustedFronts(settings.forwarded_allow_ips),
    )
    gate = SleepGate(rules, PassiveVisitors(settings.passive_user_agents), metrics, settings.dry_run)

    app = Flask(__name__)
    wake_times = WakeTimes(events)
    app.extensions["paastis"] = paastis = Paastis(
        settings,
        metrics,
        rules,
        provider,
        registry,
        events,
        directory,
        lifecycle,
        supervisor,
        proxy,
        upgrades,
        WaitingRoom(wake_times),
        gate,
        savings,
        redis_link=redis_link,
        routes=Routes(config.get("routes"), str(settings.config_file)),
        throttle=TokenThrottle(link=getattr(registry, "link", None)),
        sessions=build_sessions(settings.system_api_token, settings.secret_key, getattr(registry, "link", None)),
    )
    app.cli.add_command(cli)
    app.add_template_filter(duration)
    app.register_blueprint(proxy_blueprint)
    for error in CLIENT_BODY_ERRORS:
        app.register_error_handler(error, client_body_failure)
    if settings.system_api_enabled:
        app.register_blueprint(system_api_blueprint)
    if settings.dashboard_host:
        paastis.dashboard = init_dashboard(app, settings, wake_times, paastis.throttle)
    if start_supervisor:
        supervisor.start()
    listed = (
        tuple(app.key for app in provider.list_apps())
        if provider.first.type == "local" and not provider.several
        else None
    )
    startup.report(settings, rules, apps=listed)  # once per instance: under gunicorn the master already did
    log.debug("worker ready: provider=%s registry=%s", provider.name, settings.registry_type)
    return app


def redactor(settings: Settings, accounts: Accounts) -> Redactor:
    """Secrets never reach a hook's logged output: paastis's own, and those the accounts' ``*_env`` keys name."""
    named = [settings.env.values.get(name, "") for name in accounts.secret_variables]
    return Redactor([*Redactor.of(settings.env.values).values, *named])


def build_directory(accounts: Accounts, rules: Rules, ttl: float) -> Directory | SeveralDirectories:
    """One account: its directory, as always. Several: one each, asked as one (see :mod:`paastis.directories`)."""
    if accounts.several:
        return SeveralDirectories(accounts, rules, ttl)
    return Directory(accounts, rules, ttl)


def provider_of_key(directory: Directory | SeveralDirectories, metrics: Metrics, key: str) -> str:
    """The account of an app known by its key alone, from the cached listings (never a call)."""
    if isinstance(directory, SeveralDirectories):
        for member in directory.members.values():
            app = member.cached(key)
            if app is not None:
                return metrics.provider_of(app)
    return metrics.default_provider


def websocket_idle_timeout(settings: Settings, rules: Rules) -> Callable[[str], float]:
    """Seconds a quiet upgraded connection of an app still counts: WEBSOCKET_IDLE_TIMEOUT, else its max idle time."""
    if settings.websocket_idle_timeout is not None:
        fixed = settings.websocket_idle_timeout * 60
        return lambda key: fixed
    return lambda key: rules.policy(key).max_idle_time * 60


def build_redis_link(settings: Settings) -> RedisLink | None:
    """One connection state for everything that uses Redis (registry, locks, events, rate limit), if anything does."""
    if "redis" not in (settings.registry_type, settings.events_store_type):
        return None
    from .redis_link import RedisLink

    assert settings.redis_url is not None  # Settings refuses redis without a URL
    return RedisLink(settings.redis_url, settings.redis_prefix, settings.redis_socket_timeout)


def build_registry(settings: Settings, link: RedisLink | None = None) -> Registry:
    """In memory (one process), or in Redis (shared by every worker of every instance)."""
    if settings.registry_type != "redis":
        return InMemoryRegistry()
    from .redis_registry import RedisRegistry

    return RedisRegistry(link or build_redis_link(settings))


def build_marks(registry: Registry) -> Marks:
    """The leader's notes live where the registry lives (on its Redis link), so that a new leader reads them."""
    link = getattr(registry, "link", None)  # only the Redis registry has one
    return RedisMarks(link) if link is not None else InMemoryMarks()


def build_leadership(settings: Settings, link: RedisLink | None) -> Leadership:
    """Who runs the idle checks: the only process (in memory), or the holder of a lock in Redis."""
    if settings.registry_type != "redis" or link is None:
        return SoleLeader()
    from .leader import RedisLeadership

    return RedisLeadership(link, settings.supervisor_lock_ttl)


def build_cluster_lock(settings: Settings, link: RedisLink | None) -> ClusterLock | None:
    """Per-app locks across instances, when they share a Redis registry (else each instance is alone)."""
    if settings.registry_type != "redis" or link is None:
        return None
    from .leader import ClusterLocks

    return ClusterLocks(link, settings.cluster_lock_ttl)


def build_event_store(settings: Settings, link: RedisLink | None = None, metrics: Metrics | None = None) -> EventStore:
    """In memory, a Redis stream under the registry's prefix that every instance shares, or PostgreSQL.

    A shared store is wrapped in a spool (:mod:`paastis.spool`) when ``metrics`` is given (a wired
    instance): what it cannot take while it is down waits on disk, or in Redis for PostgreSQL.
    """
    if settings.events_store_type == "in-memory":
        return InMemoryEventStore(settings.events_max)
    if settings.events_store_type == "postgres":
        from .pg_events import PostgresEventStore  # psycopg is only imported by those who use it

        assert settings.database_url is not None  # Settings refuses postgres without a URL
        store: EventStore = PostgresEventStore(settings.database_url)
    else:
        from .redis_events import RedisEventStore

        own = link is None  # a store built alone (tests) has a link of its own, closed with it
        link = link or build_redis_link(settings)
        store = RedisEventStore(link, f"{settings.redis_prefix}events", settings.events_max, owns_link=own)
    if metrics is None:
        return store
    return build_spool(settings, store, link, metrics)


def build_spool(settings: Settings, store: EventStore, link: RedisLink | None, metrics: Metrics) -> EventStore:
    """The file under PAASTIS_STATE_DIR; before it, Redis when the store is PostgreSQL and Redis is there."""
    from .spool import FileSpool, RedisSpool, Spool, SpooledEventStore

    spools: list[Spool] = []
    if settings.events_store_type == "postgres" and link is not None:
        spools.append(RedisSpool(link))
    spools.append(FileSpool(settings.state_dir))
    return SpooledEventStore(store, spools, metrics, settings.events_spool_max)
