"""Frame sources: folder, video file, V4L2 and picamera2 with hardware stood in at the lowest layer.

No camera exists here: the V4L2 tests inject a ``VideoCapture`` stand-in whose device node is
a file the test removes and restores (a camera unplugged and plugged back); the picamera2
tests inject a stand-in module. Everything above that layer is the real code.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import cv2
import numpy as np
import pytest
import segno
from PIL import Image

from contract.records import CheckIn
from core.clock import ReplayClock, SystemClock
from core.errors import BzgwError, CaptureFormatError, DependencyMissingError
from gateway.feedback import Feedback
from qr.checkin import CheckInPipeline
from qr.config import QrConfig
from qr.decoder import Decoder
from qr.recognizers import Recognizer
from qr.sources import Frame, SourceKind, SourceState, open_source
from qr.sources.folder import FolderSource
from qr.sources.picam import Picamera2Source
from qr.sources.v4l2 import V4l2Source
from qr.sources.video import VideoSource

PAYLOAD = "001099012345|123456789|Nguyễn Văn An|01011999|Nam|Số 1, Hà Nội|15082021"


def qr_image(payload: str = PAYLOAD, size: tuple[int, int] = (480, 640),
             scale: int = 3) -> np.ndarray:
    q = segno.make(payload, error="m", micro=False)
    sym = np.where(np.array(list(q.matrix_iter(scale=scale, border=4)), bool), 0, 255)
    canvas = np.full(size, 255, np.uint8)
    canvas[20:20 + sym.shape[0], 20:20 + sym.shape[1]] = sym
    return canvas


def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> Any:
    async def poll() -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise AssertionError("condition not reached in time")
            await asyncio.sleep(0.01)

    return poll()


class FakeCapture:
    """Stands in for ``cv2.VideoCapture`` on a device node: frames while the node exists."""

    instances: ClassVar[list[FakeCapture]] = []

    def __init__(self, device: str) -> None:
        self.device = Path(device)
        self.props: dict[int, float] = {}
        self.released = False
        self.image = cv2.cvtColor(qr_image(size=(720, 960), scale=4), cv2.COLOR_GRAY2BGR)
        FakeCapture.instances.append(self)

    def isOpened(self) -> bool:
        return self.device.exists()

    def set(self, prop: int, value: float) -> bool:
        self.props[prop] = value
        return True

    def read(self) -> tuple[bool, np.ndarray | None]:
        time.sleep(0.002)  # a camera delivers at its own pace
        if not self.device.exists():
            return False, None
        return True, self.image.copy()

    def release(self) -> None:
        self.released = True


async def take(frames: AsyncIterator[Frame], n: int) -> list[Frame]:
    return [await anext(frames) for _ in range(n)]


def test_v4l2_camera_unplugged_is_a_fault_and_capture_resumes(tmp_path: Path) -> None:
    dev = tmp_path / "video0"
    dev.touch()
    FakeCapture.instances.clear()
    src = V4l2Source(str(dev), clock=SystemClock(), capture_factory=FakeCapture, fps=50,
                     width=640, height=480, fault_after_s=0.2, retry_s=0.05)
    seen: list[str] = []
    unregister = src.on_status(lambda s: seen.append(s.state.value))

    async def scenario() -> None:
        frames = src.frames()
        first = await anext(frames)
        assert first.image.ndim == 2 and first.image.shape == (480, 640)  # gray, downscaled
        assert src.status.state is SourceState.OK
        dev.unlink()  # unplugged
        await wait_until(lambda: src.status.state is SourceState.FAULT)
        await wait_until(lambda: "not present" in src.status.detail)
        dev.touch()  # plugged back
        await wait_until(lambda: src.status.state is SourceState.OK)
        again = await anext(frames)
        assert again.index > first.index
        await frames.aclose()

    asyncio.run(scenario())
    unregister()
    assert seen[:3] == ["ok", "camera fault", "ok"]
    assert src.status.faults == 1
    props = FakeCapture.instances[0].props
    assert props[cv2.CAP_PROP_FRAME_WIDTH] == 640 and props[cv2.CAP_PROP_FPS] == 50
    assert all(c.released for c in FakeCapture.instances)  # every open was closed


def test_camera_fault_reaches_staff_feedback(tmp_path: Path) -> None:
    dev = tmp_path / "video0"
    dev.touch()
    clock = SystemClock()
    src = V4l2Source(str(dev), clock=clock, capture_factory=FakeCapture, fps=20,
                     fault_after_s=0.2, retry_s=0.05)
    fb = Feedback(led_pin=None, buzzer_pin=None)
    got: list[CheckIn] = []
    pipeline = CheckInPipeline(recognizer=Recognizer(), sink=got.append,
                               decoder=Decoder(budget_ms=20), feedback=fb)

    def states() -> list[str]:
        return [e["state"] for e in reversed(fb.events.recent(100))]

    async def scenario() -> None:
        task = asyncio.create_task(pipeline.run(src, clock))
        await wait_until(lambda: len(got) == 1)
        dev.unlink()
        await wait_until(lambda: "camera fault" in states())
        dev.touch()
        await wait_until(lambda: "camera ok" in states())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert states()[0] == "accepted" and states()[-2:] == ["camera fault", "camera ok"]
    assert got[0].subject == "001099012345"
    assert not fb.camera_fault


@pytest.mark.parametrize(("device", "detail"), [
    ("/dev/video97", "is not present"),  # no such camera
    ("/dev/null", "could not be opened"),  # there, but not a camera (real OpenCV)
])
def test_v4l2_without_a_camera_reports_a_fault(device: str, detail: str) -> None:
    cfg = QrConfig(source="v4l2", device=device, camera_fault_s=0.2, camera_retry_s=0.05)
    src = open_source(cfg, clock=SystemClock())
    assert src.kind is SourceKind.V4L2

    async def scenario() -> None:
        frames = src.frames()
        pending = asyncio.ensure_future(anext(frames))
        await wait_until(lambda: src.status.state is SourceState.FAULT)
        assert detail in src.status.detail
        assert src.status.as_dict()["state"] == "camera fault"
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        await frames.aclose()

    asyncio.run(scenario())
    assert src.status.state is SourceState.ENDED and src.status.faults == 1


def test_lossy_camera_queue_counts_dropped_frames(tmp_path: Path) -> None:
    dev = tmp_path / "video0"
    dev.touch()
    src = V4l2Source(str(dev), clock=SystemClock(), capture_factory=FakeCapture, fps=100,
                     fault_after_s=1.0, retry_s=0.05)

    async def scenario() -> None:
        frames = src.frames()
        await anext(frames)
        await wait_until(lambda: src.status.dropped > 0)  # consumer asleep, camera running
        await frames.aclose()

    asyncio.run(scenario())
    assert src.status.frames > src.status.dropped > 0


class FakePicamera2:
    """Stands in for ``picamera2.Picamera2``: YUV420 frames while ``present`` is true."""

    present = True
    log: ClassVar[list[str]] = []

    def __init__(self, camera_num: int) -> None:
        if not FakePicamera2.present:
            raise RuntimeError("Camera __init__ sequence did not complete.")
        self.size = (0, 0)
        self.log.append(f"open {camera_num}")

    def create_video_configuration(self, *, main: dict, controls: dict) -> dict:
        self.log.append(f"config {main['format']} {main['size']} {controls['FrameRate']}")
        return {"main": main}

    def configure(self, config: dict) -> None:
        self.size = config["main"]["size"]

    def start(self) -> None:
        self.log.append("start")

    def capture_array(self, name: str) -> np.ndarray:
        time.sleep(0.002)
        if not FakePicamera2.present:
            raise RuntimeError("camera frontend has timed out")
        w, h = self.size
        yuv = np.full((h * 3 // 2, w), 128, np.uint8)  # chroma planes below the luma plane
        yuv[:h, :w] = qr_image(size=(h, w))
        return yuv

    def stop(self) -> None:
        self.log.append("stop")

    def close(self) -> None:
        self.log.append("close")


def test_picamera2_luma_plane_fault_and_resume() -> None:
    FakePicamera2.present = True
    FakePicamera2.log = []
    module = SimpleNamespace(Picamera2=FakePicamera2)
    cfg = QrConfig(source="picamera2", fps=15, width=640, height=480, camera_fault_s=0.2,
                   camera_retry_s=0.05)
    src = open_source(cfg, clock=SystemClock(), picamera2={"module": module})
    assert isinstance(src, Picamera2Source)

    async def scenario() -> Frame:
        frames = src.frames()
        first = await anext(frames)
        FakePicamera2.present = False  # ribbon cable out
        await wait_until(lambda: src.status.state is SourceState.FAULT)
        FakePicamera2.present = True
        await wait_until(lambda: src.status.state is SourceState.OK)
        await frames.aclose()
        return first

    first = asyncio.run(scenario())
    assert first.image.shape == (480, 640)
    assert [c.raw.decode() for c in Decoder().decode(first.image).codes] == [PAYLOAD]
    assert "config YUV420 (640, 480) 15.0" in FakePicamera2.log
    assert FakePicamera2.log.count("close") >= 2 and src.status.faults == 1


def test_picamera2_missing_is_a_clear_dependency_error() -> None:
    if importlib.util.find_spec("picamera2") is not None:
        pytest.skip("picamera2 is installed here")
    with pytest.raises(DependencyMissingError) as err:
        open_source(QrConfig(source="picamera2"), clock=SystemClock())
    assert err.value.what == "picamera2"
    assert "apt install python3-picamera2" in str(err.value)
    assert "--system-site-packages" in str(err.value)


def test_folder_once_reads_images_oldest_first_and_skips_broken_ones(tmp_path: Path) -> None:
    for i, name in enumerate(["b.png", "a.jpg", "broken.png", "c.png"]):
        path = tmp_path / name
        if name == "broken.png":
            path.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
        else:
            Image.fromarray(qr_image(f"CODE {name}", size=(960, 1280))).save(path)
        mtime = 1_600_000_000 + i
        os.utime(path, (mtime, mtime))
    (tmp_path / "notes.txt").write_text("not an image")
    src = FolderSource(tmp_path, clock=ReplayClock(5.0), once=True)

    async def collect() -> list[Frame]:
        return [f async for f in src]

    frames = asyncio.run(collect())
    assert [f.name for f in frames] == ["b.png", "a.jpg", "c.png"]
    assert all(f.image.shape == (480, 640) and f.ts == 5.0 for f in frames)
    assert [f.index for f in frames] == [0, 1, 2]
    assert src.unreadable == ["broken.png"]
    assert src.status.state is SourceState.ENDED


def test_folder_watch_picks_up_new_files(tmp_path: Path) -> None:
    src = FolderSource(tmp_path, clock=SystemClock(), poll_s=0.02)

    async def scenario() -> list[Frame]:
        frames = src.frames()
        pending = asyncio.ensure_future(take(frames, 2))
        await asyncio.sleep(0.1)
        Image.fromarray(qr_image("FIRST")).save(tmp_path / "1.png")
        await asyncio.sleep(0.1)
        Image.fromarray(qr_image("SECOND")).save(tmp_path / "2.png")
        got = await asyncio.wait_for(pending, 5)
        await frames.aclose()
        return got

    got = asyncio.run(scenario())
    assert [f.name for f in got] == ["1.png", "2.png"]
    decoder = Decoder()
    assert [decoder.decode(f.image).codes[0].text for f in got] == ["FIRST", "SECOND"]


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    src = FolderSource(tmp_path / "nope", clock=SystemClock(), once=True)

    async def collect() -> None:
        async for _ in src:
            pass

    with pytest.raises(BzgwError, match="does not exist"):
        asyncio.run(collect())


def test_video_file_is_subsampled_and_timed_by_its_own_clock(tmp_path: Path) -> None:
    path = tmp_path / "door.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (960, 720))
    code = cv2.cvtColor(qr_image(size=(720, 960), scale=5), cv2.COLOR_GRAY2BGR)
    blank = np.full((720, 960, 3), 255, np.uint8)
    for i in range(30):  # one second: the code is shown in the middle third
        writer.write(code if 10 <= i < 20 else blank)
    writer.release()
    cfg = QrConfig(source="video", video=path, fps=10, width=640, height=480)
    src = open_source(cfg, clock=ReplayClock(1000.0))

    async def collect() -> list[Frame]:
        return [f async for f in src]

    frames = asyncio.run(collect())
    assert len(frames) == 10
    assert [round(f.ts - 1000.0, 3) for f in frames] == [round(i / 10, 3) for i in range(10)]
    assert all(f.image.shape == (480, 640) for f in frames)
    decoder = Decoder()
    with_code = [i for i, f in enumerate(frames) if decoder.decode(f.image).codes]
    assert with_code == [4, 5, 6]  # 0.4–0.6 s: frames 12, 15, 18 of the video


def test_bad_video_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"definitely not a video" * 100)
    for path, message in ((bad, "could not be opened"), (tmp_path / "none.mp4",
                                                         "does not exist")):
        src = VideoSource(path, clock=SystemClock())

        async def collect(s: VideoSource = src) -> None:
            async for _ in s:
                pass

        with pytest.raises(CaptureFormatError, match=message):
            asyncio.run(collect())


def unchecked(**fields: Any) -> QrConfig:
    """A section as its check would refuse it: built valid, then changed."""
    cfg = QrConfig()
    for name, value in fields.items():
        setattr(cfg, name, value)
    return cfg


@pytest.mark.parametrize(("cfg", "message"), [
    (QrConfig(source="none"), "QR capture is off"),
    (QrConfig(source="v4l2", enabled=False), "QR capture is off"),
    # refused by the config check already; the source checks again for a config changed
    # after the check
    (unchecked(source="folder"), "qr.folder is not set"),
    (unchecked(source="video"), "qr.video is not set"),
])
def test_open_source_refuses_incomplete_config(cfg: QrConfig, message: str) -> None:
    with pytest.raises(BzgwError, match=message):
        open_source(cfg, clock=SystemClock())


def test_open_source_picks_the_backend(tmp_path: Path) -> None:
    folder = open_source(QrConfig(source="folder", folder=tmp_path), clock=SystemClock())
    assert isinstance(folder, FolderSource) and folder.kind is SourceKind.FOLDER
    v4l2 = open_source(QrConfig(source="v4l2", device="/dev/video5", fps=7, width=320,
                                height=240), clock=SystemClock())
    assert isinstance(v4l2, V4l2Source)
    assert (v4l2.device, v4l2.fps, v4l2.width, v4l2.height) == ("/dev/video5", 7, 320, 240)
