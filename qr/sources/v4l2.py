"""USB or CSI camera through OpenCV's V4L2 backend (``/dev/videoN``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict, Unpack

import numpy as np

from core.clock import Clock
from core.errors import DependencyMissingError
from qr.sources.base import SourceKind
from qr.sources.camera import CameraOptions, CameraSource, CameraUnavailableError, Grabber

CaptureFactory = Callable[[str], Any]


class V4l2Options(TypedDict, total=False):
    """Backend options for :func:`qr.sources.open_source` (``v4l2={...}``)."""

    capture_factory: CaptureFactory


def _opencv_capture() -> CaptureFactory:
    try:
        import cv2
    except ImportError as err:
        raise DependencyMissingError(
            "opencv", "pip install 'bzgw[opencv]' (opencv-python-headless)") from err

    def make(device: str) -> Any:
        return cv2.VideoCapture(device, cv2.CAP_V4L2)

    return make


class _CvGrabber:
    def __init__(self, cap: Any) -> None:
        self.cap = cap

    def read(self) -> np.ndarray | None:
        ok, image = self.cap.read()
        return image if ok and image is not None else None

    def close(self) -> None:
        self.cap.release()


class V4l2Source(CameraSource):
    """A V4L2 camera, supervised (see :class:`~qr.sources.camera.CameraSource`).

    Args:
        device: ``/dev/videoN`` (or an index as a string).
        capture_factory: makes an OpenCV-like capture object from the device (the seam tests
            use to stand in for hardware); ``cv2.VideoCapture(device, CAP_V4L2)`` by default.
        **options: fps, size and supervision (:class:`~qr.sources.camera.CameraOptions`).
    """

    kind = SourceKind.V4L2

    def __init__(self, device: str, *, clock: Clock,
                 capture_factory: CaptureFactory | None = None,
                 **options: Unpack[CameraOptions]) -> None:
        super().__init__(clock=clock, **options)
        self.device = device
        self._factory = capture_factory if capture_factory is not None else _opencv_capture()

    def _open(self) -> Grabber:
        if "/" in self.device and not Path(self.device).exists():
            raise CameraUnavailableError(f"{self.device} is not present: is the camera "
                                         "plugged in?")
        cap = self._factory(self.device)
        if not cap.isOpened():
            cap.release()
            raise CameraUnavailableError(f"{self.device} could not be opened: is another "
                                         "program using the camera?")
        _configure(cap, self.width, self.height, self.fps)
        return _CvGrabber(cap)


def _configure(cap: Any, width: int, height: int, fps: float) -> None:
    try:
        import cv2
    except ImportError:  # a stand-in capture without OpenCV: nothing to set
        return
    for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, width), (cv2.CAP_PROP_FRAME_HEIGHT, height),
                        (cv2.CAP_PROP_FPS, fps),
                        (cv2.CAP_PROP_BUFFERSIZE, 1)):  # latest frame, not a stale queue
        cap.set(prop, value)
