"""Window aggregation: one sighting per (ID, slot), exact statistics, bounded memory,
adoption counts without MAC addresses."""

from __future__ import annotations

import random
import statistics
from pathlib import Path

from ble.aggregator import WindowAggregator, _siphash
from ble.config import ProximityThresholds
from ble.decoders import BLUEZONE_BEACON, decode
from ble.records import Advert
from ble.simulator import Crowd, Visit
from contract.records import AdoptionCount, IdKind, Proximity, Sighting
from core.clock import ClockEpoch, ClockSource

DAY = 1_627_776_000  # 2021-08-01 00:00 UTC
EP = ClockEpoch("boot-a", 0.0, True, ClockSource.NTP)
BZ1 = bytes.fromhex("b9a665d754fe65e665d76a45")
BZ2 = bytes.fromhex("3aa8dfc0a15682b27216fc31")
RPI1 = bytes(range(16))
RPI2 = bytes(range(16, 32))
CAL = ProximityThresholds(near_dbm=-65, medium_dbm=-80, calibrated=True)


def bz(ts: float, ident: bytes = BZ1, rssi: int | None = -60, addr: str = "C0:00:00:00:00:01"
       ) -> Advert:
    return Advert(ts, addr, 1, rssi, IdKind.BLUEZONE, ident)


def en(ts: float, ident: bytes = RPI1, rssi: int = -70, addr: str = "D0:00:00:00:00:01",
       aem: bytes = b"\x01\x02\x03\x04") -> Advert:
    return Advert(ts, addr, 1, rssi, IdKind.GAEN, ident, aem, None)


def other(ts: float, kind: IdKind, addr: str, ident: bytes | None = None) -> Advert:
    return Advert(ts, addr, 1, -80, kind, ident)


def run(adverts: list[Advert], now: float, *, final: bool = True, **kw: object
        ) -> tuple[list[Sighting], list[AdoptionCount]]:
    agg = WindowAggregator(CAL, clock=EP, **kw)  # type: ignore[arg-type]
    for a in adverts:
        agg.add(a)
    return agg.flush(now, final=final)


def test_one_sighting_per_id_and_slot_with_exact_statistics() -> None:
    t = DAY + 900 * 40  # a slot boundary (aligned to UTC midnight)
    rssis = [-71, -64, -58, -66, -90]
    stream = [bz(t - 10, rssi=-50), bz(t - 4, rssi=-52)]
    stream += [bz(t + 3 * i, rssi=r) for i, r in enumerate(rssis)]
    sightings, _ = run(stream, t + 900)
    assert [(s.slot_start, s.count) for s in sightings] == [(t - 900, 2), (t, 5)]
    s = sightings[1]
    assert (s.kind, s.ident, s.first_seen, s.last_seen, s.dwell) == \
        (IdKind.BLUEZONE, BZ1, t, t + 12, 12)
    assert s.rssi_max == -58
    assert s.rssi_median == statistics.median_high(rssis) == -66
    assert s.proximity is Proximity.MEDIUM  # median -66 < near -65, ≥ medium -80
    assert s.clock == EP and s.aem is None
    assert sightings[0].proximity is Proximity.NEAR


def test_en_slots_are_ten_minutes_and_keep_the_aem() -> None:
    t = DAY + 600 * 7
    sightings, _ = run([en(t - 1), en(t + 1, aem=b"\xaa\xbb\xcc\xdd")], t + 600)
    assert [(s.kind, s.slot_start, s.count) for s in sightings] == \
        [(IdKind.GAEN, t - 600, 1), (IdKind.GAEN, t, 1)]
    assert sightings[1].aem == b"\xaa\xbb\xcc\xdd"


