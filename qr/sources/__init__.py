"""QR frame sources behind one interface: ``async for frame in source``.

:func:`open_source` picks the backend from the config and imports it inside its branch, so
``import qr`` works without OpenCV or picamera2.
"""

from __future__ import annotations

from typing import Any

from gateway.clock import Clock
from gateway.errors import BzgwError
from qr.config import QrConfig
from qr.sources.base import Frame, FrameSource, SourceKind, SourceState, SourceStatus

__all__ = ["Frame", "FrameSource", "SourceKind", "SourceState", "SourceStatus", "open_source",
           "source_kind"]


def source_kind(cfg: QrConfig) -> SourceKind | None:
    """The backend the config selects (``None`` when QR capture is off)."""
    if not cfg.enabled or cfg.source == "none":
        return None
    return SourceKind(cfg.source)


def open_source(cfg: QrConfig, *, clock: Clock, **options: Any) -> FrameSource:
    """Create the configured frame source.

    Args:
        cfg: the ``qr`` config section.
        clock: time base of the frames.
        **options: backend-specific seams (``capture_factory`` for V4L2, ``module`` for
            picamera2, ``once``/``poll_s`` for folders, ``realtime`` for video).

    Raises:
        BzgwError: QR capture is off, or a required path is not configured.
        DependencyMissingError: the backend's library is not installed.
    """
    kind = source_kind(cfg)
    camera: dict[str, Any] = {"fps": cfg.fps, "width": cfg.width, "height": cfg.height}
    supervised: dict[str, Any] = {"fault_after_s": cfg.camera_fault_s,
                                  "retry_s": cfg.camera_retry_s}
    match kind:
        case SourceKind.PICAMERA2:
            from qr.sources.picam import Picamera2Source

            return Picamera2Source(clock=clock, **camera, **supervised, **options)
        case SourceKind.V4L2:
            from qr.sources.v4l2 import V4l2Source

            return V4l2Source(cfg.device, clock=clock, **camera, **supervised, **options)
        case SourceKind.FOLDER:
            from qr.sources.folder import FolderSource

            if cfg.folder is None:
                raise BzgwError("qr.source is folder but qr.folder is not set")
            return FolderSource(cfg.folder, clock=clock, width=cfg.width, height=cfg.height,
                                **options)
        case SourceKind.VIDEO:
            from qr.sources.video import VideoSource

            if cfg.video is None:
                raise BzgwError("qr.source is video but qr.video is not set")
            return VideoSource(cfg.video, clock=clock, **camera, **options)
        case _:
            raise BzgwError("QR capture is off (qr.enabled false or qr.source none)")
