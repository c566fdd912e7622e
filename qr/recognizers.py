"""Payload → typed check-in: CCCD, BHYT, EU DCC, bzgw QR, URL, opaque token, or a rejection.

Tried in order of how specific the payload's shape is: the prefixed formats (``HC1:``,
``BZ1:``) first, then the card layouts, then URLs, then anything printable as an opaque token
(the national apps' personal QR codes have no public format). Opaque tokens and URLs are kept
only as a keyed hash. Hostile input (huge, binary, control characters, malformed base45, zlib
or CBOR, decompression bombs) ends as a :class:`~qr.records.Rejected`, never an exception.
"""

from __future__ import annotations

import logging
import unicodedata
from pathlib import Path
from urllib.parse import urlsplit

from contract.records import CheckInKind
from core.clock import ClockEpoch
from core.errors import ConfigError
from qr.bhyt import parse_bhyt
from qr.bzgwqr import Keys, load_checkin_keys, parse_bzgw
from qr.cccd import parse_cccd
from qr.config import QrConfig
from qr.dcc import TrustList, load_trust_list, parse_dcc
from qr.payload import DEFAULT_TOKEN_KEY, PayloadRejected, Recognition, token_hash
from qr.records import DecodedCode, Rejected, ScannedCheckIn

log = logging.getLogger(__name__)

MAX_PAYLOAD = 4096  # bytes; a QR symbol holds at most 2,953 in byte mode
MAX_TEXT = 7100  # characters; 7,089 digits is the numeric-mode maximum
_ALLOWED_CONTROLS = {"\t", "\n", "\r"}


def _unprintable(text: str) -> bool:
    if text.isprintable():  # C fast path: no control, private-use or unassigned characters
        return False
    for ch in text:
        if ch in _ALLOWED_CONTROLS:
            continue
        cat = unicodedata.category(ch)
        if cat in ("Cc", "Cs", "Co", "Cn") or ch == "\ufffd":
            return True
    return False


class Recognizer:
    """Turns decoded codes into check-ins.

    Args:
        trust_list: EU DCC signer keys; DCC signatures are checked only when given.
        checkin_keys: keys that sign bzgw QR codes; without them bzgw codes are rejected.
        token_key: key of the hash kept for opaque tokens and URLs.
    """

    def __init__(self, *, trust_list: TrustList | None = None, checkin_keys: Keys | None = None,
                 token_key: bytes = DEFAULT_TOKEN_KEY) -> None:
        self.trust_list = trust_list
        self.checkin_keys = checkin_keys
        self.token_key = token_key

    @classmethod
    def from_config(cls, cfg: QrConfig) -> Recognizer:
        """Load the trust list, check-in keys and token key the config names.

        Raises:
            ConfigError: a named file is missing or malformed.
        """
        token_key = DEFAULT_TOKEN_KEY
        if cfg.token_key is not None:
            try:
                token_key = Path(cfg.token_key).read_bytes().strip()
            except OSError as err:
                raise ConfigError([(str(cfg.token_key), f"cannot read token key: {err}")]
                                  ) from err
            if len(token_key) < 16:
                raise ConfigError([(str(cfg.token_key), "token key must be at least 16 bytes")])
        return cls(
            trust_list=load_trust_list(cfg.trust_list) if cfg.trust_list else None,
            checkin_keys=load_checkin_keys(cfg.checkin_key) if cfg.checkin_key else None,
            token_key=token_key)

    def classify(self, code: DecodedCode | str | bytes, *, ts: float) -> Recognition | Rejected:
        """What a payload is, without a clock (``Rejected.ts`` is ``ts``)."""
        try:
            return self._classify(code, ts)
        except PayloadRejected as rej:
            return Rejected(ts=ts, kind=rej.kind, reason=rej.reason)

    def recognize(self, code: DecodedCode | str | bytes, *, ts: float,
                  clock: ClockEpoch) -> ScannedCheckIn | Rejected:
        """A check-in at ``ts`` (wall time in ``clock``), or the reason it is not one."""
        got = self.classify(code, ts=ts)
        if isinstance(got, Rejected):
            return got
        return ScannedCheckIn(ts=ts, clock=clock, kind=got.kind, subject=got.subject,
                       masked=got.masked, fields=dict(got.fields))

    def _classify(self, code: DecodedCode | str | bytes, ts: float) -> Recognition:
        if isinstance(code, DecodedCode):
            raw, text, content = code.raw, code.text, code.content
        elif isinstance(code, bytes):
            raw, content = code, "text"
            try:
                text = code.decode("utf-8")
            except UnicodeDecodeError:
                text, content = "", "binary"
        else:
            text, content = code, "text"
            raw = code.encode("utf-8", "surrogatepass")
        if not raw and not text:
            raise PayloadRejected(None, "empty payload")
        if len(raw) > MAX_PAYLOAD or len(text) > MAX_TEXT:
            raise PayloadRejected(None, "payload too large for a QR code")
        if content != "text" or _unprintable(text):
            raise PayloadRejected(None, "unreadable payload: binary data or control characters")
        if not text.strip():
            raise PayloadRejected(None, "empty payload")
        found = (parse_dcc(text, ts=ts, trust=self.trust_list)
                 or parse_bzgw(text, ts=ts, keys=self.checkin_keys)
                 or parse_cccd(text) or parse_bhyt(text) or self._url(text, raw))
        if found is not None:
            return found
        subject = token_hash(self.token_key, raw)
        return Recognition(kind=CheckInKind.OPAQUE, subject=subject,
                           masked=f"token #{subject[:6]}")

    def _url(self, text: str, raw: bytes) -> Recognition | None:
        t = text.strip()
        if not t[:8].lower().startswith(("http://", "https://")) or any(c.isspace() for c in t):
            return None
        try:
            host = (urlsplit(t).hostname or "").lower()
        except ValueError:
            host = ""
        if not host:
            raise PayloadRejected(CheckInKind.URL, "URL: no host")
        subject = token_hash(self.token_key, raw)
        return Recognition(kind=CheckInKind.URL, subject=subject, masked=f"{host}/… #{subject[:6]}",
                           fields={"host": host})
