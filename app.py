"""The WSGI entry point: ``gunicorn app:app``."""

import sys

from paastis import ConfigError, create_app

try:
    app = create_app()
except ConfigError as error:
    print(f"paastis: configuration error: {error}", file=sys.stderr, flush=True)
    sys.exit(3)  # gunicorn's "worker failed to boot": the master stops instead of respawning