def test_median_with_an_even_count_and_no_rssi() -> None:
    sightings, _ = run([bz(DAY + 1, rssi=-60), bz(DAY + 2, rssi=-70), bz(DAY + 3, rssi=None)],
                       DAY + 900)
    (s,) = sightings
    assert (s.count, s.rssi_max, s.rssi_median) == (3, -60, -60)
    (s,) = run([bz(DAY + 1, rssi=None)], DAY + 900)[0]
    assert (s.count, s.rssi_max, s.rssi_median, s.proximity) == \
        (1, None, None, Proximity.UNKNOWN)


def test_uncalibrated_receiver_claims_no_proximity() -> None:
    agg = WindowAggregator(ProximityThresholds(), clock=EP)
    agg.add(bz(DAY + 1, rssi=-30))
    (s,), _ = agg.flush(DAY + 900)
    assert s.proximity is Proximity.UNKNOWN


def test_flush_returns_only_ended_slots_and_closed_windows() -> None:
    agg = WindowAggregator(CAL, clock=EP, count_window_s=900)
    agg.add(bz(DAY + 10))
    agg.add(en(DAY + 610))  # EN slot ends at DAY + 1200
    assert agg.flush(DAY + 899) == ([], [])
    sightings, counts = agg.flush(DAY + 900)
    assert [s.kind for s in sightings] == [IdKind.BLUEZONE]
    assert [c.window_start for c in counts] == [DAY]
    sightings, counts = agg.flush(DAY + 1200)
    assert [s.kind for s in sightings] == [IdKind.GAEN] and counts == []
    assert agg.flush(DAY + 5000, final=True) == ([], [])


def test_address_rotation_does_not_split_a_sighting() -> None:
    stream = [bz(DAY + i, addr=f"C0:00:00:00:00:{i:02X}") for i in range(10)]
    (s,), (c,) = run(stream, DAY + 900)
    assert s.count == 10
    assert (c.bluezone, c.other_phones, c.other_devices) == (1, 0, 0)


def test_adoption_counts_by_kind() -> None:
    t = DAY + 900 * 4
    stream = [
        bz(t + 1, BZ1, addr="A1:00:00:00:00:01"),
        bz(t + 2, BZ2, addr="A1:00:00:00:00:02"),
        # one EN phone across an interval boundary: two RPIs (the documented over-count)
        en(t + 590, RPI1, addr="B1:00:00:00:00:01"), en(t + 610, RPI2, addr="B1:00:00:00:00:02"),
        # an iPhone with Bluezone whose ID was not read; it also sends other Apple adverts
        other(t + 3, IdKind.BLUEZONE_IOS, "C1:00:00:00:00:01"),
        other(t + 4, IdKind.APPLE, "C1:00:00:00:00:01"),
        other(t + 5, IdKind.APPLE, "C2:00:00:00:00:01"),
        other(t + 6, IdKind.PHONE, "C3:00:00:00:00:01"),
        other(t + 7, IdKind.OTHER, "D1:00:00:00:00:01"),
        other(t + 8, IdKind.IBEACON, "D2:00:00:00:00:01", b"\x00" * 20),
        # Android Bluezone's wake-up iBeacon: that phone is already counted by its ID
        other(t + 9, IdKind.IBEACON, "D3:00:00:00:00:01", BLUEZONE_BEACON),
        # a resolved iOS advert counts through its ID, not its address
        Advert(t + 10, "C4:00:00:00:00:01", 1, -70, IdKind.BLUEZONE_IOS, BZ2),
    ]
    _, (c,) = run(stream, t + 900)
    assert c.window_start == t and c.window_len == 900
    assert (c.bluezone, c.gaen, c.other_phones, c.other_devices, c.overflow) == (3, 2, 2, 2, 0)
    assert c.by_kind == {"apple": 1, "bluezone": 2, "bluezone_beacon": 1, "bluezone_ios": 1,
                         "gaen": 2, "ibeacon": 1, "other": 1, "phone": 1}
    assert c.bluezone_share == 3 / 7


