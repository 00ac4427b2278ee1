"""The WSGI application of ``paastis serve`` (``paastis.wsgi:app``), and of ``gunicorn app:app`` through ``app.py``."""

import sys

from paastis import ConfigError, create_app
from paastis.startup import error_line

try:
    app = create_app()
except ConfigError as error:
    print(error_line(error), file=sys.stderr, flush=True)
    sys.exit(3)  # gunicorn's "worker failed to boot": the master stops instead of respawning
