"""Undo a hand's motion blur on a QR code before reading it again.

A phone held up to the door camera moves during the exposure: every module is smeared over
4–5 pixels along one direction, about as far as a module is wide, and no binarizer or filter
gets the modules back (median, CLAHE, sharpening, background division were measured and read
none of those frames). The smear is a linear blur by a short line, so it can be undone:

1. :func:`locate` finds the code-like region, cheaply (blocks with strong edges in both
   directions: modules; a bezel or a line of text has edges in one direction only).
2. :func:`blur_direction` takes the direction of least gradient energy in that region (the
   structure tensor's smaller eigenvector): a code's own edges are as strong across as along,
   so the direction the hand moved is the one whose edges were smeared away.
3. :func:`blur_length` reads the smear's length off the autocorrelation of the derivative
   along that direction: a line blur turns every edge into two steps its length apart, so
   the autocorrelation dips there.
4. :func:`wiener` deconvolves the region with that line (in the Fourier domain, with a
   noise-to-signal floor), upscales it 2× and gives it a quiet zone for the reader.

numpy's FFT does the work on a crop of ~200×200 pixels (1–2 ms with the upscale); written
here because no well-kept Python library offers blind motion deblurring at this cost
(scikit-image has Wiener / Richardson–Lucy for a *known* kernel only, and a large import).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

Gray = np.ndarray  # 2-D uint8

BLOCK = 16  # px: the grid on which code-like regions are found
MARGIN = 24  # px of context kept around the region (the blur spreads the code's edge)
PAD = 16  # px of mirrored border against the FFT's wrap-around
# Smaller / larger gradient energy of the region above which there is no smear to undo. Blurred
# screen photos measure 0.3–0.65, evenly blurred codes and textured camera scenes 0.95–1, most
# sharp photos of codes above 0.8.
MAX_ANISOTROPY = 0.75


@dataclass(frozen=True, slots=True)
class Region:
    """A code-like region of a frame and its estimated blur."""

    x0: int
    y0: int
    x1: int
    y1: int
    angle: float  # radians, image axes (x right, y down), in [0, π)
    length: float  # px
    anisotropy: float  # smaller / larger gradient energy: 1 = no directional blur


def _gradients(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gx = np.zeros_like(f)
    gy = np.zeros_like(f)
    gx[:, 1:-1] = (f[:, 2:] - f[:, :-2]) * 0.5
    gy[1:-1, :] = (f[2:, :] - f[:-2, :]) * 0.5
    return gx, gy


def locate(gray: Gray) -> tuple[int, int, int, int] | None:
    """``(x0, y0, x1, y1)`` of the largest code-like region (margin included), or None.

    A block is code-like when its mean edge strength in *both* directions is at least half
    the strongest block's; the largest 8-connected group of such blocks wins. Regions smaller
    than 3×3 blocks or covering most of the frame (a textured scene, not a code) give None.
    """
    # Edge strength is measured at half resolution (Pillow's C reduce): 4× less to add up,
    # and a smeared module's edges survive it.
    half = np.asarray(Image.fromarray(gray).reduce(2))
    b = BLOCK // 2
    h, w = gray.shape
    bh, bw = half.shape[0] // b, half.shape[1] // b
    if bh < 3 or bw < 3:
        return None
    f = half[: bh * b, : bw * b].astype(np.int16)
    ax, ay = np.abs(f[:, 1:] - f[:, :-1]), np.abs(f[1:] - f[:-1])
    cols = np.arange(0, bw * b, b)
    # rows of blocks by a reshape (contiguous, fast), then columns on the small result
    bx = np.add.reduceat(ax.reshape(bh, b, -1).sum(axis=1, dtype=np.int32), cols, axis=1)
    ay = np.concatenate([ay, ay[-1:]])  # the row diff is one short: repeat the last row
    by = np.add.reduceat(ay.reshape(bh, b, -1).sum(axis=1, dtype=np.int32), cols, axis=1)
    bx, by = bx / (b * b), by / (b * b)
    score = np.minimum(bx, by)
    top = float(score.max())
    if top < 2.0:  # a flat frame
        return None
    mask = score >= 0.5 * top
    label = _largest_component(mask)
    if label is None:
        return None
    ys, xs = np.nonzero(label)
    by0, by1, bx0, bx1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    if (by1 - by0) < 3 or (bx1 - bx0) < 3 or (by1 - by0) * (bx1 - bx0) > 0.5 * bh * bw:
        return None
    return (max(0, int(bx0) * BLOCK - MARGIN), max(0, int(by0) * BLOCK - MARGIN),
            min(w, int(bx1) * BLOCK + MARGIN), min(h, int(by1) * BLOCK + MARGIN))


def _largest_component(mask: np.ndarray) -> np.ndarray | None:
    """The largest 8-connected group of True cells (a few hundred cells: a flood fill over a
    set is fast enough and keeps this free of SciPy/OpenCV)."""
    todo = {(int(y), int(x)) for y, x in zip(*np.nonzero(mask), strict=True)}
    best: list[tuple[int, int]] = []
    while todo:
        stack = [todo.pop()]
        comp = []
        while stack:
            y, x = stack.pop()
            comp.append((y, x))
            for n in ((y - 1, x - 1), (y - 1, x), (y - 1, x + 1), (y, x - 1), (y, x + 1),
                      (y + 1, x - 1), (y + 1, x), (y + 1, x + 1)):
                if n in todo:
                    todo.remove(n)
                    stack.append(n)
        if len(comp) > len(best):
            best = comp
    if not best:
        return None
    out = np.zeros_like(mask)
    ys, xs = zip(*best, strict=True)
    out[list(ys), list(xs)] = True
    return out


def blur_direction(crop: np.ndarray) -> tuple[float, float]:
    """``(angle, anisotropy)``: the direction of least gradient energy, in [0, π), and the
    ratio of the smaller to the larger energy (near 1: no directional blur)."""
    gx, gy = _gradients(crop.astype(np.float32))
    a, b, c = float((gx * gx).sum()), float((gx * gy).sum()), float((gy * gy).sum())
    vals, vecs = np.linalg.eigh(np.array([[a, b], [b, c]]))
    v = vecs[:, 0]
    angle = float(np.arctan2(v[1], v[0])) % np.pi
    return angle, float(vals[0] / vals[1]) if vals[1] > 0 else 1.0


def blur_length(crop: np.ndarray, angle: float, *, lo: float = 1.5, hi: float = 9.0) -> float:
    """Where the autocorrelation of the derivative along ``angle`` dips (px)."""
    c, s = np.cos(angle), np.sin(angle)
    gx, gy = _gradients(crop.astype(np.float32))
    d = c * gx + s * gy
    d -= d.mean()
    spec = np.fft.rfft2(d)
    ac = np.fft.irfft2(spec * np.conj(spec), s=d.shape)
    lags = np.arange(lo, hi + 1e-6, 0.25)
    # sample the (circular) autocorrelation along the direction, bilinearly
    h, w = ac.shape
    xs, ys = lags * c, lags * s
    x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
    fx, fy = xs - x0, ys - y0
    vals = (ac[y0 % h, x0 % w] * (1 - fx) * (1 - fy) + ac[y0 % h, (x0 + 1) % w] * fx * (1 - fy)
            + ac[(y0 + 1) % h, x0 % w] * (1 - fx) * fy
            + ac[(y0 + 1) % h, (x0 + 1) % w] * fx * fy)
    return float(lags[int(np.argmin(vals))])


def estimate(gray: Gray, *, max_anisotropy: float = MAX_ANISOTROPY) -> Region | None:
    """The code-like region of ``gray`` and its blur, or None when there is no such region
    or its edges are about as strong in every direction (no smear to undo: isotropic blur,
    a sharp code, a textured scene)."""
    box = locate(gray)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    crop = gray[y0:y1, x0:x1]
    angle, aniso = blur_direction(crop)
    if aniso > max_anisotropy:
        return None
    return Region(x0, y0, x1, y1, angle, blur_length(crop, angle), aniso)


def line_kernel(length: float, angle: float) -> np.ndarray:
    """A normalised line of ``length`` px along ``angle`` (a uniform motion during the
    exposure), anti-aliased by sampling it 8 times per pixel."""
    size = 2 * int(np.ceil(length / 2 + 1)) + 1
    k = np.zeros((size, size), np.float64)
    c = size // 2
    n = max(2, int(np.ceil(length * 8)))
    t = (np.arange(n) / (n - 1) - 0.5) * length
    xs, ys = c + t * np.cos(angle), c + t * np.sin(angle)
    x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
    fx, fy = xs - x0, ys - y0
    np.add.at(k, (y0, x0), (1 - fx) * (1 - fy))
    np.add.at(k, (y0, x0 + 1), fx * (1 - fy))
    np.add.at(k, (y0 + 1, x0), (1 - fx) * fy)
    np.add.at(k, (y0 + 1, x0 + 1), fx * fy)
    return k / k.sum()


def wiener(crop: np.ndarray, length: float, angle: float, nsr: float) -> Gray:
    """``crop`` deconvolved by a line blur, 2× upscaled, with a quiet zone (uint8)."""
    f = np.pad(crop.astype(np.float64), PAD, mode="reflect")
    h, w = f.shape
    k = line_kernel(length, angle)
    kp = np.zeros((h, w))
    ks = k.shape[0]
    kp[:ks, :ks] = k
    kp = np.roll(kp, (-(ks // 2), -(ks // 2)), axis=(0, 1))
    kf = np.fft.rfft2(kp)
    out = np.fft.irfft2(np.fft.rfft2(f) * np.conj(kf) / (np.abs(kf) ** 2 + nsr), s=(h, w))
    out = np.clip(out[PAD:-PAD, PAD:-PAD], 0, 255).astype(np.uint8)
    img = Image.fromarray(out)
    img = img.resize((img.width * 2, img.height * 2), Image.Resampling.BICUBIC)
    return np.pad(np.asarray(img), 20, mode="edge")
