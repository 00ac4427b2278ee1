"""gunicorn settings for paastis: its own gthread workers (paastis/worker.py), bound to $HOST:$PORT.

Both ``gunicorn app:app`` (through the repository's ``gunicorn.conf.py``, which imports this
module) and ``paastis serve`` (which hands this file to gunicorn as its ``--config``) use
these settings, so an installed paastis runs exactly as a checkout does.

gunicorn runs this in its master process, before any worker exists: every setting
(environment, ``.env``, ``paastis.yml``, the provider's) is checked here, so a mistake stops
the instance with one line and a non-zero exit. The summary line and the warnings are
logged here too, once per instance. The supervisor thread starts in each worker once it has
loaded the app (after fork), never in the master.

gunicorn itself reads ``WEB_CONCURRENCY`` from the process environment (as the default of
``workers``) before this file runs: a non-number there stops gunicorn with its own error.
"""

import sys

from paastis import logs, reloads, startup
from paastis.config import ConfigError

__all__ = [  # what gunicorn reads (``gunicorn.conf.py`` star-imports this module)
    "bind",
    "worker_class",
    "workers",
    "threads",
    "graceful_timeout",
    "keepalive",
    "accesslog",
    "loglevel",
    "logconfig_dict",
    "control_socket_disable",
    "forwarded_allow_ips",
    "on_starting",
    "post_fork",
    "child_exit",
    "when_ready",
    "on_reload",
    "on_exit",
    "post_worker_init",
    "worker_exit",
]

try:
    _checked = startup.accept()  # at a reload, a broken configuration keeps the previous one (see paastis.reloads)
except ConfigError as error:
    print(startup.error_line(error), file=sys.stderr, flush=True)
    sys.exit(1)
_settings = _checked.settings

bind = _settings.bind
worker_class = "paastis.worker.PaastisWorker"  # gthread, reading request heads without holding a thread
workers = _settings.workers
threads = _settings.threads
graceful_timeout = 15
keepalive = 5
accesslog = _settings.access_log
loglevel = _settings.log_level
logconfig_dict = logs.gunicorn_logconfig(_settings.log_format, _settings.log_level, _settings.access_log)
# The fronts trusted with X-Forwarded-*: gunicorn (the scheme) and paastis (what apps receive) agree.
forwarded_allow_ips = ",".join(_settings.forwarded_allow_ips)
control_socket_disable = True  # one per machine by default: several instances would fight over it


def _address(server):
    host, port = server.LISTENERS[0].getsockname()[:2] if server.LISTENERS else (_settings.host, _settings.port)
    return (_settings.host if host in ("0.0.0.0", "::") else host), port


def on_starting(server):
    """Once per instance, before any worker: the memory its workers share to count WebSockets (paastis.places)."""
    from paastis.places import SharedTable

    server.paastis_websockets = SharedTable()


def post_fork(server, worker):
    worker.paastis_websockets = getattr(server, "paastis_websockets", None)


def child_exit(server, worker):
    """A worker is gone (ended or killed): so are its WebSockets, and its counts."""
    table = getattr(server, "paastis_websockets", None)
    if table is not None:
        table.free(worker.pid)


def when_ready(server):
    """Listening: say once, for the whole instance, what runs and how to try it; then take SIGHUP over."""
    startup.report(_settings, _checked.rules, server.log, _checked.apps)
    server.log.info(startup.summary(_checked, *_address(server)))
    server.paastis_files = pid_file, status_file = reloads.files(_settings.state_dir, _address(server)[1])
    startup.reload_status.status_file = status_file
    reloads.write_quietly(pid_file, f"{server.pid}\n")
    reloads.install(server, startup.check, startup.reload_status, startup.reload_error_line)


def on_reload(server):
    """A good configuration was applied: say what runs now, with its warnings (the new workers start next)."""
    for warning in startup.warnings(_settings, _checked.rules, _checked.apps):
        server.log.warning(warning)
    server.log.info(startup.summary(_checked, *_address(server)).replace("paastis ready:", "paastis reloaded:", 1))


def on_exit(server):
    for path in getattr(server, "paastis_files", ()):
        path.unlink(missing_ok=True)


def post_worker_init(worker):
    worker.wsgi.extensions["paastis"].supervisor.start()


def worker_exit(server, worker):
    paastis = getattr(getattr(worker, "wsgi", None), "extensions", {}).get("paastis")
    if paastis is not None:
        paastis.close()
