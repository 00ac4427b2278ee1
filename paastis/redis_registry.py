"""The registry in Redis, shared by every worker of every paastis instance.

Keys (all under ``REGISTRY_REDIS_PREFIX``, nothing else in the database is touched):

- ``registry:apps``: hash, app key -> :class:`RunningApp` as JSON (ISO 8601 dates with offset);
- ``registry:touched``: hash, app key -> JSON ISO date of a recent access (written at most
  about once a second per app and instance, only while the app is registered, and only if
  newer than the stored one: an instance flushing late never moves time backwards);
- ``registry:memos``: hash, app key -> JSON memo (outlives the app's stop);
- ``registry:inflight:<key>``: sorted set, one member per instance serving the app, scored
  by the wall-clock time its entry expires, so a crashed instance cannot pin an app awake;
  the set itself expires with its last entry, so apps that are gone leave nothing behind.

Memos of apps the provider no longer lists are dropped by the leader (:meth:`RedisRegistry.prune`).

The request path costs no Redis command at steady load. An instance *publishes* its
in-flight entry for an app when its first request begins (``ZADD`` then ``HGET`` in one
round trip), keeps it while requests run (renewed by a background flusher) and retires it
about a second after the last one ends, writing the last access first. The leader stops an
app only after unregistering it *and then* finding no in-flight entry (see
``Lifecycle._stop``). Redis runs commands one at a time, so either the leader sees our
entry and abandons the stop, or our ``HGET`` sees the app gone and the request wakes it
again. Hence, while our entry is published, the app as we last read it is still registered
unless the provider was found to have stopped it (then the upstream refuses connections
and the proxy wakes it): :meth:`RedisRegistry.get` answers such apps from memory.

When Redis is unreachable each instance keeps serving from its local view (what it last
read or wrote), logs the outage once, and a background thread reconnects; the leader's
next idle check re-registers the running apps a restarted Redis forgot.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import redis

from .redis_link import RedisLink
from .registry import RunningApp, utcnow

log = logging.getLogger(__name__)

T = TypeVar("T")

FLUSH_INTERVAL = 1.0  # seconds between writes of last accesses and in-flight renewals
IN_FLIGHT_TTL = 30.0  # seconds an in-flight entry lives without renewal (a crashed instance's fades)
LINGER = 1.0  # seconds an in-flight entry stays after the last request, so a steady flow never rewrites it

# Record an access only for an app that is still registered (a late flush after a stop must
# not leave a stray field behind), and only if it is newer than the one stored: instances
# flush on their own schedules, and time must never move backwards. Dates are written at a
# fixed width (UTC, microseconds), so comparing the strings compares the times.
TOUCH_SCRIPT = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  local stored = redis.call('HGET', KEYS[2], ARGV[1])
  if not stored or stored < ARGV[2] then
    redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
    return 1
  end
end
return 0
"""


@dataclass
class _Activity:
    """This instance's use of one app, told to Redis lazily."""

    count: int = 0  # requests in flight here
    published_until: float = 0.0  # wall-clock expiry of our in-flight entry in Redis (0: none)
    last_end: float = 0.0  # monotonic time the last request ended
    touched_at: datetime | None = None  # an access not yet written to Redis


