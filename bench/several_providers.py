"""What several providers in one paastis cost, and what a hung one costs the others (in-process, seconds).

Run from the repository root::

    .venv/bin/python -m bench.several_providers

Three accounts of 10,000 apps each (in memory: the figures are paastis's own work, not an
API's), asked as one directory (:class:`paastis.directories.SeveralDirectories`):

- an idle check's listing of all three, merged (one app per key, pinned names honoured);
- a request's lookup of a listed app (cache only), and of an unknown name (404);
- the same lookups while the first account's API hangs.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

from paastis import deadlines
from paastis.config import Settings
from paastis.directories import SeveralDirectories
from paastis.providers import AppInfo, ProviderSpec
from paastis.providers.accounts import Account, Accounts
from paastis.rules import Rules

APPS = 10_000
LOOKUPS = 20_000


class MemoryAccount:
    """An account's API in memory; ``free`` cleared makes its listing hang."""

    poll_interval = 1.0
    probe_upstream = False
    scheduler = None

    def __init__(self, prefix: str):
        self.apps = [
            AppInfo(f"{prefix}-{i}", f"{prefix}-{i}", f"http://{prefix}-{i}.test", "stopped") for i in range(APPS)
        ]
        self.free = threading.Event()
        self.free.set()

    def list_apps(self) -> list[AppInfo]:
        self.free.wait()
        return list(self.apps)

    def close(self) -> None:
        self.free.set()


def per_call(function, count: int) -> float:
    started = time.perf_counter()
    for i in range(count):
        function(i)
    return (time.perf_counter() - started) / count * 1e6


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.from_env({"PAASTIS_CONFIG_FILE": "", "PAASTIS_STATE_DIR": str(Path(tmp))}, dotenv=False)
        providers = {name: MemoryAccount(name) for name in ("paris", "us", "clever")}
        specs = [ProviderSpec(name, "scalingo", (), settings, {}) for name in providers]
        accounts = Accounts([Account(spec, providers[spec.name]) for spec in specs])
        rules = Rules(settings, [{"pattern": "us-1.*", "provider": "us"}], specs)
        directory = SeveralDirectories(accounts, rules, ttl=3600)

        started = time.perf_counter()
        apps = directory.refresh()
        first = time.perf_counter() - started
        started = time.perf_counter()
        directory.refresh()
        again = time.perf_counter() - started
        print(f"listing {len(apps)} apps of 3 accounts, merged: {first * 1000:.1f} ms (first), {again * 1000:.1f} ms")

        hit = per_call(lambda i: directory.resolve(f"clever-{i % APPS}"), LOOKUPS)
        miss = per_call(lambda i: directory.resolve(f"ghost-{i}"), LOOKUPS)
        print(f"lookup of a listed app (third account): {hit:.1f} µs; of an unknown name: {miss:.1f} µs")

        providers["paris"].free.clear()  # the first account's API hangs from now on
        for member in directory.members.values():
            member.ttl = 0  # and every listing is stale: a miss would list
        hung_hit = per_call(lambda i: directory.resolve(f"clever-{i % APPS}"), LOOKUPS)
        print(f"while the first account hangs: lookup of another account's app {hung_hit:.1f} µs (cache, no call)")
        started = time.perf_counter()
        with deadlines.deadline_at(time.monotonic() + 2.0):  # a request's deadline (its operation timeout)
            found = directory.resolve("clever-new")  # unknown everywhere: every account asked, the hung one too
        print(f"  an unknown name while it hangs: {(time.perf_counter() - started) * 1000:.0f} ms, the 2 s deadline")
        providers["clever"].apps.append(AppInfo("clever-new", "clever-new", "http://clever-new.test"))
        started = time.perf_counter()
        with deadlines.deadline_at(time.monotonic() + 30.0):
            found = directory.resolve("clever-new")  # new on a later account: the hung one loses its turn
        took = (time.perf_counter() - started) * 1000
        print(f"  a new app of a later account while it hangs: {took:.0f} ms, found on {found.provider}")
        providers["paris"].free.set()
        directory.close()
        accounts.close()


if __name__ == "__main__":
    main()
