"""``python -m paastis.healthcheck``: is this machine's paastis answering HTTP? (Docker's HEALTHCHECK.)

It sends one request that paastis answers by itself, without touching the provider, the
registry or any app: a ``Host`` that names no app gets paastis's own 400. Any other answer,
or none within the timeout, means the workers are not serving: exit status 1.
"""

from __future__ import annotations

import http.client
import json
import os
import sys

TIMEOUT = 5.0


def healthy(host: str, port: int) -> tuple[bool, str]:
    connection = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
    try:
        connection.request("GET", "/", headers={"Host": "healthcheck_", "Accept": "application/json"})
        response = connection.getresponse()
        body = response.read(4096)
    except OSError as error:
        return False, f"no answer from {host}:{port}: {error}"
    finally:
        connection.close()
    try:
        answered_by_paastis = response.status == 400 and json.loads(body).get("status") == 400
    except ValueError:
        answered_by_paastis = False
    if not answered_by_paastis:
        return False, f"unexpected answer from {host}:{port}: {response.status} {body[:100]!r}"
    return True, f"paastis answers on {host}:{port}"


def main() -> int:
    port = int(os.environ.get("PORT", "3000"))
    ok, message = healthy("127.0.0.1", port)
    print(message, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
