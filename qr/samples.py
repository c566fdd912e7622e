"""Sample check-in photos for the demo and tests, and helpers that check them in.

:func:`make_sample_images` renders CCCD-card QR codes of made-up people as camera-like
640×480 photos (a card on a table, some rotated, blurred or noisy), plus one signed bzgw
person code and one garbage code. Every rendered photo is decoded once before it is kept, so
the demo never depends on a lucky render.
"""

from __future__ import annotations

import asyncio
import random
import time
import unicodedata
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import segno
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from PIL import Image, ImageDraw, ImageFilter

from core.clock import Clock
from core.errors import BzgwError
from qr.bzgwqr import make_checkin_qr
from qr.checkin import CheckInPipeline, CheckInStats, FeedbackSink
from qr.decoder import Decoder, load_image
from qr.recognizers import Recognizer
from qr.records import Rejected, ScannedCheckIn

CHECKIN_KEY_FILE = "bzgw-checkin-key.pem"
_CENTURY_DIGIT = {1800: 8, 1900: 0, 2000: 2, 2100: 4, 2200: 6}


def _date(value: Any, default: date) -> date:
    if value is None:
        return default
    if isinstance(value, date):
        return value
    s = str(value)
    if len(s) == 8 and s.isdigit():
        return date(int(s[4:]), int(s[2:4]), int(s[:2]))
    return date.fromisoformat(s)


