"""Run a Mosquitto process (demo and tests) with TLS, client certificates and ACLs.

Production brokers are run by systemd from the config ``bzgw broker config`` writes; this
module starts the same config as a child process and waits until it accepts TLS.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from core.errors import BzgwError, DependencyMissingError


def free_port() -> int:
    """A free TCP port on loopback (bind to 0 and close; callers retry on a lost race)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mosquitto_binary() -> str:
    """Path of ``mosquitto``.

    Raises:
        DependencyMissingError: naming the package to install.
    """
    found = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(p)),
        None)
    if not found:
        raise DependencyMissingError(
            "mosquitto", "install it with `sudo apt-get install mosquitto` (or run "
            "scripts/bootstrap.sh)")
    return found


@dataclass
class MosquittoProcess:
    """A Mosquitto child process.

    Attributes:
        conf: path of its ``mosquitto.conf``.
        port: the TLS listener port it must open.
        log: its log file (read it when a test fails).
    """

    conf: Path
    port: int
    host: str = "127.0.0.1"
    log: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self, timeout: float = 10.0) -> MosquittoProcess:
        """Start and wait until the port accepts connections.

        Raises:
            BzgwError: the broker exited (port in use, bad config) with its last log lines.
        """
        binary = mosquitto_binary()
        self.proc = subprocess.Popen([binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                hint = ""
                if "Address already in use" in (err + self.tail()):
                    hint = f" (port {self.port} is in use: stop what holds it or pick another)"
                raise BzgwError(f"mosquitto exited with {self.proc.returncode}{hint}: "
                                f"{(err.strip() or self.tail())[-800:]}")
            with contextlib.suppress(OSError), socket.create_connection(
                    (self.host, self.port), timeout=0.2):
                return self
            time.sleep(0.01)
        self.stop()
        raise BzgwError(f"mosquitto did not open port {self.port} within {timeout} s: "
                        f"{self.tail()[-800:]}")

    def tail(self, n: int = 20) -> str:
        """Last lines of the broker log."""
        if self.log is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        """Terminate (then kill) the broker; safe to call twice."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        if self.proc.stderr:
            self.proc.stderr.close()

    def kill(self) -> None:
        """SIGKILL the broker (outage tests)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
            if self.proc.stderr:
                self.proc.stderr.close()

    def __enter__(self) -> MosquittoProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