def test_windows_follow_count_window_s() -> None:
    stream = [bz(DAY + 100), bz(DAY + 400, BZ2)]
    _, counts = run(stream, DAY + 900, count_window_s=300)
    assert [(c.window_start, c.window_len, c.bluezone) for c in counts] == \
        [(DAY, 300, 1), (DAY + 300, 300, 1)]


def test_cap_bounds_memory_and_counts_overflow() -> None:
    stream = [bz(DAY + i, bytes([i]) * 12, addr=f"C0:00:00:00:01:{i:02X}") for i in range(30)]
    agg = WindowAggregator(CAL, clock=EP, max_ids=10)
    for a in stream:
        agg.add(a)
    assert agg.diagnostics()["open_sightings"] == 10
    sightings, (c,) = agg.flush(DAY + 900)
    assert len(sightings) == 10 and c.bluezone == 10
    assert c.overflow in (19, 20)  # linear counting: 20 unless two of them share a bit


def test_no_mac_address_leaves_or_outlives_a_window() -> None:
    addr = "C0:FF:EE:00:00:01"
    agg = WindowAggregator(CAL, clock=EP)
    agg.add(other(DAY + 1, IdKind.APPLE, addr))
    first_keys = set(agg._win.devices) if agg._win else set()
    agg.add(other(DAY + 901, IdKind.APPLE, addr))  # next window: fresh key
    second_keys = set(agg._win.devices) if agg._win else set()
    assert first_keys and second_keys and not first_keys & second_keys
    assert all(type(k) is int and 0 <= k < 1 << 64 for k in first_keys | second_keys)
    sightings, counts = agg.flush(DAY + 1800, final=True)
    assert not (agg._recent or agg._fast or agg._fast_adv or agg._fast_adv_alt)
    text = repr(sightings) + repr(counts)
    assert addr not in text and addr.replace(":", "").lower() not in text.lower()


def test_clock_epoch_change_splits_the_sighting() -> None:
    later = ClockEpoch("boot-a", 12.5, True, ClockSource.NTP)
    agg = WindowAggregator(CAL)
    agg.add(bz(DAY + 1), EP)
    agg.add(bz(DAY + 2), EP)
    agg.add(bz(DAY + 3), later)
    sightings, _ = agg.flush(DAY + 900)
    assert [(s.clock, s.count, s.slot_start) for s in sightings] == \
        [(EP, 2, DAY), (later, 1, DAY)]


def test_late_advert_after_flush_gives_a_supplementary_sighting() -> None:
    agg = WindowAggregator(CAL, clock=EP)
    agg.add(bz(DAY + 1))
    first, _ = agg.flush(DAY + 900)
    agg.add(bz(DAY + 899))
    late, _ = agg.flush(DAY + 1800)
    assert [s.count for s in first + late] == [1, 1]
    assert agg.late == 1


def test_a_slot_end_flush_forgets_only_the_sightings_it_hands_out() -> None:
    # raw reports: a Bluezone phone (its sighting ends with the slot) and a plain device
    bz_data = b"\x02\x01\x06\x03\x03\x56\x4e\x0f\xff\xb5\x22" + BZ1
    dev_data = b"\x02\x01\x06\x05\xff\x59\x00\x01\x02"
    assert decode(bz_data)[0] is IdKind.BLUEZONE and decode(dev_data)[0] is IdKind.OTHER
    agg = WindowAggregator(CAL, clock=EP, count_window_s=3600)
    agg.feed([(DAY + 1, "C0:00:00:00:00:01", -60, bz_data),
              (DAY + 2, "E0:00:00:00:00:02", -80, dev_data)])
    assert set(agg._fast) == {"C0:00:00:00:00:01", "E0:00:00:00:00:02"}
    first, _ = agg.flush(DAY + 900)
    # the handed-out sighting's address lost its entry; the device kept its own
    assert set(agg._fast) == {"E0:00:00:00:00:02"}
    agg.feed([(DAY + 899, "C0:00:00:00:00:01", -62, bz_data),  # late, raw
              (DAY + 901, "E0:00:00:00:00:02", -80, dev_data)])
    late, _ = agg.flush(DAY + 1800)
    assert [(s.count, s.rssi_max) for s in first + late] == [(1, -60), (1, -62)]
    assert agg.late == 1 and agg.adverts == 4


