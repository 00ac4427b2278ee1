"""The WSGI entry point: ``gunicorn app:app``."""

import sys

if sys.version_info < (3, 11):  # noqa: UP036 - before importing paastis, which needs 3.11
    sys.exit(f"paastis: needs Python 3.11 or later; this is Python {sys.version.split()[0]} ({sys.executable})")

from paastis import ConfigError, create_app  # noqa: E402
from paastis.startup import error_line  # noqa: E402

try:
    app = create_app()
except ConfigError as error:
    print(error_line(error), file=sys.stderr, flush=True)
    sys.exit(3)  # gunicorn's "worker failed to boot": the master stops instead of respawning
