"""Decoders on real adverts (FD6F captures, a gateway's scan) and exact Bluezone rules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ble.decoders import BLUEZONE_BEACON, decode, decode_parts, decode_uncached
from ble.hci import HciParser
from ble.parser import parse_ad, uuid16_str, uuid128_str
from contract.records import IdKind

# id → (kind, address, rssi, RPI, AEM) written out from the capture sources, as literals.
GAEN = {
    "airbily_frame183": (IdKind.GAEN, "43:82:7D:FF:D5:DD", -74,
                         "ebd8de78173abce46461dbc7a3e899fa", "cfd9dbfa"),
    "airbily_frame184": (IdKind.GAEN, "43:82:7D:FF:D5:DD", -74,
                         "ebd8de78173abce46461dbc7a3e899fa", "cfd9dbfa"),
    "airbily_frame185": (IdKind.OTHER, "43:82:7D:FF:D5:DD", -74, None, None),  # empty SCAN_RSP
    "beacontools_android": (IdKind.GAEN, "79:86:2B:B5:7E:BB", -72,
                            "2cfb0de02b33d20c5c27611238e2d107", "42b56ee5"),
    "beacontools_ios": (IdKind.GAEN, "3F:0B:33:AE:E6:08", -70,
                        "e932e8b0688dfaec0062b7d6d35eefb5", "eeaa91ac"),
    "beacontools_filter_match": (IdKind.GAEN, "0D:EA:3D:CA:AC:E1", -47,
                                 "0d3b4f65584c582160571dd19010d41c", "2660ee34"),
    "beacontools_filter_nonmatch": (IdKind.GAEN, "0D:EA:3D:CA:AC:E1", -47,
                                    "0d3b4065584c582160571dd19010d41c", "2660ee34"),
    "oh2th_blegw_gaen": (IdKind.GAEN, None, None, "e05a18c5c5a481ff7cdc7c1279910be2",
                         "dc579f32"),
    "theengs_gaen_servicedata": (IdKind.GAEN, None, None, "e7c6d34c71e48baf278bd99be74685bc",
                                 "a78126ab"),
}
FD6F = "0000fd6f-0000-1000-8000-00805f9b34fb"


@pytest.fixture(scope="module")
def gaen_adverts(corpora: Path) -> dict[str, dict[str, Any]]:
    lines = (corpora / "ble/gaen/gaen_adverts.jsonl").read_text().splitlines()
    return {r["id"]: r for r in map(json.loads, filter(None, lines))}


def _claims(rec: dict[str, Any]) -> dict[str, Any]:
    """What the record's source project asserts (falls back to the convenience decode)."""
    out = dict(rec.get("decoded_for_convenience") or {})
    asserted = rec.get("source_asserts") or {}
    if asserted:
        out.update(rpi=asserted["identifier(RPI)"], aem=asserted["encrypted_metadata(AEM)"],
                   address=asserted["bt_addr"], rssi=asserted["rssi"])
    if rec.get("source_expected"):
        out.update(rpi=rec["source_expected"]["rpi"], aem=rec["source_expected"]["aem"])
    return out


@pytest.mark.parametrize("rid", list(GAEN))
def test_fd6f_advert(rid: str, gaen_adverts: dict[str, dict[str, Any]]) -> None:
    rec = gaen_adverts[rid]
    kind, address, rssi, rpi, aem = GAEN[rid]
    raw = bytes.fromhex(rec["hex"])
    if rec["layer"] == "hci_event_h4":
        assert raw[0] == 0x04  # H4 event
        (rep,) = HciParser().parse_event(raw[1:])
        assert (rep.address, rep.rssi) == (address, rssi)
        d = decode(rep.data)
    elif rec["layer"] == "ad_payload":
        d = decode(raw)
    else:  # service data of 0xFD6F as a scanner API hands it over
        d = decode_parts({}, {FD6F: raw}, [FD6F], None)
    assert d.kind is kind
    assert d.ident == (bytes.fromhex(rpi) if rpi else None)
    assert d.aem == (bytes.fromhex(aem) if aem else None)
    claims = _claims(rec)
    if "rpi" in claims:
        assert d.ident is not None and d.ident.hex() == claims["rpi"]
        assert d.aem is not None and d.aem.hex() == claims["aem"]
    if "address" in claims:
        assert address is not None and address.lower() == claims["address"]
        assert rssi == claims["rssi"]


def test_corpus_fd6f_records_are_all_tested(gaen_adverts: dict[str, dict[str, Any]]) -> None:
    assert sorted(gaen_adverts) == sorted(GAEN)


def test_gateway_scan_message_oh2th(corpora: Path) -> None:
    msg = json.loads((corpora / "ble/ad_payloads/oh2th_blegw_scan_message.json").read_text())
    kinds = {mac: decode(bytes.fromhex(data)).kind
             for _t, mac, _rssi, data in msg["message"]["devices"]}
    assert len(kinds) == 23
    assert [m for m, k in kinds.items() if k is IdKind.GAEN] == ["2A50FBD75BE0"]
    assert kinds["C869CD0B794D"] is IdKind.APPLE  # 0x004C nearby info
    assert kinds["288A2BE73149"] is IdKind.PHONE  # Microsoft 0x0006 CDP
    assert kinds["0009B0352BBE"] is IdKind.PHONE  # Google 0xFE9F service data
    assert kinds["F83099049CCD"] is IdKind.OTHER  # Ruuvi 0x0499
    gaen = decode(bytes.fromhex(msg["message"]["devices"][9][3]))
    assert gaen.ident == bytes.fromhex("e05a18c5c5a481ff7cdc7c1279910be2")


