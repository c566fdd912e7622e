"""Advertising-data (AD structure) parser: a pure function on bytes that never raises.

The payload of an advertising report is a sequence of ``Length | AD_Type | value`` structures
(Core Spec Vol 3 Part C §11). Hostile or damaged payloads are normal on the air, so every
length is checked; a structure that does not fit is skipped and counted in
:attr:`AdFields.malformed`, and parsing stops where the framing can no longer be trusted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# AD types (Bluetooth Assigned Numbers, "Common Data Types").
AD_FLAGS = 0x01
AD_UUID16_INCOMPLETE = 0x02
AD_UUID16_COMPLETE = 0x03
AD_UUID32_INCOMPLETE = 0x04
AD_UUID32_COMPLETE = 0x05
AD_UUID128_INCOMPLETE = 0x06
AD_UUID128_COMPLETE = 0x07
AD_NAME_SHORT = 0x08
AD_NAME_COMPLETE = 0x09
AD_TX_POWER = 0x0A
AD_SERVICE_DATA16 = 0x16
AD_SERVICE_DATA32 = 0x20
AD_SERVICE_DATA128 = 0x21
AD_MANUFACTURER = 0xFF

_BASE_UUID_TAIL = "-0000-1000-8000-00805f9b34fb"


@dataclass(slots=True)
class AdFields:
    """What one AD payload says. Treat instances as read-only: decoders cache on raw bytes.

    Attributes:
        flags: the Flags byte, if present.
        uuids16: 16-bit service UUIDs (incomplete and complete lists), in order.
        uuids32: 32-bit service UUIDs.
        uuids128: 128-bit service UUIDs as 16 bytes in wire (little-endian) order.
        service_data16: 16-bit UUID → service data.
        service_data32: 32-bit UUID → service data.
        service_data128: 128-bit UUID (wire order) → service data.
        manufacturer: company ID → manufacturer-specific data (after the 2-byte company ID).
        tx_power: advertised TX power level in dBm (signed).
        local_name: complete name, else shortened name; may be personal, never persist it.
        malformed: structures skipped because they did not fit or were too short.
    """

    flags: int | None = None
    uuids16: list[int] = field(default_factory=list)
    uuids32: list[int] = field(default_factory=list)
    uuids128: list[bytes] = field(default_factory=list)
    service_data16: dict[int, bytes] = field(default_factory=dict)
    service_data32: dict[int, bytes] = field(default_factory=dict)
    service_data128: dict[bytes, bytes] = field(default_factory=dict)
    manufacturer: dict[int, bytes] = field(default_factory=dict)
    tx_power: int | None = None
    local_name: str | None = None
    malformed: int = 0


def parse_ad(data: bytes) -> AdFields:
    """Parse an AD payload (advertisement, scan response, or both concatenated).

    Never raises on any ``bytes`` input. A zero length byte is padding and is stepped over
    (a padded advertisement may be followed by its scan response). A structure whose length
    runs past the end stops parsing and counts as malformed; a known structure too short for
    its type is skipped and counted.

    Args:
        data: the raw advertising data.

    Returns:
        The fields found; later structures of the same kind override earlier ones, except
        that a shortened local name never replaces a complete one.
    """
    out = AdFields()
    n = len(data)
    i = 0
    short_name: str | None = None
    while i < n:
        length = data[i]
        if length == 0:  # early-termination padding; a scan response may follow it
            i += 1
            continue
        end = i + 1 + length
        if end > n:
            out.malformed += 1
            break
        ad_type = data[i + 1]
        start = i + 2
        size = length - 1
        i = end
        if ad_type == AD_MANUFACTURER:
            if size < 2:
                out.malformed += 1
                continue
            out.manufacturer[data[start] | (data[start + 1] << 8)] = data[start + 2:end]
        elif ad_type == AD_SERVICE_DATA16:
            if size < 2:
                out.malformed += 1
                continue
            out.service_data16[data[start] | (data[start + 1] << 8)] = data[start + 2:end]
        elif ad_type in (AD_UUID16_COMPLETE, AD_UUID16_INCOMPLETE):
            if size % 2:
                out.malformed += 1
            for j in range(start, end - 1, 2):
                out.uuids16.append(data[j] | (data[j + 1] << 8))
        elif ad_type == AD_FLAGS:
            if size < 1:
                out.malformed += 1
                continue
            out.flags = data[start]
        elif ad_type == AD_TX_POWER:
            if size < 1:
                out.malformed += 1
                continue
            v = data[start]
            out.tx_power = v - 256 if v > 127 else v
        elif ad_type in (AD_UUID128_COMPLETE, AD_UUID128_INCOMPLETE):
            if size % 16:
                out.malformed += 1
            for j in range(start, end - 15, 16):
                out.uuids128.append(data[j:j + 16])
        elif ad_type in (AD_UUID32_COMPLETE, AD_UUID32_INCOMPLETE):
            if size % 4:
                out.malformed += 1
            for j in range(start, end - 3, 4):
                out.uuids32.append(int.from_bytes(data[j:j + 4], "little"))
        elif ad_type == AD_SERVICE_DATA32:
            if size < 4:
                out.malformed += 1
                continue
            out.service_data32[int.from_bytes(data[start:start + 4], "little")] = \
                data[start + 4:end]
        elif ad_type == AD_SERVICE_DATA128:
            if size < 16:
                out.malformed += 1
                continue
            out.service_data128[data[start:start + 16]] = data[start + 16:end]
        elif ad_type == AD_NAME_COMPLETE:
            out.local_name = data[start:end].decode("utf-8", "replace")
        elif ad_type == AD_NAME_SHORT:
            short_name = data[start:end].decode("utf-8", "replace")
        # Any other type is legal and simply not needed here.
    if out.local_name is None:
        out.local_name = short_name
    return out


def uuid16_str(uuid16: int) -> str:
    """A 16-bit UUID in full 128-bit text form (Bluetooth base UUID)."""
    return f"0000{uuid16:04x}{_BASE_UUID_TAIL}"


def uuid32_str(uuid32: int) -> str:
    """A 32-bit UUID in full 128-bit text form (Bluetooth base UUID)."""
    return f"{uuid32:08x}{_BASE_UUID_TAIL}"


def uuid128_str(wire: bytes) -> str:
    """A 128-bit UUID given in wire (little-endian) order, as canonical text."""
    h = wire[::-1].hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def uuid128_wire(text: str) -> bytes:
    """Canonical UUID text → the 16 bytes as they appear on the air (little-endian)."""
    return bytes.fromhex(text.replace("-", ""))[::-1]
