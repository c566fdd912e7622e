"""Supervision shared by the live cameras: open under a timeout, watch, reopen.

A camera that cannot be opened, or that delivers no frame for ``fault_after_s``, puts the
source in ``camera fault`` (with a message that says what to check); the source keeps trying
every ``retry_s`` and returns to ``ok`` with the first good frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import abstractmethod
from collections.abc import Callable
from typing import Any, Protocol, TypedDict

import numpy as np

from core.clock import Clock
from core.errors import BzgwError
from qr.sources.base import Frame, FrameSource, SourceState, fit, monotonic, to_gray

log = logging.getLogger(__name__)


class CameraOptions(TypedDict, total=False):
    """Capture and supervision settings every camera backend takes (see :class:`CameraSource`)."""

    fps: float
    width: int
    height: int
    fault_after_s: float
    retry_s: float
    open_timeout_s: float


class CameraUnavailableError(BzgwError):
    """The camera could not be opened or stopped delivering frames."""


class Grabber(Protocol):
    """An opened camera: ``read`` blocks for one frame (``None`` on a failed read)."""

    def read(self) -> np.ndarray | None:
        """One frame, or ``None``."""
        ...

    def close(self) -> None:
        """Release the device."""
        ...


class CameraSource(FrameSource):
    """A supervised live camera.

    Args:
        clock: time base of frames.
        fps: frames per second delivered (the camera may run faster; frames are paced).
        width: frames larger than this are downscaled.
        height: see ``width``.
        fault_after_s: no good frame for this long = camera fault.
        retry_s: wait between attempts to reopen.
        open_timeout_s: an open that takes longer is a failure.
    """

    def __init__(self, *, clock: Clock, fps: float = 10, width: int = 640, height: int = 480,
                 fault_after_s: float = 5.0, retry_s: float = 2.0,
                 open_timeout_s: float = 10.0) -> None:
        super().__init__(clock=clock, queue_size=2, lossy=True)
        self.fps = fps
        self.width = width
        self.height = height
        self.fault_after_s = fault_after_s
        self.retry_s = retry_s
        self.open_timeout_s = open_timeout_s

    @abstractmethod
    def _open(self) -> Grabber:
        """Open the camera (blocking, runs in a worker thread).

        Raises:
            CameraUnavailableError: with what to check.
        """

    async def _produce(self, put: Callable[[Frame], Any]) -> None:
        while True:
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
                # cancellation that races with the result, and the source would never stop.
                async with asyncio.timeout(self.open_timeout_s):
                    grabber = await asyncio.to_thread(self._open)
            except CameraUnavailableError as err:
                self._set_state(SourceState.FAULT, str(err))
                await asyncio.sleep(self.retry_s)
                continue
            except TimeoutError:
                self._set_state(SourceState.FAULT,
                                f"camera did not open within {self.open_timeout_s:g} s")
                await asyncio.sleep(self.retry_s)
                continue
            try:
                await self._stream(grabber, put)
            finally:
                with contextlib.suppress(OSError, RuntimeError):
                    await asyncio.to_thread(grabber.close)
            await asyncio.sleep(self.retry_s)

    async def _stream(self, grabber: Grabber, put: Callable[[Frame], Any]) -> None:
        period = 1.0 / self.fps
        last_good = monotonic()
        next_at = last_good
        while True:
            try:
                # A wedged driver can block read() forever; give up on it after the fault
                # delay (the worker thread is abandoned, the device reopened).
                async with asyncio.timeout(self.fault_after_s):
                    image = await asyncio.to_thread(grabber.read)
            except TimeoutError:
                image = None
            except (OSError, RuntimeError) as err:
                log.debug("camera read failed: %s", err)
                image = None
            now = monotonic()
            if image is None or image.size == 0:
                if now - last_good >= self.fault_after_s:
                    self._set_state(SourceState.FAULT, f"no frame for {now - last_good:.1f} s: "
                                    "check the camera cable and power")
                    return
                await asyncio.sleep(min(period, 0.05))
                continue
            last_good = now
            self._set_state(SourceState.OK)
            if now < next_at:
                continue  # camera faster than the configured rate: skip this one
            next_at = max(next_at + period, now - period)
            await put(self._frame(fit(to_gray(image), self.width, self.height)))
