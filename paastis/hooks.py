"""Lifecycle hooks: operator-supplied shell commands run around starts and stops.

The app and the occasion reach the command only through environment variables, never
by formatting them into the command string, so a hostile Host header cannot inject
anything. Each hook runs in its own process group so that a timeout kills all of it.

A hook is not paastis: it gets an explicit environment (the documented base, ``hooks_env:``
from ``paastis.yml``, the variables ``HOOKS_ENV_PASSTHROUGH`` names, and the ``PAASTIS_*``
variables of its occasion), never paastis's own secrets unless they are named on purpose;
and a line of its output that holds a secret value paastis knows is redacted before it is logged.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .config import ConfigError
from .secrecy import ENV_NAME, Redactor, base_environment

log = logging.getLogger(__name__)

HOOK_NAMES = ("before_start", "after_start", "before_stop", "after_stop")


class HookFailed(Exception):
    """A strict before-hook failed: the operation it guards is abandoned."""


@dataclass(frozen=True)
class Where:
    """Which account and region a hook runs for."""

    provider: str  # the account's name (PAASTIS_PROVIDER)
    type: str  # its type (PAASTIS_PROVIDER_TYPE)
    region: str


class HookRunner:
    def __init__(
        self,
        provider: str,
        region: str | None,
        timeout: float,
        strict: bool,
        on_result: Callable[[str, bool], None] | None = None,
        environment: Mapping[str, str] | None = None,
        redact: Redactor | None = None,
        accounts: dict[str, tuple[str, str | None]] | None = None,
    ):
        """``accounts``: each account's type and region (``providers:``), for PAASTIS_PROVIDER_TYPE/REGION."""
        self.provider = provider
        self.region = region or ""
        self.accounts = accounts or {}
        self.timeout = timeout
        self.strict = strict
        self.on_result = on_result
        # What every hook gets besides its occasion's PAASTIS_* variables (see hook_environment).
        self.environment = dict(base_environment() if environment is None else environment)
        self.redact = redact or Redactor(())

    def run(
        self,
        hook: str,
        command: str | None,
        app: str,
        reason: str,
        region: str | None = None,
        provider: str | None = None,
    ) -> bool:
        """Run ``command`` if set; True when it succeeded (or there was nothing to run).

        A failed ``before_*`` hook raises :class:`HookFailed` in strict mode. ``region`` is
        the app's own region when the provider knows it, else its account's, else the configured one.
        ``provider`` is the app's account (its name in ``providers:``).
        """
        if not command:
            return True
        kind, account_region = self.accounts.get(provider or "", (None, None))
        where = Where(provider or self.provider, kind or self.provider, region or account_region or self.region)
        ok = self._execute(hook, command, app, reason, where)
        if self.on_result is not None:
            self.on_result(hook, ok)
        if not ok and self.strict and hook.startswith("before_"):
            raise HookFailed(f"{hook} hook failed for app {app!r} (HOOKS_STRICT=true)")
        return ok

    def run_in_background(
        self,
        hook: str,
        command: str | None,
        app: str,
        reason: str,
        region: str | None = None,
        provider: str | None = None,
    ) -> None:
        """After-hooks must not hold the request that triggered them."""
        if command:
            args = (hook, command, app, reason, region, provider)
            threading.Thread(target=self.run, args=args, daemon=True).start()

    def _environment(self, hook: str, app: str, reason: str, where: Where) -> dict[str, str]:
        env = dict(self.environment)
        env.update(
            PAASTIS_APP_NAME=app,
            PAASTIS_HOOK=hook,
            PAASTIS_PROVIDER=where.provider,
            PAASTIS_PROVIDER_TYPE=where.type,
            PAASTIS_REGION=where.region,
            PAASTIS_REASON=reason,
        )
        return env

    def _execute(self, hook: str, command: str, app: str, reason: str, where: Where) -> bool:
        started = time.monotonic()
        process = subprocess.Popen(
            command,
            shell=True,
            env=self._environment(hook, app, reason, where),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        relay = threading.Thread(target=_relay_output, args=(process, app, hook, self.redact), daemon=True)
        relay.start()
        try:
            code = process.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            relay.join(timeout=1)
            log.error(
                "hook %s for app %s timed out after %gs and was killed", hook, app, self.timeout, extra={"app": app}
            )
            return False
        relay.join(timeout=1)
        elapsed = time.monotonic() - started
        if code != 0:
            log.error(
                "hook %s for app %s exited with code %d after %.2fs", hook, app, code, elapsed, extra={"app": app}
            )
            return False
        log.info("hook %s for app %s succeeded in %.2fs", hook, app, elapsed, extra={"app": app})
        return True


def hook_environment(
    base: Mapping[str, str], hooks_env: Mapping[str, str], passed: Mapping[str, str]
) -> dict[str, str]:
    """The fixed part of every hook's environment: the base, then ``hooks_env:``, then ``HOOKS_ENV_PASSTHROUGH``."""
    return {**base, **hooks_env, **passed}


def parse_hooks_env(config: Mapping[str, Any], source: str = "paastis.yml") -> dict[str, str]:
    """``hooks_env:``: a mapping of variable names to plain values, given to every hook."""
    raw = config.get("hooks_env")
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(v, str | int | float | bool) for v in raw.values()):
        raise ConfigError(f"{source}: hooks_env must be a mapping of variable names to plain values")
    bad = [str(name) for name in raw if not ENV_NAME.fullmatch(str(name))]
    if bad:
        raise ConfigError(f"{source}: hooks_env: {', '.join(map(repr, bad))} is not a variable name")
    return {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in raw.items()}


def _relay_output(process: subprocess.Popen, app: str, hook: str, redact: Redactor) -> None:
    """Send the hook's output to the log line by line, tagged so it can be traced, secrets redacted."""
    assert process.stdout is not None
    for raw in process.stdout:
        line = redact(raw.decode(errors="replace").rstrip())
        log.info("[hook %s app=%s] %s", hook, app, line, extra={"app": app})
    process.stdout.close()


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()
