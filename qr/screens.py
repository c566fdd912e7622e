"""Hard check-in photos: a QR code on a phone screen held up to the door camera.

Real doors see codes on phone screens, not on paper: the screen's pixel grid beats against the
camera's (moiré), its glass reflects lamps (glare), a dimmed screen or a low exposure leaves
little contrast, the hand moves (motion blur) and the phone is tilted (perspective). This
renders such photos deterministically from real QR codes (``segno``), so the decoder can be
measured and tested on them without a camera. Each effect is applied to every photo with a
seeded strength; :func:`phone_screen_photos` returns the frames and the payloads they hold.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass

import numpy as np
import segno
from PIL import Image, ImageDraw

from qr.samples import cccd_payload, np_rng

SIZE = (640, 480)


@dataclass(frozen=True)
class ScreenPhoto:
    """One rendered photo and what it shows."""

    gray: np.ndarray
    payload: bytes
    effects: dict[str, float]


def _screen(payload: str, rng: random.Random) -> Image.Image:
    """The phone: bezel, lit screen with a status bar, the code in the middle."""
    qr = segno.make(payload, error="m", micro=False)
    n = qr.symbol_size(scale=1, border=0)[0]
    scale = rng.choice((4, 5)) if n < 60 else 4
    modules = np.array(list(qr.matrix_iter(scale=scale, border=3)), dtype=bool)
    dark, light = rng.randint(10, 40), rng.randint(200, 250)
    sym = Image.fromarray(np.where(modules, dark, light).astype(np.uint8))
    w, h = sym.width + 40, int(sym.width * 1.9)
    screen = Image.new("L", (w, h), light)
    d = ImageDraw.Draw(screen)
    d.rectangle([0, 0, w, 18], fill=max(0, light - 60))  # status bar
    for i in range(3):  # lines of text under the code
        y = (h + sym.height) // 2 + 24 + i * 16
        d.rectangle([20, y, w - 20 - rng.randint(0, 60), y + 6], fill=dark + 60)
    screen.paste(sym, (20, (h - sym.height) // 2))
    phone = Image.new("L", (w + 24, h + 40), rng.randint(5, 30))  # bezel
    phone.paste(screen, (12, 20))
    return phone


def _perspective(img: Image.Image, rng: random.Random, tilt: float) -> Image.Image:
    """Warp the phone as a tilted plane and place it in a 640×480 frame."""
    fw, fh = SIZE
    scale = min(1.0, 0.9 * fh / img.height, 0.9 * fw / img.width) * rng.uniform(0.85, 1.0)
    img = img.resize((max(8, round(img.width * scale)), max(8, round(img.height * scale))),
                     Image.Resampling.BICUBIC)
    w, h = img.size
    x0 = rng.randint(10, max(11, fw - w - 10))
    y0 = rng.randint(5, max(6, fh - h - 5))
    k = tilt * w
    # target corners (tl, tr, br, bl): one side pulled in as if turned away from the lens
    dst = [(x0 + rng.uniform(0, k), y0 + rng.uniform(0, k * 0.6)),
           (x0 + w - rng.uniform(0, k), y0 + rng.uniform(0, k)),
           (x0 + w - rng.uniform(0, k * 0.6), y0 + h - rng.uniform(0, k)),
           (x0 + rng.uniform(0, k), y0 + h - rng.uniform(0, k * 0.6))]
    src: list[tuple[float, float]] = [(0, 0), (w, 0), (w, h), (0, h)]
    coeffs = _perspective_coeffs(dst, src)
    bg = Image.new("L", SIZE, rng.randint(60, 140))
    canvas = Image.new("L", SIZE, 0)
    canvas.paste(img, (0, 0))
    warped = canvas.crop((0, 0, w, h)).transform(SIZE, Image.Transform.PERSPECTIVE, coeffs,
                                                  Image.Resampling.BICUBIC)
    mask = Image.new("L", (w, h), 255).transform(SIZE, Image.Transform.PERSPECTIVE, coeffs,
                                                 Image.Resampling.BILINEAR)
    bg.paste(warped, (0, 0), mask)
    return bg


def _perspective_coeffs(dst: list[tuple[float, float]], src: list[tuple[float, float]]
                        ) -> list[float]:
    """PIL's 8 coefficients mapping output (``dst``) points to input (``src``) points."""
    rows = []
    for (x, y), (u, v) in zip(dst, src, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    a = np.array(rows, dtype=np.float64)
    b = np.array([c for p in src for c in p], dtype=np.float64)
    return [float(c) for c in np.linalg.solve(a, b)]


def _motion_blur(arr: np.ndarray, length: float, angle: float) -> np.ndarray:
    """Average of the frame shifted along one direction (a hand moving during exposure)."""
    steps = max(2, round(length))
    dx, dy = np.cos(angle), np.sin(angle)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    acc = np.zeros_like(arr, dtype=np.float32)
    for i in range(steps):
        t = (i / (steps - 1) - 0.5) * length
        acc += np.asarray(img.transform(img.size, Image.Transform.AFFINE,
                                        (1, 0, t * dx, 0, 1, t * dy),
                                        Image.Resampling.BILINEAR), np.float32)
    return acc / steps


def render_screen_photo(payload: str, seed: int) -> ScreenPhoto:
    """One hard photo of ``payload`` on a phone screen (deterministic in ``seed``)."""
    rng = random.Random(seed)
    fx = {"tilt": rng.uniform(0.04, 0.16), "moire": rng.uniform(0.06, 0.16),
          "moire_period": rng.uniform(2.2, 3.4), "glare": rng.uniform(90, 170),
          "contrast": rng.uniform(0.3, 0.55), "blur_px": rng.uniform(2.0, 5.0),
          "noise": rng.uniform(3, 8), "jpeg": rng.randint(55, 80)}
    img = _perspective(_screen(payload, rng), rng, fx["tilt"])
    arr = np.asarray(img, np.float32)
    h, w = arr.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = rng.uniform(0, np.pi)
    wave = np.sin(2 * np.pi * (xx * np.cos(a) + yy * np.sin(a)) / fx["moire_period"])
    arr = arr * (1 - fx["moire"] * (0.5 + 0.5 * wave))  # screen grid × sensor grid
    mean = float(arr.mean())
    arr = mean + (arr - mean) * fx["contrast"]  # dim screen, short exposure
    gx, gy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
    rx, ry = rng.uniform(50, 110), rng.uniform(30, 80)
    glare = fx["glare"] * np.exp(-(((xx - gx) / rx) ** 2 + ((yy - gy) / ry) ** 2))
    arr = arr + glare  # a lamp reflected in the glass
    fx["blur_angle"] = rng.uniform(0, np.pi)  # radians, image axes (x right, y down)
    arr = _motion_blur(arr, fx["blur_px"], fx["blur_angle"])
    arr = arr + np_rng(rng).normal(0, fx["noise"], arr.shape).astype(np.float32)
    out = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    out.save(buf, "JPEG", quality=fx["jpeg"])  # what a camera pipeline hands over
    gray = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"))
    return ScreenPhoto(gray=np.ascontiguousarray(gray), payload=payload.encode(), effects=fx)


def phone_screen_photos(n: int = 32, *, seed: int = 4052021) -> list[ScreenPhoto]:
    """``n`` hard photos of CCCD codes of made-up people shown on phone screens.

    The default seed gives the held-out set the decoder is judged on (its retries were
    chosen on other seeds).
    """
    rng = random.Random(seed)
    out = []
    for i in range(n):
        person = {"name": rng.choice(["Nguyễn Văn An", "Trần Thị Bình", "Lê Quang Cường",
                                      "Phạm Thu Hà", "Hoàng Minh Đức", "Vũ Thị Lan"])}
        out.append(render_screen_photo(cccd_payload(person, index=i), rng.getrandbits(32)))
    return out