def test_an_advert_and_its_scan_response_both_take_the_fast_path() -> None:
    # active scanning: one address alternates its Bluezone advert and a scan response
    bz_data = b"\x02\x01\x06\x03\x03\x56\x4e\x0f\xff\xb5\x22" + BZ1
    sr_data = b"\x05\x09\x50\x68\x6f\x6e"  # a complete local name
    addr = "C0:00:00:00:00:01"
    reports = [(DAY + 1 + i, addr, -60 - i, bz_data if i % 2 == 0 else sr_data)
               for i in range(20)]
    agg = WindowAggregator(CAL, clock=EP, count_window_s=3600)
    agg.feed(reports)
    entry = agg._fast[addr]
    assert entry.data == sr_data and entry.alt is not None and entry.alt.data == bz_data
    assert entry.alt.alt is None  # one alternate payload, never a chain
    # the slow path for a payload it holds (here a report from before the entry's window)
    # keeps the alternate entry
    agg.feed([(DAY - 5, addr, -61, sr_data)])
    assert agg._fast[addr].alt is not None and agg._fast[addr].alt.data == bz_data
    by_add = WindowAggregator(CAL, clock=EP, count_window_s=3600)
    for ts, address, rssi, data in reports:
        d = decode(data)
        by_add.add(Advert(ts, address, 1, rssi, d.kind, d.ident, d.aem, d.tx_power))
    first = agg.flush(DAY + 900)
    assert first == by_add.flush(DAY + 900)
    (s,) = first[0]
    assert (s.count, s.rssi_max, s.first_seen, s.last_seen) == (10, -60, DAY + 1, DAY + 19)
    # the handed-out sighting is forgotten through the alternate entry too: a late advert
    # of the same ID and slot makes a supplementary sighting, not a lost count
    assert agg._fast[addr].alt is None
    agg.feed([(DAY + 899, addr, -70, bz_data)])
    (late,), _ = agg.flush(DAY + 1800)
    assert (late.count, late.rssi_max, agg.late) == (1, -70, 1)


def test_feed_of_raw_reports_equals_add_of_decoded_adverts() -> None:
    t0 = DAY + 3 * 3600
    crowd = Crowd(seed=11, start=t0)
    crowd.add_bluezone_phones(15, venues=["v"])
    crowd.add_en_phones(8, venues=["v"])
    crowd.add_iphones(4, venues=["v"])
    crowd.add_background(10, venues=["v"])
    reports = list(crowd.reports("v", t0, t0 + 3600, rate_hz=3))
    adverts = list(crowd.adverts("v", t0, t0 + 3600, rate_hz=3))
    a = WindowAggregator(CAL, clock=EP)
    for adv in adverts:
        a.add(adv)
    b = WindowAggregator(CAL, clock=EP)
    for i in range(0, len(reports), 1000):  # in batches, flushing between them
        b.feed([(r.ts, r.address, r.rssi, r.data) for r in reports[i:i + 1000]])
    assert a.adverts == b.adverts == len(reports)
    assert a.flush(t0 + 3600, final=True) == b.flush(t0 + 3600, final=True)


