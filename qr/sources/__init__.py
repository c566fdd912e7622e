"""QR frame sources behind one interface: ``async for frame in source``.

:func:`open_source` picks the backend from the config and imports it inside its branch, so
``import qr`` works without OpenCV or picamera2.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.clock import Clock
from core.errors import BzgwError
from qr.config import QrConfig
from qr.sources.base import Frame, FrameSource, SourceKind, SourceState, SourceStatus

if TYPE_CHECKING:
    from qr.sources.folder import FolderOptions
    from qr.sources.picam import Picamera2Options
    from qr.sources.v4l2 import V4l2Options
    from qr.sources.video import VideoOptions

__all__ = ["Frame", "FrameSource", "SourceKind", "SourceState", "SourceStatus", "open_source",
           "source_kind"]


def source_kind(cfg: QrConfig) -> SourceKind | None:
    """The backend the config selects (``None`` when QR capture is off)."""
    if not cfg.capturing:
        return None
    return SourceKind(cfg.source)


def open_source(cfg: QrConfig, *, clock: Clock, v4l2: V4l2Options | None = None,
                picamera2: Picamera2Options | None = None,
                folder: FolderOptions | None = None,
                video: VideoOptions | None = None) -> FrameSource:
    """Create the configured frame source.

    Args:
        cfg: the ``qr`` config section (backend, device/path, fps, size, fault timing).
        clock: time base of the frames.
        v4l2: V4L2 backend options (``capture_factory``).
        picamera2: picamera2 backend options (``camera_num``, ``module``).
        folder: folder backend options (``once``, ``poll_s``, ``remember``).
        video: video backend options (``realtime``).

    Raises:
        BzgwError: QR capture is off, or a required path is not configured.
        DependencyMissingError: the backend's library is not installed.
    """
    match source_kind(cfg):
        case SourceKind.PICAMERA2:
            from qr.sources.picam import Picamera2Source

            return Picamera2Source(clock=clock, fps=cfg.fps, width=cfg.width,
                                   height=cfg.height, fault_after_s=cfg.camera_fault_s,
                                   retry_s=cfg.camera_retry_s, **(picamera2 or {}))
        case SourceKind.V4L2:
            from qr.sources.v4l2 import V4l2Source

            return V4l2Source(cfg.device, clock=clock, fps=cfg.fps, width=cfg.width,
                              height=cfg.height, fault_after_s=cfg.camera_fault_s,
                              retry_s=cfg.camera_retry_s, **(v4l2 or {}))
        case SourceKind.FOLDER:
            from qr.sources.folder import FolderSource

            if cfg.folder is None:
                raise BzgwError("qr.source is folder but qr.folder is not set")
            return FolderSource(cfg.folder, clock=clock, width=cfg.width, height=cfg.height,
                                **(folder or {}))
        case SourceKind.VIDEO:
            from qr.sources.video import VideoSource

            if cfg.video is None:
                raise BzgwError("qr.source is video but qr.video is not set")
            return VideoSource(cfg.video, clock=clock, fps=cfg.fps, width=cfg.width,
                               height=cfg.height, **(video or {}))
        case _:
            raise BzgwError("QR capture is off (qr.enabled false or qr.source none)")
