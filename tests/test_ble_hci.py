"""HCI LE advertising reports: legacy (0x02) and extended (0x0D), defensive."""

from __future__ import annotations

import struct

from ble.hci import HciParser, is_scan_response
from ble.replay import build_legacy_event


def _ev(sub: int, reports: list[bytes]) -> bytes:
    params = bytes([sub, len(reports)]) + b"".join(reports)
    return bytes([0x3E, len(params)]) + params


def _legacy(etype: int, atype: int, addr: str, data: bytes, rssi: int) -> bytes:
    raw = bytes.fromhex(addr.replace(":", ""))[::-1]
    return bytes([etype, atype]) + raw + bytes([len(data)]) + data + bytes([rssi & 0xFF])


def _ext(etype: int, atype: int, addr: str, data: bytes, rssi: int, tx: int = 127,
         sid: int = 0xFF) -> bytes:
    raw = bytes.fromhex(addr.replace(":", ""))[::-1]
    return (struct.pack("<H", etype) + bytes([atype]) + raw
            + bytes([1, 0, sid, tx & 0xFF, rssi & 0xFF]) + b"\x00\x00" + bytes(7)
            + bytes([len(data)]) + data)


BZ = bytes.fromhex("020106" "0303564e" "0fffb522" "b9a665d754fe65e665d76a45")


def test_legacy_report_from_a_real_ios_en_advert() -> None:
    ev = bytes.fromhex("3e2b0201030108e6ae330b3f1f02011a03036ffd17166ffde932e8b0688dfaec0062"
                       "b7d6d35eefb5eeaa91acba")
    p = HciParser()
    (rep,) = p.parse_event(ev)
    assert (rep.event_type, rep.address_type, rep.address, rep.rssi) == \
        (3, 1, "3F:0B:33:AE:E6:08", -70)
    assert rep.data[:3] == b"\x02\x01\x1a" and len(rep.data) == 31
    assert not rep.extended and rep.tx_power is None
    assert p.stats.events == 1 and p.stats.reports == 1 and p.stats.malformed == 0


def test_multi_report_event_contiguous_blocks() -> None:
    ev = _ev(0x02, [_legacy(0, 1, "C0:00:00:00:00:01", BZ, -61),
                    _legacy(4, 0, "00:11:22:33:44:55", b"", 127)])
    reps = HciParser().parse_event(ev)
    assert [(r.address, r.rssi, r.data) for r in reps] == [
        ("C0:00:00:00:00:01", -61, BZ), ("00:11:22:33:44:55", None, b"")]
    assert is_scan_response(reps[1]) and not is_scan_response(reps[0])


def test_event_cut_short_keeps_whole_reports_and_counts() -> None:
    ev = _ev(0x02, [_legacy(0, 1, "C0:00:00:00:00:01", BZ, -61),
                    _legacy(0, 1, "C0:00:00:00:00:02", BZ, -62)])
    p = HciParser()
    reps = p.parse_event(ev[:-5])
    assert [r.address for r in reps] == ["C0:00:00:00:00:01"]
    assert p.stats.malformed == 2  # declared length mismatch + the report that did not fit


def test_legacy_data_longer_than_31_is_malformed() -> None:
    p = HciParser()
    assert p.parse_event(_ev(0x02, [_legacy(0, 1, "C0:00:00:00:00:01", bytes(32), -50)])) == []
    assert p.stats.malformed == 1


def test_extended_reserved_bits_masked() -> None:
    p = HciParser()
    (rep,) = p.parse_event(_ev(0x0D, [_ext(0x8013, 1, "C0:00:00:00:00:03", BZ, -55, tx=-7)]))
    assert rep.event_type == 0x13  # legacy ADV_IND through 0x0D, bit 15 dropped
    assert (rep.rssi, rep.tx_power, rep.data, rep.extended) == (-55, -7, BZ, True)
    assert p.stats.malformed == 0


def test_extended_scan_response_flag() -> None:
    (rep,) = HciParser().parse_event(_ev(0x0D, [_ext(0x1B, 1, "C0:00:00:00:00:03", b"", -55)]))
    assert is_scan_response(rep)


def test_extended_fragments_are_joined() -> None:
    p = HciParser()
    first = _ext(0x0020 | 0x01, 1, "C0:00:00:00:00:04", BZ[:10], -60, sid=3)  # more to come
    assert p.parse_event(_ev(0x0D, [first])) == []
    (rep,) = p.parse_event(_ev(0x0D, [_ext(0x01, 1, "C0:00:00:00:00:04", BZ[10:], -60, sid=3)]))
    assert rep.data == BZ
    assert p.stats.fragments == 2


def test_extended_truncated_data_is_reported_and_counted() -> None:
    p = HciParser()
    (rep,) = p.parse_event(_ev(0x0D, [_ext(0x40, 1, "C0:00:00:00:00:05", BZ[:7], -60)]))
    assert rep.data == BZ[:7]
    assert p.stats.truncated == 1


def test_other_events_are_ignored() -> None:
    p = HciParser()
    assert p.parse_event(bytes.fromhex("0e0401030c00")) == []  # Command Complete
    assert p.parse_event(bytes.fromhex("3e0a0300000000000000000000")[:12]) == []  # conn update
    assert p.parse_event(b"") == [] and p.parse_event(b"\x3e") == []
    assert p.stats.events == 0


def test_builder_round_trips() -> None:
    ev = build_legacy_event(3, "C0:00:00:00:00:06", 1, BZ, -77)
    (rep,) = HciParser().parse_event(ev)
    assert (rep.event_type, rep.address, rep.address_type, rep.rssi, rep.data) == \
        (3, "C0:00:00:00:00:06", 1, -77, BZ)
