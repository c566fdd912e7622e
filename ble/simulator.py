"""A seeded crowd of phones and devices that advertise like the real ones, for tests and demos.

* Bluezone Android phones carry a real key chain (``ble.ids``): 96 IDs a day from a 32-byte
  base key, in manufacturer data ``0x22B5``; they advertise 15 s on / 15 s off, and their
  random address rotates every 15 min, out of step with the ID.
* Exposure Notification phones derive RPIs from one TEK per UTC day (``ble.ids.en_rpis``);
  RPI and random address change together every 10-minute interval; the AEM encrypts the
  metadata (version, TX power).
* Bluezone iPhones advertise without their ID (Apple overflow area in the background, the
  128-bit service in the foreground); :class:`SimGattReader` answers the GATT read.
* Background devices: other Apple devices, other phones (Microsoft, Samsung, Google), beacons
  and wearables.

RSSI follows a log-distance path-loss model with Gaussian noise. Everything is a function of
the seed: the adverts of any time range are the same however the range is queried.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from ble.decoders import BLUEZONE_IOS_SERVICE_WIRE
from ble.ids import (
    BLUEZONE_SLOT_S,
    DAY,
    EN_INTERVAL,
    bluezone_day_ids,
    en_decrypt_aem,
    en_rpis,
    next_daily_key,
)
from ble.records import Advert
from core.clock import Clock

DUTY_BLOCK = 15.0  # Bluezone Android: 15 s advertising, 15 s sleeping
ADDRESS_ROTATION = 900.0  # typical random-address lifetime (Android and iOS)


class SimReport(NamedTuple):
    """One simulated advertising report (as a controller would deliver it)."""

    ts: float
    address: str
    address_type: int
    rssi: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Visit:
    """One stay of a device at a venue.

    Attributes:
        venue: venue code.
        arrive: epoch seconds.
        leave: epoch seconds (exclusive).
        distance_m: typical distance from the gateway's antenna.
    """

    venue: str
    arrive: float
    leave: float
    distance_m: float = 2.0


@dataclass(frozen=True, slots=True)
class RadioProfile:
    """Receive level at 1 m and how it falls with distance."""

    rssi_1m: float = -60.0  # dBm at 1 m
    exponent: float = 2.2  # path-loss exponent (2 free space, 2–3 indoors)
    sigma: float = 4.0  # shadowing / multipath noise, dB


def rssi_at(profile: RadioProfile, distance_m: float, rng: random.Random) -> int:
    """Log-distance path loss with Gaussian noise, clamped to what controllers report."""
    mean = profile.rssi_1m - 10.0 * profile.exponent * math.log10(max(distance_m, 0.1))
    return max(-110, min(-20, round(mean + rng.gauss(0.0, profile.sigma))))


def _h(*parts: object, size: int = 8) -> bytes:
    return hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=size).digest()


def _random_address(seed: int, idx: int, epoch: int, *, static: bool = False) -> str:
    b = bytearray(_h(seed, idx, "addr", epoch, size=6))
    # Top two bits: 01 resolvable private (rotating), 11 static random.
    b[0] = (b[0] & 0x3F) | (0xC0 if static else 0x40)
    return b.hex(":").upper()


@dataclass(eq=False)
class SimDevice:
    """A device of the crowd (base class).

    Attributes:
        idx: position in the crowd (part of every derived seed).
        visits: where and when it is.
        profile: its radio.
    """

    seed: int
    idx: int
    visits: list[Visit]
    profile: RadioProfile = field(default_factory=RadioProfile)
    phase: float = 0.0  # offsets duty cycle and address rotation
    kind_label: str = "device"

    duty_cycle: bool = False  # advertises only every other 15 s block
    rotation: float = ADDRESS_ROTATION
    _memo: tuple[tuple[int, int], str, bytes] | None = field(default=None, repr=False)

    def epochs(self, t: float) -> tuple[int, int]:
        """Numbers that change exactly when the address or the payload may change."""
        e = math.floor((t - self.phase) / self.rotation)
        return e, e

    def address_at(self, t: float) -> str:
        """The random address in use at ``t``."""
        return _random_address(self.seed, self.idx, math.floor((t - self.phase) / self.rotation))

    def address_type(self) -> int:
        """HCI address type (1 = random)."""
        return 1

    def payload_at(self, t: float) -> bytes:
        """AD bytes sent at ``t``."""
        raise NotImplementedError

    def reports(self, venue: str, start: float, end: float, rate_hz: float
                ) -> Iterator[SimReport]:
        """Time-ordered reports of this device at ``venue`` in ``[start, end)``."""
        for v in self.visits:
            if v.venue != venue:
                continue
            lo = max(start, v.arrive)
            hi = min(end, v.leave)
            if lo >= hi:
                continue
            k = math.floor((lo - self.phase) / DUTY_BLOCK)
            while True:
                b0 = self.phase + k * DUTY_BLOCK
                if b0 >= hi:
                    break
                if not (self.duty_cycle and k % 2):
                    yield from self._block(k, b0, lo, hi, v.distance_m, rate_hz)
                k += 1

    def _block(self, k: int, b0: float, lo: float, hi: float, distance: float,
               rate_hz: float) -> Iterator[SimReport]:
        rng = random.Random(int.from_bytes(_h(self.seed, self.idx, "blk", k), "big"))
        count = math.floor(DUTY_BLOCK * rate_hz + rng.random())
        for t in sorted(b0 + DUTY_BLOCK * rng.random() for _ in range(count)):
            rssi = rssi_at(self.profile, distance, rng)
            if lo <= t < hi:
                key = self.epochs(t)
                memo = self._memo
                if memo is None or memo[0] != key:
                    memo = self._memo = (key, self.address_at(t), self.payload_at(t))
                yield SimReport(t, memo[1], self.address_type(), rssi, memo[2])


@dataclass(eq=False)
class BluezonePhone(SimDevice):
    """An Android phone running Bluezone (ID in manufacturer data).

    Attributes:
        base_key: the 32-byte daily key of day ``key_day0`` (what InfoF ``base_id`` holds).
        key_day0: UTC midnight (epoch seconds) the base key belongs to.
    """

    base_key: bytes = b""
    key_day0: int = 0
    _ids: dict[int, list[bytes]] = field(default_factory=dict, repr=False)

    def daily_key(self, day_epoch: float) -> bytes:
        """Daily key of the UTC day containing ``day_epoch``.

        Raises:
            ValueError: the day is before the base key's day.
        """
        days = (math.floor(day_epoch) - self.key_day0) // DAY
        if days < 0:
            raise ValueError("day precedes the phone's base key")
        dk = self.base_key
        for _ in range(days):
            dk = next_daily_key(dk)
        return dk

    def id_at(self, t: float) -> bytes:
        """The 12-byte Bluezone ID broadcast at ``t`` (slot of 15 min from UTC midnight)."""
        day = math.floor(t) // DAY * DAY
        ids = self._ids.get(day)
        if ids is None:
            ids = self._ids[day] = bluezone_day_ids(self.daily_key(day))
        return ids[int((t - day) // BLUEZONE_SLOT_S)]

    def epochs(self, t: float) -> tuple[int, int]:
        """Address rotation and ID slot change independently."""
        return math.floor((t - self.phase) / self.rotation), math.floor(t / BLUEZONE_SLOT_S)

    def payload_at(self, t: float) -> bytes:
        """Flags, 16-bit service 0x4E56, manufacturer 0x22B5 + ID (23 bytes, as AOSP sends)."""
        return b"\x02\x01\x06\x03\x03\x56\x4e\x0f\xff\xb5\x22" + self.id_at(t)


@dataclass(eq=False)
class BluezoneIPhone(BluezonePhone):
    """An iPhone running Bluezone: the ID is only available by a GATT read."""

    foreground: bool = False

    def payload_at(self, t: float) -> bytes:
        """Overflow-area advert (background) or the 128-bit service and name (foreground)."""
        if self.foreground:
            return (b"\x02\x01\x1a\x11\x07" + BLUEZONE_IOS_SERVICE_WIRE
                    + b"\x09\x09Bluezone")
        bitmap = bytearray(16)
        bitmap[0] = 0x08
        return b"\x02\x01\x1a\x14\xff\x4c\x00\x01" + bytes(bitmap)


@dataclass(eq=False)
class ENPhone(SimDevice):
    """A phone running an Exposure Notification app (FD6F: RPI + AEM)."""

    tx_power: int = -8
    ios_form: bool = False
    _rpis: dict[int, tuple[bytes, list[bytes]]] = field(default_factory=dict, repr=False)

    def tek_for_day(self, day: int) -> bytes:
        """The Temporary Exposure Key of the UTC day starting at ``day``."""
        return _h(self.seed, self.idx, "tek", day, size=16)

    @property
    def teks(self) -> list[tuple[bytes, int]]:
        """``(tek, start_interval)`` for every UTC day the phone's visits touch."""
        days: set[int] = set()
        for v in self.visits:
            d = math.floor(v.arrive) // DAY * DAY
            while d < v.leave:
                days.add(d)
                d += DAY
        return [(self.tek_for_day(d), d // EN_INTERVAL) for d in sorted(days)]

    def rpi_aem_at(self, t: float) -> tuple[bytes, bytes]:
        """RPI and AEM broadcast at ``t``."""
        day = math.floor(t) // DAY * DAY
        entry = self._rpis.get(day)
        if entry is None:
            tek = self.tek_for_day(day)
            entry = self._rpis[day] = (tek, en_rpis(tek, day // EN_INTERVAL))
        tek, rpis = entry
        rpi = rpis[int((t - day) // EN_INTERVAL)]
        meta = bytes([0x40, self.tx_power & 0xFF, 0, 0])
        return rpi, en_decrypt_aem(tek, rpi, meta)  # AES-CTR: encrypting = decrypting

    def epochs(self, t: float) -> tuple[int, int]:
        """RPI and address change together at interval boundaries."""
        e = math.floor(t / EN_INTERVAL)
        return e, e

    def address_at(self, t: float) -> str:
        """A fresh random address with every RPI (they rotate together)."""
        return _random_address(self.seed, self.idx, math.floor(t / EN_INTERVAL))

    def payload_at(self, t: float) -> bytes:
        """Android form (28 bytes) or iOS form with Flags (31 bytes)."""
        rpi, aem = self.rpi_aem_at(t)
        body = b"\x03\x03\x6f\xfd\x17\x16\x6f\xfd" + rpi + aem
        return b"\x02\x01\x1a" + body if self.ios_form else body


@dataclass(eq=False)
class BackgroundDevice(SimDevice):
    """Something that is not a tracing phone: another phone, an Apple device, a beacon."""

    flavour: str = "apple"

    def address_type(self) -> int:
        """Wearables and beacons often use a public address."""
        return 0 if self.flavour in ("wearable", "beacon") else 1

    def address_at(self, t: float) -> str:
        """Fixed for beacons and wearables, rotating for phones."""
        if self.flavour in ("wearable", "beacon"):
            return _random_address(self.seed, self.idx, 0, static=True)
        return super().address_at(t)

    def payload_at(self, t: float) -> bytes:
        """A payload typical of the flavour (fixed per address epoch)."""
        r = _h(self.seed, self.idx, "pl", math.floor((t - self.phase) / self.rotation), size=24)
        if self.flavour == "apple":  # Nearby Info
            return b"\x02\x01\x1a\x02\x0a\x0c\x0b\xff\x4c\x00\x10\x06" + r[:6]
        if self.flavour == "microsoft":  # CDP beacon
            return b"\x1e\xff\x06\x00\x01\x09\x20\x02" + r[:22]
        if self.flavour == "samsung":
            return b"\x02\x01\x06\x0d\xff\x75\x00\x42\x04\x01" + r[:8]
        if self.flavour == "google":
            return b"\x03\x03\x9f\xfe\x17\x16\x9f\xfe" + r[:20]
        if self.flavour == "beacon":  # iBeacon of some shop
            return b"\x02\x01\x06\x1a\xff\x4c\x00\x02\x15" + _h(self.seed, self.idx, size=16) \
                + b"\x00\x01\x00\x02\xc5"
        return b"\x02\x01\x06\x09\xff\x59\x00" + r[:6]  # a wearable


_BACKGROUND_FLAVOURS = ("apple", "apple", "microsoft", "samsung", "google", "wearable",
                        "beacon")


class SimGattReader:
    """Answers the iOS Bluezone GATT read for the crowd's iPhones (as the phone would)."""

    def __init__(self, crowd: Crowd, clock: Clock) -> None:
        self._crowd = crowd
        self._clock = clock
        self.reads = 0

    async def read_id(self, address: str, address_type: int) -> bytes | None:
        """The 12-byte ID of the iPhone using ``address`` now, or ``None``."""
        self.reads += 1
        t = self._clock.now()
        for d in self._crowd.devices:
            if isinstance(d, BluezoneIPhone) and d.address_at(t) == address \
                    and any(v.arrive <= t < v.leave for v in d.visits):
                return d.id_at(t)
        return None


class Crowd:
    """A seeded set of devices with visits at venues.

    Args:
        seed: every random choice derives from it.
        start: epoch seconds the simulated period starts (random visits fall after it).
        duration_s: length of the period used for random visits.
    """

    def __init__(self, seed: int = 0, start: float = 1_627_790_400.0, *,
                 duration_s: float = 3600.0) -> None:
        self.seed = seed
        self.start = float(start)
        self.duration_s = duration_s
        self.devices: list[SimDevice] = []
        self._rng = random.Random(seed)

    # -- building -------------------------------------------------------------------------

    def _random_visits(self, venues: Sequence[str]) -> list[Visit]:
        if not venues:
            raise ValueError("venues must name at least one venue")
        rng = self._rng
        stay = rng.uniform(300.0, min(2700.0, self.duration_s))
        arrive = self.start + rng.uniform(0.0, max(0.0, self.duration_s - stay))
        return [Visit(venue=rng.choice(list(venues)), arrive=arrive, leave=arrive + stay,
                      distance_m=round(rng.uniform(0.5, 8.0), 2))]

    def _key(self) -> tuple[bytes, int]:
        day = math.floor(self.start) // DAY * DAY - DAY * self._rng.randrange(0, 14)
        return self._rng.randbytes(32), day

    def _phase(self) -> float:
        return self._rng.uniform(0.0, 2 * DUTY_BLOCK)

    def add_bluezone_phone(self, visits: Sequence[Visit], *, base_key: bytes | None = None,
                           key_day0: int | None = None) -> BluezonePhone:
        """Add one Android Bluezone phone with explicit visits."""
        key, day0 = self._key()
        phone = BluezonePhone(seed=self.seed, idx=len(self.devices), phase=self._phase(),
                              visits=list(visits),
                              profile=RadioProfile(rssi_1m=-62.0), duty_cycle=True,
                              kind_label="bluezone", base_key=base_key or key,
                              key_day0=key_day0 if key_day0 is not None else day0)
        self.devices.append(phone)
        return phone

    def add_bluezone_phones(self, n: int, venues: Sequence[str]) -> list[BluezonePhone]:
        """Add ``n`` Android Bluezone phones, each visiting one of ``venues``."""
        return [self.add_bluezone_phone(self._random_visits(venues)) for _ in range(n)]

    def add_iphone(self, visits: Sequence[Visit], *, foreground: bool = False
                   ) -> BluezoneIPhone:
        """Add one iPhone running Bluezone with explicit visits."""
        key, day0 = self._key()
        phone = BluezoneIPhone(seed=self.seed, idx=len(self.devices), phase=self._phase(),
                               visits=list(visits),
                               profile=RadioProfile(rssi_1m=-58.0), kind_label="bluezone_ios",
                               base_key=key, key_day0=day0, foreground=foreground)
        self.devices.append(phone)
        return phone

    def add_iphones(self, n: int, venues: Sequence[str]) -> list[BluezoneIPhone]:
        """Add ``n`` Bluezone iPhones (about one in five in the foreground)."""
        return [self.add_iphone(self._random_visits(venues),
                                foreground=self._rng.random() < 0.2) for _ in range(n)]

    def add_en_phone(self, visits: Sequence[Visit], *, ios_form: bool = False) -> ENPhone:
        """Add one Exposure Notification phone with explicit visits."""
        phone = ENPhone(seed=self.seed, idx=len(self.devices), phase=self._phase(),
                        visits=list(visits),
                        profile=RadioProfile(rssi_1m=-60.0), kind_label="gaen",
                        ios_form=ios_form, tx_power=self._rng.choice((-8, -12, -16)))
        self.devices.append(phone)
        return phone

    def add_en_phones(self, n: int, venues: Sequence[str]) -> list[ENPhone]:
        """Add ``n`` Exposure Notification phones (half in the iOS form)."""
        return [self.add_en_phone(self._random_visits(venues),
                                  ios_form=self._rng.random() < 0.5) for _ in range(n)]

    def add_background(self, n: int, venues: Sequence[str]) -> list[BackgroundDevice]:
        """Add ``n`` devices that are not tracing phones (Apple, other phones, beacons...)."""
        out = []
        for _ in range(n):
            dev = BackgroundDevice(seed=self.seed, idx=len(self.devices), phase=self._phase(),
                                   visits=self._random_visits(venues),
                                   flavour=self._rng.choice(_BACKGROUND_FLAVOURS),
                                   kind_label="background",
                                   profile=RadioProfile(rssi_1m=-65.0))
            self.devices.append(dev)
            out.append(dev)
        return out

    # -- output ---------------------------------------------------------------------------

    def reports(self, venue: str, start: float | None = None, end: float | None = None,
                rate_hz: float = 1.0) -> Iterator[SimReport]:
        """Time-ordered raw reports heard at ``venue`` in ``[start, end)``.

        Args:
            venue: venue code.
            start: epoch seconds (default: the crowd's start).
            end: epoch seconds (default: start of the crowd + its duration).
            rate_hz: mean adverts per second per device while it advertises.
        """
        if rate_hz <= 0:
            raise ValueError("rate_hz must be positive")
        lo = self.start if start is None else start
        hi = self.start + self.duration_s if end is None else end
        streams = [d.reports(venue, lo, hi, rate_hz) for d in self.devices
                   if any(v.venue == venue and v.arrive < hi and v.leave > lo
                          for v in d.visits)]
        return heapq.merge(*streams, key=lambda r: r.ts)

    def adverts(self, venue: str, start: float | None = None, end: float | None = None,
                rate_hz: float = 1.0) -> Iterator[Advert]:
        """Time-ordered decoded :class:`~ble.records.Advert` heard at ``venue``."""
        from ble.decoders import advert_of, decode

        for r in self.reports(venue, start, end, rate_hz):
            yield advert_of(r.ts, r.address, r.address_type, r.rssi, decode(r.data))

    def gatt_reader(self, clock: Clock) -> SimGattReader:
        """A GATT reader that answers for this crowd's iPhones at ``clock.now()``."""
        return SimGattReader(self, clock)

    @property
    def phones(self) -> list[SimDevice]:
        """Every device that is a tracing phone."""
        return [d for d in self.devices if not isinstance(d, BackgroundDevice)]
