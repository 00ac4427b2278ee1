"""A small, fast HTTP/1.1 upstream for the queue benchmark (asyncio, keep-alive, one process).

``python -m bench.fast_upstream PORT``. Paths: ``/`` answers ``ok``; ``/sleep?ms=N`` answers
after N milliseconds (a slow app); ``/hang`` never answers (a hung app). A request body is
read and dropped. It is faster than ``tests/upstream_app.py`` (a thread per connection), so
that paastis, not the app, is what a benchmark measures.
"""

from __future__ import annotations

import asyncio
import sys
from urllib.parse import parse_qs, urlsplit

OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n"


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            target = lines[0].split(" ")[1] if len(lines[0].split(" ")) > 1 else "/"
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip() or 0)
            if length:
                await reader.readexactly(length)
            parts = urlsplit(target)
            if parts.path == "/hang":
                await asyncio.Event().wait()
            if parts.path == "/sleep":
                await asyncio.sleep(int(parse_qs(parts.query).get("ms", ["0"])[0]) / 1000)
            writer.write(OK)
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(serve, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
