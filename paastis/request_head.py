"""What the worker's main loop needs from a request head before any thread sees it.

The main loop (``paastis.worker``) decides which app a request is for (to queue it fairly) and
how its body is framed (to buffer a slow body without a thread). It reads only what it needs,
and anything it cannot make sense of goes to a thread as it is: gunicorn's parser then answers
``400`` with its own precise message, so nothing here has to refuse a malformed head.
"""

from __future__ import annotations

from dataclasses import dataclass

from .routes import Routes
from .routing import BadHost, NoAppKey, NotServed, is_valid_app_key, route_key


@dataclass
class Head:
    """The few fields of one request head that the main loop acts on."""

    size: int  # bytes up to and including the empty line
    host: str | None = None
    content_length: int | None = None
    chunked: bool = False
    expect_continue: bool = False
    system: bool = False  # PaastisProxyTarget: system
    unclear: bool = False  # framing the main loop will not guess at (the thread's parser decides)

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


def head_end(data: bytes | bytearray) -> int:
    """Offset just past the empty line that ends the head, or -1 (a bare-LF head counts: gunicorn refuses it)."""
    crlf = data.find(b"\r\n\r\n")
    lf = data.find(b"\n\n")
    ends = [i + 4 for i in (crlf,) if i >= 0] + [i + 2 for i in (lf,) if i >= 0]
    return min(ends) if ends else -1


def parse_head(data: bytes | bytearray) -> Head:
    """The head at the start of ``data`` (which holds at least a whole head)."""
    end = head_end(data)
    head = Head(size=end if end >= 0 else len(data), unclear=end < 0)
    lines = bytes(data[: head.size]).split(b"\n")[1:]
    lengths: set[bytes] = set()
    encodings: list[bytes] = []
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon:
            continue
        name = name.strip().lower()
        value = value.strip()
        if name == b"host" and head.host is None:
            head.host = value.decode("latin-1")
        elif name == b"content-length":
            lengths.add(value)
        elif name == b"transfer-encoding":
            encodings += [token.strip().lower() for token in value.split(b",")]
        elif name == b"expect":
            head.expect_continue = value.lower() == b"100-continue"
        elif name == b"paastisproxytarget":
            head.system = value.lower() == b"system"
    if encodings:
        head.chunked = encodings[-1] == b"chunked"
        head.unclear = head.unclear or bool(lengths) or not head.chunked
    elif lengths:
        value = lengths.pop()
        if lengths or not value.isdigit() or len(value) > 18:
            head.unclear = True
        else:
            head.content_length = int(value)
    return head


def app_key(
    head: Head,
    system_api: bool,
    dashboard_host: str | None,
    domains: tuple[str, ...] = (),
    routes: Routes | None = None,
) -> str | None:
    """The app this request is for, as ``paastis.proxy`` will route it (``routing.route_key``); None for anything else.

    System API requests, the dashboard's host and hosts that name no app are not for an app:
    they are never queued behind apps.
    """
    if system_api and head.system:
        return None
    if head.host is None:
        return None
    if dashboard_host is not None:
        host = head.host.lower()
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        if name.rstrip(".") == dashboard_host:
            return None
    try:
        key, routed = route_key(head.host, domains, routes)
    except (BadHost, NoAppKey, NotServed):
        return None
    return key if not routed or is_valid_app_key(key) else None


class ChunkedEnd:
    """Follows a chunked body as its bytes arrive, to tell when its last chunk and trailers are in.

    ``feed`` returns the offset in ``data`` just past the body's end, -1 while more is needed, or
    raises ``ValueError`` on framing it cannot follow (the thread's parser will say what is wrong).
    """

    MAX_LINE = 4096

    def __init__(self) -> None:
        self.state = "size"
        self.line = bytearray()
        self.left = 0  # bytes of chunk data still to skip

    def feed(self, data: bytes | bytearray) -> int:
        i, n = 0, len(data)
        while i < n:
            if self.state == "data":
                step = min(self.left, n - i)
                self.left -= step
                i += step
                if not self.left:
                    self.state = "crlf"
                continue
            newline = data.find(b"\n", i)
            if newline < 0:
                self.line += data[i:]
                if len(self.line) > self.MAX_LINE:
                    raise ValueError("chunk line too long")
                return -1
            self.line += data[i:newline]
            i = newline + 1
            line, self.line = bytes(self.line).rstrip(b"\r"), bytearray()
            if self._line(line):
                return i
        return -1

    def _line(self, line: bytes) -> bool:
        """One whole line in the current state; True once the body has ended."""
        if self.state == "size":
            size = line.split(b";", 1)[0].strip()
            if not size or len(size) > 16 or any(c not in b"0123456789abcdefABCDEF" for c in size):
                raise ValueError("bad chunk size")
            self.left = int(size, 16)
            self.state = "data" if self.left else "trailers"
        elif self.state == "crlf":
            if line:
                raise ValueError("chunk data longer than its size")
            self.state = "size"
        elif self.state == "trailers" and not line:
            return True
        return False