def test_watcher_hears_every_address_on_the_same_schedule_from_feed_and_add() -> None:
    # feed() tells the watcher from its fast path when an address is due again; add() goes
    # through the slow path: the live phone count must hear the same thing either way
    t0 = DAY + 5 * 3600 + 450
    crowd = Crowd(seed=13, start=t0)
    crowd.add_bluezone_phones(6, venues=["v"])
    crowd.add_en_phones(4, venues=["v"])
    crowd.add_iphones(3, venues=["v"])
    crowd.add_background(5, venues=["v"])
    reports = list(crowd.reports("v", t0, t0 + 1800, rate_hz=2))
    heard: dict[str, list[tuple[float, str, IdKind]]] = {"add": [], "feed": []}
    a = WindowAggregator(CAL, clock=EP, count_window_s=600, watch_refresh_s=10,
                         watcher=lambda ts, ad, k: heard["add"].append((ts, ad, k)))
    for r in reports:
        a.add(Advert(r.ts, r.address, 1, r.rssi, *decode(r.data)))
    b = WindowAggregator(CAL, clock=EP, count_window_s=600, watch_refresh_s=10,
                         watcher=lambda ts, ad, k: heard["feed"].append((ts, ad, k)))
    for i in range(0, len(reports), 256):
        b.feed([(r.ts, r.address, r.rssi, r.data) for r in reports[i:i + 256]])
    assert heard["feed"] == heard["add"]
    assert a.flush(t0 + 1800, final=True) == b.flush(t0 + 1800, final=True)
    # every address that keeps sending is heard again within the refresh interval
    for r in reports:
        last_heard = max((t for t, ad, _ in heard["feed"] if ad == r.address and t <= r.ts),
                         default=None)
        assert last_heard is not None and r.ts - last_heard < 10 + 1e-9
    assert len(heard["feed"]) < len(reports) / 5  # repeats between two calls cost nothing


