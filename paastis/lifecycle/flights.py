"""Single flight inside one process: at most one start or stop per app at a time.

Owns the table of operations under way. Whoever joins first leads (calls the provider);
the others wait on its :class:`Flight` and learn its outcome, failure included.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from .errors import WakeError


@dataclass
class Flight:
    """One start or stop of one app, which others may wait on."""

    kind: str  # "start" or "stop"
    done: threading.Event = field(default_factory=threading.Event)
    error: WakeError | None = None


class Flights:
    def __init__(self) -> None:
        self._flights: dict[str, Flight] = {}
        self._lock = threading.Lock()

    def join(self, key: str, kind: str) -> tuple[Flight, bool]:
        """The flight under way for ``key``, or a new one of ``kind``; True when the caller leads it."""
        with self._lock:
            flight = self._flights.get(key)
            if flight is not None:
                return flight, False
            flight = self._flights[key] = Flight(kind)
            return flight, True

    def land(self, key: str, flight: Flight) -> None:
        """The leader is done: free the slot, then wake the waiters."""
        with self._lock:
            self._flights.pop(key, None)
        flight.done.set()

    def busy(self, key: str) -> bool:
        return key in self._flights

    def starting(self, key: str) -> bool:
        flight = self._flights.get(key)
        return flight is not None and flight.kind == "start"
