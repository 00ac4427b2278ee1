"""The WSGI application of ``paastis serve`` (``paastis.wsgi:app``), and of ``gunicorn app:app`` through ``app.py``."""

import sys

from paastis import ConfigError, create_app, startup
from paastis.startup import error_line

try:
    # Under gunicorn, a worker builds from what its master checked and accepted (at start-up or
    # at the last good reload), not from files that may have changed since (paastis.reloads).
    accepted = startup.accepted
    app = create_app(accepted.settings, config=accepted.config) if accepted else create_app()
except ConfigError as error:
    print(error_line(error), file=sys.stderr, flush=True)
    sys.exit(3)  # gunicorn's "worker failed to boot": the master stops instead of respawning
