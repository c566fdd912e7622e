"""``bzgw qr decode``: one JSON line per image, errors per image, exit status by all-failed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import segno
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from PIL import Image

from bzgw.cli import cli
from qr.bzgwqr import make_checkin_qr

CCCD = "001099012345|123456789|Nguyễn Văn An|01011999|Nam|Số 1, Hà Nội|15082021"


def save(path: Path, *payloads: str | bytes) -> Path:
    canvas = np.full((480, 640), 255, np.uint8)
    x = 8
    for p in payloads:
        q = segno.make(p, error="m", micro=False)
        sym = np.where(np.array(list(q.matrix_iter(scale=3, border=2)), bool), 0, 255)
        canvas[8:8 + sym.shape[0], x:x + sym.shape[1]] = sym
        x += sym.shape[1] + 8
    Image.fromarray(canvas).save(path)
    return path


def run(*args: str) -> tuple[int, list[dict]]:
    res = CliRunner().invoke(cli, ["qr", "decode", *args])
    lines = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
    return res.exit_code, lines


def test_one_line_per_image_with_text_format_and_kind(tmp_path: Path) -> None:
    a = save(tmp_path / "a.png", CCCD, "https://example.vn/x")
    b = save(tmp_path / "b.png", "001099012345|123456789|An|31021999|Nam|x|15082021")
    empty = tmp_path / "empty.png"
    Image.new("L", (320, 240), 255).save(empty)
    code, lines = run(str(a), str(b), str(empty))
    assert code == 0
    assert lines[0] == {"file": str(a), "codes": [
        {"text": CCCD, "format": "QRCode", "kind": "cccd"},
        {"text": "https://example.vn/x", "format": "QRCode", "kind": "url"}]}
    assert lines[1]["codes"] == [{
        "text": "001099012345|123456789|An|31021999|Nam|x|15082021", "format": "QRCode",
        "kind": "cccd", "rejected": "CCCD: birth date is not a valid ddmmyyyy date"}]
    assert lines[2] == {"file": str(empty), "codes": []}


def test_unreadable_images_give_error_lines(tmp_path: Path) -> None:
    good = save(tmp_path / "good.png", "HELLO")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not an image")
    missing = tmp_path / "missing.png"
    code, lines = run(str(junk), str(good), str(missing))
    assert code == 0  # one image worked
    assert [sorted(line) for line in lines] == [["error", "file"], ["codes", "file"],
                                                ["error", "file"]]
    assert lines[1]["codes"][0] == {"text": "HELLO", "format": "QRCode", "kind": "opaque"}
    assert "cannot read image" in lines[0]["error"]

    code, lines = run(str(junk), str(missing))
    assert code == 1  # every input failed
    assert len(lines) == 2


def test_config_supplies_the_checkin_key(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    pub = tmp_path / "checkin.pem"
    pub.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    config = tmp_path / "gw.yaml"
    config.write_text("qr:\n  checkin_key: checkin.pem\n")
    text = make_checkin_qr(key, kind="venue", ident="cho-a", iat=1_600_000_000,
                           exp=4_000_000_000)
    img = save(tmp_path / "venue.png", text)
    _, without = run(str(img))
    assert without[0]["codes"][0]["rejected"] == (
        "bzgw QR: cannot be verified: no checkin_key configured")
    code, with_key = run("--config", str(config), str(img))
    assert code == 0
    assert with_key[0]["codes"] == [{"text": text, "format": "QRCode", "kind": "bzgw"}]


def test_help_has_an_example() -> None:
    res = CliRunner().invoke(cli, ["qr", "decode", "--help"])
    assert res.exit_code == 0
    assert "Example:" in res.output and "bzgw qr decode photo.png" in res.output
