"""Tracing-ID derivation: Bluezone daily-key chains and Exposure Notification TEK → RPI.

Exact facts: Bluezone IDs are 12 bytes picked from a SHA-256 subkey chain; EN RPIs are
AES-128-ECB of a padded interval number under a key HKDF'd from the TEK.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

BLUEZONE_SALT = b"bluzonesubkey"  # 13 bytes, spelled so in the app
BLUEZONE_PICK = (0, 4, 8, 12, 16, 18, 20, 22, 24, 26, 28, 30)
BLUEZONE_DEFAULT_MAX = 96
DAY = 86400
EN_INTERVAL = 600
EN_ROLLING_PERIOD = 144


def bluezone_id_from_subkey(sk: bytes) -> bytes:
    """The 12 bytes of a subkey that make the broadcast ID."""
    return bytes(sk[i] for i in BLUEZONE_PICK)


def bluezone_day_ids(daily_key: bytes, max_ids: int = BLUEZONE_DEFAULT_MAX) -> list[bytes]:
    """The ``max_ids`` IDs one daily key broadcasts, slot 0 first."""
    if len(daily_key) != 32:
        raise ValueError(f"Bluezone daily key must be 32 bytes, got {len(daily_key)}")
    out: list[bytes] = []
    sk = hashlib.sha256(daily_key + BLUEZONE_SALT).digest()
    for _ in range(max_ids):
        out.append(bytes(sk[i] for i in BLUEZONE_PICK))
        sk = hashlib.sha256(sk).digest()
    return out


def next_daily_key(daily_key: bytes) -> bytes:
    """DK(d+1) = SHA-256(DK(d))."""
    return hashlib.sha256(daily_key).digest()


def bluezone_ids(daily_key: bytes, time_start: int, time_end: int,
                 max_ids: int = BLUEZONE_DEFAULT_MAX) -> Iterator[tuple[int, bytes]]:
    """Every ``(slot_start_epoch, id)`` from ``time_start`` while slot start ≤ ``time_end``.

    ``time_start`` is the UTC midnight the daily key belongs to, as in the app's
    ``checkContactF``; the chain moves to the next day's key after ``max_ids`` slots.
    """
    if max_ids <= 0 or DAY % max_ids:
        raise ValueError(f"max must divide 86400 evenly, got {max_ids}")
    step = DAY // max_ids
    t = time_start
    dk = daily_key
    while t <= time_end:
        for sid in bluezone_day_ids(dk, max_ids):
            if t > time_end:
                return
            yield t, sid
            t += step
        dk = next_daily_key(dk)


def en_rpik(tek: bytes) -> bytes:
    """RPIK = HKDF-SHA256(TEK, salt=None, info="EN-RPIK", 16)."""
    return HKDF(algorithm=hashes.SHA256(), length=16, salt=None, info=b"EN-RPIK").derive(tek)


def en_aemk(tek: bytes) -> bytes:
    """AEMK = HKDF-SHA256(TEK, salt=None, info="EN-AEMK", 16)."""
    return HKDF(algorithm=hashes.SHA256(), length=16, salt=None, info=b"EN-AEMK").derive(tek)


def en_rpis(tek: bytes, start_interval: int, count: int = EN_ROLLING_PERIOD) -> list[bytes]:
    """RPIs for ``count`` consecutive intervals from ``start_interval``.

    One AES-ECB call over all padded blocks instead of one per interval.
    """
    if len(tek) != 16:
        raise ValueError(f"TEK must be 16 bytes, got {len(tek)}")
    blocks = b"".join(b"EN-RPI" + bytes(6) + (start_interval + j).to_bytes(4, "little")
                      for j in range(count))
    enc = Cipher(algorithms.AES(en_rpik(tek)), modes.ECB()).encryptor()
    data = enc.update(blocks) + enc.finalize()
    return [data[16 * j:16 * j + 16] for j in range(count)]


def en_decrypt_aem(tek: bytes, rpi: bytes, aem: bytes) -> bytes:
    """Decrypt the Associated Encrypted Metadata of an advert with its TEK."""
    dec = Cipher(algorithms.AES(en_aemk(tek)), modes.CTR(rpi)).decryptor()
    return dec.update(aem) + dec.finalize()