def test_bluezone_android_exactly_12_bytes() -> None:
    base = bytes.fromhex("020106" "0303564e")
    ident = bytes.fromhex("b9a665d754fe65e665d76a45")
    d = decode(base + b"\x0f\xff\xb5\x22" + ident)
    assert (d.kind, d.ident) == (IdKind.BLUEZONE, ident)
    assert decode(base + b"\x0e\xff\xb5\x22" + ident[:11]).kind is IdKind.OTHER
    assert decode(base + b"\x10\xff\xb5\x22" + ident + b"\x00").kind is IdKind.OTHER
    # The ID decides, not the service list: Bluezone's own iOS scanner ignores it too.
    assert decode(b"\x0f\xff\xb5\x22" + ident).ident == ident


def test_bluezone_ios_overflow_bit_and_foreground_uuid() -> None:
    overflow = bytearray(bytes.fromhex("02011a" "14ff4c0001") + bytes(16))
    assert decode(bytes(overflow)).kind is IdKind.APPLE  # bitmap without the Bluezone bit
    overflow[8] = 0x08 | 0x41  # other apps' bits set too: test just the one bit
    assert decode(bytes(overflow)).kind is IdKind.BLUEZONE_IOS
    fg = bytes.fromhex("02011a" "1107" "67a607add1172fa1c44bf573564e0000")
    d = decode(fg)
    assert (d.kind, d.ident) == (IdKind.BLUEZONE_IOS, None)


def test_ibeacon_and_the_bluezone_wakeup_beacon() -> None:
    raw = bytes.fromhex("0201061aff4c000215" "c7afef7b17884f4aa87d691d53bf21c4" "0014" "0014"
                        "c5")
    d = decode(raw)
    assert d.kind is IdKind.IBEACON
    assert d.ident == BLUEZONE_BEACON


def test_fd6f_with_wrong_length_is_not_an_rpi() -> None:
    assert decode(bytes.fromhex("03036ffd" "16166ffd") + bytes(19)).kind is IdKind.OTHER


def test_phone_like_companies() -> None:
    for company in ("0600", "7500", "e000"):
        assert decode(bytes.fromhex("05ff" + company + "0102")).kind is IdKind.PHONE
    assert decode(bytes.fromhex("05ff" + "5900" + "0102")).kind is IdKind.OTHER  # Nordic


def test_decode_cache_returns_the_shared_result() -> None:
    raw = bytes.fromhex("0fffb522b9a665d754fe65e665d76a45")
    assert decode(raw) is decode(bytes(raw))  # equal bytes hit the same entry
    assert decode(raw) == decode_uncached(raw)
    assert decode.cache_info().maxsize is not None  # bounded


def test_scanner_view_decodes_like_raw_bytes(corpora: Path) -> None:
    """bleak hands over dicts; the same rules must apply as on raw bytes."""
    msg = json.loads((corpora / "ble/ad_payloads/oh2th_blegw_scan_message.json").read_text())
    for *_rest, data in msg["message"]["devices"]:
        raw = bytes.fromhex(data)
        f = parse_ad(raw)
        view = decode_parts(f.manufacturer, {uuid16_str(k): v for k, v in
                                             f.service_data16.items()},
                            [uuid16_str(u) for u in f.uuids16]
                            + [uuid128_str(u) for u in f.uuids128], f.tx_power)
        assert view == decode(raw), data


def test_scanner_view_with_malformed_uuid_strings() -> None:
    d = decode_parts({0x22B5: bytes(12)}, {"not-a-uuid": b"\x00"}, ["zz"], None)
    assert d.kind is IdKind.BLUEZONE


def test_fast_advert_constructor_builds_the_same_record() -> None:
    import dataclasses

    from ble.decoders import new_advert
    from ble.records import Advert

    args = (1.5, "C0:00:00:00:00:01", 1, -60, IdKind.GAEN, bytes(16), b"\x01\x02\x03\x04", -8)
    fast, slow = new_advert(*args), Advert(*args)
    assert type(fast) is Advert
    assert fast == slow and hash(fast) == hash(slow) and repr(fast) == repr(slow)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.rssi = -1  # type: ignore[misc]


def test_advert_of_takes_the_payload_tx_power_first() -> None:
    from ble.decoders import Decoded, advert_of
    from ble.records import Advert

    d = Decoded(IdKind.BLUEZONE, bytes(12), None, None)
    assert advert_of(2.0, "C0:00:00:00:00:02", 1, -70, d, -7) == \
        Advert(2.0, "C0:00:00:00:00:02", 1, -70, IdKind.BLUEZONE, bytes(12), None, -7)
    d2 = d._replace(tx_power=4)
    assert advert_of(2.0, "C0:00:00:00:00:02", 1, None, d2, -7).tx_power == 4
