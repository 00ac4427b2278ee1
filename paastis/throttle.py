"""One brake on guessing the admin token, shared by everything that accepts it.

The admin API, the dashboard's sign-in and (through the admin API) the ``paastis`` command
all take ``ROUTING_SYSTEM_API_TOKEN``. A brake on one door only would leave the others open,
so they share one :class:`TokenThrottle`, per client address (the peer, or the address a
trusted front names: :mod:`paastis.forwarding`):

- each failure is answered after ``delay`` seconds: guessing is slow;
- after ``free`` failures in a row, the address is refused outright (429 with ``Retry-After``,
  no token check) for ``lockout`` seconds, doubling at each further failure up to ``max_lockout``;
- a success clears the address's record.

With Redis (``REGISTRY_TYPE=redis``), the record is shared by every worker and instance;
otherwise, and while Redis is down, it lives in this process.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .redis_link import RedisLink


class TokenThrottle:
    def __init__(
        self,
        delay: float = 1.0,
        free: int = 5,
        lockout: float = 30.0,
        max_lockout: float = 900.0,
        max_clients: int = 10_000,
        link: RedisLink | None = None,
    ):
        self.delay = delay
        self.free = free
        self.lockout = lockout
        self.max_lockout = max_lockout
        self.max_clients = max_clients
        self.link = link
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()  # address -> (count, locked until)
        self._lock = threading.Lock()

    def retry_after(self, address: str) -> float | None:
        """Seconds this address must wait before its next try, or None when it may try now."""
        shared = self._shared(lambda link: link.client.pttl(link.key("throttle", address, "until")))
        if shared is not None:
            return shared / 1000 if shared > 0 else None
        with self._lock:
            _, until = self._failures.get(address, (0, 0.0))
        left = until - time.monotonic()
        return left if left > 0 else None

    def failed(self, address: str) -> None:
        """Count a failure (locking the address out past ``free``), then make the caller wait ``delay``."""
        count = self._shared(lambda link: self._count_shared(link, address))
        if count is None:
            self._count_locally(address)
        if self.delay:
            time.sleep(self.delay)

    def succeeded(self, address: str) -> None:
        self._shared(lambda link: link.client.delete(link.key("throttle", address)))
        with self._lock:
            self._failures.pop(address, None)

    # -- internals ------------------------------------------------------------------

    def _lockout_for(self, count: int) -> float:
        return min(self.max_lockout, self.lockout * 2 ** (count - self.free)) if count >= self.free else 0.0

    def _count_locally(self, address: str) -> None:
        with self._lock:
            count, _ = self._failures.pop(address, (0, 0.0))
            count += 1
            locked = self._lockout_for(count)
            self._failures[address] = (count, time.monotonic() + locked if locked else 0.0)
            while len(self._failures) > self.max_clients:
                self._failures.popitem(last=False)

    def _count_shared(self, link: RedisLink, address: str) -> int:
        key = link.key("throttle", address)
        pipe = link.client.pipeline()
        pipe.incr(key)
        pipe.expire(key, int(self.max_lockout * 2))  # a quiet address is forgotten
        count = int(pipe.execute()[0])
        locked = self._lockout_for(count)
        if locked:
            link.client.set(link.key("throttle", address, "until"), "1", px=int(locked * 1000))
        return count

    def _shared(self, work):  # type: ignore[no-untyped-def]
        """Run ``work`` on Redis when there is one and it is up; None otherwise (then this process decides)."""
        if self.link is None:
            return None
        from .registry import Degraded

        try:
            return self.link.must(lambda: work(self.link))  # the cluster state's one boundary
        except Degraded:
            return None
