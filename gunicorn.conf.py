"""gunicorn settings for ``gunicorn app:app``: paastis's own, kept in the package (``paastis/gunicorn_conf.py``).

They live in the package so that ``paastis serve`` finds the same settings in an installed
paastis; this file is what gunicorn reads by default when started from the repository.
"""

import sys

if sys.version_info < (3, 11):  # noqa: UP036 - before importing paastis, which needs 3.11
    sys.exit(f"paastis: needs Python 3.11 or later; this is Python {sys.version.split()[0]} ({sys.executable})")

import importlib  # noqa: E402

if "paastis.gunicorn_conf" in sys.modules:  # a reload (SIGHUP): check the configuration again, afresh
    importlib.reload(sys.modules["paastis.gunicorn_conf"])

from paastis.gunicorn_conf import *  # noqa: E402, F403
