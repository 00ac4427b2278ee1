"""gunicorn settings for paastis: its own gthread workers (paastis/worker.py), bound to $HOST:$PORT.

The supervisor thread starts in each worker once it has loaded the app (after fork),
never in the master.
"""

import logging
import os
import sys

from paastis.config import ConfigError, Settings

log = logging.getLogger("gunicorn.error")

try:
    _settings = Settings.from_env()
except ConfigError as error:
    print(f"paastis: configuration error: {error}", file=sys.stderr, flush=True)
    sys.exit(1)

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '3000')}"
worker_class = "paastis.worker.PaastisWorker"  # gthread, reading request heads without holding a thread
threads = _settings.threads
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
_single_worker_reason = None
if _settings.registry_type == "in-memory" and workers > 1:
    _single_worker_reason = (
        f"WEB_CONCURRENCY={workers} ignored: the in-memory registry lives in one process, "
        "so paastis runs one worker (set REGISTRY_TYPE=redis to run several)"
    )
    workers = 1
graceful_timeout = 15
keepalive = 5
accesslog = os.environ.get("PAASTIS_ACCESS_LOG") or None
control_socket_disable = True  # one per machine by default: several instances would fight over it


def on_starting(server):
    if _single_worker_reason:
        server.log.warning(_single_worker_reason)


def post_worker_init(worker):
    worker.wsgi.extensions["paastis"].supervisor.start()


def worker_exit(server, worker):
    paastis = getattr(getattr(worker, "wsgi", None), "extensions", {}).get("paastis")
    if paastis is not None:
        paastis.close()
