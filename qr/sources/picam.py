"""Raspberry Pi camera through picamera2 (libcamera), imported only when used.

picamera2 needs libcamera's Python bindings, which come from Raspberry Pi OS's apt archive
(``python3-picamera2``), not from PyPI: on a Pi, create the venv with
``--system-site-packages``. Frames are taken in YUV420 and the Y plane is the grayscale image,
so no colour conversion is spent.
"""

from __future__ import annotations

from typing import Any, TypedDict, Unpack

import numpy as np

from core.clock import Clock
from core.errors import DependencyMissingError
from qr.sources.base import SourceKind
from qr.sources.camera import CameraOptions, CameraSource, CameraUnavailableError, Grabber

FIX = ("on Raspberry Pi OS: apt install python3-picamera2 and create the venv with "
       "--system-site-packages (pip extra bzgw[camera] on aarch64)")


class Picamera2Options(TypedDict, total=False):
    """Backend options for :func:`qr.sources.open_source` (``picamera2={...}``)."""

    camera_num: int
    module: Any


def import_picamera2() -> Any:
    """The ``picamera2`` module.

    Raises:
        DependencyMissingError: not installed, or libcamera's bindings are missing.
    """
    try:
        import picamera2
    except ImportError as err:  # also raised when picamera2 is there but libcamera is not
        raise DependencyMissingError("picamera2", f"{FIX} ({err})") from err
    return picamera2


class _PicamGrabber:
    def __init__(self, cam: Any, height: int, width: int) -> None:
        self.cam = cam
        self.height = height
        self.width = width

    def read(self) -> np.ndarray | None:
        arr = self.cam.capture_array("main")
        if arr is None:
            return None
        y: np.ndarray = np.asarray(arr)[: self.height, : self.width]  # the Y (luma) plane
        return y

    def close(self) -> None:
        try:
            self.cam.stop()
        finally:
            self.cam.close()


class Picamera2Source(CameraSource):
    """The Pi camera, supervised (see :class:`~qr.sources.camera.CameraSource`).

    Args:
        camera_num: which camera (0 for the only one).
        module: the ``picamera2`` module (the seam tests use); imported lazily by default.
        **options: fps, size and supervision (:class:`~qr.sources.camera.CameraOptions`).

    Raises:
        DependencyMissingError: picamera2 cannot be imported here.
    """

    kind = SourceKind.PICAMERA2

    def __init__(self, *, clock: Clock, camera_num: int = 0, module: Any = None,
                 **options: Unpack[CameraOptions]) -> None:
        super().__init__(clock=clock, **options)
        self.camera_num = camera_num
        self._mod = module if module is not None else import_picamera2()

    def _open(self) -> Grabber:
        try:
            cam = self._mod.Picamera2(self.camera_num)
        except (RuntimeError, IndexError, OSError) as err:
            raise CameraUnavailableError(f"Pi camera {self.camera_num} not found ({err}): "
                                         "check the ribbon cable") from err
        try:
            config = cam.create_video_configuration(
                main={"size": (self.width, self.height), "format": "YUV420"},
                controls={"FrameRate": float(self.fps)})
            cam.configure(config)
            cam.start()
        except (RuntimeError, OSError) as err:
            cam.close()
            raise CameraUnavailableError(f"Pi camera {self.camera_num} did not start: {err}"
                                         ) from err
        return _PicamGrabber(cam, self.height, self.width)
