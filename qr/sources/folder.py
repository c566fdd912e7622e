"""A watched image folder: every new image file becomes one frame.

For the demo, tests, and set-ups where another program drops snapshots into a folder. A file
is read once its size has stopped changing between two polls (so half-written files are not
read); an unreadable file is skipped, counted and logged by name, never fatal.
"""

from __future__ import annotations

import asyncio
import logging
import stat
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict

from core.clock import Clock
from core.errors import BzgwError
from qr.decoder import fit_within, load_image
from qr.sources.base import Frame, FrameSource, SourceKind, SourceState

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                            ".pgm", ".ppm"})


class FolderOptions(TypedDict, total=False):
    """Backend options for :func:`qr.sources.open_source` (``folder={...}``)."""

    once: bool
    poll_s: float
    remember: int


class FolderSource(FrameSource):
    """Frames from image files in a folder, oldest first.

    Args:
        folder: the folder to watch.
        clock: time base of frames.
        once: read the images present now and end (demo, CLI); otherwise keep watching.
        poll_s: how often the folder is listed.
        width: images larger than this are downscaled.
        height: see ``width``.
        remember: how many processed files are remembered (bounded).

    Attributes:
        unreadable: names of files that could not be read (bounded to the last 100).
    """

    kind = SourceKind.FOLDER

    def __init__(self, folder: Path, *, clock: Clock, once: bool = False, poll_s: float = 0.5,
                 width: int = 640, height: int = 480, remember: int = 10000) -> None:
        super().__init__(clock=clock, queue_size=4, lossy=False)
        self.folder = Path(folder)
        self.once = once
        self.poll_s = poll_s
        self.width = width
        self.height = height
        self.remember = remember
        self._done: OrderedDict[tuple[str, int, int], None] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self.unreadable: list[str] = []

    def _listing(self) -> list[tuple[Path, int, int]]:
        try:
            paths = [p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
        except FileNotFoundError as err:
            raise BzgwError(f"QR image folder {self.folder} does not exist") from err
        entries = []
        for p in paths:
            try:
                st = p.stat()
            except FileNotFoundError:  # removed since the listing: nothing to read
                continue
            if stat.S_ISREG(st.st_mode):
                entries.append((p, st.st_mtime_ns, st.st_size))
        return sorted(entries, key=lambda e: (e[1], e[0].name))

    def _ready(self, path: Path, size: int) -> bool:
        if self.once:
            return True
        stable = self._sizes.get(path.name) == size
        self._sizes[path.name] = size
        return stable

    async def _produce(self, put: Callable[[Frame], Any]) -> None:
        self._set_state(SourceState.OK)
        while True:
            listing = await asyncio.to_thread(self._listing)
            for path, mtime, size in listing:
                key = (path.name, mtime, size)
                if key in self._done or not self._ready(path, size):
                    continue
                self._mark(key)
                self._sizes.pop(path.name, None)
                try:
                    gray = await asyncio.to_thread(load_image, path)
                except (OSError, ValueError) as err:
                    self.unreadable = [*self.unreadable[-99:], path.name]
                    log.warning("skipping unreadable image %s: %s", path.name, err)
                    continue
                await put(self._frame(fit_within(gray, self.width, self.height),
                                      name=path.name))
            if self.once:
                return
            await asyncio.sleep(self.poll_s)

    def _mark(self, key: tuple[str, int, int]) -> None:
        self._done[key] = None
        while len(self._done) > self.remember:
            self._done.popitem(last=False)
