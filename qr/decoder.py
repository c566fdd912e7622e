"""Find and read QR codes in a frame: zxing-cpp first, then ZBar and cheap retries.

zxing-cpp is the fastest and strongest reader here (restricted to QR and Micro QR, which
cuts its time several-fold); ZBar, the second opinion, reads a few codes zxing misses; the retries
(another binarizer, undoing a hand's motion blur on the code's region, a quiet-zone border, a
rescale, a blur, an adaptive threshold, an inverted image for ZBar) each rescue a few more.
Second opinion and retries run cheapest first, only while the frame's time budget lasts, and
only when the first pass found nothing or located a symbol it could not read, so the common
frame costs one zxing call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from qr import deblur
from qr.records import DecodedCode
from qr.zbar import ZBarReader, guess_text

log = logging.getLogger(__name__)

Gray = np.ndarray  # 2-D uint8


@dataclass(slots=True)
class DecodeResult:
    """What one frame yielded.

    Attributes:
        codes: distinct codes found (by payload and format), in the order found.
        undecodable: symbols located but not read even after the retries (a staff hint:
            "hold the code still / closer").
        steps: names of the passes that ran, in order.
        elapsed_ms: wall time spent on the frame.
    """

    codes: list[DecodedCode] = field(default_factory=list)
    undecodable: int = 0
    steps: list[str] = field(default_factory=list)
    elapsed_ms: float = 0.0


def as_gray(image: Any) -> Gray:
    """A 2-D uint8 array from a grayscale/BGR/RGB(A) array or a PIL image."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("L"))
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    elif arr.ndim == 3 and arr.shape[2] in (3, 4):
        # Channel order does not matter much for black-on-white codes; equal weights keep
        # this cheap and symmetric for BGR and RGB input.
        arr = (arr[:, :, :3].astype(np.uint16).sum(axis=2) // 3).astype(np.uint8)
    if arr.ndim != 2 or arr.shape[0] < 8 or arr.shape[1] < 8:
        raise ValueError(f"expected a 2-D image of at least 8×8 pixels, got shape {arr.shape}")
    return arr


def load_image(path: Any) -> Gray:
    """Read an image file as grayscale.

    Raises:
        OSError: unreadable or not an image (PIL's ``UnidentifiedImageError`` is one).
    """
    with Image.open(path) as im:
        im.load()
        return as_gray(im)


def fit_within(gray: Gray, width: int, height: int) -> Gray:
    """Downscale (never upscale) to fit ``width``×``height``, keeping the aspect ratio."""
    h, w = gray.shape
    if w <= width and h <= height:
        return gray
    im = Image.fromarray(gray)
    im.thumbnail((width, height), Image.Resampling.LANCZOS)
    return np.asarray(im)


# --- image variants for the retries -------------------------------------------------------

def _rescale(gray: Gray) -> Gray:
    # Small crops get bigger modules, big frames lose sensor noise; both move the binarizer
    # off a bad decision.
    h, w = gray.shape
    f = 2.0 if max(h, w) <= 400 else 0.5
    size = (max(8, round(w * f)), max(8, round(h * f)))
    resample = Image.Resampling.BILINEAR if f > 1 else Image.Resampling.BOX
    return np.asarray(Image.fromarray(gray).resize(size, resample))


def _blur(gray: Gray) -> Gray:
    return np.asarray(Image.fromarray(gray).filter(ImageFilter.GaussianBlur(1.0)))


def _adaptive(gray: Gray) -> Gray:
    # Mean-C threshold against a box blur (done in C by Pillow): survives glare gradients
    # that defeat a global threshold.
    radius = max(4, min(gray.shape) // 24)
    mean = np.asarray(Image.fromarray(gray).filter(ImageFilter.BoxBlur(radius)), np.int16)
    return np.where(gray.astype(np.int16) < mean - 6, 0, 255).astype(np.uint8)


def _invert(gray: Gray) -> Gray:
    return 255 - gray


def _pad(gray: Gray) -> Gray:
    # Codes cropped to the image edge have no quiet zone; give them one.
    border = max(8, min(gray.shape) // 16)
    return np.pad(gray, border, mode="constant", constant_values=255)


# OpenCV variants (the ``opencv`` extra) for phone screens held up to the camera: a 3×3
# median removes the moiré of screen pixels against sensor pixels and JPEG speckle without
# rounding module edges; opening then closing with a 2×2 square does the same for thin
# bright/dark streaks; the median (or a light Gaussian) upscaled 1.5× gives motion-blurred
# modules more pixels; a
# Gaussian adaptive threshold after the median flattens a reflected lamp. Each was chosen
# for what it rescued per millisecond on rendered screen photos (qr/screens.py, seeds other
# than the held-out set's).

def _cv2() -> Any | None:
    try:
        import cv2
    except ImportError:
        return None
    return cv2


def _cv_median(gray: Gray) -> Gray:
    import cv2

    return np.asarray(cv2.medianBlur(gray, 3))


def _cv_open_close(gray: Gray) -> Gray:
    import cv2

    k = np.ones((2, 2), np.uint8)
    return np.asarray(cv2.morphologyEx(cv2.morphologyEx(gray, cv2.MORPH_OPEN, k),
                                       cv2.MORPH_CLOSE, k))


def _cv_median_up(gray: Gray) -> Gray:
    import cv2

    return np.asarray(cv2.resize(cv2.medianBlur(gray, 3), None, fx=1.5, fy=1.5,
                                 interpolation=cv2.INTER_CUBIC))


def _cv_gauss_up(gray: Gray) -> Gray:
    import cv2

    return np.asarray(cv2.resize(cv2.GaussianBlur(gray, (0, 0), 0.8), None, fx=1.5, fy=1.5,
                                 interpolation=cv2.INTER_CUBIC))


def _cv_median_adaptive(gray: Gray) -> Gray:
    import cv2

    return np.asarray(cv2.adaptiveThreshold(cv2.medianBlur(gray, 3), 255,
                                            cv2.ADAPTIVE_THRESH_GAUSSIAN_C,
                                            cv2.THRESH_BINARY, 25, 2))


CV_VARIANTS: list[tuple[str, Callable[[Gray], Gray]]] = [
    ("cv-median", _cv_median), ("cv-open-close", _cv_open_close),
    ("cv-median-up", _cv_median_up), ("cv-gauss-up", _cv_gauss_up),
    ("cv-median-adaptive", _cv_median_adaptive)]


class MotionDeblur:
    """The motion-blur retries of one frame (:mod:`qr.deblur`): the region and its blur are
    estimated once per frame and shared by the passes that try different deconvolutions.

    Each pass runs only when a code-like region is found and its edges are clearly weaker in
    one direction (a smear); otherwise the first costs the estimate (a millisecond or two)
    and all read nothing.
    """

    # (length offset from the estimate, px; noise-to-signal floor) per pass, in the order that
    # rescued the most blurred screen photos on seeds other than the held-out set's: the
    # estimate runs about half a pixel long, a higher floor keeps the noise down on most
    # photos, a lower one sharpens more where contrast is left.
    PASSES: tuple[tuple[float, float], ...] = ((-0.5, 0.1), (-0.5, 0.03), (-1.0, 0.03))

    def __init__(self, reader: ZxingReader) -> None:
        self._zx = reader
        self._frame: Gray | None = None
        self._region: deblur.Region | None = None

    def new_frame(self) -> None:
        """Forget the last frame's estimate (a camera may refill the same array)."""
        self._frame = None

    def region(self, gray: Gray) -> deblur.Region | None:
        """The frame's code-like region and blur (cached for the frame being decoded)."""
        if self._frame is None or gray is not self._frame:
            self._frame = gray
            self._region = deblur.estimate(gray)
        return self._region

    def step(self, offset: float, nsr: float) -> Callable[[Gray], tuple[list[DecodedCode], int]]:
        """A pass deconvolving with the estimated line blur lengthened by ``offset``."""
        def run(gray: Gray) -> tuple[list[DecodedCode], int]:
            r = self.region(gray)
            if r is None or r.length + offset < 1.0:
                return [], 0
            crop = gray[r.y0:r.y1, r.x0:r.x1]
            return self._zx.read(deblur.wiener(crop, r.length + offset, r.angle, nsr))
        return run


# --- readers -----------------------------------------------------------------------------

class ZxingReader:
    """zxing-cpp restricted to QR and Micro QR, reporting located-but-unread symbols.

    Text comes in zxing's ``Plain`` mode: per the code's ECI, or zxing's charset guess
    without one, with control characters kept (its default ``HRI`` mode rewrites them).
    """

    def __init__(self) -> None:
        import zxingcpp

        self._z = zxingcpp
        self.formats = (zxingcpp.BarcodeFormat.QRCode, zxingcpp.BarcodeFormat.MicroQRCode)
        self._content = {
            zxingcpp.ContentType.Binary: "binary",
            zxingcpp.ContentType.Mixed: "mixed",
        }

    def read(self, gray: Gray, *, histogram: bool = False) -> tuple[list[DecodedCode], int]:
        """``(codes, symbols located but not readable)``; ``histogram`` picks zxing's
        global-histogram binarizer instead of its local-average one."""
        z = self._z
        binarizer = z.Binarizer.GlobalHistogram if histogram else z.Binarizer.LocalAverage
        found = z.read_barcodes(gray, formats=self.formats, text_mode=z.TextMode.Plain,
                                binarizer=binarizer, return_errors=True)
        codes: list[DecodedCode] = []
        failed: set[tuple[int, int]] = set()
        for r in found:
            if not r.valid:
                # One damaged symbol is reported several times (and its finder patterns as
                # Micro QR candidates): count distinct full-QR positions only.
                if r.format == self._z.BarcodeFormat.QRCode:
                    p = r.position
                    failed.add(((p.top_left.x + p.bottom_right.x) // 64,
                                (p.top_left.y + p.bottom_right.y) // 64))
                continue
            codes.append(DecodedCode(raw=bytes(r.bytes), text=r.text, format=r.format.name,
                                     decoder="zxing",
                                     content=self._content.get(r.content_type, "text")))
        return codes, len(failed)


class ZbarQrReader:
    """ZBar in binary mode; text decoded by :func:`qr.zbar.guess_text`.

    Raises:
        ImportError: when pyzbar or libzbar is missing.
    """

    def __init__(self) -> None:
        self._reader = ZBarReader()

    def read(self, gray: Gray) -> list[DecodedCode]:
        """Every QR code ZBar reads in the image."""
        out = []
        for raw in self._reader.read(gray):
            text, content = guess_text(raw)
            out.append(DecodedCode(raw=raw, text=text, format="QRCode", decoder="zbar",
                                   content=content))
        return out


Step = tuple[str, Callable[[Gray], tuple[list[DecodedCode], int]]]


class Decoder:
    """The gateway's QR reader. Not thread-safe: one per capture thread.

    Args:
        budget_ms: what a frame may cost: a retry runs only if its running cost estimate still
            fits (the first pass always runs).
        zbar: use ZBar as the second opinion when it is installed.
        opencv: use the OpenCV retries (phone screens: moiré, glare, motion blur) when
            OpenCV is installed.
        deblur: use the motion-blur retries (:class:`MotionDeblur`: a phone moving in front
            of the camera).
        retries: run the image-variant retries at all.
        skip_static: for a camera stream: a scene (frames that look alike) gets each retry
            once, spread over its frames within the budget, and none after that (the same
            scene gives the same answer, and an empty door is most of a camera's day). The
            first pass still runs on every frame; a changed scene starts the retries again.

    Attributes:
        zbar_available: whether ZBar is in use.
        skipped: frames whose retries were skipped as unchanged.
    """

    STATIC_DIFF = 3.0  # mean |Δ| of 1/8-scale thumbnails, grey levels: above = scene changed

    def __init__(self, *, budget_ms: float = 30.0, zbar: bool = True,
                 retries: bool = True, skip_static: bool = False,
                 opencv: bool = True, deblur: bool = True) -> None:
        self.budget_ms = budget_ms
        self.skip_static = skip_static
        self.skipped = 0
        self._cost: dict[str, float] = {}  # running estimate of each pass, ms
        self._scene: np.ndarray | None = None  # thumbnail of the scene being retried
        self._next = 1  # its next retry pass
        self._zx = ZxingReader()
        self._deblur = MotionDeblur(self._zx)
        self._zb: ZbarQrReader | None = None
        if zbar:
            try:
                self._zb = ZbarQrReader()
            except (ImportError, OSError) as err:  # pyzbar or libzbar0 missing
                log.info("ZBar second opinion unavailable: %s", err)
        self.zbar_available = self._zb is not None
        self.opencv = opencv and _cv2() is not None
        if opencv and not self.opencv:
            log.info("OpenCV retries unavailable: install bzgw[opencv]")
        self._steps = self._ladder(retries, deblur)

    def _ladder(self, retries: bool, deblur: bool) -> list[Step]:
        zx, zb = self._zx, self._zb

        def zxing_on(variant: Callable[[Gray], Gray] | None, *, hist: bool = False,
                     ) -> Callable[[Gray], tuple[list[DecodedCode], int]]:
            return lambda g: zx.read(variant(g) if variant else g, histogram=hist)

        def zxing_both(variant: Callable[[Gray], Gray],
                       ) -> Callable[[Gray], tuple[list[DecodedCode], int]]:
            def run(g: Gray) -> tuple[list[DecodedCode], int]:
                v = variant(g)
                codes, unread = zx.read(v)
                return (codes, unread) if codes else zx.read(v, histogram=True)
            return run

        def zbar_on(variant: Callable[[Gray], Gray] | None,
                    ) -> Callable[[Gray], tuple[list[DecodedCode], int]]:
            assert zb is not None
            return lambda g: (zb.read(variant(g) if variant else g), 0)

        # Ordered by what each pass rescued per millisecond on the corpus photos and on
        # synthetic hard frames (bench/bench_qr.py), cheapest first. ZBar reads few codes
        # the zxing variants miss but costs the most on a busy frame, so it comes late.
        steps: list[Step] = [("zxing", zxing_on(None))]
        if retries:
            steps += [("zxing-histogram", zxing_on(None, hist=True))]
            if deblur:
                # Right after the first passes: on phone screens held up to the camera the
                # smear is what most often defeats the first pass, and on other frames these
                # passes stop at the estimate (no code-like region, or no smear).
                steps += [(f"deblur-{i + 1}", self._deblur.step(off, nsr))
                          for i, (off, nsr) in enumerate(MotionDeblur.PASSES)]
            if self.opencv:
                steps += [(name, zxing_both(v)) for name, v in CV_VARIANTS]
            steps += [("zxing-blur", zxing_on(_blur, hist=True)),
                      ("zxing-adaptive", zxing_on(_adaptive)),
                      ("zxing-rescale", zxing_on(_rescale)),
                      ("zxing-pad", zxing_on(_pad, hist=True))]
        if zb is not None:
            steps.append(("zbar", zbar_on(None)))
            if retries:
                steps.append(("zbar-invert", zbar_on(_invert)))
        return steps

    @property
    def step_names(self) -> list[str]:
        """The passes in the order they are tried."""
        return [name for name, _ in self._steps]

    def decode(self, image: Any) -> DecodeResult:
        """Every QR code in one image.

        Args:
            image: a 2-D uint8 array (or anything :func:`as_gray` accepts).

        Raises:
            ValueError: the image is not an image (wrong shape, too small).
        """
        t0 = time.perf_counter()
        gray = as_gray(image)
        self._deblur.new_frame()
        res = DecodeResult()
        seen: set[tuple[bytes, str]] = set()
        steps = self._steps
        codes, unread = steps[0][1](gray)  # unread: located but not readable, not yet rescued
        res.steps.append(steps[0][0])
        _merge(res.codes, codes, seen)
        start = 1
        if self.skip_static and not (res.codes and not unread):
            thumb = _thumbnail(gray)
            scene = self._scene
            if (scene is None or scene.shape != thumb.shape
                    or float(np.abs(thumb - scene).mean()) >= self.STATIC_DIFF):
                self._scene, self._next = thumb, 1
            start = self._next
            if start >= len(steps):
                self.skipped += 1
                res.steps.append("skipped-static")
        for j in range(start, len(steps)):
            name, step = steps[j]
            # Stop before a pass that would overrun the budget (by its running cost estimate),
            # not after it: the budget is what a frame may cost.
            if res.codes and not unread:
                break
            if (time.perf_counter() - t0) * 1000 + self._cost.get(name, 0.0) > self.budget_ms:
                if name in self._cost:  # let a pass that no longer fits be tried again later
                    self._cost[name] *= 0.9
                break
            ts = time.perf_counter()
            codes, _ = step(gray)
            ms = (time.perf_counter() - ts) * 1000
            self._cost[name] = ms if name not in self._cost else 0.8 * self._cost[name] + 0.2 * ms
            res.steps.append(name)
            unread = max(0, unread - _merge(res.codes, codes, seen))
            self._next = j + 1
        if self.skip_static and res.codes:
            self._scene = None  # something was read: the next frame starts afresh
        res.undecodable = unread
        res.elapsed_ms = (time.perf_counter() - t0) * 1000
        return res


def _thumbnail(gray: Gray) -> np.ndarray:
    return np.asarray(Image.fromarray(gray).reduce(8), dtype=np.float32)


def _merge(into: list[DecodedCode], codes: Iterable[DecodedCode],
           seen: set[tuple[bytes, str]]) -> int:
    n = 0
    for c in codes:
        key = (c.raw, c.format)
        if key not in seen:
            seen.add(key)
            into.append(c)
            n += 1
    return n
