"""Undoing a hand's motion blur on a QR code (qr/deblur.py) and its passes in the decoder."""

from __future__ import annotations

import math

import numpy as np
import pytest
import segno
import zxingcpp

from qr import deblur
from qr.decoder import Decoder
from qr.screens import _motion_blur, phone_screen_photos

FORMATS = (zxingcpp.BarcodeFormat.QRCode,)
PAYLOAD = ("001099012345|123456789|Nguyễn Văn An|01011999|Nam|"
           "Số 1, Phường Bến Nghé, Quận 1|15082021")


def _code_frame(payload: str, *, blur: float = 0.0, angle: float = 0.0,
                at: tuple[int, int] = (200, 100),
                seed: int = 0) -> np.ndarray:
    """A 640×480 frame with a 4 px-module code at ``at``, smeared by ``blur`` px along
    ``angle`` (the screen renderer's motion blur), with sensor noise."""
    q = segno.make(payload, error="m", micro=False)
    sym = np.where(np.array(list(q.matrix_iter(scale=4, border=4)), bool), 40, 210)
    frame = np.full((480, 640), 120, np.float32)
    x, y = at
    frame[y:y + sym.shape[0], x:x + sym.shape[1]] = sym
    if blur:
        frame = _motion_blur(frame, blur, angle)
    frame += np.random.default_rng(seed).normal(0, 3, frame.shape).astype(np.float32)
    return np.clip(frame, 0, 255).astype(np.uint8)


def _angle_error(a: float, b: float) -> float:
    """Difference of two undirected angles, degrees in [0, 90]."""
    d = math.degrees(a - b) % 180
    return min(d, 180 - d)


def test_line_kernel_is_a_normalised_line_along_the_angle() -> None:
    k = deblur.line_kernel(5.0, 0.0)
    assert k.sum() == pytest.approx(1.0)
    c = k.shape[0] // 2
    assert k[c].sum() == pytest.approx(1.0)  # horizontal: all weight on the middle row
    assert np.count_nonzero(k[c]) in (5, 6, 7)  # about 5 px long (anti-aliased ends)
    kv = deblur.line_kernel(5.0, math.pi / 2)
    assert kv[:, c].sum() == pytest.approx(1.0)


@pytest.mark.parametrize("angle", [0.3, 1.0, 2.0])
def test_a_smeared_code_unreadable_as_is_is_read_after_deblurring(angle: float) -> None:
    gray = _code_frame(PAYLOAD, blur=6.0, angle=angle)
    assert not zxingcpp.read_barcodes(gray, formats=FORMATS)  # the smear defeats zxing alone
    region = deblur.estimate(gray)
    assert region is not None
    assert _angle_error(region.angle, angle) < 8
    # the region holds the code (at x 200–356, y 100–256 before the smear)
    assert region.x0 <= 200 and region.y0 <= 100 and region.x1 >= 356 and region.y1 >= 256
    assert region.x1 - region.x0 < 320 and region.y1 - region.y0 < 320
    res = Decoder(budget_ms=1000, opencv=False, zbar=False).decode(gray)
    assert [c.raw for c in res.codes] == [PAYLOAD.encode()]
    assert res.steps[-1].startswith("deblur-")


def test_no_estimate_without_a_smear_or_without_a_code() -> None:
    assert deblur.estimate(_code_frame(PAYLOAD)) is None  # sharp: edges alike both ways
    assert deblur.estimate(np.full((480, 640), 128, np.uint8)) is None
    rng = np.random.default_rng(7)  # a textured camera scene, as in the bench's empty frames
    scene = np.kron(rng.integers(40, 220, (60, 80)), np.ones((8, 8)))
    assert deblur.estimate(np.clip(scene + rng.normal(0, 4, scene.shape), 0, 255)
                           .astype(np.uint8)) is None
    assert deblur.locate(np.zeros((20, 20), np.uint8)) is None  # too small for any region


def test_estimated_direction_and_length_follow_the_rendered_blur() -> None:
    # A development seed, not the held-out set's.
    photos = phone_screen_photos(16, seed=11)
    errors, lengths = [], []
    for p in photos:
        region = deblur.estimate(p.gray)
        assert region is not None, p.effects
        errors.append(_angle_error(region.angle, p.effects["blur_angle"]))
        lengths.append((p.effects["blur_px"], region.length))
    assert sorted(errors)[int(0.9 * len(errors))] < 12, errors
    short = [est for px, est in lengths if px < 3.5]
    long = [est for px, est in lengths if px >= 4.0]
    assert short and long and np.mean(long) > np.mean(short), lengths


def test_deblur_passes_follow_the_first_passes_and_can_be_turned_off() -> None:
    names = Decoder().step_names
    passes = [n for n in names if n.startswith("deblur-")]
    assert len(passes) == 3
    assert names.index(passes[0]) > names.index("zxing-histogram") > names.index("zxing")
    assert not any(n.startswith("deblur-") for n in Decoder(deblur=False).step_names)
    assert not any(n.startswith("deblur-") for n in Decoder(retries=False).step_names)


def test_a_refilled_frame_buffer_gets_a_fresh_estimate() -> None:
    # Cameras often refill one array: the estimate cached for the passes of one frame must
    # not leak into the next frame's.
    other = "001099054321|987654321|Trần Thị Bình|02021988|Nữ|Số 9, Hà Nội|15082021"
    dec = Decoder(budget_ms=1000, opencv=False, zbar=False)
    buf = _code_frame(PAYLOAD, blur=6.0, angle=0.3)
    assert [c.raw for c in dec.decode(buf).codes] == [PAYLOAD.encode()]
    buf[:] = _code_frame(other, blur=6.0, angle=2.0, at=(380, 260), seed=1)
    assert [c.raw for c in dec.decode(buf).codes] == [other.encode()]
