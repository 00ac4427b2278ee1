"""Places for upgraded connections (WebSockets), counted per instance: every worker of it sees the same counts.

``MAX_WEBSOCKETS`` bounds an instance's open upgraded connections and
``MAX_WEBSOCKETS_PER_CLIENT`` one client address's; ``GET /apps/<name>`` shows an app's count.
The connections themselves live in the workers' relays (one per process), so the counts live
in memory the workers share: an anonymous shared mapping that gunicorn's master makes before
it forks any worker (``on_starting`` in ``paastis/gunicorn_conf.py``), kept across reloads.

Each worker writes under a slot of its own (its pid is kept there), so that a worker that dies
takes its counts with it: the master clears the slot when the worker exits (``child_exit``), and
a new worker that finds a slot whose process is gone clears it before use. Readers add up every
worker's entries. A lock (``lockf`` on the mapping's file, which the kernel releases if its holder
dies, and a thread lock within a process) makes each booking one atomic check-and-count.

Without gunicorn (``create_app`` in a test, the CLI), :class:`LocalPlaces` counts in-process.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

MAX_WEBSOCKETS, PER_CLIENT = "max_websockets", "max_websockets_per_client"  # why a booking was refused
APP, CLIENT = 1, 2  # kinds of entries
EMPTY, GONE = 0, 3  # a slot never used; a slot whose count fell to 0 (skipped, reused)
WORKER_SLOTS = 64
ENTRY = struct.Struct("<BBH64sI")  # kind, unused, worker slot, name, count
HEADER = struct.Struct(f"<{WORKER_SLOTS}q{WORKER_SLOTS}I")  # pid and total per worker slot
TABLE = 1 << 16  # entries (~4.7 MB of address space, touched only where used)


class LocalPlaces:
    """Counts for one process (no gunicorn, or one worker that shares nothing)."""

    def __init__(self, max_connections: int, per_client: int):
        self.max_connections = max_connections
        self.per_client = per_client
        self._lock = threading.Lock()
        self._total = 0
        self._apps: dict[str, int] = {}
        self._clients: dict[str, int] = {}

    def book(self, app: str, client: str) -> str | None:
        """Count one more connection of ``app`` from ``client``, or say which limit refuses it."""
        with self._lock:
            if self._total >= self.max_connections:
                return MAX_WEBSOCKETS
            if self._clients.get(client, 0) >= self.per_client:
                return PER_CLIENT
            self._total += 1
            self._apps[app] = self._apps.get(app, 0) + 1
            self._clients[client] = self._clients.get(client, 0) + 1
            return None

    def release(self, app: str, client: str) -> None:
        with self._lock:
            self._total -= 1
            _down(self._apps, app)
            _down(self._clients, client)

    def count(self, app: str) -> int:
        return self._apps.get(app, 0)


def _down(counts: dict[str, int], key: str) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


class SharedTable:
    """The shared mapping itself: made once in gunicorn's master, inherited by every worker it forks."""

    def __init__(self) -> None:
        self.fd = os.memfd_create("paastis-websockets", os.MFD_CLOEXEC)
        size = HEADER.size + TABLE * ENTRY.size
        os.ftruncate(self.fd, size)
        self.map = mmap.mmap(self.fd, size, mmap.MAP_SHARED)
        self._thread_lock = threading.Lock()

    @contextmanager
    def locked(self) -> Iterator[None]:
        with self._thread_lock:
            fcntl.lockf(self.fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.lockf(self.fd, fcntl.LOCK_UN)

    def after_fork(self) -> None:
        """A forked worker gets a thread lock of its own (one held at fork time would stay held)."""
        self._thread_lock = threading.Lock()

    # -- worker slots ----------------------------------------------------------------

    def _header(self) -> tuple[list[int], list[int]]:
        values = HEADER.unpack_from(self.map, 0)
        return list(values[:WORKER_SLOTS]), list(values[WORKER_SLOTS:])

    def _write_header(self, pids: list[int], totals: list[int]) -> None:
        HEADER.pack_into(self.map, 0, *pids, *totals)

    def claim(self, pid: int) -> int:
        """A slot for worker ``pid``: a free one, or one whose process is gone (cleared first)."""
        with self.locked():
            pids, totals = self._header()
            for slot, owner in enumerate(pids):
                if owner == 0 or not _alive(owner):
                    if owner:
                        self._clear(slot, pids, totals)
                    pids[slot] = pid
                    self._write_header(pids, totals)
                    return slot
        raise RuntimeError(f"more than {WORKER_SLOTS} workers share one instance's WebSocket counts")

    def free(self, pid: int) -> None:
        """Worker ``pid`` exited (run in the master): its connections are gone, and so are its counts."""
        with self.locked():
            pids, totals = self._header()
            if pid in pids:
                slot = pids.index(pid)
                self._clear(slot, pids, totals)
                pids[slot] = 0
                self._write_header(pids, totals)

    def _clear(self, slot: int, pids: list[int], totals: list[int]) -> None:
        totals[slot] = 0
        for index in range(TABLE):
            kind, _, owner, _, _ = ENTRY.unpack_from(self.map, HEADER.size + index * ENTRY.size)
            if kind in (APP, CLIENT) and owner == slot:
                ENTRY.pack_into(self.map, HEADER.size + index * ENTRY.size, GONE, 0, 0, b"", 0)

    # -- entries (under the lock) -----------------------------------------------------

    def total(self) -> int:
        return sum(self._header()[1])

    def add_total(self, slot: int, delta: int) -> None:
        pids, totals = self._header()
        totals[slot] = max(0, totals[slot] + delta)
        self._write_header(pids, totals)

    def get(self, kind: int, slot: int, name: bytes) -> int:
        index = self._find(kind, slot, name, insert=False)
        return 0 if index is None else ENTRY.unpack_from(self.map, self._at(index))[4]

    def sum(self, kind: int, name: bytes, slots: int = WORKER_SLOTS) -> int:
        pids = self._header()[0]
        return sum(self.get(kind, slot, name) for slot in range(slots) if pids[slot])

    def add(self, kind: int, slot: int, name: bytes, delta: int) -> bool:
        """Change one count; False when the table has no room for a new entry."""
        index = self._find(kind, slot, name, insert=delta > 0)
        if index is None:
            return delta <= 0
        count = ENTRY.unpack_from(self.map, self._at(index))[4] + delta
        if count > 0:
            ENTRY.pack_into(self.map, self._at(index), kind, 0, slot, name, count)
        else:
            self._remove(index)
        return True

    def _remove(self, index: int) -> None:
        """A count fell to 0. Before an EMPTY slot no probe needs it (nor the GONE slots just before it)."""
        if ENTRY.unpack_from(self.map, self._at((index + 1) % TABLE))[0] != EMPTY:
            ENTRY.pack_into(self.map, self._at(index), GONE, 0, 0, b"", 0)
            return
        while ENTRY.unpack_from(self.map, self._at(index))[0] in (GONE, APP, CLIENT):
            ENTRY.pack_into(self.map, self._at(index), EMPTY, 0, 0, b"", 0)
            index = (index - 1) % TABLE
            if ENTRY.unpack_from(self.map, self._at(index))[0] != GONE:
                return

    def _at(self, index: int) -> int:
        return HEADER.size + index * ENTRY.size

    def _find(self, kind: int, slot: int, name: bytes, insert: bool) -> int | None:
        """Linear probing from the key's hash; a new key takes the first GONE or EMPTY slot on its path."""
        start = zlib.crc32(bytes([kind, slot & 0xFF]) + name) % TABLE
        reusable = None
        for step in range(TABLE):
            index = (start + step) % TABLE
            found_kind, _, found_slot, found_name, _ = ENTRY.unpack_from(self.map, self._at(index))
            if found_kind == EMPTY:
                return (reusable if reusable is not None else index) if insert else None
            if found_kind == GONE:
                if reusable is None:
                    reusable = index
            elif found_kind == kind and found_slot == slot and found_name.rstrip(b"\0") == name:
                return index
        return reusable if insert else None


class SharedPlaces:
    """One worker's view of the shared counts: it books under its own slot, and reads everyone's."""

    def __init__(self, table: SharedTable, max_connections: int, per_client: int):
        self.table = table
        self.max_connections = max_connections
        self.per_client = per_client
        self.table.after_fork()
        self.slot = table.claim(os.getpid())

    def book(self, app: str, client: str) -> str | None:
        app_name, client_name = _name(app), _name(client)
        with self.table.locked():
            if self.table.total() >= self.max_connections:
                return MAX_WEBSOCKETS
            if self.table.sum(CLIENT, client_name) >= self.per_client:
                return PER_CLIENT
            if not self.table.add(APP, self.slot, app_name, 1):
                return MAX_WEBSOCKETS
            if not self.table.add(CLIENT, self.slot, client_name, 1):
                self.table.add(APP, self.slot, app_name, -1)
                return MAX_WEBSOCKETS
            self.table.add_total(self.slot, 1)
            return None

    def release(self, app: str, client: str) -> None:
        with self.table.locked():
            self.table.add(APP, self.slot, _name(app), -1)
            self.table.add(CLIENT, self.slot, _name(client), -1)
            self.table.add_total(self.slot, -1)

    def count(self, app: str) -> int:
        with self.table.locked():
            return self.table.sum(APP, _name(app))


def _name(value: str) -> bytes:
    return value.encode("utf-8", "replace")[:64]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
