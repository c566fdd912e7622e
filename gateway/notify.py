"""sd_notify for the daemons: READY, WATCHDOG, STATUS and STOPPING to systemd.

``bzgw-gateway.service`` is ``Type=notify`` with ``WatchdogSec=``. The daemon says READY once
its pipeline runs and pings WATCHDOG only while the pipeline makes progress, so a stalled
pipeline stops the pings and systemd restarts the service. Outside systemd (tests, the demo,
a shell) ``$NOTIFY_SOCKET`` is unset and every call is a no-op.

Example::

    notifier = Notifier.from_env()
    notifier.ready("capturing: ble, qr")
    task = asyncio.create_task(run_watchdog(notifier, pipeline.stall_reason))
    ...
    notifier.stopping()

The protocol is one datagram of ``KEY=value`` lines to the AF_UNIX socket named by
``$NOTIFY_SOCKET`` (a path, or ``@name`` in the abstract namespace). It is written here on
plain sockets rather than through a library so that the behaviour on a missing or broken
socket is ours: log once, never raise into the pipeline.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

#: systemd accepts datagrams up to this size on the notify socket; STATUS is cut to fit.
MAX_STATUS_CHARS = 1024


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """How often to ping the watchdog, in seconds, or ``None`` when there is no watchdog.

    systemd sets ``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``) when the unit has ``WatchdogSec=``.
    We ping at half the timeout, as sd_watchdog_enabled(3) recommends, so one late ping
    does not kill a healthy service.

    Args:
        environ: the environment to read (default ``os.environ``).

    Returns:
        Seconds between pings, or ``None`` if unset, malformed, zero, or meant for another
        process (``$WATCHDOG_PID`` names a different pid).
    """
    env = os.environ if environ is None else environ
    raw = env.get("WATCHDOG_USEC", "")
    try:
        usec = int(raw)
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid is not None:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 1e6 / 2


def _address(value: str) -> str | None:
    """``$NOTIFY_SOCKET`` as a ``sendto`` address; ``None`` for unusable values."""
    if value.startswith("@"):
        return "\0" + value[1:]  # abstract namespace
    if value.startswith("/"):
        return value
    return None  # vsock:... and other transports are not used by our units


class Notifier:
    """Sends sd_notify messages; a no-op when there is no socket.

    Sending never raises: a broken socket is logged once and the notifier then goes quiet,
    because losing readiness reports must not take capture down with it.
    """

    def __init__(self, socket_path: str | None = None, *,
                 watchdog_s: float | None = None) -> None:
        """Create a notifier.

        Args:
            socket_path: ``$NOTIFY_SOCKET``-style address (path or ``@abstract``), or ``None``
                for a no-op notifier.
            watchdog_s: the ping interval :meth:`watchdog_interval` reports.
        """
        self._addr = _address(socket_path) if socket_path else None
        if socket_path and self._addr is None:
            log.warning("NOTIFY_SOCKET=%r is not a unix socket address; not notifying",
                        socket_path)
        self._watchdog_s = watchdog_s
        self._sock: socket.socket | None = None
        self._failed = False
        self.sent = 0  # datagrams delivered; for diagnostics and tests

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """A notifier for ``$NOTIFY_SOCKET`` and ``$WATCHDOG_USEC`` (no-op when unset)."""
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET") or None, watchdog_s=watchdog_interval(env))

    @property
    def enabled(self) -> bool:
        """True when messages go somewhere."""
        return self._addr is not None and not self._failed

    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings, or ``None`` when the unit has no watchdog."""
        return self._watchdog_s

    def notify(self, **fields: str | int) -> bool:
        """Send one message of ``KEY=value`` fields (``notify(READY=1, STATUS="ok")``).

        Values are made single-line: a newline in a value would start a new field.

        Returns:
            True if the datagram was sent.
        """
        addr = self._addr
        if addr is None or self._failed or not fields:
            return False
        text = "\n".join(f"{k}={_one_line(str(v))}" for k, v in fields.items())
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(text.encode("utf-8"), addr)
        except OSError as err:
            self._failed = True
            log.warning("cannot notify systemd (%s); readiness and watchdog reports stop",
                        err.strerror or err)
            self.close()
            return False
        self.sent += 1
        return True

    def ready(self, status: str | None = None) -> bool:
        """Report that the pipeline runs (``READY=1``), optionally with a status line."""
        if status is None:
            return self.notify(READY=1)
        return self.notify(READY=1, STATUS=_status(status))

    def watchdog(self) -> bool:
        """Ping the watchdog (``WATCHDOG=1``); call only while the pipeline makes progress."""
        return self.notify(WATCHDOG=1)

    def status(self, text: str) -> bool:
        """Set the one-line status shown by ``systemctl status``."""
        return self.notify(STATUS=_status(text))

    def stopping(self, status: str | None = None) -> bool:
        """Report a clean shutdown has begun (``STOPPING=1``)."""
        if status is None:
            return self.notify(STOPPING=1)
        return self.notify(STOPPING=1, STATUS=_status(status))

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more time to start or stop (``EXTEND_TIMEOUT_USEC``), e.g. a slow adapter."""
        return self.notify(EXTEND_TIMEOUT_USEC=max(0, int(seconds * 1e6)))

    def close(self) -> None:
        """Close the socket (it is reopened on the next message unless sending failed)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _one_line(value: str) -> str:
    return " ".join(value.splitlines()) if ("\n" in value or "\r" in value) else value


def _status(text: str) -> str:
    text = _one_line(text)
    return text if len(text) <= MAX_STATUS_CHARS else text[: MAX_STATUS_CHARS - 1] + "…"


async def run_watchdog(notifier: Notifier, stall_reason: Callable[[], str | None], *,
                       interval: float | None = None) -> None:
    """Ping the watchdog while the pipeline makes progress; stop pinging when it stalls.

    Every ``interval`` seconds ``stall_reason()`` is asked; ``None`` means healthy and a
    ``WATCHDOG=1`` is sent, a string means stalled: no ping, and the reason goes to STATUS so
    that ``systemctl status`` and the journal say why systemd is about to restart us.
    Returns at once when there is no watchdog; runs until cancelled otherwise.

    Args:
        notifier: where pings go.
        stall_reason: the daemon's health probe (cheap, non-blocking).
        interval: seconds between checks (default: the notifier's watchdog interval).
    """
    period = interval if interval is not None else notifier.watchdog_interval()
    if period is None or not notifier.enabled:
        return
    stalled_before: str | None = None
    while True:
        reason = stall_reason()
        if reason is None:
            notifier.watchdog()
            if stalled_before is not None:
                notifier.status("running")
        elif reason != stalled_before:
            notifier.status(f"stalled: {reason}")
        stalled_before = reason
        await asyncio.sleep(period)
