"""The registry in Redis, shared by every worker of every paastis instance.

Keys (all under ``REGISTRY_REDIS_PREFIX``, nothing else in the database is touched):

- ``registry:apps``: hash, app key -> :class:`RunningApp` as JSON (ISO 8601 dates with offset);
- ``registry:touched``: hash, app key -> JSON ISO date of a recent access (written at most
  about once a second per app and instance, only while the app is registered, and only if
  newer than the stored one: an instance flushing late never moves time backwards);
- ``registry:memos``: hash, app key -> JSON memo (outlives the app's stop);
- ``registry:inflight:<key>``: sorted set, one member per instance serving the app, scored
  by the time its entry expires *on Redis's own clock* (``TIME``, read inside the scripts),
  so hosts whose clocks disagree never hide each other's requests, and a crashed instance
  cannot pin an app awake; the set itself expires with its last entry.

Memos of apps the provider no longer lists are dropped by the leader (:meth:`RedisRegistry.prune`).

The request path costs no Redis command at steady load. An instance *publishes* its
in-flight entry for an app when its first request begins (one script: ``ZADD`` then ``HGET``),
keeps it while requests run (renewed by a background flusher) and retires it about a second
after the last one ends: the retirement writes the last access and removes the entry in one
script, so no reader can see neither. A stop's last check (:meth:`RedisRegistry.last_look`)
reads entries, last accesses and in-flight sets in one script too: one instant of the cluster.
The leader stops an app only after unregistering it *and then* finding no in-flight entry
(see :mod:`paastis.lifecycle.stopper`). Redis runs scripts one at a time, so either the
leader sees our entry and abandons the stop, or our read sees the app gone and the request
wakes it again. Hence, while our entry is published, the app as we last read it is still
registered unless the provider was found to have stopped it (then the upstream refuses
connections and the proxy wakes it): :meth:`RedisRegistry.get` answers such apps from memory.

When Redis is unreachable each instance keeps serving from its local view (what it last
read or wrote): those answers are *degraded* (see :mod:`paastis.redis_link`), and
:meth:`RedisRegistry.last_look` refuses to give them, so nothing is stopped on them.
Write-behind: last accesses and formation memos made during the outage are kept and written
once Redis answers again; the leader's next idle check re-registers the running apps a
restarted Redis forgot.
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

from .logs import JobErrors
from .redis_link import RedisLink
from .registry import Look, RunningApp

log = logging.getLogger(__name__)

T = TypeVar("T")

FLUSH_INTERVAL = 1.0  # seconds between writes of last accesses and in-flight renewals
IN_FLIGHT_TTL = 30.0  # seconds an in-flight entry lives without renewal (a crashed instance's fades)
LINGER = 1.0  # seconds an in-flight entry stays after the last request, so a steady flow never rewrites it

# Record an access only for an app that is still registered (a late flush after a stop must
# not leave a stray field behind), and only if it is newer than the one stored: instances
# flush on their own schedules, and time must never move backwards. Dates are written at a
# fixed width (UTC, microseconds), so comparing the strings compares the times.
# KEYS: apps, touched. ARGV: app key, date.
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
# Add or renew our in-flight entry, expiring on Redis's clock, and read the app back.
# KEYS: in-flight set, apps, touched. ARGV: instance, ttl ms, app key.
PUBLISH_SCRIPT = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl + 1000)
return {redis.call('HGET', KEYS[2], ARGV[3]), redis.call('HGET', KEYS[3], ARGV[3])}
"""
# A request's end: record its last access (as TOUCH_SCRIPT) and leave the in-flight set, in one step.
# KEYS: in-flight set, apps, touched. ARGV: instance, app key, date ('' for none).
RETIRE_SCRIPT = """
if ARGV[3] ~= '' and redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then
  local stored = redis.call('HGET', KEYS[3], ARGV[2])
  if not stored or stored < ARGV[3] then
    redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
  end
end
return redis.call('ZREM', KEYS[1], ARGV[1])
"""
# Entries, last accesses and other instances' requests in flight of many apps, at one instant
# of Redis's clock. KEYS: apps, touched, in-flight set of each app. ARGV: instance, each app key.
LOOK_SCRIPT = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local out = {}
for i = 2, #ARGV do
  local set = KEYS[i + 1]
  redis.call('ZREMRANGEBYSCORE', set, '-inf', now)
  local others = 0
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', set, '(' .. now, '+inf')) do
    if member ~= ARGV[1] then
      others = others + 1
    end
  end
  out[#out + 1] = redis.call('HGET', KEYS[1], ARGV[i])
  out[#out + 1] = redis.call('HGET', KEYS[2], ARGV[i])
  out[#out + 1] = others
end
return out
"""
LOOK_BATCH = 200  # apps per LOOK_SCRIPT call: one script must not hold Redis for long


@dataclass
class _Activity:
    """This instance's use of one app, told to Redis lazily."""

    count: int = 0  # requests in flight here
    published_until: float = 0.0  # monotonic time our in-flight entry in Redis is sure to live until (0: none)
    last_end: float = 0.0  # monotonic time the last request ended
    touched_at: datetime | None = None  # an access not yet written to Redis
    last_access: datetime | None = None  # the latest access here, written or not (a stop's last look needs it)


class RedisRegistry:
    """The :class:`~paastis.registry.Registry` protocol over Redis, with a local view for outages.

    ``clock`` gives the wall-clock time of this host (tests shift it): it dates accesses,
    and is never compared with another host's (in-flight entries expire on Redis's clock).
    """

    def __init__(
        self,
        link: RedisLink,
        *,
        in_flight_ttl: float = IN_FLIGHT_TTL,
        flush_interval: float = FLUSH_INTERVAL,
        linger: float = LINGER,
        clock: Callable[[], float] = time.time,
    ):
        self.link = link
        self.client = link.client
        self.in_flight_ttl = in_flight_ttl
        self.flush_interval = flush_interval
        self.linger = linger
        self.clock = clock
        self.apps_key = link.key("registry", "apps")
        self.touched_key = link.key("registry", "touched")
        self.memos_key = link.key("registry", "memos")
        self._scripts = {name: (source, self.client.register_script(source).sha) for name, source in SCRIPTS.items()}
        self._local: dict[str, RunningApp] = {}
        self._memos: dict[str, dict[str, Any]] = {}
        self._unsent_memos: dict[str, dict[str, Any]] = {}  # remembered while Redis was down: written once it answers
        self._activity: dict[str, _Activity] = {}
        self._lock = threading.Lock()  # guards the dicts above
        self._publish_lock = threading.Lock()  # keeps our ZADDs and ZREMs in order in Redis
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._errors = JobErrors(log)
        link.on_reconnect(self._forget_publications)

    def in_flight_key(self, key: str) -> str:
        return self.link.key("registry", "inflight", key)

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    # -- running apps -----------------------------------------------------------

    def get(self, key: str) -> RunningApp | None:
        with self._lock:
            local = self._local.get(key)
            activity = self._activity.get(key)
            if local is not None and activity is not None and activity.published_until > time.monotonic():
                return local  # still registered: see the module docstring
        return self.link.ask(lambda: self._read(key), lambda: self._local.get(key)).value

    def all(self) -> list[RunningApp]:
        return self.link.ask(self._read_all, lambda: list(self._local.values())).value

    def register(self, app: RunningApp) -> None:
        with self._lock:
            self._local[app.key] = app
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.apps_key, app.key, json.dumps(app.to_json()))
        pipe.hset(self.touched_key, app.key, _date(app.last_accessed_at))
        self.link.attempt(pipe.execute)

    def unregister(self, key: str) -> None:
        with self._lock:
            self._local.pop(key, None)
        pipe = self.client.pipeline(transaction=True)
        pipe.hdel(self.apps_key, key)
        pipe.hdel(self.touched_key, key)
        self.link.attempt(pipe.execute)

    def touch(self, key: str) -> None:
        """Note an access; the flusher writes it within a second (one write per app and second)."""
        now = self.now()
        with self._lock:
            activity = self._activity.setdefault(key, _Activity())
            activity.touched_at = now
            activity.last_access = max(now, activity.last_access or now)
            self._touch_locally(key, now)
        self._ensure_thread()

    def clear(self) -> None:
        """Forget every running app (memos stay, as in the in-memory registry)."""
        with self._lock:
            self._local.clear()
        self.link.attempt(lambda: self.client.delete(self.apps_key, self.touched_key))

    # -- requests in flight -------------------------------------------------------

    def begin_request(self, key: str) -> object:
        with self._lock:
            activity = self._activity.setdefault(key, _Activity())
            activity.count += 1
            publish = activity.published_until <= time.monotonic()
        if publish and not self.link.down:
            self.link.attempt(lambda: self._publish([key], renew=False))
        self._ensure_thread()
        return key

    def end_request(self, key: str, token: object, accessed_at: datetime | None = None) -> None:
        when = accessed_at or self.now()
        with self._lock:
            activity = self._activity.setdefault(key, _Activity())
            activity.count = max(0, activity.count - 1)
            activity.last_end = time.monotonic()
            activity.touched_at = max(when, activity.touched_at or when)
            activity.last_access = max(when, activity.last_access or when)
            self._touch_locally(key, when)

    def in_flight(self, key: str) -> int:
        """Requests in flight here, plus one per other instance serving ``key`` right now.

        Another instance's entry lingers about a second after its last request ends.
        """
        return self.in_flight_many([key])[key]

    def in_flight_many(self, keys: list[str]) -> dict[str, int]:
        """:meth:`in_flight` for many apps in one round trip (the idle check asks for all its candidates).

        While Redis is down only this instance's requests are counted (a degraded answer: the
        idle check may queue a stop on it, but the stop's :meth:`last_look` refuses to act).
        """
        here = self._here(keys)
        looks = self.link.ask(lambda: self._look(keys), lambda: {k: Look(None, 0) for k in keys}).value
        return {key: here[key] + looks[key].in_flight for key in keys}

    def last_look(self, keys: list[str]) -> dict[str, Look]:
        """Entries and requests in flight (here and elsewhere), fresh from Redis at one instant, or Degraded."""
        looks = self.link.must(lambda: self._look(keys))
        here = self._here(keys)
        with self._lock:
            accessed = {k: a.last_access for k in keys if (a := self._activity.get(k)) and a.last_access}
        return {
            key: Look(_later(look.entry, accessed.get(key)), look.in_flight + here[key]) for key, look in looks.items()
        }

    # -- memos ------------------------------------------------------------------

    def remember(self, key: str, memo: dict[str, Any]) -> None:
        """Keep ``memo`` (a formation...); if Redis does not take it now, it is written once Redis answers."""
        with self._lock:
            self._memos[key] = memo
            self._unsent_memos[key] = memo
        if self.link.attempt(lambda: self._write_memos({key: memo})):
            self._sent_memos({key: memo})
        else:
            self._ensure_thread()  # its flusher writes it back once Redis answers

    def recall(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            unsent = self._unsent_memos.get(key)
        if unsent is not None:
            return unsent  # newer than what Redis holds
        if self.link.down:
            self.link.probe()  # a wake is worth one ping: Redis may be back already (then its memo is the truth)

        def read() -> dict[str, Any] | None:
            raw = self.client.hget(self.memos_key, key)
            return json.loads(raw) if raw is not None else None

        return self.link.ask(read, lambda: self._memos.get(key)).value

    def prune(self, known: Callable[[str], bool], shared: bool) -> int:
        """Drop what this instance keeps of apps the provider no longer has, and (``shared``: the
        leader) their memos in Redis; how many memos were dropped."""
        with self._lock:
            for cache in (self._local, self._memos, self._unsent_memos):
                for key in [key for key in cache if not known(key)]:
                    del cache[key]
        if not shared:
            return 0

        def drop() -> int:
            gone = [key for key in self.client.hkeys(self.memos_key) if not known(key)]
            if gone:
                self.client.hdel(self.memos_key, *gone)
            return len(gone)

        return self.link.ask(drop, lambda: 0).value

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
            self.link.attempt(self.flush)
        self.link.close()

    # -- the background flusher ---------------------------------------------------

    def flush(self) -> None:
        """Write memos and last accesses kept back, renew in-flight entries, and retire those of
        apps no longer in use here (each retirement writes its last access and leaves in one step).
        Raises a Redis error if Redis fails (the caller notes the outage); nothing is lost then."""
        self._flush_memos()
        now = time.monotonic()
        with self._lock:
            touches = self._take_touches()
            renew = [
                k for k, a in self._activity.items() if a.count > 0 and a.published_until - now < self.in_flight_ttl / 2
            ]
            retire = self._retiring(now)
        try:
            self._write_touches({k: w for k, w in touches.items() if k not in retire})
            if renew:
                self._publish(renew)
            self._retire(retire, touches)
        except redis.RedisError:
            self._restore_touches(touches)
            raise

    def _flush_loop(self) -> None:
        while not self._stopping.wait(self.flush_interval):
            if self.link.down and not self.link.probe():
                continue
            try:
                self.link.attempt(self.flush)
                self._errors.succeeded("registry: flush")
            except Exception as error:  # noqa: BLE001 - the flusher must outlive any surprise
                self._errors.failed("registry: flush", error)  # traceback once, then a line a minute

    def _ensure_thread(self) -> None:
        if self._thread is None and not self._stopping.is_set():
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._flush_loop, name="paastis-registry", daemon=True)
                    self._thread.start()

    # -- internals ----------------------------------------------------------------

    def _here(self, keys: list[str]) -> dict[str, int]:
        with self._lock:
            return {key: (a.count if (a := self._activity.get(key)) else 0) for key in keys}

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

    def _look(self, keys: list[str]) -> dict[str, Look]:
        """LOOK_SCRIPT over ``keys`` (in batches): other instances' requests in flight, entries as stored."""
        looks: dict[str, Look] = {}
        batches = [keys[i : i + LOOK_BATCH] for i in range(0, len(keys), LOOK_BATCH)]
        calls = [
            ("look", [self.apps_key, self.touched_key, *map(self.in_flight_key, batch)], [self.link.instance, *batch])
            for batch in batches
        ]
        for batch, out in zip(batches, self._run_scripts(calls), strict=True):
            for index, key in enumerate(batch):
                raw, touched, others = out[3 * index : 3 * index + 3]
                looks[key] = Look(_decode(key, raw, touched), int(others))
        return looks

    def _publish(self, keys: list[str], renew: bool = True) -> None:
        """Add or renew our in-flight entries, and read the apps back after (one round trip).

        Requests that began together wait here for the first one's entry rather than each
        writing their own: its ZADD is done before they go on, which is all they need.
        """
        with self._publish_lock:
            now = time.monotonic()
            if not renew:
                with self._lock:
                    keys = [key for key in keys if self._activity.setdefault(key, _Activity()).published_until <= now]
                if not keys:
                    return
            ttl_ms = int(self.in_flight_ttl * 1000)
            calls = [
                ("publish", [self.in_flight_key(k), self.apps_key, self.touched_key], [self.link.instance, ttl_ms, k])
                for k in keys
            ]
            results = self._run_scripts(calls)
            with self._lock:
                for key, (raw, touched) in zip(keys, results, strict=True):
                    self._remember_locally(key, _decode(key, raw, touched))
                    self._activity.setdefault(key, _Activity()).published_until = now + self.in_flight_ttl

    def _retiring(self, now: float) -> list[str]:
        """Apps no request here has used for ``linger`` seconds (their entries go); forgets idle bookkeeping."""
        retire = [
            key
            for key, a in self._activity.items()
            if a.count == 0 and a.published_until > 0 and now - a.last_end >= self.linger
        ]
        for key in [k for k, a in self._activity.items() if a.count == 0 and not a.published_until]:
            if self._activity[key].touched_at is None:
                del self._activity[key]
        return retire

    def _retire(self, retire: list[str], touches: dict[str, datetime]) -> None:
        """Withdraw our entries, each with its last access, in one script per app."""
        if not retire:
            return
        with self._publish_lock:
            with self._lock:
                busy = [k for k in retire if (a := self._activity.get(k)) is None or a.count > 0]
                retire = [k for k in retire if k not in busy]  # a request began meanwhile: the entry stays
                for key in retire:
                    self._activity[key].published_until = 0.0
            calls = [("touch", [self.apps_key, self.touched_key], [k, _date(touches[k])]) for k in busy if k in touches]
            calls += [
                (
                    "retire",
                    [self.in_flight_key(key), self.apps_key, self.touched_key],
                    [self.link.instance, key, _date(touches[key]) if key in touches else ""],
                )
                for key in retire
            ]
            self._run_scripts(calls)

    def _write_touches(self, touches: dict[str, datetime]) -> None:
        calls = [("touch", [self.apps_key, self.touched_key], [key, _date(when)]) for key, when in touches.items()]
        self._run_scripts(calls)

    def _run_scripts(self, calls: list[tuple[str, list[str], list[Any]]]) -> list[Any]:
        """EVALSHA in one pipeline (redis-py would add a SCRIPT EXISTS to each pipeline using a Script);
        a restarted Redis that forgot a script gets it again."""
        if not calls:
            return []
        for attempt in (1, 2):
            pipe = self.client.pipeline(transaction=False)
            for name, keys, args in calls:
                pipe.evalsha(self._scripts[name][1], len(keys), *keys, *args)
            try:
                return pipe.execute()
            except redis.exceptions.NoScriptError:
                if attempt == 2:
                    raise
                for source, _sha in self._scripts.values():
                    self.client.script_load(source)
        raise AssertionError("unreachable")

    def _write_memos(self, memos: dict[str, dict[str, Any]]) -> None:
        self.client.hset(self.memos_key, mapping={key: json.dumps(memo) for key, memo in memos.items()})

    def _flush_memos(self) -> None:
        """Formation memos made while Redis was down reach it now (a later wake restarts the app as it was)."""
        with self._lock:
            memos = dict(self._unsent_memos)
        if memos:
            self._write_memos(memos)
            self._sent_memos(memos)
            log.info("registry: wrote %d memo(s) kept while Redis was unreachable", len(memos))

    def _sent_memos(self, memos: dict[str, dict[str, Any]]) -> None:
        with self._lock:
            for key, memo in memos.items():
                if self._unsent_memos.get(key) is memo:
                    del self._unsent_memos[key]

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
                if activity.touched_at is None or activity.touched_at < when:
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


SCRIPTS = {"touch": TOUCH_SCRIPT, "publish": PUBLISH_SCRIPT, "retire": RETIRE_SCRIPT, "look": LOOK_SCRIPT}


def _later(entry: RunningApp | None, accessed: datetime | None) -> RunningApp | None:
    """``entry`` with this instance's own latest access, if Redis lacks it yet (flushed within a second)."""
    if entry is None or accessed is None or accessed <= entry.last_accessed_at:
        return entry
    return replace(entry, last_accessed_at=accessed)


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
