"""The frame-source contract: an async iterator of grayscale frames with a status.

Every source runs a producer task that fills a small bounded queue; the iterator drains it
and stops the producer in ``finally``. Cameras drop the oldest frame when the consumer falls
behind (the newest frame is the one that matters, and every drop is counted); files wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

import numpy as np

from core.clock import Clock

log = logging.getLogger(__name__)


class SourceKind(StrEnum):
    """Which backend produces the frames."""

    PICAMERA2 = "picamera2"
    V4L2 = "v4l2"
    FOLDER = "folder"
    VIDEO = "video"


class SourceState(StrEnum):
    """What the status page shows for the camera."""

    STARTING = "starting"
    OK = "ok"
    FAULT = "camera fault"
    ENDED = "ended"


@dataclass(frozen=True, slots=True)
class Frame:
    """One grayscale frame.

    Attributes:
        image: 2-D uint8 array (height × width).
        ts: wall time of the frame in the source's clock.
        index: frame number from this source, from 0.
        name: where it came from (file name for folder sources; empty for cameras).
    """

    image: np.ndarray
    ts: float
    index: int
    name: str = ""


@dataclass(frozen=True, slots=True)
class SourceStatus:
    """A source's health.

    Attributes:
        state: starting, ok, camera fault, ended.
        detail: what is wrong (and what to do) when not ok.
        since: wall time of the last state change.
        frames: frames delivered so far.
        faults: how many times the source went into fault.
        dropped: frames dropped because the consumer was behind.
    """

    state: SourceState
    detail: str = ""
    since: float = 0.0
    frames: int = 0
    faults: int = 0
    dropped: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for the status page and the health topic."""
        return {"state": self.state.value, "detail": self.detail, "since": self.since,
                "frames": self.frames, "faults": self.faults, "dropped": self.dropped}


StatusCallback = Callable[[SourceStatus], None]
_END = object()


class FrameSource(ABC):
    """Base of every frame source: ``async for frame in source``.

    Args:
        clock: time base of frame timestamps.
        queue_size: frames buffered between producer and consumer.
        lossy: drop the oldest frame when full (cameras) instead of waiting (files).
    """

    kind: SourceKind

    def __init__(self, *, clock: Clock, queue_size: int = 2, lossy: bool = True) -> None:
        self.clock = clock
        self.queue_size = queue_size
        self.lossy = lossy
        self._status = SourceStatus(SourceState.STARTING, since=clock.now())
        self._callbacks: list[StatusCallback] = []
        self._index = 0

    @property
    def status(self) -> SourceStatus:
        """Current health."""
        return self._status

    def on_status(self, callback: StatusCallback) -> Callable[[], None]:
        """Call ``callback`` on every state change; returns the function that unregisters."""
        self._callbacks.append(callback)

        def unregister() -> None:
            with contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

        return unregister

    def _set_state(self, state: SourceState, detail: str = "") -> None:
        old = self._status
        if old.state == state and old.detail == detail:
            return
        faults = old.faults + (state is SourceState.FAULT and old.state is not SourceState.FAULT)
        self._status = replace(old, state=state, detail=detail, since=self.clock.now(),
                               faults=faults)
        if state is SourceState.FAULT:
            log.warning("%s source: camera fault: %s", self.kind.value, detail)
        elif old.state is SourceState.FAULT and state is SourceState.OK:
            log.warning("%s source: camera back", self.kind.value)
        if state != old.state:
            for cb in list(self._callbacks):
                cb(self._status)

    def _frame(self, image: np.ndarray, ts: float | None = None, name: str = "") -> Frame:
        f = Frame(image=image, ts=self.clock.now() if ts is None else ts, index=self._index,
                  name=name)
        self._index += 1
        return f

    @abstractmethod
    async def _produce(self, put: Callable[[Frame], Any]) -> None:
        """Produce frames by awaiting ``put(frame)`` until the source ends."""

    def __aiter__(self) -> AsyncIterator[Frame]:
        return self.frames()

    async def frames(self) -> AsyncIterator[Frame]:
        """The frames, until the source ends (files) or the consumer stops (cameras)."""
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=self.queue_size)

        async def put(frame: Frame) -> None:
            if self.lossy and queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                    self._status = replace(self._status, dropped=self._status.dropped + 1)
            await queue.put(frame)
            self._status = replace(self._status, frames=self._status.frames + 1)

        async def producer() -> None:
            try:
                await self._produce(put)
            finally:
                self._set_state(SourceState.ENDED, self._status.detail)
                me = asyncio.current_task()
                if me is None or not me.cancelling():  # nobody is left to read it otherwise
                    await queue.put(_END)

        task = asyncio.create_task(producer(), name=f"qr-{self.kind.value}-source")
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    break
                yield item
            await task  # surface a producer error
        finally:
            if not task.done():
                task.cancel()
                # Bounded: a producer stuck in a driver call must not hang the consumer.
                done, _ = await asyncio.wait({task}, timeout=5.0)
                if not done:
                    log.error("%s source did not stop within 5 s", self.kind.value)
                elif not task.cancelled() and task.exception() is not None:
                    log.debug("%s source stopped with %r", self.kind.value, task.exception())


def to_gray(image: np.ndarray) -> np.ndarray:
    """2-D uint8 from a camera/decoder array (gray, BGR or BGRA)."""
    arr = np.asarray(image)
    if arr.ndim == 3:
        import cv2  # only camera and video sources call this with colour frames

        code = cv2.COLOR_BGRA2GRAY if arr.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        arr = cv2.cvtColor(arr, code)
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    return arr


def fit(gray: np.ndarray, width: int, height: int) -> np.ndarray:
    """Downscale to fit ``width``×``height`` (never upscale)."""
    h, w = gray.shape[:2]
    if w <= width and h <= height:
        return gray
    import cv2

    f = min(width / w, height / h)
    return cv2.resize(gray, (max(1, round(w * f)), max(1, round(h * f))),
                      interpolation=cv2.INTER_AREA)


def monotonic() -> float:
    """Monotonic seconds (a seam for tests)."""
    return time.monotonic()