class RedisRegistry:
    """The :class:`~paastis.registry.Registry` protocol over Redis, with a local view for outages."""

    def __init__(
        self,
        link: RedisLink,
        *,
        in_flight_ttl: float = IN_FLIGHT_TTL,
        flush_interval: float = FLUSH_INTERVAL,
        linger: float = LINGER,
    ):
        self.link = link
        self.client = link.client
        self.in_flight_ttl = in_flight_ttl
        self.flush_interval = flush_interval
        self.linger = linger
        self.apps_key = link.key("registry", "apps")
        self.touched_key = link.key("registry", "touched")
        self.memos_key = link.key("registry", "memos")
        self._touch = self.client.register_script(TOUCH_SCRIPT)
        self._local: dict[str, RunningApp] = {}
        self._memos: dict[str, dict[str, Any]] = {}
        self._activity: dict[str, _Activity] = {}
        self._lock = threading.Lock()  # guards the dicts above
        self._publish_lock = threading.Lock()  # keeps our ZADDs and ZREMs in order in Redis
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        link.on_reconnect(self._forget_publications)

    def in_flight_key(self, key: str) -> str:
        return self.link.key("registry", "inflight", key)

    # -- running apps -----------------------------------------------------------

    def get(self, key: str) -> RunningApp | None:
        with self._lock:
            local = self._local.get(key)
            activity = self._activity.get(key)
            if local is not None and activity is not None and activity.published_until > time.time():
                return local  # still registered: see the module docstring
        return self._call(lambda: self._read(key), lambda: self._local.get(key))

    def all(self) -> list[RunningApp]:
        return self._call(self._read_all, lambda: list(self._local.values()))

    def register(self, app: RunningApp) -> None:
        with self._lock:
            self._local[app.key] = app
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.apps_key, app.key, json.dumps(app.to_json()))
        pipe.hset(self.touched_key, app.key, _date(app.last_accessed_at))
        self._call(pipe.execute, lambda: None)

    def unregister(self, key: str) -> None:
        with self._lock:
            self._local.pop(key, None)
        pipe = self.client.pipeline(transaction=True)
        pipe.hdel(self.apps_key, key)
        pipe.hdel(self.touched_key, key)
        self._call(pipe.execute, lambda: None)

    def touch(self, key: str) -> None:
        """Note an access; the flusher writes it within a second (one write per app and second)."""
        now = utcnow()
        with self._lock:
            self._activity.setdefault(key, _Activity()).touched_at = now
            self._touch_locally(key, now)
        self._ensure_thread()

    def clear(self) -> None:
        """Forget every running app (memos stay, as in the in-memory registry)."""
        with self._lock:
            self._local.clear()
        self._call(lambda: self.client.delete(self.apps_key, self.touched_key), lambda: 0)

    # -- requests in flight -------------------------------------------------------

    def begin_request(self, key: str) -> object:
        with self._lock:
            activity = self._activity.setdefault(key, _Activity())
            activity.count += 1
            publish = activity.published_until <= time.time()
        if publish and not self.link.down:
            self._publish([key], renew=False)
        self._ensure_thread()
        return key

    def end_request(self, key: str, token: object, accessed_at: datetime | None = None) -> None:
        when = accessed_at or utcnow()
        with self._lock:
            activity = self._activity.setdefault(key, _Activity())
            activity.count = max(0, activity.count - 1)
            activity.last_end = time.monotonic()
            activity.touched_at = max(when, activity.touched_at or when)
            self._touch_locally(key, when)

    def in_flight(self, key: str) -> int:
        """Requests in flight here, plus one per other instance serving ``key`` right now.

        Another instance's entry lingers about a second after its last request ends.
        """
        with self._lock:
            activity = self._activity.get(key)
            here = activity.count if activity else 0
        return here + self._call(lambda: self._count_others(key), lambda: 0)

    def in_flight_many(self, keys: list[str]) -> dict[str, int]:
        """:meth:`in_flight` for many apps in one round trip (the idle check asks for all its candidates)."""
        with self._lock:
            here = {key: (a.count if (a := self._activity.get(key)) else 0) for key in keys}
        others = self._call(lambda: self._count_others_many(keys), lambda: dict.fromkeys(keys, 0))
        return {key: here[key] + others[key] for key in keys}

    # -- memos ------------------------------------------------------------------

    def remember(self, key: str, memo: dict[str, Any]) -> None:
        with self._lock:
            self._memos[key] = memo
        self._call(lambda: self.client.hset(self.memos_key, key, json.dumps(memo)), lambda: 0)

    def recall(self, key: str) -> dict[str, Any] | None:
        def read() -> dict[str, Any] | None:
            raw = self.client.hget(self.memos_key, key)
            return json.loads(raw) if raw is not None else None

        return self._call(read, lambda: self._memos.get(key))

    def prune(self, known: Callable[[str], bool], shared: bool) -> int:
        """Drop what this instance keeps of apps the provider no longer has, and (``shared``: the
        leader) their memos in Redis; how many memos were dropped."""
        with self._lock:
            for cache in (self._local, self._memos):
                for key in [key for key in cache if not known(key)]:
                    del cache[key]
        if not shared:
            return 0

        def drop() -> int:
            gone = [key for key in self.client.hkeys(self.memos_key) if not known(key)]
            if gone:
                self.client.hdel(self.memos_key, *gone)
            return len(gone)

        return self._call(drop, lambda: 0)

    # -- health and shutdown ------------------------------------------------------

    def healthy(self) -> bool:
        """Redis answers a PING now (this also ends an outage early)."""
        self._ensure_thread()
        return self.link.probe()

    def close(self) -> None:
        """Write what is pending and withdraw our in-flight entries, then disconnect."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if not self.link.down:
            with self._lock:
                for activity in self._activity.values():
                    activity.count = 0
                    activity.last_end = 0.0
            self.flush()
        self.link.close()

    # -- the background flusher ---------------------------------------------------

    def flush(self) -> None:
        """Write last accesses, then renew and retire in-flight entries (in this order: an entry
        is withdrawn only once the access that ended it is recorded)."""
        now = time.time()
        with self._lock:
            touches = self._take_touches()
            renew = [
                k for k, a in self._activity.items() if a.count > 0 and a.published_until - now < self.in_flight_ttl / 2
            ]
        if touches:
            try:
                self._write_touches(touches)
            except redis.RedisError as error:
                self._restore_touches(touches)
                self.link.failed(error)
                return
        if renew:
            self._publish(renew)
        self._retire()

    def _flush_loop(self) -> None:
        while not self._stopping.wait(self.flush_interval):
            if self.link.down and not self.link.probe():
                continue
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - the flusher must outlive any surprise
                log.exception("registry: flush failed")

    def _ensure_thread(self) -> None:
        if self._thread is None and not self._stopping.is_set():
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._flush_loop, name="paastis-registry", daemon=True)
                    self._thread.start()

    # -- internals ----------------------------------------------------------------

    def _call(self, operation: Callable[[], T], fallback: Callable[[], T]) -> T:
        """Run a Redis operation, or answer from the local view while Redis is down."""
        if self.link.down:
            return fallback()
        try:
            return operation()
        except redis.RedisError as error:
            self.link.failed(error)
            self._ensure_thread()  # its loop reconnects
            return fallback()

    def _read(self, key: str) -> RunningApp | None:
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(self.apps_key, key)
        pipe.hget(self.touched_key, key)
        raw, touched = pipe.execute()
        app = _decode(key, raw, touched)
        with self._lock:
            self._remember_locally(key, app)
        return app

    def _read_all(self) -> list[RunningApp]:
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self.apps_key)
        pipe.hgetall(self.touched_key)
        raws, touched = pipe.execute()
        apps = [app for key, raw in raws.items() if (app := _decode(key, raw, touched.get(key)))]
        with self._lock:
            self._local = {app.key: app for app in apps}
        return apps

    def _count_others(self, key: str) -> int:
        return self._count_others_many([key])[key]

    def _count_others_many(self, keys: list[str]) -> dict[str, int]:
        now = time.time()
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.zremrangebyscore(self.in_flight_key(key), "-inf", now)  # crashed instances' entries
            pipe.zrangebyscore(self.in_flight_key(key), now, "+inf")
        results = pipe.execute() if keys else []
        return {key: sum(1 for m in results[2 * i + 1] if m != self.link.instance) for i, key in enumerate(keys)}

    def _publish(self, keys: list[str], renew: bool = True) -> None:
        """Add or renew our in-flight entries, and read the apps back after (one round trip).

        Requests that began together wait here for the first one's entry rather than each
        writing their own: its ZADD is done before they go on, which is all they need.
        """
        with self._publish_lock:
            now = time.time()
            if not renew:
                with self._lock:
                    keys = [key for key in keys if self._activity.setdefault(key, _Activity()).published_until <= now]
                if not keys:
                    return
            expiry = now + self.in_flight_ttl
            pipe = self.client.pipeline(transaction=False)
            lifetime_ms = int(self.in_flight_ttl * 1000) + 1000  # the set goes once its last entry would have
            for key in keys:
                pipe.zadd(self.in_flight_key(key), {self.link.instance: expiry})
                pipe.pexpire(self.in_flight_key(key), lifetime_ms)
                pipe.hget(self.apps_key, key)
                pipe.hget(self.touched_key, key)
            try:
                results = pipe.execute()
            except redis.RedisError as error:
                self.link.failed(error)
                return
            with self._lock:
                for index, key in enumerate(keys):
                    raw, touched = results[4 * index + 2], results[4 * index + 3]
                    self._remember_locally(key, _decode(key, raw, touched))
                    self._activity.setdefault(key, _Activity()).published_until = expiry

    def _retire(self) -> None:
        """Withdraw the entries of apps no request here has used for ``linger`` seconds."""
        with self._publish_lock:
            now = time.monotonic()
            with self._lock:
                retire = [
                    key
                    for key, a in self._activity.items()
                    if a.count == 0 and a.published_until > 0 and now - a.last_end >= self.linger
                ]
                for key in retire:
                    self._activity[key].published_until = 0.0
                for key in [k for k, a in self._activity.items() if a.count == 0 and not a.published_until]:
                    if self._activity[key].touched_at is None:
                        del self._activity[key]
            if not retire:
                return
            pipe = self.client.pipeline(transaction=False)
            for key in retire:
                pipe.zrem(self.in_flight_key(key), self.link.instance)
            try:
                pipe.execute()
            except redis.RedisError as error:
                self.link.failed(error)  # the entries expire by themselves

    def _write_touches(self, touches: dict[str, datetime]) -> None:
        """EVALSHA in one pipeline (redis-py would add a SCRIPT EXISTS to each pipeline using a Script)."""
        for attempt in (1, 2):
            pipe = self.client.pipeline(transaction=False)
            for key, when in touches.items():
                pipe.evalsha(self._touch.sha, 2, self.apps_key, self.touched_key, key, _date(when))
            try:
                pipe.execute()
                return
            except redis.exceptions.NoScriptError:
                if attempt == 2:
                    raise
                self.client.script_load(TOUCH_SCRIPT)  # a restarted Redis forgot it

    def _take_touches(self) -> dict[str, datetime]:
        touches = {}
        for key, activity in self._activity.items():
            if activity.touched_at is not None:
                touches[key] = activity.touched_at
                activity.touched_at = None
        return touches

    def _restore_touches(self, touches: dict[str, datetime]) -> None:
        with self._lock:
            for key, when in touches.items():
                activity = self._activity.setdefault(key, _Activity())
                if activity.touched_at is None:
                    activity.touched_at = when

    def _forget_publications(self) -> None:
        """After an outage Redis may have lost our entries: publish again before trusting memory."""
        with self._lock:
            for activity in self._activity.values():
                activity.published_until = 0.0

    def _remember_locally(self, key: str, app: RunningApp | None) -> None:
        if app is None:
            self._local.pop(key, None)
        else:
            self._local[key] = app

    def _touch_locally(self, key: str, now: datetime) -> None:
        app = self._local.get(key)
        if app is not None and now > app.last_accessed_at:
            self._local[key] = replace(app, last_accessed_at=now)


def _date(when: datetime) -> str:
    """Fixed width, so that Redis can compare two dates as strings (see ``TOUCH_SCRIPT``)."""
    return json.dumps(when.astimezone(UTC).isoformat(timespec="microseconds"))


def _decode(key: str, raw: str | None, touched: str | None) -> RunningApp | None:
    """The app as stored, with the latest recorded access; unreadable values count as absent."""
    if raw is None:
        return None
    try:
        app = RunningApp.from_json(json.loads(raw))
        if touched is not None:
            last = datetime.fromisoformat(json.loads(touched))
            if last > app.last_accessed_at:
                app = replace(app, last_accessed_at=last)
    except (ValueError, KeyError, TypeError) as error:
        log.warning("registry: ignoring unreadable entry for %s: %s", key, error)
        return None
    return app
