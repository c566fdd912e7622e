"""HCI LE advertising report parser: legacy (subevent 0x02) and extended (0x0D).

Input is one HCI event packet without the H4 type byte: ``event_code | length | params``.
Only LE Meta events (0x3E) carrying advertising reports yield anything. Every field is
bounds-checked; a report that does not fit is counted in :class:`HciStats` and parsing of
that event stops. Nothing here raises on hostile bytes.

Layouts: Core Spec Vol 4 Part E §7.7.65.2 and §7.7.65.13. Multi-report events are read as
contiguous per-report blocks, as Linux and Android controllers deliver them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

LE_META_EVENT = 0x3E
LE_ADV_REPORT = 0x02
LE_EXT_ADV_REPORT = 0x0D
RSSI_NOT_AVAILABLE = 127
TX_NOT_AVAILABLE = 127
EXT_EVENT_TYPE_MASK = 0x007F  # bits 7–15 are reserved; real controllers set bit 15
EXT_LEGACY_BIT = 0x10
EXT_SCAN_RSP_BIT = 0x08
_LEGACY_FIXED = 10  # type, address type, address, length, and the trailing RSSI
_EXT_FIXED = 24
_MAX_PENDING = 64  # extended-advert reassemblies in flight; bounded, oldest dropped
_MAX_EXT_DATA = 1650  # the most an extended advert can carry


class AdvReport(NamedTuple):
    """One advertising report from the controller.

    Attributes:
        event_type: legacy PDU type (0–4), or the extended bit field with reserved bits
            masked off.
        address_type: 0 public, 1 random, 2/3 resolved identities, 255 anonymous.
        address: ``AA:BB:CC:DD:EE:FF`` (display order).
        rssi: dBm, ``None`` when the controller reported 127.
        data: advertising data (AD structures); extended fragments already joined.
        tx_power: dBm from the extended report header, ``None`` if not available.
        extended: whether the report came through subevent 0x0D.
    """

    event_type: int
    address_type: int
    address: str
    rssi: int | None
    data: bytes
    tx_power: int | None
    extended: bool


@dataclass(slots=True)
class HciStats:
    """What the parser saw and skipped."""

    events: int = 0  # LE advertising report events
    reports: int = 0  # reports returned
    malformed: int = 0  # events or reports that did not fit their declared lengths
    fragments: int = 0  # extended fragments joined into a later report
    truncated: int = 0  # extended adverts the controller marked as truncated
    dropped_fragments: int = 0  # reassemblies dropped because too many were in flight


@lru_cache(maxsize=8192)
def format_address(raw: bytes) -> str:
    """6 address bytes as sent (least significant first) → ``AA:BB:CC:DD:EE:FF``."""
    return raw[::-1].hex(":").upper()


def _s8(v: int) -> int:
    return v - 256 if v > 127 else v


class HciParser:
    """Stateful parser (extended adverts may span several reports)."""

    def __init__(self) -> None:
        self.stats = HciStats()
        self._pending: dict[tuple[bytes, int, int], bytes] = {}

    def parse_event(self, event: bytes) -> list[AdvReport]:
        """Advertising reports in one HCI event packet (no H4 type byte). Never raises."""
        if len(event) < 3 or event[0] != LE_META_EVENT:
            return []
        sub = event[2]
        if sub != LE_ADV_REPORT and sub != LE_EXT_ADV_REPORT:
            return []
        self.stats.events += 1
        if event[1] != len(event) - 2:
            # Declared length disagrees with the packet: parse what is there, but say so.
            self.stats.malformed += 1
        if len(event) < 4:
            self.stats.malformed += 1
            return []
        if sub == LE_ADV_REPORT:
            return self._legacy(event, event[3])
        return self._extended(event, event[3])

    def _legacy(self, ev: bytes, count: int) -> list[AdvReport]:
        out: list[AdvReport] = []
        i = 4
        n = len(ev)
        for _ in range(count):
            if i + _LEGACY_FIXED > n:
                self.stats.malformed += 1
                break
            dlen = ev[i + 8]
            end = i + 9 + dlen
            if dlen > 31 or end + 1 > n:
                self.stats.malformed += 1
                break
            rssi = ev[end]
            etype, atype = ev[i], ev[i + 1]
            if etype > 4 or atype > 3:  # reserved values: a damaged report, framing intact
                self.stats.malformed += 1
            else:
                out.append(AdvReport(etype, atype, format_address(ev[i + 2:i + 8]),
                                     None if rssi == RSSI_NOT_AVAILABLE else _s8(rssi),
                                     ev[i + 9:end], None, False))
            i = end + 1
        self.stats.reports += len(out)
        return out

    def _extended(self, ev: bytes, count: int) -> list[AdvReport]:
        out: list[AdvReport] = []
        i = 4
        n = len(ev)
        for _ in range(count):
            if i + _EXT_FIXED > n:
                self.stats.malformed += 1
                break
            dlen = ev[i + 23]
            end = i + _EXT_FIXED + dlen
            if end > n:
                self.stats.malformed += 1
                break
            etype = (ev[i] | (ev[i + 1] << 8)) & EXT_EVENT_TYPE_MASK
            status = (etype >> 5) & 0x03
            atype = ev[i + 2]
            raw_addr = ev[i + 3:i + 9]
            sid = ev[i + 11]
            tx = ev[i + 12]
            rssi = ev[i + 13]
            data = ev[i + 24:end]
            i = end
            key = (raw_addr, atype, sid)
            if status == 1:  # more fragments to come
                self._hold(key, data)
                continue
            if self._pending:
                head = self._pending.pop(key, None)
                if head is not None:
                    self.stats.fragments += 1
                    data = head + data
            if atype > 3 and atype != 0xFF:
                self.stats.malformed += 1
                continue
            if status == 2:
                self.stats.truncated += 1
            elif status == 3:  # reserved value: report it, note it
                self.stats.malformed += 1
            out.append(AdvReport(etype, atype, format_address(raw_addr),
                                 None if rssi == RSSI_NOT_AVAILABLE else _s8(rssi),
                                 data, None if tx == TX_NOT_AVAILABLE else _s8(tx), True))
        self.stats.reports += len(out)
        return out

    def _hold(self, key: tuple[bytes, int, int], data: bytes) -> None:
        self.stats.fragments += 1
        head = self._pending.pop(key, b"")
        if len(head) + len(data) > _MAX_EXT_DATA:
            self.stats.malformed += 1
            return
        if len(self._pending) >= _MAX_PENDING:
            self._pending.pop(next(iter(self._pending)))
            self.stats.dropped_fragments += 1
        self._pending[key] = head + data


def is_scan_response(report: AdvReport) -> bool:
    """Whether a report is a scan response (legacy type 4, or extended bit 3)."""
    if report.extended:
        return bool(report.event_type & EXT_SCAN_RSP_BIT)
    return report.event_type == 4
