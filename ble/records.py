"""Records of the BLE stage that never leave the device's memory: adverts.

What the gateway seals (:class:`~contract.records.Sighting`, adoption counts) is in
:mod:`contract.records`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from contract.records import IdKind


@dataclass(frozen=True, slots=True)
class Advert:
    """One received advertising report, decoded. Never written to disk (it holds a MAC).

    Attributes:
        ts: wall-clock receive time (epoch seconds) from the stage's clock.
        address: the advertiser's address, ``AA:BB:..``; in memory only.
        address_type: 0 public, 1 random, 2/3 resolved identities, 255 anonymous.
        rssi: dBm, ``None`` when the controller did not report it.
        kind: what the payload was recognised as.
        ident: the tracing ID (12-byte Bluezone ID, 16-byte RPI), or ``None``.
        aem: the 4-byte Associated Encrypted Metadata of an EN advert.
        tx_power: advertised TX power in dBm, if present.
    """

    ts: float
    address: str
    address_type: int
    rssi: int | None
    kind: IdKind
    ident: bytes | None = None
    aem: bytes | None = None
    tx_power: int | None = None


Report: TypeAlias = tuple[float, str, int, int | None, bytes]
"""One raw advertising report as every source hands it to the aggregator's fast path:
``(ts, address, address_type, rssi, data)`` (in memory only: it holds a MAC). A simulator's
:class:`~ble.simulator.SimReport` is one."""
