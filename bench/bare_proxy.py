"""The least this design can cost: a bare Flask + requests streaming proxy, for comparison only.

Run as ``BARE_UPSTREAM=http://127.0.0.1:8080 gunicorn bench.bare_proxy:app`` (the benchmark
gives it the same gunicorn settings as paastis). No routing, registry, waking or header care.
"""

import os

import requests
from flask import Flask, Response, request
from requests.adapters import HTTPAdapter

UPSTREAM = os.environ.get("BARE_UPSTREAM", "http://127.0.0.1:8080")
HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host", "content-length"}
app = Flask(__name__)
session = requests.Session()
session.trust_env = False  # no per-request proxy/.netrc look-ups (paastis does the same)
session.mount("http://", HTTPAdapter(pool_connections=32, pool_maxsize=64))


@app.route("/", defaults={"path": ""}, methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
@app.route("/<path:path>", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def proxy(path: str) -> Response:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
    body = request.stream if request.content_length else None
    upstream = session.request(
        request.method,
        UPSTREAM + request.environ["RAW_URI"],
        headers=headers,
        data=body,
        stream=True,
        allow_redirects=False,
    )
    kept = [(k, v) for k, v in upstream.raw.headers.items() if k.lower() not in HOP]
    response = Response(upstream.raw.stream(64 * 1024, decode_content=False), upstream.status_code, kept)
    response.call_on_close(upstream.close)
    return response