def test_simulated_crowd_ground_truth() -> None:
    t0 = DAY + 8 * 3600
    crowd = Crowd(seed=12, start=t0)
    phones = crowd.add_bluezone_phones(25, venues=["cho-a", "cho-b"])
    case = crowd.add_bluezone_phone([Visit("cho-a", t0 + 600, t0 + 2400, 1.0)])
    ens = crowd.add_en_phones(10, venues=["cho-a"])
    adverts = list(crowd.adverts("cho-a", t0, t0 + 3600, rate_hz=1))
    agg = WindowAggregator(CAL, clock=EP)
    got: list[Sighting] = []
    for adv in adverts:
        agg.add(adv)
        if adv.ts % 60 < 1:
            got += agg.flush(adv.ts)[0]
    got += agg.flush(t0 + 3600, final=True)[0]
    keys = [(s.ident, s.slot_start) for s in got]
    assert len(keys) == len(set(keys)), "one sighting per (ID, slot)"
    truth = {(a.ident, int(a.ts // (900 if a.kind is IdKind.BLUEZONE else 600))
              * (900 if a.kind is IdKind.BLUEZONE else 600)) for a in adverts if a.ident}
    assert set(keys) == truth
    assert sum(s.count for s in got) == sum(1 for a in adverts if a.ident)
    mine = [s for s in got if s.ident in {case.id_at(t) for t in range(t0, t0 + 3600, 900)}]
    assert {s.slot_start for s in mine} == {t0, t0 + 900, t0 + 1800}
    assert all(s.proximity is Proximity.NEAR for s in mine)  # 1 m: ≈ -62 dBm median
    assert len(phones) == 25 and len(ens) == 10


def test_feed_equals_add_on_real_captures_with_scan_responses(corpora: Path) -> None:
    from ble.replay import read_reports

    reports = []
    for k, path in enumerate(sorted((corpora / "ble/captures").glob("*.btsnoop"))):
        reps = list(read_reports(path))
        shift = DAY + 300 * k - reps[0][0]
        reports += [(t + shift, r.address, r.rssi, r.data) for t, r in reps]
    reports.sort()
    a = WindowAggregator(CAL, clock=EP)
    for ts, address, rssi, data in reports:
        d = decode(data)
        a.add(Advert(ts, address, 1, rssi, d.kind, d.ident, d.aem, d.tx_power))
    b = WindowAggregator(CAL, clock=EP)
    for i in range(0, len(reports), 500):
        b.feed(reports[i:i + 500])
    assert a.adverts == b.adverts == len(reports)
    ca, cb = a.flush(DAY + 10**6, final=True), b.flush(DAY + 10**6, final=True)
    assert ca == cb and sum(c.other_phones + c.other_devices for c in ca[1]) > 10


def test_order_inside_a_window_does_not_change_the_result() -> None:
    t0 = DAY + 2 * 3600
    crowd = Crowd(seed=13, start=t0)
    crowd.add_bluezone_phones(10, venues=["v"])
    crowd.add_en_phones(5, venues=["v"])
    reports = [(r.ts, r.address, r.rssi, r.data) for r in crowd.reports("v", t0, t0 + 1800)]
    shuffled: list[tuple[float, str, int | None, bytes]] = []
    rng = random.Random(5)
    for block in range(t0, t0 + 1800, 100):  # 100 s blocks never straddle a slot or window
        part = [r for r in reports if block <= r[0] < block + 100]
        rng.shuffle(part)
        shuffled += part
    a, b = WindowAggregator(CAL, clock=EP), WindowAggregator(CAL, clock=EP)
    a.feed(reports)
    b.feed(shuffled)
    assert a.flush(t0 + 1800, final=True) == b.flush(t0 + 1800, final=True)


def test_live_phones_fed_through_feed_counts_as_fed_through_add() -> None:
    # feed()'s fast path refreshes a LivePhones entry in place instead of calling seen(); the
    # counts must be the ones seen() gives, while devices come and go over several windows
    from ble.aggregator import LivePhones

    t0 = DAY + 7 * 3600
    crowd = Crowd(seed=17, start=t0, duration_s=1800)
    crowd.add_bluezone_phones(8, venues=["v"])
    crowd.add_en_phones(5, venues=["v"])
    crowd.add_iphones(3, venues=["v"])
    crowd.add_background(6, venues=["v"])
    reports = list(crowd.reports("v", t0, t0 + 1800, rate_hz=2))
    pa, pb = LivePhones(window_s=60), LivePhones(window_s=60)
    a = WindowAggregator(CAL, clock=EP, count_window_s=600, watcher=pa.seen)
    b = WindowAggregator(CAL, clock=EP, count_window_s=600, watcher=pb.seen)
    snaps: dict[str, list[dict[str, object]]] = {"add": [], "feed": []}
    for i in range(0, len(reports), 256):
        batch = reports[i:i + 256]
        for r in batch:
            a.add(Advert(r.ts, r.address, 1, r.rssi, *decode(r.data)))
        b.feed([(r.ts, r.address, r.rssi, r.data) for r in batch])
        now = batch[-1].ts
        snaps["add"].append(pa.snapshot(now))
        snaps["feed"].append(pb.snapshot(now))
    assert snaps["feed"] == snaps["add"]
    phones = [s["phones"] for s in snaps["add"]]
    assert max(phones) > 0 and len(set(phones)) > 2  # devices came and went


def test_address_digests_are_siphash_2_4() -> None:
    # the reference implementation's vectors (key 00..0f, message 00 01 .. n-1)
    k0 = int.from_bytes(bytes(range(8)), "little")
    k1 = int.from_bytes(bytes(range(8, 16)), "little")
    vectors = {0: 0x726FDB47DD0E0E31, 1: 0x74F839C593DC67FD, 2: 0x0D6C8009D9A94F5A,
               3: 0x85676696D7FB7E2D, 4: 0xCF2794E0277187B7, 7: 0xAB0200F58B01D137,
               8: 0x93F5F5799A932462, 15: 0xA129CA6149BE45E5, 16: 0x3F2ACC7F57C29BDB}
    for n, want in vectors.items():
        assert _siphash(k0, k1, bytes(range(n))) == want, n
    # a different key, or one more byte, gives another digest
    addr = b"C0:FF:EE:00:00:01"
    assert len({_siphash(k0, k1, addr), _siphash(k0 ^ 1, k1, addr),
                _siphash(k0, k1, addr + b"\x00")}) == 3
