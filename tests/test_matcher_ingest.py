"""Ingest: verify, reject with counted reasons, store once, decide acks (real sealer)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bzgw.labrecords import LAB, checkin, sighting, temp_store
from contract.batch import Batch
from contract.custody import day_of, lookup_tags, open_identity
from contract.records import IdKind
from contract.registry import GatewayEntry, Registry
from contract.sealing import Sealer, generate_matcher_keypair
from core.clock import ClockEpoch, ClockSource
from matcher.ingest import Ingestor
from matcher.store import Store
from mqtt import topics

T0 = 1_700_006_400.0
CLOCK = ClockEpoch("boot-1", 1000.0, True, ClockSource.NTP, 0.0)


class Site:
    """A registered gateway that seals like the real one."""

    def __init__(self, gid: str, venue: str, public: bytes) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.entry = GatewayEntry(id=gid, province="hn", venue=venue,
                                  signing_key=self.key.public_key().public_bytes_raw().hex())
        self.sealer = Sealer(gateway_id=gid, matcher_public_key=public, signing_key=self.key)
        self.topic = topics.batch("hn", venue, gid)

    def seal(self, seq: int, batch: Batch | None = None) -> bytes:
        b = batch or Batch(sightings=[sighting(os.urandom(12), T0 + seq)],
                           checkins=[checkin("001099012345", T0 + seq)])
        return self.sealer.seal(b, seq=seq, created_at=T0 + seq, clock=CLOCK)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    with temp_store(request.param, tmp_path, url) as s:
        yield s


@pytest.fixture
def keys() -> tuple[bytes, bytes]:
    return generate_matcher_keypair()


@pytest.fixture
def sites(keys: tuple[bytes, bytes]) -> dict[str, Site]:
    return {"gw-a": Site("gw-a", "cho-a", keys[1]), "gw-b": Site("gw-b", "ben-xe-b", keys[1])}


@pytest.fixture
def ingestor(store: Store, sites: dict[str, Site], keys: tuple[bytes, bytes]) -> Ingestor:
    reg = Registry(gateways={g: s.entry for g, s in sites.items()})
    return Ingestor(store, reg, keys[0])


def test_stored_then_duplicate_with_acks(ingestor: Ingestor, sites: dict[str, Site]) -> None:
    a = sites["gw-a"]
    wire = a.seal(1)
    first = ingestor.handle_batch(a.topic, wire, now=T0)
    assert (first.status, first.seq, first.ack_topic) == ("stored", 1, topics.ack(
        "hn", "cho-a", "gw-a"))
    ack = json.loads(first.ack(matcher_time=123.0))
    assert ack == {"seq": 1, "status": "stored", "reason": None, "matcher_time": 123.0}
    again = ingestor.handle_batch(a.topic, wire)
    assert (again.status, again.seq) == ("duplicate", 1)
    assert ingestor.store.row_counts()["sightings"] == 1
    assert ingestor.store.counter_totals() == {"duplicate": 1, "stored": 1}


def test_sequence_reused_with_other_content_is_rejected_and_acked(
        ingestor: Ingestor, sites: dict[str, Site]) -> None:
    a = sites["gw-a"]
    ingestor.handle_batch(a.topic, a.seal(5))
    out = ingestor.handle_batch(a.topic, a.seal(5))  # new random ID: another batch
    assert (out.status, out.reason, out.seq) == ("rejected", "replay", 5)
    assert out.ack_topic is not None
    assert json.loads(out.ack())["reason"] == "replay"


def test_rejections_are_counted_and_acked_only_when_the_batch_itself_is_bad(
        store: Store, sites: dict[str, Site], keys: tuple[bytes, bytes]) -> None:
    a, b = sites["gw-a"], sites["gw-b"]
    reg = Registry(gateways={"gw-a": a.entry, "gw-b": b.entry})
    ing = Ingestor(store, reg, keys[0], max_wire=4096, max_plaintext=2048)
    cases: list[tuple[str, bytes, str, bool]] = []
    # unknown gateway: a topic whose gateway is not registered
    stranger = Site("gw-x", "cho-a", keys[1])
    cases.append((stranger.topic, stranger.seal(1), "unknown_gateway", False))
    # registered, but publishing under another venue
    cases.append((topics.batch("hn", "ben-xe-b", "gw-a"), a.seal(2), "topic_mismatch", False))
    # signed by a key that is not gw-a's registered key
    forger = Site("gw-a", "cho-a", keys[1])
    cases.append((a.topic, forger.seal(3), "bad_signature", False))
    # gw-b's own, valid batch replayed on gw-a's topic
    cases.append((a.topic, b.seal(4), "gateway_mismatch", False))
    # sealed for another matcher key
    other = Site("gw-a", "cho-a", generate_matcher_keypair()[1])
    other.key, other.entry = a.key, a.entry
    other.sealer = Sealer(gateway_id="gw-a", matcher_public_key=generate_matcher_keypair()[1],
                          signing_key=a.key)
    cases.append((a.topic, other.seal(5), "decrypt_failed", False))
    # larger than the wire limit: refused unread, acked so the gateway drops it
    big = Batch(sightings=[sighting(os.urandom(12), T0 + i) for i in range(300)])
    cases.append((a.topic, a.seal(6, big), "oversize", True))
    # compresses far beyond the plaintext limit
    bomb = Batch(sightings=[sighting(b"\0" * 12, T0, kind=IdKind.BLUEZONE)] * 2000)
    cases.append((a.topic, a.seal(7, bomb), "decompression_bomb", True))
    # not a sealed batch at all: no sequence number to ack
    cases.append((a.topic, b"BZ\x01\x00\x05garbage" + bytes(80), "malformed", False))
    cases.append(("bz/v1/hn/cho-a/gw-a/status", a.seal(8), "bad_topic", False))
    for topic, wire, reason, acked in cases:
        out = ing.handle_batch(topic, wire)
        assert out.reason == reason, (reason, out)
        assert (out.ack_topic is not None) is acked, reason
        assert out.status == ("ignored" if reason == "bad_topic" else "rejected")
    totals = store.counter_totals()
    assert totals == {r: 1 for _, _, r, _ in cases}
    assert store.row_counts()["batches"] == 0
    assert {c.gateway_id for c in store.counters() if c.reason == "unknown_gateway"} == {
        "gw-x"}


def test_sequence_far_ahead_is_refused(ingestor: Ingestor, sites: dict[str, Site]) -> None:
    a = sites["gw-a"]
    ingestor.max_seq_ahead = 100
    assert ingestor.handle_batch(a.topic, a.seal(10)).status == "stored"
    assert ingestor.handle_batch(a.topic, a.seal(110)).status == "stored"
    out = ingestor.handle_batch(a.topic, a.seal(211))
    assert (out.status, out.reason, out.seq) == ("rejected", "seq_out_of_window", 211)


def test_stored_batch_keeps_records_and_clock(ingestor: Ingestor,
                                              sites: dict[str, Site]) -> None:
    a = sites["gw-a"]
    ident = os.urandom(12)
    batch = Batch(sightings=[sighting(ident, T0 + 0.5, 30.2, clock=CLOCK)],
                  checkins=[checkin("001099012345", T0 + 7, fields={"name": "Lê C"},
                                    clock=CLOCK)])
    ingestor.handle_batch(a.topic, a.seal(1, batch))
    [(_, row)] = ingestor.store.sightings_for_idents([ident])
    assert (row.first_seen, row.last_seen, row.gateway_id) == (T0 + 0.5, T0 + 30.7, "gw-a")
    assert (row.clock.boot_id, row.clock.offset, row.clock.source) == ("boot-1", 1000.0, "ntp")
    d = day_of(T0 + 7)
    sk, bk = LAB.day(d)
    [c] = ingestor.store.checkins_for_tags(list(lookup_tags({d: bk}, ["001099012345"], [])))
    assert (c.ts, c.masked, c.clock.boot_id) == (T0 + 7, "***345", "boot-1")
    assert c.sealed is not None and open_identity(sk, d, c.sealed) == (
        "001099012345", {"name": "Lê C"})


@pytest.mark.postgres
def test_two_matchers_storing_groups_in_opposite_orders_do_not_deadlock(
        pg_url: str, keys: tuple[bytes, bytes]) -> None:
    # Two `bzgw matcher serve` processes on one PostgreSQL database, each committing groups
    # of batches from many gateways; redeliveries make them store the same batches at once.
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from bzgw.labrecords import drop_schema, unique_schema
    from matcher.store import open_store

    sites = {f"gw-{i}": Site(f"gw-{i}", f"cho-{i}", keys[1]) for i in range(8)}
    reg = Registry(gateways={g: s.entry for g, s in sites.items()})
    name = unique_schema()
    stores = [open_store(pg_url, schema_name=name) for _ in range(2)]
    try:
        ingestors = [Ingestor(s, reg, keys[0]) for s in stores]
        rounds = 12
        wires = {(g, r): s.seal(r) for g, s in sites.items() for r in range(1, rounds + 1)}
        barrier = threading.Barrier(2)

        def work(k: int) -> list[str]:
            statuses = []
            for r in range(1, rounds + 1):
                order = sorted(sites) if k == 0 else sorted(sites, reverse=True)
                opened = [ingestors[k].open(sites[g].topic, wires[g, r]) for g in order]
                barrier.wait(timeout=10)
                statuses += [o.status for o in ingestors[k].store_group(opened)]
            return statuses

        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(work, k) for k in range(2)]
            errors = [f.exception(timeout=120) for f in futures]
            assert errors == [None, None], errors
            results = [f.result() for f in futures]
        assert sum(s == "stored" for r in results for s in r) == len(wires)
        assert sum(s == "duplicate" for r in results for s in r) == len(wires)
        assert stores[0].row_counts()["batches"] == len(wires)
        assert stores[1].counter_totals() == {"duplicate": len(wires), "stored": len(wires)}
    finally:
        for s in stores:
            s.close()
        drop_schema(pg_url, name)
