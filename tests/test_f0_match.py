"""Matching F0 inputs against a store (SQLite and PostgreSQL): windows, tolerance, co-presence."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ble.ids import bluezone_day_ids, en_rpis
from bzgw.labrecords import LAB, Header, checkin, entry, sighting, temp_store
from contract.batch import Batch
from contract.records import AdoptionCount, Proximity
from core.clock import ClockEpoch, ClockSource
from matcher import f0 as f0mod
from matcher.custody import Window
from matcher.match import MatchParams, match_f0
from matcher.store import Store

T0 = 1_700_006_400  # a UTC midnight
ENIN0 = T0 // 600
ACK_CLOCK = ClockEpoch("boot-ack", 5.0, False, ClockSource.ACK, 3600.0)
FREE_CLOCK = ClockEpoch("boot-free", 9.0, False, ClockSource.NONE, math.inf)
X, Y, Z, W = "001099000111", "001099000222", "001099000333", "001099000444"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    with temp_store(request.param, tmp_path, url) as s:
        yield s


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _f0(key: Ed25519PrivateKey, kind: str, doc: object, case: str = "F0-1") -> f0mod.F0:
    signers = [f0mod.Signer(f0mod.key_id(key.public_key()), key.public_key(), "test")]
    env = f0mod.sign_f0(json.dumps(doc).encode(), key, kind=kind, case=case)
    return f0mod.parse_f0(env, signers, name="f0.json")


def _scene(store: Store, dk: bytes, tek: bytes) -> None:
    ids, rpis = bluezone_day_ids(dk), en_rpis(tek, ENIN0, 144)
    a = entry("gw-a", venue="cho-a", venue_name="Chợ A")
    b = entry("gw-b", venue="ben-xe-b", venue_name="Bến xe B")
    s40, s41 = T0 + 40 * 900, T0 + 41 * 900
    others = [os.urandom(12) for _ in range(3)]
    store.add_batch(a, Header("gw-a", 1, T0), Batch(
        sightings=[sighting(ids[40], s40 + 100, 600, proximity=Proximity.NEAR, rssi=-55),
                   sighting(ids[41], s41 + 50, 700, proximity=Proximity.MEDIUM, rssi=-70),
                   *[sighting(o, s40 + 200, 300) for o in others],
                   sighting(others[0], s41 + 10, 300),
                   sighting(os.urandom(12), s41 + 20, 300),  # a phone seen in slot 41 only
                   sighting(os.urandom(16), s40 + 300, 200),
                   sighting(os.urandom(12), T0 + 15 * 3600, 60),  # later that day
                   # EN: RPI 60 seen 1.5 h after its interval (inside ±2 h), RPI 61 3 h after
                   sighting(rpis[60], T0 + 61 * 600 + 5400, 120),
                   sighting(rpis[61], T0 + 62 * 600 + 3 * 3600, 120)],
        checkins=[checkin(X, s40 - 100), checkin(Y, s41 + 2500, fields={"name": "Trần B"}),
                  checkin(Z, T0 + 50000)],
        counts=[AdoptionCount(window_start=s40, window_len=900, bluezone=4, other_phones=12)]))
    store.add_batch(b, Header("gw-b", 1, T0), Batch(
        sightings=[sighting(ids[40], T0 + 80000, 60),  # replayed far from its slot
                   sighting(ids[60], T0 + 62 * 900, 60, clock=ACK_CLOCK),  # 2 slots late
                   sighting(ids[70], T0 + 5 * 86400, 60, clock=FREE_CLOCK)],
        checkins=[checkin(W, s40 + 100), checkin(X, T0 + 70000)]))


def test_bluezone_case_windows_tolerance_and_co_presence(store: Store,
                                                         key: Ed25519PrivateKey) -> None:
    dk, tek = os.urandom(32), os.urandom(16)
    _scene(store, dk, tek)
    doc = {"data": [{"daily_key": dk.hex(), "time_start": T0, "time_end": T0 + 86399,
                     "max": 96}]}
    f0 = _f0(key, "bluezone-infof", doc)
    sealed = match_f0(store, f0)  # no approval: who checked in stays sealed
    assert [(c.masked, c.opened, c.subject) for c in sealed.cases[0].windows[0].co_present] == [
        ("***" + X[-3:], False, None), ("***" + Y[-3:], False, None)]
    assert sealed.sealed_checkins == 2 and sealed.opening is None
    result = match_f0(store, f0, opening=LAB.opening())
    [case] = result.cases
    assert (case.label, case.n_ids, case.hits, case.out_of_window) == ("F0-1", 96, 5, 1)
    wins = [(w.venue.venue, w.start) for w in case.windows]
    assert wins == [("cho-a", T0 + 36100), ("ben-xe-b", T0 + 62 * 900),
                    ("ben-xe-b", T0 + 5 * 86400)]
    w = case.windows[0]
    assert (w.end, w.dwell_s, w.proximity, w.rssi_max, w.sightings) == (
        T0 + 41 * 900 + 750, 1300.0, "near", -55, 2)
    assert w.via == ["bluezone"] and w.clock_synced and w.clock_uncertainty_s == 0
    # X checked in 200 s before the window, Y 29 min after it: both inside ±30 min
    assert [c.subject for c in w.co_present] == [X, Y]
    assert w.co_present[1].fields == {"name": "Trần B"}
    assert result.opening is not None and result.opening["opened"] == 2
    assert w.other_ids == {"bluezone": 4, "gaen": 1}  # the F0's own IDs are not counted
    assert w.peak_phones == {"bluezone": 3, "gaen": 1}  # most IDs seen in one slot
    assert (w.adoption.windows, w.adoption.max_other_phones) == (1, 12)
    late, free = case.windows[1], case.windows[2]
    assert (late.clock_synced, late.clock_uncertainty_s) == (False, 3600.0)
    assert math.isinf(free.clock_uncertainty_s)
    assert [c.subject for c in late.co_present] == []


def test_window_margin_is_a_parameter(store: Store, key: Ed25519PrivateKey) -> None:
    dk = os.urandom(32)
    _scene(store, dk, os.urandom(16))
    doc = {"data": [{"daily_key": dk.hex(), "time_start": T0, "time_end": T0 + 86399}]}
    r = match_f0(store, _f0(key, "bluezone-infof", doc), MatchParams(margin_s=300),
                 LAB.opening())
    assert [c.subject for c in r.cases[0].windows[0].co_present] == [X]
    r = match_f0(store, _f0(key, "bluezone-infof", doc), MatchParams(merge_gap_s=0))
    assert [w.start for w in r.cases[0].windows][:2] == [T0 + 36100, T0 + 41 * 900 + 50]


def test_en_case_accepts_two_hours_outside_the_interval(store: Store,
                                                        key: Ed25519PrivateKey) -> None:
    tek = os.urandom(16)
    _scene(store, os.urandom(32), tek)
    import base64

    doc = {"temporaryExposureKeys": [{"key": base64.b64encode(tek).decode(),
                                      "rollingStartNumber": ENIN0, "rollingPeriod": 144}]}
    [case] = match_f0(store, _f0(key, "gaen-json", doc)).cases
    assert (case.kind, case.n_ids, case.hits, case.out_of_window) == ("gaen", 144, 2, 1)
    [w] = case.windows
    assert (w.venue.venue, w.start, w.via) == ("cho-a", T0 + 61 * 600 + 5400, ["gaen"])


def test_identity_case_finds_check_ins_and_co_present_people(store: Store,
                                                             key: Ed25519PrivateKey) -> None:
    _scene(store, os.urandom(32), os.urandom(16))
    doc = {"identities": [{"case": "BN-7", "cccd": X}, {"cccd": "079099999999"}]}
    waiting = match_f0(store, _f0(key, "identity", doc, case="ids"))
    assert all(c.needs_approval and not c.windows for c in waiting.cases)
    # an identity lookup asks for every venue over each case's period
    assert [s.venue for s in waiting.opening_scope()] == ["*", "*"]
    r = match_f0(store, _f0(key, "identity", doc, case="ids"), opening=LAB.opening())
    first, nobody = r.cases
    assert (first.label, first.hits, nobody.label, nobody.hits) == ("BN-7", 2, "ids #2", 0)
    assert [(w.venue.venue, w.start, w.via) for w in first.windows] == [
        ("cho-a", T0 + 40 * 900 - 100, ["checkin"]), ("ben-xe-b", T0 + 70000, ["checkin"])]
    at_a = first.windows[0]
    assert [c.subject for c in at_a.co_present] == []  # Y came 1 h later; X is the F0
    assert at_a.other_ids == {"bluezone": 6, "gaen": 1}  # this F0 has no tracing IDs
    r = match_f0(store, _f0(key, "identity", {"identities": [{"cccd": W}]}),
                 opening=LAB.opening())
    assert [c.subject for c in r.cases[0].windows[0].co_present] == []
    r = match_f0(store, _f0(key, "identity", {"identities": [{"cccd": X}]}),
                 MatchParams(margin_s=3600), LAB.opening())
    assert [c.subject for c in r.cases[0].windows[0].co_present] == [Y]


def test_an_opening_opens_only_its_windows(store: Store, key: Ed25519PrivateKey) -> None:
    dk = os.urandom(32)
    _scene(store, dk, os.urandom(16))
    doc = {"data": [{"daily_key": dk.hex(), "time_start": T0, "time_end": T0 + 86399}]}
    s40 = T0 + 40 * 900
    # approved: cho-a from just before X's check-in to just after it; Y's stays sealed
    scope = (Window("hn/cho-a", s40 - 200, s40),)
    r = match_f0(store, _f0(key, "bluezone-infof", doc), opening=LAB.opening(scope))
    got = [(c.masked, c.subject) for c in r.cases[0].windows[0].co_present]
    assert got == [("***" + X[-3:], X), ("***" + Y[-3:], None)]
    # another venue's scope opens nothing here
    r = match_f0(store, _f0(key, "bluezone-infof", doc),
                 opening=LAB.opening((Window("hn/ben-xe-b", 0.0, 4e9),)))
    assert r.opened_checkins == 0 and r.sealed_checkins == 2


def test_no_match_gives_empty_cases(store: Store, key: Ed25519PrivateKey) -> None:
    _scene(store, os.urandom(32), os.urandom(16))
    doc = {"data": [{"daily_key": os.urandom(32).hex(), "time_start": T0,
                     "time_end": T0 + 86399}]}
    r = match_f0(store, _f0(key, "bluezone-infof", doc))
    assert (r.cases[0].hits, r.cases[0].windows, r.windows) == (0, [], [])


def test_other_phone_counts_equal_a_count_of_the_stored_rows(store: Store,
                                                             key: Ed25519PrivateKey) -> None:
    # The database counts distinct IDs per window and the case's own IDs are taken back out
    # afterwards: the result must equal counting the rows themselves, own IDs skipped.
    import random

    rng = random.Random(11)
    dk = os.urandom(32)
    ids = bluezone_day_ids(dk)
    gws = [entry("gw-a", venue="cho-a"), entry("gw-b", venue="ben-xe-b")]
    pool = [os.urandom(12) for _ in range(40)] + [os.urandom(16) for _ in range(15)]
    for gw in gws:
        rows = []
        for slot in rng.sample(range(30, 60), 8):  # the case, in its slots
            rows.append(sighting(ids[slot], T0 + slot * 900 + rng.uniform(0, 800), 60))
            if rng.random() < 0.4:  # the same ID again, replayed hours later
                rows.append(sighting(ids[slot], T0 + slot * 900 + 5 * 3600, 60))
        for _ in range(150):  # other phones, some seen several times
            rows.append(sighting(rng.choice(pool), T0 + rng.uniform(25, 65) * 900,
                                 rng.uniform(10, 1200)))
        store.add_batch(gw, Header(gw.id, 1, T0), Batch(sightings=rows))
    doc = {"data": [{"daily_key": dk.hex(), "time_start": T0, "time_end": T0 + 86399,
                     "max": 96}]}
    [case] = match_f0(store, _f0(key, "bluezone-infof", doc)).cases
    own = set(ids)
    assert len(case.windows) >= 2
    for w in case.windows:
        seen = store.sightings_at(w.venue.id, w.start - 1800, w.end + 1800)
        others = [(k, i, s) for k, i, s in seen if i not in own]
        by_kind: dict[str, set[bytes]] = {}
        by_slot: dict[tuple[str, int], set[bytes]] = {}
        for k, i, s in others:
            by_kind.setdefault(k, set()).add(i)
            by_slot.setdefault((k, s), set()).add(i)
        assert w.other_ids == {k: len(v) for k, v in sorted(by_kind.items())}
        peaks: dict[str, int] = {}
        for (k, _), v in by_slot.items():
            peaks[k] = max(peaks.get(k, 0), len(v))
        assert w.peak_phones == dict(sorted(peaks.items()))
        assert any(i in own for _, i, _ in seen)  # own IDs were there to be taken out