def cccd_payload(person: dict[str, Any], *, index: int = 0) -> str:
    """The CCCD QR text of a made-up person.

    Keys used: ``name`` (required), ``birth_date`` (ISO or ddmmyyyy), ``gender`` (``Nam`` /
    ``Nữ``), ``cccd`` (12 digits; derived from birth year and gender when absent),
    ``old_id`` (9 digits or empty), ``address``, ``issued``.
    """
    birth = _date(person.get("birth_date"), date(1985 + index % 20, 1 + index % 12, 10))
    gender = unicodedata.normalize("NFC", str(person.get("gender", "Nam" if index % 2 == 0
                                                         else "Nữ")))
    number = str(person.get("cccd") or "")
    if not number:
        century = _CENTURY_DIGIT[birth.year // 100 * 100] + (gender.upper() != "NAM")
        number = f"001{century}{birth.year % 100:02d}{(123457 * (index + 1)) % 1_000_000:06d}"
    issued = _date(person.get("issued"), date(max(2021, birth.year + 14), 8, 15))
    old = str(person.get("old_id", f"{(987654321 + index * 7919) % 10**9:09d}"))
    address = str(person.get("address", f"Số {index + 1}, Phường Bến Nghé, Quận 1, TP Hồ Chí Minh"))
    return "|".join([number, old, str(person["name"]), birth.strftime("%d%m%Y"), gender,
                     address, issued.strftime("%d%m%Y")])


def _render(payload: str | bytes, rng: random.Random, size: tuple[int, int],
            *, hard: bool) -> Image.Image:
    w, h = size
    bg = rng.randint(90, 170)
    img = Image.new("L", (w, h), bg)
    draw = ImageDraw.Draw(img)
    for y in range(0, h, 8):  # a table top: soft horizontal grain
        draw.line([(0, y), (w, y)], fill=max(0, min(255, bg + rng.randint(-12, 12))))
    qr = segno.make(payload, error="m", micro=False)
    scale = max(2, min(5, int(min(w, h) * 0.6 // qr.symbol_size(scale=1, border=0)[0])))
    modules = np.array(list(qr.matrix_iter(scale=scale, border=2)), dtype=bool)
    sym = Image.fromarray(np.where(modules, 22, 242).astype(np.uint8))
    card = Image.new("L", (sym.width + 40 + sym.width // 2, sym.height + 40), 236)
    cd = ImageDraw.Draw(card)
    for i in range(6):  # printed text lines beside the code
        y = 24 + i * (card.height - 48) // 6
        cd.rectangle([sym.width + 30, y, card.width - 12 - rng.randint(0, 40), y + 5], fill=120)
    card.paste(sym, (20, 20))
    angle = rng.uniform(-18, 18) if hard else rng.uniform(-4, 4)
    card = card.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True, fillcolor=bg)
    if card.width > w or card.height > h:
        card.thumbnail((w - 8, h - 8))
    x = rng.randint(0, max(0, w - card.width))
    y = rng.randint(0, max(0, h - card.height))
    img.paste(card, (x, y))
    if hard:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.1)))
    arr = np.asarray(img, dtype=np.float32)
    gradient = np.linspace(rng.uniform(-25, 0), rng.uniform(0, 25), w, dtype=np.float32)
    arr = arr + gradient[None, :]  # uneven light across the frame
    noise = np_rng(rng).normal(0, rng.uniform(2, 7) if hard else 1.5, arr.shape)
    return Image.fromarray(np.clip(arr + noise, 0, 255).astype(np.uint8))


def np_rng(rng: random.Random) -> np.random.Generator:
    """A numpy generator seeded from ``rng`` (keeps renders reproducible)."""
    return np.random.default_rng(rng.getrandbits(64))


def make_sample_images(folder: Path, people: list[dict[str, Any]], *,
                       size: tuple[int, int] = (640, 480), seed: int = 7,
                       checkin_key: Ed25519PrivateKey | None = None,
                       now: float | None = None) -> list[Path]:
    """Render check-in photos into ``folder``.

    One CCCD photo per person (every third one rotated, blurred and noisy), then one signed
    bzgw person code and one garbage code. Without ``checkin_key`` a fresh key signs the bzgw
    code and its public key is written to ``folder / "bzgw-checkin-key.pem"`` (what
    ``qr.checkin_key`` should point to).

    Args:
        folder: created if missing.
        people: made-up people (see :func:`cccd_payload` for the keys).
        size: photo size in pixels.
        seed: render randomness.
        checkin_key: signer of the bzgw code.
        now: issue time of the bzgw code (default: now); it is valid for 30 days.

    Returns:
        The image paths, in order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    decoder = Decoder(budget_ms=200)
    now = time.time() if now is None else now
    if checkin_key is None:
        checkin_key = Ed25519PrivateKey.generate()
        (folder / CHECKIN_KEY_FILE).write_bytes(checkin_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    jobs: list[tuple[str, str | bytes, bool]] = [
        (f"cccd-{i + 1:02d}.png", cccd_payload(p, index=i), i % 3 == 2)
        for i, p in enumerate(people)]
    who = people[0] if people else {"name": "Khách Mời"}
    jobs.append(("bzgw-person.png", make_checkin_qr(
        checkin_key, kind="person", ident=f"p-{seed:04d}", name=str(who["name"]),
        phone="+84901234567", iat=int(now), exp=int(now) + 30 * 86400), False))
    jobs.append(("garbage.png", bytes(rng.getrandbits(8) for _ in range(48)), False))
    paths = []
    for name, payload, hard in jobs:
        raw = payload.encode() if isinstance(payload, str) else payload
        for attempt in range(12):
            img = _render(payload, rng, size, hard=hard and attempt < 6)
            if any(c.raw == raw for c in decoder.decode(np.asarray(img)).codes):
                break
        else:  # pragma: no cover - a clean render always decodes
            raise BzgwError(f"sample {name} did not decode after 12 renders")
        path = folder / name
        img.save(path)
        paths.append(path)
    return paths


def decode_and_recognize(path: Path, clock: Clock, *, recognizer: Recognizer | None = None,
                         decoder: Decoder | None = None) -> list[ScannedCheckIn | Rejected]:
    """Every code in one image as a check-in or a rejection (no cooldown, no sink).

    Raises:
        OSError: the image cannot be read.
    """
    rec = recognizer if recognizer is not None else Recognizer()
    dec = decoder if decoder is not None else Decoder()
    ts, epoch = clock.now(), clock.epoch()
    return [rec.recognize(c, ts=ts, clock=epoch) for c in dec.decode(load_image(path)).codes]


def check_in_folder(folder: Path, clock: Clock, *, sink: Callable[[ScannedCheckIn], object],
                    recognizer: Recognizer | None = None, cooldown_s: float = 300.0,
                    feedback: FeedbackSink | None = None) -> CheckInStats:
    """Run the check-in pipeline over the images in a folder once (the demo's QR stage).

    Each accepted check-in goes to ``sink`` as it is found; repeats of a code within
    ``cooldown_s`` are one check-in. Must not be called from a running event loop.

    Returns:
        The pipeline's counters.
    """
    from qr.sources.folder import FolderSource

    pipeline = CheckInPipeline(recognizer=recognizer or Recognizer(), sink=sink,
                               cooldown_s=cooldown_s, feedback=feedback)
    asyncio.run(pipeline.run(FolderSource(folder, clock=clock, once=True), clock))
    return pipeline.stats
