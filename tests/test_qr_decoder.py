"""QR decoding on images rendered here with segno: byte-exact payloads, ECI, several codes."""

from __future__ import annotations

import numpy as np
import pytest
import segno
from PIL import Image, ImageFilter

from qr.decoder import Decoder, ZbarQrReader, ZxingReader, as_gray, fit_within
from qr.zbar import guess_text


def render(q: segno.QRCode, *, scale: int = 4, border: int = 4) -> np.ndarray:
    modules = np.array(list(q.matrix_iter(scale=scale, border=border)), dtype=bool)
    return np.where(modules, 0, 255).astype(np.uint8)


def on_canvas(*symbols: np.ndarray, size: tuple[int, int] = (480, 640),
              fill: int = 255) -> np.ndarray:
    canvas = np.full(size, fill, np.uint8)
    x = 10
    for s in symbols:
        canvas[10:10 + s.shape[0], x:x + s.shape[1]] = s
        x += s.shape[1] + 10
    return canvas


@pytest.fixture(scope="module")
def decoder() -> Decoder:
    return Decoder(budget_ms=1000)


def test_utf8_text_is_exact(decoder: Decoder) -> None:
    text = "001099012345||Nguyễn Văn An|01011999|Nam|Số 1, Hà Nội|15082021"
    codes = decoder.decode(render(segno.make(text, micro=False))).codes
    assert [(c.text, c.raw, c.format, c.content) for c in codes] == [
        (text, text.encode("utf-8"), "QRCode", "text")]


def test_eci_decides_the_charset(decoder: Decoder) -> None:
    # ISO-8859-5 bytes: only the ECI designator says they are Cyrillic.
    with_eci = segno.make("Привет мир", encoding="iso-8859-5", eci=True, micro=False)
    without = segno.make("Привет мир", encoding="iso-8859-5", eci=False, micro=False)
    a = decoder.decode(render(with_eci)).codes[0]
    b = decoder.decode(render(without)).codes[0]
    assert a.raw == b.raw == "Привет мир".encode("iso-8859-5")
    assert a.text == "Привет мир"
    assert b.text != "Привет мир"  # no ECI: the bytes are read in the QR default charset


def test_binary_payload_is_byte_exact(decoder: Decoder) -> None:
    payload = bytes(range(256))[:90] + b"\xff\xfe\x00"
    codes = decoder.decode(render(segno.make(payload, micro=False))).codes
    assert len(codes) == 1
    assert codes[0].raw == payload
    assert codes[0].content == "binary"


def test_several_codes_in_one_frame(decoder: Decoder) -> None:
    payloads = ["FIRST-CODE", "second code, lower case", "THIRD 3333"]
    frame = on_canvas(*(render(segno.make(p, micro=False), scale=3) for p in payloads))
    got = sorted(c.text for c in decoder.decode(frame).codes)
    assert got == sorted(payloads)


def test_micro_qr_is_read(decoder: Decoder) -> None:
    codes = decoder.decode(on_canvas(render(segno.make_micro("12345"), scale=6))).codes
    assert [(c.text, c.format) for c in codes] == [("12345", "MicroQRCode")]


def test_inverted_code_is_read(decoder: Decoder) -> None:
    frame = 255 - on_canvas(render(segno.make("LIGHT ON DARK", micro=False)))
    assert [c.text for c in decoder.decode(frame).codes] == ["LIGHT ON DARK"]


def test_second_opinion_reads_what_zxing_misses() -> None:
    # A code printed edge-to-edge on a dark card: no quiet zone, which zxing needs.
    sym = render(segno.make("HELLO-NO-QUIET", micro=False), border=0)
    frame = np.full((sym.shape[0] + 40, sym.shape[1] + 40), 40, np.uint8)
    frame[20:-20, 20:-20] = sym
    assert ZxingReader().read(frame)[0] == []
    full = Decoder(budget_ms=1000)
    if not full.zbar_available:
        pytest.skip("ZBar is not installed (libzbar0)")
    result = full.decode(frame)
    assert [c.text for c in result.codes] == ["HELLO-NO-QUIET"]
    assert result.steps[0] == "zxing" and len(result.steps) > 1


def test_empty_frame_has_no_codes(decoder: Decoder) -> None:
    rng = np.random.default_rng(3)
    frame = np.clip(rng.normal(128, 20, (480, 640)), 0, 255).astype(np.uint8)
    result = decoder.decode(frame)
    assert result.codes == [] and result.undecodable == 0
    assert result.steps == decoder.step_names  # every retry was tried within a long budget


