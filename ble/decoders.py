"""Advert payload → what it is and its tracing ID: Bluezone (Android, iOS), EN, iBeacon, other.

Exact rules (facts in the Bluezone protocol reference and the EN specification):

* Bluezone Android: manufacturer data of company ``0x22B5`` holding exactly 12 bytes, the ID.
  The app also lists 16-bit service ``0x4E56``; the manufacturer data alone decides, because
  Bluezone's own iOS scanner accepts the ID without looking at the service list.
* Bluezone iOS: no ID on the air. Foreground adverts list the 128-bit service
  ``00004E56-73F5-4BC4-A12F-17D1AD07A667``; background adverts use Apple's overflow area
  (company ``0x004C``, type ``0x01``, 16-byte bitmap) with bit ``0x08`` of bitmap byte 0.
  The ID is read over GATT (``ble.ios``).
* Exposure Notification: service data for ``0xFD6F`` of exactly 20 bytes, RPI (16) ‖ AEM (4).
* iBeacon: Apple ``02 15`` with proximity UUID, major, minor, measured power (23 bytes).
* Everything else is only classified for counting: other Apple, phone-like, other.

Repeated payloads dominate real traffic, so :func:`decode` caches on the raw bytes (bounded);
results are shared and must be treated as read-only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from typing import NamedTuple

from ble.parser import AdFields, uuid128_wire
from ble.records import Advert
from contract.records import IdKind

BLUEZONE_COMPANY = 0x22B5
BLUEZONE_ID_LEN = 12
BLUEZONE_SERVICE16 = 0x4E56
BLUEZONE_IOS_SERVICE = "00004e56-73f5-4bc4-a12f-17d1ad07a667"
BLUEZONE_IOS_CHARACTERISTIC = "00004e56-73f5-4bc4-a12f-17d1ad07a689"
BLUEZONE_IOS_SERVICE_WIRE = uuid128_wire(BLUEZONE_IOS_SERVICE)
APPLE_COMPANY = 0x004C
APPLE_OVERFLOW_TYPE = 0x01
APPLE_OVERFLOW_LEN = 17  # type byte + 16-byte hashed service bitmap
BLUEZONE_OVERFLOW_BIT = 0x08  # bitmap byte 0
EN_SERVICE16 = 0xFD6F
EN_PAYLOAD_LEN = 20
IBEACON_PREFIX = b"\x02\x15"
IBEACON_LEN = 23
# Android Bluezone (3.0.7+) also transmits this iBeacon to wake sleeping iOS apps.
BLUEZONE_BEACON = bytes.fromhex("c7afef7b17884f4aa87d691d53bf21c4") + b"\x00\x14\x00\x14"

# Heuristic: adverts from these senders are almost always phones or their companions.
PHONE_COMPANIES = frozenset({0x0006, 0x0075, 0x00E0})  # Microsoft, Samsung, Google
PHONE_SERVICES16 = frozenset({0xFE9F})  # Google

_BASE_SUFFIX = "-0000-1000-8000-00805f9b34fb"


class Decoded(NamedTuple):
    """Decoder output for one payload (shared via the cache: read-only).

    Attributes:
        kind: what the payload is.
        ident: tracing ID (Bluezone 12 bytes, EN RPI 16 bytes); for iBeacon the proximity
            UUID ‖ major ‖ minor (20 bytes, a beacon, not a person); else ``None``.
        aem: EN Associated Encrypted Metadata (4 bytes).
        tx_power: advertised TX power level (AD type 0x0A), dBm.
    """

    kind: IdKind
    ident: bytes | None
    aem: bytes | None
    tx_power: int | None


def classify(f: AdFields) -> Decoded:
    """Decide what parsed AD fields are. Pure; never raises."""
    mfr = f.manufacturer
    phone = (not PHONE_COMPANIES.isdisjoint(mfr) or not PHONE_SERVICES16.isdisjoint(f.uuids16)
             or not PHONE_SERVICES16.isdisjoint(f.service_data16))
    return _decide(mfr.get(BLUEZONE_COMPANY), f.service_data16.get(EN_SERVICE16),
                   BLUEZONE_IOS_SERVICE_WIRE in f.uuids128, mfr.get(APPLE_COMPANY), phone,
                   f.tx_power)


# Kinds as module constants and shared results for payloads without TX power: most adverts
# are not tracing phones, so the cache-miss path mostly returns one of these without
# building anything (results are read-only, like the cache's).
_K_BZ, _K_GAEN, _K_IOS, _K_IBEACON, _K_APPLE, _K_PHONE, _K_OTHER = (
    IdKind.BLUEZONE, IdKind.GAEN, IdKind.BLUEZONE_IOS, IdKind.IBEACON, IdKind.APPLE,
    IdKind.PHONE, IdKind.OTHER)
_tuple_new = tuple.__new__  # builds a Decoded without the namedtuple's Python-level __new__
_IOS0 = Decoded(_K_IOS, None, None, None)
_APPLE0 = Decoded(_K_APPLE, None, None, None)
_PHONE0 = Decoded(_K_PHONE, None, None, None)
_OTHER0 = Decoded(_K_OTHER, None, None, None)


def _decide(bz: bytes | None, en: bytes | None, ios: bool, apple: bytes | None, phone: bool,
            tx: int | None) -> Decoded:
    """The classification ladder shared by :func:`classify` and :func:`decode_uncached`."""
    if bz is not None and len(bz) == BLUEZONE_ID_LEN:
        return _tuple_new(Decoded, (_K_BZ, bz, None, tx))
    if en is not None and len(en) == EN_PAYLOAD_LEN:
        return _tuple_new(Decoded, (_K_GAEN, en[:16], en[16:], tx))
    if ios:
        return _IOS0 if tx is None else _tuple_new(Decoded, (_K_IOS, None, None, tx))
    if apple is not None:
        if (len(apple) == APPLE_OVERFLOW_LEN and apple[0] == APPLE_OVERFLOW_TYPE
                and apple[1] & BLUEZONE_OVERFLOW_BIT):
            return _IOS0 if tx is None else _tuple_new(Decoded, (_K_IOS, None, None, tx))
        if len(apple) == IBEACON_LEN and apple[:2] == IBEACON_PREFIX:
            return _tuple_new(Decoded, (_K_IBEACON, apple[2:22], None, tx))
        return _APPLE0 if tx is None else _tuple_new(Decoded, (_K_APPLE, None, None, tx))
    if phone:
        return _PHONE0 if tx is None else _tuple_new(Decoded, (_K_PHONE, None, None, tx))
    return _OTHER0 if tx is None else _tuple_new(Decoded, (_K_OTHER, None, None, tx))


def decode_uncached(data: bytes) -> Decoded:
    """Classify a raw AD payload in one pass, without the cache. Never raises.

    Gives exactly ``classify(parse_ad(data))`` (a property the tests check on arbitrary
    bytes) but only looks at the structures classification needs and builds no
    :class:`AdFields`: this is the cache-miss path.
    """
    n = len(data)
    i = 0
    bz = en = apple = None
    tx: int | None = None
    ios = phone = False
    while i < n:
        length = data[i]
        if length == 0:  # padding
            i += 1
            continue
        end = i + 1 + length
        if end > n:
            break
        t = data[i + 1]
        if t == 0xFF:
            if length >= 3:
                company = data[i + 2] | (data[i + 3] << 8)
                if company == BLUEZONE_COMPANY:
                    bz = data[i + 4:end]
                elif company == APPLE_COMPANY:
                    apple = data[i + 4:end]
                elif company in PHONE_COMPANIES:
                    phone = True
        elif t == 0x16:
            if length >= 3:
                u16 = data[i + 2] | (data[i + 3] << 8)
                if u16 == EN_SERVICE16:
                    en = data[i + 4:end]
                elif u16 in PHONE_SERVICES16:
                    phone = True
        elif t == 0x03 or t == 0x02:
            for j in range(i + 2, end - 1, 2):
                if (data[j] | (data[j + 1] << 8)) in PHONE_SERVICES16:
                    phone = True
        elif t == 0x07 or t == 0x06:
            for j in range(i + 2, end - 15, 16):
                if data[j:j + 16] == BLUEZONE_IOS_SERVICE_WIRE:
                    ios = True
        elif t == 0x0A and length >= 2:
            v = data[i + 2]
            tx = v - 256 if v > 127 else v
        i = end
    return _decide(bz, en, ios, apple, phone, tx)


decode = lru_cache(maxsize=4096)(decode_uncached)
"""Classify a raw AD payload, cached on the bytes (bounded LRU). Never raises."""


_ADVERT_FIELDS = ("ts", "address", "address_type", "rssi", "kind", "ident", "aem", "tx_power")


def _advert_factories() -> tuple[Callable[..., Advert], Callable[..., Advert]]:
    """Constructors for :class:`Advert` that skip the frozen dataclass ``__init__``.

    A frozen dataclass sets each field through ``object.__setattr__``; writing the slots
    through their descriptors after ``object.__new__`` is about twice as fast (habluetooth
    builds its per-advert objects the same way). If ``Advert`` ever gains a field, the plain
    constructor is used instead.
    """
    if tuple(f.name for f in dataclasses.fields(Advert)) != _ADVERT_FIELDS:  # pragma: no cover

        def plain_of(ts: float, address: str, address_type: int, rssi: int | None,
                     d: Decoded, tx_power: int | None = None) -> Advert:
            return Advert(ts, address, address_type, rssi, d.kind, d.ident, d.aem,
                          d.tx_power if d.tx_power is not None else tx_power)

        return Advert, plain_of
    new = object.__new__
    s_ts, s_addr, s_atype, s_rssi, s_kind, s_ident, s_aem, s_tx = (
        getattr(Advert, name).__set__ for name in _ADVERT_FIELDS)

    def make(ts: float, address: str, address_type: int, rssi: int | None, kind: IdKind,
             ident: bytes | None = None, aem: bytes | None = None,
             tx_power: int | None = None) -> Advert:
        a = new(Advert)
        s_ts(a, ts)
        s_addr(a, address)
        s_atype(a, address_type)
        s_rssi(a, rssi)
        s_kind(a, kind)
        s_ident(a, ident)
        s_aem(a, aem)
        s_tx(a, tx_power)
        return a

    def make_of(ts: float, address: str, address_type: int, rssi: int | None, d: Decoded,
                tx_power: int | None = None) -> Advert:
        a = new(Advert)
        s_ts(a, ts)
        s_addr(a, address)
        s_atype(a, address_type)
        s_rssi(a, rssi)
        kind, ident, aem, tx = d
        s_kind(a, kind)
        s_ident(a, ident)
        s_aem(a, aem)
        s_tx(a, tx if tx is not None else tx_power)
        return a

    return make, make_of


new_advert, advert_of = _advert_factories()
"""``new_advert(ts, address, address_type, rssi, kind, ident, aem, tx_power)`` builds an
:class:`Advert` equal in every way to ``Advert(...)``, faster. ``advert_of(ts, address,
address_type, rssi, decoded, tx_power=None)`` builds it from a :class:`Decoded`; ``tx_power``
is the fallback when the payload carries none (an extended report's header)."""


def fields_from_parts(manufacturer_data: Mapping[int, bytes],
                      service_data: Mapping[str, bytes],
                      service_uuids: Iterable[str],
                      tx_power: int | None) -> AdFields:
    """Rebuild :class:`AdFields` from a scanner's already-split view (bleak, BlueZ D-Bus).

    Malformed UUID strings are skipped and counted, like malformed AD structures.
    """
    f = AdFields(tx_power=tx_power)
    for company, value in manufacturer_data.items():
        if isinstance(company, int) and 0 <= company <= 0xFFFF:
            f.manufacturer[company] = bytes(value)
        else:
            f.malformed += 1
    for uuid, value in service_data.items():
        u16 = _uuid16_of(uuid)
        if u16 is not None:
            f.service_data16[u16] = bytes(value)
        else:
            wire = _uuid128_of(uuid)
            if wire is None:
                f.malformed += 1
            else:
                f.service_data128[wire] = bytes(value)
    for uuid in service_uuids:
        u16 = _uuid16_of(uuid)
        if u16 is not None:
            f.uuids16.append(u16)
            continue
        wire = _uuid128_of(uuid)
        if wire is None:
            f.malformed += 1
        else:
            f.uuids128.append(wire)
    return f


def decode_parts(manufacturer_data: Mapping[int, bytes], service_data: Mapping[str, bytes],
                 service_uuids: Iterable[str], tx_power: int | None) -> Decoded:
    """Classify a scanner's split view of an advert with the same rules as :func:`decode`."""
    return classify(fields_from_parts(manufacturer_data, service_data, service_uuids,
                                      tx_power))


def ad_from_parts(manufacturer_data: Mapping[int, bytes], service_data: Mapping[str, bytes],
                  service_uuids: Iterable[str], tx_power: int | None) -> bytes:
    """AD structures equivalent to a scanner's split view (bleak, BlueZ D-Bus).

    BlueZ hands over an advert already split into fields; building the bytes back lets
    such a source feed the same raw fast path as every other (``decode`` of the result
    classifies exactly as :func:`decode_parts` does). Malformed UUID strings and values too
    long for one AD structure are left out.
    """
    out = bytearray()

    def put(ad_type: int, body: bytes) -> None:
        if len(body) <= 254:
            out.append(len(body) + 1)
            out.append(ad_type)
            out.extend(body)

    if tx_power is not None and -128 <= tx_power <= 127:
        put(0x0A, (tx_power & 0xFF).to_bytes(1, "little"))
    u16s = bytearray()
    for uuid in service_uuids:
        u16 = _uuid16_of(uuid)
        if u16 is not None:
            u16s += u16.to_bytes(2, "little")
        else:
            wire = _uuid128_of(uuid)
            if wire is not None:
                put(0x07, wire)
    if u16s:
        put(0x03, bytes(u16s))
    for uuid, value in service_data.items():
        u16 = _uuid16_of(uuid)
        if u16 is not None:
            put(0x16, u16.to_bytes(2, "little") + bytes(value))
        else:
            wire = _uuid128_of(uuid)
            if wire is not None:
                put(0x21, wire + bytes(value))
    for company, value in manufacturer_data.items():
        if isinstance(company, int) and 0 <= company <= 0xFFFF:
            put(0xFF, company.to_bytes(2, "little") + bytes(value))
    return bytes(out)


def _uuid16_of(uuid: str) -> int | None:
    u = uuid.lower()
    if len(u) == 36 and u.startswith("0000") and u.endswith(_BASE_SUFFIX):
        try:
            return int(u[4:8], 16)
        except ValueError:
            return None
    return None


def _uuid128_of(uuid: str) -> bytes | None:
    try:
        raw = bytes.fromhex(uuid.replace("-", ""))
    except ValueError:
        return None
    return raw[::-1] if len(raw) == 16 else None


COMPILED = False
"""Whether the Cython-compiled copy of this module is in use (see :mod:`ble.compiled`)."""
if __name__ == "ble.decoders":
    from ble.compiled import adopt

    adopt(globals(), "ble._decoders_c")
