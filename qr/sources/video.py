"""A video file as a camera: frames subsampled to the configured rate."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict

from core.clock import Clock
from core.errors import CaptureFormatError, DependencyMissingError
from qr.sources.base import Frame, FrameSource, SourceKind, SourceState, fit, to_gray


class VideoOptions(TypedDict, total=False):
    """Backend options for :func:`qr.sources.open_source` (``video={...}``)."""

    realtime: bool


class VideoSource(FrameSource):
    """Frames of a video file (anything OpenCV's FFmpeg backend reads).

    Frame times are the clock's time at the start plus the frame's position in the video, so
    a replayed video keeps its own timing.

    Args:
        path: the video file.
        clock: time base.
        fps: frames per second taken from the video (fewer if the video has fewer).
        width: frames larger than this are downscaled.
        height: see ``width``.
        realtime: pace frames at video speed (off: as fast as they are consumed).

    Raises:
        DependencyMissingError: OpenCV is not installed.
    """

    kind = SourceKind.VIDEO

    def __init__(self, path: Path, *, clock: Clock, fps: float = 10, width: int = 640,
                 height: int = 480, realtime: bool = False) -> None:
        super().__init__(clock=clock, queue_size=4, lossy=False)
        try:
            import cv2
        except ImportError as err:
            raise DependencyMissingError("opencv", "pip install 'bzgw[opencv]'") from err
        self._cv2 = cv2
        self.path = Path(path)
        self.fps = fps
        self.width = width
        self.height = height
        self.realtime = realtime

    def _open(self) -> Any:
        if not self.path.is_file():
            raise CaptureFormatError(f"video {self.path} does not exist", offset=0)
        cap = self._cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            cap.release()
            raise CaptureFormatError(f"video {self.path} could not be opened (not a video, "
                                     "or a codec OpenCV lacks)", offset=0)
        return cap

    async def _produce(self, put: Callable[[Frame], Any]) -> None:
        cap = await asyncio.to_thread(self._open)
        try:
            self._set_state(SourceState.OK)
            native = cap.get(self._cv2.CAP_PROP_FPS) or 0.0
            native = native if 0 < native < 1000 else 25.0
            step = 1.0 / min(self.fps, native)
            t0 = self.clock.now()
            loop = asyncio.get_running_loop()
            wall0 = loop.time()
            n, next_pos = 0, 0.0
            while True:
                ok, image = await asyncio.to_thread(cap.read)
                if not ok or image is None:
                    return
                pos = n / native
                n += 1
                if pos + 1e-9 < next_pos:
                    continue
                next_pos += step
                if self.realtime:
                    await asyncio.sleep(max(0.0, wall0 + pos - loop.time()))
                await put(self._frame(fit(to_gray(image), self.width, self.height),
                                      ts=t0 + pos))
        finally:
            cap.release()
