"""The health document: built from real components, validated, ranked, carried over MQTT."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ble.aggregator import WindowAggregator
from ble.records import Advert
from ble.simulator import Crowd
from bzgw.lab import Lab
from bzgw.labrecords import entry
from contract import sealing
from contract.health import (
    PRECEDENCE,
    Condition,
    HealthError,
    conditions,
    label,
    parse_health,
    scrub,
    validate_health,
)
from contract.records import IdKind
from contract.registry import Registry
from core.clock import ClockEpoch, ClockSource, ReplayClock
from gateway.config import IdentityConfig
from gateway.health import Component, LinkWatch, PhonesNow, build_health
from gateway.outbox import Outbox, OutboxStatus
from gateway.pipeline import CapturePipeline, PipelineStats
from matcher.dashboard_queries import consume_gateway_reports, consume_message
from matcher.store import open_store
from mqtt import topics
from mqtt.client import MqttClient
from mqtt.sync import GatewaySync
from qr.sources.base import SourceState

SYNCED = ClockEpoch("boot-1", 0.0, True, ClockSource.NTP, 0.0)
UNSYNCED = ClockEpoch("boot-1", 0.0, False, ClockSource.NONE, float("inf"))
T0 = 1_628_739_600.0  # 2021-08-12 03:40 UTC = 10:40 in Vietnam


def outbox_status(**kw: Any) -> OutboxStatus:
    base: dict[str, Any] = {"depth": 0, "bytes": 0, "oldest_created_at": None,
                            "dropped_batches": 0, "dropped_bytes": 0, "rejected": 0,
                            "next_seq": 1, "full": False, "last_error": None}
    return OutboxStatus(**{**base, **kw})


def doc_with(*, radio: str = "scanning", camera: str = "capturing", full: bool = False,
             disk_fill: float = 0.3, connected: bool = True, synced: bool = True,
             uptime_s: float = 3600.0, last_sync: float | None = T0 - 30,
             now: float = T0) -> dict[str, Any]:
    """A health document with chosen conditions, through the real builder."""
    return build_health(
        gateway_id="gw-a", now=now, uptime_s=uptime_s, outbox=outbox_status(full=full),
        outbox_max_bytes=1 << 20, outbox_dir=Path("."), stats=PipelineStats(),
        radio=Component(radio), camera=Component(camera),
        clock=SYNCED if synced else UNSYNCED, connected=connected, last_sync=last_sync,
        disk={"total_bytes": 100, "free_bytes": round(100 * (1 - disk_fill)),
              "fill": disk_fill, "error": ""})


# -- built from real components -------------------------------------------------------------------

def crowd_adverts(seed: int = 3, minutes: float = 20) -> list[Advert]:
    crowd = Crowd(seed=seed, start=T0 - minutes * 60, duration_s=minutes * 60)
    crowd.add_bluezone_phones(25, ["cho-a"])
    crowd.add_en_phones(8, ["cho-a"])
    crowd.add_iphones(4, ["cho-a"])
    crowd.add_background(10, ["cho-a"])
    return list(crowd.adverts("cho-a", rate_hz=0.5))


def test_health_from_a_real_pipeline_and_outbox(tmp_path: Path) -> None:
    _, matcher_pub = sealing.generate_matcher_keypair()
    clock = ReplayClock(T0 - 1200)
    outbox = Outbox(tmp_path / "outbox" / "outbox.db", max_bytes=1 << 20,
                    max_age_s=86400, clock=clock)
    pipeline = CapturePipeline(
        aggregator=WindowAggregator(count_window_s=300),
        sealer=sealing.Sealer(gateway_id="gw-a", matcher_public_key=matcher_pub,
                              signing_key=Ed25519PrivateKey.generate()),
        outbox=outbox, clock=clock, flush_interval_s=60)
    phones = PhonesNow(window_s=120)
    adverts = crowd_adverts()
    for adv in adverts:
        clock.advance(adv.ts)
        pipeline.on_advert(adv)
        phones.add(adv)
    pipeline.flush(final=True)
    st = outbox.status()
    link = LinkWatch(started_at=T0 - 1200)
    doc = build_health(gateway_id="gw-a", now=clock.now(), uptime_s=1200, outbox=st,
                       outbox_max_bytes=1 << 20, outbox_dir=tmp_path / "outbox",
                       stats=pipeline.stats, radio=Component("scanning"),
                       camera=Component("off"), clock=clock.epoch(), connected=False,
                       last_sync=None, link=link, phones=phones)
    assert validate_health(doc) == []
    assert json.loads(json.dumps(doc)) == doc  # plain JSON, nothing lost on the wire
    assert st.depth > 0
    assert doc["outbox"]["depth"] == st.depth and doc["outbox"]["bytes"] == st.bytes
    assert doc["outbox"]["fill"] == round(st.bytes / (1 << 20), 4)
    assert doc["radio"]["adverts"] == len(adverts) == pipeline.stats.adverts
    assert doc["counts"]["batches"] == pipeline.stats.batches
    du = shutil.disk_usage(tmp_path / "outbox")
    assert doc["disk"]["total_bytes"] == du.total
    assert doc["disk"]["fill"] == pytest.approx((du.total - du.free) / du.total, abs=0.01)
    # never connected this run: offline since the start, and the replay clock is synced
    assert doc["state"]["code"] == "offline" and doc["state"]["since"] == T0 - 1200
    assert doc["clock"]["synced"] is True and doc["clock"]["source"] == "replay"
    p = doc["phones"]
    assert p["phones"] == p["bluezone"] + p["gaen"] + p["other_phones"] > 0
    assert p["bluezone_share"] == round(p["bluezone"] / p["phones"], 4)


def test_phones_now_counts_distinct_devices_in_the_window() -> None:
    adverts = crowd_adverts(seed=5)
    phones = PhonesNow(window_s=120)
    for adv in adverts:
        phones.add(adv)
    now = adverts[-1].ts
    # independent count: every address heard in the window, as the best kind it showed
    rank = {IdKind.BLUEZONE: 3, IdKind.BLUEZONE_IOS: 3, IdKind.GAEN: 2, IdKind.APPLE: 1,
            IdKind.PHONE: 1}
    best: dict[str, int] = {}
    for adv in adverts:
        if adv.ts >= now - 120:
            best[adv.address] = max(best.get(adv.address, 0), rank.get(adv.kind, 0))
    # an address seen before the window with a better kind keeps that kind in the table
    for adv in adverts:
        if adv.ts < now - 120 and adv.address in best:
            best[adv.address] = max(best[adv.address], rank.get(adv.kind, 0))
    snap = phones.snapshot(now)
    values = list(best.values())
    assert snap["bluezone"] == values.count(3) > 0
    assert snap["gaen"] == values.count(2)
    assert snap["other_phones"] == values.count(1)
    assert snap["devices"] == values.count(0)
    # the table holds 64-bit digests, never an address
    assert phones._seen and all(type(k) is int and 0 <= k < 1 << 64 for k in phones._seen)
    assert phones.snapshot(now + 121)["phones"] == 0


def test_phones_now_counts_an_address_again_after_its_entry_expired() -> None:
    # the status page's clock may run a little ahead of the adverts' timestamps: an entry
    # can expire while its address is still cached, and must come back when heard again
    phones = PhonesNow(window_s=60)
    phones.add(Advert(T0, "AA:00:00:00:00:01", 1, -60, IdKind.GAEN))
    phones.add(Advert(T0, "AA:00:00:00:00:02", 1, -60, IdKind.PHONE))
    assert phones.snapshot(T0 + 61)["phones"] == 0
    phones.add(Advert(T0 + 59, "AA:00:00:00:00:01", 1, -60, IdKind.PHONE))
    phones.add(Advert(T0 + 59.5, "AA:00:00:00:00:01", 1, -60, IdKind.BLUEZONE))
    snap = phones.snapshot(T0 + 61)
    assert (snap["phones"], snap["bluezone"], snap["other_phones"]) == (1, 1, 0)
    assert len(phones._seen) == 1


def test_phones_now_keeps_a_device_that_keeps_sending_and_drops_one_that_stopped() -> None:
    # entries are not moved on every refresh, only when expiry finds them still alive
    phones = PhonesNow(window_s=60, address_cache_s=900)
    phones.seen(T0, "BB:00:00:00:00:02", IdKind.PHONE)
    for t in range(0, 300, 10):
        phones.seen(T0 + t, "AA:00:00:00:00:01", IdKind.GAEN)
        if t == 120:
            assert phones.snapshot(T0 + t)["other_phones"] == 0  # B: last heard at T0
    snap = phones.snapshot(T0 + 290)
    assert (snap["gaen"], snap["other_phones"], snap["phones"]) == (1, 0, 1)
    assert phones.snapshot(T0 + 290 + 61)["phones"] == 0
    # addresses stay cached (digested once) for address_cache_s, then are forgotten
    assert set(phones._digests) == {"AA:00:00:00:00:01", "BB:00:00:00:00:02"}
    phones.seen(T0 + 901, "CC:00:00:00:00:03", IdKind.PHONE)
    assert list(phones._digests) == ["CC:00:00:00:00:03"]
    # heard again after its entry expired: counted again
    phones.seen(T0 + 902, "AA:00:00:00:00:01", IdKind.GAEN)
    assert phones.snapshot(T0 + 902)["gaen"] == 1


def test_phones_now_is_bounded_and_counts_what_it_cannot_track() -> None:
    phones = PhonesNow(window_s=60, max_entries=5)
    for i in range(9):
        phones.add(Advert(T0 + i, f"AA:00:00:00:00:{i:02X}", 1, -60, IdKind.PHONE))
    assert phones.snapshot(T0 + 9)["other_phones"] == 5
    assert phones.untracked == 4
    # once old entries expire there is room again
    phones.add(Advert(T0 + 100, "BB:00:00:00:00:01", 1, -60, IdKind.BLUEZONE))
    assert phones.snapshot(T0 + 100) == {"window_s": 60, "phones": 1, "bluezone": 1, "gaen": 0,
                                         "other_phones": 0, "devices": 0,
                                         "bluezone_share": 1.0}


# -- precedence -----------------------------------------------------------------------------------

TOGGLES: dict[str, dict[str, Any]] = {
    "radio_fault": {"radio": "fault"},
    "no_camera": {"camera": "fault"},
    "outbox_full": {"full": True},
    "disk_full": {"disk_fill": 0.97},
    "offline": {"connected": False},
    "clock_not_synced": {"synced": False},
}


@pytest.mark.parametrize(("a", "b"), list(itertools.combinations(TOGGLES, 2)))
def test_the_more_urgent_condition_wins(a: str, b: str) -> None:
    doc = doc_with(**TOGGLES[a], **TOGGLES[b])
    assert validate_health(doc) == []
    first, second = sorted((a, b), key=PRECEDENCE.index)
    assert doc["state"]["code"] == first
    assert [x["code"] for x in doc["state"]["also"]] == [second]


def test_precedence_order_is_the_documented_one() -> None:
    assert PRECEDENCE == ("radio_fault", "no_camera", "outbox_full", "disk_full", "offline",
                          "connecting", "clock_not_synced", "working")
    every = doc_with(**{k: v for t in TOGGLES.values() for k, v in t.items()})
    assert every["state"]["code"] == "radio_fault"
    assert [x["code"] for x in every["state"]["also"]] == [
        "no_camera", "outbox_full", "disk_full", "offline", "clock_not_synced"]


def test_working_and_labels_in_both_languages() -> None:
    doc = doc_with()
    assert doc["state"] == {"code": "working", "since": None, "vi": "Đang hoạt động",
                            "en": "Working", "also": []}
    assert doc_with(camera="fault")["state"]["vi"] == "Không thấy camera"
    assert doc_with(camera="fault")["state"]["en"] == "No camera"
    assert doc_with(synced=False)["state"]["vi"] == "Chưa đồng bộ giờ"
    assert doc_with(disk_fill=0.962)["state"]["en"] == "Disk 96 % full"
    # the disk warning level alone is not a state
    assert doc_with(disk_fill=0.85)["state"]["code"] == "working"


def test_offline_since_is_venue_local_time() -> None:
    since = datetime(2021, 8, 12, 3, 42, 30, tzinfo=UTC).timestamp()
    now = since + 600
    assert label(Condition("offline", since=since), now) == (
        "Mất kết nối từ 10:42", "Offline since 10:42")
    # 16:58 UTC is 23:58 in Vietnam: a minute later the same local day, an hour later the
    # next one, and then the date is shown
    late = datetime(2021, 8, 12, 16, 58, tzinfo=UTC).timestamp()
    assert label(Condition("offline", since=late), late + 60)[1] == "Offline since 23:58"
    assert label(Condition("offline", since=late), late + 3600)[1] == (
        "Offline since 23:58 12/08")
    doc = doc_with(connected=False, last_sync=since, now=now)
    assert doc["link"]["offline_since"] == since
    assert doc["state"]["en"] == "Offline since 10:42"


def test_connecting_right_after_start_then_offline() -> None:
    assert doc_with(connected=False, last_sync=None, uptime_s=5)["state"]["code"] == "connecting"
    assert doc_with(connected=False, last_sync=None, uptime_s=600)["state"]["code"] == "offline"
    # a link that was up and went down is offline even in the first minute
    link = LinkWatch(started_at=T0)

    def at(t: float, up: bool) -> dict[str, Any]:
        return build_health(
            gateway_id="gw-a", now=T0 + t, uptime_s=t, outbox=outbox_status(),
            outbox_max_bytes=None, outbox_dir=Path("."), stats=PipelineStats(),
            radio=Component("scanning"), camera=Component("off"), clock=SYNCED,
            connected=up, last_sync=None, link=link, disk=doc_with()["disk"])

    assert at(1, False)["state"]["code"] == "connecting"
    assert at(2, True)["state"]["code"] == "working"
    down = at(3, False)
    assert down["state"]["code"] == "offline" and down["link"]["offline_since"] == T0 + 2


def test_link_watch_remembers_when_the_link_went_down() -> None:
    w = LinkWatch(started_at=100.0)
    w.observe(False, 110.0)
    assert w.down_since == 100.0  # never up this run
    w.observe(True, 120.0)
    assert w.down_since is None
    w.observe(True, 130.0)
    w.observe(False, 140.0)
    assert w.down_since == 130.0  # last seen up
    w.observe(False, 150.0)
    assert w.down_since == 130.0  # stays while down
    w.observe(False, 160.0, last_sync=145.0)
    assert w.down_since == 145.0  # an ack proves the link was up later than we saw


@pytest.mark.parametrize("state", list(SourceState))
def test_every_camera_source_state_fits_the_health_vocabulary(state: SourceState) -> None:
    doc = doc_with(camera=str(state.value))
    assert validate_health(doc) == [] and doc["camera"]["state"] != "unknown"
    assert (doc["state"]["code"] == "no_camera") == (state is SourceState.FAULT)


def test_an_unknown_component_state_keeps_the_document_valid() -> None:
    doc = doc_with(radio="warming up")
    assert validate_health(doc) == []
    assert doc["radio"] == {"state": "unknown", "detail": "state 'warming up'", "restarts": 0,
                            "adverts": 0, "last_advert_at": None}
    assert doc_with(radio="finished")["radio"]["state"] == "finished"


def test_conditions_tolerate_odd_stored_documents() -> None:
    assert conditions({}) == [Condition("working")]
    assert conditions({"radio": "fault", "disk": {"fill": "full"}, "link": []}) == [
        Condition("working")]
    assert conditions({"link": {"connected": False}})[0].code == "offline"


def test_error_texts_never_carry_a_mac_address() -> None:
    text = scrub("org.bluez.Error.Failed: device C0:1A:2B:3C:4D:5E not available, "
                 "dev_C0_1A_2B_3C_4D_5F gone")
    assert "C0:1A:2B:3C:4D" not in text and "C0_1A_2B_3C_4D" not in text
    assert "**:**:**:**:**:5E" in text and "**:**:**:**:**:5F" in text
    doc = doc_with()
    doc2 = build_health(
        gateway_id="gw-a", now=T0, uptime_s=1, outbox=outbox_status(), outbox_max_bytes=None,
        outbox_dir=Path("."), stats=PipelineStats(),
        radio=Component("fault", "le scan on AA:BB:CC:DD:EE:FF failed" + "x" * 500),
        camera=Component("off"), clock=SYNCED, connected=True, last_sync=None,
        disk=doc["disk"])
    assert "AA:BB:CC:DD" not in doc2["radio"]["detail"]
    assert len(doc2["radio"]["detail"]) == 200 and validate_health(doc2) == []


# -- schema ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "value", "problem"), [
    ("outbox.depth", -1, "outbox.depth: expected a non-negative integer"),
    ("outbox.full", "no", "outbox.full: expected true or false"),
    ("link.last_sync", float("nan"), "link.last_sync: expected an epoch time"),
    ("radio.state", "dancing", "radio.state: expected one of"),
    ("state.code", "fine", "state.code: expected one of"),
    ("ts", True, "ts: expected an epoch time"),
    ("gateway", "g" * 300, "gateway: expected a short string"),
    ("phones", [], "phones: expected an object"),
    ("clock", None, "clock: expected an object"),
])
def test_schema_names_the_field_and_what_was_expected(path: str, value: object,
                                                      problem: str) -> None:
    doc = doc_with()
    *parents, leaf = path.split(".")
    target = doc
    for p in parents:
        target = target[p]
    target[leaf] = value
    problems = validate_health(doc)
    assert len(problems) == 1 and problems[0].startswith(problem), problems


def test_schema_missing_fields_version_and_extras() -> None:
    doc = doc_with()
    del doc["clock"]
    del doc["outbox"]["depth"]
    assert validate_health(doc) == ["outbox.depth: missing", "clock: missing"]
    newer = {**doc_with(), "v": 2}
    assert validate_health(newer) == [
        "v: unsupported health version 2 (this reader knows 1)"]
    # the sync adds its own block; newer fields are allowed
    assert validate_health({**doc_with(), "sync": {"published": 3}, "later": 1}) == []
    assert validate_health(None) == ["(top): expected an object, got NoneType"]


def test_parse_health_refuses_bad_payloads_with_one_error_type() -> None:
    good = json.dumps(doc_with()).encode()
    assert parse_health(good)["gateway"] == "gw-a"
    for bad in (b"", b"\xff\xfe", b"[" * 50000, b"{\"v\": 1}", b"x" * 70000, b"NaN",
                json.dumps({**doc_with(), "ts": "soon"}).encode()):
        with pytest.raises(HealthError) as info:
            parse_health(bad)
        assert info.value.problems


def _mutations(rng: random.Random, doc: Any) -> Any:
    choices: list[Any] = [None, -1, 2**70, 1.5, float("inf"), "", "x" * 300, [], {}, True,
                          [1, 2], {"a": 1}]
    if isinstance(doc, dict) and doc:
        key = rng.choice(sorted(doc))
        if rng.random() < 0.5 and isinstance(doc[key], dict):
            return {**doc, key: _mutations(rng, doc[key])}
        if rng.random() < 0.2:
            return {k: v for k, v in doc.items() if k != key}
        return {**doc, key: rng.choice(choices)}
    return rng.choice(choices)


def test_fuzzed_documents_never_raise() -> None:
    seed = int(os.environ.get("FUZZ_SEED", random.randrange(2**32)))
    print(f"FUZZ_SEED={seed}")
    rng = random.Random(seed)
    base = doc_with(connected=False, synced=False)
    refused = 0
    for _ in range(3000):
        doc = base
        for _ in range(rng.randint(1, 3)):
            doc = _mutations(rng, doc)
        problems = validate_health(doc)
        try:
            parse_health(json.dumps(doc))
        except HealthError:
            refused += 1
        else:
            assert problems == []
        # a stored document of any shape can still be ranked
        assert conditions(doc if isinstance(doc, dict) else {})[0].code in PRECEDENCE
    assert refused > 1000


# -- the health topic, end to end over the real broker --------------------------------------------

def test_health_topic_reaches_the_matcher_store(lab: Lab, tmp_path: Path) -> None:
    gw = lab.gateways["gw-a"].entry
    outbox = Outbox(tmp_path / "outbox.db", max_bytes=1 << 20, max_age_s=86400)
    identity = IdentityConfig(id=gw.id, province=gw.province, venue=gw.venue)
    link = LinkWatch(time.time())
    sent: list[dict[str, Any]] = []

    def health() -> dict[str, Any]:
        doc = build_health(gateway_id=gw.id, now=time.time(), uptime_s=5,
                           outbox=outbox.status(), outbox_max_bytes=1 << 20,
                           outbox_dir=tmp_path, stats=PipelineStats(),
                           radio=Component("scanning"), camera=Component("capturing"),
                           clock=SYNCED, connected=sync.connected, last_sync=sync.last_sync,
                           link=link)
        sent.append(doc)
        return doc

    sync = GatewaySync(outbox, lab.gateways["gw-a"].mqtt, identity, health=health,
                       health_interval_s=0.2, poll_s=0.1)
    store = open_store(f"sqlite:///{tmp_path / 'matcher.db'}")

    async def main() -> None:
        stop_gw, stop_m = asyncio.Event(), asyncio.Event()
        async with MqttClient(lab.matcher_mqtt["matcher"], "matcher") as m, MqttClient(
                lab.gateways["gw-b"].mqtt, "gw-b") as other:
            consumer = asyncio.create_task(consume_gateway_reports(m, store, lab.registry,
                                                                   stop_m))
            runner = asyncio.create_task(sync.run(stop_gw))
            await _until(lambda: _stored(store, gw.id, "health") is not None)
            # gw-b may only write its own topic, and a body claiming gw-a is refused there
            b = lab.gateways["gw-b"].entry
            await other.publish(topics.health(b.province, b.venue, b.id),
                                json.dumps({**sent[-1], "gateway": "gw-a"}))
            await other.publish(topics.health(b.province, b.venue, b.id), b"{not json")
            await _until(lambda: store.counter_totals().get("bad_health", 0) >= 1)
            stop_gw.set()
            await runner
            await _until(lambda: _stored(store, gw.id, "status") == "offline")
            stop_m.set()
            await consumer

    asyncio.run(main())
    state = {g.gateway_id: g for g in store.gateways()}
    stored = state["gw-a"].health
    assert stored is not None and validate_health(stored) == []
    assert stored["sync"]["connected"] is True  # the sync's own block rides along
    assert {k: v for k, v in stored.items() if k != "sync"} in sent
    assert stored["state"]["code"] == "working"
    assert "gw-b" not in state  # nothing stored for the refused messages
    totals = store.counter_totals()
    assert totals["health_topic_mismatch"] == 1 and totals["bad_health"] == 1
    store.close()


def _stored(store: Any, gateway_id: str, what: str) -> Any:
    for g in store.gateways():
        if g.gateway_id == gateway_id:
            return getattr(g, what)
    return None


async def _until(cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


def test_retained_status_after_a_matcher_restart_keeps_its_time(tmp_path: Path) -> None:
    e = entry("gw-a")
    registry = Registry(gateways={"gw-a": e})
    store = open_store(f"sqlite:///{tmp_path / 'm.db'}")
    topic = topics.status(e.province, e.venue, e.id)
    will = json.dumps({"state": "offline", "ts": T0 - 500, "gateway": "gw-a"}).encode()
    assert consume_message(store, registry, topic, will, at=T0) == "status"
    assert _stored(store, "gw-a", "status_at") == T0  # live will: receipt time
    # the matcher restarts and the broker hands it the retained will again
    assert consume_message(store, registry, topic, will, retained=True, at=T0 + 900) == (
        "unchanged")
    assert _stored(store, "gw-a", "status_at") == T0
    assert consume_message(store, registry, topic, b"online", retained=True,
                           at=T0 + 901) == "status"
    assert consume_message(store, registry, topic, b"dancing", at=T0 + 902) == "bad_status"
    assert consume_message(store, registry, "bz/v1/hn/other/gw-a/status", b"online") == (
        "topic_mismatch")
    assert consume_message(store, registry, "bz/v1/hn/cho-a/gw-x/health", b"{}") == (
        "unknown_gateway")
    assert consume_message(store, registry, "bz/v1/hn/cho-a/gw-a/batch", b"x") == "ignored"
    assert _stored(store, "gw-a", "status") == "online"
    store.close()