def test_budget_stops_the_retries() -> None:
    frame = np.full((480, 640), 200, np.uint8)
    result = Decoder(budget_ms=1e-6).decode(frame)
    assert result.steps == ["zxing"]  # the first pass always runs, nothing after it


def test_found_code_skips_the_retries(decoder: Decoder) -> None:
    result = decoder.decode(on_canvas(render(segno.make("QUICK", micro=False))))
    assert result.steps == ["zxing"]


def test_damaged_code_is_reported_as_undecodable(decoder: Decoder) -> None:
    sym = render(segno.make("DAMAGED CODE PAYLOAD 1234567890" * 2, micro=False))
    h, w = sym.shape
    sym[h // 3: 2 * h // 3, w // 4: 3 * w // 4] = 255  # a sticker over the middle
    result = decoder.decode(on_canvas(sym))
    assert result.codes == []
    assert result.undecodable == 1


def test_retries_rescue_a_blurred_low_contrast_photo(decoder: Decoder) -> None:
    sym = render(segno.make("https://example.org/check-in?venue=cho-ben-thanh", micro=False),
                 scale=3)
    photo = on_canvas(sym, fill=255).astype(float) * 0.3 + 90
    img = Image.fromarray(photo.astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.4))
    result = decoder.decode(np.asarray(img))
    assert [c.text for c in result.codes] == ["https://example.org/check-in?venue=cho-ben-thanh"]


def test_zbar_binary_mode_keeps_shift_jis_bytes() -> None:
    try:
        reader = ZbarQrReader()
    except ImportError:
        pytest.skip("ZBar is not installed (libzbar0)")
    raw = "テスト漢字".encode("shift_jis") + b"\x01\xff\x80"
    codes = reader.read(render(segno.make(raw, micro=False)))
    assert [c.raw for c in codes] == [raw]
    assert codes[0].decoder == "zbar"


@pytest.mark.parametrize(("raw", "text", "content"), [
    (b"plain ascii", "plain ascii", "text"),
    ("Nguyễn".encode(), "Nguyễn", "text"),
    ("\ufeffBOM".encode(), "BOM", "text"),
    ("テスト".encode("shift_jis"), "テスト", "text"),
    (b"caf\xe9", "café", "text"),
    (b"\x00\x01\x02", "\x00\x01\x02", "binary"),
])
def test_guess_text(raw: bytes, text: str, content: str) -> None:
    assert guess_text(raw) == (text, content)


def test_as_gray_accepts_colour_and_pil_and_refuses_non_images() -> None:
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 1] = 90
    assert as_gray(rgb).shape == (20, 30)
    assert as_gray(rgb)[0, 0] == 30
    assert as_gray(Image.new("RGB", (30, 20), (255, 255, 255)))[0, 0] == 255
    with pytest.raises(ValueError, match="2-D image"):
        as_gray(np.zeros(100, np.uint8))
    with pytest.raises(ValueError, match="2-D image"):
        as_gray(np.zeros((4, 4), np.uint8))


def test_fit_within_only_shrinks() -> None:
    big = np.zeros((1200, 1600), np.uint8)
    assert fit_within(big, 640, 480).shape == (480, 640)
    small = np.zeros((100, 100), np.uint8)
    assert fit_within(small, 640, 480) is small


def test_a_static_scene_gets_each_retry_once() -> None:
    rng = np.random.default_rng(5)
    scene = np.kron(rng.integers(60, 200, (60, 80)), np.ones((8, 8)))

    def camera_frame(base: np.ndarray) -> np.ndarray:  # same scene, fresh sensor noise
        return np.clip(base + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8)

    d = Decoder(budget_ms=1000, skip_static=True)
    first = d.decode(camera_frame(scene))
    assert first.steps == d.step_names  # a new scene: the whole ladder
    for _ in range(3):
        assert d.decode(camera_frame(scene)).steps == ["zxing", "skipped-static"]
    assert d.skipped == 3
    changed = scene.copy()
    changed[100:300, 200:400] = 255  # someone stepped in front of the camera
    assert d.decode(camera_frame(changed)).steps == d.step_names
    # The first pass still runs on a skipped frame: a code that appears is read at once.
    code = render(segno.make("APPEARS", micro=False), scale=3)
    shown = changed.copy()
    shown[110:110 + code.shape[0], 210:210 + code.shape[1]] = code
    assert [c.text for c in d.decode(camera_frame(shown)).codes] == ["APPEARS"]


def test_without_skip_static_every_frame_gets_the_ladder() -> None:
    frame = np.full((480, 640), 128, np.uint8)
    d = Decoder(budget_ms=1000)
    assert d.decode(frame).steps == d.decode(frame).steps == d.step_names
