"""Tracing-ID protocols, per key: the one reference for Bluezone and Exposure Notification.

- Bluezone: a 32-byte daily key chains by SHA-256 (``DK(d+1) = SHA-256(DK(d))``); the day's
  subkeys are ``SK(0) = SHA-256(DK ‖ "bluzonesubkey")``, ``SK(i+1) = SHA-256(SK(i))``; the ID of
  slot ``i`` is 12 bytes picked from ``SK(i)``. ``max`` slots per day (96: 15 minutes from 00:00
  UTC).
- Exposure Notification: ``RPIK = HKDF-SHA256(TEK, salt none, "EN-RPIK", 16)``; the RPI of
  interval ``j`` is ``AES-128-ECB(RPIK, "EN-RPI" ‖ 6×0x00 ‖ j as uint32 LE)``; 10-minute
  intervals, 144 per key; the metadata is AES-CTR under ``AEMK`` with the RPI as counter.

Written for clarity, one key at a time: the simulator uses these, and the matcher's batch
derivation (:mod:`matcher.ids`) is tested against them.
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
BLUEZONE_SLOT_S = DAY // BLUEZONE_DEFAULT_MAX  # 900: a Bluezone ID's lifetime
EN_INTERVAL = 600  # an RPI's lifetime (ENIntervalNumber unit)
EN_ROLLING_PERIOD = 144


def bluezone_id_from_subkey(sk: bytes) -> bytes:
    """The 12 bytes of a subkey that make the broadcast ID."""
    return bytes(sk[i] for i in BLUEZONE_PICK)


def bluezone_subkeys(daily_key: bytes, n: int) -> list[bytes]:
    """Subkeys ``SK(0..n-1)`` of one daily key."""
    if len(daily_key) != 32:
        raise ValueError(f"Bluezone daily key must be 32 bytes, got {len(daily_key)}")
    out: list[bytes] = []
    sk = hashlib.sha256(daily_key + BLUEZONE_SALT).digest()
    for _ in range(n):
        out.append(sk)
        sk = hashlib.sha256(sk).digest()
    return out


def bluezone_day_ids(daily_key: bytes, max_ids: int = BLUEZONE_DEFAULT_MAX) -> list[bytes]:
    """The ``max_ids`` IDs one daily key broadcasts, slot 0 first."""
    return [bluezone_id_from_subkey(sk) for sk in bluezone_subkeys(daily_key, max_ids)]


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
    """RPIs for ``count`` consecutive intervals from ``start_interval``."""
    if len(tek) != 16:
        raise ValueError(f"TEK must be 16 bytes, got {len(tek)}")
    enc = Cipher(algorithms.AES(en_rpik(tek)), modes.ECB()).encryptor()
    return [enc.update(b"EN-RPI" + bytes(6) + (start_interval + j).to_bytes(4, "little"))
            for j in range(count)]


def en_decrypt_aem(tek: bytes, rpi: bytes, aem: bytes) -> bytes:
    """Decrypt the Associated Encrypted Metadata of an advert with its TEK."""
    dec = Cipher(algorithms.AES(en_aemk(tek)), modes.CTR(rpi)).decryptor()
    return dec.update(aem) + dec.finalize()
