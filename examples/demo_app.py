"""A tiny web app for trying paastis: it takes a moment to boot, then says hello.

Needs nothing but Python. Listens on 127.0.0.1:$PORT.
"""

import os
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BOOTED_AT = datetime.now(UTC)


class Hello(BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"Hello from {os.environ.get('PAASTIS_APP_NAME', 'demo')}, awake since {BOOTED_AT:%H:%M:%S} UTC\n"
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


if __name__ == "__main__":
    time.sleep(float(os.environ.get("DEMO_BOOT_SECONDS", "1")))  # like a real app loading its code
    ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Hello).serve_forever()
