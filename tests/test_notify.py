"""sd_notify against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bzgw.lab import Lab, write_gateway_config
from gateway.notify import MAX_STATUS_CHARS, Notifier, run_watchdog, watchdog_interval


class FakeSystemd:
    """A bound datagram socket, read the way systemd's manager reads NOTIFY_SOCKET."""

    def __init__(self, address: str, bind_to: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(bind_to)
        self.sock.settimeout(2)

    def messages(self) -> list[dict[str, str]]:
        """Every datagram waiting, each parsed into its fields."""
        out = []
        self.sock.setblocking(False)
        try:
            while True:
                data = self.sock.recv(65536)
                fields = dict(line.split("=", 1) for line in data.decode().split("\n"))
                out.append(fields)
        except BlockingIOError:
            pass
        finally:
            self.sock.settimeout(2)
        return out

    def one(self) -> dict[str, str]:
        """Exactly one waiting message."""
        msgs = self.messages()
        assert len(msgs) == 1, msgs
        return msgs[0]


@pytest.fixture
def systemd_socket() -> Iterator[FakeSystemd]:
    # A short folder: unix socket paths are limited to 108 bytes and tmp_path can be long.
    with tempfile.TemporaryDirectory(prefix="bzn") as d:
        path = os.path.join(d, "notify")
        fake = FakeSystemd(path, path)
        try:
            yield fake
        finally:
            fake.sock.close()


@pytest.fixture
def abstract_socket() -> Iterator[FakeSystemd]:
    name = f"bzgw-test-notify-{os.getpid()}-{id(object())}"
    fake = FakeSystemd("@" + name, "\0" + name)
    try:
        yield fake
    finally:
        fake.sock.close()


def test_from_env_without_socket_is_a_no_op() -> None:
    n = Notifier.from_env({})
    assert not n.enabled
    assert n.ready("x") is False
    assert n.watchdog() is False
    assert n.status("x") is False
    assert n.stopping() is False
    assert n.watchdog_interval() is None
    assert n.sent == 0


def test_ready_status_watchdog_stopping_reach_the_socket(systemd_socket: FakeSystemd) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": systemd_socket.address})
    assert n.enabled
    assert n.ready("capturing: ble, qr")
    assert systemd_socket.one() == {"READY": "1", "STATUS": "capturing: ble, qr"}
    assert n.watchdog()
    assert systemd_socket.one() == {"WATCHDOG": "1"}
    assert n.status("outbox 3 batches, last sync 10:42")
    assert systemd_socket.one() == {"STATUS": "outbox 3 batches, last sync 10:42"}
    assert n.stopping()
    assert systemd_socket.one() == {"STOPPING": "1"}
    assert n.extend_timeout(2.5)
    assert systemd_socket.one() == {"EXTEND_TIMEOUT_USEC": "2500000"}
    assert n.sent == 5
    n.close()


def test_abstract_namespace_socket(abstract_socket: FakeSystemd) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": abstract_socket.address})
    assert n.ready()
    assert abstract_socket.one() == {"READY": "1"}


def test_newlines_in_status_cannot_inject_fields(systemd_socket: FakeSystemd) -> None:
    n = Notifier(systemd_socket.address)
    n.status("camera lost\nREADY=1\r\nWATCHDOG=1")
    msg = systemd_socket.one()
    assert set(msg) == {"STATUS"}
    assert "\n" not in msg["STATUS"]
    assert msg["STATUS"].startswith("camera lost")


def test_long_status_is_cut(systemd_socket: FakeSystemd) -> None:
    n = Notifier(systemd_socket.address)
    n.status("x" * 5000)
    assert len(systemd_socket.one()["STATUS"]) == MAX_STATUS_CHARS


def test_vanished_socket_is_logged_once_and_never_raises(
        systemd_socket: FakeSystemd, caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier(systemd_socket.address)
    assert n.ready()
    systemd_socket.sock.close()
    os.unlink(systemd_socket.address)
    assert n.watchdog() is False
    assert n.watchdog() is False
    assert not n.enabled
    warnings = [r for r in caplog.records if "cannot notify systemd" in r.getMessage()]
    assert len(warnings) == 1


def test_non_unix_address_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not n.enabled
    assert n.ready() is False
    assert any("not a unix socket" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("env", "expected"), [
    ({}, None),
    ({"WATCHDOG_USEC": "120000000"}, 60.0),
    ({"WATCHDOG_USEC": "120000000", "WATCHDOG_PID": str(os.getpid())}, 60.0),
    ({"WATCHDOG_USEC": "120000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
    ({"WATCHDOG_USEC": "120000000", "WATCHDOG_PID": "x"}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "-5"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({"WATCHDOG_USEC": "3000000"}, 1.5),
])
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(env) == expected
    assert Notifier.from_env(env).watchdog_interval() == expected


def test_watchdog_pings_only_while_progressing(systemd_socket: FakeSystemd) -> None:
    n = Notifier(systemd_socket.address, watchdog_s=0.01)
    # The pipeline progresses twice, stalls twice (same reason), then recovers.
    script: list[str | None] = [None, None, "no adverts for 95 s", "no adverts for 95 s", None]
    seen: list[str | None] = []

    async def main() -> None:
        done = asyncio.Event()

        def probe() -> str | None:
            reason = script[len(seen)] if len(seen) < len(script) else None
            seen.append(reason)
            if len(seen) >= len(script):
                done.set()
            return reason

        task = asyncio.create_task(run_watchdog(n, probe, interval=0.001))
        await asyncio.wait_for(done.wait(), timeout=5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    msgs = systemd_socket.messages()[:5]
    assert msgs == [{"WATCHDOG": "1"}, {"WATCHDOG": "1"},
                    {"STATUS": "stalled: no adverts for 95 s"},
                    {"WATCHDOG": "1"}, {"STATUS": "running"}], msgs


def test_watchdog_loop_returns_without_watchdog(systemd_socket: FakeSystemd) -> None:
    n = Notifier(systemd_socket.address)  # socket but no WatchdogSec
    asyncio.run(asyncio.wait_for(run_watchdog(n, lambda: None), timeout=1))
    assert systemd_socket.messages() == []



def test_bzgw_run_speaks_the_protocol_the_unit_expects(
        lab: Lab, tmp_path: Path, systemd_socket: FakeSystemd) -> None:
    """`bzgw run` under Type=notify + WatchdogSec: READY, WATCHDOG pings, STATUS, STOPPING."""
    cfg = write_gateway_config(lab, "gw-a", tmp_path / "gw")
    env = {**os.environ, "NOTIFY_SOCKET": systemd_socket.address,
           "WATCHDOG_USEC": "1000000", "PYTHONUNBUFFERED": "1"}
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen([sys.executable, "-m", "bzgw.cli", "run", "--config", str(cfg)],
                            stderr=subprocess.PIPE, env=env)
    seen: list[dict[str, str]] = []
    try:
        systemd_socket.sock.settimeout(30)
        # Read as systemd does, until READY and then two watchdog pings have arrived.
        while sum("WATCHDOG" in m for m in seen) < 2 or not any("READY" in m for m in seen):
            data = systemd_socket.sock.recv(65536)
            seen.append(dict(line.split("=", 1) for line in data.decode().split("\n")))
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    after = systemd_socket.messages()
    assert any(m.get("STATUS") for m in seen + after)
    assert any(m.get("STOPPING") == "1" for m in after)
