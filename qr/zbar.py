"""ZBar as a second-opinion QR reader, in binary mode so payloads stay byte-exact.

``pyzbar.decode`` lets ZBar transcode every payload to UTF-8 by guessing its charset, which
mangles Shift_JIS and binary codes. ZBar ≥ 0.23 has a ``BINARY`` option that returns the bytes
as encoded; pyzbar's enum predates it, so this module drives ZBar through pyzbar's own ctypes
bindings with that option set, and does the text decoding itself.
"""

from __future__ import annotations

import ctypes
import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

_ZBAR_CFG_ENABLE = 0
_ZBAR_CFG_BINARY = 4  # zbar.h: ZBAR_CFG_BINARY, since ZBar 0.23
_FOURCC_Y800 = 808466521  # 'Y800': 8-bit grayscale
_ZBAR_NONE = 0
_ZBAR_QRCODE = 64
_ZBAR_SQCODE = 80


def guess_text(raw: bytes) -> tuple[str, str]:
    """Text and content kind of a payload read without its ECI.

    QR byte mode has no declared charset unless an ECI says so: UTF-8 is what phones write
    today, Shift_JIS is the other common one, and ISO-8859-1 is the standard's default.

    Returns:
        ``(text, content)`` where content is ``text`` or ``binary``.
    """
    text = None
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        if any(0x81 <= b <= 0x9F or 0xE0 <= b <= 0xEF for b in raw):
            try:
                text = raw.decode("shift_jis")
            except UnicodeDecodeError:
                pass
    if text is None:
        text = raw.decode("latin-1")
    binary = any((ord(c) < 0x20 and c not in "\t\n\r") or 0x7F <= ord(c) < 0xA0 for c in text)
    return text, "binary" if binary else "text"


class ZBarReader:
    """One ZBar image scanner configured for QR codes, reused across frames.

    Not thread-safe: give each thread its own reader.

    Raises:
        ImportError: when pyzbar or the ZBar shared library is missing.
    """

    def __init__(self) -> None:
        from pyzbar import wrapper  # lazy: optional extra, needs libzbar0

        self._w: Any = wrapper
        self._scanner = wrapper.zbar_image_scanner_create()
        if not self._scanner:
            raise ImportError("ZBar could not create an image scanner")
        w = wrapper
        w.zbar_image_scanner_set_config(self._scanner, _ZBAR_NONE, _ZBAR_CFG_ENABLE, 0)
        w.zbar_image_scanner_set_config(self._scanner, _ZBAR_QRCODE, _ZBAR_CFG_ENABLE, 1)
        rc = w.zbar_image_scanner_set_config(self._scanner, _ZBAR_QRCODE, _ZBAR_CFG_BINARY, 1)
        # An older ZBar refuses the option (rc != 0) and hands back UTF-8 it transcoded.
        self.binary = rc == 0
        if not self.binary:
            log.warning("this ZBar has no binary mode: its payloads are transcoded to UTF-8")

    def read(self, gray: np.ndarray) -> list[bytes]:
        """Payloads of every QR code ZBar finds in a 2-D uint8 image."""
        w = self._w
        img = np.ascontiguousarray(gray, dtype=np.uint8)
        height, width = img.shape
        data = img.tobytes()
        image = w.zbar_image_create()
        if not image:
            return []
        try:
            w.zbar_image_set_format(image, _FOURCC_Y800)
            w.zbar_image_set_size(image, width, height)
            pixels = ctypes.cast(ctypes.c_char_p(data), ctypes.POINTER(ctypes.c_ubyte))
            w.zbar_image_set_data(image, pixels, len(data), None)
            if w.zbar_scan_image(self._scanner, image) <= 0:
                return []
            out = []
            sym = w.zbar_image_first_symbol(image)
            while sym:
                n = w.zbar_symbol_get_data_length(sym)
                out.append(ctypes.string_at(w.zbar_symbol_get_data(sym), n))
                sym = w.zbar_symbol_next(sym)
            return out
        finally:
            w.zbar_image_destroy(image)

    def close(self) -> None:
        """Free the scanner."""
        if self._scanner:
            self._w.zbar_image_scanner_destroy(self._scanner)
            self._scanner = None

    def __del__(self) -> None:
        self.close()
