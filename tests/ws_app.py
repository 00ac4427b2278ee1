"""A real WebSocket app for the tests (the ``websockets`` library), spawned by the local provider.

Environment: ``PORT`` (required), ``START_LOG`` (one line per boot), ``CLOSE_LOG`` (one line
per ended connection: its path and the close code the app received, or ``none``),
``CERT_FILE``/``KEY_FILE`` (serve wss:// over TLS).

Paths: ``/echo`` echoes every message; ``/greet`` sends "hello" right after the handshake,
then echoes; ``/headers`` sends the handshake request (path and headers) as JSON, then
echoes; ``/close`` closes with code 4000 "bye" after the first message; ``/refuse``
answers the handshake with a 403 and a body. The subprotocol ``chat`` is accepted.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
from http import HTTPStatus

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request


async def handler(connection: ServerConnection) -> None:
    path = connection.request.path
    try:
        if path.startswith("/greet"):
            await connection.send("hello")
        if path.startswith("/headers"):
            await connection.send(json.dumps({"path": path, "headers": list(connection.request.headers.raw_items())}))
        async for message in connection:
            if path.startswith("/close"):
                await connection.close(4000, "bye")
                return
            await connection.send(message)
    except ConnectionClosed:
        pass  # recorded below, whatever the code
    finally:
        await connection.wait_closed()
        record_close(path, connection)


def record_close(path: str, connection: ServerConnection) -> None:
    if not os.environ.get("CLOSE_LOG"):
        return
    received = connection.protocol.close_rcvd
    with open(os.environ["CLOSE_LOG"], "a") as log:
        log.write(f"{path} {received.code if received else 'none'}\n")


def refuse(connection: ServerConnection, request: Request):
    if request.path.startswith("/refuse"):
        response = connection.respond(HTTPStatus.FORBIDDEN, "no websockets here\n")
        response.headers["X-Refused-By"] = "ws_app"
        return response
    return None


async def main() -> None:
    context = None
    if os.environ.get("CERT_FILE"):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(os.environ["CERT_FILE"], os.environ["KEY_FILE"])
    async with serve(
        handler,
        "127.0.0.1",
        int(os.environ["PORT"]),
        ssl=context,
        process_request=refuse,
        select_subprotocol=lambda connection, offered: "chat" if "chat" in offered else None,
        max_size=None,
        ping_interval=None,
    ):
        if os.environ.get("START_LOG"):
            with open(os.environ["START_LOG"], "a") as log:
                log.write(f"{os.getpid()}\n")
        closing = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, closing.set)
        await closing.wait()  # then the server closes, and waits for handlers to record their closes


if __name__ == "__main__":
    asyncio.run(main())
