"""Lifecycle hooks: operator-supplied shell commands run around starts and stops.

The app and the occasion reach the command only through environment variables, never
by formatting them into the command string, so a hostile Host header cannot inject
anything. Each hook runs in its own process group so that a timeout kills all of it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

HOOK_NAMES = ("before_start", "after_start", "before_stop", "after_stop")


class HookFailed(Exception):
    """A strict before-hook failed: the operation it guards is abandoned."""


class HookRunner:
    def __init__(
        self,
        provider: str,
        region: str | None,
        timeout: float,
        strict: bool,
        on_result: Callable[[str, bool], None] | None = None,
    ):
        self.provider = provider
        self.region = region or ""
        self.timeout = timeout
        self.strict = strict
        self.on_result = on_result

    def run(self, hook: str, command: str | None, app: str, reason: str, region: str | None = None) -> bool:
        """Run ``command`` if set; True when it succeeded (or there was nothing to run).

        A failed ``before_*`` hook raises :class:`HookFailed` in strict mode. ``region`` is
        the app's own region when the provider knows it, else the configured one.
        """
        if not command:
            return True
        ok = self._execute(hook, command, app, reason, region or self.region)
        if self.on_result is not None:
            self.on_result(hook, ok)
        if not ok and self.strict and hook.startswith("before_"):
            raise HookFailed(f"{hook} hook failed for app {app!r} (HOOKS_STRICT=true)")
        return ok

    def run_in_background(
        self, hook: str, command: str | None, app: str, reason: str, region: str | None = None
    ) -> None:
        """After-hooks must not hold the request that triggered them."""
        if command:
            threading.Thread(target=self.run, args=(hook, command, app, reason, region), daemon=True).start()

    def _environment(self, hook: str, app: str, reason: str, region: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            PAASTIS_APP_NAME=app,
            PAASTIS_HOOK=hook,
            PAASTIS_PROVIDER=self.provider,
            PAASTIS_REGION=region,
            PAASTIS_REASON=reason,
        )
        return env

    def _execute(self, hook: str, command: str, app: str, reason: str, region: str) -> bool:
        started = time.monotonic()
        process = subprocess.Popen(
            command,
            shell=True,
            env=self._environment(hook, app, reason, region),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        relay = threading.Thread(target=_relay_output, args=(process, app, hook), daemon=True)
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


def _relay_output(process: subprocess.Popen, app: str, hook: str) -> None:
    """Send the hook's output to the log line by line, tagged so it can be traced."""
    assert process.stdout is not None
    for raw in process.stdout:
        log.info("[hook %s app=%s] %s", hook, app, raw.decode(errors="replace").rstrip(), extra={"app": app})
    process.stdout.close()


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()
