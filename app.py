"""The WSGI entry point: ``gunicorn app:app`` (the application itself is ``paastis.wsgi:app``)."""

import sys

if sys.version_info < (3, 11):  # noqa: UP036 - before importing paastis, which needs 3.11
    sys.exit(f"paastis: needs Python 3.11 or later; this is Python {sys.version.split()[0]} ({sys.executable})")

from paastis.wsgi import app  # noqa: E402, F401
